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

__all__ = ["linear_scaling", "goyal_multiplier"]


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
