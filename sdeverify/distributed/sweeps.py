"""Sweeps of points: every shard of every point submitted at once, each point merged (and saved
under its key) as soon as its shards are in, failures kept in place.

:func:`simulate` and :func:`fit` are one point; :func:`sweep` is many; :func:`run_points` does
the work for all three, with a :class:`~sdeverify.distributed.Session`'s ``points_dir`` (save
each finished point atomically under its key) and ``resume`` (reuse the saved points).
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from numpy.typing import ArrayLike

from ..result import SimulationResult
from ..simulate import report_divergence as report_simulation
from ..train.result import TrainResult
from ..train.training import report_divergence as report_training
from .clusters import dask, n_workers
from ..dispatch import Call
from .points import (MIN_TASK_WORK, Point, PointError, SmallWorkWarning, call_point, fit_point,
                     kept_here, simulate_point)
from .session import Session
from .shards import collect, is_dask, run_shard, submit

if TYPE_CHECKING:
    from ..problems.base import NGOS
    from ..train.datasets import Dataset

__all__ = ["run_points", "simulate", "fit", "sweep", "run_many"]


def _report(point: Point, res: SimulationResult | TrainResult) -> SimulationResult | TrainResult:
    """Apply the call's ``on_divergence`` on the driver, as the local call would (a
    :class:`~sdeverify.dispatch.Call` reports its own)."""
    if point.kind == "call":
        return res
    report = report_simulation if point.kind == "simulate" else report_training
    report(res, point.on_divergence, stacklevel=5)
    return res


def _load_point(session: Session, point: Point) -> SimulationResult | TrainResult | None:
    """The point saved under its key in the session's ``points_dir`` (with ``resume``), or
    None when there is none, it is unreadable or half-written, or it is another point."""
    if session.points_dir is None or not session.resume or point.kind == "call":
        return None
    path = session.points_dir / point.stem
    try:
        if point.kind == "simulate":
            res = SimulationResult.load(path)
            ok = res.paths == point.total and res.meta.get("path_offset") == point.offset
        else:
            res = TrainResult.load(path)
            ok = res.replicas == point.total and res.meta.get("replica_offset") == point.offset
    except Exception:            # missing, unreadable or half-written: compute it again
        return None
    return res if ok and res.meta.get("point_key") == point.key else None


def _save_point(session: Session, point: Point, res):
    """``res`` with its key in ``meta``, saved (atomically) in the session's ``points_dir``."""
    if session.points_dir is None or point.kind == "call":
        return res
    res = dataclasses.replace(res, meta=dict(res.meta, point_key=point.key))
    res.save(Path(session.points_dir) / point.stem)
    return res


def _target(executor: Any) -> tuple[Session | None, Any]:
    """(session, executor) for an explicit executor or a :class:`Session`."""
    if isinstance(executor, Session):
        return executor, executor.executor
    return None, executor


def run_points(points: Sequence[Point], executor: Any, *, raise_errors: bool = True,
               then: Sequence[Callable[[Any], Any] | None] | None = None) -> list:
    """Run points (computed, or reused from the session's ``points_dir``); returns their
    results in order, a :class:`PointError` in place of each failed one (or raises the
    first failure when ``raise_errors``).  Every shard of every point is submitted before
    any is awaited; each point is saved as soon as all its shards are in, and ``then[i]``
    (if given: a point's statistics) is applied to point i's result here as soon as it is
    in — while the cluster still runs the others — and returned in its place (an
    exception it raises is raised in order, after the points' own reports).  ``executor`` is
    a ``distributed.Client`` or a Session (whose ``points_dir`` is used, and whose
    ``local_below`` keeps points of less work here — up to a fair share of the batch,
    :func:`~sdeverify.distributed.kept_here` — run after the others are submitted, not
    saved)."""
    session, ex = _target(executor)
    out: list = [None] * len(points)
    post: dict = {}                 # i -> then[i](out[i]), or the exception it raised
    pending, here = {}, []

    def after(i: int) -> None:
        if then is None or then[i] is None or isinstance(out[i], PointError):
            return
        try:
            post[i] = then[i](out[i])
        except Exception as exc:    # raised in order at the end, as the local loop would
            post[i] = exc
    keep = set() if session is None else kept_here([p.work for p in points], session.local_below,
                                                   n_workers(ex))
    for i, p in enumerate(points):
        if i in keep:
            here.append(i)
            continue
        got = _load_point(session, p) if session is not None else None
        if got is not None:
            session.reused += 1
            out[i] = got
            after(i)
        else:
            pending[i] = submit(ex, p, session)
            if session is not None and p.work < MIN_TASK_WORK:
                session.small += 1
    for i in here:                  # while the cluster works on the others
        out[i] = _run_here(points[i])
        session.local += 1
        after(i)
    small = sum(points[i].work < MIN_TASK_WORK for i in pending)
    if session is None and small:   # in a session, use() says it once at the end
        warnings.warn(f"{small} of {len(points)} calls sent to the executor had less work than "
                      f"one minimal task ({MIN_TASK_WORK:.3g} path·step·optimizer·coordinate "
                      "units, about 0.4 s on one core): the cluster's overhead exceeds their "
                      "work; run them without an executor", SmallWorkWarning, stacklevel=3)

    def finish(i: int) -> None:
        try:
            res = collect(points[i], pending[i])
        except PointError as exc:
            out[i] = exc
            return
        if session is not None:
            if points[i].kind == "call":
                session.calls += 1
            else:
                session.computed += 1
            res = _save_point(session, points[i], res)
        out[i] = res
        for f in pending[i]:
            release = getattr(f, "release", None)
            if release is not None:
                release()
        after(i)

    if is_dask(ex) and len(pending) > 1:    # finish (and save) points as they complete
        where = {id(f): i for i, fs in pending.items() for f in fs}   # equal points share keys
        left = {i: len(fs) for i, fs in pending.items()}
        for f in dask().as_completed([f for fs in pending.values() for f in fs]):
            i = where[id(f)]
            left[i] -= 1
            if left[i] == 0:
                finish(i)
    else:
        for i in pending:
            finish(i)
    results = []
    for i, (p, r) in enumerate(zip(points, out)):
        if isinstance(r, PointError):
            if raise_errors:
                raise r.original()
            results.append(r)
            continue
        r = _report(p, r)
        if i in post:
            if isinstance(post[i], Exception):
                raise post[i]
            r = post[i]
        results.append(r)
    return results


