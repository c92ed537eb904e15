"""Test functions h(x) evaluated inside the engines, and mergeable streaming statistics.

Observables are named by strings:

* ``"loss"``  — L(x) of the problem;
* ``"sqnorm"`` — ‖x‖²;
* ``"x0"``, ``"x1"``, … — a coordinate;
* any ``numba.njit`` function ``h(x) -> float`` given in ``observables`` (named by its
  ``__name__``, or by the key when a dict is passed).

Each is folded, at the recorded steps, into per-block ``(count, mean, M2)`` accumulators
(Welford, in path order inside a block).  Blocks are merged by a fixed pairwise tree over
global block order (Chan et al.), so the statistics are bitwise independent of thread count
and of how the paths were split into shards.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numba
import numpy as np

from .compile_lock import compile_once

LOSS, SQNORM = -1, -2


class UserFunctionError(ValueError):
    """A user-supplied function (problem function or observable) has the wrong signature,
    raised an exception, or reads beyond its inputs; the message names the function."""

USER0 = -3  # user function u has code USER0 - u


def parse(observables, dim: int) -> tuple[list[str], np.ndarray, tuple[Callable, ...]]:
    """Names, integer codes and user functions for an observables spec."""
    if observables is None:
        observables = ["loss", "sqnorm"]
    if isinstance(observables, dict):
        items = list(observables.items())
    else:
        items = []
        for o in observables:
            items.append((o, o) if isinstance(o, str) else (getattr(o, "__name__", "h"), o))
    names, codes, funcs = [], [], []
    for name, o in items:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"observable names must be non-empty strings, got {name!r}")
        if isinstance(o, str):
            if o == "loss":
                code = LOSS
            elif o == "sqnorm":
                code = SQNORM
            elif o.startswith("x") and o[1:].isdigit():
                code = int(o[1:])
                if code >= dim:
                    raise ValueError(f"observable {o!r} names coordinate {code} but dim={dim}")
            else:
                raise ValueError(f"unknown observable {o!r}: use 'loss', 'sqnorm', 'x<i>' "
                                 "or a numba.njit function h(x) -> float")
        elif hasattr(o, "py_func"):
            code = USER0 - len(funcs)
            funcs.append(o)
        else:
            raise ValueError(f"observable {name!r} must be a name or a numba.njit function, got {o!r}")
        if name in names:
            raise ValueError(f"observable {name!r} given twice")
        names.append(name)
        codes.append(code)
    if not names:
        raise ValueError("observables must name at least one observable")
    return names, np.asarray(codes, dtype=np.int64), tuple(funcs)


_USER_EVAL_CACHE: dict = {}


@numba.njit(cache=True)
def _no_user(u, x):
    return np.nan


def _chain(prev, f, index, tag):
    def ev(u, x):
        if u == index:
            return f(x)
        return prev(u, x)
    # a name unique to the chain: compiled functions of one name are linked as one
    # definition (see sdeverify.engine.cache.unique_names)
    ev.__name__ = f"ev_{tag}"
    ev.__qualname__ = f"_chain.<locals>.ev_{tag}"
    return numba.njit(cache=True)(ev)


def user_evaluator(funcs: tuple) -> Callable:
    """One njit function ``ev(u, x)`` that returns ``funcs[u](x)`` (compiled once per tuple)."""
    key = tuple(id(f) for f in funcs)
    if key not in _USER_EVAL_CACHE:
        from .engine.cache import fingerprint as _fingerprint   # (the engine imports this module)
        ev = _no_user
        h = hashlib.sha256()
        for i, f in enumerate(funcs):
            h.update(_fingerprint(f).encode())
            ev = _chain(ev, f, i, f"{i}_{h.hexdigest()[:16]}")
        _USER_EVAL_CACHE[key] = (funcs, ev)
    return _USER_EVAL_CACHE[key][1]


def evaluate_py(code: int, x: np.ndarray, loss_value: Callable[[], float], funcs) -> float:
    """Pure-Python twin of the engines' observable evaluation (reference backend)."""
    if code >= 0:
        return float(x[code])
    if code == LOSS:
        return float(loss_value())
    if code == SQNORM:
        return float(_sqnorm_py(x))
    return float(funcs[USER0 - code].py_func(x))


def _sqnorm_py(x):
    s = 0.0
    for v in x:
        s += v * v
    return s


def merge_blocks(block_stats: np.ndarray) -> np.ndarray:
    """Canonical pairwise-tree merge of per-block (count, mean, M2) along axis 0: the tree
    that splits n blocks into the first 2^k (the largest power of two below n) and the rest,
    recursively (:func:`merge_blocks_recursive`).  Computed level by level — neighbours
    (0, 1), (2, 3), … merged in one vectorised :func:`merge_pair` per level, an odd last one
    carried up — which builds that same tree (every left subtree is complete), so the result
    is bitwise the recursive one with log₂ n array operations instead of n."""
    n = block_stats.shape[0]
    if n == 0:
        raise ValueError("no blocks to merge")
    level = np.asarray(block_stats)
    while level.shape[0] > 1:
        m = level.shape[0] // 2 * 2
        merged = merge_pair(level[0:m:2], level[1:m:2])
        level = merged if m == level.shape[0] else np.concatenate([merged, level[m:]])
    return level[0].copy()


def merge_blocks_recursive(block_stats: np.ndarray) -> np.ndarray:
    """The canonical tree of :func:`merge_blocks` as its definition: split at the largest
    power of two below n, merge each side, then the two (a reference for the tests)."""
    n = block_stats.shape[0]
    if n == 0:
        raise ValueError("no blocks to merge")
    if n == 1:
        return block_stats[0].copy()
    half = 1
    while half * 2 < n:
        half *= 2
    return merge_pair(merge_blocks_recursive(block_stats[:half]),
                      merge_blocks_recursive(block_stats[half:]))


def merge_pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Chan et al. merge of two (..., 3) arrays of (count, mean, M2)."""
    na, ma, sa = a[..., 0], a[..., 1], a[..., 2]
    nb, mb, sb = b[..., 0], b[..., 1], b[..., 2]
    n = na + nb
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = mb - ma
        frac = np.where(n > 0, nb / np.where(n > 0, n, 1.0), 0.0)
        mean = np.where(nb == 0, ma, np.where(na == 0, mb, ma + delta * frac))
        m2 = np.where(nb == 0, sa, np.where(na == 0, sb, sa + sb + delta * delta * na * frac))
    return np.stack([n, mean, m2], axis=-1)


@numba.njit(inline="always", cache=True)
def welford(acc, v):
    """Fold value ``v`` into the accumulator ``acc = (count, mean, M2)`` in place (Welford)."""
    c = acc[0] + 1.0
    delta = v - acc[1]
    mean = acc[1] + delta / c
    acc[0] = c
    acc[1] = mean
    acc[2] += delta * (v - mean)


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
