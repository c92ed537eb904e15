"""False-failure rate of a check's verdicts on the correct engine: rerun it under many seeds.

    python benchmarks/false_failures.py NAME [--size smoke] [--seeds 0:100] [--json PATH]

Prints, per verdict claim, how many seeds failed it, and the number of seeds on which the
check as a whole failed.  Runs in-process (kernels compile once).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--size", default="smoke")
    ap.add_argument("--seeds", default="0:100", help="start:stop")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from sdeverify.experiments import get
    a, b = (int(v) for v in args.seeds.split(":"))
    mod = get(args.name)
    fails, bad_seeds, t0 = Counter(), [], time.perf_counter()
    n_verdicts = 0
    for seed in range(a, b):
        res = mod.run(size=args.size, seed=seed)
        n_verdicts = len(res.verdicts)
        failed = [v.claim for v in res.verdicts if not v.passed]
        fails.update(failed)
        if failed:
            bad_seeds.append(seed)
            print(f"seed {seed}: FAILED {failed}", flush=True)
    out = {"name": args.name, "size": args.size, "seeds": [a, b], "verdicts": n_verdicts,
           "failed_runs": len(bad_seeds), "bad_seeds": bad_seeds, "per_claim": dict(fails),
           "seconds": time.perf_counter() - t0}
    print(f"{args.name} ({args.size}): {len(bad_seeds)}/{b - a} seeds failed a verdict "
          f"({n_verdicts} verdicts per run); {out['seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
