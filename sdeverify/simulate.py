"""``simulate``: the one entry point that runs ensembles of coupled optimizers on an NGOS."""
from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import dispatch, validation
from .engine import Backend, EngineContractError, backends, get_backend
from .engine.probe import probe
from .engine.spec import make_spec
from .observables import UserFunctionError
from .problems.base import NGOS
from .result import SimulationResult, versions

__all__ = ["simulate", "engine_for", "report_divergence", "DivergenceWarning", "DivergenceError"]


class DivergenceWarning(RuntimeWarning):
    """Some paths diverged (or observables were not finite); they are excluded from the
    statistics, and counted in ``res.divergence`` / ``res.nonfinite_observables``."""


class DivergenceError(RuntimeError):
    """Raised instead of the warning when ``on_divergence="raise"``."""


def simulate(problem: NGOS, optimizers: Sequence[Any] | Any, x0: ArrayLike, *, steps: int,
             paths: int, sigma: float, seed: int = 0, record: ArrayLike | None = None,
             observables: Sequence[Any] | None = None, backend: str = "cpu",
             store_states: bool = False, path_offset: int = 0,
             on_divergence: str = "warn", dtype: str = "float64",
             divergence_bound: float | None = None, executor: Any = None,
             progress: bool = False, final_states: bool = True) -> SimulationResult:
    """Simulate ``paths`` independent trajectories of each optimizer on ``problem``.

    **Divergence rule.**  A path of an optimizer *diverges* at the first step k whose iterate
    has a coordinate with |x_k,i| > ``divergence_bound`` or that is not finite.  The default
    bound is ``config.DIVERGENCE_FACTOR · max(1, max_i |x0_i|)`` = 1e8 · max(1, ‖x0‖∞): a
    run that has moved 10⁸ times its own starting scale away is a blow-up, and an unstable
    linear mode (|x| ∝ ρᵏ) crosses it after log(1e8)/log ρ steps, long before float overflow
    (ρ = 2: step ~27 instead of ~1000).  The checks of ``sdeverify check`` stay far below it
    (measured: none is flagged even at a 1e5 times tighter bound, see
    ``config.DIVERGENCE_FACTOR``).  A diverged path is frozen and excluded
    from every statistic from step k on; ``res.divergence`` lists, per optimizer, how many
    paths diverged and the first step.  Independently, an observable value (the loss, a
    user function) that is NaN or ±inf is never averaged in: it is counted in
    ``res.nonfinite`` / ``res.nonfinite_observables``.  Both are reported by
    ``on_divergence``: a :class:`DivergenceWarning` ("warn"), a :class:`DivergenceError`
    ("raise"), or nothing ("ignore"; still in the result and its ``summary()``).  Pass
    ``divergence_bound=np.inf`` to flag only non-finite iterates (overflow).

    All optimizers share the oracle noise of each (path, step) (common random numbers); the
    draws are a pure function of (seed, global path index, step), so any split into shards
    (``path_offset``, a multiple of ``config.BLOCK``; path indices are 64-bit, up to
    ``path_offset + paths <= 2**48``) merges into the identical result
    (:meth:`SimulationResult.merge`, which refuses shards of different simulations).

    Before anything runs, every argument is validated (``ValueError`` naming it), the memory
    the run needs is compared with what the machine has (``ValueError`` with the estimate),
    and the problem's functions and the observables are called once at x0
    (:mod:`sdeverify.engine.probe`: a wrong signature, an exception or a read past the
    ``n_draws`` draws is a :class:`~sdeverify.observables.UserFunctionError` naming the
    function).  An observable that raises during the run is an error too.

    Parameters
    ----------
    problem : an NGOS problem (``sdeverify.problems``, Def. 3.1).
    optimizers : SGD / SGDM / HeavyBall instances (Defs. 3.2, 3.3, A.1), or one, or any
        :class:`~sdeverify.optim.OptimizerScheme`.
    x0 : (d,) initial point shared by all paths.
    steps, paths : numbers of steps and paths (≥ 1).
    path_offset : global index of this call's first path (a multiple of ``config.BLOCK``),
        so that shards of one simulation merge exactly.
    sigma : noise scale σ ≥ 0 (the oracle returns ∇L + σ v, Def. 3.1).
    seed : 64-bit seed of the counter-based generator.
    record : step indices (0..steps) at which observables are accumulated; default 17 evenly
        spaced steps including 0 and ``steps``.
    observables : names ("loss", "sqnorm", "x<i>") and/or njit functions h(x) -> float.
    backend : "cpu" (Numba, parallel), "numpy" (reference), "cuda" (numba.cuda), or any
        other name registered with :func:`sdeverify.engine.register_backend`.
    store_states : also keep x at every recorded step, (n_opt, n_rec, paths, d).
    on_divergence : "warn" (default), "raise" or "ignore" when paths diverge or observables
        are not finite (see the divergence rule above); such values are always excluded.
    divergence_bound : the bound of the divergence rule (> 0, ``np.inf`` allowed); default
        1e8 · max(1, ‖x0‖∞).
    dtype : "float64" (default) or "float32" (``backend="cpu"`` only): precision of the
        states, momenta and draws (same Philox words, float32 arithmetic); statistics always
        accumulate in float64.  float32 is ~1.3x faster.  Measured against float64 on the
        d=8 quadratic of benchmarks/RESULTS.md: means of loss/sqnorm within 5e-7 relative and
        states within 7e-6 relative, for η from 1e-2 to 1e-4 over 5/η steps with σ ∝ η^(-1/2)
        — far below Monte Carlo error.  Use float64 when a step's increment η|g| can fall
        below ~1e-6 |x| (float32 resolves 6e-8 relative: such steps are rounded away), e.g.
        noiseless or tiny-σ runs over O(1/η²) steps, and whenever bitwise agreement with the
        "numpy" backend matters.  Overflow (divergence) happens at 3e38 instead of 2e308.
    executor : a ``distributed.Client`` or a Session (:class:`sdeverify.distributed.Session`;
        ``pip install 'sdeverify[dist]'``): the paths are cut into shards (multiples of
        ``config.BLOCK``) that run on its workers and are merged — bitwise the result of the
        local call (:mod:`sdeverify.distributed`).  Default None: run here, unless inside
        ``sdeverify.distributed.use(client)``, which sends every call (the caller hands the
        executor down: :mod:`sdeverify.dispatch`).
    progress : show a progress bar over paths (tqdm on stderr, only when it is a terminal): the
        paths run in about 20 exact shards, merged — bitwise the same result.
    final_states : keep each path's final state and momentum (``x_final``, ``m_final``,
        (n_opt, paths, d)) in the result (default).  False leaves them out (both None; the
        statistics, divergence steps and stored states are unchanged): a call whose caller
        reads only statistics — every check of ``sdeverify check`` — then returns, ships from
        a cluster's workers and saves ``2·d`` numbers less per path and optimizer.

    Returns
    -------
    SimulationResult
        Per optimizer, recorded step and observable: the mean, variance and count over the
        non-diverged paths (merged over 256-path blocks), the final states and momenta
        (unless ``final_states=False``), the
        divergence step of each path and, with ``store_states``, the states; ``meta`` holds
        the arguments, the fingerprint, the wall time and the versions.
    """
    if executor is None:
        executor = dispatch.active()
    if executor is not None:
        return dispatch.run("simulate", executor, problem, optimizers, x0, steps=steps,
                            paths=paths, sigma=sigma, seed=seed, record=record,
                            observables=observables, backend=backend,
                            store_states=store_states, path_offset=path_offset,
                            on_divergence=on_divergence, dtype=dtype,
                            divergence_bound=divergence_bound, final_states=final_states)
    engine = engine_for(backend, dtype)
    on_divergence = validation.on_divergence(on_divergence)
    progress = validation.flag("progress", progress)
    keep = validation.flag("final_states", final_states)
    if progress:                  # shards of the same simulation, merged exactly, with a bar
        return _with_progress(problem, optimizers, x0, steps=steps, paths=paths, sigma=sigma,
                              seed=seed, record=record, observables=observables,
                              backend=backend, store_states=store_states,
                              path_offset=path_offset, on_divergence=on_divergence,
                              dtype=dtype, divergence_bound=divergence_bound,
                              final_states=final_states)
    spec = make_spec(problem, optimizers, x0, steps=steps, paths=paths, sigma=sigma, seed=seed,
                     record=record, observables=observables, store_states=store_states,
                     path_offset=path_offset, dtype=dtype, divergence_bound=divergence_bound)
    probe(problem, spec.user_funcs, spec.x0, spec.dtype, spec.seed)
    t0 = time.perf_counter()
    try:
        out = engine.run(spec)
    except (UserFunctionError, EngineContractError):
        raise
    except Exception as exc:
        if not engine.python_functions or isinstance(exc, (MemoryError, KeyboardInterrupt)):
            raise
        raise UserFunctionError(f"a function of problem {problem.name!r} raised "
                                f"{type(exc).__name__}: {exc}") from exc
    wall = time.perf_counter() - t0
    raised = out.block_bad[..., 1].sum(axis=0)
    if raised.any():
        j, r, o = (int(i) for i in np.argwhere(raised > 0)[0])
        funcs = {n: f for n, f in zip(spec.obs_names, _user_iter(spec))}
        who = spec.obs_names[o]
        fn = funcs.get(who)
        raise UserFunctionError(
            f"observable {who!r}" + (f" ({fn.py_func.__module__}.{fn.py_func.__qualname__})" if fn else "")
            + f" raised an exception at {int(raised[:, :, o].sum())} evaluations, first for "
            f"optimizer {spec.names[j]!r} at recorded step {int(spec.record[r])}; run with "
            "backend='numpy' to see the Python traceback")
    meta = {"problem": problem.name, "dim": problem.dim, "noise_dist": problem.noise_dist,
            "svag_ell": problem.svag_ell, "sigma": spec.sigma, "steps_total": spec.steps,
            "paths": spec.paths, "path_offset": spec.path_offset, "seed": spec.seed,
            "backend": backend, "dtype": spec.dtype, "wall_time": wall, "x0": spec.x0.tolist(),
            "optimizer_specs": [repr(o) for o in (optimizers if isinstance(optimizers, (list, tuple)) else [optimizers])],
            "problem_spec": repr(problem),
            "divergence_bound": spec.bound, "fingerprint": spec.fingerprint(engine.numerics),
            "versions": versions()}
    res = SimulationResult(tuple(spec.names), tuple(spec.obs_names), spec.record,
                           out.block_stats, out.block_diff, out.x_final if keep else None,
                           out.m_final if keep else None, out.div_step,
                           out.states if spec.store_states else None, meta, out.block_bad)
    report_divergence(res, on_divergence, stacklevel=3)
    return res


