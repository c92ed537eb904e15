"""False-failure rate of a check's verdicts on the correct engine: rerun it under many seeds.

    python benchmarks/false_failures.py NAME [--size smoke] [--seeds 0:100] [--json PATH]

Prints, per verdict claim, how many seeds failed it, and the number of seeds on which the
check as a whole failed; the JSON keeps every run's verdicts (claim, PASS/FAIL, measured).
Runs in-process (kernels compile once).  NAME is a registered
check, or one of :data:`PARTS` — the verdicts of one part of a check at its smoke size,
for parts that are cheap to rerun alone.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path


def _part_batch_oracle(seed):
    from sdeverify.experiments import batch_size as b
    return b.oracle_verdicts(b.data(max_batch=64), 64, b.SIZES["smoke"]["oracle_paths"], seed + 500)[0]


def _part_slow_general(seed):
    from sdeverify.experiments import slow_sde as s
    return s.general_formula_verdicts(1.25, seed, s.SIZES["smoke"]["paths"])[0]


def _part_fit_order(seed):
    from sdeverify.experiments import instruments as ins
    reps = ins.SIZES["smoke"]["fit_reps"]
    return [ins._coverage_verdict("fit_order coverage", ins.fit_order_coverage(reps, seed),
                                  ins.FIT_ORDER_BAND, ins.FIT_ORDER_ALT),
            ins._coverage_verdict("fit_order coverage under lack of fit",
                                  ins.fit_order_coverage(reps, seed, scatter=ins.LACK_OF_FIT),
                                  (ins.NOMINAL, ins.NOMINAL), ins.FIT_ORDER_LOF_ALT)]


#: cheap parts of checks, rerun alone: name -> seed -> verdicts
PARTS = {"batch_size.oracle": _part_batch_oracle, "slow_sde.general": _part_slow_general,
         "instruments.fit_order": _part_fit_order}


class _Part:
    def __init__(self, f):
        self.f = f

    def run(self, size, seed):
        class R:
            verdicts = tuple(self.f(seed))
        return R()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--size", default="smoke")
    ap.add_argument("--seeds", default="0:100", help="start:stop")
    ap.add_argument("--json", default=None)
    ap.add_argument("--data", default=None,
                    help="train the trained-network checks on this data (as `check --data`)")
    args = ap.parse_args(argv)
    from sdeverify.experiments import get
    a, b = (int(v) for v in args.seeds.split(":"))
    mod = _Part(PARTS[args.name]) if args.name in PARTS else get(args.name)
    over = {}
    if args.data is not None:
        from sdeverify.experiments.train_common import data_overrides
        over = data_overrides(mod.NET_SIZES, args.size, args.data)
    fails, bad_seeds, t0 = Counter(), [], time.perf_counter()
    n_verdicts, runs = 0, []
    for seed in range(a, b):
        res = mod.run(size=args.size, seed=seed, **over)
        n_verdicts = len(res.verdicts)
        runs.append({"seed": seed, "verdicts": [{"claim": v.claim, "passed": bool(v.passed),
                                                  "measured": v.as_dict().get("measured")}
                                                 for v in res.verdicts]})
        # keyed by position and the claim's opening words (claims print seed-dependent numbers)
        failed = [f"{i}: {v.claim[:72]}" for i, v in enumerate(res.verdicts) if not v.passed]
        fails.update(failed)
        if failed:
            bad_seeds.append(seed)
            print(f"seed {seed}: FAILED {failed}", flush=True)
    out = {"name": args.name, "size": args.size, "data": args.data, "seeds": [a, b], "verdicts": n_verdicts,
           "failed_runs": len(bad_seeds), "bad_seeds": bad_seeds, "per_claim": dict(fails),
           "seconds": time.perf_counter() - t0, "runs": runs}
    print(f"{args.name} ({args.size}): {len(bad_seeds)}/{b - a} seeds failed a verdict "
          f"({n_verdicts} verdicts per run); {out['seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
