"""Real-GPU check and timing of the numba.cuda engine (run on a machine with an NVIDIA GPU).

    python benchmarks/gpu_check.py [--paths 1048576] [--steps 1024]

1. correctness: CUDA vs CPU engine on 4096 paths of every built-in problem (max deviation;
   expected ~1e-13: the GPU contracts multiply-adds into FMAs, the CPU engine does not);
2. timing: the reference workload (d = 8 diagonal quadratic, SGD + SGDM(0.9) coupled,
   16 recorded steps) on the GPU, median of 3 after a warm-up, with the card's name, next to
   the CPU engine on this host's cores.  Prints path·dim·steps/s for both and the ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdeverify as sv  # noqa: E402
from sdeverify.problems import SVAG, CosineWell, LinearRegression, Quadratic  # noqa: E402


def median_time(f, repeats=3):
    f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--paths", type=int, default=2 ** 20)
    p.add_argument("--steps", type=int, default=1024)
    args = p.parse_args()
    from numba import cuda
    print("device:", cuda.get_current_device().name.decode() if hasattr(cuda.get_current_device().name, "decode")
          else cuda.get_current_device().name)
    worst = 0.0
    for P in (Quadratic(np.diag([1.0, 2.0, 3.0]), center=[1, 0, -1]), CosineWell(4),
              SVAG(CosineWell(2), 4.0), LinearRegression.generate(n=64, d=3, batch_size=4)):
        kw = dict(steps=200, paths=4096, sigma=1.0, seed=1, observables=["loss", "sqnorm"])
        opts = [sv.SGD(0.02), sv.SGDM(0.02, 0.9)]
        g = sv.simulate(P, opts, np.full(P.dim, 0.5), backend="cuda", **kw)
        c = sv.simulate(P, opts, np.full(P.dim, 0.5), backend="cpu", **kw)
        dev = float(np.max(np.abs(g.x_final - c.x_final) / (1 + np.abs(c.x_final))))
        worst = max(worst, dev)
        print(f"{P.name:28s} max rel. deviation GPU vs CPU: {dev:.3g}")
    P = Quadratic(np.diag(np.linspace(1.0, 4.0, 8)))
    opts = [sv.SGD(0.01), sv.SGDM(0.01, 0.9)]
    work = args.paths * 8 * args.steps
    for backend, paths in (("cuda", args.paths), ("cpu", min(args.paths, 2 ** 16))):
        t = median_time(lambda: sv.simulate(P, opts, np.ones(8), steps=args.steps, paths=paths,
                                            sigma=1.0, backend=backend))
        print(f"{backend}: {paths} paths x {args.steps} steps x d=8: {t:.3f} s, "
              f"{paths * 8 * args.steps / t / 1e6:.0f} M path*dim*steps/s")
    return 0 if worst < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