def _with_progress(problem, optimizers, x0, *, paths: int, path_offset: int,
                   on_divergence: str, **kw) -> SimulationResult:
    """``simulate`` in about 20 shards of paths (multiples of ``config.BLOCK``), merged: bitwise
    the one-call result (the draws are a pure function of seed, path and step), with a tqdm
    bar on stderr when it is a terminal (:mod:`sdeverify.progress`)."""
    from . import config
    from .progress import bar
    positive = validation.positive_int("paths", paths)
    shard = max(config.BLOCK, (positive // 20) // config.BLOCK * config.BLOCK)
    parts = []
    with bar(positive, "paths", unit="path") as update:
        for off in range(0, positive, shard):
            parts.append(simulate(problem, optimizers, x0, paths=min(shard, positive - off),
                                  path_offset=path_offset + off, on_divergence="ignore", **kw))
            update(min(off + shard, positive))
    res = parts[0].merge(*parts[1:]) if len(parts) > 1 else parts[0]
    report_divergence(res, on_divergence, stacklevel=4)
    return res


def engine_for(backend: str, dtype: str) -> Backend:
    """The registered backend ``backend`` (ValueError naming the registered ones), checked to
    run ``dtype`` when that is a known precision (ValueError naming the backends that do)."""
    engine = get_backend(backend)
    if dtype in validation.DTYPES and dtype not in engine.dtypes:
        able = [b for b in backends() if dtype in get_backend(b).dtypes]
        raise ValueError(f"dtype={dtype!r} is supported by backend="
                         + (repr(able[0]) if len(able) == 1 else str(tuple(able)))
                         + f" only; the {backend!r} backend runs in {' or '.join(engine.dtypes)}")
    return engine


def report_divergence(res: SimulationResult, on_divergence: str, stacklevel: int = 2) -> None:
    """Warn about (or raise for) diverged paths and non-finite observables of ``res``."""
    issues = res.issues()
    if issues and on_divergence != "ignore":
        msg = "; ".join(issues) + " (excluded from the statistics)"
        if on_divergence == "raise":
            raise DivergenceError(msg)
        warnings.warn(msg, DivergenceWarning, stacklevel=stacklevel)


def _user_iter(spec):
    """The function behind each observable name (None for "sqnorm" and coordinates)."""
    from .observables import LOSS, USER0
    for code in spec.codes:
        yield (spec.user_funcs[USER0 - int(code)] if code <= USER0 else
               spec.problem.loss if code == LOSS else None)
