"""Assertions for Monte Carlo predictions, each with a stated false-failure rate.

Every assertion takes ``alpha``, the probability that it fails although the prediction is
exactly right (its *false-failure rate*), family-wise over everything it compares (the
recorded steps of a series: Bonferroni, so the rate holds whatever the dependence between
steps).  The intervals are normal (CLT) for ensembles of many paths and Student-t for few
replicas (fewer than 200 samples per estimate, as in trained-network results).  On failure
the message gives the interval, the expected value and how far off it is; on success the
:class:`Outcome` is returned so that a test can report or further check it.

Which rate to choose: the suite of this project uses α = 10⁻³ per assertion, so a test file
with ten statistical assertions fails spuriously about once in a hundred runs at worst — and
with fixed seeds, never at random: a failure then points at a change of the code or the
seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _st

from ..result import index_pair
from ..stats import fit_order

__all__ = ["StatisticalAssertionError", "Outcome", "assert_mean",
           "assert_paired_difference", "assert_paired_less", "assert_variance", "assert_order",
           "paired_series"]

#: Below this many samples per estimate the interval uses Student's t instead of the normal.
T_BELOW = 200


class StatisticalAssertionError(AssertionError):
    """A statistical assertion failed; the message holds the interval and the expectation."""


@dataclass(frozen=True)
class Outcome:
    """What an assertion compared: per compared entry the estimate, its interval (at the
    per-entry level ``1 − alpha/n_compared``) and the expected value."""
    passed: bool
    alpha: float
    n_compared: int
    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    expected: np.ndarray
    message: str = ""


def _critical(alpha_each: float, count) -> np.ndarray:
    """Two-sided critical value for per-entry level 1 − alpha_each: normal, or Student-t
    with count − 1 degrees of freedom where fewer than ``T_BELOW`` samples."""
    z = _st.norm.isf(alpha_each / 2)
    if count is None:
        return np.asarray(z)
    count = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        t = _st.t.isf(alpha_each / 2, np.maximum(count - 1, 1))
    return np.where(count < T_BELOW, t, z)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha (the false-failure rate) must be in (0, 1), got {alpha}")
    return alpha


def _series(result: Any, optimizer, observable, sem) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """(mean, sem, count, labels) from a SimulationResult / TrainResult or raw arrays."""
    if hasattr(result, "series") and hasattr(result, "optimizers"):
        mean, s = result.series(optimizer, observable)
        if hasattr(result, "observables"):                       # SimulationResult
            j, o = index_pair(result.optimizers, result.observables, optimizer, observable)
            count, labels = result.count[j, :, o], np.asarray(result.steps)
        else:                                                     # TrainResult
            count, labels = result.count(optimizer, observable), np.asarray(result.eval_steps)
        return np.asarray(mean, float), np.asarray(s, float), count, labels
    if sem is None:
        raise ValueError("pass sem= (the standard errors) with a raw array of means")
    mean = np.atleast_1d(np.asarray(result, dtype=np.float64))
    s = np.broadcast_to(np.asarray(sem, dtype=np.float64), mean.shape)
    return mean, s, None, np.arange(mean.size)


def _compare(mean, sem, count, labels, expected, alpha, exact_rtol, what) -> Outcome:
    """Family-wise two-sided comparison of estimates with expected values."""
    alpha = _check_alpha(alpha)
    mean = np.asarray(mean, dtype=np.float64).ravel()
    sem = np.asarray(sem, dtype=np.float64).ravel()
    expected = np.broadcast_to(np.asarray(expected, dtype=np.float64), mean.shape).ravel()
    if not np.all(np.isfinite(expected)):
        raise ValueError("expected values must be finite")
    bad = ~(np.isfinite(mean) & np.isfinite(sem))
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        raise StatisticalAssertionError(
            f"{what}: no estimate at {_label(labels, k)} (mean {mean[k]}, sem {sem[k]}): every "
            "path diverged there or too few samples — not a pass")
    exact = sem == 0.0
    stochastic = ~exact
    n = max(int(stochastic.sum()), 1)
    crit = _critical(alpha / n, None if count is None else np.asarray(count).ravel())
    crit = np.broadcast_to(crit, mean.shape)
    half = np.where(exact, exact_rtol * (1.0 + np.abs(expected)), crit * sem)
    low, high = mean - half, mean + half
    off = np.abs(mean - expected) > half
    msg = ""
    if np.any(off):
        dev = np.where(exact, np.inf, np.abs(mean - expected) / np.where(exact, 1.0, sem))
        worst = np.argsort(-np.where(off, dev, -1.0))[:min(5, int(off.sum()))]
        lines = [f"{what}: {int(off.sum())} of {mean.size} estimates miss the expected value "
                 f"(family-wise false-failure rate {alpha:g} over {n} stochastic entries; "
                 f"per-entry level {100 * (1 - alpha / n):.6g}%):"]
        for k in worst:
            kind = "exact (sem 0)" if exact[k] else f"{dev[k]:.2f} standard errors off"
            lines.append(f"  at {_label(labels, k)}: estimate {mean[k]:.6g}, interval "
                         f"[{low[k]:.6g}, {high[k]:.6g}], expected {expected[k]:.6g} ({kind})")
        msg = "\n".join(lines)
    return Outcome(not bool(np.any(off)), alpha, n, mean, low, high, expected, msg)


def _name(result, optimizer, observable) -> str:
    """"'loss' of SGDM" for messages."""
    j = optimizer if not isinstance(optimizer, (int, np.integer)) else result.optimizers[optimizer]
    k = observable
    if isinstance(observable, (int, np.integer)):
        k = getattr(result, "observables", getattr(result, "metrics", None))[observable]
    return f"{k!r} of {j}"


def _label(labels, k: int) -> str:
    return f"step {labels[k]}" if labels is not None and k < len(labels) else f"entry {k}"


def assert_mean(result: Any, expected: ArrayLike, *, optimizer: str | int = 0,
                observable: str | int = 0, sem: ArrayLike | None = None, alpha: float = 1e-3,
                exact_rtol: float = 1e-9) -> Outcome:
    """Assert that Monte Carlo means equal exact predictions at every recorded step.

    Parameters
    ----------
    result : a :class:`~sdeverify.result.SimulationResult` (then ``optimizer`` and
        ``observable`` pick the series), a :class:`~sdeverify.train.TrainResult` (``observable``
        is the metric), or an array of means (then pass ``sem``).
    expected : the exact values, broadcast against the series (one per recorded step).
    alpha : false-failure rate, family-wise over the compared steps (Bonferroni).
    exact_rtol : tolerance for deterministic entries (standard error 0, e.g. step 0).

    Raises :class:`StatisticalAssertionError` with the failing steps' intervals; returns the
    :class:`Outcome` otherwise.  A step without an estimate (every path diverged) fails.
    """
    mean, s, count, labels = _series(result, optimizer, observable, sem)
    out = _compare(mean, s, count, labels, expected, alpha, exact_rtol,
                   "mean" if sem is not None else f"mean of {_name(result, optimizer, observable)}")
    if not out.passed:
        raise StatisticalAssertionError(out.message)
    return out


def assert_paired_difference(result: Any, optimizer: str | int, observable: str | int, *,
                             baseline: str | int = 0, equals: float = 0.0,
                             within: float | None = None, alpha: float = 1e-3) -> Outcome:
    """Assert a paired (common-random-numbers) difference E h(optimizer) − E h(baseline).

    * ``within=None``: the difference equals ``equals`` at every recorded step (two-sided,
      false-failure rate ``alpha`` family-wise);
    * ``within=margin``: **equivalence** — at every step the difference lies within
      ``equals ± margin``: the simultaneous interval (each side one-sided α/n, the
      two-one-sided-tests rule) must fit inside the margin.  Here ``alpha`` bounds the
      probability of *passing* when the difference truly exceeds the margin somewhere; a
      correct engine fails only when the interval is wider than the room left by the true
      difference, which the message calls "inconclusive" (run more paths).

    ``result`` is a SimulationResult (its paths are paired with the *first* optimizer's,
    so one of ``optimizer`` and ``baseline`` must be the first) or a TrainResult (any two).
    Optimizers are given by name or position; messages name them.
    """
    alpha = _check_alpha(alpha)
    diff, s, count, labels, what = paired_series(result, optimizer, observable, baseline)
    if within is None:
        out = _compare(diff, s, count, labels, equals, alpha, 1e-9, what)
        if not out.passed:
            raise StatisticalAssertionError(out.message)
        return out
    margin = float(within)
    if not margin > 0:
        raise ValueError(f"within (the equivalence margin) must be > 0, got {within}")
    diff, s = np.asarray(diff, float), np.asarray(s, float)
    if not np.all(np.isfinite(diff) & np.isfinite(s)):
        raise StatisticalAssertionError(f"{what}: no estimate at some step (diverged paths)")
    n = diff.size
    crit = np.broadcast_to(_critical(2 * alpha / n, count), diff.shape)  # one-sided alpha/n each side
    low, high = diff - crit * s, diff + crit * s
    lo_m, hi_m = equals - margin, equals + margin
    off = (low < lo_m) | (high > hi_m)
    if np.any(off):
        k = int(np.argmax(np.maximum(lo_m - low, high - hi_m)))
        verdict = ("the difference exceeds the margin" if not lo_m <= diff[k] <= hi_m else
                   "inconclusive: the interval is wider than the room inside the margin (run more paths)")
        raise StatisticalAssertionError(
            f"{what}: equivalence within {equals:g} ± {margin:g} not shown at {_label(labels, k)}: "
            f"estimate {diff[k]:.6g}, simultaneous interval [{low[k]:.6g}, {high[k]:.6g}] "
            f"(family-wise alpha {alpha:g} over {n} steps) — {verdict}")
    return Outcome(True, alpha, n, diff, low, high, np.full(n, equals))


def _opt_name(result: Any, optimizer: str | int) -> str:
    """The name of ``optimizer`` (given by name or position) in ``result``."""
    names = tuple(result.optimizers)
    if isinstance(optimizer, (int, np.integer)) and not isinstance(optimizer, bool):
        if not -len(names) <= optimizer < len(names):
            raise ValueError(f"optimizer position {optimizer} out of range: the result has "
                             f"{len(names)} optimizers {names}")
        return names[optimizer]
    if optimizer not in names:
        raise ValueError(f"optimizer must be one of {names} or a position, got {optimizer!r}")
    return optimizer


def paired_series(result: Any, optimizer: str | int, observable: str | int,
                  baseline: str | int = 0) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray, str]:
    """(difference, sem, count, step labels, description) per recorded step of the paired
    (common-random-numbers) difference E h(optimizer) − E h(baseline), path by path (a
    SimulationResult; one of the two must be its first optimizer, against which the engine
    pairs every path) or replica by replica (a TrainResult).  Optimizers by name or position;
    the description names them (``'loss' of SGDM − SGD``)."""
    opt, base = _opt_name(result, optimizer), _opt_name(result, baseline)
    if opt == base:
        raise ValueError(f"optimizer and baseline are both {opt!r}: nothing to compare")
    what = f"paired difference of {observable!r}, {opt} − {base}"
    if hasattr(result, "observables"):
        first = result.optimizers[0]
        if first not in (opt, base):
            raise ValueError("a SimulationResult pairs every optimizer with its first one "
                             f"({first!r}): optimizer or baseline must be {first!r}, got "
                             f"{opt!r} and {base!r}")
        sign = 1.0 if base == first else -1.0
        other = opt if base == first else base
        diff, s = result.paired(other, observable)
        j, o = index_pair(result.optimizers, result.observables, other, observable)
        count, labels = result.count[j, :, o], np.asarray(result.steps)
        return sign * np.asarray(diff, float), np.asarray(s, float), count, labels, what
    diff, s = result.paired(opt, observable, base)
    count = np.minimum(result.count(opt, observable), result.count(base, observable))
    return (np.asarray(diff, float), np.asarray(s, float), count,
            np.asarray(result.eval_steps), what)


def _critical_one_sided(alpha_each: float, count) -> np.ndarray:
    """One-sided critical value at level 1 − alpha_each (normal, or Student-t with count − 1
    degrees of freedom where fewer than ``T_BELOW`` samples)."""
    return _critical(2.0 * alpha_each, count)


def assert_paired_less(result: Any, optimizer: str | int, observable: str | int, *,
                       baseline: str | int = 0, margin: float = 0.0, shown: bool = False,
                       steps: Sequence[int] | None = None, alpha: float = 1e-3) -> Outcome:
    """Assert the one-sided claim E h(optimizer) < E h(baseline) + ``margin`` from the paired
    (common-random-numbers) difference d = h(optimizer) − h(baseline), at every recorded step
    (or at ``steps``, a subset of them).

    * ``shown=False`` (default; the false-failure reading of this module): fails when the
      data contradict the claim, i.e. when at some step the one-sided lower confidence
      bound d̂ − c·sem exceeds ``margin`` (c the one-sided critical value at level
      1 − alpha/n, n the compared steps: Bonferroni).  **False-failure rate**: at most
      ``alpha`` whenever the true difference is ≤ ``margin`` at every compared step —
      exactly ``alpha`` (n = 1) when it equals ``margin``, and far less when the claim holds
      with room (measured in tests/test_testing.py over 400 seeds).  It does not fail
      when the two are equal: to require that the data *show* the order, use
    * ``shown=True``: passes only when at every compared step the upper bound d̂ + c·sem is
      below ``margin``; then ``alpha`` bounds the probability of *passing* although the
      true difference is ≥ ``margin`` somewhere, and a true but small gap fails as
      "not shown" until enough paths resolve it.

    ``baseline`` (name or position; default the first optimizer) and ``optimizer`` as in
    :func:`paired_series`.  Intervals are normal for ensembles, Student-t for fewer than
    200 replicas.  A step without an estimate (every path diverged) fails.
    """
    alpha = _check_alpha(alpha)
    margin = float(margin)
    if not np.isfinite(margin):
        raise ValueError(f"margin must be finite, got {margin!r}")
    diff, s, count, labels, what = paired_series(result, optimizer, observable, baseline)
    if steps is not None:
        want = np.atleast_1d(np.asarray(steps))
        pos = [int(np.flatnonzero(labels == k)[0]) if np.any(labels == k) else -1 for k in want]
        if min(pos) < 0:
            raise ValueError(f"steps must be recorded steps of the result {labels.tolist()}, "
                             f"got {want.tolist()}")
        diff, s, labels = diff[pos], s[pos], labels[pos]
        count = None if count is None else np.asarray(count)[pos]
    if not np.all(np.isfinite(diff) & np.isfinite(s)):
        k = int(np.flatnonzero(~(np.isfinite(diff) & np.isfinite(s)))[0])
        raise StatisticalAssertionError(f"{what}: no estimate at {_label(labels, k)} (every "
                                        "path diverged there, or too few samples) — not a pass")
    n = diff.size
    crit = np.broadcast_to(_critical_one_sided(alpha / n, count), diff.shape)
    low, high = diff - crit * s, diff + crit * s
    off = high >= margin if shown else low > margin
    if np.any(off):
        k = int(np.argmax(np.where(off, (high if shown else low) - margin, -np.inf)))
        why = ("not shown: the upper bound is not below the margin (run more paths, or the "
               "order does not hold)" if shown else "the data show the opposite order")
        raise StatisticalAssertionError(
            f"{what}: claimed < {margin:g}, but at {_label(labels, k)} the estimate is "
            f"{diff[k]:.6g} with one-sided bounds [{low[k]:.6g}, {high[k]:.6g}] (sem "
            f"{s[k]:.3g}; family-wise alpha {alpha:g} over {n} steps) — {why}")
    return Outcome(True, alpha, n, diff, low, high, np.full(n, margin))


def assert_variance(result: Any, expected: ArrayLike, *, optimizer: str | int = 0,
                    observable: str = "x0", alpha: float = 1e-3,
                    exact_rtol: float = 1e-9) -> Outcome:
    """Assert that the variance of ``observable`` over the paths of ``optimizer`` equals
    ``expected`` at every recorded step (two-sided, false-failure rate ``alpha``
    family-wise over the steps, Bonferroni; normal intervals).

    The run must have recorded the moments of the observable:
    ``observables=moment_observables("x0", problem=P, center=c)``
    (:mod:`sdeverify.testing.moments`); the standard error of the variance uses the fourth
    central moment (delta method), so the stated rate holds for any distribution with
    finite eighth moment once the paths are many (thousands).  Steps where every path has
    the same value are compared exactly (``exact_rtol``).
    """
    from .moments import variance_series
    v, s, n = variance_series(result, optimizer, observable)
    what = f"variance of {observable!r} of {_opt_name(result, optimizer)}"
    out = _compare(v, s, None, np.asarray(result.steps), expected, alpha, exact_rtol, what)
    if not out.passed:
        raise StatisticalAssertionError(out.message)
    return out


def assert_order(x: Sequence[float], err: Sequence[float], err_sem: Sequence[float] | None = None, *,
                 equals: float | None = None, at_least: float | None = None,
                 at_most: float | None = None, alpha: float = 1e-3) -> Outcome:
    """Assert the order p of err ≈ C·xᵖ (a weighted log-log fit, :func:`sdeverify.stats.fit_order`;
    Student-t and inflated by the lack of fit when the power law does not fit within the
    errors).

    ``equals=p``: p lies in the (1 − alpha) interval of the fitted order (two-sided);
    ``at_least=p`` / ``at_most=p``: the interval's upper end ≥ p / lower end ≤ p (the data
    are consistent with an order at least / at most p; false-failure rate ≤ alpha/2).
    Give exactly one of them.
    """
    alpha = _check_alpha(alpha)
    given = [(k, v) for k, v in (("equals", equals), ("at_least", at_least), ("at_most", at_most))
             if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of equals=, at_least=, at_most=")
    kind, p = given[0]
    fit = fit_order(x, err, err_sem, level=1.0 - alpha)
    iv = fit.order
    ok = {"equals": iv.contains(p), "at_least": iv.high >= p, "at_most": iv.low <= p}[kind]
    out = Outcome(bool(ok), alpha, len(np.ravel(x)), np.array([iv.estimate]), np.array([iv.low]),
                  np.array([iv.high]), np.array([p]))
    if not ok:
        raise StatisticalAssertionError(
            f"fitted order {iv.estimate:.4g}, {100 * (1 - alpha):.6g}% interval [{iv.low:.4g}, "
            f"{iv.high:.4g}] (reduced chi2 {fit.chi2_dof:.3g}, {fit.n_points} points) is not "
            f"consistent with order {kind.replace('_', ' ')} {p:g}")
    return out