def _run_here(point: Point) -> SimulationResult | TrainResult | PointError:
    """The whole point run in this process (one shard: bitwise the local call); a failure
    as a :class:`PointError`, as from the cluster."""
    try:
        return run_shard(point.kind, point.args, point.offset, point.total)
    except Exception as exc:
        return PointError(point.label, exc)


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
    executor : a ``distributed.Client`` or a Session (:class:`Session`, from
        :func:`~sdeverify.distributed.use`; its ``shard_paths`` and ``points_dir`` apply).
    shard_paths : paths per shard (rounded up to a multiple of ``config.BLOCK``); default
        :func:`~sdeverify.distributed.plan_shards`.
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


def fit(model: Any, data: Dataset, optimizers: Sequence[Any] | Any, *, executor: Any,
        shard_replicas: int | None = None, **kw: Any) -> TrainResult:
    """:func:`sdeverify.train.fit` with its replicas cut into shards that run on
    ``executor``, merged exactly (``progress`` is not called: shards run elsewhere).

    Parameters
    ----------
    model, data, optimizers : as for :func:`sdeverify.train.fit`.
    executor : a ``distributed.Client`` or a Session (:class:`Session`, from
        :func:`~sdeverify.distributed.use`; its ``shard_replicas`` and ``points_dir`` apply).
    shard_replicas : replicas per shard; default :func:`~sdeverify.distributed.plan_shards`.
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
    executor : a ``distributed.Client`` or a Session (:class:`Session`, from
        :func:`~sdeverify.distributed.use`; its shard sizes and ``points_dir`` apply).
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
    return run_many(calls, executor, raise_errors=raise_errors)


def run_many(items: Sequence[dict | Call], executor: Any, *, raise_errors: bool = True) -> list:
    """A check's whole sweep at once: ``simulate`` calls (keyword dicts, as for :func:`sweep`;
    ``kind="fit"`` for ``fit``) and per-point work (:class:`~sdeverify.dispatch.Call`: an
    exact reference, a statistic, a whole point), every task submitted before any is
    awaited, so that the workers run the check's own computations too, not only its
    simulations.  A ``Call`` is one task; its result is not saved in ``points_dir``.  A
    keyword dict may carry ``then``: a function of its result (the point's statistics),
    applied in this process as soon as the point is in, while the cluster runs the others,
    and returned in its place.

    Returns the results in the order of ``items`` (a :class:`PointError` in place of a
    failed one, or the first failure raised with ``raise_errors``)."""
    session, ex = _target(executor)
    w = n_workers(ex)
    points, then = [], []
    for c in items:
        if isinstance(c, Call):
            points.append(call_point(c))
            then.append(None)
            continue
        c = dict(c)
        then.append(c.pop("then", None))
        if c.pop("kind", "simulate") == "fit":
            c.setdefault("shard_replicas", session.shard_replicas if session else None)
            points.append(fit_point(c.pop("model"), c.pop("data"), c.pop("optimizers"), workers=w, **c))
        else:
            c.setdefault("shard_paths", session.shard_paths if session else None)
            points.append(simulate_point(c.pop("problem"), c.pop("optimizers"), c.pop("x0"),
                                         workers=w, **c))
    return run_points(points, executor, raise_errors=raise_errors,
                      then=then if any(f is not None for f in then) else None)

