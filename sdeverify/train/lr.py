"""Learning-rate rules of large-batch training (Goyal et al. 2017, used by the paper's Sec 6).

* linear scaling: the lr grows in proportion to the batch size, ``η_B = η_base · B / B_base``;
* gradual warm-up: a linear ramp over the first epochs, then step decay by ``factor`` at the
  milestones (fractions of the run).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import schedules
from ..validation import finite_float, nonneg_int, positive_int

__all__ = ["linear_scaling", "goyal_multiplier", "epoch_multiplier"]


def linear_scaling(lr_base: float, batch_size: int, base_batch: int = 256) -> float:
    """``lr_base · batch_size / base_batch`` (Goyal et al. 2017's linear scaling rule)."""
    lr_base = finite_float("lr_base", lr_base, low=0.0, low_open=True)
    return lr_base * positive_int("batch_size", batch_size) / positive_int("base_batch", base_batch)


def goyal_multiplier(steps: int, warmup_steps: int, milestones: Sequence[float] = (0.5, 0.75),
                     factor: float = 0.1) -> np.ndarray:
    """A per-step lr *multiplier* (peak 1): linear warm-up over ``warmup_steps``, then ×factor
    at each milestone (given as fractions of ``steps``).  Pass it as ``fit(lr_schedule=…)``:
    every optimizer's lr is multiplied by it."""
    steps = positive_int("steps", steps)
    w = nonneg_int("warmup_steps", warmup_steps)
    ms = []
    for i, m in enumerate(milestones):
        m = finite_float(f"milestones[{i}]", m, low=0.0, high=1.0)
        ms.append(int(round(m * steps)))
    return schedules.warmup(1.0, steps, w) * schedules.step_decay(1.0, steps, ms, factor)


def epoch_multiplier(epochs: int, steps_per_epoch: int, warmup_epochs: float = 5,
                     decay_epochs: Sequence[int] = (), factor: float = 0.1) -> np.ndarray:
    """A per-step lr multiplier (peak 1) set in epochs, as CIFAR/ImageNet protocols state it
    (Goyal et al. 2017; the paper's App D): a linear warm-up over the first ``warmup_epochs``
    epochs (step k's multiplier (k + 1)/warm-up steps), then ×``factor`` at the start of each
    epoch in ``decay_epochs`` (e.g. ``(100, 150)`` of 200).  ``epochs · steps_per_epoch``
    entries; pass it as ``fit(lr_schedule=…)`` with ``epochs=epochs``."""
    epochs = positive_int("epochs", epochs)
    spe = positive_int("steps_per_epoch", steps_per_epoch)
    warm = finite_float("warmup_epochs", warmup_epochs, low=0.0, high=float(epochs))
    ms = []
    for i, e in enumerate(decay_epochs):
        e = nonneg_int(f"decay_epochs[{i}]", e)
        if e > epochs:
            raise ValueError(f"decay_epochs[{i}] must be <= epochs={epochs}, got {e}")
        ms.append(e * spe)
    steps = epochs * spe
    return schedules.warmup(1.0, steps, int(round(warm * spe))) * \
        schedules.step_decay(1.0, steps, ms, finite_float("factor", factor, low=0.0))
