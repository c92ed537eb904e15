"""Result keys: the SHA-256 of everything that determines a point, under which a finished point
is saved and reused (``use(points_dir=..., resume=True)``, ``check --resume``).

The arguments are encoded canonically — arrays by content, containers element by element,
objects (problems, optimizers, models) by type and attributes — and every function by the
package's one function fingerprint, :func:`sdeverify.engine.cache.fingerprint` (bytecode,
constants, closure values and the compiled functions it calls, recursively: an edited
helper changes the key), the fingerprint that also keys the compiled kernels on disk.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.cache import fingerprint
from ..result import versions

__all__ = ["point_key", "source_digest"]


def _encode(h: Any, v: Any, seen: set) -> None:
    """Feed a canonical encoding of ``v`` into the hash ``h``; ValueError when unknown."""
    if v is None or isinstance(v, (bool, int, float, str, complex)):
        h.update(repr((type(v).__name__, v)).encode())
    elif isinstance(v, (np.integer, np.floating, np.bool_)):
        h.update(repr((type(v).__name__, v.item())).encode())
    elif isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        h.update(repr(("ndarray", a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    elif isinstance(v, (list, tuple)):
        h.update(f"{type(v).__name__}[{len(v)}]".encode())
        for x in v:
            _encode(h, x, seen)
    elif isinstance(v, dict):
        h.update(f"dict[{len(v)}]".encode())
        for k in sorted(v, key=repr):
            _encode(h, k, seen)
            _encode(h, v[k], seen)
    elif hasattr(v, "py_func") or callable(v) and hasattr(v, "__code__"):
        h.update(("function " + fingerprint(v)).encode())
    elif hasattr(v, "__dict__") or hasattr(v, "__dataclass_fields__"):
        if id(v) in seen:
            h.update(b"(seen)")
            return
        seen.add(id(v))
        h.update(f"object {type(v).__module__}.{type(v).__qualname__}".encode())
        attrs = dict(vars(v)) if hasattr(v, "__dict__") else {}
        for f in getattr(v, "__dataclass_fields__", {}):
            attrs[f] = getattr(v, f)
        _encode(h, attrs, seen)
    else:
        raise ValueError(f"cannot key a point on a value of type {type(v).__name__}")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of every ``.py`` file of the installed sdeverify package: a point saved by
    other code (an edited engine, a new version) is never reused."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def point_key(kind: str, args: dict) -> str:
    """SHA-256 of everything that determines a point: ``kind`` ("simulate"/"fit"), every
    argument (problem with its parameters and functions, optimizers with their coefficient
    schedules, x0, steps, paths, seed, σ, record, observables, dtype, backend, path or
    replica offset, ...), the versions of sdeverify, NumPy, Numba, SciPy and Python and
    :func:`source_digest`.  A saved point is reused only under the same key, so a stale
    point is never reused."""
    h = hashlib.sha256()
    _encode(h, {"kind": kind, "args": {k: v for k, v in args.items()
                                        if k not in ("on_divergence", "progress")},
                "versions": versions(), "source": source_digest()}, set())
    return h.hexdigest()
