"""Where a ``simulate`` / ``fit`` call runs: here, or on an executor handed down to it.

Data flows down: the caller hands an executor to :func:`sdeverify.simulate` /
:func:`sdeverify.train.fit` (``executor=client``), or sets one for a block of code with
:func:`sdeverify.distributed.use` (what ``sdeverify check --workers N`` does around each
check).  This module holds that state and nothing else — it imports nothing of the package —
so the orchestration layer reads it without importing the layer above it:

* :func:`active` is the innermost session set by ``distributed.use`` — the calling thread's
  own if it entered one with ``this_thread=True`` (how ``check --workers N`` runs checks side
  by side, one thread and one session each), else the module-wide stack's (so that every
  thread of a check sees it) — or None; always None while a shard of a distributed run
  executes here (:func:`in_task`), so a shard never re-dispatches itself;
* :func:`register` is how the distributed layer (:mod:`sdeverify.distributed`, imported with
  the package) installs the function that runs each kind of call ("simulate", "fit") on an
  executor; :func:`run` calls it;
* :class:`Call` is a check's per-point work (an exact reference, a statistic, a whole point
  with its ``simulate`` call) as a function and its arguments, which a session runs as a
  task (:func:`sdeverify.experiments.base.run_many`) and which runs here otherwise.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

__all__ = ["register", "run", "active", "entered", "in_task", "Call"]

_RUNNERS: dict[str, Callable[..., Any]] = {}
_SESSIONS: list = []            # module-wide: the checks' threads and callees all see it
_LOCAL = threading.local()      # in_task: set while a shard runs here; sessions: this thread's


@dataclass(frozen=True)
class Call:
    """A check's per-point work: ``fn(*args)`` — an exact reference, a statistic, a
    bootstrap, or a whole point (a ``simulate`` call and what is computed from it).  In a
    distributed session it runs as one task on a worker, and a ``simulate``/``fit`` call made
    inside it runs there too (:func:`in_task`); otherwise here.  ``fn`` must pickle (a
    module-level or ``numba.njit`` function) and so must its arguments and result.
    ``work`` is its cost in path·step·optimizer·coordinate units (those of
    ``sdeverify.distributed.MIN_TASK_WORK``; the local fallback
    ``sdeverify.distributed.LOCAL_WORK`` compares it), None when unknown (always sent);
    ``label`` names it in errors (default: the function's name)."""
    fn: Callable[..., Any]
    args: tuple = ()
    work: float | None = None
    label: str | None = None

    def __call__(self) -> Any:
        """Run it here: ``fn(*args)``."""
        return self.fn(*self.args)


def register(kind: str, runner: Callable[..., Any]) -> None:
    """Run calls of ``kind`` ("simulate", "fit") given an executor with ``runner(*args,
    executor=..., **kwargs)``."""
    _RUNNERS[kind] = runner


def run(kind: str, executor: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a ``kind`` call on ``executor`` (a ``distributed.Client``, a pool, or a session of
    :func:`sdeverify.distributed.use`) with the registered runner."""
    runner = _RUNNERS.get(kind)
    if runner is None:
        raise ValueError(f"executor= needs the distributed layer, which registers no {kind!r} "
                         "runner here: import sdeverify.distributed (pip install "
                         "'sdeverify[dist]' for Dask)")
    return runner(*args, executor=executor, **kwargs)


def active() -> Any | None:
    """The innermost session of :func:`sdeverify.distributed.use`, or None (always None
    while a shard task runs here)."""
    if getattr(_LOCAL, "in_task", False):
        return None
    own = getattr(_LOCAL, "sessions", None)
    if own:
        return own[-1]
    return _SESSIONS[-1] if _SESSIONS else None


@contextlib.contextmanager
def entered(session: Any, this_thread: bool = False) -> Iterator[Any]:
    """Make ``session`` the :func:`active` one within the block: for every thread that has
    no session of its own, or, with ``this_thread``, for the calling thread only (taking
    precedence over the module-wide ones there)."""
    if this_thread:
        if getattr(_LOCAL, "sessions", None) is None:
            _LOCAL.sessions = []
        stack = _LOCAL.sessions
    else:
        stack = _SESSIONS
    stack.append(session)
    try:
        yield session
    finally:
        stack.remove(session)


@contextlib.contextmanager
def in_task() -> Iterator[None]:
    """Within the block, this thread runs a shard: :func:`active` is None for it."""
    prev = getattr(_LOCAL, "in_task", False)
    _LOCAL.in_task = True
    try:
        yield
    finally:
        _LOCAL.in_task = prev
