"""The Sec 6 protocol shared by the checks on trained networks (``train_batch_size``,
``train_svag``); docs/theory.md §11 states it with its reasons.

* **Networks and data**: ``net="resnet"`` — the CIFAR ResNet (BatchNorm, option-A shortcuts,
  weight decay 5e-4 off the BN parameters) on generated images (:func:`~sdeverify.train.
  conv_teacher`) or CIFAR-10 (``data="cifar10:FOLDER"``), trained with crop-and-flip
  augmentation; ``net="mlp"`` — the MLP (inputs)-128-(classes) on the generated
  teacher–student set (``"teacher_student"``), scikit-learn's digits (``"digits"``) or CIFAR-10
  flattened.  The smoke size trains the MLP, quick and full sizes the ResNet.
* **lr tuned per (batch size, optimizer)** on a factor-2 grid (centred by linear scaling,
  η ∝ B) on a validation split of the training set, with the run's own budget and schedule;
  the grid is extended while the choice sits at its edge (:func:`sdeverify.train.tune_lr`).
* **Two budgets**, E and 2E epochs, each with a linear warm-up over its first tenth and ×0.1
  step decays at half and three quarters of it (epochs, not steps, as the paper's protocols
  state them); the lrs are tuned at each budget on its own.
* **Pairing**: every optimizer of a replica starts from the same weights and sees the same
  augmented minibatches (common random numbers, checked by :mod:`.train_method`), so each
  SGDM − SGD difference is taken replica by replica.
* **Curves**: train loss, test loss and test accuracy at every epoch end, saved.
* **Equivalence margin**: max(0.5 points, the binomial standard error √(p(1−p)/n_test) of one
  model's accuracy) — a fixed floor, so "comparable" can never pass on a [0, 0] interval at 0%
  or 100% accuracy.
A replica that diverges scores chance accuracy (counted and reported, never a NaN average).

**Where the work runs.**  A check hands its work out in sweeps of independent items
(:func:`~sdeverify.experiments.base.run_many`): every tuning is a task (:func:`tune_call`,
its :class:`Setup` built once per process by :func:`setup_for`), every fit an item
(:meth:`Setup.fit_item`) that a cluster cuts into replica shards; items go out longest first
by their training FLOPs (:meth:`Setup.work`).  Without a cluster they run here one after the
other, with bitwise the same results.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..dispatch import Call
from ..optim import SGD, SGDM
from ..stats import Interval, t_interval as _t_interval
from ..train import (MLP, Dataset, LrTuning, TrainResult, cifar10, cifar10_images, conv_teacher,
                     digits, epoch_multiplier, fit, resnet, teacher_student, tune_lr)

BETA = 0.9
BASE_BATCH = 128
BUDGET_FACTOR = 2                 # the budgets are E and 2E epochs
MARGIN_FLOOR = 0.005              # equivalence margins never below 0.5 points
WARMUP_FRACTION = 0.1
DECAYS = (0.5, 0.75)
METRICS = ("train_loss", "test_loss", "test_acc")
NETS = ("mlp", "resnet")
WEIGHT_DECAY = 5e-4

#: the configuration keys every trained-network check takes (sizes give them)
NET_KEYS = ("net", "depth", "width", "image_size", "classes", "n", "data", "dtype", "norm")
#: the checks' two networks: the MLP on the teacher–student set, and the small CIFAR ResNet
#: (ResNet-8, 4-8-16 channels) on generated 8×8 images, with its lr grid at B = 128
MLP_NET = dict(net="mlp", depth=0, width=0.0, image_size=0, classes=10, data="teacher_student",
               dtype="float64", norm=True)
RESNET_NET = dict(net="resnet", depth=8, width=0.25, image_size=8, classes=4, data="conv_teacher",
                  dtype="float32", lr_grid=(0.4, 0.8, 1.6, 3.2), norm=True)


@dataclass(frozen=True)
class Setup:
    """A check's network, data and backend: what every run of the protocol shares."""
    model: Any
    data: Dataset
    augment: bool
    backend: str
    dtype: str

    @property
    def chance(self) -> float:
        return 1.0 / self.data.n_classes

    def fit(self, optimizers: Sequence[Any], batch: int, epochs: int, replicas: int, seed: int, *,
            svag: int = 1, per_epoch: bool = True, metrics: Sequence[str] = METRICS,
            data: Dataset | None = None, **kw: Any) -> TrainResult:
        """``epochs`` epochs at ``batch`` with :func:`schedule`, evaluated at every epoch end
        (or at the end only)."""
        item = self.fit_item(optimizers, batch, epochs, replicas, seed, svag=svag,
                             per_epoch=per_epoch, metrics=metrics, data=data, **kw)
        item.pop("kind")
        return fit(**item)

    def fit_item(self, optimizers: Sequence[Any], batch: int, epochs: int, replicas: int,
                 seed: int, *, svag: int = 1, per_epoch: bool = True,
                 metrics: Sequence[str] = METRICS, data: Dataset | None = None,
                 **kw: Any) -> dict:
        """The :meth:`fit` call as an item of :func:`~sdeverify.experiments.base.run_many` (a
        keyword dict with ``kind="fit"``), so that a check's fits go out together."""
        data = self.data if data is None else data
        spe = data.n_train // batch
        ev = [spe * e for e in range(0, epochs + 1)] if per_epoch else [spe * epochs]
        return dict(kind="fit", model=self.model, data=data, optimizers=list(optimizers),
                    batch_size=batch, epochs=epochs, replicas=replicas, seed=seed,
                    lr_schedule=schedule(epochs, spe), svag=svag, metrics=metrics, eval_steps=ev,
                    eval_samples=1024, on_divergence="ignore", augment=self.augment,
                    backend=self.backend, dtype=self.dtype, **kw)

    def work(self, batch: int, epochs: int, models: int, *, svag: int = 1,
             fraction: float = 1.0, steps: int | None = None) -> float:
        """Estimated cost of training ``models`` models (optimizers × replicas) for ``epochs``
        epochs (or ``steps`` steps) at ``batch`` on ``fraction`` of the training set, in the
        work units of :data:`sdeverify.distributed.MIN_TASK_WORK` (training FLOPs /
        ``FIT_FLOPS_PER_UNIT``): what orders a check's items longest first."""
        from ..distributed.points import FIT_FLOPS_PER_UNIT, fit_flops
        if steps is None:
            steps = epochs * int(fraction * self.data.n_train) // batch
        return steps * svag * batch * models * fit_flops(self.model) / FIT_FLOPS_PER_UNIT

    def tune(self, make: Callable[[float], Any], batch: int, epochs: int, grid: Sequence[float],
             replicas: int, seed: int) -> LrTuning:
        """The protocol's lr for ``make(lr)`` at ``batch`` and ``epochs``."""
        return tune_lr(self.model, self.data, make, grid, batch_size=batch, epochs=epochs,
                       schedule=schedule, replicas=replicas, seed=seed, augment=self.augment,
                       backend=self.backend, dtype=self.dtype)


