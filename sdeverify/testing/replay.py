"""Replaying a printed problem or optimizer: ``replay(repr(x))`` rebuilds an equal ``x``.

Every problem of :mod:`sdeverify.problems` and every optimizer of :mod:`sdeverify.optim`
prints as the call that builds it, arrays written out in full (:mod:`sdeverify.reprs`), so
the values of a Hypothesis "Falsifying example" can be pasted into a test and replayed.
"""
from __future__ import annotations

from typing import Any

__all__ = ["replay", "namespace"]


def namespace(**extra: Any) -> dict:
    """The names a printed problem or optimizer uses: the public names of
    :mod:`sdeverify.problems` and :mod:`sdeverify.optim`, plus ``extra`` (e.g. the
    ``numba.njit`` functions of a custom :class:`~sdeverify.problems.NGOS`, which print by
    name)."""
    from .. import optim, problems
    names = {k: getattr(problems, k) for k in problems.__all__}
    names.update({k: getattr(optim, k) for k in optim.__all__})
    names.update(extra)
    return names


def replay(text: str, **extra: Any) -> Any:
    """The object that ``text`` (a repr printed by sdeverify) builds, evaluated with
    :func:`namespace`'s names (and ``extra``) in scope and no builtins.  Only for texts
    printed by sdeverify or written by you: it is ``eval``."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string (a printed repr), got {type(text).__name__}")
    return eval(text, {"__builtins__": {}}, namespace(**extra))   # noqa: S307 - documented
