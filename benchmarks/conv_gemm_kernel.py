"""GFLOP/s of the convolutions' products: the register-blocked kernel (sdeverify.train.conv_gemm)
against the BLAS call the CPU trainer made before it (sdeverify.train.blas, SciPy's OpenBLAS),
one thread, same run.

    python benchmarks/conv_gemm_kernel.py [--dtype float32] [--repeats 5] [--seconds 0.2]

The shapes are ResNet-20's at batch 128 on 32×32 images, one chunk of ``conv_cpu.ROWS`` = 1024
output pixels per product (channels last): per stage (16, 32, 64 channels)

* ``fwd``: ``out[rows, O] = patches[rows, 9C] · W[O, 9C]ᵀ`` (also a stride-1 conv's input
  gradient, with C and O swapped);
* ``dW``: ``acc[9C, O] += patches[rows, 9C]ᵀ · dy[rows, O]`` (the weight gradient);
* ``dcols``: ``dcols[rows, 9C] = dy[rows, O] · W[O, 9C]`` (a strided conv's patch gradient).

Prints the median over ``--repeats`` timings of a loop lasting about ``--seconds``, the ratio
ours/BLAS, and the largest difference between the two results relative to the largest entry.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdeverify.train import conv_gemm  # noqa: E402
from sdeverify.train.blas import gemm as blas_gemm  # noqa: E402
from sdeverify.train.blas_threads import single_threaded  # noqa: E402


@numba.njit(nogil=True)
def _blas_loop(kind, reps, a, b, c, m, n, k):
    for _ in range(reps):
        if kind == 0:       # fwd: a (m, k), b = W (n, k)
            blas_gemm(False, True, m, n, k, 1.0, a, k, b, k, 0.0, c, n)
        elif kind == 1:     # dW: a (k, m) = patches, b (k, n) = dy, c (m, n) += aᵀ·b
            blas_gemm(True, False, m, n, k, 1.0, a, m, b, n, 1.0, c, n)
        else:               # dcols: a (m, k) = dy, b (k, n) = W
            blas_gemm(False, False, m, n, k, 1.0, a, k, b, n, 0.0, c, n)


@numba.njit(nogil=True)
def _ours_loop(kind, reps, a, b, c, m, n, k):
    for _ in range(reps):
        if kind == 0:
            conv_gemm.gemm(m, n, k, a, 0, k, 1, b, 0, 1, k, 0.0, c, 0, n)
        elif kind == 1:
            conv_gemm.gemm(m, n, k, a, 0, 1, m, b, 0, n, 1, 1.0, c, 0, n)
        else:
            conv_gemm.gemm(m, n, k, a, 0, k, 1, b, 0, n, 1, 0.0, c, 0, n)


def _time(loop, kind, a, b, c, m, n, k, seconds, repeats):
    loop(kind, 1, a, b, c, m, n, k)
    t0 = time.perf_counter()
    loop(kind, 3, a, b, c, m, n, k)
    reps = max(1, int(seconds / max((time.perf_counter() - t0) / 3, 1e-9)))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loop(kind, reps, a, b, c, m, n, k)
        out.append((time.perf_counter() - t0) / reps)
    return float(np.median(out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.2)
    p.add_argument("--channels", default="16,32,64",
                   help="C = O of each stage (the small conv net of the quick checks: 4,8,16)")
    args = p.parse_args()
    dt = np.dtype(args.dtype)
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"{args.dtype}, 1 thread; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
          f"load {os.getloadavg()[0]:.1f}")
    rows = 1024
    cases = []
    for C in (int(v) for v in args.channels.split(",")):
        K = 9 * C
        cases += [(f"fwd   C=O={C:<3d}", 0, rows, C, K), (f"dW    C=O={C:<3d}", 1, K, C, rows),
                  (f"dcols C=O={C:<3d}", 2, rows, K, C)]
    with single_threaded():
        for name, kind, m, n, k in cases:
            if kind == 0:
                a, b = rng.normal(size=m * k), rng.normal(size=n * k)
            else:
                a, b = rng.normal(size=m * k), rng.normal(size=k * n)
            a, b = a.astype(dt), b.astype(dt)
            res = []
            for loop in (_blas_loop, _ours_loop):
                c = np.zeros(m * n, dtype=dt)
                t = _time(loop, kind, a, b, c, m, n, k, args.seconds, args.repeats)
                c = np.zeros(m * n, dtype=dt)
                loop(kind, 1, a, b, c, m, n, k)
                res.append((t, c))
            (tb, cb), (to, co) = res
            gf = 2.0 * m * n * k / 1e9
            dev = np.max(np.abs(co - cb)) / np.max(np.abs(cb))
            print(f"{name} m={m:<5d} n={n:<4d} k={k:<5d} BLAS {gf / tb:6.1f} GFLOP/s  ours "
                  f"{gf / to:6.1f} GFLOP/s  x{tb / to:4.2f}   max rel. diff {dev:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