def schedule(epochs: int, steps_per_epoch: int) -> np.ndarray:
    """Warm-up over the first tenth of the epochs, ×0.1 at half and three quarters."""
    return epoch_multiplier(epochs, steps_per_epoch, warmup_epochs=WARMUP_FRACTION * epochs,
                            decay_epochs=tuple(int(round(f * epochs)) for f in DECAYS))


IMAGE_DATA = ("conv_teacher", "cifar10")
#: the data sources a check trains on (``cifar10`` as ``cifar10:FOLDER``)
DATA_SOURCES = ("teacher_student", "digits", "conv_teacher", "cifar10:FOLDER")


def net_for(data: str) -> str:
    """The network a data source is trained with: the ResNet for images (``conv_teacher``,
    ``cifar10:FOLDER``), the MLP for feature vectors (``teacher_student``, ``digits``)."""
    return "resnet" if str(data).split(":")[0] in IMAGE_DATA else "mlp"


def data_overrides(net_sizes: dict, size: str, data: str) -> dict:
    """The configuration overrides that make a check train on ``data`` at ``size``: the data,
    and the size's parameters of the network that data calls for (``net_sizes[net][size]``;
    ``sdeverify check --data`` uses this)."""
    net = net_for(data)
    return dict(net_sizes[net][size], net=net, data=str(data))


