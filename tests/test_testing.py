"""sdeverify.testing: the assertions fail when the prediction is wrong, pass when it is right,
and their false-failure rate is the stated one (measured here, two-sided)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_
from scipy import stats as st

import sdeverify as sv
from sdeverify import theory
from sdeverify.testing import (StatisticalAssertionError, assert_mean, assert_order,
                               assert_paired_difference, optimizers, quadratics, run_sizes)

P0 = sv.problems.ConstantGradient([0.3])
ETA, BETA, SIGMA, K = 0.1, 0.6, 1.7, 10


def _pair(seed, paths=1024):
    """SGD and SGDM (m0 = c) on a constant gradient: equal means at every step (Sec 4.1)."""
    return sv.simulate(P0, [sv.SGD(ETA), sv.SGDM(ETA, BETA, m0=[0.3])], [0.0], steps=K, paths=paths,
                       sigma=SIGMA, seed=seed, record=[K], observables=["sqnorm", "x0"])


def test_false_failure_rate_is_the_stated_one():
    """With one compared entry the rate is exactly alpha (CLT): over 200 seeds at alpha = 0.1
    the failures must lie in the central 99.9% of Binomial(200, 0.1) = [8, 35].  Intervals
    sqrt(2) too narrow would give ~49 failures, sqrt(2) too wide ~4: both fail this test."""
    lo, hi = st.binom.ppf(0.0005, 200, 0.1), st.binom.isf(0.0005, 200, 0.1)
    var_exact = theory.endpoint_variance_sgdm(ETA, BETA, SIGMA, K) + (K * ETA * 0.3) ** 2
    fails_mean = fails_pair = 0
    for s in range(200):
        r = _pair(5000 + s)
        try:
            assert_mean(r, var_exact, optimizer=1, observable="sqnorm", alpha=0.1)
        except StatisticalAssertionError:
            fails_mean += 1
        try:
            assert_paired_difference(r, 1, "x0", alpha=0.1)
        except StatisticalAssertionError:
            fails_pair += 1
    assert lo <= fails_mean <= hi, (fails_mean, lo, hi)
    assert lo <= fails_pair <= hi, (fails_pair, lo, hi)


def test_assert_mean_catches_a_wrong_prediction_and_says_where():
    r = sv.simulate(P0, sv.SGDM(ETA, BETA, m0=[0.3]), [0.0], steps=40, paths=8192, sigma=SIGMA,
                    seed=3, record=np.arange(41), observables=["sqnorm"])
    k = np.arange(41)
    right = theory.endpoint_variance_sgdm(ETA, BETA, SIGMA, k) + (k * ETA * 0.3) ** 2
    out = assert_mean(r, right, observable="sqnorm")
    assert out.passed and out.n_compared == 40            # step 0 is exact (sem 0)
    wrong = theory.endpoint_variance_sgdm(ETA, 0.5, SIGMA, k) + (k * ETA * 0.3) ** 2   # beta off
    with pytest.raises(StatisticalAssertionError, match=r"(?s)'sqnorm' of SGDM.*interval \["):
        assert_mean(r, wrong, observable="sqnorm")
    with pytest.raises(StatisticalAssertionError, match="exact"):
        assert_mean(r, right + np.where(k == 0, 1e-3, 0.0), observable="sqnorm")   # step 0 is exact


def test_assert_mean_on_raw_arrays_and_bad_input():
    assert_mean([1.0, 2.0], [1.01, 1.98], sem=[0.01, 0.01])
    with pytest.raises(StatisticalAssertionError):
        assert_mean([1.0, 2.0], [1.1, 2.0], sem=[0.01, 0.01])
    with pytest.raises(StatisticalAssertionError, match="no estimate"):
        assert_mean([np.nan, 2.0], 2.0, sem=[0.1, 0.1])               # diverged: never a pass
    with pytest.raises(ValueError, match="sem"):
        assert_mean([1.0], 1.0)
    with pytest.raises(ValueError, match="alpha"):
        assert_mean([1.0], 1.0, sem=0.1, alpha=1.5)


def test_equivalence_within_a_margin():
    r = _pair(11, paths=4096)
    out = assert_paired_difference(r, "SGDM", "x0", within=0.05)
    assert out.passed and np.all(out.high - out.low > 0)
    with pytest.raises(StatisticalAssertionError, match="inconclusive"):
        assert_paired_difference(r, "SGDM", "x0", within=3e-3)           # interval too wide
    with pytest.raises(StatisticalAssertionError, match="exceeds the margin"):
        assert_paired_difference(r, "SGDM", "x0", equals=0.5, within=0.1)
    with pytest.raises(ValueError, match="baseline"):
        assert_paired_difference(r, "SGDM", "x0", baseline=1)


def test_assert_order_two_sided():
    g = np.random.default_rng(0)
    x = 2.0 ** -np.arange(2, 9)
    sem = 0.02 * x
    err = x * (1 + 0.02 * g.standard_normal(x.size))
    assert assert_order(x, err, sem, equals=1.0).passed
    assert assert_order(x, err, sem, at_least=0.5).passed
    with pytest.raises(StatisticalAssertionError, match="order equals 2"):
        assert_order(x, err, sem, equals=2.0)
    with pytest.raises(StatisticalAssertionError, match="at least 1.5"):
        assert_order(x, err, sem, at_least=1.5)
    with pytest.raises(StatisticalAssertionError):       # an inflated order fails two-sided
        assert_order(x, x ** 1.3, sem, equals=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        assert_order(x, err, sem)


def test_assert_mean_on_a_train_result_uses_student_t():
    from sdeverify.train.result import TrainResult
    g = np.random.default_rng(1)
    vals = 0.5 + 0.1 * g.standard_normal((1, 2, 5, 1))
    res = TrainResult(("SGD",), ("test_acc",), np.array([10, 20]), vals, np.zeros((1, 5, 20)),
                      np.full((1, 5), -1))
    out = assert_mean(res, 0.5, observable="test_acc")
    t = st.t.isf(1e-3 / 2 / 2, 4)                          # 5 replicas: t with 4 dof
    np.testing.assert_allclose(out.high - out.estimate, t * vals[0, :, :, 0].std(axis=1, ddof=1) / np.sqrt(5))


@settings(max_examples=8, deadline=None, derandomize=True)
@given(quadratics(dims=st_.integers(1, 3)), optimizers(steps=30),
       run_sizes(steps=(30, 30), paths=(1024, 2048)))
def test_strategies_draw_valid_runs_with_exact_moments(P, opt, size):
    """Property: on any drawn quadratic and optimizer (per-step schedules) the ensemble's
    mean loss matches the exact moments — the project's own test of the strategies.  Dimensions
    1–3 (the default goes to 4): the dense kernels of d = 2 and 3 are compiled by
    test_moments.py as well, d = 4 would be compiled for this test alone (cold start)."""
    x0 = np.ones(P.dim)
    r = sv.simulate(P, opt, x0, sigma=0.8, seed=2, record=[0, 10, 30], observables=["loss"], **size)
    exact = theory.quadratic_moments(P, opt, x0, steps=30, sigma=0.8).expect(P, "loss")[[0, 10, 30]]
    assert_mean(r, exact, observable="loss", alpha=1e-4)
