"""The CIFAR-10 training protocol shared by ``reproduce_fig2.py`` and ``batch_size_sweep.py``
(the paper's Sec 6 experiments, App D.2), and the resumable store of their units.

**The protocol.**  The paper fixes the network (ResNet-32 on CIFAR-10 for Fig 2), the batch
size, β = 0.9 in the EMA form of SGDM (Def 3.3: SGD and SGDM at the same lr are comparable)
and a factor-2 lr grid search; the epochs, weight decay and lr schedule are not stated in the
text we have, so these scripts adopt the standard CIFAR ResNet protocol (He et al. 2016;
Goyal et al. 2017) and say so:

* the CIFAR ResNet with option-A shortcuts, weight decay 5e-4 on conv and linear weights only
  (BN γ/β and the linear bias excluded: ``resnet(weight_decay=5e-4, decay_bn=False)``);
* augmentation: random crop with 4-pixel zero padding and horizontal flip (``augment=True``);
* lr: linear warm-up over the first 5 epochs, ×0.1 at 50% and 75% of the epochs
  (:func:`sdeverify.train.lr.epoch_multiplier`); 160 epochs by default;
* lr tuning on a factor-2 grid by the mean validation accuracy on a held-out 20% of the
  training set, never the test set, with the run's own epochs and schedule
  (:func:`sdeverify.train.tuning.tune_lr`, which extends the grid while its choice is at an edge);
* every optimizer of a replica starts from the same weights and sees the same minibatches and
  augmentations (common random numbers), so gaps are paired replica by replica and their 95%
  intervals are Student-t over replicas (:func:`sdeverify.stats.t_interval`);
* evaluation at every epoch end (and at the start): train loss on the first 2048 training
  images, test loss and test accuracy on the whole test set, BN running statistics.

**Units.**  A script's work is cut into units — an lr tuning, or one :func:`fit` launch — each
saved under ``--out`` as soon as it finishes, through :mod:`sdeverify.files` (atomic, with
content hashes).  ``OUT/protocol.json`` records the arguments every unit depends on; a rerun
with the same arguments loads the units already on disk and trains only the others (a killed
run resumes at its first unfinished unit, and the result is bitwise that of an uninterrupted
run), a rerun with other arguments is refused (:class:`UnitStore`).  A training unit also
keeps its progress every ``--checkpoint-epochs`` epochs (:class:`Checkpoint`,
:func:`train_curves`), so that a multi-day unit killed midway loses at most that much.  Only
the list of units (the SVAG ℓs, the batch sizes) may change between reruns: each is its own
unit.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sdeverify.files import (content_hash, json_path, read_json, write_hashed_json,  # noqa: E402
                             writable_folder)
from sdeverify.stats import Interval, t_interval  # noqa: E402
from sdeverify.train import Dataset, TrainResult, fit  # noqa: E402
from sdeverify.train.convnet import ResNet, resnet  # noqa: E402
from sdeverify.train.lr import epoch_multiplier  # noqa: E402
from sdeverify.train.tuning import LrTuning, tune_lr  # noqa: E402

__all__ = ["Protocol", "UnitStore", "Checkpoint", "concatenate", "ArgumentParser",
           "add_common_arguments", "preset_epilog", "apply_preset", "check_common", "load_data",
           "build_model", "data_record", "train_curves", "tune", "image_passes",
           "tuning_passes", "describe_work", "mean_band", "paired_gap", "final_record",
           "interval_record", "floats", "write_curves_csv", "main_guard", "METRICS"]

#: what every training unit evaluates at every epoch end
METRICS = ("train_loss", "test_loss", "test_acc")
#: the store's manifest and its format
MANIFEST, FORMAT = "protocol.json", "sdeverify.cifar_protocol/1"


# ---- the protocol --------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """The training protocol of the module docstring: β of SGDM, weight decay (BN and
    biases excluded), augmentation, warm-up epochs, step decay ×``factor`` at the fractions
    ``decay_at`` of the run, and the validation split of the lr tuning."""
    beta: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 5.0
    decay_at: tuple = (0.5, 0.75)
    factor: float = 0.1
    augment: bool = True
    validation_fraction: float = 0.2

    def decay_epochs(self, epochs: int) -> list[int]:
        """Epochs at whose start the lr is multiplied by ``factor`` (``decay_at`` × epochs,
        rounded half up: 80 and 120 of 160)."""
        return [int(f * epochs + 0.5) for f in self.decay_at]

    def schedule(self, epochs: int, steps_per_epoch: int) -> np.ndarray:
        """The per-step lr multiplier of a run of ``epochs`` epochs (warm-up, step decay)."""
        if self.warmup_epochs > epochs:
            raise ValueError(f"--warmup-epochs must be in [0, --epochs={epochs}], "
                             f"got {self.warmup_epochs:g}")
        return epoch_multiplier(epochs, steps_per_epoch, self.warmup_epochs,
                                self.decay_epochs(epochs), self.factor)

    def tuning_train_size(self, n_train: int) -> int:
        """Training images of the lr tuning's validation split of ``n_train`` images
        (:meth:`sdeverify.train.Dataset.split_validation`)."""
        return n_train - max(1, int(round(self.validation_fraction * n_train)))

    def check_batches(self, flag: str, batches: Sequence[int], data: Dataset,
                      tuned: bool) -> None:
        """``ValueError`` naming ``flag`` unless every batch size fits the training set and,
        when the lr is ``tuned``, the validation split's training part."""
        limit = self.tuning_train_size(data.n_train) if tuned else data.n_train
        too_big = [b for b in batches if b > limit]
        if too_big:
            where = "the training images of the lr tuning's validation split" if tuned \
                else "the training images"
            raise ValueError(f"{flag} must be <= {limit} ({where}), got {too_big}")

    def describe(self, epochs: int) -> str:
        """One line, e.g. for a figure's title."""
        return (f"{epochs} epochs, warm-up {self.warmup_epochs:g}, x{self.factor:g} at "
                f"{self.decay_epochs(epochs)}, wd {self.weight_decay:g} (no BN), "
                f"{'crop+flip' if self.augment else 'no augmentation'}, beta {self.beta:g}")


