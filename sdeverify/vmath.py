"""Branch-free elementary functions that LLVM vectorises over the engine's lanes.

The CPU engine inlines a problem's ``grad`` / ``noise`` / ``loss`` into a loop over 64 paths
(the *lanes*, :mod:`sdeverify.engine.cpu`) and LLVM turns that loop into SIMD code only when
the body has no branches and no calls.  ``np.sqrt``, ``abs``, ``min``/``max``,
``np.floor`` are single vector instructions; ``np.sin``, ``np.cos``, ``np.exp``, ``np.log``,
``np.log1p``, ``np.expm1``, ``np.tanh`` are calls into libm and keep the loop scalar.  The
functions here compute the same values with plain arithmetic — round-to-nearest range
reduction, fdlibm's polynomial kernels, exponent arithmetic on the bits — and selects
instead of branches, so they inline and vectorise.  Measured in a compiled loop over 2¹⁶
arguments (AVX-512, CPU time per element, median of 150 runs, libm in brackets): sin 0.95 ns
(15.3), cos 0.99 (15.8), exp 1.0 (3.5), log 0.8 (2.6), log1p 0.9 (8.5), expm1 1.5 (9.1),
tanh 1.8 (11.9); for the engine's numbers see benchmarks/RESULTS.md, "Per-problem
throughput".  Of sin's 0.95 ns, ≈ 0.3 ns is the argument reduction (fdlibm's three rounds
of π/2, which 1 ulp needs near multiples of π/2) and ≈ 0.5 ns the two polynomial kernels,
both evaluated (a select, not a branch, picks one per lane); the quadrant comes from the bits
of the rounded multiple (1.15 ns with ⌊·⌋ arithmetic, the same values).  Use them in problem functions like the NumPy ones::

    from sdeverify import vmath

    @numba.njit
    def grad(x, p, out):
        for i in range(x.shape[0]):
            out[i] = x[i] - p[0] * vmath.sin(x[i])

**Bitwise twins.**  Each function is a ``numba.njit`` dispatcher whose ``.py_func`` is
the same source run by NumPy: applied to a float64 array it returns, element by element,
the bits of the compiled function (IEEE arithmetic in the same order, no FMA contraction —
Numba does not contract — and ``select`` is ``np.where`` there).  Called from plain Python
the dispatcher itself runs the compiled scalar code, which is how the NumPy reference engine
(which runs problem functions as ``py_func``) gets the engine's bits.  The building blocks
are :func:`inline` dispatchers, which run as Python when the twin calls them.

**On the GPU.**  numba-cuda compiles a CPU dispatcher that a kernel calls from its
``py_func``, so the functions run in the engine's ``cuda`` backend as they are; the source
uses only what numba-cuda 0.30 lowers (``abs``, ``np.minimum``/``np.maximum``, bit views):
``np.copysign``, which it does not, is built from bits (``_copysign``: NumPy's bits), and
the quadrant of sin and cos is read from the bits of the rounded multiple of π/2 (no
``np.floor``).
``benchmarks/gpu_static.py`` compiles the engine's kernels for sm_80 and sm_90.

**Accuracy and domain** (float64; "bound" is what ``tests/test_vmath.py`` asserts against
NumPy, on 100 000 fixed-seed points of the range shown plus Hypothesis-drawn arguments;
"measured" is the largest error seen on those points; 1 ulp = the last bit):

=============  ======================  =========  ========  =====================================
function       range tested            bound      measured  outside / special values
=============  ======================  =========  ========  =====================================
``sin, cos``   |x| ≤ 1e4               1 ulp      1 ulp     also ≤ 1 ulp measured on |x| ≤ 1.6e6
                                                            (2¹⁹π, fdlibm's medium range); beyond,
                                                            the reduction loses bits: absolute
                                                            error 7e-9 on |x| ≤ 1e8, 6e-5 on
                                                            |x| ≤ 1e12; ±inf, NaN → NaN
``exp``        [−745, 709]             1 ulp      1 ulp     > 709.78 → inf, < −745.2 → 0
                                                            (subnormal results rounded once)
``log``        (0, 1e300], subnormals  1 ulp      1 ulp     log 0 = −inf, x < 0 → NaN, inf → inf
``log1p``      (−1, 1e300]             2 ulp      1 ulp     −1 → −inf, < −1 → NaN
``expm1``      [−50, 709]              2 ulp      1 ulp     > 709.78 → inf, ≤ −45 → −1
``tanh``       [−30, 30]               3 ulp      3 ulp     ±inf → ±1
=============  ======================  =========  ========  =====================================

sin and cos are also measured on 10⁷ fixed-seed points of |x| ≤ 1e4, compiled as the engine
runs them: at most 1 ulp each.  For |x| ≥ 2⁵¹ π/2 ≈ 3.5e15 their quadrant is no longer
n mod 4; the values there are meaningless, as they were with the previous ⌊·⌋ quadrant
(not bounded by 1, NaN near the top of the float range): use np.sin there.  (``pytest tests/test_vmath.py -s``
prints the measured maxima.)  NaN gives NaN and
the sign of zero is kept (sin, log1p, expm1, tanh).  **float32** arguments are converted to
float64 and the float64 result returned (one implementation; a float32 engine run gets the
float64 value rounded to float32 when it is stored, at most ½ float32 ulp of error on top of
the float64 one).  The functions are scalar: inside ``njit`` code call them per element;
on arrays use ``.py_func`` (the twin) or plain NumPy.
"""
from __future__ import annotations

