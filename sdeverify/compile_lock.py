"""One compile per machine: a file lock around Numba's compile-and-save of a cached function.

Processes that start together on a cold cache — the worker processes of ``sdeverify check``,
Dask workers on one host, the processes of a test run — would each compile the same kernel
(seconds each) and write the same cache entry.  With :class:`CompileOnce` mixed into a
Numba cache, a process that misses the cache takes an exclusive ``flock`` on a lock file
next to the entry and looks again: if another process has saved the entry meanwhile it
loads it, otherwise it compiles while holding the lock, and releases it once the entry is
saved.  The lock is also released when the compile fails (:class:`_ReleaseOnFailure`,
through Numba's compile events) and when the process ends (the kernel drops a dead
process's ``flock``).  A process waits at most ``config.COMPILE_WAIT_S`` seconds, then
compiles on its own; without ``fcntl`` (not POSIX) or where the file system refuses locks,
every process compiles, as Numba does.

Used by the engine's :class:`~sdeverify.engine.cache.KernelCache` and, through
:func:`compile_once`, by the package's own ``cache=True`` functions.  Results never depend on
it: a loaded entry is the same machine code the process would have compiled.
"""
from __future__ import annotations

import os
import time

from numba.core import caching
from numba.core import event as numba_event

from . import config

try:
    import fcntl
except ImportError:          # not POSIX: no cross-process lock, every process compiles
    fcntl = None

__all__ = ["CompileOnce", "SharedFunctionCache", "compile_once"]


def _lock(path: str, wait_s: float):
    """An open file descriptor holding an exclusive ``flock`` on ``path`` (created if
    needed), or None if it could not be had within ``wait_s`` seconds or at all."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        except OSError:                # a file system without locks
            break
    os.close(fd)
    return None


class CompileOnce:
    """Mixin for a Numba ``Cache``: on a miss, take the entry's file lock and look again
    (another process may have compiled and saved it meanwhile); still a miss: keep the lock
    while this process compiles, release it once the entry is saved (or the compile fails)."""

    _lock_fd = None

    def _lock_path(self) -> str:
        return os.path.join(self._cache_path, self._impl.filename_base + ".lock")

    def load_overload(self, sig, target_context):
        data = super().load_overload(sig, target_context)
        if data is not None or self._lock_fd is not None or not self._enabled:
            return data
        fd = _lock(self._lock_path(), config.COMPILE_WAIT_S)
        if fd is None:
            return None
        data = super().load_overload(sig, target_context)
        if data is not None:
            os.close(fd)
            return data
        self._lock_fd = fd
        return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        finally:
            self.release_lock()

    def release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)              # closing the descriptor releases the flock


class _ReleaseOnFailure(numba_event.Listener):
    """A compile that raises never reaches ``save_overload``: at the end of every Numba
    compile, a dispatcher of ours still holding its lock and without the overload it was
    compiling has failed, and releases the lock (processes waiting then compile, and fail,
    themselves)."""

    def on_start(self, event):
        pass

    def on_end(self, event):
        data = event.data
        disp = data["dispatcher"]
        cache = getattr(disp, "_cache", None)
        if isinstance(cache, CompileOnce) and cache._lock_fd is not None:
            if tuple(data["args"]) not in disp.overloads:
                cache.release_lock()


numba_event.register("numba:compile", _ReleaseOnFailure())


class SharedFunctionCache(CompileOnce, caching.FunctionCache):
    """Numba's own cache (``cache=True``) with the one-compile-per-machine lock."""


def compile_once(namespace: dict) -> None:
    """Give every ``cache=True`` dispatcher in ``namespace`` (a module's ``globals()``, called
    at the end of the module, before anything is compiled) a :class:`SharedFunctionCache`."""
    for value in list(namespace.values()):
        cache = getattr(value, "_cache", None)
        if type(cache) is caching.FunctionCache:
            try:
                value._cache = SharedFunctionCache(value.py_func)
            except Exception:
                pass