# ---- command line ----------------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``PROG: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def floats(flag: str, text: str, *, low: float, integer: bool = False,
           low_open: bool = False) -> list:
    """A non-empty comma list of distinct numbers ≥ ``low`` (> ``low`` if ``low_open``);
    ``ValueError`` naming ``flag`` otherwise."""
    kind = "integers" if integer else "numbers"
    try:
        vals = [(int if integer else float)(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma list of {kind}, got {text!r}") from None
    bad = [v for v in vals if not np.isfinite(v) or v < low or (low_open and v == low)]
    if not vals or bad or len(set(vals)) != len(vals):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ValueError(f"{flag} must be a comma list of distinct {kind} {bound}, got {text!r}")
    return vals


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The options both scripts share; defaults ``None`` are filled by :func:`apply_preset`."""
    from sdeverify.train import backends
    p.add_argument("--data", default="teacher",
                   help="cifar10:FOLDER (the extracted 'cifar-10-batches-py' folder) or teacher "
                        "(generated conv-teacher images, for a small run)")
    p.add_argument("--n-train", type=int, default=None,
                   help="training images (teacher: generated; CIFAR-10: the first ones, 0 = all)")
    p.add_argument("--n-test", type=int, default=None, help="test images (CIFAR-10: the first "
                   "ones, 0 = all; teacher: a quarter of the generated images)")
    p.add_argument("--image-size", type=int, default=None, help="teacher images: side in pixels")
    p.add_argument("--depth", type=int, default=None, help="ResNet depth (6n + 2)")
    p.add_argument("--width", type=float, default=None, help="ResNet width multiplier of 16-32-64")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--warmup-epochs", type=float, default=None, help="linear lr warm-up, epochs")
    p.add_argument("--replicas", type=int, default=None, help="replicas per optimizer")
    p.add_argument("--tune-replicas", type=int, default=None, help="replicas per lr when tuning")
    p.add_argument("--checkpoint-epochs", type=int, default=None,
                   help="save a training unit's progress every this many epochs (0: only at "
                        "its end)")
    p.add_argument("--backend", choices=backends.names(), default="cpu", help="trainer backend")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, help="output folder (units, curves, figure)")
    p.add_argument("--tiny", action="store_true",
                   help="a preset of tiny sizes for tests (explicit options still win)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def preset_epilog(full: dict, tiny: dict) -> str:
    """The presets' values for ``--help``: ``--depth 32 (--tiny: 8), ...``."""
    return "defaults: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" + (f" (--tiny: {tiny[k]})" if k in tiny else "")
        for k, v in full.items()) + "; --tiny also sets " + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in tiny.items() if k not in full)


