"""Reproduce the paper-check figures at full size.

    python benchmarks/reproduce.py                      # every registered check, --size full
    python benchmarks/reproduce.py weak_approximation variance_reduction --size quick

Writes figures/NAME.png (committed) and benchmarks/results/NAME.json/.npz, prints each
check's verdict table and wall time.  The figures are drawn from the saved results.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdeverify import experiments  # noqa: E402
from sdeverify.cli import _print_table  # noqa: E402
from sdeverify.runner import verdict_rows  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="experiments (default: all registered)")
    p.add_argument("--size", default="full", choices=("smoke", "quick", "full"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    names = args.names or experiments.available()
    ok = True
    for name in names:
        mod = experiments.get(name)
        t0 = time.perf_counter()
        res = mod.run(size=args.size, seed=args.seed)
        res.save(ROOT / "benchmarks" / "results")
        fig = mod.plot(res, ROOT / "figures" / f"{name}.png")
        print(f"\n== {name} ({args.size}, seed {args.seed}): {time.perf_counter() - t0:.1f} s -> {fig}")
        _print_table(verdict_rows(res))
        ok &= res.passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