from typing import Callable

import numba
import numpy as np
from numba.core.registry import CPUDispatcher

from .compile_lock import compile_once

__all__ = ["sin", "cos", "exp", "log", "log1p", "expm1", "tanh", "select", "inline"]

_JIT = dict(cache=True, inline="always", error_model="numpy")
_INLINE = dict(nopython=True, inline="always")


class _Inline(CPUDispatcher):
    """A dispatcher made by :func:`inline`: compiled like ``numba.njit(inline="always")``,
    run as Python when called from Python."""

    def __call__(self, *args):
        return self.py_func(*args)


def inline(f: Callable) -> CPUDispatcher:
    """``numba.njit(inline="always")`` for a helper of compiled functions, whose call from
    Python runs its source as Python instead of compiling it for the arguments' types.

    Compiled callers (CPU) inline it, under their own error model; numba-cuda compiles it,
    as any CPU dispatcher a kernel calls, from its ``py_func`` as a device function.  Called
    from Python it runs as Python, which is what this module's twin needs (its building
    blocks applied to NumPy arrays) and what a helper of problem functions needs (valley's
    polynomial, diagonal_net's residual) when the NumPy reference backend, the probe or
    Numba's CUDA simulator run those functions as Python — the simulator with device arrays,
    which a compiled function cannot take."""
    return _Inline(f, targetoptions=dict(_INLINE))


# ---- the one primitive that differs between the compiled code and its NumPy twin -----------
class _Select(_Inline):
    def __call__(self, c, a, b):
        return np.where(c, a, b)


def _select(c, a, b):
    """``a`` where ``c`` else ``b``: ``np.where`` in NumPy, a branch-free select compiled."""
    return a if c else b


select = _Select(_select, targetoptions=dict(_INLINE))


# ---- constants ---------------------------------------------------------------------------------
_RND = 6755399441055744.0          # 1.5·2⁵²: (y + _RND) − _RND = y rounded to nearest, |y| < 2⁵¹
_INF = np.inf
_MANT = np.int64(0x000FFFFFFFFFFFFF)
_ONE_BITS = np.int64(0x3FF0000000000000)
_BIAS = np.int64(1023)
_TWO52 = 4503599627370496.0
_TWO54 = 18014398509481984.0
_TINY = 2.2250738585072014e-308    # smallest normal
_SQRT2 = 1.4142135623730951
_SIGN = np.int64(-0x8000000000000000)    # the sign bit of a float64, as an int64
_MAGNITUDE = np.int64(0x7FFFFFFFFFFFFFFF)

# π/2 in three 33-bit pieces and their tails (fdlibm e_rem_pio2.c)
_INVPIO2 = 6.36619772367581382433e-01
_PIO2_1, _PIO2_2, _PIO2_3 = 1.57079632673412561417e+00, 6.07710050630396597660e-11, 2.02226624871116645580e-21
_PIO2_3T = 8.47842766036889956997e-32
# fdlibm k_sin.c / k_cos.c: minimax on |r| ≤ π/4
_S1, _S2, _S3 = -1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04
_S4, _S5, _S6 = 2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10
_C1, _C2, _C3 = 4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05
_C4, _C5, _C6 = -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11
# ln 2 split (fdlibm): n·_LN2_HI is exact for |n| < 2²⁰
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_INVLN2 = 1.44269504088896338700e+00
# fdlibm e_exp.c
_P1, _P2, _P3 = 1.66666666666666019037e-01, -2.77777777770155933842e-03, 6.61375632143793436117e-05
_P4, _P5 = -1.65339022054652515390e-06, 4.13813679705723846039e-08
# fdlibm e_log.c
_LG1, _LG2, _LG3 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01
_LG4, _LG5, _LG6 = 2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
# fdlibm s_expm1.c
_Q1, _Q2, _Q3 = -3.33333333333331316428e-02, 1.58730158725481460165e-03, -7.93650757867487942473e-05
_Q4, _Q5 = 4.00821782732936239552e-06, -2.01099218183624371326e-07


