"""Shards: a point's paths (replicas) cut into tasks, run on the workers, and merged.

The engine's draws are a pure function of (seed, global path index, step) and its statistics
are merged in a fixed tree over global ``config.BLOCK``-path blocks; the trainer keys each
replica's weights and batches by (seed, global replica index).  So the shards of a point run
anywhere and :meth:`SimulationResult.merge <sdeverify.result.SimulationResult.merge>` /
:meth:`TrainResult.merge <sdeverify.train.result.TrainResult.merge>` give **bitwise** the
result of one local run.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

from ..dispatch import in_task
from ..simulate import simulate
from ..threads import limited
from ..train.training import fit
from .clusters import task_threads
from .points import Point, PointError

if TYPE_CHECKING:
    from ..result import SimulationResult
    from ..train.result import TrainResult

__all__ = ["running_shard", "run_shard", "submit", "collect", "is_dask"]


@contextlib.contextmanager
def running_shard() -> Iterator[None]:
    """Within the block, this thread runs a shard: calls are not dispatched again
    (:func:`sdeverify.dispatch.in_task`) and kernels use at most :func:`task_threads`."""
    with in_task(), limited(task_threads()):
        yield


def run_shard(kind: str, args: dict, start: int, count: int) -> Any:
    """One shard of a point, run here (what a worker executes): ``count`` paths (``kind=
    "simulate"``) or replicas (``"fit"``) from global index ``start``, divergence ignored
    (the driver reports it on the merged result); for ``kind="call"`` (a
    :class:`~sdeverify.dispatch.Call`, one shard) ``args["fn"](*args["args"])``, with any
    ``simulate``/``fit`` call it makes run here too."""
    with running_shard():
        if kind == "call":
            return args["fn"](*args["args"])
        if kind == "simulate":
            return simulate(**args, paths=count, path_offset=start, on_divergence="ignore")
        return fit(**args, replicas=count, replica_offset=start, on_divergence="ignore")


def is_dask(ex: Any) -> bool:
    """``ex`` is a Dask client (it takes task keys and ``pure=``)."""
    return type(ex).__module__.startswith("distributed")


def submit(executor: Any, point: Point, session: Any = None) -> list:
    """Submit every shard of ``point`` to ``executor``; the futures, in shard order.  With a
    session (:class:`~sdeverify.distributed.Session`), a data set travels to a Dask cluster
    once per session, not once per task, and the session counts the tasks."""
    args = dict(point.args)
    if point.kind == "fit" and session is not None and hasattr(executor, "scatter"):
        cache = session._scattered
        fp = args["data"].fingerprint()
        if fp not in cache:
            cache[fp] = executor.scatter(args["data"], broadcast=True, hash=False)
        args["data"] = cache[fp]
    futures = []
    for start, count in point.shards:
        kw = {}
        if is_dask(executor):
            kw = dict(key=f"sdeverify-{point.stem}-{point.offset + start}-{count}", pure=False)
        futures.append(executor.submit(run_shard, point.kind, args, point.offset + start,
                                       count, **kw))
    if session is not None:
        session.tasks += len(futures)
    return futures


def collect(point: Point, futures: list) -> SimulationResult | TrainResult:
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
