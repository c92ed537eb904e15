"""``sdeverify train``: train networks from the command line (the paper's Sec 6 experiments).

One command runs, for every lr of ``--lr`` and every SVAG ℓ of ``--svag``, one
:func:`sdeverify.train.fit` call that trains ``--replicas`` replicas of every optimizer of
``--optimizers`` (SGD and SGDM by default) with common initial weights and minibatches, evaluates
after every epoch, saves the result (``OUT/train-lr{lr}-svag{ℓ}.json`` + hashed ``.npz``,
:meth:`sdeverify.train.TrainResult.save`) and draws the curves (``OUT/train.png``: train loss and
test accuracy against epochs, SGD vs SGDM, bands = 95% Student-t intervals over replicas).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .figstyle import FORMATS, styled

MODELS = ("resnet8", "resnet20", "resnet32", "resnet44", "resnet56", "mlp")


def add_parser(sub: Any) -> None:
    """The ``train`` subcommand's parser on ``sub`` (argparse subparsers)."""
    from .train import backends
    t = sub.add_parser("train", help="train networks with SGD / SGDM / SVAG (Sec 6)",
                       description="Train replicas x optimizers of a network in one launch per "
                                   "(lr, SVAG l), evaluate every epoch, save the results and "
                                   "a figure of the curves.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--model", choices=MODELS, default="resnet8", help="network")
    t.add_argument("--width", type=float, default=1.0, help="ResNet width multiplier of 16-32-64")
    t.add_argument("--shortcut", choices=("A", "B"), default="A",
                   help="ResNet shortcut: A zero-pad, B 1x1 conv + BN")
    t.add_argument("--no-bn", action="store_true",
                   help="ResNet without BatchNorm (an ablation; backends numpy and cpu)")
    t.add_argument("--hidden", default="128", help="mlp: comma list of hidden widths")
    t.add_argument("--data", default="images",
                   help="images (generated conv-teacher images), teacher (generated vectors), "
                        "digits (scikit-learn), or cifar10:FOLDER (the python-version archive folder)")
    t.add_argument("--n-train", type=int, default=4096, help="training images (generated data; "
                   "CIFAR-10: a prefix of the training set, 0 = all)")
    t.add_argument("--image-size", type=int, default=16, help="generated images: side in pixels")
    t.add_argument("--batch-size", type=int, default=128, help="minibatch size B")
    t.add_argument("--epochs", type=int, default=10, help="training epochs")
    t.add_argument("--optimizers", default="sgd,sgdm", help="comma list of sgd, sgdm")
    t.add_argument("--lr", default="0.1", help="comma list: lr grid (one run per value)")
    t.add_argument("--beta", type=float, default=0.9, help="SGDM momentum (EMA form, Def 3.3)")
    t.add_argument("--svag", default="1", help="comma list of SVAG l >= 1 (Def 6.1; 1 = off)")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay lambda")
    t.add_argument("--warmup-epochs", type=float, default=0.0, help="linear lr warm-up, epochs")
    t.add_argument("--decay-epochs", default="", help="comma list of epochs where lr x 0.1")
    t.add_argument("--no-augment", action="store_true",
                   help="no random crop + flip (images only; default: augment)")
    t.add_argument("--replicas", type=int, default=2, help="independent replicas per optimizer")
    t.add_argument("--backend", choices=backends.names(), default="cpu", help="trainer backend")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--out", default="sdeverify-train", help="output folder")
    t.add_argument("--format", choices=FORMATS, default="png", help="figure format")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)