# ---- helpers -------------------------------------------------------------------------------------
@inline
def _round(y):
    """y rounded to the nearest integer (ties to even), as a float; |y| < 2⁵¹."""
    return (y + _RND) - _RND


@inline
def _copysign(a, b):
    """|a| with the sign of b, bitwise ``np.copysign``, from the bits (numba-cuda lowers no
    ``np.copysign``)."""
    bits = (np.float64(a).view(np.int64) & _MAGNITUDE) | (np.float64(b).view(np.int64) & _SIGN)
    return np.int64(bits).view(np.float64)


@inline
def _pow2(n):
    """2ⁿ for an integral float n in [−1022, 1023] (built from the exponent bits)."""
    return np.int64((np.int64(n) + _BIAS) << 52).view(np.float64)


@inline
def _scale(y, n):
    """y·2ⁿ for an integral float n in [−1100, 1100], with a single rounding (y·2^n₁ is exact
    for the y of this module, n₁ = n/2 rounded to an integer; overflow gives inf, underflow a
    correctly rounded subnormal or 0)."""
    n1 = _round(0.5 * n)
    return (y * _pow2(n1)) * _pow2(n - n1)


@inline
def _reduce_pio2(x):
    """(r, tail, q): x = n π/2 + r + tail, |r| ≲ π/4, q = n mod 4 (an int64 in [0, 4), read
    from the bits of n + 1.5·2⁵², whose mantissa holds n in two's complement: exact for
    |x| < 2⁵¹ π/2, meaningless beyond): fdlibm's medium-size reduction with all three rounds
    (n·pieces exact for |n| < 2²⁰)."""
    k = x * _INVPIO2 + _RND
    n = k - _RND                           # x·2/π rounded to the nearest integer (as _round)
    q = np.float64(k).view(np.int64) & np.int64(3)
    t = x - n * _PIO2_1                    # exact (Sterbenz)
    w = n * _PIO2_2
    r = t - w
    e2 = (t - r) - w                       # rounding error of each subtraction, carried
    t = r
    w = n * _PIO2_3
    r = t - w
    e3 = (t - r) - w
    w = n * _PIO2_3T - (e3 + e2)           # x − nπ/2 = r − w to ~2⁻¹⁰⁰ relative
    y0 = r - w
    y1 = (r - y0) - w
    return y0, y1, q


@inline
def _ksin(x, y):
    """sin(x + y), |x + y| ≤ π/4, y the tail of x (fdlibm k_sin.c)."""
    z = x * x
    w = z * z
    r = _S2 + z * (_S3 + z * _S4) + z * w * (_S5 + z * _S6)
    v = z * x
    return x - ((z * (0.5 * y - v * r) - y) - v * _S1)


@inline
def _kcos(x, y):
    """cos(x + y), |x + y| ≤ π/4, y the tail of x (fdlibm k_cos.c)."""
    z = x * x
    w = z * z
    r = z * (_C1 + z * (_C2 + z * _C3)) + w * w * (_C4 + z * (_C5 + z * _C6))
    hz = 0.5 * z
    w = 1.0 - hz
    return w + (((1.0 - w) - hz) + (z * r - x * y))


# ---- the functions ----------------------------------------------------------------------------
@inline
def _sin(x):
    """sin x, branch-free (module docstring: ≤ 1 ulp for |x| ≤ 1.6e6)."""
    x = np.float64(x)
    r, t, q = _reduce_pio2(x)
    s = select((q & 1) != 0, _kcos(r, t), _ksin(r, t))     # q = 1, 3: the other kernel
    return select((q & 2) != 0, -s, s)                     # q = 2, 3: negate


@inline
def _cos(x):
    """cos x, branch-free (module docstring: ≤ 1 ulp for |x| ≤ 1.6e6)."""
    x = np.float64(x)
    r, t, q = _reduce_pio2(x)
    c = select((q & 1) != 0, _ksin(r, t), _kcos(r, t))     # q = 1, 3: the other kernel
    return select(((q + 1) & 2) != 0, -c, c)               # q = 1, 2: negate


