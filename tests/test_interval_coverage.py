"""A printed or tabled "95%" interval over a few units covers 95%: coverage of the true mean
measured over ≥ 1000 simulated repeats at 4 units, fixed seeds.  At 4 units ±1.96·sem covers
about 86% (t₃ = 3.18 is the 95% quantile), so each test fails on a normal-quantile interval.
The binomial standard error of a coverage near 95% over 2000 repeats is 0.5%: the window
[94%, 96.5%] holds the nominal 95% by more than 2 standard errors on each side.
(``TrainResult.summary`` is measured the same way in tests/test_train_instruments.py.)"""
import re

import numpy as np
import pytest

import sdeverify as sv
from sdeverify.tables import t_half_width

LOW, HIGH = 0.94, 0.965


def test_simulation_summary_covers_95_percent_at_4_paths():
    """``SimulationResult.summary``'s "±" for E x₀ after one SGD step on pure noise (x₁ =
    −ησξ, mean 0), 4 paths per run, 2000 runs with different seeds."""
    P = sv.problems.ConstantGradient([0.0])
    trials, hits = 2000, 0
    for seed in range(trials):
        res = sv.simulate(P, sv.SGD(0.1), [0.0], steps=1, paths=4, sigma=1.3, seed=seed,
                          record=[1], observables=["x0"])
        mu, half = map(float, re.findall(r"([-\d.e+]+) ± ([-\d.e+]+)", res.summary())[0])
        hits += abs(mu) <= half
    assert LOW <= hits / trials <= HIGH, hits / trials


def test_train_paired_frame_covers_95_percent_at_4_replicas():
    """``TrainResult.paired_frame``'s Student-t ``low``/``high`` of SGDM − SGD over 4
    replicas: 2000 evaluation steps with independent replica values (correlated between the
    two optimizers, as common batches make them), true difference 0.03."""
    pytest.importorskip("pandas")
    from sdeverify.train import TrainResult
    g = np.random.default_rng(3)
    E, R = 2000, 4
    common = g.normal(0.8, 0.05, size=(E, R))
    vals = np.stack([common + g.normal(0.0, 0.01, size=(E, R)),
                     common + 0.03 + g.normal(0.0, 0.01, size=(E, R))])[..., None]   # (2, E, R, 1)
    res = TrainResult(("SGD", "SGDM"), ("test_acc",), np.arange(E), vals,
                      np.zeros((2, R, 0)), np.full((2, R), -1))
    df = res.paired_frame()
    assert len(df) == E and (df["count"] == R).all()
    cover = float(((df["low"] <= 0.03) & (0.03 <= df["high"])).mean())
    assert LOW <= cover <= HIGH, cover


def test_t_half_width_is_students_quantile():
    np.testing.assert_allclose(t_half_width([1.0, 2.0, 1.0], [4, 4, 10**6]),
                               [3.182446305284263, 2 * 3.182446305284263, 1.959966], rtol=1e-6)
    assert np.isnan(t_half_width(1.0, 1)) and np.isnan(t_half_width(1.0, 0))
    with pytest.raises(ValueError, match="level"):
        t_half_width(1.0, 4, level=1.5)
