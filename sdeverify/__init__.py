"""sdeverify: numerical verification of "The Marginal Value of Momentum for Small Learning
Rate SGD" (Wang, Malladi, Wang, Lyu, Li, ICLR 2024).

Public API (stable): :func:`simulate`, :class:`SGD`, :class:`SGDM`, :class:`HeavyBall`,
:mod:`problems`, :mod:`schedules`.
"""
__version__ = "0.1.0"

from . import problems, schedules, sde, stats, theory
from .optim import SGD, SGDM, HeavyBall, heavy_ball_to_sgdm
from .result import SimulationResult
from .simulate import DivergenceError, DivergenceWarning, simulate

__all__ = ["simulate", "SGD", "SGDM", "HeavyBall", "heavy_ball_to_sgdm", "problems",
           "schedules", "sde", "stats", "theory", "SimulationResult", "DivergenceWarning", "DivergenceError"]
