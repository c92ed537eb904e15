"""The hyperparameters of a run as table columns, read from what its result stores.

A result stores each optimizer as its replayable repr (``SGDM(lr=0.1, beta=0.9,
name='SGDM')``, :mod:`sdeverify.reprs`).  :func:`scheme_columns` reads the keyword
arguments back with :func:`ast.literal_eval` — never ``eval``: a result file is data — so
that a table can hold ``lr``, ``beta``, ``momentum``, ``dampening`` per optimizer: two
SGDs at different rates are two rows with their rates, not ``SGD`` and ``SGD#2``.  A rate
or momentum that is the same on every step is a float; a per-step schedule is a tuple.
A scheme of the user's whose repr is not such a call gives NaN columns (its repr stays in
``scheme``).
"""
from __future__ import annotations

import ast
import math
from typing import Any

__all__ = ["SCHEME_COLUMNS", "scheme_columns"]

#: per-optimizer columns of every frame, in order (NaN where a scheme has no such argument)
SCHEME_COLUMNS = ("scheme", "lr", "beta", "momentum", "dampening")


def _value(v: Any) -> Any:
    """A float for a number or a constant list, a tuple for a per-step list."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v):
        return float(v[0]) if all(x == v[0] for x in v) else tuple(float(x) for x in v)
    return math.nan


def scheme_columns(text: Any) -> dict:
    """``{"scheme": CLASS, "lr": …, "beta": …, "momentum": …, "dampening": …}`` from the
    repr of an optimizer scheme (``scheme`` is the class name, or the whole text when it is
    not a call with keyword arguments)."""
    out: dict[str, Any] = dict.fromkeys(SCHEME_COLUMNS, math.nan)
    out["scheme"] = str(text)
    try:
        node = ast.parse(str(text), mode="eval").body
    except (SyntaxError, ValueError):
        return out
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return out
    out["scheme"] = node.func.id
    for kw in node.keywords:
        if kw.arg in out:
            try:
                out[kw.arg] = _value(ast.literal_eval(kw.value))
            except (ValueError, SyntaxError, TypeError):
                pass
    return out