def apply_preset(args: argparse.Namespace, full: dict, tiny: dict) -> argparse.Namespace:
    """Fill every option left at ``None`` from ``tiny`` (with ``--tiny``) or ``full``; sizes
    still unset default to all of CIFAR-10 or 4096 generated training images."""
    preset = tiny if args.tiny else full
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.n_train is None:                 # all of CIFAR-10; 4096 generated images
        args.n_train = 0 if args.data.startswith("cifar10:") else 4096
    if args.n_test is None:
        args.n_test = 0
    return args


def check_common(args: argparse.Namespace) -> None:
    """``ValueError`` naming the option for a value out of range (before any work)."""
    from sdeverify.validation import seed as valid_seed
    valid_seed(args.seed, "--seed")
    for flag, v, low in (("--epochs", args.epochs, 1), ("--replicas", args.replicas, 1),
                         ("--tune-replicas", args.tune_replicas, 1),
                         ("--n-train", args.n_train, 0), ("--n-test", args.n_test, 0),
                         ("--checkpoint-epochs", args.checkpoint_epochs, 0),
                         ("--image-size", args.image_size, 4)):
        if v < low:
            raise ValueError(f"{flag} must be an integer >= {low}, got {v}")
    if args.depth < 8 or (args.depth - 2) % 6:
        raise ValueError(f"--depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), "
                         f"got {args.depth}")
    if not np.isfinite(args.width) or args.width <= 0:
        raise ValueError(f"--width must be > 0, got {args.width}")
    if not np.isfinite(args.warmup_epochs) or not 0 <= args.warmup_epochs <= args.epochs:
        raise ValueError(f"--warmup-epochs must be in [0, --epochs={args.epochs}], "
                         f"got {args.warmup_epochs:g}")
    if not (args.data == "teacher" or args.data.startswith("cifar10:")):
        raise ValueError(f"--data must be cifar10:FOLDER or teacher, got {args.data!r}")
    if args.data == "teacher" and args.n_train < 2:
        raise ValueError(f"--n-train must be >= 2 generated images, got {args.n_train}")
    if args.backend == "cuda":               # no GPU: one line now, not after loading the data
        from sdeverify.engine.cuda import require
        require()
    writable_folder("--out", args.out)


def load_data(args: argparse.Namespace) -> Dataset:
    """The data of ``--data``: CIFAR-10 images from the archive folder (the first
    ``--n-train`` / ``--n-test``, 0 = all) or generated conv-teacher images
    (``--n-train`` training images of ``--image-size`` pixels and, unless ``--n-test`` says
    otherwise, a third as many test images)."""
    from sdeverify.train.images import cifar10_images, conv_teacher
    if args.data.startswith("cifar10:"):
        return cifar10_images(args.data.split(":", 1)[1], n_train=args.n_train or None,
                              n_test=args.n_test or None)
    n_test = args.n_test or max(1, args.n_train // 3)
    n = args.n_train + n_test
    return conv_teacher(n=n, size=args.image_size, seed=args.seed, test_fraction=n_test / n)


def build_model(args: argparse.Namespace, data: Dataset, protocol: Protocol) -> ResNet:
    """``resnet(--depth, --width)`` for ``data``'s images, weight decay without BN."""
    C, H, _ = data.X_train.shape[1:]
    return resnet(args.depth, width=args.width, classes=data.n_classes, in_channels=C,
                  image_size=H, weight_decay=protocol.weight_decay, decay_bn=False)


def data_record(args: argparse.Namespace, data: Dataset) -> dict:
    """What identifies the data in a store's config: its kind, name, sizes and content hash
    (not the folder's path: the archive may move)."""
    return dict(kind="cifar10" if args.data.startswith("cifar10:") else "teacher",
                name=data.name, n_train=data.n_train, n_test=int(data.X_test.shape[0]),
                shape=list(data.X_train.shape[1:]), fingerprint=data.fingerprint())


def main_guard(prog: str, main: Callable[[], int]) -> int:
    """Run ``main``: a bad value (``ValueError``, a missing GPU) ends with one line
    ``PROG: error: ...`` and exit status 2; an interrupt says how to resume."""
    try:
        return main()
    except ValueError as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if type(exc).__name__ != "CudaUnavailable":
            raise
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the finished units are saved: rerun the same command to "
              "resume", file=sys.stderr)
        return 130


