"""The paper's large-batch comparison (Sec 6, Fig 1's protocol, on CIFAR-10 instead of
ImageNet): final test accuracy of SGD and SGDM (EMA form, β = 0.9) across batch sizes, at two
training budgets, with the lr of each (batch size, optimizer, budget) tuned on a validation
split.

    python benchmarks/batch_size_sweep.py --data cifar10:FOLDER --backend cuda --out runs/sweep
    python benchmarks/batch_size_sweep.py --tiny --backend numpy --out /tmp/sweep   # seconds

The paper (Fig 1, ImageNet, Goyal et al.'s protocol) grid-searches SGDM's lr per batch size
and runs SGD at the same lr, and finds the two comparable at small batch and SGDM ahead at
large batch.  Here, for every batch size B of ``--batches`` (128 … 4096) and both budgets E and
2E (``--epochs E``): SGDM's lr is tuned on a factor-2 grid centred by linear scaling
(``--lr-base`` × B / ``--base-batch``, times ``--lr-factors``; :func:`sdeverify.train.tune_lr`
extends it while the choice is at an edge), then SGDM, SGD at SGDM's lr (the paper's
comparison) and SGD at its own tuned lr (what a skeptic asks: is SGD only behind because it
ran at momentum's lr?) train in one launch with common initial weights, minibatches and
augmentations.  Protocol (weight decay, augmentation, warm-up, decay at 50% / 75%):
benchmarks/cifar_protocol.py.

Resumable like reproduce_fig2.py: each tuning and each (B, budget) launch is a unit saved
under ``--out`` as it finishes (a launch also every ``--checkpoint-epochs`` epochs); only
``--batches`` may change between reruns.  Writes
``curves.csv`` (per epoch), ``summary.json`` (tuned lrs, final accuracies, gaps SGDM − SGD
with 95% Student-t intervals over paired replicas) and ``batch_sweep.png`` (final accuracy and
gap against B, both budgets).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cifar_protocol as cp  # noqa: E402
from sdeverify import SGD, SGDM  # noqa: E402
from sdeverify.files import write_hashed_json  # noqa: E402

PROG = "batch_size_sweep.py"
FULL = dict(depth=20, width=1.0, batches="128,256,512,1024,2048,4096", epochs=80,
            warmup_epochs=5.0, replicas=4, tune_replicas=1, checkpoint_epochs=10, image_size=16,
            lr_base=0.2, base_batch=512, lr_factors="0.25,0.5,1,2,4")
TINY = dict(depth=8, width=0.25, batches="16,64", epochs=1, warmup_epochs=0.5, replicas=2,
            tune_replicas=1, checkpoint_epochs=1, image_size=8, n_train=128, n_test=64,
            lr_base=0.2, base_batch=64, lr_factors="0.5,1,2")
#: the three runs of a (batch size, budget) launch
SGDM_NAME, SGD_SAME, SGD_TUNED = "SGDM", "SGD@SGDM-lr", "SGD-tuned"


def parser() -> cp.ArgumentParser:
    p = cp.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                          epilog=cp.preset_epilog(FULL, TINY))
    cp.add_common_arguments(p)
    p.add_argument("--batches", default=None, help="comma list of batch sizes (128,...,4096)")
    p.add_argument("--lr-base", type=float, default=None,
                   help="lr at --base-batch: the grid's centre is lr-base * B / base-batch (0.2)")
    p.add_argument("--base-batch", type=int, default=None, help="batch of --lr-base (512)")
    p.add_argument("--lr-factors", default=None,
                   help="the grid: the centre times these factors (0.25,0.5,1,2,4)")
    return p


def run(argv=None) -> int:
    args = cp.apply_preset(parser().parse_args(argv), FULL, TINY)
    cp.check_common(args)
    batches = cp.floats("--batches", args.batches, low=1, integer=True)
    factors = cp.floats("--lr-factors", args.lr_factors, low=0.0, low_open=True)
    if not np.isfinite(args.lr_base) or args.lr_base <= 0:
        raise ValueError(f"--lr-base must be > 0, got {args.lr_base}")
    if args.base_batch < 1:
        raise ValueError(f"--base-batch must be an integer >= 1, got {args.base_batch}")
    protocol = cp.Protocol(warmup_epochs=args.warmup_epochs)
    data = cp.load_data(args)
    protocol.check_batches("--batches", batches, data, tuned=True)
    model = cp.build_model(args, data, protocol)
    budgets = (args.epochs, 2 * args.epochs)
    config = dict(script="batch_size_sweep", data=cp.data_record(args, data),
                  model=model.describe(), budgets=list(budgets),
                  protocol=dataclasses.asdict(protocol), replicas=args.replicas,
                  tune_replicas=args.tune_replicas, seed=args.seed, backend=args.backend,
                  dtype=args.dtype, lr_base=args.lr_base, base_batch=args.base_batch,
                  lr_factors=factors,
                  checkpoint_epochs=args.checkpoint_epochs)
    store = cp.UnitStore(args.out, config)
    print(f"{model.describe()} on {data.name} ({data.n_train} training images), B in {batches}, "
          f"budgets {budgets} epochs; {protocol.describe(args.epochs)}; {args.replicas} replicas; "
          f"out {store.folder}")
    passes = sum(cp.image_passes(data.n_train, B, E, 3 * args.replicas)
                 + 2 * cp.tuning_passes(data.n_train, B, E, len(factors), args.tune_replicas, protocol)
                 for B in batches for E in budgets)
    print(cp.describe_work(passes, model) + " at most (SGD-tuned trains only when its lr differs)")
    runs, tunings = {}, {}
    for B in batches:
        grid = [args.lr_base * B / args.base_batch * f for f in factors]
        for E in budgets:
            common = dict(batch_size=B, epochs=E, seed=args.seed, backend=args.backend,
                          dtype=args.dtype, quiet=args.quiet)
            tm = store.tuning(f"tune-B{B}-E{E}-sgdm", lambda: cp.tune(
                model, data, lambda x: SGDM(x, protocol.beta), grid, protocol,
                replicas=args.tune_replicas, **common))
            ts = store.tuning(f"tune-B{B}-E{E}-sgd", lambda: cp.tune(
                model, data, lambda x: SGD(x), grid, protocol,
                replicas=args.tune_replicas, **common))
            for label, t in (("SGDM", tm), ("SGD", ts)):
                if t.at_edge:
                    print(f"warning: B={B}, {E} epochs: {label}'s tuned lr {t.lr:g} is at the edge "
                          f"of the grid after {t.extended} extensions: inconclusive",
                          file=sys.stderr)
            opts = [SGDM(tm.lr, protocol.beta, name=SGDM_NAME), SGD(tm.lr, name=SGD_SAME)]
            if ts.lr != tm.lr:
                opts.append(SGD(ts.lr, name=SGD_TUNED))
            runs[B, E] = store.train(f"run-B{B}-E{E}", lambda ckpt, opts=opts, common=common:
                                     cp.train_curves(model, data, opts, protocol,
                                                     replicas=args.replicas, checkpoint=ckpt,
                                                     segment_epochs=args.checkpoint_epochs,
                                                     **common),
                                     inputs={"lr_sgdm": tm.lr, "lr_sgd": ts.lr})
            tunings[B, E] = (tm, ts)
    rows = []
    for (B, E), res in runs.items():
        rows.append(dict(batch=B, epochs=E, steps_per_epoch=data.n_train // B, **final_rows(res),
                         tuning=tuning_record(*tunings[B, E])))
    cp.write_curves_csv(store.folder / "curves.csv",
                        [({"batch": B, "epochs": E}, r, data.n_train // B)
                         for (B, E), r in runs.items()])
    summary = dict(budgets=list(budgets), rows=rows)
    write_hashed_json(store.folder / "summary.json", dict(summary, config=store.config))
    fig = plot(summary, store.folder / "batch_sweep.png",
               f"{model.describe()}\n{protocol.describe(args.epochs)} (and x2)")
    print_table(summary)
    print(f"wrote {fig}, curves.csv, summary.json; units trained now: {len(store.trained)}, "
          f"loaded: {len(store.loaded)}")
    return 0


def sgd_tuned(res) -> str:
    """The name of SGD at its own tuned lr in ``res`` (SGD@SGDM-lr when the tunings agreed)."""
    return SGD_TUNED if SGD_TUNED in res.optimizers else SGD_SAME


def final_rows(res) -> dict:
    """Final accuracies of the three runs and the paired gaps SGDM − SGD."""
    tuned = sgd_tuned(res)
    return dict(acc={SGDM_NAME: cp.final_record(res, SGDM_NAME),
                     SGD_SAME: cp.final_record(res, SGD_SAME),
                     SGD_TUNED: cp.final_record(res, tuned)},
                gap_same_lr=cp.interval_record(cp.paired_gap(res, SGDM_NAME, SGD_SAME)),
                gap_tuned=cp.interval_record(cp.paired_gap(res, SGDM_NAME, tuned)))


def tuning_record(tm, ts) -> dict:
    return {name: dict(lr=t.lr, grid=list(t.grid), mean_val_acc=t.mean_acc.tolist(),
                       at_edge=t.at_edge, extended=t.extended)
            for name, t in ((SGDM_NAME, tm), ("SGD", ts))}


def _pct(iv) -> str:
    return "n/a" if iv is None else \
        f"{100 * iv['estimate']:+.2f} [{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}]"


def print_table(summary: dict) -> None:
    print("final test accuracy (%); gaps SGDM - SGD paired over replicas, 95% t intervals")
    print(f"{'B':>5} {'epochs':>6} {'lr SGDM':>8} {'lr SGD':>8} {'SGDM':>7} {'SGD@lr':>7} "
          f"{'SGD-t':>7}  gap at SGDM's lr / gap vs tuned SGD")
    for r in summary["rows"]:
        a, t = r["acc"], r["tuning"]
        print(f"{r['batch']:>5} {r['epochs']:>6} {t[SGDM_NAME]['lr']:>8.4g} {t['SGD']['lr']:>8.4g} "
              f"{100 * a[SGDM_NAME]['estimate']:7.2f} {100 * a[SGD_SAME]['estimate']:7.2f} "
              f"{100 * a[SGD_TUNED]['estimate']:7.2f}  {_pct(r['gap_same_lr'])} / {_pct(r['gap_tuned'])}")


def plot(summary: dict, path: Path, title: str) -> Path:
    """Left: final test accuracy against B (SGDM, SGD at SGDM's lr, SGD tuned; dashed E, solid
    2E; 95% t intervals).  Right: the paired gaps SGDM − SGD against B."""
    from sdeverify.experiments.base import save_figure, subplots
    fig, (ax, ax_gap) = subplots(2, (10, 3.8))
    colours = {SGDM_NAME: "C0", SGD_SAME: "C1", SGD_TUNED: "C2"}
    for E, style in zip(summary["budgets"], ("--", "-")):
        rows = [r for r in summary["rows"] if r["epochs"] == E]
        Bs = [r["batch"] for r in rows]
        for name, colour in colours.items():
            iv = [r["acc"][name] for r in rows]
            _errorbar(ax, Bs, iv, style, colour, f"{name}, {E} ep")
        for key, colour, label in (("gap_same_lr", "C1", "SGDM - SGD@SGDM-lr"),
                                   ("gap_tuned", "C2", "SGDM - SGD-tuned")):
            _errorbar(ax_gap, Bs, [r[key] for r in rows], style, colour, f"{label}, {E} ep")
    for a in (ax, ax_gap):
        a.set_xscale("log", base=2)
        a.set_xlabel("batch size B")
        a.legend(fontsize=6)
    ax.set_ylabel("final test accuracy (%)")
    ax_gap.set_ylabel("gap (points)")
    ax_gap.axhline(0.0, color="grey", lw=0.8)
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def _errorbar(ax, x, intervals, style, colour, label) -> None:
    est = np.array([np.nan if i is None else 100 * i["estimate"] for i in intervals])
    lo = np.array([np.nan if i is None else 100 * i["low"] for i in intervals])
    hi = np.array([np.nan if i is None else 100 * i["high"] for i in intervals])
    ax.errorbar(x, est, yerr=[est - lo, hi - est], fmt="o" + style, color=colour, capsize=3,
                label=label, ms=3)


def main(argv=None) -> int:
    return cp.main_guard(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
