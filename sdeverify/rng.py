"""Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11) and a vectorisable
Box–Muller transform.

Every draw is a pure function of ``(seed, path, step, stream, index)``:

    counter = (index // 4, step, path mod 2**32, stream + 2**16 · (path // 2**32)),
    key = (seed_lo, seed_hi)

and the four 32-bit words ``w0..w3`` of ``philox4x32(counter, key)`` give draws
``4 (index // 4) + 0..3``.

Path indices are 64-bit: the low 32 bits of the path are counter word 2, the high bits go
into the spare upper half of the stream word (the engines use streams 0 and 1 only).  For
paths below 2**32 the stream word is the stream itself, so every stream of earlier versions
is bitwise unchanged.  Distinct ``(path, stream)`` never share a counter as long as
``stream < 2**16`` (:data:`MAX_STREAM`) and ``path < 2**48`` (:data:`MAX_PATH`); the
engines reject larger path ranges and :func:`draws_numpy` rejects the combinations outside
that range (a stream ≥ 2**16 is still accepted with paths below 2**32, as before).  Kinds:

* uniform:    ``u = (w + 1/2) 2**-32`` in (0, 1)  (float32: the top 24 bits, ``(w>>8 + 1/2) 2**-24``);
* rademacher: ``+1`` if the top bit of ``w`` is set, else ``-1``;
* normal:     Box–Muller on the pairs ``(w0, w1)`` and ``(w2, w3)``:

      R = sqrt(-2 ln U),  U = (2 w0 + 1) / 2**33,
      angle = q π/2 + ψ,  q = w1 >> 30 (the quadrant),  ψ = π/2 ((w1 & (2**30-1)) + 1/2) 2**-30 − π/4,
      (z0, z1) = R (cos angle, sin angle).

  The angle is uniform on the circle (a uniform quadrant plus a uniform offset in
  (−π/4, π/4)), so no range reduction is needed: ``cos ψ`` and ``sin ψ`` are short
  polynomials on |ψ| ≤ π/4 and the quadrant is an exact swap/negation.  ``ln U`` uses an
  exact integer normalisation ``U = m 2**-e`` (a count of leading zeros), ``m`` in
  [√½, √2), then fdlibm's ``log1p`` kernel (float64) or Cephes' ``logf`` polynomial (float32).
  Nothing branches and nothing calls libm, so LLVM vectorises the transform over SIMD lanes
  (here: over paths, see :func:`fill_lanes64`).  Accuracy against ``R cos(angle)``,
  ``R sin(angle)`` in extended precision, measured over 2**22 random pairs: error ≤ 4.2e-16 R
  (float64) and ≤ 1.9e-7 R (float32, whose angle uses the top 24 of the 30 bits).  The
  32-bit uniform truncates the normal at ``sqrt(33 · 2 ln 2) ≈ 6.76`` standard deviations
  (tail mass ≈ 1.4e-11, invisible to any test this toolkit runs).

Named sub-seeds: a check that needs several independent random experiments derives their
seeds with :func:`substream` ``(seed, name, i)`` — a SHA-256 hash of the seed, a name and an
index — instead of offsets such as ``seed + 17 i + j`` (which collide: ``seed + 17`` is both
experiment (1, 0) of seed 0 and experiment (0, 0) of seed 17).

Written once: the transforms are plain arithmetic on scalars (uint64 words, float64/float32)
with three target primitives — ``_select(c, a, b)``, ``_clz64(v)`` and ``_sqrt(x)`` — so
the *same source* is compiled by ``numba.njit`` (CPU engine; ``leading_zeros`` becomes
``lzcnt``), evaluated on NumPy arrays (the reference backend and :func:`draws_numpy`, via
``np.where`` / ``np.frexp`` / ``np.sqrt``) and, later, compiled by
``numba.cuda.jit(device=True)`` (``cuda.clz``).  The NumPy twin is bitwise identical to the
compiled code: the same IEEE operations in the same order (no FMA contraction, no fast-math).
"""
from __future__ import annotations

import hashlib
import math
import types

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from . import validation
from .compile_lock import compile_once

MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)
INV_2_32 = 2.3283064365386963e-10  # 2**-32
HALF = 0.5

#: largest path index + 1 (and stream + 1) for which draws are guaranteed distinct (module doc)
MAX_PATH = 2 ** 48
MAX_STREAM = 2 ** 16