# ---- units ---------------------------------------------------------------------------------
class UnitStore:
    """Units of one run under ``folder``, keyed by ``config`` (everything the units depend on).

    The first run writes ``folder/protocol.json`` (content-hashed) with ``config``; a later
    run with another config is refused with the options that differ.  A training unit is a
    :class:`~sdeverify.train.TrainResult` saved as ``folder/NAME.json`` + hashed ``.npz``, a
    tuning unit an :class:`~sdeverify.train.tuning.LrTuning` as ``folder/NAME.json``; both carry
    the config's hash, checked on loading.  ``trained`` and ``loaded`` list the units this
    process trained and found on disk."""

    def __init__(self, folder: str | Path, config: dict, *, log: Callable[[str], None] = print):
        self.folder = writable_folder("--out", folder)
        self.config = json.loads(json.dumps(config))
        self.key = content_hash(self.config)[:16]
        self.trained: list[str] = []
        self.loaded: list[str] = []
        self.log = log
        manifest = self.folder / MANIFEST
        if manifest.exists():
            doc = read_json(manifest)
            old = doc.get("config")
            if doc.get("format") != FORMAT or not isinstance(old, dict):
                raise ValueError(f"{manifest} is not a manifest of these scripts: use another "
                                 "--out")
            if old != self.config:
                diff = [f"{k}: {old.get(k)!r} there, {self.config.get(k)!r} now"
                        for k in sorted(set(old) | set(self.config))
                        if old.get(k) != self.config.get(k)]
                raise ValueError(f"--out {str(folder)!r} holds units of a run with other arguments "
                                 f"({'; '.join(diff)}): rerun with those arguments to resume it, "
                                 "or choose another --out")
        else:
            write_hashed_json(manifest, {"format": FORMAT, "config": self.config, "key": self.key})

    def path(self, name: str) -> Path:
        """``folder/NAME`` (the saved unit is ``NAME.json``, plus ``NAME.<hash>.npz``)."""
        return self.folder / name

    def has(self, name: str) -> bool:
        """Whether unit ``name`` is on disk."""
        return json_path(self.path(name)).exists()

    def _own(self, name: str, key: Any) -> None:
        if key != self.key:
            raise ValueError(f"{json_path(self.path(name))} belongs to another run (its protocol "
                             f"key {key!r} is not this run's {self.key!r}): delete it or use "
                             "another --out")

    def train(self, name: str, make: Callable[["Checkpoint"], TrainResult],
              inputs: dict | None = None) -> TrainResult:
        """Unit ``name`` loaded from disk, or made by ``make(checkpoint)`` and saved (the
        :class:`Checkpoint` of ``NAME.partial``: where ``make`` keeps and finds the run so far).
        ``inputs``: what the unit depends on besides the config (e.g. the lr a tuning unit
        chose), recorded with it and checked on loading."""
        inputs = json.loads(json.dumps(inputs or {}))
        if self.has(name):
            res = self._load(name, inputs)
            self.loaded.append(name)
            self.log(f"unit {name}: on disk, loaded")
            return res
        t0 = time.perf_counter()
        ckpt = Checkpoint(self, name, inputs)
        res = self._tag(make(ckpt), name, inputs)
        res.save(self.path(name))
        ckpt.clear()
        self.trained.append(name)
        self.log(f"unit {name}: trained in {time.perf_counter() - t0:.1f} s, saved")
        return res

    def _tag(self, res: TrainResult, name: str, inputs: dict) -> TrainResult:
        return dataclasses.replace(res, meta=dict(res.meta, protocol_key=self.key, unit=name,
                                                  unit_inputs=inputs))

    def _load(self, name: str, inputs: dict) -> TrainResult:
        res = TrainResult.load(self.path(name))
        self._own(name, res.meta.get("protocol_key"))
        if res.meta.get("unit_inputs") != inputs:
            raise ValueError(f"{json_path(self.path(name))} was trained with "
                             f"{res.meta.get('unit_inputs')}, this run needs {inputs}: "
                             "delete it to retrain it")
        return res

    def tuning(self, name: str, make: Callable[[], LrTuning]) -> LrTuning:
        """Tuning unit ``name`` loaded from disk, or made by ``make()`` and saved."""
        path = json_path(self.path(name))
        if path.exists():
            doc = read_json(path)
            self._own(name, doc.get("protocol_key"))
            try:
                tun = LrTuning(float(doc["lr"]), tuple(float(x) for x in doc["grid"]),
                               np.array(doc["val_acc"], dtype=np.float64),
                               np.array(doc["diverged"], dtype=np.int64), int(doc["extended"]),
                               bool(doc["at_edge"]))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: not an lr tuning saved by these scripts") from None
            self.loaded.append(name)
            self.log(f"unit {name}: on disk, loaded ({tun.describe()})")
            return tun
        t0 = time.perf_counter()
        tun = make()
        write_hashed_json(path, {"unit": name, "protocol_key": self.key, "lr": tun.lr,
                                 "grid": list(tun.grid), "val_acc": tun.val_acc.tolist(),
                                 "diverged": tun.diverged.tolist(), "extended": tun.extended,
                                 "at_edge": tun.at_edge})
        self.trained.append(name)
        self.log(f"unit {name}: tuned in {time.perf_counter() - t0:.1f} s ({tun.describe()})")
        return tun


