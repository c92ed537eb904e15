"""Points: one ``simulate``/``fit`` call, validated as the local call would be, keyed, and cut
into shards of paths (replicas) that merge exactly.

A point's arguments are those of the call with the defaults of the function's own signature
(:func:`sdeverify.simulate`, :func:`sdeverify.train.fit`): nothing is restated here.
"""
from __future__ import annotations

import inspect
import math
import pickle
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from numpy.typing import ArrayLike

from .. import config, validation
from ..dispatch import Call
from ..engine.spec import make_spec
from ..simulate import engine_for, simulate
from ..train import training
from ..train.spec import TrainSpec
from ..validation import positive_int
from .keys import point_key

if TYPE_CHECKING:
    from ..problems.base import NGOS
    from ..train.datasets import Dataset

__all__ = ["MIN_TASK_WORK", "LOCAL_WORK", "RECORD_WORK", "SHARDS_PER_WORKER", "SmallWorkWarning", "PointError",
           "Point", "Call", "plan_shards", "simulate_point", "fit_point", "call_point"]

#: Default smallest task, in path·step·optimizer·coordinate units (~0.4 s on one core of
#: the benchmark machine at ~350 M units per CPU-second): a measured per-task scheduler
#: overhead of a few milliseconds (benchmarks/RESULTS.md, "Dask") stays ~1% of a task.
MIN_TASK_WORK: int = 2 ** 27
#: Work units of one recorded step of one observable for one path and optimizer (the
#: statistics the engine accumulates there), counted in a point's work next to its steps:
#: measured on this machine (2-d CosineWell and Quadratic, 2 optimizers, 2 observables,
#: 20 000 paths, 256 steps) as ≈ 117 ns per recorded step, path and optimizer, i.e. 17–28
#: path·step·optimizer·coordinate units — a point of few steps recorded at every step
#: costs far more than its steps say (weak_approximation's coarse η: ~10×).
RECORD_WORK: int = 12
#: A point is cut into at most this many shards per worker (load balance vs overhead).
SHARDS_PER_WORKER: int = 4
#: What ``sdeverify check/run --workers/--scheduler`` runs in its own process instead of on
#: the cluster: a call ("point") of less work than this (path·step·optimizer·coordinate units,
#: the units of :data:`MIN_TASK_WORK`; ~0.4 s on one core) costs more on the cluster (pickling,
#: a task round trip, a compile on each worker, a saved point file) than it takes here.
#: Measured on the 2-core development machine (loaded), ``check --smoke --only
#: descent_lemma,weak_approximation,batch_size --workers 2``: 47.5 s with every call on the
#: cluster (87 files, 46 MB under OUT/), 20.0 s with this fallback (11 files, 1.4 MB), 15.8 s
#: without a cluster.
LOCAL_WORK: int = MIN_TASK_WORK
#: Training FLOPs per work unit: a ``fit`` call's work is steps × SVAG ℓ × batch × optimizers ×
#: the model's training FLOPs per sample (``flops_per_sample()``) / this.  6 × 64 keeps an
#: MLP near its former count, n_params/64 per sample-step (its FLOPs ≈ 6 n_params); a conv net
#: now counts the reuse of its weights over the image (ResNet-8 4-8-16 on 8×8 images: 62
#: FLOPs per parameter, counted as 6 before, so that a full-size Sec 6 fit of 2.5 CPU-minutes
#: was taken for a 0.1 s call and kept in the driver).  Measured here (one thread, 2 × 2
#: models): MLP 74 M units/s at B = 2048, ResNet-8 20 M units/s at B = 256 — a fit's per-step
#: overhead is not modelled, so small-batch fits cost more than their units say.
FIT_FLOPS_PER_UNIT: float = 6.0 * 64.0


def fit_flops(model: Any) -> float:
    """Training FLOPs per sample of ``model`` (its ``flops_per_sample()``; 6 × its parameter
    count for a model that does not say)."""
    f = getattr(model, "flops_per_sample", None)
    return float(f()) if callable(f) else 6.0 * float(model.n_params)


def kept_here(works: Sequence[float], local_below: float, workers: int) -> set[int]:
    """Which items of a batch (their ``work``, path·step·optimizer·coordinate units) a
    session runs in this process: those below ``local_below``, smallest first, as long as
    their total stays within the larger of ``local_below`` and one worker's share of the
    batch's other (known) work — the driver takes a fair share, so that on a large cluster
    many small items do not queue up here while the workers idle; the rest are sent."""
    if local_below <= 0:
        return set()
    small = sorted((w, i) for i, w in enumerate(works) if w < local_below)
    rest = sum(w for w in works if local_below <= w < math.inf)
    budget = max(float(local_below), rest / max(int(workers), 1))
    kept, total = set(), 0.0
    for w, i in small:
        if total + w > budget:
            break
        kept.add(i)
        total += w
    return kept


