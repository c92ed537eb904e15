"""Row-major ``gemm`` with ``beta`` and transpose flags, callable from ``@njit`` code.

``np.dot(A, B, out)`` inside Numba always overwrites ``out`` (β = 0); the CPU trainer's
row-blocked pass (:mod:`sdeverify.train.cpu`) accumulates weight gradients over row blocks,
``G += Aᵀ·dZ``, which :func:`gemm` does in one BLAS call with β = 1 and no temporary.  It
calls the same ``sgemm``/``dgemm`` as ``np.dot`` (SciPy's BLAS, through Numba's
``numba_xxgemm`` helper, so compiled callers stay cacheable).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

_N, _T = ord("n"), ord("t")


def _xxgemm(dtype):
    sig = types.intc(types.char, types.char, types.char,                 # kind, transa, transb
                     types.intp, types.intp, types.intp,                 # m, n, k
                     types.CPointer(dtype), types.CPointer(dtype), types.intp,   # alpha, a, lda
                     types.CPointer(dtype), types.intp,                  # b, ldb
                     types.CPointer(dtype), types.CPointer(dtype), types.intp)   # beta, c, ldc
    return types.ExternalFunction("numba_xxgemm", sig)


def gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):  # pragma: no cover - typing stub
    """Row-major ``C[m×n] ← α·op(A)·op(B) + β·C`` (``op(X)`` = ``Xᵀ`` when its flag is true).

    ``a``, ``b``, ``c`` are 1-D arrays whose first element is the matrix's first element;
    ``lda``, ``ldb``, ``ldc`` are the row strides (in elements) of the matrices *as stored*,
    i.e. ``A`` is stored ``m×k`` (or ``k×m`` when transposed) with rows ``lda`` apart.
    Only callable from ``@njit`` code (float32 or float64, all three of one dtype)."""
    raise NotImplementedError("sdeverify.train.blas.gemm is only callable from @njit code")


@overload(gemm)
def _gemm_impl(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    dt = c.dtype
    if dt not in (types.float32, types.float64) or a.dtype != dt or b.dtype != dt:
        raise numba.errors.TypingError("gemm: a, b, c must all be float32 or all float64")
    fn = _xxgemm(dt)
    kind = ord("s" if dt == types.float32 else "d")
    npdt = np.float32 if dt == types.float32 else np.float64

    def impl(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        ab = np.empty(2, dtype=npdt)
        ab[0] = alpha
        ab[1] = beta
        # column-major BLAS sees the row-major matrices transposed: Cᵀ = op(B)ᵀ·op(A)ᵀ
        fn(kind, _T if tb else _N, _T if ta else _N, n, m, k, ab[0:1].ctypes, b.ctypes, ldb,
           a.ctypes, lda, ab[1:2].ctypes, c.ctypes, ldc)
    return impl
