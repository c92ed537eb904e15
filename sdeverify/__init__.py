"""sdeverify: numerical verification of "The Marginal Value of Momentum for Small Learning
Rate SGD" (Wang, Malladi, Wang, Lyu, Li, ICLR 2024).

Public API (stable): :func:`simulate`, :class:`SGD`, :class:`SGDM`, :class:`HeavyBall`,
:mod:`problems`, :mod:`schedules`, :func:`load_check` (a check run's results as tables),
:mod:`sdeverify.testing` (statistical assertions and Hypothesis strategies for your own
property tests), :mod:`sdeverify.train` (training real networks).
"""
from .version import __version__
from . import simd

simd.configure()      # 512-bit vectors on AVX-512 hosts, before anything compiles (sdeverify/simd.py)

from . import problems, schedules, sde, stats, theory
from .optim import SGD, SGDM, HeavyBall, heavy_ball_to_sgdm
from .result import SimulationResult
from .simulate import DivergenceError, DivergenceWarning, simulate
from . import distributed  # registers how simulate/fit run on an executor (sdeverify.dispatch)

__all__ = ["simulate", "SGD", "SGDM", "HeavyBall", "heavy_ball_to_sgdm", "problems",
           "schedules", "sde", "stats", "theory", "SimulationResult", "DivergenceWarning", "DivergenceError",
           "load_check"]


def __getattr__(name: str):
    if name == "load_check":          # imported on first use: it pulls in the experiments
        from .checkrun import load_check
        return load_check
    raise AttributeError(f"module 'sdeverify' has no attribute {name!r}")
