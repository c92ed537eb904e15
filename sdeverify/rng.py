"""Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11).

Every draw is a pure function of ``(seed, path, step, stream, index)``:

    counter = (index // 4, step, path, stream),   key = (seed_lo, seed_hi)

and the four 32-bit words of ``philox4x32(counter, key)`` give four uniforms
``u = (w + 0.5) / 2**32`` in (0, 1).  Normals come from Box–Muller on consecutive pairs
``(u0, u1)`` and ``(u2, u3)``; the 32-bit uniforms truncate the normal at
``sqrt(-2 ln 2**-33) ≈ 6.76`` standard deviations (tail mass ≈ 1.4e-11, invisible to any test
this toolkit runs).

The bit-level functions are written in plain Python over ``uint64`` values so that the *same
source* runs vectorised on NumPy arrays (the reference backend), compiled by ``numba.njit``
(the CPU engine) and by ``numba.cuda.jit(device=True)`` (the GPU engine).
"""
from __future__ import annotations

import numpy as np
import numba

MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)
TWO_PI = 6.283185307179586
INV_2_32 = 2.3283064365386963e-10  # 2**-32
HALF = 0.5

#: draw kinds understood by the engines
NORMAL, RADEMACHER, UNIFORM = 0, 1, 2
DRAW_KINDS = {"normal": NORMAL, "gaussian": NORMAL, "rademacher": RADEMACHER, "uniform": UNIFORM}


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


def key_words(seed: int) -> tuple[np.uint64, np.uint64]:
    """Split a non-negative 64-bit seed into the two Philox key words."""
    seed = int(seed)
    return np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)


philox4x32 = numba.njit(inline="always", cache=True)(philox4x32_py)


@numba.njit(inline="always", cache=True)
def _uniform(w):
    return (np.float64(w) + HALF) * INV_2_32


@numba.njit(cache=True)
def fill_draws(kind, k0, k1, path, step, stream, out):
    """Fill ``out`` with draws ``index = 0..len(out)-1`` of the given kind (CPU engine)."""
    n = out.shape[0]
    c1 = np.uint64(step) & MASK32
    c2 = np.uint64(path) & MASK32
    c3 = np.uint64(stream) & MASK32
    nblk = (n + 3) // 4
    for b in range(nblk):
        w0, w1, w2, w3 = philox4x32(np.uint64(b), c1, c2, c3, k0, k1)
        i = 4 * b
        if kind == NORMAL:
            r = np.sqrt(-2.0 * np.log(_uniform(w0)))
            t = TWO_PI * _uniform(w1)
            z0 = r * np.cos(t)
            z1 = r * np.sin(t)
            r = np.sqrt(-2.0 * np.log(_uniform(w2)))
            t = TWO_PI * _uniform(w3)
            z2 = r * np.cos(t)
            z3 = r * np.sin(t)
        elif kind == RADEMACHER:
            z0 = 1.0 if w0 >= np.uint64(0x80000000) else -1.0
            z1 = 1.0 if w1 >= np.uint64(0x80000000) else -1.0
            z2 = 1.0 if w2 >= np.uint64(0x80000000) else -1.0
            z3 = 1.0 if w3 >= np.uint64(0x80000000) else -1.0
        else:
            z0 = _uniform(w0)
            z1 = _uniform(w1)
            z2 = _uniform(w2)
            z3 = _uniform(w3)
        out[i] = z0
        if i + 1 < n:
            out[i + 1] = z1
        if i + 2 < n:
            out[i + 2] = z2
        if i + 3 < n:
            out[i + 3] = z3


def draws_numpy(kind: int, seed: int, paths: np.ndarray, step: int, stream: int, n: int) -> np.ndarray:
    """Reference (NumPy-vectorised) draws, shape ``(len(paths), n)``; same values as the engines."""
    k0, k1 = key_words(seed)
    paths = np.asarray(paths, dtype=np.uint64)
    nblk = (n + 3) // 4
    blk = np.arange(nblk, dtype=np.uint64)[None, :]
    c0 = np.broadcast_to(blk, (paths.shape[0], nblk)).copy()
    c1 = np.full_like(c0, np.uint64(step) & MASK32)
    c2 = np.broadcast_to((paths & MASK32)[:, None], c0.shape).copy()
    c3 = np.full_like(c0, np.uint64(stream) & MASK32)
    w = philox4x32_py(c0, c1, c2, c3, k0, k1)
    u = [(wi.astype(np.float64) + HALF) * INV_2_32 for wi in w]
    if kind == NORMAL:
        r01 = np.sqrt(-2.0 * np.log(u[0]))
        r23 = np.sqrt(-2.0 * np.log(u[2]))
        z = [r01 * np.cos(TWO_PI * u[1]), r01 * np.sin(TWO_PI * u[1]),
             r23 * np.cos(TWO_PI * u[3]), r23 * np.sin(TWO_PI * u[3])]
    elif kind == RADEMACHER:
        z = [np.where(wi >= np.uint64(0x80000000), 1.0, -1.0) for wi in w]
    else:
        z = u
    out = np.stack(z, axis=-1).reshape(paths.shape[0], 4 * nblk)
    return out[:, :n]
