"""Reproduce the paper's Fig 2 (Sec 6, App D.2): ResNet-32 on CIFAR-10 at batch 512, SGD vs
SGDM (EMA form, β = 0.9) at the same lr, with SVAG ℓ ∈ {1, 2, 4, 8} (Def 6.1: lr/ℓ, ℓ× the
steps, a two-minibatch gradient), test accuracy against epochs.

    python benchmarks/reproduce_fig2.py --data cifar10:FOLDER --backend cuda --out runs/fig2
    python benchmarks/reproduce_fig2.py --data teacher --out runs/fig2-teacher   # generated images
    python benchmarks/reproduce_fig2.py --tiny --backend numpy --out /tmp/fig2   # seconds

The lr is tuned for SGDM on a factor-2 grid (``--lr-grid``, default 0.05 … 0.8 around the 0.2
the paper found) on a validation split, then SGD and SGDM train at that lr for every ℓ;
``--lr LR`` skips the tuning.  The paper does not state the epochs, weight decay or schedule
in the text we have: this script adopts the standard CIFAR ResNet protocol — 160 epochs,
weight decay 5e-4 without BN parameters, crop + flip augmentation, 5-epoch linear warm-up,
lr ×0.1 at 50% and 75% of the epochs (benchmarks/cifar_protocol.py, which says why).

Resumable: the tuning and each ℓ (both optimizers, all replicas in one launch) are units saved
under ``--out`` as they finish, and a unit in training saves its progress every
``--checkpoint-epochs`` (10) epochs; rerunning the same command continues where the last run
stopped, bitwise as if uninterrupted, and a rerun with other arguments is refused (only
``--ells`` may change).  Writes ``--out``:
``svag{ℓ}.json/.npz`` (the runs), ``tune-sgdm.json``, ``curves.csv`` (train loss, test loss,
test accuracy per epoch, optimizer, ℓ and replica), ``summary.json`` (final accuracies and the
SGDM − SGD gap per ℓ with 95% Student-t intervals over paired replicas) and ``fig2.png``.
Expected time: README, "Reproducing the paper's CIFAR-10 figure".
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

PROG = "reproduce_fig2.py"
#: the paper's setting (App D.2), and the protocol's adopted defaults
FULL = dict(depth=32, width=1.0, batch=512, epochs=160, warmup_epochs=5.0, ells="1,2,4,8",
            replicas=4, tune_replicas=1, checkpoint_epochs=10, image_size=16,
            lr_grid="0.05,0.1,0.2,0.4,0.8")
#: tiny sizes for tests: seconds on two cores
TINY = dict(depth=8, width=0.25, batch=32, epochs=2, warmup_epochs=1.0, ells="1,2",
            replicas=2, tune_replicas=1, checkpoint_epochs=1, image_size=8, n_train=128, n_test=64,
            lr_grid="0.1,0.2,0.4")


def parser() -> cp.ArgumentParser:
    p = cp.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                          epilog=cp.preset_epilog(FULL, TINY))
    cp.add_common_arguments(p)
    p.add_argument("--batch", type=int, default=None, help="minibatch size B (512)")
    p.add_argument("--ells", default=None, help="comma list of SVAG l (1,2,4,8)")
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--lr", type=float, default=None, help="train at this lr (no tuning)")
    lr.add_argument("--lr-grid", default=None,
                    help="tune SGDM's lr on this factor-2 grid (0.05,0.1,0.2,0.4,0.8)")
    return p


def run(argv=None) -> int:
    args = cp.apply_preset(parser().parse_args(argv), FULL, TINY)
    cp.check_common(args)
    ells = cp.floats("--ells", args.ells, low=1, integer=True)
    if args.batch < 1:
        raise ValueError(f"--batch must be an integer >= 1, got {args.batch}")
    if args.lr is not None:
        if not np.isfinite(args.lr) or args.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {args.lr}")
        grid = None
    else:
        grid = cp.floats("--lr-grid", args.lr_grid, low=0.0, low_open=True)
    protocol = cp.Protocol(warmup_epochs=args.warmup_epochs)
    data = cp.load_data(args)
    protocol.check_batches("--batch", [args.batch], data, tuned=grid is not None)
    model = cp.build_model(args, data, protocol)
    config = dict(script="reproduce_fig2", data=cp.data_record(args, data),
                  model=model.describe(), batch=args.batch, epochs=args.epochs,
                  protocol=dataclasses.asdict(protocol), replicas=args.replicas,
                  seed=args.seed, backend=args.backend, dtype=args.dtype,
                  lr=args.lr, lr_grid=grid, tune_replicas=args.tune_replicas if grid else None,
                  checkpoint_epochs=args.checkpoint_epochs)
    store = cp.UnitStore(args.out, config)
    print(f"{model.describe()} on {data.name} ({data.n_train} training images), B={args.batch}, "
          f"{protocol.describe(args.epochs)}; {args.replicas} replicas; out {store.folder}")
    passes = sum(cp.image_passes(data.n_train, args.batch, args.epochs, 2 * args.replicas, ell)
                 for ell in ells)
    if grid is not None:
        passes += cp.tuning_passes(data.n_train, args.batch, args.epochs, len(grid),
                                   args.tune_replicas, protocol)
    print(cp.describe_work(passes, model))
    common = dict(batch_size=args.batch, epochs=args.epochs, seed=args.seed,
                  backend=args.backend, dtype=args.dtype, quiet=args.quiet)
    tuning = None
    if grid is None:
        lr = args.lr
    else:
        tuning = store.tuning("tune-sgdm", lambda: cp.tune(
            model, data, lambda x: SGDM(x, protocol.beta), grid, protocol,
            replicas=args.tune_replicas, **common))
        lr = tuning.lr
        if tuning.at_edge:
            print(f"warning: the tuned lr {lr:g} is at the edge of the grid after "
                  f"{tuning.extended} extensions: the tuning is inconclusive", file=sys.stderr)
    runs = {}
    for ell in ells:
        runs[ell] = store.train(f"svag{ell}", lambda ckpt, ell=ell: cp.train_curves(
            model, data, [SGD(lr), SGDM(lr, protocol.beta)], protocol,
            replicas=args.replicas, svag=ell, segment_epochs=args.checkpoint_epochs,
            checkpoint=ckpt, **common), inputs={"lr": lr})
    spe = data.n_train // args.batch
    cp.write_curves_csv(store.folder / "curves.csv",
                        [({"ell": ell}, r, spe) for ell, r in runs.items()])
    summary = summarise(runs, lr, tuning)
    write_hashed_json(store.folder / "summary.json", dict(summary, config=store.config))
    fig = plot(runs, summary, spe, store.folder / "fig2.png",
               f"{model.describe()}, B={args.batch}, lr={lr:g}\n{protocol.describe(args.epochs)}")
    print_table(summary)
    print(f"wrote {fig}, curves.csv, summary.json; units trained now: {len(store.trained)}, "
          f"loaded: {len(store.loaded)}")
    return 0


def summarise(runs: dict, lr: float, tuning) -> dict:
    """Final test accuracy of SGD and SGDM per ℓ (mean and 95% t interval over replicas)
    and the paired gap SGDM − SGD (percentage points are the figure's unit; fractions here)."""
    rows = [dict(ell=ell, acc_sgd=cp.final_record(res, "SGD"), acc_sgdm=cp.final_record(res, "SGDM"),
                 gap=cp.interval_record(cp.paired_gap(res, "SGDM", "SGD")))
            for ell, res in runs.items()]
    out = dict(lr=lr, rows=rows)
    if tuning is not None:
        out["tuning"] = dict(grid=list(tuning.grid), mean_val_acc=tuning.mean_acc.tolist(),
                             lr=tuning.lr, at_edge=tuning.at_edge, extended=tuning.extended)
    return out


def print_table(summary: dict) -> None:
    print(f"final test accuracy (%), lr {summary['lr']:g}; gap = SGDM - SGD, paired, 95% t interval")
    print(f"{'ell':>4} {'SGD':>8} {'SGDM':>8}  gap")
    for row in summary["rows"]:
        g = row["gap"]
        gap = "n/a (< 2 paired replicas)" if g is None else \
            f"{100 * g['estimate']:+.2f} [{100 * g['low']:+.2f}, {100 * g['high']:+.2f}]"
        print(f"{row['ell']:>4} {100 * row['acc_sgd']['estimate']:8.2f} "
              f"{100 * row['acc_sgdm']['estimate']:8.2f}  {gap}")


def plot(runs: dict, summary: dict, steps_per_epoch: int, path: Path, title: str) -> Path:
    """Left: test accuracy against epochs, SGD (dashed) and SGDM (solid) per ℓ, bands = 95%
    t intervals over replicas.  Right: the final gap SGDM − SGD against ℓ with its interval."""
    from sdeverify.experiments.base import save_figure, subplots
    fig, (ax, ax_gap) = subplots(2, (10, 3.8))
    colours = {}
    for ell, res in runs.items():
        epochs = res.eval_steps / steps_per_epoch
        for o, style in (("SGDM", "-"), ("SGD", "--")):
            mid, lo, hi = cp.mean_band(100 * res.values_of(o, "test_acc"))
            line, = ax.plot(epochs, mid, style, color=colours.get(ell), label=f"{o}, ℓ={ell}")
            colours[ell] = line.get_color()
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, ncol=2)
    ells = [r["ell"] for r in summary["rows"]]
    est = [np.nan if r["gap"] is None else 100 * r["gap"]["estimate"] for r in summary["rows"]]
    err = [[np.nan if r["gap"] is None else 100 * (r["gap"]["estimate"] - r["gap"]["low"])
            for r in summary["rows"]],
           [np.nan if r["gap"] is None else 100 * (r["gap"]["high"] - r["gap"]["estimate"])
            for r in summary["rows"]]]
    ax_gap.errorbar(ells, est, yerr=err, fmt="o-", capsize=3)
    ax_gap.axhline(0.0, color="grey", lw=0.8)
    ax_gap.set_xscale("log", base=2)
    ax_gap.set_xlabel("SVAG ℓ")
    ax_gap.set_ylabel("final test acc. SGDM - SGD (points)")
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def main(argv=None) -> int:
    return cp.main_guard(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