class Checkpoint:
    """The part of unit ``name`` trained so far, ``NAME.partial`` in the store (a
    :class:`~sdeverify.train.TrainResult` with its final state, same hashes and checks as a
    unit); deleted once the unit is saved."""

    def __init__(self, store: UnitStore, name: str, inputs: dict):
        self.store, self.name, self.inputs = store, f"{name}.partial", inputs

    def load(self) -> TrainResult | None:
        """The run so far, or None."""
        if not self.store.has(self.name):
            return None
        res = self.store._load(self.name, self.inputs)
        self.store.log(f"unit {self.name}: on disk, resuming after step {int(res.eval_steps[-1])}")
        return res

    def save(self, res: TrainResult) -> None:
        """Keep ``res`` (atomically replacing the previous checkpoint)."""
        self.store._tag(res, self.name, self.inputs).save(self.store.path(self.name))

    def clear(self) -> None:
        """Delete the checkpoint's files."""
        path = json_path(self.store.path(self.name))
        for f in [path, *path.parent.glob(f"{self.name}.*.npz")]:
            if f.exists():
                f.unlink()


# ---- training ------------------------------------------------------------------------------
def train_curves(model: ResNet, data: Dataset, optimizers: Sequence[Any], protocol: Protocol, *,
                 batch_size: int, epochs: int, replicas: int, seed: int, svag: int = 1,
                 backend: str = "cpu", dtype: str = "float32", quiet: bool = False,
                 segment_epochs: int = 0, checkpoint: "Checkpoint | None" = None) -> TrainResult:
    """The protocol's training of every optimizer × ``replicas`` with SVAG ℓ = ``svag``
    (Def 6.1), evaluated at every epoch end (:data:`METRICS`), final state kept.

    With ``segment_epochs`` > 0 the run is trained in segments of that many epochs, each a
    :func:`fit` call continuing the previous one exactly (its weights, momentum, BN state and
    global step: same minibatches, augmentations and lr schedule), and after each segment the
    run so far is saved to ``checkpoint`` (a run killed mid-unit resumes from its last
    segment).  The one rule a segment boundary touches is divergence detection, whose
    threshold is relative to the first minibatch loss of each :func:`fit` call."""
    spe = data.n_train // batch_size
    if spe < 1:
        raise ValueError(f"--batch must be in [1, {data.n_train}] (the training images), "
                         f"got {batch_size}")
    mult = protocol.schedule(epochs, spe)
    seg = segment_epochs if segment_epochs > 0 else epochs
    done = checkpoint.load() if checkpoint is not None else None
    e0 = 0 if done is None else int(done.eval_steps[-1]) // spe
    t0, e_first = time.perf_counter(), e0
    while e0 < epochs:
        e1 = min(epochs, e0 + seg)
        start = {} if done is None else dict(
            init_weights=_finite(done.weights), init_momentum=_finite(done.momentum),
            init_buffers=_finite(done.buffers), start_step=e0 * spe)
        part = fit(model, data, list(optimizers), batch_size=batch_size, steps=(e1 - e0) * spe,
                   replicas=replicas, seed=seed, lr_schedule=mult[:e1 * spe], svag=svag,
                   eval_steps=np.arange(0 if done is None else 1, e1 - e0 + 1) * spe,
                   metrics=METRICS, augment=protocol.augment, backend=backend, dtype=dtype,
                   keep_weights=True, progress=None if quiet else True, **start)
        done = part if done is None else concatenate(done, part)
        e0 = e1
        if checkpoint is not None and e0 < epochs:
            checkpoint.save(done)
            took = time.perf_counter() - t0
            checkpoint.store.log(f"unit {checkpoint.name}: {e0}/{epochs} epochs saved, "
                                 f"{took:.0f} s, about {took / (e0 - e_first) * (epochs - e0):.0f} "
                                 "s to go")
    return done