def _floats(flag: str, text: str, low: float, integer: bool = False) -> list:
    try:
        vals = [(int if integer else float)(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma list of {'integers' if integer else 'numbers'}, "
                         f"got {text!r}") from None
    if not vals or any(not np.isfinite(v) or v < low for v in vals):
        raise ValueError(f"{flag} must be a comma list of values >= {low:g}, got {text!r}")
    return vals


def _data(args):
    from .train import digits, teacher_student
    from .train.images import cifar10_images, conv_teacher
    from .train.datasets import cifar10
    conv = args.model != "mlp"
    if args.data == "images":
        if not conv:
            raise ValueError("--data images are images: train them with a --model resnet*")
        return conv_teacher(n=args.n_train, size=args.image_size, seed=args.seed)
    if args.data == "teacher":
        if conv:
            raise ValueError("--data teacher is vector data: use --model mlp (or --data images)")
        return teacher_student(n=args.n_train, dim=32, classes=10, seed=args.seed)
    if args.data == "digits":
        if conv:
            raise ValueError("--data digits is vector data: use --model mlp")
        return digits()
    if args.data.startswith("cifar10:"):
        folder = args.data.split(":", 1)[1]
        n = None if args.n_train == 0 else args.n_train
        return cifar10_images(folder, n_train=n) if conv else cifar10(folder, n_train=n)
    raise ValueError(f"--data must be images, teacher, digits or cifar10:FOLDER, got {args.data!r}")


def _model(args, data):
    from .train import MLP
    from .train.convnet import resnet
    if args.model == "mlp":
        hidden = _floats("--hidden", args.hidden, 1, integer=True)
        return MLP([data.n_features, *hidden, data.n_classes], weight_decay=args.weight_decay)
    C, H, _ = data.X_train.shape[1:]
    return resnet(int(args.model[6:]), width=args.width, shortcut=args.shortcut,
                  classes=data.n_classes, in_channels=C, image_size=H,
                  weight_decay=args.weight_decay, norm=not args.no_bn)


def cmd_train(args) -> int:
    """Run the grid (module docstring); every value is checked before any training."""
    from . import SGD, SGDM
    from .files import writable_folder
    from .progress import bar
    from .train import fit
    from .train.lr import epoch_multiplier
    from .validation import seed as valid_seed
    valid_seed(args.seed, "--seed")
    lrs = _floats("--lr", args.lr, 0.0)
    ells = _floats("--svag", args.svag, 1, integer=True)
    decay = _floats("--decay-epochs", args.decay_epochs, 0, integer=True) if args.decay_epochs else []
    names = [n.strip().lower() for n in args.optimizers.split(",") if n.strip()]
    if not names or any(n not in ("sgd", "sgdm") for n in names) or len(set(names)) != len(names):
        raise ValueError(f"--optimizers must be a comma list of distinct sgd, sgdm, got {args.optimizers!r}")
    out = writable_folder("--out", args.out)
    data = _data(args)
    model = _model(args, data)
    spe = data.n_train // args.batch_size if args.batch_size >= 1 else 0
    if spe < 1:
        raise ValueError(f"--batch-size must be in [1, {data.n_train}] (the training set), "
                         f"got {args.batch_size}")
    mult = epoch_multiplier(args.epochs, spe, args.warmup_epochs, decay)
    augment = data.X_train.ndim == 4 and not args.no_augment
    results = {}
    for lr in lrs:
        for ell in ells:
            opts = [SGD(lr) if n == "sgd" else SGDM(lr, args.beta) for n in names]
            label = f"lr={lr:g}, svag={ell}"
            with bar(args.epochs, f"train {label}", quiet=args.quiet, unit="epoch") as update:
                res = fit(model, data, opts, batch_size=args.batch_size, epochs=args.epochs,
                          replicas=args.replicas, seed=args.seed, lr_schedule=mult, svag=ell,
                          eval_steps=np.arange(args.epochs + 1) * spe, augment=augment,
                          metrics=("train_loss", "test_loss", "test_acc"),
                          backend=args.backend, dtype=args.dtype,
                          progress=lambda done, total: update(max(0, done - 1)))
            res.save(out / f"train-lr{lr:g}-svag{ell}")
            results[label] = res
            print(f"== {model.describe()} on {data.name}, B={args.batch_size}, {label}, "
                  f"{args.epochs} epochs, {args.replicas} replicas ==")
            print(res.summary())
    fig = plot_curves(results, spe, out / f"train.{args.format}")
    print(f"wrote {len(results)} results and {fig} to {out}", file=sys.stderr)
    return 0


@styled
def plot_curves(results: dict, steps_per_epoch: int, path: Path) -> Path:
    """Train loss and test accuracy against epochs, one line per optimizer and run, with the
    95% Student-t band over replicas (:func:`sdeverify.stats.t_interval`)."""
    from .experiments.base import save_figure, subplots
    from .stats import t_interval
    fig, axes = subplots(2)
    for label, res in results.items():
        epochs = res.eval_steps / steps_per_epoch
        for ax, metric in zip(axes, ("train_loss", "test_acc")):
            for j, opt in enumerate(res.optimizers):
                v = res.values_of(j, metric)                     # (E, R), NaN when diverged
                mid, lo, hi = np.full(len(epochs), np.nan), np.full(len(epochs), np.nan), \
                    np.full(len(epochs), np.nan)
                for e in range(len(epochs)):
                    if np.sum(np.isfinite(v[e])) >= 2:
                        iv = t_interval(v[e])
                        mid[e], lo[e], hi[e] = iv.estimate, iv.low, iv.high
                    elif np.isfinite(v[e]).any():
                        mid[e] = np.nanmean(v[e])
                line, = ax.plot(epochs, mid, label=f"{opt}, {label}")
                ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
            ax.set_xlabel("epoch")
            ax.set_ylabel({"train_loss": "train loss", "test_acc": "test accuracy"}[metric])
    axes[0].legend()
    return save_figure(fig, path)