#: draw kinds understood by the engines
NORMAL, RADEMACHER, UNIFORM = 0, 1, 2
DRAW_KINDS = {"normal": NORMAL, "gaussian": NORMAL, "rademacher": RADEMACHER, "uniform": UNIFORM}
DTYPES = {"float64": np.float64, "float32": np.float32}

_JIT = dict(cache=True, error_model="numpy")      # numpy error model: no ZeroDivision branches
_U0, _U1, _U10, _U30, _U31 = (np.uint64(i) for i in (0, 1, 10, 30, 31))
_U2, _U8, _U9, _U16 = np.uint64(2), np.uint64(8), np.uint64(9), np.uint64(16)
_TOP = np.uint64(0x80000000)
_LOW30 = np.uint64(0x3FFFFFFF)
_LOW24 = np.uint64(0xFFFFFF)
_SQRTHALF_2_33 = np.uint64(6074001000)             # ≈ √½ · 2**33: fold m into [√½, √2)

# float64 constants: fdlibm e_log.c (log1p kernel on [√½, √2)) and k_sin.c / k_cos.c
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1, _LG2, _LG3, _LG4 = 6.666666666666735130e-01, 3.999999999940941908e-01, \
    2.857142874366239149e-01, 2.222219843214978396e-01
_LG5, _LG6, _LG7 = 1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01
_S1, _S2, _S3 = -1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04
_S4, _S5, _S6 = 2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10
_C1, _C2, _C3 = 4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05
_C4, _C5, _C6 = -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11
_TWO_M33 = 2.0 ** -33
_PSI_SCALE = (math.pi / 2) * 2.0 ** -30
_PSI_MID = 2.0 ** 29 - 0.5

# float32 constants: Cephes logf.c, sinf.c, cosf.c (|x| ≤ π/4)
_f = np.float32
_FP = tuple(_f(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                            1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                            3.3333331174e-1))
_FP0, _FP1, _FP2, _FP3, _FP4, _FP5, _FP6, _FP7, _FP8 = _FP
_FQ1, _FQ2 = _f(-2.12194440e-4), _f(0.693359375)
_FS1, _FS2, _FS3 = _f(-1.9515295891e-4), _f(8.3321608736e-3), _f(-1.6666654611e-1)
_FC1, _FC2, _FC3 = _f(2.443315711809948e-5), _f(-1.388731625493765e-3), _f(4.166664568298827e-2)
_F1, _FHALF, _FM2 = _f(1.0), _f(0.5), _f(-2.0)
_FTWO_M33 = _f(2.0 ** -33)
_I2_33 = np.int64(2 ** 33)
_FTWO_M24 = _f(2.0 ** -24)
_FPSI_SCALE = _f((math.pi / 2) * 2.0 ** -24)
_FPSI_MID = _f(2.0 ** 23 - 0.5)


# ---- target primitives (CPU versions; the NumPy twin swaps them, see _numpy_twin) ----------
@numba.njit(inline="always", **_JIT)
def _select(c, a, b):
    return a if c else b


@numba.njit(inline="always", **_JIT)
def _clz64(v):
    return np.uint64(leading_zeros(v))


@numba.njit(inline="always", **_JIT)
def _sqrt(x):
    return np.sqrt(x)