def build(cfg: dict) -> Setup:
    """The network, data and backend of a check's configuration (keys :data:`NET_KEYS`,
    ``backend``)."""
    net, source = cfg["net"], str(cfg["data"])
    if net not in NETS:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    folder = source[len("cifar10:"):] if source.startswith("cifar10:") else None
    if net == "resnet":
        if source == "conv_teacher":
            data = conv_teacher(n=cfg["n"], size=cfg["image_size"], classes=cfg["classes"], seed=0)
        elif folder:
            data = cifar10_images(folder)
        else:
            raise ValueError(f"data must be 'conv_teacher' or 'cifar10:FOLDER' for the ResNet, got {source!r}")
        c, h = data.X_train.shape[1], data.X_train.shape[2]
        model = resnet(cfg["depth"], width=cfg["width"], image_size=h, in_channels=c,
                       classes=data.n_classes, weight_decay=WEIGHT_DECAY,
                       norm=bool(cfg.get("norm", True)))
        return Setup(model, data, True, cfg["backend"], cfg["dtype"])
    if source == "teacher_student":
        data = teacher_student(n=cfg["n"], dim=32, classes=10, hidden=64, label_noise=0.1, seed=0)
    elif source == "digits":
        data = digits()
    elif folder:
        data = cifar10(folder)
    else:
        raise ValueError(f"data must be 'teacher_student', 'digits' or 'cifar10:FOLDER' for the "
                         f"MLP, got {source!r}")
    model = MLP([data.n_features, 128, data.n_classes], "relu", "cross_entropy")
    return Setup(model, data, False, cfg["backend"], cfg["dtype"])


#: the configuration keys that determine a check's :class:`Setup`
SETUP_KEYS = NET_KEYS + ("backend",)


def setup_for(cfg: dict) -> Setup:
    """:func:`build` for ``cfg``, built once per process (a check's tasks on one worker share
    it; the data sets are generated with fixed seeds, so every process builds the same)."""
    return _setup(tuple((k, cfg.get(k)) for k in SETUP_KEYS))


@functools.lru_cache(maxsize=2)
def _setup(key: tuple) -> Setup:
    return build(dict(key))


def tune_task(cfg: dict, make: Callable[[float], Any], batch: int, epochs: int, seed: int) -> LrTuning:
    """The protocol's lr for ``make(lr)`` at ``batch`` and ``epochs`` (:meth:`Setup.tune`
    on the grid :func:`grid_for` of ``cfg["lr_grid"]``, ``cfg["tune_replicas"]`` replicas): a
    module-level function, so that it runs as one task of a check's sweep."""
    setup = setup_for(cfg)
    return setup.tune(make, batch, epochs, grid_for(cfg["lr_grid"], batch), cfg["tune_replicas"], seed)


def tune_call(cfg: dict, make: Callable[[float], Any], batch: int, epochs: int, seed: int) -> tuple:
    """``(Call, work)``: :func:`tune_task` as an item of a check's sweep, with its estimated
    cost (its initial grid on the validation split; extensions are not foreseen)."""
    setup = setup_for(cfg)
    models = len(cfg["lr_grid"]) * int(cfg["tune_replicas"])
    work = setup.work(batch, epochs, models, fraction=0.8)
    return (Call(tune_task, (cfg, make, batch, epochs, seed), work=work,
                 label=f"tune {make.__name__} B={batch} {epochs} epochs"), work)


def grid_for(base: Sequence[float], batch: int) -> tuple:
    """The initial lr grid at ``batch``: ``base`` (a factor-2 grid at B = 128) scaled by
    B/128 (linear scaling centres it; tuning moves beyond it where needed)."""
    return tuple(float(b) * batch / BASE_BATCH for b in base)


def check_batches(setup: Setup, batches: Sequence[int], least: int = 2) -> tuple:
    """``batches`` increasing, each fitting twice into the validation split's training part."""
    Bs = tuple(int(b) for b in batches)
    if len(Bs) < least or list(Bs) != sorted(set(Bs)):
        raise ValueError(f"batches must be at least {least} increasing sizes, got {Bs}")
    n = setup.data.split_validation(0.2, seed=1).n_train
    if 2 * Bs[-1] > n:
        raise ValueError(f"batches: the largest, {Bs[-1]}, must fit twice into the {n} training "
                         f"samples of the validation split of {setup.data.name}")
    return Bs


def stability_edge(lr: Any, beta: float = 0.0) -> Any:
    """The curvature at which SGDM in the EMA form (m ← βm + (1−β)g, x ← x − η·m) stops being
    stable on L(x) = λx²/2: λ* = 2(1+β)/((1−β)η) (docs/theory.md §11, from Lemma 3.4's
    recursion); β = 0 gives SGD's 2/η.  Below λ* the iterates contract, above it they grow
    geometrically (tested against the iterates themselves)."""
    return 2.0 * (1.0 + beta) / ((1.0 - beta) * np.asarray(lr, dtype=float))


def noise_matched_batch(batch: int, beta: float = BETA) -> float:
    """The minibatch at which SGD's per-step gradient noise equals SGDM's: the EMA averages
    the noise of (1+β)/(1−β) independent minibatches at stationarity (its variance is
    (1−β)/(1+β) of one minibatch's; Sec 4.1), so ``batch·(1+β)/(1−β)``."""
    return batch * (1.0 + beta) / (1.0 - beta)


