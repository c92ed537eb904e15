"""The register-blocked GEMM of the conv layers (sdeverify.train.conv_gemm) against np.matmul:
float64 and float32, sizes at and around the micro-tile's edges (rows: 24 or 12 per tile;
columns: one or two vectors, 16/8 or 32/16 for float32/float64; reductions past the packed
block ``KC``), both layouts of A and B, offsets, a C with more columns than the product
(untouched outside it), β = 0 (C not read) and β = 1; the dispatch rule of ``product``."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from sdeverify.train import conv_gemm as cg

RS = np.random.default_rng(2024)


@numba.njit(cache=False)
def _call(m, n, k, a, a_off, a_rs, a_ks, b, b_off, b_ks, b_ns, beta, c, c_off, ldc):
    cg.gemm(m, n, k, a, a_off, a_rs, a_ks, b, b_off, b_ks, b_ns, beta, c, c_off, ldc)


@numba.njit(cache=False)
def _product(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    cg.product(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc)


SHAPES = [(1, 1, 1), (5, 3, 7), (23, 16, 16), (24, 16, 300), (25, 17, 257), (12, 32, 5),
          (13, 33, 40), (37, 70, 513), (48, 8, 9), (11, 15, 2)]


def _bound(A, B, C0, beta, eps):
    """Elementwise rounding bound of a k-term dot product added to β·C: (k + 2)·eps·(|A||B| + β|C|)."""
    k = A.shape[1]
    return (k + 2) * eps * (np.abs(A) @ np.abs(B) + beta * np.abs(C0)) + 1e-300


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_matches_matmul(dtype, m, n, k, ta, tb, beta):
    A = RS.normal(size=(m, k)).astype(dtype)
    B = RS.normal(size=(k, n)).astype(dtype)
    a = np.concatenate([RS.normal(size=3), (A.T if ta else A).ravel()]).astype(dtype)
    b = np.concatenate([RS.normal(size=5), (B.T if tb else B).ravel()]).astype(dtype)
    ldc = n + 3
    c = RS.normal(size=2 + m * ldc + 4).astype(dtype)
    C0 = c[2:2 + m * ldc].reshape(m, ldc)[:, :n].astype(np.float64)
    if beta == 0.0:
        c[2:2 + m * ldc].reshape(m, ldc)[:, :n] = np.nan           # β = 0: C is never read
    before = c.copy()
    _call(m, n, k, a, 3, 1 if ta else k, m if ta else 1, b, 5, 1 if tb else n, k if tb else 1,
          beta, c, 2, ldc)
    got = c[2:2 + m * ldc].reshape(m, ldc)
    want = A.astype(np.float64) @ B.astype(np.float64) + beta * C0
    eps = np.finfo(dtype).eps / 2
    assert np.all(np.abs(got[:, :n] - want) <= _bound(A.astype(np.float64), B.astype(np.float64), C0,
                                                        beta, eps))
    np.testing.assert_array_equal(got[:, n:], before[2:2 + m * ldc].reshape(m, ldc)[:, n:])
    np.testing.assert_array_equal(c[:2], before[:2])
    np.testing.assert_array_equal(c[2 + m * ldc:], before[2 + m * ldc:])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_empty_reduction_and_bad_beta(dtype):
    c = np.ones(6, dtype=dtype)
    _call(2, 3, 0, np.ones(1, dtype=dtype), 0, 1, 1, np.ones(1, dtype=dtype), 0, 1, 1, 1.0, c, 0, 3)
    np.testing.assert_array_equal(c, 1.0)                      # C + (empty sum)
    _call(2, 3, 0, np.ones(1, dtype=dtype), 0, 1, 1, np.ones(1, dtype=dtype), 0, 1, 1, 0.0, c, 0, 3)
    np.testing.assert_array_equal(c, 0.0)                      # β = 0: C = 0
    with pytest.raises(ValueError, match="beta"):
        _call(2, 3, 4, np.ones(8, dtype=dtype), 0, 4, 1, np.ones(12, dtype=dtype), 0, 3, 1, 0.5, c, 0, 3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m,n,k", [(64, 16, 144), (30, 4, 36), (100, 36, 4), (144, 16, 64)])
def test_product_takes_the_kernel_by_the_shape_rule_and_matches_matmul(dtype, m, n, k):
    """``product``'s row-major flags as BLAS's; the kernel where ``used`` says so (an AVX-512
    CPU, n and k at least one vector), BLAS otherwise — the same products either way."""
    L = 64 // np.dtype(dtype).itemsize
    assert cg.used(m, n, k, np.dtype(dtype).itemsize) == (cg.AVX512 and n >= L and k >= L)
    A, B = RS.normal(size=(m, k)).astype(dtype), RS.normal(size=(k, n)).astype(dtype)
    for ta, tb in [(False, True), (True, False), (False, False)]:
        a = np.ascontiguousarray(A.T if ta else A).ravel()
        b = np.ascontiguousarray(B.T if tb else B).ravel()
        c = np.full(m * n, np.nan, dtype=dtype)
        _product(ta, tb, m, n, k, a, m if ta else k, b, k if tb else n, 0.0, c, n)
        np.testing.assert_allclose(c.reshape(m, n), A.astype(float) @ B.astype(float),
                                   rtol=0, atol=(k + 2) * np.finfo(dtype).eps
                                   * np.max(np.abs(A).astype(float) @ np.abs(B).astype(float)))


@pytest.mark.skipif(not cg.AVX512, reason="the kernel's registers need AVX-512")
def test_the_micro_kernel_keeps_its_tile_in_zmm_registers():
    """The compiled micro-kernel's loop: 512-bit fused multiply-adds, no accumulator spilled
    to the stack inside the reduction loop."""
    import re
    for dt in (np.float32, np.float64):
        x = np.ones(64, dtype=dt)
        _call(2, 2, 2, x, 0, 2, 1, x, 0, 2, 1, 0.0, x, 0, 2)
    for sig in _call.signatures:
        _no_spills(re, _call.inspect_asm(sig))


def _no_spills(re, asm):
    """In every run of fused multiply-adds (a reduction loop's body: FMAs at most 12 lines
    apart), all 512-bit and no vector register spilled to or reloaded from the stack: the
    tile's sums stay in registers."""
    lines = asm.splitlines()
    at = [i for i, ln in enumerate(lines) if "vfmadd" in ln]
    assert at and all("zmm" in lines[i] for i in at)
    runs, start = [], at[0]
    for prev, i in zip(at, at[1:] + [None]):
        if i is None or i - prev > 12:
            runs.append((start, prev))
            start = i
    assert max(b - a for a, b in runs) > 20                  # the micro-kernels' loops are there
    for a, b in runs:
        assert not [ln for ln in lines[a:b + 1] if "(%rsp)" in ln and "zmm" in ln], (a, b)