# ---- the generator ---------------------------------------------------------------------------
def philox4x32_py(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint64-held 32-bit words; returns four uint64 words < 2**32."""
    for _ in range(10):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        n0 = (p1 >> SHIFT32) ^ c1 ^ k0
        n2 = (p0 >> SHIFT32) ^ c3 ^ k1
        c1 = p1 & MASK32
        c3 = p0 & MASK32
        c0 = n0
        c2 = n2
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def normal_pair64_py(w0, w1):
    """Two independent standard normals (float64) from two Philox words (see module doc)."""
    v = _U2 * w0 + _U1
    e = _clz64(v) - _U31
    v = v << e
    c = v < _SQRTHALF_2_33
    v = _select(c, v << _U1, v)
    e = _select(c, e + _U1, e)
    k = -np.float64(e)
    f = np.float64(v) * _TWO_M33 - 1.0         # exact; in [√½ − 1, √2 − 1)
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    hfsq = 0.5 * f * f
    lnu = k * _LN2_HI - ((hfsq - (s * (hfsq + (t2 + t1)) + k * _LN2_LO)) - f)
    r = _sqrt(-2.0 * lnu)
    q = w1 >> _U30
    x = (np.float64(w1 & _LOW30) - _PSI_MID) * _PSI_SCALE
    z = x * x
    sn = x + x * z * (_S1 + z * (_S2 + z * (_S3 + z * (_S4 + z * (_S5 + z * _S6)))))
    cs = 1.0 - 0.5 * z + z * z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * (_C5 + z * _C6)))))
    odd = (q & _U1) == _U1
    a = _select(odd, sn, cs)
    b = _select(odd, cs, sn)
    a = _select((q == _U1) | (q == _U2), -a, a)
    b = _select(q >= _U2, -b, b)
    return r * a, r * b


def normal_pair32_py(w0, w1):
    """Two independent standard normals (float32 arithmetic throughout) from two words."""
    v = _U2 * w0 + _U1
    e = _clz64(v) - _U31
    v = v << e
    c = v < _SQRTHALF_2_33
    v = _select(c, v << _U1, v)
    e = _select(c, e + _U1, e)
    k = -np.float32(e)
    x = np.float32(np.int64(v) - _I2_33) * _FTWO_M33  # m − 1 in [√½ − 1, √2 − 1), 24-bit relative
    z = x * x
    y = x * z * (((((((((_FP0 * x + _FP1) * x + _FP2) * x + _FP3) * x + _FP4) * x + _FP5) * x
                     + _FP6) * x + _FP7) * x) + _FP8)
    y = y + _FQ1 * k
    y = y - _FHALF * z
    lnu = x + y + _FQ2 * k
    r = _sqrt(_FM2 * lnu)
    q = w1 >> _U30
    x = (np.float32((w1 >> np.uint64(6)) & _LOW24) - _FPSI_MID) * _FPSI_SCALE
    z = x * x
    sn = x + x * z * ((_FS1 * z + _FS2) * z + _FS3)
    cs = _F1 - _FHALF * z + z * z * ((_FC1 * z + _FC2) * z + _FC3)
    odd = (q & _U1) == _U1
    a = _select(odd, sn, cs)
    b = _select(odd, cs, sn)
    a = _select((q == _U1) | (q == _U2), -a, a)
    b = _select(q >= _U2, -b, b)
    return r * a, r * b


def uniform64_py(w):
    return (np.float64(w) + HALF) * INV_2_32


def uniform32_py(w):
    return (np.float32(w >> _U8) + _FHALF) * _FTWO_M24


def rademacher64_py(w):
    return _select(w >= _TOP, 1.0, -1.0)


def rademacher32_py(w):
    return _select(w >= _TOP, _F1, -_F1)


_SUBSTREAM_TAG = b"sdeverify.rng.substream/1\0"


def substream(seed: int, name: str, i: int = 0) -> int:
    """The seed of sub-experiment ``(name, i)`` of a run seeded with ``seed``: an integer in
    [0, 2**64), usable as an engine seed or by ``np.random.default_rng``.

    Computed as the first 8 bytes, read little-endian, of

        SHA-256( b"sdeverify.rng.substream/1\\0" ‖ seed (8 bytes, little-endian)
                 ‖ i (8 bytes, little-endian) ‖ name (UTF-8) )

    so it is the same on every platform and Python version, distinct ``(seed, name, i)``
    give unrelated seeds (a collision of two of them has probability 2**-64), and no
    arithmetic relation between seeds, names and indices can make two sub-experiments share
    their draws, as offsets like ``seed + 17 i + j`` do.  ``seed`` and ``i`` are integers in
    [0, 2**64) and ``name`` a non-empty string (ValueError otherwise)."""
    seed = validation.seed(seed)
    i = validation.seed(i, "i")
    name = validation.name_string("name", name)
    h = hashlib.sha256(_SUBSTREAM_TAG + seed.to_bytes(8, "little") + i.to_bytes(8, "little")
                       + name.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little")


def key_words(seed: int) -> tuple[np.uint64, np.uint64]:
    """Split a non-negative 64-bit seed into the two Philox key words."""
    seed = int(seed)
    return np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)


_jit_scalar = numba.njit(inline="always", **_JIT)
philox4x32 = _jit_scalar(philox4x32_py)
normal_pair64 = _jit_scalar(normal_pair64_py)
normal_pair32 = _jit_scalar(normal_pair32_py)
uniform64 = _jit_scalar(uniform64_py)
uniform32 = _jit_scalar(uniform32_py)
rademacher64 = _jit_scalar(rademacher64_py)
rademacher32 = _jit_scalar(rademacher32_py)


# ---- lanes over paths: the CPU engine's generator -------------------------------------------
def _fill_lanes_src(kind, k0, k1, path0, step, stream, out, n_used=-1):
    """``out[i, l]`` = draw ``i`` of path ``path0 + l`` at (step, stream); ``out.shape[0]``
    must be a multiple of 4.  The loop over lanes (paths) is what LLVM vectorises.  With
    ``n_used`` ≥ 0 only rows ``< n_used`` are promised: normal draws skip the Box–Muller pair
    of a last block whose second pair no row needs (rows ``n_used`` … of that block are left
    unwritten) — the engine draws 2 normals per step for a 2-dimensional problem, not 4; the
    rows it reads are the same bits either way."""
    rows, lanes = out.shape
    c1 = np.uint64(step) & MASK32
    sw = np.uint64(stream) & MASK32
    p0 = np.uint64(path0)
    if kind == NORMAL:
        used = rows if n_used < 0 else min(n_used, rows)
        blocks = (used + 3) // 4
        half = (used % 4 == 1) or (used % 4 == 2)      # the last block's second pair unused
        for b in range(blocks - 1 if half else blocks):
            for ln in range(lanes):
                p = p0 + np.uint64(ln)
                w0, w1, w2, w3 = philox4x32(np.uint64(b), c1, p & MASK32,
                                            (sw + ((p >> SHIFT32) << _U16)) & MASK32, k0, k1)
                z0, z1 = NORMAL_PAIR(w0, w1)
                z2, z3 = NORMAL_PAIR(w2, w3)
                out[4 * b, ln] = z0
                out[4 * b + 1, ln] = z1
                out[4 * b + 2, ln] = z2
                out[4 * b + 3, ln] = z3
        if half:
            b = blocks - 1
            for ln in range(lanes):
                p = p0 + np.uint64(ln)
                w0, w1, w2, w3 = philox4x32(np.uint64(b), c1, p & MASK32,
                                            (sw + ((p >> SHIFT32) << _U16)) & MASK32, k0, k1)
                z0, z1 = NORMAL_PAIR(w0, w1)
                out[4 * b, ln] = z0
                out[4 * b + 1, ln] = z1
    else:
        rad = kind == RADEMACHER
        for b in range(rows // 4):
            for ln in range(lanes):
                p = p0 + np.uint64(ln)
                w0, w1, w2, w3 = philox4x32(np.uint64(b), c1, p & MASK32,
                                            (sw + ((p >> SHIFT32) << _U16)) & MASK32, k0, k1)
                out[4 * b, ln] = _select(rad, RADEMACHER_(w0), UNIFORM_(w0))
                out[4 * b + 1, ln] = _select(rad, RADEMACHER_(w1), UNIFORM_(w1))
                out[4 * b + 2, ln] = _select(rad, RADEMACHER_(w2), UNIFORM_(w2))
                out[4 * b + 3, ln] = _select(rad, RADEMACHER_(w3), UNIFORM_(w3))


def _specialise(fn, name, **glb):
    """A copy of the plain-Python function ``fn`` whose globals are overridden by ``glb``:
    how one source becomes the CPU, NumPy and CUDA versions (swap ``_select``, ``_clz64``,
    ``_sqrt``; e.g. ``cuda.jit(device=True)(specialise(normal_pair64_py, ..., _clz64=...))``)."""
    g = dict(fn.__globals__)
    g.update(glb)
    f = types.FunctionType(fn.__code__, g, name, fn.__defaults__, fn.__closure__)
    f.__qualname__ = name
    f.__doc__ = fn.__doc__
    return f


specialise = _specialise

fill_lanes64 = numba.njit(**_JIT)(_specialise(
    _fill_lanes_src, "fill_lanes64", NORMAL_PAIR=normal_pair64, UNIFORM_=uniform64,
    RADEMACHER_=rademacher64))
fill_lanes32 = numba.njit(**_JIT)(_specialise(
    _fill_lanes_src, "fill_lanes32", NORMAL_PAIR=normal_pair32, UNIFORM_=uniform32,
    RADEMACHER_=rademacher32))


def fill_lanes(dtype):
    """The compiled lanes generator for ``dtype`` ("float64" or "float32")."""
    return fill_lanes32 if np.dtype(dtype) == np.float32 else fill_lanes64


def n_rows(n: int) -> int:
    """Rows of a lanes buffer holding ``n`` draws (a multiple of 4)."""
    return 4 * ((n + 3) // 4)


def fill_draws(kind, k0, k1, path, step, stream, out):
    """Fill the 1-d ``out`` with draws ``0..len(out)-1`` of one path (convenience, float64/32)."""
    buf = np.empty((n_rows(out.shape[0]), 1), dtype=out.dtype)
    fill_lanes(out.dtype)(kind, k0, k1, path, step, stream, buf)
    out[:] = buf[:out.shape[0], 0]


# ---- the NumPy twin ----------------------------------------------------------------------------
def _clz64_numpy(v):
    v = np.asarray(v, dtype=np.uint64)
    return np.uint64(64) - np.frexp(v.astype(np.float64))[1].astype(np.uint64)  # v < 2**53


_NP = dict(_select=np.where, _clz64=_clz64_numpy, _sqrt=np.sqrt)
_np_normal64 = _specialise(normal_pair64_py, "normal_pair64_np", **_NP)
_np_normal32 = _specialise(normal_pair32_py, "normal_pair32_np", **_NP)
_np_uniform64 = _specialise(uniform64_py, "uniform64_np", **_NP)
_np_uniform32 = _specialise(uniform32_py, "uniform32_np", **_NP)
_np_rademacher64 = _specialise(rademacher64_py, "rademacher64_np", **_NP)
_np_rademacher32 = _specialise(rademacher32_py, "rademacher32_np", **_NP)


def stream_word(paths: np.ndarray, stream: int) -> np.ndarray:
    """Counter word 3 for these (uint64) paths: ``stream + 2**16 (path >> 32)`` mod 2**32
    (the stream itself below path 2**32; module doc)."""
    paths = np.asarray(paths, dtype=np.uint64)
    return (np.uint64(int(stream) & 0xFFFFFFFF) + ((paths >> SHIFT32) << _U16)) & MASK32


def check_path_range(paths: np.ndarray, stream: int) -> None:
    """ValueError unless every (path, stream) has a counter of its own (see module doc)."""
    paths = np.asarray(paths)
    if paths.size == 0:
        return
    if paths.dtype.kind not in "iu" or int(paths.min()) < 0:
        raise ValueError("paths must be non-negative integers")
    top = int(paths.max())
    if top >= MAX_PATH:
        raise ValueError(f"path indices must be < 2**48 = {MAX_PATH}, got {top}")
    if not 0 <= int(stream) < 2 ** 32:
        raise ValueError(f"stream must be in [0, 2**32), got {stream}")
    if top >= 2 ** 32 and int(stream) >= MAX_STREAM:
        raise ValueError(f"paths >= 2**32 need stream < 2**16 = {MAX_STREAM} (the high bits of "
                         f"the path share the stream word), got stream {stream}")


def draws_numpy(kind: int, seed: int, paths: np.ndarray, step: int, stream: int, n: int,
                dtype="float64") -> np.ndarray:
    """Reference (NumPy-vectorised) draws, shape ``(len(paths), n)``; bitwise the same values
    as the compiled engines.  ``paths`` are 64-bit path indices < 2**48 (module doc)."""
    f32 = np.dtype(dtype) == np.float32
    k0, k1 = key_words(seed)
    paths = np.asarray(paths).reshape(-1)
    if paths.dtype.kind not in "iu":
        paths = paths.astype(np.int64)
    check_path_range(paths, stream)
    paths = paths.astype(np.uint64)
    nblk = (n + 3) // 4
    with np.errstate(over="ignore"):
        c0 = np.broadcast_to(np.arange(nblk, dtype=np.uint64)[None, :], (paths.shape[0], nblk)).copy()
        c1 = np.full_like(c0, np.uint64(step) & MASK32)
        c2 = np.broadcast_to((paths & MASK32)[:, None], c0.shape).copy()
        c3 = np.broadcast_to(stream_word(paths, stream)[:, None], c0.shape).copy()
        w = philox4x32_py(c0, c1, c2, c3, k0, k1)
    if kind == NORMAL:
        pair = _np_normal32 if f32 else _np_normal64
        z = [*pair(w[0], w[1]), *pair(w[2], w[3])]
    elif kind == RADEMACHER:
        z = [(_np_rademacher32 if f32 else _np_rademacher64)(wi) for wi in w]
    else:
        z = [(_np_uniform32 if f32 else _np_uniform64)(wi) for wi in w]
    out = np.stack(z, axis=-1).reshape(paths.shape[0], 4 * nblk)
    return np.ascontiguousarray(out[:, :n], dtype=np.float32 if f32 else np.float64)


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
