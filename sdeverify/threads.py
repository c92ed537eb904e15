"""Independent ranges of work on threads, for compiled kernels that release the GIL.

The CPU kernels (the simulation engine, the coupled slow-SDE solver, the trainer) split
their work into independent items — blocks of paths, groups of models — whose outputs are
disjoint.  Instead of Numba's ``parallel=True`` (whose parfor passes roughly double a
kernel's compile time: measured 13.0 → 7.7 s and 10.0 → 4.8 s on two engine kernels), each
kernel is compiled ``nogil=True`` with two trailing arguments ``lo, hi`` and does the items
``lo ≤ i < hi``; :func:`run_ranges` calls it on contiguous ranges from a small thread pool.
Items are independent and every output is written by exactly one item, so the results are
bitwise the same for any number of threads and any split into ranges.

The number of threads is Numba's (``NUMBA_NUM_THREADS``, :func:`numba.set_num_threads`),
capped inside :func:`limited` (a thread-local cap: what a Dask task uses, where changing
Numba's own count would launch its threading layer, which no kernel here needs).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

import numba

__all__ = ["n_threads", "cap", "limited", "run_ranges"]

_LOCK = threading.Lock()
#: one pool per thread count, kept for the process's lifetime (never swapped under a caller
#: in another thread that uses a different count)
_POOLS: dict[int, ThreadPoolExecutor] = {}
_CAP = threading.local()


def n_threads() -> int:
    """Threads the CPU kernels use: Numba's current thread count, capped by an enclosing
    :func:`limited` of this thread."""
    n = int(numba.get_num_threads())
    cap = getattr(_CAP, "n", None)
    return n if cap is None else max(1, min(n, cap))


def cap() -> int | None:
    """The thread cap of an enclosing :func:`limited` of this thread (None outside one)."""
    return getattr(_CAP, "n", None)


@contextmanager
def limited(n: int) -> Iterator[None]:
    """Inside the block, this thread's kernels use at most ``n`` threads (``n >= 1``)."""
    if int(n) < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    prev = getattr(_CAP, "n", None)
    _CAP.n = int(n) if prev is None else min(prev, int(n))
    try:
        yield
    finally:
        _CAP.n = prev


def _pool(n: int) -> ThreadPoolExecutor:
    with _LOCK:
        if n not in _POOLS:
            _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix=f"sdeverify{n}")
        return _POOLS[n]


def run_ranges(kernel: Callable, n_items: int, *args, threads: int | None = None,
               per_thread: int = 4) -> None:
    """Call ``kernel(*args, lo, hi)`` for contiguous ranges ``[lo, hi)`` covering
    ``range(n_items)``: in the calling thread when one thread (or one item) is enough, else
    ``per_thread`` ranges per thread (for balance) on ``threads`` threads (default
    :func:`n_threads`).  Waits for every range; the first exception raised by a range is
    re-raised after all have finished."""
    n_items = int(n_items)
    if n_items <= 0:
        return
    t = min(n_threads() if threads is None else int(threads), n_items)
    if t <= 1:
        kernel(*args, 0, n_items)
        return
    n_ranges = min(n_items, t * per_thread)
    cut = [n_items * i // n_ranges for i in range(n_ranges + 1)]
    pool = _pool(t)
    futures = [pool.submit(kernel, *args, lo, hi) for lo, hi in zip(cut[:-1], cut[1:])]
    errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e