def _finite(a: np.ndarray | None) -> np.ndarray | None:
    """A state to continue from, with the entries of diverged replicas (non-finite; such a
    replica stays excluded from the statistics by its divergence step) set to 0."""
    return None if a is None else np.where(np.isfinite(a), a, 0.0)


def concatenate(first: TrainResult, then: TrainResult) -> TrainResult:
    """One result of a run trained as ``first`` and its continuation ``then``
    (``fit(init_*=first's final state, start_step=first's end)``): evaluations and minibatch
    losses joined, the earlier divergence step kept, the final state of ``then``."""
    div = np.where(first.div_step >= 0, first.div_step, then.div_step)
    segments = first.meta.get("segments", [first.meta.get("fingerprint")])
    meta = dict(then.meta, start_step=first.meta.get("start_step", 0),
                steps=int(first.meta["steps"]) + int(then.meta["steps"]),
                eval_steps=first.eval_steps.tolist() + then.eval_steps.tolist(),
                wall_time=first.meta.get("wall_time", 0.0) + then.meta.get("wall_time", 0.0),
                segments=segments + [then.meta.get("fingerprint")])
    return TrainResult(first.optimizers, first.metrics,
                       np.concatenate([first.eval_steps, then.eval_steps]),
                       np.concatenate([first.values, then.values], axis=1),
                       np.concatenate([first.batch_loss, then.batch_loss], axis=2), div,
                       then.weights, meta, then.momentum, None, None, then.buffers)


def tune(model: ResNet, data: Dataset, optimizer: Callable[[float], Any], grid: Sequence[float],
         protocol: Protocol, *, batch_size: int, epochs: int, replicas: int, seed: int,
         backend: str = "cpu", dtype: str = "float32", quiet: bool = False) -> LrTuning:
    """The protocol's lr tuning (:func:`sdeverify.train.tuning.tune_lr` on a validation
    split, the run's epochs and schedule, augmentation as in training)."""
    return tune_lr(model, data, optimizer, grid, batch_size=batch_size, epochs=epochs,
                   schedule=protocol.schedule, replicas=replicas, seed=seed,
                   validation_fraction=protocol.validation_fraction, augment=protocol.augment,
                   backend=backend, dtype=dtype, progress=None if quiet else True)


