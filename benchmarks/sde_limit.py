"""Reproduce the SDE-limit scaling plot (THEORY §7) and print the measured weak orders.

    python benchmarks/sde_limit.py                 # full size -> figures/sde_limit.png
    python benchmarks/sde_limit.py --size quick --figure /tmp/sde_limit_quick.png
    python benchmarks/sde_limit.py --out results/  # also save the result (JSON + NPZ)

Prints, per problem × test function × series, the weak order fitted on the series' fit range
(with its 95% interval), the order over the whole grid, every verdict, and the wall time.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdeverify.experiments import sde_limit  # noqa: E402


def _fmt(o) -> str:
    o = np.asarray(o, dtype=float)
    return "      —      " if not np.isfinite(o[0]) else f"{o[0]:.3f} [{o[1]:.3f}, {o[2]:.3f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="full", choices=["smoke", "quick", "full"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default=str(ROOT / "figures" / "sde_limit.png"))
    ap.add_argument("--out", default=None, help="folder to save the result (JSON + NPZ)")
    args = ap.parse_args(argv)

    def progress(done, total):
        print(f"  [{done}/{total}] {time.perf_counter() - t0:7.1f} s", flush=True)

    print(f"sde_limit, size={args.size}, seed={args.seed}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()})", flush=True)
    t0 = time.perf_counter()
    res = sde_limit.run(size=args.size, seed=args.seed, progress=progress)
    wall = time.perf_counter() - t0
    d = res.data
    print(f"\nwall time {wall:.1f} s (quadratic, exact: {float(d['quadratic.wall']):.1f} s; "
          f"cosine_well, Monte Carlo with {res.params['paths']} paths, r = {res.params['substeps']}: "
          f"{float(d['cosine_well.wall']):.1f} s)")
    for prob in sde_limit.PROBLEMS:
        eta = np.asarray(d[f"{prob}.eta"])
        print(f"\n{prob}: eta from {eta.max():.4g} to {eta.min():.4g} ({eta.size} values)")
        print(f"  {'series':<22}{'h':<6}{'order (fit range)':<26}{'order (all eta)':<26}err at min eta")
        for s in sde_limit.SERIES:
            for h in res.params["test_functions"]:
                k = f"{prob}.{s}.{h}"
                i = int(np.argmin(eta))
                err = f"{d[k + '.err'][i]:.3g} [{d[k + '.low'][i]:.3g}, {d[k + '.high'][i]:.3g}]"
                print(f"  {s:<22}{h:<6}{_fmt(d[k + '.order']):<26}{_fmt(d[k + '.order_all']):<26}{err}")
    if "cosine_well.em_bias" in d:
        print("\ncosine_well: max |E_h - E_2h| of the fine EM reference per eta (bias removed by "
              "extrapolation):", " ".join(f"{b:.2g}" for b in np.asarray(d["cosine_well.em_bias"])))
    print("\nverdicts:")
    for v in res.verdicts:
        print(f"  {'PASS' if v.passed else 'FAIL'}  {v.measured}  {v.claim}")
    fig = sde_limit.plot(res, args.figure)
    print(f"\nfigure: {fig}")
    if args.out:
        print(f"result: {res.save(args.out)}")
    print(f"all verdicts passed: {res.passed}")
    return 0 if res.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
