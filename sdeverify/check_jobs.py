"""Run the checks of ``sdeverify check`` in parallel worker processes on this machine.

A newcomer's first ``check`` spends most of its time compiling kernels (one per problem,
single-threaded in Numba), so on a machine with idle cores the checks themselves run side by
side: ``check --jobs N`` hands whole checks to N worker processes (the standard library's
process pool, started with ``spawn``), each holding ``cores // N`` Numba and BLAS threads, and the
disk cache shares what one worker compiled with the others.  Every check has its own seeds
and the engines give bitwise the same numbers for any thread count, so the verdicts are
those of the serial run, whatever the order in which the checks finish.  (Across machines,
``--workers`` / ``--scheduler`` spread each check's simulations over a Dask cluster instead.)

A check that raises is a failed check with its error, as in the serial run; a worker process
that dies (killed, out of memory) fails the checks that had not finished with that reason,
never silently.  A worker whose parent dies (``sdeverify check`` killed, even by SIGKILL)
exits within :data:`PARENT_POLL_S` seconds instead of waiting on its pipe forever
(:func:`watch_parent`).

What a worker runs is handed down by the caller (:func:`sdeverify.runner.run_in_worker` for
``check``): this module is the pool, and imports nothing of the package.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

__all__ = ["PARENT_POLL_S", "default_jobs", "describe", "longest_first", "run_checks",
           "side_by_side", "watch_parent"]

#: how often (seconds) a worker checks that the process that started it is alive
PARENT_POLL_S: float = 0.5


def default_jobs(n_checks: int) -> int:
    """Worker processes by default: the machine's cores (at most 4, at most one per check)."""
    return max(1, min(os.cpu_count() or 1, 4, n_checks))


#: thread-count variables a worker process reads when it loads Numba and the BLAS libraries
THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def _child_threads(threads: int):
    """Within the block, processes started from here see ``threads`` in every variable of
    :data:`THREAD_VARS` (read once, at import, by Numba and OpenBLAS: an OpenBLAS of its own
    per worker, spinning on every core, slowed a trained-network check fivefold here)."""
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: str(threads) for v in THREAD_VARS})
    try:
        yield
    finally:
        for v, val in saved.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


