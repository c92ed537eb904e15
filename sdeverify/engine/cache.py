"""A disk cache for compiled kernels whose key is stable across processes.

The CPU engine builds one kernel per problem from a closure over the problem's ``numba.njit``
functions (:mod:`sdeverify.engine.cpu`); the coupled slow-SDE kernel is built the same way
(:mod:`sdeverify.slow_sde`).  Numba's own ``cache=True`` cannot serve them: it indexes a
function by its source file's time stamp and the *pickled* closure values, and the pickle of
a dispatcher is not stable across processes (and a change in a problem function's body, in
another file, does not touch the kernel's source file).  So:

* :func:`fingerprint` names a function by module, qualified name and a hash of its bytecode,
  constants and closure values (recursively, content not identity);
* :class:`KernelCache` is Numba's ``FunctionCache`` with one method replaced,
  ``_index_key``: the key of a compiled entry is (signature, target machine, hash of the
  kernel's bytecode, hash of a caller-given key made of fingerprints) — the one patch of
  Numba internals in the package, tested on its own in ``tests/test_engine_contract.py``;
* :func:`enable_disk_cache` installs it on a dispatcher;
* :func:`unique_names` gives the non-inlined functions of a kernel names that carry the
  key's hash (see its docstring for the collision it prevents).

As with Numba's own cache, a change in a *helper* called by a problem function (not the
function itself, nor a function it closes over) is not detected: clear ``__pycache__``
after such edits.

**One compile per machine**: :class:`KernelCache` takes the file lock of
:mod:`sdeverify.compile_lock` on a miss, so processes that start together on a cold cache
compile each kernel once and load it from disk in the others.
"""
from __future__ import annotations

import hashlib
import types as pytypes

import numpy as np
from numba.core import caching

from ..compile_lock import CompileOnce

__all__ = ["KernelCache", "enable_disk_cache", "fingerprint", "key_hash", "unique_names"]


def key_hash(key: str) -> str:
    """SHA-256 (hex) of a cache key string."""
    return hashlib.sha256(key.encode()).hexdigest()


def fingerprint(f, _seen: frozenset = frozenset()) -> str:
    """``module.qualname:hash`` of a (compiled) function, the hash covering its bytecode,
    names, constants, the functions and values it closes over, and the compiled functions
    it calls by global name (``_poly(...)``, ``vmath.sin(...)``: an edited helper in another
    file must not leave a stale kernel): stable across processes, unlike the pickled
    dispatcher.  A non-function is named by its ``repr``."""
    py = getattr(f, "py_func", f)
    if not isinstance(py, pytypes.FunctionType):
        return repr(py)
    # a plain function and its njit dispatcher share their code: tell them apart, or a kernel
    # cached while a helper was compiled would be loaded after its decorator was lost (a
    # kernel that no longer compiles, seen only on a cold cache)
    kind = "jit" if py is not f else "py"
    h = hashlib.sha256()
    _code_hash(py.__code__, h)
    for cell in py.__closure__ or ():
        h.update(_value_key(cell.cell_contents))
    seen = _seen | {id(py)}
    for callee in _compiled_callees(py):
        if id(callee.py_func) not in seen:
            h.update(fingerprint(callee, seen).encode())
    return f"{py.__module__}.{py.__qualname__}:{kind}:{h.hexdigest()[:16]}"


def _compiled_callees(py) -> list:
    """The compiled (Numba) functions ``py`` refers to by global name or as an attribute of
    a global module, in a stable order."""
    names, stack = set(), [py.__code__]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack += [c for c in code.co_consts if isinstance(c, pytypes.CodeType)]
    g, out = py.__globals__, []
    for name in sorted(names):
        v = g.get(name)
        if isinstance(v, pytypes.ModuleType):
            out += [getattr(v, a) for a in sorted(names) if hasattr(getattr(v, a, None), "py_func")]
        elif hasattr(v, "py_func"):
            out.append(v)
    return out


def _code_hash(code, h) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, pytypes.CodeType):
            _code_hash(c, h)
        else:
            h.update(_value_key(c))


def _value_key(v) -> bytes:
    """Bytes that identify a constant or closure value (content, not identity)."""
    if callable(v):
        return fingerprint(v).encode()
    if isinstance(v, np.ndarray):
        return repr((v.dtype.str, v.shape)).encode() + np.ascontiguousarray(v).tobytes()
    if isinstance(v, (frozenset, set)):
        return repr(sorted(_value_key(x) for x in v)).encode()
    if isinstance(v, tuple):
        return b"(" + b",".join(_value_key(x) for x in v) + b")"
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, np.generic)):
        return repr(v).encode()
    from numba.core.serialize import dumps     # anything else: as Numba does (may miss, never stale)
    return dumps(v)


class KernelCache(CompileOnce, caching.FunctionCache):
    """Numba's per-function disk cache, indexed by a caller-given stable ``key`` (a string
    of :func:`fingerprint` values and sizes) instead of the pickled closure, with the
    one-compile-per-machine lock."""

    def __init__(self, py_func, key: str):
        super().__init__(py_func)
        self._stable_key = key_hash(key)

    def _index_key(self, sig, codegen):
        code = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
        return (sig, codegen.magic_tuple(), (code, self._stable_key))


def enable_disk_cache(dispatcher, key: str) -> None:
    """Give ``dispatcher`` (a ``numba.njit`` dispatcher, not compiled yet) a
    :class:`KernelCache` under ``key``.  Without a writable cache location it stays
    uncached (compiled once per process, as Numba does)."""
    try:
        dispatcher._cache = KernelCache(dispatcher.py_func, key)
    except Exception:
        pass


def unique_names(tag: str):
    """A decorator giving a function a qualified name unique to this kernel's key.

    Numba names compiled functions by qualified name and a per-process counter, and links
    the non-inlined ones with "one definition" semantics.  Kernels of different problems
    loaded from the disk cache may have been compiled in different processes, where the same
    closure (``record``, ``guarded``) got the same name and counter: the process would then
    run one kernel's copy inside the other (seen: the loss of one problem evaluated inside the
    kernel of another).  Names that carry the key's hash cannot collide."""
    def rename(fn):
        fn.__name__ = f"{fn.__name__}_{tag}"
        fn.__qualname__ = f"{fn.__qualname__}_{tag}"
        return fn
    return rename
