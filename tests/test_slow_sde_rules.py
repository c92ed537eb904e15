"""slow_sde's two-sided SGD → slow-SDE order rule (THEORY §8): it passes on the correct
engine and fails when the slow SDE's drift is 10% off (a planted error in the closed form)."""
from __future__ import annotations

import numpy as np
import pytest

from sdeverify.experiments import slow_sde as ss
from sdeverify.experiments.budget import ALPHA
from sdeverify.problems.manifolds import Valley


def _drift_10_percent_off(real):
    """Valley.ou_moments with θ' = 1.1 θ (mean x₀e^(−θ't), variance σ²a(1 − e^(−2θ't))/(2θ'))."""
    def ou(self, x0, t, sigma):
        m, v = real(self, x0, t, sigma)
        r = np.asarray(m, dtype=float) / x0
        with np.errstate(invalid="ignore", divide="ignore"):
            v2 = np.where(r < 1, v * (1 - r ** 2.2) / (1 - r ** 2) / 1.1, v)
        return x0 * r ** 1.1, v2
    return ou


def _sgd_order(res):
    return [v for v in res.verdicts if "SGD - slow SDE vanishes at order 1" in v.claim]


def test_sgd_order_rule_is_two_sided_and_budgeted():
    assert ss.sgd_order_level(2) == pytest.approx(1 - ss.SGD_ORDER_ALPHA / 2)
    assert ss.GENERAL_PATH_ALPHA + ss.SGD_ORDER_ALPHA + 6 * ss.ks_level(2) == pytest.approx(ALPHA["slow_sde"])
    v = ss.sgd_order_verdict("valley", "x", 1.0, np.array([0.1, 0.05, 0.025, 0.0125]),
                             0.3 * np.array([0.1, 0.05, 0.025, 0.0125]) ** 2, np.full(4, 1e-5),
                             (0.0, 0.0, 0.0), 0.999)
    assert not v.passed and v.measured.low > 1.5       # order 2 is not order 1: fails


def test_sgd_order_rule_catches_a_slow_drift_10_percent_off(monkeypatch):
    kw = dict(size="smoke", seed=0, problems=("valley",), etas=(0.1, 0.07, 0.05, 0.035, 0.025),
              paths=2048, times=(1.0,), n_boot=10)
    good = _sgd_order(ss.run(**kw))
    assert len(good) == 1 and good[0].passed, good[0]
    monkeypatch.setattr(Valley, "ou_moments", _drift_10_percent_off(Valley.ou_moments))
    bad = _sgd_order(ss.run(**kw))
    assert len(bad) == 1 and not bad[0].passed, bad[0]
    assert bad[0].measured.high < 1.0


def test_sgd_order_rule_catches_a_sphere_decay_rate_off_by_d_over_d_minus_1(monkeypatch):
    """E⟨ζ_t, ζ₀⟩ = exp(−(d − 1)σ²s²t/2) with d for d − 1 (rate × 3/2 on S²): SGD's error
    stops vanishing and the two-sided order rule fails."""
    from sdeverify.problems.manifolds import Sphere
    kw = dict(size="smoke", seed=0, problems=("sphere",), etas=(0.1, 0.07, 0.05, 0.035, 0.025),
              paths=2048, times=(1.0,), n_boot=10)
    good = _sgd_order(ss.run(**kw))
    assert len(good) == 1 and good[0].passed, good[0]
    monkeypatch.setattr(Sphere, "correlation_decay", lambda self, t, sigma: np.exp(
        -0.5 * self.dim * sigma ** 2 * self.noise_std ** 2 * np.asarray(t, dtype=np.float64)))
    bad = _sgd_order(ss.run(**kw))
    assert len(bad) == 1 and not bad[0].passed, bad[0]
    assert bad[0].measured.high < 1.0


def test_points_cut_into_path_shards_give_the_same_bits(monkeypatch):
    """Cutting a point's paths into shards (:func:`slow_sde.path_shards`, each shard its own
    ``simulate``/``coupled_slow_sde`` call at its path offset, the statistics on the shards
    joined) changes no bit of the result: one shard per point against shards of one
    ``config.BLOCK`` of paths."""
    from sdeverify.files import TIMING
    kw = dict(size="smoke", seed=3, problems=("sphere", "valley"), etas=(0.1, 0.05), paths=1000)
    monkeypatch.setattr(ss, "SHARD_WORK", 2 ** 40)
    whole = ss.run(**kw)
    monkeypatch.setattr(ss, "SHARD_WORK", 1)
    cfg = {**ss.run.defaults, **ss.SIZES["smoke"], **{k: v for k, v in kw.items() if k not in ("size", "seed")}}
    assert [n for _, n in ss.path_shards(cfg, 1)] == [256, 256, 256, 232]
    cut = ss.run(**kw)
    keys = [k for k in whole.data if not TIMING.fullmatch(k)]
    assert len(keys) > 20
    for k in keys:
        x, y = np.asarray(whole.data[k]), np.asarray(cut.data[k])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), k