def _die_with_parent() -> bool:
    """Linux: ask the kernel to SIGKILL this process when the thread that started it exits
    (``prctl(PR_SET_PDEATHSIG)``, through ctypes) — immediate, even while a compiled kernel
    holds the GIL.  False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0      # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def watch_parent(parent: int, poll: float = PARENT_POLL_S) -> None:
    """In a worker process: end this process as soon as ``parent`` (the pid of the process
    that started it) dies.  Run as the pool's initializer, so that a killed ``check`` (even by
    SIGKILL) leaves no worker behind: a worker would otherwise block forever on its task
    pipe, whose write end it holds itself.  On Linux the kernel kills the worker with its
    parent (:func:`_die_with_parent`); everywhere, a daemon thread checks every ``poll``
    seconds that the worker has not been re-parented and exits (status 1) if it has."""
    _die_with_parent()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        try:
            print(f"sdeverify: check worker {os.getpid()}: its parent process {parent} died; "
                  "exiting", file=sys.stderr, flush=True)
        except (OSError, ValueError):       # nobody reads stderr any more
            pass
        os._exit(1)
    if os.getppid() != parent:              # already orphaned before the watch started
        os._exit(1)
    threading.Thread(target=watch, name="sdeverify-parent-watch", daemon=True).start()


#: submission order, longest first (the classic rule for balancing a few workers): rough
#: cold ``--quick`` wall times in seconds, from this machine's first ``--jobs 2`` runs of
#: 2026-11-30 (loaded); the two trained-network checks from a ``--jobs 2`` run of 2026-12-04
#: after their protocol (tuned lrs, two budgets) made them the longest (loaded: 139 s and
#: 81 s); a check not listed here (e.g. a user's) is submitted first.  Only the order of the
#: work depends on it, never a result.
COLD_QUICK_SECONDS = {"train_batch_size": 139, "train_svag": 81, "slow_sde": 74,
                      "batch_size": 67, "svag": 53, "instruments": 40,
                      "weak_approximation": 40, "label_noise": 33, "train_engine": 30,
                      "hb_equivalence": 24, "variance_reduction": 12, "descent_lemma": 9,
                      "sde_limit": 6}
#: the same for ``--full`` (one worker of a local Dask cluster, quiet, 2026-12-05:
#: ``benchmarks/results/dask_scaling_model_whole_full.json``, ``serial_s``) — the order in
#: which ``check --full --workers N`` starts its checks side by side
FULL_SECONDS = {"train_svag": 322, "weak_worst_case_mc": 143, "svag": 142, "batch_size": 130,
                "train_batch_size": 118, "slow_sde": 50, "weak_approximation": 48,
                "slow_sde_alpha": 27, "instruments": 26, "sde_limit": 19, "weak_worst_case": 13,
                "frozen_momentum": 11, "label_noise": 9, "variance_reduction": 6,
                "hb_equivalence": 5, "descent_lemma": 3, "sgdm_descent_lemma": 3}


def longest_first(names: list[str], size: str) -> list[int]:
    """Indices of ``names`` in the order to start them: longest first by the table of their
    size (:data:`FULL_SECONDS` for full, else :data:`COLD_QUICK_SECONDS`); a check not listed
    (e.g. a user's) first.  Only the order of the work depends on it, never a result."""
    table = FULL_SECONDS if size == "full" else COLD_QUICK_SECONDS
    return sorted(range(len(names)), key=lambda i: -table.get(names[i], 1e9))


def run_checks(names: list[str], size: str, seed: int, out: Path, jobs: int, backend: str,
               on_done: Callable[[int, dict], None],
               work: Callable[[str, str, int, str, str], dict]) -> None:
    """Run ``work(name, size, seed, out, backend)`` for each of ``names`` on ``jobs`` worker
    processes (``work`` a module-level function, e.g. :func:`sdeverify.runner.run_in_worker`,
    returning the check's summary entry); ``on_done(i, entry)`` is called in this process as
    each finishes (``i`` its index in ``names``), with ``work``'s entry, or ``{"name",
    "passed": False, "error"}`` for a check that raised or whose worker died."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                               initializer=watch_parent, initargs=(os.getpid(),))
    try:
        with _child_threads(threads):      # the workers start during the submissions
            order = longest_first(names, size)
            pending = {pool.submit(work, names[i], size, seed, str(out), backend): i for i in order}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                i = pending.pop(f)
                exc = f.exception()
                if exc is None:
                    on_done(i, f.result())
                    continue
                why = ("its worker process died (killed or out of memory)"
                       if isinstance(exc, BrokenProcessPool) else f"{type(exc).__name__}: {exc}")
                on_done(i, {"name": names[i], "passed": False, "error": why})
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def describe(jobs: int) -> str:
    """One line for the log: how the checks are spread."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return f"{jobs} worker processes, {threads} thread{'s' if threads > 1 else ''} each"


def side_by_side(names: list[str], size: str, at_once: int,
                 on_done: Callable[[int, dict], None], work: Callable[[str], dict]) -> None:
    """Run ``work(name)`` for each of ``names`` in threads of this process, at most
    ``at_once`` at a time, started longest first (:func:`longest_first`): how ``check
    --workers N`` runs its checks on one cluster, each check in its own session
    (``distributed.use(..., this_thread=True)``), so that the cluster works on every check's
    tasks at once instead of waiting for each check's slowest task in turn.  ``on_done(i,
    entry)`` is called in *this* thread as each finishes, with ``work``'s entry or ``{"name",
    "passed": False, "error"}`` for a check that raised.  The threads are daemons: an
    interrupt (Ctrl-C) of this thread ends the run without waiting for them (the caller
    closes the cluster; ``summary.json`` keeps the checks that finished)."""
    import queue
    todo: queue.SimpleQueue = queue.SimpleQueue()
    finished: queue.SimpleQueue = queue.SimpleQueue()
    for i in longest_first(names, size):
        todo.put(i)

    def run() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                e = work(names[i])
            except BaseException as exc:  # a crashing check (even SystemExit) is a failed
                # check, reported: a thread that died silently would leave the run waiting
                e = {"name": names[i], "passed": False, "error": f"{type(exc).__name__}: {exc}"}
            finished.put((i, e))
    threads = [threading.Thread(target=run, name=f"sdeverify-check-{k}", daemon=True)
               for k in range(max(1, min(at_once, len(names))))]
    for t in threads:
        t.start()
    for _ in names:
        while True:
            try:
                item = finished.get(timeout=1.0)
                break
            except queue.Empty:      # never wait on threads that are gone
                if not any(t.is_alive() for t in threads) and finished.empty():
                    raise RuntimeError("the check threads ended without reporting every check")
        on_done(*item)
