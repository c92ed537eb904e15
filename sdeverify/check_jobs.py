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
never silently.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

__all__ = ["default_jobs", "describe", "run_checks"]


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


def _one(name: str, size: str, seed: int, out: str, backend: str) -> dict:
    """Run one check in a worker; what the parent needs for its table and summary."""
    from .cli import _run_one, _verdict_rows
    res, fig = _run_one(name, size, seed, Path(out), True, backend=backend)
    return {"name": name, "passed": res.passed, "wall_time": res.meta.get("wall_time"),
            "figure": str(fig) if fig else None, "verdicts": [v.as_dict() for v in res.verdicts],
            "rows": _verdict_rows(res)}


#: submission order, longest first (the classic rule for balancing a few workers): rough
#: cold ``--quick`` wall times in seconds, from this machine's first ``--jobs 2`` runs of
#: 2026-11-30 (loaded; train_batch_size from a rerun after the BLAS-thread fix); a check not
#: listed here (e.g. a user's) is submitted first.  Only the order of the work depends on
#: it, never a result.
COLD_QUICK_SECONDS = {"slow_sde": 74, "batch_size": 67, "train_batch_size": 54, "svag": 53,
                      "instruments": 40, "weak_approximation": 40, "label_noise": 33,
                      "train_engine": 30, "hb_equivalence": 24, "train_svag": 13,
                      "variance_reduction": 12, "descent_lemma": 9, "sde_limit": 6}


def run_checks(names: list[str], size: str, seed: int, out: Path, jobs: int, backend: str,
               on_done: Callable[[int, dict], None]) -> None:
    """Run ``names`` on ``jobs`` worker processes; ``on_done(i, entry)`` is called in this
    process as each finishes (``i`` its index in ``names``), with the keys of
    :func:`_one`, or ``{"name", "passed": False, "error"}`` for a check that raised or whose
    worker died."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))
    try:
        with _child_threads(threads):      # the workers start during the submissions
            order = sorted(range(len(names)), key=lambda i: -COLD_QUICK_SECONDS.get(names[i], 1e9))
            pending = {pool.submit(_one, names[i], size, seed, str(out), backend): i for i in order}
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

