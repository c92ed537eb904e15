"""Learning-rate and momentum schedules (per-step float64 arrays).

Includes the Def. 4.1 families scaled by η with index α, and the averaged learning rate
η̄_k of Eq. 8.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from .validation import finite_array, finite_float, nonneg_int, positive_int, schedule

__all__ = ["constant", "step_decay", "warmup", "cosine", "scaled_family", "averaged_lr",
           "svag_schedule", "svag_weights"]


def constant(value: float, steps: int) -> np.ndarray:
    """``value`` at every step, shape (steps,)."""
    return np.full(positive_int("steps", steps), finite_float("value", value))


def step_decay(lr: float, steps: int, milestones: Sequence[int], factor: float = 0.1) -> np.ndarray:
    """lr multiplied by ``factor`` at each milestone step (torch MultiStepLR)."""
    steps = positive_int("steps", steps)
    out = np.full(steps, finite_float("lr", lr, low=0.0))
    factor = finite_float("factor", factor, low=0.0)
    for m in sorted(milestones):
        out[nonneg_int("milestone", m):] *= factor
    return out


def warmup(lr: float, steps: int, warmup_steps: int) -> np.ndarray:
    """Linear warm-up from lr/warmup_steps to lr over ``warmup_steps``, then constant."""
    steps = positive_int("steps", steps)
    w = nonneg_int("warmup_steps", warmup_steps)
    lr = finite_float("lr", lr, low=0.0)
    out = np.full(steps, lr)
    k = np.arange(min(w, steps))
    out[: k.size] = lr * (k + 1) / max(w, 1)
    return out


def cosine(lr: float, steps: int, lr_min: float = 0.0, warmup_steps: int = 0) -> np.ndarray:
    """Optional linear warm-up, then cosine decay from lr to lr_min over the remaining steps."""
    steps = positive_int("steps", steps)
    w = nonneg_int("warmup_steps", warmup_steps)
    lr = finite_float("lr", lr, low=0.0)
    lr_min = finite_float("lr_min", lr_min, low=0.0, high=lr)
    out = warmup(lr, steps, w)
    n = steps - min(w, steps)
    if n > 0:
        t = np.arange(n) / max(n, 1)
        out[steps - n:] = lr_min + 0.5 * (lr - lr_min) * (1.0 + np.cos(np.pi * t))
    return out


def scaled_family(eta: float, alpha: float, lam: float, steps: int,
                  shape: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A schedule scaled by η with index α (Def. 4.1, docs/theory.md §3): η_k = η·shape_k,
    1 − β_k = λ η^α.

    Returns ``(lr, beta)``, each (steps,).  ``shape``: a scalar or (steps,) profile ≥ 0
    (ones when omitted).  Requires λη^α ≤ 1 so that β ∈ [0, 1).
    """
    eta = finite_float("eta", eta, low=0.0, low_open=True)
    alpha = finite_float("alpha", alpha, low=0.0, high=1.0)
    lam = finite_float("lam", lam, low=0.0, low_open=True)
    steps = positive_int("steps", steps)
    one_minus_beta = lam * eta ** alpha
    if one_minus_beta > 1.0:
        raise ValueError(f"lam * eta**alpha must be in (0, 1] so that beta is in [0, 1); got {one_minus_beta:g}")
    lr = eta * (np.ones(steps) if shape is None else schedule("shape", shape, steps, low=0.0))
    return lr, np.full(steps, 1.0 - one_minus_beta)


def averaged_lr(lr: ArrayLike, beta: ArrayLike, *, tail: str = "constant") -> np.ndarray:
    """Averaged learning rate of Eq. 8 (docs/theory.md §4): the total displacement caused by
    gradient g_k; shape of ``lr``.  ``beta``: one value or one per step.

        A_k = η_k + β_{k+1} A_{k+1},   η̄_k = (1 − β_k) A_k.

    ``tail="constant"`` extends the schedule past its end with its last (η, β) (infinite
    horizon: a constant schedule gives η̄ ≡ η); ``tail="truncate"`` sets A_K = 0.
    """
    lr = finite_array("lr", lr, low=0.0)
    beta = finite_array("beta", beta, low=0.0)
    beta = np.full(lr.shape, float(beta[0])) if beta.size == 1 else beta
    if beta.shape != lr.shape:
        raise ValueError(f"beta has {beta.shape[0]} entries but lr has {lr.shape[0]}")
    if np.any(beta >= 1):
        k = int(np.argmax(beta >= 1))
        raise ValueError(f"beta must be in [0, 1); entry {k} is {beta[k]}")
    if tail not in ("constant", "truncate"):
        raise ValueError(f"tail must be 'constant' or 'truncate', got {tail!r}")
    K = lr.shape[0]
    A = np.empty(K + 1)
    A[K] = lr[-1] / (1.0 - beta[-1]) if tail == "constant" else 0.0
    b_next = np.append(beta[1:], beta[-1])
    for k in range(K - 1, -1, -1):
        A[k] = lr[k] + b_next[k] * A[k + 1]
    return (1.0 - beta) * A[:K]


def svag_schedule(lr: ArrayLike, ell: int, steps: int) -> np.ndarray:
    """SVAG's lr (Def. 6.1, docs/theory.md §9): each step's η_k becomes ℓ steps of η_k/ℓ,
    shape (ℓ·steps,).  ``lr``: a scalar or (steps,) schedule."""
    ell = positive_int("ell", ell)
    arr = schedule("lr", lr, positive_int("steps", steps), low=0.0)
    return np.repeat(arr / ell, ell)


def svag_weights(ell: float) -> tuple[float, float]:
    """SVAG's minibatch weights (r₁, r₂) of Def. 6.1 (docs/theory.md §9): the gradient is
    r₁ g(B₁) + r₂ g(B₂) with r₁ + r₂ = 1 and r₁² + r₂² = ℓ, i.e. r₁,₂ = (1 ± √(2ℓ − 1))/2;
    (1, 0) for ℓ = 1 (SVAG off).  Used by the SVAG problems and by the trainer alike."""
    ell = finite_float("ell", ell, low=1.0)
    s = float(np.sqrt(2.0 * ell - 1.0))
    return 0.5 * (1.0 + s), 0.5 * (1.0 - s)
