"""What a check concludes: a :class:`Verdict`, and what it measured.

A verdict holds the measurement *for what it is*, one of

* an :class:`~sdeverify.stats.Interval` with ``0 < level < 1`` — a **confidence interval**
  around an estimate (the level is part of it: 95%, or a family-wise 99.9%, ...);
* an :class:`~sdeverify.stats.Interval` with ``level == 0`` — an **error estimate** (e.g. a
  Richardson extrapolation's bracket), not a confidence statement;
* a :class:`Value` — a number with no interval (a deterministic deviation, a fraction of
  diverged paths, a test statistic), usually compared with :attr:`Verdict.threshold`.

The rule (:attr:`Verdict.rule`) says in words how pass/fail was decided from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from .stats import Interval

__all__ = ["Value", "Verdict", "Measurement", "format_number", "describe", "percent"]


@dataclass(frozen=True)
class Value:
    """A measured number (or a short tuple of numbers, e.g. diverged fractions at two
    learning rates) with no interval."""
    value: float | tuple

    def __str__(self) -> str:
        if isinstance(self.value, tuple):
            return "(" + ", ".join(format_number(v) for v in self.value) + ")"
        return format_number(self.value)

    def as_dict(self) -> dict:
        """JSON-ready form ``{"kind": "value", "value": ...}`` (a tuple becomes a list)."""
        v = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"kind": "value", "value": v}


Measurement = Union[Interval, Value]


def format_number(x: float) -> str:
    """``x`` to 4 significant digits (``"nan"`` for NaN), as verdicts print numbers."""
    x = float(x)
    return "nan" if math.isnan(x) else f"{x:.4g}"


def kind_of(m: Measurement) -> str:
    """"confidence interval", "error estimate" or "value"."""
    if isinstance(m, Value):
        return "value"
    return "error estimate" if not m.level else "confidence interval"


@dataclass(frozen=True)
class Verdict:
    """One claim of the paper, checked: the prediction, the measurement and the rule.

    Attributes
    ----------
    claim : the claim in words.
    reference : where it comes from (a numbered result of the paper, ``docs/theory.md §n``,
        or "(method)" for the toolkit's own instruments).
    prediction : what the theory predicts, in words and numbers.
    measured : an :class:`~sdeverify.stats.Interval` (confidence interval, or error estimate
        when its level is 0) or a :class:`Value` (no interval).
    passed : the outcome of the rule.
    rule : how ``passed`` was decided.
    threshold : the number the measurement is compared with, when the rule has one (a
        tolerance, a critical value); ``None`` otherwise.
    """
    claim: str
    reference: str
    prediction: str
    measured: Measurement
    passed: bool
    rule: str
    threshold: float | None = None

    def __post_init__(self) -> None:
        # plain Python types: a NumPy bool or float from a rule must not reach the JSON files
        object.__setattr__(self, "passed", bool(self.passed))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", float(self.threshold))

    @property
    def kind(self) -> str:
        """"confidence interval", "error estimate" or "value"."""
        return kind_of(self.measured)

    def as_dict(self) -> dict:
        """JSON-ready form of the verdict, the measurement tagged with its kind ("interval"
        or "value"); :meth:`from_dict` reads it back."""
        m = self.measured.as_dict()
        if isinstance(self.measured, Interval):
            m = {"kind": "interval", **m}
        return {"claim": self.claim, "reference": self.reference, "prediction": self.prediction,
                "measured": m, "passed": self.passed, "rule": self.rule,
                "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        """The verdict saved by :meth:`as_dict` (results saved before the measurement had a
        kind are read as intervals)."""
        m = dict(d["measured"])
        kind = m.pop("kind", "interval")         # results saved before the kinds existed
        if kind == "value":
            v = m["value"]
            measured: Measurement = Value(tuple(v) if isinstance(v, list) else v)
        else:
            measured = Interval(**m)
        return cls(d["claim"], d["reference"], d["prediction"], measured, bool(d["passed"]),
                   d["rule"], d.get("threshold"))


def describe(v: Verdict) -> str:
    """The measurement as printed: ``est [low, high] 95% CI``, ``est [low, high] error
    estimate``, or ``value (threshold t)``; "no estimate" when the interval is NaN."""
    m = v.measured
    if isinstance(m, Value):
        s = str(m)
        if v.threshold is not None:
            s += f" (threshold {format_number(v.threshold)})"
        return s
    if math.isnan(m.estimate):
        return "no estimate"
    s = f"{format_number(m.estimate)} [{format_number(m.low)}, {format_number(m.high)}]"
    if not m.level:
        return s + " error estimate"
    return s + f" {percent(m.level)}% CI"


def percent(level: float) -> str:
    """A confidence level in percent with as many digits as it needs not to read as 100
    (0.95 → "95", 0.999 → "99.9", 0.99997 → "99.997")."""
    x = 100.0 * level
    for digits in range(2, 13):
        text = f"{x:.{digits}g}"
        if level >= 1 or float(text) < 100.0:
            return text
    return repr(x)
