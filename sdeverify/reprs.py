"""Replayable reprs: ``eval(repr(obj))`` rebuilds an equal object.

The problems (:mod:`sdeverify.problems`) and optimizers (:mod:`sdeverify.optim`) print as
the call that builds them, with every array written out in full as (nested) lists of Python
floats — ``repr`` of a float round-trips exactly — so that a value printed by a failing
property test (Hypothesis's "Falsifying example") can be pasted back and replayed bit for
bit.  :func:`sdeverify.testing.replay` evaluates such a text with the package's names in
scope.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["literal", "call_repr"]


def literal(value: Any) -> Any:
    """``value`` as plain Python literals: arrays and NumPy scalars as (nested) lists /
    Python numbers, tuples and lists element by element; anything else unchanged."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return type(value)(literal(v) for v in value)
    return value


def call_repr(callee: str, /, *args: Any, **kwargs: Any) -> str:
    """``callee(arg, ..., key=value, ...)`` with every value written by ``repr`` of its
    :func:`literal` form; a value that is a compiled function (``numba.njit``) or a class is
    written by its name.  (A ``None`` is written too: for scalar arguments the text is then
    the dataclass repr the optimizers had before, which training runs' fingerprints hold.)"""
    def text(v: Any) -> str:
        if hasattr(v, "py_func") or callable(v) and hasattr(v, "__name__") \
                and not isinstance(v, (np.ndarray, np.generic)):
            return v.__name__
        return repr(literal(v))
    parts = [text(a) for a in args]
    parts += [f"{k}={text(v)}" for k, v in kwargs.items()]
    return f"{callee}({', '.join(parts)})"
