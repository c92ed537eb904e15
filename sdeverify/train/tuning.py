"""Learning-rate tuning on a validation split, the paper's CIFAR protocol (Sec 6, App D).

For each (batch size, optimizer) the lr is chosen on a factor-2 grid by the mean validation
accuracy of a few replicas trained on the training set minus a held-out slice (never the test
set), with the run's own epoch budget and schedule.  The chosen lr must not sit at the edge of
the grid: when it does, the grid is extended by a factor 2 beyond that edge and the new lr
trained, until the choice is interior or ``max_extensions`` is spent (then ``at_edge`` says so,
and a check reports it instead of trusting the lr).

All lrs of a grid train in one :func:`~sdeverify.train.fit` launch as separate optimizers, so
they share initial weights and minibatches replica by replica (common random numbers).  A
replica that diverges scores chance accuracy, 1/classes: counted in ``diverged``, never averaged
in as NaN.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..validation import finite_float, nonneg_int, positive_int
from .datasets import Dataset
from .training import fit

__all__ = ["LrTuning", "tune_lr", "FACTOR"]

#: the grid's ratio between neighbouring lrs, and the step of an extension.
FACTOR = 2.0


@dataclass(frozen=True)
class LrTuning:
    """The outcome of :func:`tune_lr`.

    ``lr``: the chosen lr.  ``grid``: every lr trained, increasing.  ``val_acc``: validation
    accuracy per lr and replica (``len(grid) × replicas``; a diverged replica at chance).
    ``diverged``: diverged replicas per lr.  ``extended``: how many lrs were added beyond the
    initial grid's edges.  ``at_edge``: the chosen lr is still the smallest or largest lr
    trained (the extension budget ran out) — the tuning is then inconclusive."""
    lr: float
    grid: tuple
    val_acc: np.ndarray
    diverged: np.ndarray
    extended: int
    at_edge: bool

    @property
    def mean_acc(self) -> np.ndarray:
        """Mean validation accuracy per lr of ``grid``."""
        return self.val_acc.mean(axis=1)

    def describe(self) -> str:
        """One line: the lrs tried with their mean validation accuracy, the choice marked."""
        cells = [f"{'*' if lr == self.lr else ''}{lr:.4g}: {100 * a:.1f}%"
                 for lr, a in zip(self.grid, self.mean_acc)]
        edge = " (at the grid's edge: inconclusive)" if self.at_edge else ""
        return "lr " + ", ".join(cells) + edge


def tune_lr(model: Any, data: Dataset, optimizer: Callable[[float], Any], grid: Sequence[float], *,
            batch_size: int, epochs: int,
            schedule: Callable[[int, int], np.ndarray] | None = None, replicas: int = 1,
            seed: int = 0, validation_fraction: float = 0.2, validation_seed: int = 1,
            tolerance: float = 0.0, max_extensions: int = 4, **fit_kwargs: Any) -> LrTuning:
    """Choose the lr of ``optimizer(lr)`` (a function returning an optimizer scheme) for
    ``batch_size`` and ``epochs`` on a validation split of ``data``.

    ``grid``: the initial lrs (the protocol uses a factor-2 grid).  ``schedule(epochs,
    steps_per_epoch)``: the per-step lr multiplier (e.g. a warm-up and step decay by epochs,
    :func:`~sdeverify.train.epoch_multiplier`), computed for the validation split's own
    steps per epoch.  The choice is the smallest lr whose mean validation accuracy is within
    ``tolerance`` of the best (near-ties go to the smaller, more stable lr); while it is the
    smallest or the largest lr trained and strictly better than its neighbour, the lr a factor
    2 beyond is trained too (at most ``max_extensions`` times; a flat edge, e.g. every lr at
    chance, is reported ``at_edge`` without extending).  ``fit_kwargs`` go to :func:`~sdeverify.train.fit` (backend,
    dtype, augment, svag, …)."""
    lrs = sorted(finite_float(f"grid[{i}]", g, low=0.0, low_open=True) for i, g in enumerate(grid))
    if not lrs or len(set(lrs)) != len(lrs):
        raise ValueError(f"grid must hold distinct positive lrs, got {list(grid)}")
    batch_size = positive_int("batch_size", batch_size)
    epochs = positive_int("epochs", epochs)
    replicas = positive_int("replicas", replicas)
    tolerance = finite_float("tolerance", tolerance, low=0.0)
    max_extensions = nonneg_int("max_extensions", max_extensions)
    val = data.split_validation(validation_fraction, seed=validation_seed)
    if batch_size > val.n_train:
        raise ValueError(f"batch_size must be <= the {val.n_train} training samples of the "
                         f"validation split, got {batch_size}")
    spe = val.n_train // batch_size
    mult = schedule(epochs, spe) if schedule is not None else None
    chance = 1.0 / data.n_classes

    def train(new: list[float]) -> dict:
        res = fit(model, val, [_named(optimizer(lr), lr) for lr in new], batch_size=batch_size,
                  epochs=epochs, replicas=replicas, seed=seed, lr_schedule=mult,
                  metrics=("test_acc",), eval_steps=[epochs * spe], on_divergence="ignore",
                  **fit_kwargs)
        out = {}
        for j, lr in enumerate(new):
            v = res.values_of(j, "test_acc")[-1]
            bad = ~np.isfinite(v) | ~res.valid[j, -1]
            out[lr] = (np.where(bad, chance, v), int(bad.sum()))
        return out

    scores = train(lrs)
    extended = 0
    while True:
        trained = sorted(scores)
        means = np.array([scores[lr][0].mean() for lr in trained])
        i = int(np.flatnonzero(means >= means.max() - tolerance)[0])
        choice = trained[i]
        at_edge = i in (0, len(trained) - 1)
        # extend only where the edge is strictly better than its neighbour: on a flat plateau
        # (e.g. every lr at chance) more lrs cannot resolve the choice — it stays inconclusive
        neighbour = 1 if i == 0 else len(trained) - 2
        improving = len(trained) == 1 or means[i] > means[neighbour]
        if not at_edge or not improving or extended >= max_extensions:
            break
        nxt = choice / FACTOR if choice == trained[0] else choice * FACTOR
        scores.update(train([nxt]))
        extended += 1
    return LrTuning(float(choice), tuple(float(x) for x in trained),
                    np.stack([scores[lr][0] for lr in trained]),
                    np.array([scores[lr][1] for lr in trained]), extended, bool(at_edge))


def _named(scheme: Any, lr: float) -> Any:
    """``scheme`` named after its lr, so that every lr of a grid is a distinct optimizer of one
    launch (a scheme that is not a dataclass with a ``name`` keeps its own)."""
    if dataclasses.is_dataclass(scheme) and any(f.name == "name" for f in dataclasses.fields(scheme)):
        return dataclasses.replace(scheme, name=f"{scheme.name} lr={lr:.6g}")
    return scheme
