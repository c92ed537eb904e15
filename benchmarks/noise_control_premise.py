"""The noise control's premise of ``train_svag`` over many seeds, on the MLP and the small ResNet.

    python benchmarks/noise_control_premise.py OUT.json [--seeds 30] [--pad 4]

For each network (the MLP of the quick size, the BN ResNet-8 of the full size) and seed, the
verdict's own function :func:`sdeverify.experiments.train_svag.control_noise_ratio`: one SGD
step's spread across replicas at the control's minibatch over (1−β)/(1+β) times the spread at
the check's B (lrs 6.4 and 1.6, the tuned lrs of seed 0).  The verdict passes when the 99%
interval's lower end is ≤ 1; on a correct trainer the count of failures is the verdict's
false-failure count where the premise holds (the MLP), and a measurement of the premise where
it may not (the ResNet, whose capped batch keeps augmentation noise).  ``--pad`` sets the
random crop's padding (``augment.draw``'s ``pad``; 0 keeps the flips only) to measure how much
of the ResNet's ratio the crops make.
"""
from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np

from sdeverify.experiments import train_common as tc
from sdeverify.experiments import train_svag as tsv
from sdeverify.train import augment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSON file for the per-seed ratios")
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--pad", type=int, default=augment.PAD)
    args = ap.parse_args()
    augment.draw = functools.partial(augment.draw, pad=args.pad)
    out = {"pad": args.pad}
    for net, lr in (("mlp", 6.4), ("resnet", 1.6)):
        cfg = dict(tsv.NET_SIZES[net]["quick" if net == "mlp" else "full"], backend="cpu")
        setup = tc.build(cfg)
        B = cfg["batch"]
        big = min(setup.data.n_train, int(round(tc.noise_matched_batch(B))))
        t0 = time.time()
        rows = []
        for seed in range(args.seeds):
            iv = tsv.control_noise_ratio(setup, B, big, lr, seed)
            rows.append([iv.estimate, iv.low, iv.high, bool(iv.low <= 1.0)])
        out[net] = dict(B=B, big=big, lr=lr, rows=rows, failures=sum(not r[3] for r in rows),
                        seconds=time.time() - t0)
        print(f"{net}: B={B}, control B={big}: {out[net]['failures']}/{args.seeds} above 1; median "
              f"ratio {np.median([r[0] for r in rows]):.3g}; {out[net]['seconds']:.0f} s", flush=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
