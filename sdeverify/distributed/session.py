"""The active session: inside :func:`use`, every ``simulate``/``fit`` call goes to a cluster.

:func:`use` makes a :class:`Session` the active one in :mod:`sdeverify.dispatch` (the small
low-level module that ``simulate`` and ``fit`` read); this layer registers the functions that
run a call on it (:mod:`sdeverify.distributed`), so nothing below imports this package.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..dispatch import active, entered

__all__ = ["Session", "active", "use"]


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


@contextlib.contextmanager
def use(executor: Any, *, points_dir: str | os.PathLike | None = None, resume: bool = False,
        shard_paths: int | None = None, shard_replicas: int | None = None) -> Iterator[Session]:
    """Send every ``simulate``/``fit`` call made inside the block to ``executor``.

    Parameters
    ----------
    executor : a ``distributed.Client`` (or any object with ``submit`` whose futures have
        ``result()``, e.g. a ``concurrent.futures.ProcessPoolExecutor``).
    points_dir : folder where each finished point is saved (atomically, as it completes)
        under :func:`~sdeverify.distributed.point_key`; None saves nothing.
    resume : reuse the points already saved in ``points_dir`` instead of recomputing them
        (needs ``points_dir``; ``ValueError`` otherwise).
    shard_paths, shard_replicas : shard sizes (default:
        :func:`~sdeverify.distributed.plan_shards`).

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
    with entered(s):
        yield s
