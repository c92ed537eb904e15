"""Run OpenBLAS single-threaded for a while (no dependency beyond ctypes).

The CPU trainer parallelises over models (one model's whole step loop per thread) and calls
BLAS from every thread; OpenBLAS's own threads would then oversubscribe the cores — and on
a loaded 2-core machine its spinning worker threads slowed a batch-1024 run 25× (12 s
against 0.49 s, measured).  :func:`single_threaded` finds the OpenBLAS libraries loaded in
this process (NumPy's and SciPy's wheels ship one each) and sets their thread count to 1,
restoring it afterwards (:func:`at_most` lowers it to a given count).  Where none is found
(e.g. MKL), nothing changes.
"""
from __future__ import annotations

import ctypes
import sys
import threading
from contextlib import contextmanager

_LOCK = threading.Lock()
_NAMES = [(f"{pre}openblas_get_num_threads{suf}", f"{pre}openblas_set_num_threads{suf}")
          for pre in ("", "scipy_") for suf in ("", "64_")]


#: ``[len(sys.modules) at the last scan, its controllers]``: a library is loaded by an import,
#: so the scan of /proc/self/maps (1.6 ms in a process with Numba loaded, measured; a trainer
#: enters :func:`at_most` at every train and evaluate call) is redone only after one.
_SCANNED: list = [-1, []]


def _controllers() -> list:
    """``(get, set)`` thread-count functions of every loaded OpenBLAS (cached until the next
    import)."""
    if _SCANNED[0] != len(sys.modules):
        _SCANNED[:] = [len(sys.modules), _scan()]
    return _SCANNED[1]


def _scan() -> list:
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower()}
    except OSError:
        return []
    out = []
    for p in sorted(x for x in paths if x.startswith("/")):
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for get, set_ in _NAMES:
            if hasattr(lib, get) and hasattr(lib, set_):
                out.append((getattr(lib, get), getattr(lib, set_)))
                break
    return out


@contextmanager
def at_most(n: int):
    """Within the block, every loaded OpenBLAS runs on at most ``n`` threads (its count is
    lowered to ``n``, never raised); yields the number of libraries found."""
    n = max(1, int(n))
    with _LOCK:
        ctl = _controllers()
        saved = [get() for get, _ in ctl]
        for (_, set_), was in zip(ctl, saved):
            set_(min(int(was), n))
    try:
        yield len(ctl)
    finally:
        with _LOCK:
            for (_, set_), was in zip(ctl, saved):
                set_(was)


def single_threaded():
    """Within the block, every loaded OpenBLAS runs on one thread."""
    return at_most(1)
