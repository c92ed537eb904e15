"""Run :func:`sdeverify.simulate` and :func:`sdeverify.train.fit` on a Dask cluster.

The engine's draws are a pure function of (seed, global path index, step) and its
statistics are merged in a fixed tree over global 256-path blocks (``config.BLOCK``); the
trainer keys each replica's weights and batches by (seed, global replica index).  A run can
therefore be cut into shards of paths (replicas), the shards run anywhere, and
:meth:`SimulationResult.merge <sdeverify.result.SimulationResult.merge>` /
:meth:`TrainResult.merge <sdeverify.train.result.TrainResult.merge>` give **bitwise** the
result of one local run.  This module does the cutting, the submitting and the merging:

* ``simulate(..., executor=client)`` / ``fit(..., executor=client)``: one call ("point"),
  sharded over the workers of a ``distributed.Client`` (anything with ``submit`` whose
  futures have ``result()`` works, e.g. a ``concurrent.futures.ProcessPoolExecutor``);
* :func:`sweep`: many points submitted at once; a point whose task raises comes back as a
  :class:`PointError` (point and error named) and the other points still finish;
* :func:`use`: a context inside which *every* ``simulate``/``fit`` call is sent to the
  cluster, so that ``sdeverify check --workers N`` runs the checks' sweeps unchanged; with
  ``points_dir`` each finished point is saved atomically under a hash of everything that
  determines it (:func:`point_key`), and with ``resume=True`` saved points are reused
  instead of recomputed;
* :class:`Cluster` / :func:`cluster`: a ``LocalCluster`` (``workers=N``, one thread each) or
  a connection to a running scheduler (``scheduler="tcp://HOST:PORT"``), what the CLI's
  ``--workers`` / ``--scheduler`` start.

**What travels.**  A task carries a spec — the problem, the optimizers and the call's
arguments — never a closure.  Problems pickle with their ``numba.njit`` functions: Numba
pickles a dispatcher *by value* (its Python function, via cloudpickle), so functions
defined in a script or a notebook reach the workers too.  What must be importable on the
workers is what those functions and the problem's class refer to *by reference*: the
``sdeverify`` package (same version: :func:`point_key` includes it) and every module a
user function imports or calls into (``import mylib`` inside ``grad`` needs ``mylib`` on the
workers).  A spec that does not pickle is a ``ValueError`` naming the point before anything
is submitted; a worker that cannot unpickle it (a missing module) fails the point like any
task error: a :class:`PointError` in :func:`sweep`, the shard's own exception (with a note
naming the point) from ``simulate``/``fit``.

**Lost workers.**  A worker process that dies mid-task is replaced by its nanny and Dask
reruns its shards elsewhere (up to ``distributed.scheduler.allowed-failures`` times per
task); the merged result is the same bitwise.

**Compilation.**  Each worker process compiles (or loads from Numba's on-disk cache) a
kernel once and keeps it for its lifetime (``engine.cpu.get_kernel`` memoises by the
problem's functions; the unpickled dispatchers of one function are the same object in a
process, by Numba's uuid memo), so only a worker's first task of a new problem pays for it.

Dask is optional: ``pip install 'sdeverify[dist]'``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import pickle
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import config
from .problems.base import NGOS
from .result import SimulationResult
from .train.datasets import Dataset
from .train.models import MLP
from .train.result import TrainResult

__all__ = ["MIN_TASK_WORK", "SHARDS_PER_WORKER", "MISSING_DASK", "CONNECT_TIMEOUT", "PointError",
           "Session", "active", "use", "n_workers", "plan_shards", "source_digest", "point_key",
           "Point", "simulate_point", "fit_point", "run_shard", "task_threads", "run_points",
           "simulate", "fit", "sweep", "Cluster", "cluster"]

#: Default smallest task, in path·step·optimizer·coordinate units (~0.4 s on one core of
#: the benchmark machine at ~350 M units per CPU-second): a measured per-task scheduler
#: overhead of a few milliseconds (benchmarks/RESULTS.md, "Dask") stays ~1% of a task.
MIN_TASK_WORK: int = 2 ** 27
#: A point is cut into at most this many shards per worker (load balance vs overhead).
SHARDS_PER_WORKER: int = 4
MISSING_DASK = ("sdeverify's distributed runs need Dask: pip install 'sdeverify[dist]' "
                "(or pip install 'dask[distributed]')")

_SIM_DEFAULTS = dict(seed=0, record=None, observables=None, backend="cpu", store_states=False,
                     path_offset=0, on_divergence="warn", dtype="float64", divergence_bound=None)


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


def _dask():
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(MISSING_DASK) from exc
    return distributed


# ---- the active session (module-wide: the checks' threads and callees all see it) ----------
@dataclass
class Session:
    """Where ``simulate``/``fit`` calls go inside :func:`use`, and what happened to them."""
    executor: Any
    points_dir: Path | None = None
    resume: bool = False
    shard_paths: int | None = None
    shard_replicas: int | None = None
    computed: int = 0            # points computed on the cluster
    reused: int = 0              # points loaded from points_dir (resume)
    tasks: int = 0               # shard tasks submitted
    _scattered: dict = field(default_factory=dict)


_ACTIVE: list[Session] = []
_LOCAL = threading.local()       # set while a shard task runs: never re-dispatch from inside one


def active() -> Session | None:
    """The innermost :func:`use` session, or None (always None inside a shard task)."""
    if getattr(_LOCAL, "in_task", False) or not _ACTIVE:
        return None
    return _ACTIVE[-1]


@contextlib.contextmanager
def use(executor: Any, *, points_dir: str | os.PathLike | None = None, resume: bool = False,
        shard_paths: int | None = None, shard_replicas: int | None = None) -> Iterator[Session]:
    """Send every ``simulate``/``fit`` call made inside the block to ``executor``.

    Parameters
    ----------
    executor : a ``distributed.Client`` (or any object with ``submit`` whose futures have
        ``result()``, e.g. a ``concurrent.futures.ProcessPoolExecutor``).
    points_dir : folder where each finished point is saved (atomically, as it completes)
        under :func:`point_key`; None saves nothing.
    resume : reuse the points already saved in ``points_dir`` instead of recomputing them
        (needs ``points_dir``; ``ValueError`` otherwise).
    shard_paths, shard_replicas : shard sizes (default: :func:`plan_shards`).

    Yields
    ------
    Session
        The active session; its counters ``computed``, ``reused`` and ``tasks`` say what
        happened to the calls made inside the block.
    """
    if resume and points_dir is None:
        raise ValueError("resume=True needs a points_dir to resume from")
    s = Session(executor, None if points_dir is None else Path(points_dir), bool(resume),
                shard_paths, shard_replicas)
    _ACTIVE.append(s)
    try:
        yield s
    finally:
        _ACTIVE.remove(s)


# ---- shard planning -------------------------------------------------------------------------
def n_workers(executor: Any) -> int:
    """Worker threads behind ``executor``, a ``distributed.Client`` or a
    ``concurrent.futures`` pool (1 when it cannot say)."""
    try:
        return max(1, sum(executor.nthreads().values()))
    except Exception:
        return max(1, int(getattr(executor, "_max_workers", 1) or 1))


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


# ---- point specs and their keys ------------------------------------------------------------
def _hash_value(h, v, seen: set | None = None) -> None:
    """Feed a canonical encoding of ``v`` into ``h`` (arrays by content, numba functions by
    module, name and bytecode and the functions they call, objects by type and attributes);
    ValueError when unknown."""
    seen = set() if seen is None else seen
    if v is None or isinstance(v, (bool, int, float, str, complex)):
        h.update(repr((type(v).__name__, v)).encode())
    elif isinstance(v, (np.integer, np.floating, np.bool_)):
        h.update(repr((type(v).__name__, v.item())).encode())
    elif isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        h.update(repr(("ndarray", a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    elif isinstance(v, (list, tuple)):
        h.update(f"{type(v).__name__}[{len(v)}]".encode())
        for x in v:
            _hash_value(h, x, seen)
    elif isinstance(v, dict):
        h.update(f"dict[{len(v)}]".encode())
        for k in sorted(v, key=repr):
            _hash_value(h, k, seen)
            _hash_value(h, v[k], seen)
    elif hasattr(v, "py_func") or callable(v) and hasattr(v, "__code__"):
        _hash_function(h, v, seen)
    elif hasattr(v, "__dict__") or hasattr(v, "__dataclass_fields__"):
        if id(v) in seen:
            h.update(b"(seen)")
            return
        seen.add(id(v))
        h.update(f"object {type(v).__module__}.{type(v).__qualname__}".encode())
        attrs = dict(vars(v)) if hasattr(v, "__dict__") else {}
        for f in getattr(v, "__dataclass_fields__", {}):
            attrs[f] = getattr(v, f)
        _hash_value(h, attrs, seen)
    else:
        raise ValueError(f"cannot key a point on a value of type {type(v).__name__}")


def _hash_function(h, f, seen: set) -> None:
    """A function's fingerprint (bytecode, constants, closure) and, recursively, those of
    the functions it calls by global name (a helper's edit changes the key too)."""
    from .engine.cache import fingerprint as _fingerprint
    py = getattr(f, "py_func", f)
    h.update(("function " + _fingerprint(f)).encode())
    if id(py) in seen or not hasattr(py, "__code__"):
        return
    seen.add(id(py))
    names, stack = set(), [py.__code__]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack += [c for c in code.co_consts if hasattr(c, "co_names")]
    g = getattr(py, "__globals__", {})
    for name in sorted(names):
        callee = g.get(name)
        if callee is not None and (hasattr(callee, "py_func") or hasattr(callee, "__code__")):
            _hash_function(h, callee, seen)


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of every ``.py`` file of the installed sdeverify package: a point saved by
    other code (an edited engine, a new version) is never reused."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def point_key(kind: str, args: dict) -> str:
    """SHA-256 of everything that determines a point: ``kind`` ("simulate"/"fit"), every
    argument (problem with its parameters and functions, optimizers with their coefficient
    schedules, x0, steps, paths, seed, σ, record, observables, dtype, backend, path or
    replica offset, ...), the versions of sdeverify, NumPy, Numba, SciPy and Python and
    :func:`source_digest`.  A saved point is reused only under the same key, so a stale
    point is never reused."""
    from .result import versions
    h = hashlib.sha256()
    _hash_value(h, {"kind": kind, "args": {k: v for k, v in args.items()
                                            if k not in ("on_divergence", "progress")},
                    "versions": versions(), "source": source_digest()})
    return h.hexdigest()


@dataclass
class Point:
    """One ``simulate``/``fit`` call, validated, keyed and cut into shards."""
    kind: str
    args: dict                  # the call's arguments (without the total size / offset)
    total: int                  # paths or replicas
    offset: int                 # path_offset or replica_offset of the whole call
    shards: list
    key: str
    on_divergence: str
    label: str

    @property
    def stem(self) -> str:
        """File stem of the saved point and prefix of its task keys: ``KIND-<key[:32]>``."""
        return f"{self.kind}-{self.key[:32]}"


def simulate_point(problem: NGOS, optimizers: Sequence[Any] | Any, x0: ArrayLike, *,
                   steps: int, paths: int, sigma: float, shard_paths: int | None = None,
                   workers: int = 1, **kw: Any) -> Point:
    """Validate a ``simulate`` call (as the local call would) and describe it as a point."""
    from .engine.spec import make_spec
    unknown = set(kw) - set(_SIM_DEFAULTS)
    if unknown:
        raise TypeError(f"simulate() got unexpected arguments {sorted(unknown)}")
    a = dict(_SIM_DEFAULTS, **kw)
    _check_backend(a["backend"], a["dtype"])
    if a["on_divergence"] not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_divergence must be 'warn', 'raise' or 'ignore', got {a['on_divergence']!r}")
    spec = make_spec(problem, optimizers, x0, steps=steps, paths=paths, sigma=sigma,
                     seed=a["seed"], record=a["record"], observables=a["observables"],
                     store_states=a["store_states"], path_offset=a["path_offset"],
                     dtype=a["dtype"], divergence_bound=a["divergence_bound"])
    if shard_paths is not None:
        from .validation import positive_int
        positive_int("shard_paths", shard_paths)
    offset, policy = spec.path_offset, a.pop("on_divergence")
    a.pop("path_offset")
    args = dict(a, problem=problem, optimizers=optimizers, x0=x0, steps=steps, sigma=sigma)
    label = (f"simulate({problem.name}, {', '.join(spec.names)}, steps={spec.steps}, "
             f"paths={spec.paths}, sigma={spec.sigma:g}, seed={spec.seed})")
    _check_pickles(label, args)
    unit = spec.steps * len(spec.names) * problem.dim * spec.n_calls
    shards = plan_shards(spec.paths, unit, workers, block=config.BLOCK, size=shard_paths)
    key = point_key("simulate", dict(args, paths=spec.paths, path_offset=offset,
                                     fingerprint=spec.fingerprint(a["backend"])))
    return Point("simulate", args, spec.paths, offset, shards, key, policy, label)


def _check_backend(backend: str, dtype: str) -> None:
    """The backend exists (ValueError naming the registered ones) and runs ``dtype``."""
    from .engine import get_backend             # the backend registry
    dtypes = get_backend(backend).dtypes
    if dtype in ("float64", "float32") and dtype not in dtypes:
        raise ValueError(f"dtype={dtype!r} is not supported by backend={backend!r}, which runs "
                         f"in {' or '.join(dtypes)}")


def fit_point(model: MLP, data: Dataset, optimizers: Sequence[Any] | Any, *,
              shard_replicas: int | None = None, workers: int = 1, **kw: Any) -> Point:
    """Validate a ``fit`` call (as the local call would) and describe it as a point; a
    callable ``lr_schedule`` is evaluated here, so that the task carries an array."""
    import inspect
    from .train import training as fit_mod
    params = inspect.signature(fit_mod.fit).parameters
    unknown = set(kw) - set(params)
    if unknown:
        raise TypeError(f"fit() got unexpected arguments {sorted(unknown)}")
    a = {k: p.default for k, p in params.items()
         if p.default is not inspect.Parameter.empty}
    a.update(kw)
    a.pop("progress", None)
    if "batch_size" not in kw:
        raise TypeError("fit() missing required keyword argument 'batch_size'")
    spec = fit_mod._validate(model, data, optimizers, a["batch_size"], a["steps"], a["epochs"],
                             a["replicas"], a["seed"], a["svag"], a["sampling"], a["metrics"],
                             a["eval_samples"], a["sharpness_samples"], a["sharpness_iters"],
                             a["backend"], a["dtype"], a["replica_offset"], a["on_divergence"])
    if callable(a["lr_schedule"]):
        a["lr_schedule"] = np.asarray(a["lr_schedule"](spec["steps"]), dtype=np.float64)
    if shard_replicas is not None:
        from .validation import positive_int
        positive_int("shard_replicas", shard_replicas)
    total, offset, policy = int(a.pop("replicas")), int(a.pop("replica_offset")), a.pop("on_divergence")
    args = dict(a, model=model, data=data, optimizers=optimizers)
    label = (f"fit({model.describe()}, {data.name}, "
             f"{', '.join(o.name for o in spec['optimizers'])}, batch_size={a['batch_size']}, "
             f"steps={spec['steps']}, replicas={total}, seed={a['seed']})")
    _check_pickles(label, {k: v for k, v in args.items() if k != "data"})
    unit = spec["steps"] * spec["svag"] * a["batch_size"] * model.n_params * len(spec["optimizers"]) / 64
    shards = plan_shards(total, unit, workers, size=shard_replicas)
    key = point_key("fit", dict(args, replicas=total, replica_offset=offset,
                                data=data.fingerprint()))
    return Point("fit", args, total, offset, shards, key, policy, label)


# ---- tasks (run on the workers) -------------------------------------------------------------
@contextlib.contextmanager
def _in_task():
    prev = getattr(_LOCAL, "in_task", False)
    _LOCAL.in_task = True
    from .threads import limited
    try:
        with limited(task_threads()):
            yield
    finally:
        _LOCAL.in_task = prev


def task_threads() -> int:
    """Threads one shard may use in this process: Numba's pool, capped by
    ``NUMBA_NUM_THREADS`` *as the environment says now* and, on a Dask worker, by the
    worker's share of the cores (Numba's pool // the worker's task threads).

    The environment is read here, not at import: a ``LocalCluster``'s nanny sets
    ``NUMBA_NUM_THREADS=1`` for its worker, but the worker process has imported Numba
    (whose pool size is fixed at import) before that applies — without this cap a
    "1-thread" worker ran its shards on every core (a 1-worker cluster
    used 1.7 CPU-seconds per second)."""
    import numba
    cap = int(numba.config.NUMBA_NUM_THREADS)
    env = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        cap = min(cap, int(env))
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:
        nthreads = int(getattr(getattr(worker, "state", worker), "nthreads", 1) or 1)
        cap = min(cap, max(1, int(numba.config.NUMBA_NUM_THREADS) // nthreads))
    return max(1, cap)


def run_shard(kind: str, args: dict, start: int, count: int) -> SimulationResult | TrainResult:
    """One shard of a point, run here (what a worker executes): ``count`` paths (``kind=
    "simulate"``) or replicas (``"fit"``) from global index ``start``, divergence ignored
    (the driver reports it on the merged result)."""
    with _in_task():
        if kind == "simulate":
            from .simulate import simulate
            return simulate(**args, paths=count, path_offset=start, on_divergence="ignore")
        from .train.training import fit
        return fit(**args, replicas=count, replica_offset=start, on_divergence="ignore")


def _submit(session_or_executor, point: Point) -> list:
    ex = getattr(session_or_executor, "executor", session_or_executor)
    args = dict(point.args)
    if point.kind == "fit" and hasattr(ex, "scatter") and isinstance(session_or_executor, Session):
        # a data set travels once per session, not once per task
        cache = session_or_executor._scattered
        fp = args["data"].fingerprint()
        if fp not in cache:
            cache[fp] = ex.scatter(args["data"], broadcast=True, hash=False)
        args["data"] = cache[fp]
    futures = []
    for start, count in point.shards:
        kw = {}
        if _is_dask(ex):
            kw = dict(key=f"sdeverify-{point.stem}-{point.offset + start}-{count}", pure=False)
        futures.append(ex.submit(run_shard, point.kind, args, point.offset + start, count, **kw))
    if isinstance(session_or_executor, Session):
        session_or_executor.tasks += len(futures)
    return futures


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


def _is_dask(ex) -> bool:
    return type(ex).__module__.startswith("distributed")


def _is_future(v) -> bool:
    return type(v).__module__.startswith("distributed") and hasattr(v, "key")


def _collect(point: Point, futures: list):
    """Wait for every shard, then merge; a failed shard is a :class:`PointError` (raised
    after all shards of the point have finished)."""
    parts, errors = [], []
    for (start, count), f in zip(point.shards, futures):
        try:
            parts.append(f.result())
        except Exception as exc:
            errors.append((start, count, exc))
    if errors:
        start, count, exc = errors[0]
        what = "paths" if point.kind == "simulate" else "replicas"
        a, b = point.offset + start, point.offset + start + count
        raise PointError(f"{point.label} [{what} {a}..{b}"
                         + (f", and {len(errors) - 1} more shards" if len(errors) > 1 else "")
                         + "]", exc) from exc
    return parts[0].merge(*parts[1:]) if len(parts) > 1 else parts[0]


def _report(point: Point, res):
    """Apply the call's ``on_divergence`` on the driver, as the local call would."""
    if point.kind == "simulate":
        from .simulate import report_divergence
    else:
        from .train.training import report_divergence
    report_divergence(res, point.on_divergence, stacklevel=5)
    return res


# ---- saved points ---------------------------------------------------------------------------
def _load_point(session: Session, point: Point):
    if session.points_dir is None or not session.resume:
        return None
    path = session.points_dir / point.stem
    try:
        if point.kind == "simulate":
            from .result import SimulationResult
            if not path.with_suffix(".json").exists():
                return None
            res = SimulationResult.load(path)
            ok = res.paths == point.total and res.meta.get("path_offset") == point.offset
        else:
            from .train.result import TrainResult
            if not path.with_suffix(".npz").exists():
                return None
            res = TrainResult.load(path)
            ok = res.replicas == point.total and res.meta.get("replica_offset") == point.offset
    except Exception:            # unreadable or half-written: compute it again
        return None
    return res if ok and res.meta.get("point_key") == point.key else None


def _save_point(session: Session, point: Point, res):
    if session.points_dir is None:
        return res
    res = _with_key(res, point.key)
    res.save(session.points_dir / point.stem)      # atomic (save_pair / atomic_write_npz)
    return res


def _with_key(res, key: str):
    import dataclasses
    return dataclasses.replace(res, meta=dict(res.meta, point_key=key))


# ---- public entry points --------------------------------------------------------------------
def _target(executor):
    """(session, executor) for an explicit executor or a :class:`Session`."""
    if isinstance(executor, Session):
        return executor, executor.executor
    return None, executor


def run_points(points: Sequence[Point], executor: Any, *, raise_errors: bool = True) -> list:
    """Run points (computed, or reused from the session's ``points_dir``); returns their
    results in order, a :class:`PointError` in place of each failed one (or raises the
    first failure when ``raise_errors``).  Every shard of every point is submitted before
    any is awaited; each point is saved as soon as all its shards are in.  ``executor`` is
    a ``distributed.Client`` or a Session (whose ``points_dir`` is used)."""
    session, ex = _target(executor)
    out: list = [None] * len(points)
    pending = {}
    for i, p in enumerate(points):
        got = _load_point(session, p) if session is not None else None
        if got is not None:
            session.reused += 1
            out[i] = got
        else:
            pending[i] = _submit(executor, p)

    def finish(i: int) -> None:
        try:
            res = _collect(points[i], pending[i])
        except PointError as exc:
            out[i] = exc
            return
        if session is not None:
            session.computed += 1
            res = _save_point(session, points[i], res)
        out[i] = res
        for f in pending[i]:
            release = getattr(f, "release", None)
            if release is not None:
                release()

    if _is_dask(ex) and len(pending) > 1:    # finish (and save) points as they complete
        dist = _dask()
        where = {id(f): i for i, fs in pending.items() for f in fs}   # equal points share keys
        left = {i: len(fs) for i, fs in pending.items()}
        for f in dist.as_completed([f for fs in pending.values() for f in fs]):
            i = where[id(f)]
            left[i] -= 1
            if left[i] == 0:
                finish(i)
    else:
        for i in pending:
            finish(i)
    results = []
    for p, r in zip(points, out):
        if isinstance(r, PointError):
            if raise_errors:
                raise r.original()
            results.append(r)
        else:
            results.append(_report(p, r))
    return results


def simulate(problem: NGOS, optimizers: Sequence[Any] | Any, x0: ArrayLike, *, executor: Any,
             shard_paths: int | None = None, **kw: Any) -> SimulationResult:
    """:func:`sdeverify.simulate` with its paths cut into shards that run on ``executor``,
    merged into bitwise the result of the local call (statistics, final states, divergence
    steps; ``meta["wall_time"]`` is the sum of the shards').  A failed shard raises its own
    exception, as the local call would (e.g. :class:`~sdeverify.observables.UserFunctionError`;
    a worker lost too often: Dask's ``KilledWorker``), with a note naming the point.

    Parameters
    ----------
    problem, optimizers, x0 : as for :func:`sdeverify.simulate`.
    executor : a ``distributed.Client`` or a Session (:class:`Session`, from :func:`use`;
        its ``shard_paths`` and ``points_dir`` apply).
    shard_paths : paths per shard (rounded up to a multiple of ``config.BLOCK``); default
        :func:`plan_shards`.
    **kw : the other keyword arguments of :func:`sdeverify.simulate` (``steps``, ``paths``,
        ``sigma``, ``seed``, ``record``, ...); an unknown one is a ``TypeError``.

    Returns
    -------
    SimulationResult
        The merged result, bitwise that of ``sdeverify.simulate(..., executor=None)``.
    """
    session, ex = _target(executor)
    if session is not None and shard_paths is None:
        shard_paths = session.shard_paths
    p = simulate_point(problem, optimizers, x0, shard_paths=shard_paths, workers=n_workers(ex), **kw)
    return run_points([p], executor)[0]


def fit(model: MLP, data: Dataset, optimizers: Sequence[Any] | Any, *, executor: Any,
        shard_replicas: int | None = None, **kw: Any) -> TrainResult:
    """:func:`sdeverify.train.fit` with its replicas cut into shards that run on
    ``executor``, merged exactly (``progress`` is not called: shards run elsewhere).

    Parameters
    ----------
    model, data, optimizers : as for :func:`sdeverify.train.fit`.
    executor : a ``distributed.Client`` or a Session (:class:`Session`, from :func:`use`;
        its ``shard_replicas`` and ``points_dir`` apply).
    shard_replicas : replicas per shard; default :func:`plan_shards`.
    **kw : the other keyword arguments of :func:`sdeverify.train.fit` (``batch_size`` is
        required); an unknown one is a ``TypeError``.

    Returns
    -------
    TrainResult
        The merged result, the same as that of ``sdeverify.train.fit(..., executor=None)``.
    """
    session, ex = _target(executor)
    if session is not None and shard_replicas is None:
        shard_replicas = session.shard_replicas
    p = fit_point(model, data, optimizers, shard_replicas=shard_replicas, workers=n_workers(ex), **kw)
    return run_points([p], executor)[0]


def sweep(calls: Sequence[dict], executor: Any, *, raise_errors: bool = False) -> list:
    """Run many ``simulate`` calls at once: ``calls`` are keyword dicts of
    :func:`sdeverify.simulate` (``problem``, ``optimizers``, ``x0``, ``steps``, ...; add
    ``kind="fit"`` and ``model``/``data`` for :func:`sdeverify.train.fit`).  All shards are
    submitted before any is awaited.

    Parameters
    ----------
    calls : one keyword dict per point, as above (``shard_paths`` / ``shard_replicas`` may
        be given per call).
    executor : a ``distributed.Client`` or a Session (:class:`Session`, from :func:`use`;
        its shard sizes and ``points_dir`` apply).
    raise_errors : raise the first failed point's own exception instead of returning a
        :class:`PointError` in its place.

    Returns
    -------
    list
        The results (:class:`~sdeverify.result.SimulationResult` /
        :class:`~sdeverify.train.TrainResult`) in the order of ``calls``; a failed point is
        a :class:`PointError` in its place (the others still finish) unless
        ``raise_errors``.
    """
    session, ex = _target(executor)
    w = n_workers(ex)
    points = []
    for c in calls:
        c = dict(c)
        if c.pop("kind", "simulate") == "fit":
            c.setdefault("shard_replicas", session.shard_replicas if session else None)
            points.append(fit_point(c.pop("model"), c.pop("data"), c.pop("optimizers"), workers=w, **c))
        else:
            c.setdefault("shard_paths", session.shard_paths if session else None)
            points.append(simulate_point(c.pop("problem"), c.pop("optimizers"), c.pop("x0"),
                                         workers=w, **c))
    return run_points(points, executor, raise_errors=raise_errors)


# ---- clusters -------------------------------------------------------------------------------
#: seconds to wait for a ``--scheduler`` to answer
CONNECT_TIMEOUT: float = 10.0


class Cluster:
    """A ``distributed.Client`` started on demand: on a new ``LocalCluster`` of ``workers``
    processes with a nanny (one thread each; Numba and BLAS limited to one thread per worker
    so that N workers use N cores), or connected to the scheduler at ``scheduler``
    (``tcp://HOST:PORT``; its workers' threads are theirs to configure).  The arguments are
    checked at construction (ValueError naming the flag), Dask is imported and the cluster
    started by :meth:`start`; an unreachable scheduler is a ValueError."""

    def __init__(self, *, workers: int | None = None, scheduler: str | None = None):
        from .validation import positive_int
        if (workers is None) == (scheduler is None):
            raise ValueError("give exactly one of --workers and --scheduler")
        if workers is not None:
            workers = positive_int("--workers", workers)
        elif not isinstance(scheduler, str) or not scheduler.strip() or " " in scheduler:
            raise ValueError(f"--scheduler must be an address like tcp://HOST:PORT, got {scheduler!r}")
        try:
            _dask()
        except ImportError as exc:
            raise ValueError(str(exc)) from None
        self.workers, self.scheduler = workers, scheduler
        self.client = None
        self._stack = contextlib.ExitStack()

    def start(self) -> Any:
        """The ``distributed.Client`` (started, with its cluster, on the first call)."""
        if self.client is not None:
            return self.client
        import logging
        dist = _dask()
        if self.workers is not None:
            one = {v: "1" for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                    "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
            lc = self._stack.enter_context(dist.LocalCluster(
                n_workers=self.workers, threads_per_worker=1, processes=True,
                dashboard_address=":0", silence_logs=logging.ERROR, worker_class=dist.Nanny,
                env=one))
            self.client = self._stack.enter_context(dist.Client(lc))
            return self.client
        try:
            client = dist.Client(self.scheduler, timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            raise ValueError(f"--scheduler {self.scheduler}: cannot connect "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        self.client = self._stack.enter_context(client)
        return self.client

    def describe(self) -> str:
        """What the cluster is, in words (for the CLI's report)."""
        if self.workers is not None:
            return f"a local Dask cluster of {self.workers} worker processes (1 thread each)"
        return f"the Dask scheduler at {self.scheduler} ({n_workers(self.client)} workers)"

    def close(self) -> None:
        """Close the client and, for a local cluster, shut its workers down."""
        self._stack.close()
        self.client = None

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def cluster(*, workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """``with cluster(workers=2) as client:`` — a started :class:`Cluster`'s client (a
    ``distributed.Client``), closed on leaving the block."""
    with Cluster(workers=workers, scheduler=scheduler) as c:
        yield c.start()
