"""Batch-size sweep (Fig 1 analogue): reduced-size run, verdict negative controls, and the
``max_batch`` option that lets every batch size share one compiled kernel."""
import numpy as np
import pytest

import sdeverify as sv
from sdeverify.experiments import batch_size as BS
from sdeverify.problems import LinearRegression


def test_max_batch_only_reserves_draws():
    """The first B draws are the same whatever the reserve: the same paths with 64 draws
    reserved (CPU engine, the batch_size check's kernel) as with exactly B = 3 (the NumPy
    reference engine, so no extra kernel is compiled), bitwise."""
    b = BS.data(max_batch=64)
    a = LinearRegression(b.features, b.targets, 3)
    b = LinearRegression(b.features, b.targets, 3, max_batch=64)
    assert b.n_draws == 64 and a.n_draws == 3
    kw = dict(steps=20, paths=300, sigma=1.0, seed=2, store_states=True)
    opts = [sv.SGD(0.1), sv.SGDM(0.1, 0.9)]
    x0 = np.zeros(4)
    ra = sv.simulate(a, opts, x0, backend="numpy", **kw)
    rb = sv.simulate(b, opts, x0, **kw)
    assert np.array_equal(rb.states, ra.states)           # bitwise: same draws, same arithmetic
    with pytest.raises(ValueError, match="max_batch"):
        LinearRegression(a.features, a.targets, 3, max_batch=2)


def _verdicts(gap, sem, loss_sgd=0.14):
    Bs = (1, 2, 4, 8, 16, 32, 64)
    etas = 0.03 * np.array(Bs)
    loss = np.column_stack([np.full(7, loss_sgd), np.full(7, loss_sgd)])
    mask = (np.array(Bs) >= BS.FIT_MIN_B) & (np.array(Bs) < 64)
    return BS._verdicts(Bs, etas, np.asarray(gap, float), np.full(7, sem), loss, mask)


def test_verdicts_pass_on_the_predicted_pattern_and_fail_otherwise():
    good = _verdicts([7e-5, 2e-4, 4e-4, 8e-4, 1.6e-3, 4e-3, 0.05], 2e-5)
    assert [v.passed for v in good] == [True, True]
    no_gap_at_large_b = _verdicts([7e-5, 2e-4, 4e-4, 8e-4, 1.6e-3, 4e-3, 1e-5], 2e-5)
    assert not no_gap_at_large_b[0].passed
    gap_grows_as_b_shrinks = _verdicts([7e-3, 6e-3, 5e-3, 4e-3, 3e-3, 2e-3, 0.05], 2e-5)
    assert not gap_grows_as_b_shrinks[1].passed
    not_comparable_at_b1 = _verdicts([5e-3, 2e-4, 4e-4, 8e-4, 1.6e-3, 4e-3, 0.05], 2e-5)
    assert not not_comparable_at_b1[1].passed


def test_run_rejects_bad_batches():
    with pytest.raises(ValueError, match="batches"):
        BS.run(size="smoke", batches=(1, 2, 4))
    with pytest.raises(ValueError, match="batches"):
        BS.run(size="smoke", batches=(1, 4, 2, 8, 16))


def test_oracle_verdicts_pass_and_fail_for_a_wrong_batch(monkeypatch):
    """The minibatch oracle's mean and covariance against NumPy references; negative control:
    an oracle that averages B/2 indices (covariance 2Σ₁/B) fails the covariance verdict."""
    P0 = BS.data(max_batch=64)
    v, _ = BS.oracle_verdicts(P0, 64, 2 ** 15, seed=3)
    assert all(x.passed for x in v), [x.rule for x in v]
    real = BS.LinearRegression
    monkeypatch.setattr(BS, "LinearRegression",
                        lambda A, y, B, max_batch=None: real(A, y, B // 2, max_batch=max_batch))
    v, _ = BS.oracle_verdicts(P0, 64, 2 ** 15, seed=3)
    assert v[0].passed and not v[1].passed
