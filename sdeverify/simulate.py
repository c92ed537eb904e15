"""``simulate``: the one entry point that runs ensembles of coupled optimizers on an NGOS."""
from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import numpy as np

from .engine.spec import make_spec
from .problems.base import NGOS
from .result import SimulationResult, versions

BACKENDS = ("cpu", "numpy", "cuda")


class DivergenceWarning(RuntimeWarning):
    """Some paths' iterates became non-finite; they are excluded from the statistics."""


class DivergenceError(RuntimeError):
    """Raised instead of the warning when ``on_divergence="raise"``."""


def simulate(problem: NGOS, optimizers: Sequence[Any] | Any, x0, *, steps: int, paths: int,
             sigma: float, seed: int = 0, record=None, observables=None, backend: str = "cpu",
             store_states: bool = False, path_offset: int = 0,
             on_divergence: str = "warn", dtype: str = "float64") -> SimulationResult:
    """Simulate ``paths`` independent trajectories of each optimizer on ``problem``.

    All optimizers share the oracle noise of each (path, step) (common random numbers); the
    draws are a pure function of (seed, global path index, step), so any split into shards
    (``path_offset``, a multiple of ``config.BLOCK``) merges into the identical result.

    Parameters
    ----------
    problem : an NGOS problem (``sdeverify.problems``).
    optimizers : SGD / SGDM / HeavyBall instances (or one).
    x0 : (d,) initial point shared by all paths.
    steps, paths : numbers of steps and paths (≥ 1).
    sigma : noise scale σ ≥ 0 (the oracle returns ∇L + σ v, Def. 3.1).
    seed : 64-bit seed of the counter-based generator.
    record : step indices (0..steps) at which observables are accumulated; default 17 evenly
        spaced steps including 0 and ``steps``.
    observables : names ("loss", "sqnorm", "x<i>") and/or njit functions h(x) -> float.
    backend : "cpu" (Numba, parallel), "numpy" (reference), "cuda" (numba.cuda).
    store_states : also keep x at every recorded step, (n_opt, n_rec, paths, d).
    on_divergence : "warn" (default), "raise" or "ignore" when iterates become non-finite;
        diverged paths are always excluded from the statistics from that step on.
    dtype : "float64" (default) or "float32" (``backend="cpu"`` only): precision of the
        states, momenta and draws (same Philox words, float32 arithmetic); statistics always
        accumulate in float64.  float32 is ~1.3x faster.  Measured against float64 on the
        d=8 quadratic of benchmarks/RESULTS.md: means of loss/sqnorm within 5e-7 relative and
        states within 7e-6 relative, for η from 1e-2 to 1e-4 over 5/η steps with σ ∝ η^(-1/2)
        — far below Monte Carlo error.  Use float64 when a step's increment η|g| can fall
        below ~1e-6 |x| (float32 resolves 6e-8 relative: such steps are rounded away), e.g.
        noiseless or tiny-σ runs over O(1/η²) steps, and whenever bitwise agreement with the
        "numpy" backend matters.  Overflow (divergence) happens at 3e38 instead of 2e308.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if on_divergence not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_divergence must be 'warn', 'raise' or 'ignore', got {on_divergence!r}")
    if dtype != "float64" and backend != "cpu":
        raise ValueError(f"dtype={dtype!r} is supported by backend='cpu' only; the {backend!r} "
                         "backend runs in float64")
    spec = make_spec(problem, optimizers, x0, steps=steps, paths=paths, sigma=sigma, seed=seed,
                     record=record, observables=observables, store_states=store_states,
                     path_offset=path_offset, dtype=dtype)
    t0 = time.perf_counter()
    if backend == "cpu":
        from .engine import cpu as engine
    elif backend == "numpy":
        from .engine import reference as engine
    else:
        from .engine import cuda as engine
    out = engine.run(spec)
    wall = time.perf_counter() - t0
    meta = {"problem": problem.name, "dim": problem.dim, "noise_dist": problem.noise_dist,
            "svag_ell": problem.svag_ell, "sigma": spec.sigma, "steps_total": spec.steps,
            "paths": spec.paths, "path_offset": spec.path_offset, "seed": spec.seed,
            "backend": backend, "dtype": spec.dtype, "wall_time": wall, "x0": spec.x0.tolist(),
            "optimizer_specs": [repr(o) for o in (optimizers if isinstance(optimizers, (list, tuple)) else [optimizers])],
            "versions": versions()}
    res = SimulationResult(tuple(spec.names), tuple(spec.obs_names), spec.record,
                           out["block_stats"], out["block_diff"], out["x_final"], out["m_final"], out["div_step"],
                           out["states"] if spec.store_states else None, meta)
    div = res.divergence
    if div and on_divergence != "ignore":
        msg = "non-finite iterates: " + "; ".join(str(d) for d in div) + \
              " (excluded from the statistics from that step on)"
        if on_divergence == "raise":
            raise DivergenceError(msg)
        warnings.warn(msg, DivergenceWarning, stacklevel=2)
    return res