# ---- cost ---------------------------------------------------------------------------------------
def image_passes(n_train: int, batch_size: int, epochs: int, models: int, svag: int = 1) -> int:
    """Training images through forward + backward, summed over the ``models`` of one launch:
    ``epochs · (n_train // B)`` steps, each on one minibatch of B images per model (two under
    SVAG ℓ > 1, Def 6.1), ℓ× as many steps.  Evaluations (a forward pass over the test set and
    2048 training images per epoch) are left out: ~1% of the work at B = 512 on CIFAR-10."""
    steps = epochs * (n_train // batch_size) * svag
    return steps * (1 if svag == 1 else 2) * batch_size * models


def tuning_passes(n_train: int, batch_size: int, epochs: int, lrs: int, replicas: int,
                  protocol: "Protocol") -> int:
    """:func:`image_passes` of an lr tuning of ``lrs`` lrs (grid extensions not counted) on
    the validation split's training part."""
    return image_passes(protocol.tuning_train_size(n_train), batch_size, epochs, lrs * replicas)


def describe_work(passes: int, model: ResNet) -> str:
    """``passes`` image passes as a line: the count, PFLOP (``flops_per_sample``) and the
    README's way to turn it into time."""
    return (f"work: {passes:.3g} image passes (forward + backward) of "
            f"{model.describe().split('(')[0]}, {passes * model.flops_per_sample() / 1e15:.3g} PFLOP "
            "(README, 'Reproducing the paper's CIFAR-10 figure': the expected time)")


# ---- statistics and output -------------------------------------------------------------------
def mean_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``values (E, R)`` (NaN = diverged replica): the mean over finite replicas and
    the 95% Student-t interval (NaN where fewer than 2 are finite)."""
    E = values.shape[0]
    mid, lo, hi = np.full(E, np.nan), np.full(E, np.nan), np.full(E, np.nan)
    for e in range(E):
        v = values[e][np.isfinite(values[e])]
        if v.size >= 2:
            iv = t_interval(v)
            mid[e], lo[e], hi[e] = iv.estimate, iv.low, iv.high
        elif v.size:
            mid[e] = v[0]
    return mid, lo, hi


def paired_gap(res: TrainResult, a: str, b: str, metric: str = "test_acc",
               evaluation: int = -1) -> Interval | None:
    """95% Student-t interval of ``a − b`` of ``metric`` at one evaluation, paired replica by
    replica (common random numbers); replicas where either diverged are left out; None with
    fewer than 2 pairs."""
    d = res.values_of(a, metric)[evaluation] - res.values_of(b, metric)[evaluation]
    d = d[np.isfinite(d)]
    return t_interval(d) if d.size >= 2 else None


def final_record(res: TrainResult, optimizer: str, metric: str = "test_acc") -> dict:
    """``metric`` of ``optimizer`` at the last evaluation: mean over non-diverged replicas,
    95% t interval (NaN with fewer than 2), and how many replicas diverged."""
    mid, lo, hi = mean_band(res.values_of(optimizer, metric)[-1:])
    j = res.optimizers.index(optimizer)
    return dict(estimate=float(mid[0]), low=float(lo[0]), high=float(hi[0]),
                diverged=int(np.sum(res.div_step[j] >= 0)))


def write_curves_csv(path: Path, rows: list[tuple[dict, TrainResult, int]]) -> Path:
    """Every per-epoch value of every unit as CSV; ``rows`` are ``(labels, result,
    steps_per_epoch)``: the columns of the labels, then optimizer, epoch, replica and the
    metrics (empty where the replica had diverged)."""
    from sdeverify.files import atomic_write_text
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = list(rows[0][0]) if rows else []
    w.writerow(keys + ["optimizer", "epoch", "replica", *METRICS])
    for labels, res, spe in rows:
        for o in res.optimizers:
            vals = [res.values_of(o, m) for m in METRICS]
            for e, step in enumerate(res.eval_steps):
                for r in range(res.replicas):
                    cells = [v[e, r] for v in vals]
                    w.writerow([labels[k] for k in keys] + [o, int(step) // spe, r]
                               + ["" if not np.isfinite(c) else repr(float(c)) for c in cells])
    atomic_write_text(path, buf.getvalue())
    return path


def interval_record(iv: Interval | None) -> dict | None:
    """An interval as JSON (None stays None)."""
    return None if iv is None else iv.as_dict()