class SmallWorkWarning(UserWarning):
    """Calls of a distributed run had too little work to pay for the cluster: they ran
    locally (:data:`LOCAL_WORK` fallback), or were sent anyway and cost more than they saved."""

#: arguments of a call that a point sets itself (positional data, the executor, its size and
#: offset are passed apart; progress is not called for a distributed run)
_NOT_ARGS = {"problem", "optimizers", "x0", "model", "data", "executor", "progress"}


class PointError(RuntimeError):
    """A point (one ``simulate``/``fit`` call) of a distributed run failed: which one and why."""

    def __init__(self, point: str, error: BaseException | str):
        self.point = point
        self.error = error
        what = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(f"point {point} failed: {what}")

    def original(self) -> BaseException:
        """The shard's own exception (same type as the local call would raise), with a note
        naming the point (Python >= 3.11); this error when there is none."""
        if not isinstance(self.error, BaseException):
            return self
        if hasattr(self.error, "add_note") and not getattr(self.error, "_sdeverify_noted", False):
            self.error.add_note(f"(in point {self.point} of a distributed run)")
            self.error._sdeverify_noted = True
        return self.error


@dataclass
class Point:
    """One ``simulate``/``fit`` call, or one :class:`Call` (kind "call", one shard),
    validated, keyed and cut into shards."""
    kind: str
    args: dict                  # the call's arguments (without the total size / offset)
    total: int                  # paths or replicas
    offset: int                 # path_offset or replica_offset of the whole call
    shards: list
    key: str
    on_divergence: str
    label: str
    work: float = 0.0           # path·step·optimizer·coordinate units of the whole call

    @property
    def stem(self) -> str:
        """File stem of the saved point and prefix of its task keys: ``KIND-<key[:32]>``."""
        return f"{self.kind}-{self.key[:32]}"