def sgd(lr: float, name: str = "SGD") -> SGD:
    return SGD(lr, name=name)


def sgdm(lr: float, name: str = "SGDM", beta: float = BETA) -> SGDM:
    return SGDM(lr, beta, name=name)


def final_accuracy(res: TrainResult, optimizer: int | str, chance: float) -> tuple[np.ndarray, int]:
    """Per-replica test accuracy at the last evaluation and the number of diverged replicas
    (scored at chance: counted and reported, never hidden in an average of NaNs)."""
    j = optimizer if isinstance(optimizer, int) else res.optimizers.index(optimizer)
    v = res.values_of(j, "test_acc")[-1]
    bad = ~np.isfinite(v) | ~res.valid[j, -1]
    return np.where(bad, chance, v), int(bad.sum())


def recorded(out: dict, index: tuple, key: str, chance: float, step: Callable[[], None], *,
             plateaus: bool = False) -> Callable[[TrainResult], None]:
    """The ``then`` of a comparison fit in a check's sweep: stores each optimizer's final
    accuracies and diverged count at ``out["acc"][index + (k,)]`` / ``out["diverged"][...]``,
    the first two optimizers' :func:`plateau` at ``out["plateau"][index]`` (``plateaus``)
    and the :func:`curves` at ``out[key]``, then calls ``step`` (progress)."""
    def then(res: TrainResult) -> None:
        for k in range(len(res.optimizers)):
            out["acc"][index + (k,)], out["diverged"][index + (k,)] = final_accuracy(res, k, chance)
        if plateaus:
            out["plateau"][index] = [plateau(res, k) for k in range(2)]
        out[key] = curves(res)
        step()
    return then


def ticking(step: Callable[[], None]) -> Callable[[Any], Any]:
    """A ``then`` that calls ``step`` (progress) and returns the result unchanged."""
    def then(res: Any) -> Any:
        step()
        return res
    return then


def curves(res: TrainResult) -> np.ndarray:
    """``(optimizers, metrics, evaluations, replicas)``: the per-epoch curves of a run."""
    return np.moveaxis(res.values, 3, 1).copy()


def plateau(res: TrainResult, optimizer: int) -> float:
    """Relative drop of the mean training loss over the last quarter of the run
    ((L(3/4) − L(end)) / L(end)): near 0 when the loss has plateaued."""
    L = np.nanmean(res.values_of(optimizer, "train_loss"), axis=1)
    q = int(round(0.75 * (L.size - 1)))
    return float((L[q] - L[-1]) / L[-1])


def t_interval(samples: Any, level: float = 0.95) -> Interval:
    """Student-t interval of the mean of per-replica samples; NaN when one is not finite (a
    diverged replica is never dropped silently)."""
    x = np.asarray(samples, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return Interval(float("nan"), float("nan"), float("nan"), level)
    return _t_interval(x, level)


def margin(p: float, n_test: int) -> float:
    """The equivalence margin: max(:data:`MARGIN_FLOOR`, √(p(1−p)/n_test))."""
    return max(MARGIN_FLOOR, float(np.sqrt(max(p * (1.0 - p), 0.0) / n_test)))


def inside(iv: Interval, m: float) -> bool:
    return bool(-m <= iv.low and iv.high <= m)


def above(iv: Interval) -> bool:
    return bool(iv.low > 0)


def budget_text(at_e: bool, at_2e: bool, what: str, E: int) -> str:
    """How a verdict judged at E and 2E epochs depends on the budget, in words."""
    if at_e and at_2e:
        return f"{what} at both budgets ({E} and {BUDGET_FACTOR * E} epochs)"
    if at_e:
        return f"short-budget effect: {what} at {E} epochs, not at {BUDGET_FACTOR * E}"
    if at_2e:
        return f"long-budget effect: {what} at {BUDGET_FACTOR * E} epochs, not at {E}"
    return f"not {what} at either budget ({E}, {BUDGET_FACTOR * E} epochs)"


def plot_gaps(ax, xs, gaps, **kw) -> None:
    """Paired gaps acc(SGDM) − acc(SGD) (95% t-intervals) against ``xs``."""
    _errorbar(ax, xs, [t_interval(g) for g in gaps], **{"fmt": "o-", **kw})
    ax.axhline(0, color="k", lw=0.6)


def _errorbar(ax, xs, ivs, **kw) -> None:
    m = np.array([iv.estimate for iv in ivs])
    ax.errorbar(xs, m, yerr=[m - [iv.low for iv in ivs], [iv.high for iv in ivs] - m], capsize=2, **kw)
