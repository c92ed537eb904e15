"""The CPU trainer's row-blocked pass and its BLAS wrapper (sdeverify.train.cpu, .blas).

The block size is a run-time value, so these tests reuse the float64 kernels that
``tests/test_train.py`` compiles (no new specialisation) with tiny blocks."""
from __future__ import annotations

import numba
import numpy as np
import pytest

import sdeverify as sv
from sdeverify.train import MLP, cpu, reference, teacher_student
from sdeverify.train.batches import BatchSampler
from sdeverify.train.blas import gemm


@numba.njit
def _gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_is_row_major_with_transposes_and_beta(ta, tb):
    rs = np.random.default_rng(0)
    m, n, k = 5, 7, 3
    A = rs.normal(size=(k, m) if ta else (m, k))
    B = rs.normal(size=(n, k) if tb else (k, n))
    C = rs.normal(size=(m, n))
    buf = np.concatenate([np.full(2, 9.0), C.ravel(), np.full(2, 9.0)])
    _gemm(ta, tb, m, n, k, 0.5, A.ravel(), A.shape[1], B.ravel(), B.shape[1], 2.0, buf[2:], n)
    want = 0.5 * (A.T if ta else A) @ (B.T if tb else B) + 2.0 * C
    np.testing.assert_allclose(buf[2:-2].reshape(m, n), want, rtol=1e-13, atol=1e-13)
    assert np.all(buf[:2] == 9.0) and np.all(buf[-2:] == 9.0)     # nothing outside C written


def _run(T, m, d, idx, rb=None):
    t = T(m, d.X_train, d.y_train, 1, 2)
    if rb is not None:
        t.block_rows = rb
    W0 = m.init(1, 2)
    t.set_state(W0, np.zeros_like(W0))
    c = sv.SGDM(0.1, 0.9).coefficients(idx[0].shape[0], m.n_params)
    loss = t.train(idx, c.a[None], c.b[None], c.gamma[None], np.array([1.0]))
    return loss, t.W.copy(), t.evaluate(d.X_test, d.y_test), t.gradients(t.W, d.X_train[:23], d.y_train[:23])


@pytest.mark.parametrize("rb,act,loss", [(1, "relu", "cross_entropy"), (5, "tanh", "squared"),
                                         (5, "relu", "cross_entropy"), (13, "relu", "squared"),
                                         (64, "tanh", "cross_entropy")])
def test_blocked_pass_matches_the_reference(rb, act, loss):
    """Batches of 13 rows in blocks of 1 (one row each), 5 (13 = 5+5+3), 13 (exactly one
    block) and 64 (a block larger than the batch), float64, 6 steps; evaluation (test set)
    and full gradients (23 rows) are blocked the same way."""
    d = teacher_student(n=200, dim=5, classes=3, hidden=6, seed=4)
    m = MLP([5, 9, 7, 3], act, loss, weight_decay=0.01)
    idx = BatchSampler(2, d.n_train, 13, np.arange(2), "replacement").indices(0, 6)
    l0, w0, e0, g0 = _run(reference.Trainer, m, d, idx)
    l1, w1, e1, g1 = _run(cpu.Trainer, m, d, idx, rb)
    np.testing.assert_allclose(l1, l0, rtol=1e-12)
    assert np.max(np.abs(w1 - w0) / (1 + np.abs(w0))) <= 1e-12
    np.testing.assert_allclose(e1[0], e0[0], rtol=1e-12)
    np.testing.assert_array_equal(e1[1], e0[1])
    np.testing.assert_allclose(g1, g0, rtol=1e-10, atol=1e-14)


def test_batch_parts_on_different_cores_give_the_same_bits():
    """One model, a batch of 13 rows in 2 parts (blocks of 4 rows): the parts on two threads
    (``_train_parts``) or one after the other (``_train``) give bitwise the same run, within
    1e-12 of the reference."""
    d = teacher_student(n=200, dim=5, classes=3, hidden=6, seed=4)
    m = MLP([5, 9, 7, 3], "relu", weight_decay=0.01)
    idx = BatchSampler(2, d.n_train, 13, np.arange(1), "replacement", slots=2).indices(0, 6)
    c = sv.SGDM(0.1, 0.9).coefficients(6, m.n_params)
    runs = []
    n = numba.get_num_threads()
    for threads, T in ((1, cpu.Trainer), (2, cpu.Trainer), (1, reference.Trainer)):
        t = T(m, d.X_train, d.y_train, 1, 1)
        t.block_rows = 4
        t.set_state(m.init(1, 1), np.zeros((1, m.n_params)))
        try:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            loss = t.train(idx, c.a[None], c.b[None], c.gamma[None], np.array([0.6, 0.4]))
        finally:
            numba.set_num_threads(n)
        runs.append((loss, t.W.copy()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_allclose(runs[1][0], runs[2][0], rtol=1e-12)
    assert np.max(np.abs(runs[1][1] - runs[2][1]) / (1 + np.abs(runs[2][1]))) <= 1e-12