def plan_shards(total: int, unit_work: float, workers: int, *, block: int = 1,
                size: int | None = None) -> list[tuple[int, int]]:
    """Cut ``total`` items (paths, replicas) into ``(start, count)`` shards.

    Default size: large enough that a task does at least :data:`MIN_TASK_WORK` units
    (``unit_work`` per item) — so the scheduler's per-task overhead stays small — and small
    enough to give each worker up to :data:`SHARDS_PER_WORKER` shards; a multiple of
    ``block`` (``config.BLOCK`` for paths, so that shards merge exactly).
    """
    if size is None:
        by_work = math.ceil(MIN_TASK_WORK / max(unit_work, 1.0))
        by_balance = math.ceil(total / (SHARDS_PER_WORKER * max(workers, 1)))
        size = max(by_work, by_balance)
    size = max(block, -(-int(size) // block) * block)
    return [(s, min(size, total - s)) for s in range(0, total, size)]


def _call_args(fn: Callable, name: str, kw: dict, required: Sequence[str]) -> dict:
    """The keyword arguments of a call of ``fn``: ``kw`` over the defaults of ``fn``'s
    signature; TypeError for an unknown or a missing required one, as the call would."""
    params = {k: p for k, p in inspect.signature(fn).parameters.items() if k not in _NOT_ARGS}
    unknown = set(kw) - set(params)
    if unknown:
        raise TypeError(f"{name}() got unexpected arguments {sorted(unknown)}")
    missing = [k for k in required if k not in kw]
    if missing:
        raise TypeError(f"{name}() missing required keyword argument {missing[0]!r}")
    a = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    a.update(kw)
    return a


def _check_pickles(label: str, args: dict) -> None:
    """ValueError naming the point when its spec cannot travel (pickle, then cloudpickle,
    as Dask tries them)."""
    try:
        pickle.dumps(args)
    except Exception:
        try:
            import cloudpickle
            cloudpickle.dumps(args)
        except Exception as exc:
            raise ValueError(f"point {label} cannot be sent to workers: its spec does not "
                             f"pickle ({type(exc).__name__}: {exc}); problems must hold "
                             "numba.njit functions and plain arrays") from None


def simulate_point(problem: NGOS, optimizers: Sequence[Any] | Any, x0: ArrayLike, *,
                   shard_paths: int | None = None, workers: int = 1, **kw: Any) -> Point:
    """Validate a ``simulate`` call (as the local call would) and describe it as a point."""
    a = _call_args(simulate, "simulate", kw, ("steps", "paths", "sigma"))
    engine = engine_for(a["backend"], a["dtype"])     # as the local call checks them
    validation.on_divergence(a["on_divergence"])
    validation.flag("final_states", a["final_states"])
    spec = make_spec(problem, optimizers, x0, steps=a["steps"], paths=a["paths"],
                     sigma=a["sigma"], seed=a["seed"], record=a["record"],
                     observables=a["observables"], store_states=a["store_states"],
                     path_offset=a["path_offset"], dtype=a["dtype"],
                     divergence_bound=a["divergence_bound"])
    if shard_paths is not None:
        positive_int("shard_paths", shard_paths)
    offset, policy = spec.path_offset, a.pop("on_divergence")
    del a["path_offset"], a["paths"]
    args = dict(a, problem=problem, optimizers=optimizers, x0=x0)
    label = (f"simulate({problem.name}, {', '.join(spec.names)}, steps={spec.steps}, "
             f"paths={spec.paths}, sigma={spec.sigma:g}, seed={spec.seed})")
    _check_pickles(label, args)
    unit = (spec.steps * len(spec.names) * problem.dim * spec.n_calls
            + RECORD_WORK * len(spec.record) * max(1, len(spec.obs_names)) * len(spec.names))
    shards = plan_shards(spec.paths, unit, workers, block=config.BLOCK, size=shard_paths)
    key = point_key("simulate", dict(args, paths=spec.paths, path_offset=offset,
                                     fingerprint=spec.fingerprint(engine.numerics)))
    return Point("simulate", args, spec.paths, offset, shards, key, policy, label,
                 float(unit) * spec.paths)


def fit_point(model: Any, data: Dataset, optimizers: Sequence[Any] | Any, *,
              shard_replicas: int | None = None, workers: int = 1, **kw: Any) -> Point:
    """Validate a ``fit`` call (as the local call would) and describe it as a point; a
    callable ``lr_schedule`` is evaluated here, so that the task carries an array (and
    ``progress`` is dropped: shards run elsewhere)."""
    kw.pop("progress", None)
    a = _call_args(training.fit, "fit", kw, ("batch_size",))
    if training._state_args(a["init_weights"], a["init_momentum"], a["start_step"], a["resume"],
                            a["record_weights"], a["init_buffers"]):
        raise ValueError("init_weights, init_momentum, init_buffers, start_step, resume and "
                         "record_weights train here only, not on a cluster")
    build = inspect.signature(TrainSpec.build).parameters
    spec = TrainSpec.build(model, data, optimizers, **{k: v for k, v in a.items() if k in build})
    if callable(a["lr_schedule"]):
        a["lr_schedule"] = spec.lr_multiplier          # the validated array (start_step is 0 here)
    if shard_replicas is not None:
        positive_int("shard_replicas", shard_replicas)
    total, offset, policy = int(a.pop("replicas")), int(a.pop("replica_offset")), a.pop("on_divergence")
    args = dict(a, model=model, data=data, optimizers=optimizers)
    label = (f"fit({model.describe()}, {data.name}, "
             f"{', '.join(spec.names)}, batch_size={spec.batch_size}, "
             f"steps={spec.steps}, replicas={total}, seed={spec.seed})")
    _check_pickles(label, {k: v for k, v in args.items() if k != "data"})
    unit = spec.steps * spec.svag * spec.batch_size * fit_flops(model) * len(spec.names) / FIT_FLOPS_PER_UNIT
    shards = plan_shards(total, unit, workers, size=shard_replicas)
    key = point_key("fit", dict(args, replicas=total, replica_offset=offset,
                                data=data.fingerprint()))
    return Point("fit", args, total, offset, shards, key, policy, label, float(unit) * total)


def call_point(call: Call) -> Point:
    """Describe a :class:`Call` as a point of one shard.  Its result is not saved in a
    session's ``points_dir`` (it is whatever ``fn`` returns), so its key only tells its
    tasks apart; a ``work`` of None counts as more than any local threshold."""
    if not callable(call.fn):
        raise ValueError(f"Call.fn must be callable, got {call.fn!r}")
    if call.work is not None and not call.work >= 0:
        raise ValueError(f"Call.work must be >= 0 (path·step·optimizer·coordinate units) or "
                         f"None (unknown), got {call.work!r}")
    name = getattr(call.fn, "__qualname__", None) or type(call.fn).__name__
    label = call.label or f"{name}(...)"
    args = {"fn": call.fn, "args": tuple(call.args)}
    _check_pickles(label, args)
    key = uuid.uuid4().hex
    work = math.inf if call.work is None else float(call.work)
    return Point("call", args, 1, 0, [(0, 1)], key, "ignore", label, work)
