"""The active session: inside :func:`use`, every ``simulate``/``fit`` call goes to a cluster.

:func:`use` makes a :class:`Session` the active one in :mod:`sdeverify.dispatch` (the small
low-level module that ``simulate`` and ``fit`` read); this layer registers the functions that
run a call on it (:mod:`sdeverify.distributed`), so nothing below imports this package.
"""
from __future__ import annotations

import contextlib
import os
import warnings
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
    local_below: float = 0.0     # points of less work run in this process (LOCAL_WORK)
    label: str | None = None     # names the session's calls in its warnings (e.g. a check)
    computed: int = 0            # simulate/fit points computed on the cluster
    calls: int = 0               # per-point work (dispatch.Call) run on the cluster
    reused: int = 0              # points loaded from points_dir (resume)
    tasks: int = 0               # shard tasks submitted
    local: int = 0               # points run in this process (work < local_below)
    small: int = 0               # points sent to the cluster with work < MIN_TASK_WORK
    _scattered: dict = field(default_factory=dict)

    def counts(self) -> dict:
        """What happened to the session's calls: ``computed``, ``calls``, ``reused``,
        ``tasks``, ``local`` and ``small`` (the counters above), as a plain dict."""
        return {k: getattr(self, k) for k in ("computed", "calls", "reused", "tasks", "local", "small")}


@contextlib.contextmanager
def use(executor: Any, *, points_dir: str | os.PathLike | None = None, resume: bool = False,
        shard_paths: int | None = None, shard_replicas: int | None = None,
        local_below: float = 0, this_thread: bool = False,
        label: str | None = None) -> Iterator[Session]:
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
    local_below : a call of less work than this (path·step·optimizer·coordinate units,
        :data:`~sdeverify.distributed.LOCAL_WORK` for the CLI) runs in this process, not on
        the cluster (bitwise the same result; not saved in ``points_dir``), as long as the
        calls kept here stay within a fair share of their sweep
        (:func:`~sdeverify.distributed.kept_here`); 0: every call goes to the cluster.  On leaving the block, a
        :class:`~sdeverify.distributed.SmallWorkWarning` says how many calls ran here, or
        how many were sent though smaller than one minimal task
        (:data:`~sdeverify.distributed.MIN_TASK_WORK`).
    this_thread : the session holds for the calling thread only (default: for every thread
        without a session of its own) — so that several threads of one process can each run
        their calls in their own session, side by side on one executor, as ``sdeverify
        check --workers N`` runs its checks.
    label : prefixes the session's warnings (``check --workers N`` passes the check's name,
        so that warnings of checks running side by side say whose they are).

    Yields
    ------
    Session
        The active session; its counters ``computed``, ``calls`` (per-point work,
        :class:`~sdeverify.dispatch.Call`), ``reused``, ``tasks``, ``local`` and ``small``
        say what happened to the calls made inside the block.
    """
    if resume and points_dir is None:
        raise ValueError("resume=True needs a points_dir to resume from")
    if not local_below >= 0:
        raise ValueError(f"local_below must be >= 0 (work units; 0: no local fallback), "
                         f"got {local_below!r}")
    s = Session(executor, None if points_dir is None else Path(points_dir), bool(resume),
                shard_paths, shard_replicas, float(local_below), label)
    with entered(s, this_thread):
        yield s
    _warn_small(s)


def _warn_small(s: Session) -> None:
    """The session's :class:`~sdeverify.distributed.SmallWorkWarning`, if any call was small."""
    from .points import MIN_TASK_WORK, SmallWorkWarning
    n = s.local + s.computed + s.reused + s.calls
    who = f"{s.label}: " if s.label else ""
    if s.local:
        warnings.warn(
            f"{who}{s.local} of {n} calls had less work than {s.local_below:.3g} "
            f"path·step·optimizer·coordinate units (about {s.local_below / 3.5e8:.1g} s of "
            "simulation on one core), too little to pay for the cluster: they ran in this "
            "process (bitwise the same results)", SmallWorkWarning, stacklevel=4)
    if s.small:
        advice = ("the driver keeps small calls only up to one worker's share of their sweep, "
                  "so these went to the cluster" if s.local_below > 0 else
                  "the cluster's overhead may exceed their work; run them locally or use "
                  "local_below=sdeverify.distributed.LOCAL_WORK")
        warnings.warn(
            f"{who}{s.small} of {n} calls sent to the cluster had less work than one minimal task "
            f"({MIN_TASK_WORK:.3g} units, about {MIN_TASK_WORK / 3.5e8:.1g} s of simulation on "
            f"one core; a trained network's unit takes longer): {advice}", SmallWorkWarning,
            stacklevel=4)