@inline
def _expm1_reduced(r, c):
    """expm1(r + c) for |r| ≤ ½ ln 2, c the reduction's tail (fdlibm s_expm1.c)."""
    hfx = 0.5 * r
    hxs = r * hfx
    r1 = 1.0 + hxs * (_Q1 + hxs * (_Q2 + hxs * (_Q3 + hxs * (_Q4 + hxs * _Q5))))
    t = 3.0 - r1 * hfx
    e = hxs * ((r1 - t) / (6.0 - r * t))
    e = r * (e - c) - c
    e = e - hxs
    return r - e


@inline
def _exp(x):
    """eˣ, branch-free (module docstring: ≤ 1 ulp; overflow inf, underflow 0)."""
    x = np.float64(x)
    xc = np.minimum(np.maximum(x, -746.0), 710.0)      # NaN stays NaN
    n = _round(xc * _INVLN2)
    n = select(n == n, n, 0.0)                           # NaN: any n (the result is NaN)
    hi = xc - n * _LN2_HI
    lo = n * _LN2_LO
    r = hi - lo
    t = r * r
    c = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    y = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    return _scale(y, n)


@inline
def _expm1(x):
    """eˣ − 1, branch-free, accurate near 0 (module docstring: ≤ 2 ulp)."""
    x = np.float64(x)
    xc = np.minimum(np.maximum(x, -45.0), 710.0)
    n = _round(xc * _INVLN2)
    n = select(n == n, n, 0.0)
    hi = xc - n * _LN2_HI
    lo = n * _LN2_LO
    r = hi - lo
    c = (hi - r) - lo
    em = _expm1_reduced(r, c)                            # expm1 of the reduced argument
    # eˣ − 1 = 2ⁿ (em + 1 − 2⁻ⁿ): 1 − 2⁻ⁿ is exact for |n| ≤ 53; beyond, 2ⁿ(em + 1) − [n < −53]
    mid = abs(n) <= 53.0
    add = select(mid, 1.0 - _pow2(-np.minimum(np.maximum(n, -53.0), 53.0)), 1.0)
    res = _scale(em + add, n) - select(n < -53.0, 1.0, 0.0)
    return select(x == 0.0, x, res)


@inline
def _log(x):
    """ln x, branch-free (module docstring: ≤ 1 ulp on x > 0, subnormals included)."""
    x = np.float64(x)
    sub = x < _TINY
    xs = x * select(sub, _TWO54, 1.0)                    # subnormals scaled up (exact)
    bits = np.float64(xs).view(np.int64)
    k = (bits >> 52) - _BIAS - select(sub, np.int64(54), np.int64(0))
    m = np.int64((bits & _MANT) | _ONE_BITS).view(np.float64)    # x = 2ᵏ m, m in [1, 2)
    big = m > _SQRT2
    m = select(big, 0.5 * m, m)                          # m in [√½, √2)
    dk = np.float64(k) + select(big, 1.0, 0.0)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    hfsq = 0.5 * f * f
    res = dk * _LN2_HI - ((hfsq - (s * (hfsq + (t2 + t1)) + dk * _LN2_LO)) - f)
    res = select(x > 0.0, res, select(x == 0.0, -_INF, np.nan))
    return select(x == _INF, x, res)


@inline
def _log1p(x):
    """ln(1 + x), branch-free, accurate near 0 (module docstring: ≤ 2 ulp on x > −1)."""
    x = np.float64(x)
    u = 1.0 + x
    ok = (u > 0.0) & (u < _INF)
    corr = (x - (u - 1.0)) / select(ok, u, 1.0)          # the rounding error of 1 + x, divided by u
    res = _log(u) + select(ok, corr, 0.0)
    return select(x == 0.0, x, res)


@inline
def _tanh(x):
    """tanh x = −expm1(−2|x|) / (expm1(−2|x|) + 2) with the sign of x (≤ 3 ulp)."""
    x = np.float64(x)
    e = _expm1(-2.0 * abs(x))
    return _copysign(-e / (e + 2.0), x)


# ---- the public, compiled functions (``.py_func`` is the NumPy twin) --------------------------
sin = numba.njit(**_JIT)(_sin.py_func)
cos = numba.njit(**_JIT)(_cos.py_func)
exp = numba.njit(**_JIT)(_exp.py_func)
expm1 = numba.njit(**_JIT)(_expm1.py_func)
log = numba.njit(**_JIT)(_log.py_func)
log1p = numba.njit(**_JIT)(_log1p.py_func)
tanh = numba.njit(**_JIT)(_tanh.py_func)


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
