"""SVAG, Def. 6.1: an oracle transform with parameter ℓ ≥ 1.

    g = r₁ g₁ + r₂ g₂,   r₁ = (1 + √(2ℓ−1))/2,   r₂ = (1 − √(2ℓ−1))/2,

from two independent oracle outputs at the same x.  r₁ + r₂ = 1 keeps the mean, r₁² + r₂² = ℓ
multiplies the noise variance by ℓ.  Run with lr η/ℓ for ℓ× the steps
(:func:`sdeverify.schedules.svag_schedule`) to approach the SDE of THEORY §7 as ℓ → ∞.
The engines implement the transform: the second call uses draw stream 1.
"""
from __future__ import annotations

import copy

from ..validation import finite_float
from .base import NGOS

__all__ = ["SVAG"]


def SVAG(problem: NGOS, ell: float) -> NGOS:
    """Return a copy of ``problem`` whose oracle is the SVAG combination with parameter
    ``ell`` ≥ 1 (Def. 6.1, docs/theory.md §9): same mean, noise variance × ℓ."""
    if not isinstance(problem, NGOS):
        raise ValueError(f"problem must be an NGOS problem, got {problem!r}")
    ell = finite_float("ell", ell, low=1.0)
    out = copy.copy(problem)
    out.svag_ell = ell
    out._name_before_svag = problem.name        # for the replayable repr: SVAG(problem, ell)
    out.name = f"{problem.name}+svag{ell:g}"
    return out
