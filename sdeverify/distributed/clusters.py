"""The cluster's lifetime: a Dask ``LocalCluster`` or a connection to a scheduler, started on
demand and closed on exit, and the thread caps of the processes it runs.

:class:`Cluster` / :func:`cluster` are what the CLI's ``--workers`` / ``--scheduler`` start;
:func:`n_workers` says how many worker threads an executor has (for cutting shards);
:func:`task_threads` caps the threads one shard may use on a worker.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

__all__ = ["MISSING_DASK", "CONNECT_TIMEOUT", "Cluster", "cluster", "n_workers", "task_threads",
           "dask"]

MISSING_DASK = ("sdeverify's distributed runs need Dask: pip install 'sdeverify[dist]' "
                "(or pip install 'dask[distributed]')")
#: seconds to wait for a ``--scheduler`` to answer
CONNECT_TIMEOUT: float = 10.0


def dask() -> Any:
    """The ``distributed`` package (Dask's), or an ImportError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(MISSING_DASK) from exc
    return distributed


def n_workers(executor: Any) -> int:
    """Worker threads behind ``executor``, a ``distributed.Client`` or a
    ``concurrent.futures`` pool (1 when it cannot say)."""
    try:
        return max(1, sum(executor.nthreads().values()))
    except Exception:
        return max(1, int(getattr(executor, "_max_workers", 1) or 1))


def task_threads() -> int:
    """Threads one shard may use in this process: Numba's pool, capped by
    ``NUMBA_NUM_THREADS`` *as the environment says now* and, on a Dask worker, by the
    worker's share of the cores (Numba's pool // the worker's task threads).

    The environment is read here, not at import: a ``LocalCluster``'s nanny sets
    ``NUMBA_NUM_THREADS=1`` for its worker, but the worker process has imported Numba
    (whose pool size is fixed at import) before that applies — without this cap a
    "1-thread" worker ran its shards on every core (measured: a 1-worker cluster used 1.7
    CPU-seconds per second)."""
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


class Cluster:
    """A ``distributed.Client`` started on demand: on a new ``LocalCluster`` of ``workers``
    processes with a nanny (one thread each; Numba and BLAS limited to one thread per worker
    so that N workers use N cores), or connected to the scheduler at ``scheduler``
    (``tcp://HOST:PORT``; its workers' threads are theirs to configure).  The arguments are
    checked at construction (ValueError naming the flag), Dask is imported and the cluster
    started by :meth:`start`; an unreachable scheduler is a ValueError."""

    def __init__(self, *, workers: int | None = None, scheduler: str | None = None):
        from ..validation import positive_int
        if (workers is None) == (scheduler is None):
            raise ValueError("give exactly one of --workers and --scheduler")
        if workers is not None:
            workers = positive_int("--workers", workers)
        elif not isinstance(scheduler, str) or not scheduler.strip() or " " in scheduler:
            raise ValueError(f"--scheduler must be an address like tcp://HOST:PORT, got {scheduler!r}")
        try:
            dask()
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
        dist = dask()
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
