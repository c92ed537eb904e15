"""Canary of the verdict machinery: claims whose truth is known, decided and aggregated by the
same code as every check, must come out as known.

Every check trusts a small amount of shared code to turn measurements into a job's exit
status: the interval helpers of :mod:`sdeverify.stats` (``Interval.contains``,
``mean_interval``, ``z_value``, ``fit_order``, ``consistent_with_order_at_least``), the
:class:`~sdeverify.verdict.Verdict` record (its ``passed`` flag, its JSON round trip),
:attr:`ExperimentResult.passed <sdeverify.experiments.base.ExperimentResult.passed>`, its
save/load, and the ``check`` command's summary entry, table rows and the rule "the job
passes iff every check passed".  A defect there (``all`` read as ``any``, a comparison
reversed, a flag lost on the way to disk) would make every verdict of the job meaningless
while each check still looked healthy, so ``sdeverify check`` runs this canary in its own
process before the checks, and a wrong answer fails the job.

The canary's claims (:func:`canary_verdicts`), half true and half false by construction:

* an interval mean 1 ± z₀.₉₇₅·0.1 = [0.804, 1.196] contains 1.1 (true) and 1.3 (false);
* a two-sided z-test at 95%: |z| = 1.5 passes, |z| = 2.5 fails (z₀.₉₇₅ = 1.95996...);
* an exact error curve 0.7 η² on η = 2⁻², …, 2⁻⁷ (relative errors 1%): its fitted order's
  interval (± 0.007) contains 2 (true) and not 2.05 (false); "order ≥ 1.95" holds, "order ≥
  2.05" does not (close calls on purpose: a rule that is off by a little fails the canary).

Calibration of the interval functions the verdicts use (:func:`calibration_verdicts`):
each of ``mean_interval`` (known standard error), ``sample_interval`` (n = 50),
``t_interval`` (n = 4, where a normal quantile would cover only 86%), ``paired_difference``
(correlated pairs), ``bootstrap_interval`` (percentile, mean of n = 50), the χ² variance
interval of ``variance_reduction``, the weighted-least-squares intercept of
``frozen_momentum`` and the secant order of ``weak_worst_case_mc`` (end-point errors with
5% standard errors, order 0.7 over a factor 8 in η) is computed on many synthetic data sets with a known truth (fixed seed),
and its coverage must lie in the two-sided band nominal ± 3.5 binomial standard deviations
(true); the same intervals narrowed by 1/√2 must fall outside it (false).  So an interval
that is too narrow *or* too wide (√2 too wide covers 0.994, outside the band) fails the
canary.  (``fit_order``, ``max_abs_interval`` and the engine's standard errors are calibrated
by the ``instruments`` check.)

The verdicts are written as the checks write theirs (a NumPy bool for ``passed`` where a
rule computes one).  :func:`machinery_problems` then verifies the pattern of outcomes, that a
result with a failing verdict does not pass (and one with only true claims does), that the
pattern survives ``save``/``load``, that the ``check`` command's summary entry and table rows
say FAIL for it, and that the job's rule fails a job containing it.
"""
from __future__ import annotations

import tempfile
from typing import Callable

import numpy as np

from .stats import (bootstrap_interval, consistent_with_order_at_least, fit_order,
                    mean_interval, paired_difference, sample_interval, t_interval, z_value)
from .verdict import Value, Verdict

__all__ = ["EXPECTED", "CALIBRATED", "canary_verdicts", "calibration_verdicts", "coverage",
           "canary_result", "machinery_problems"]

REF = "canary (method)"
#: nominal level of the calibrated intervals
NOMINAL = 0.95
#: half-width of the coverage band, in binomial standard deviations
BAND_SD = 3.5


def _normal_mean(g: np.random.Generator):
    x = g.standard_normal(50)
    return mean_interval(float(x.mean()), 1.0 / np.sqrt(50)), 0.0


def _sample(g: np.random.Generator):
    return sample_interval(1.0 + 2.0 * g.standard_normal(50)), 1.0


def _t(g: np.random.Generator):
    return t_interval(g.standard_normal(4)), 0.0


def _paired(g: np.random.Generator):
    z = g.standard_normal(50)
    return paired_difference(z + 0.3 * g.standard_normal(50) + 0.5, z), 0.5


def _bootstrap(g: np.random.Generator):
    x = g.standard_normal(50)
    return bootstrap_interval(np.mean, (x,), n_boot=100, seed=int(g.integers(2 ** 31))), 0.0


def _chi2_variance(g: np.random.Generator):
    from .experiments.variance_reduction import _var_interval
    x = 1.5 * g.standard_normal(50)
    return _var_interval(float(x.var(ddof=1)), 50, NOMINAL), 2.25


def _secant_order(g: np.random.Generator):
    from .experiments.weak_worst_case_mc import secant_order
    eta = 2.0 ** -np.arange(7, 11)
    true = 0.4 * eta ** 0.7
    s = 0.05 * true
    est = true + s * g.standard_normal(eta.size)
    z = z_value(NOMINAL)
    return secant_order(eta, np.column_stack([est, est - z * s, est + z * s]), NOMINAL), 0.7


def _wls_intercept(g: np.random.Generator):
    from .experiments.frozen_momentum import intercept
    s = 2.0 ** -np.arange(1, 7)
    se = 0.01 * (1.0 + s)
    a, sa, _ = intercept(s, 1.0 + 0.2 * s + se * g.standard_normal(s.size), se)
    return mean_interval(a, sa, NOMINAL), 1.0


#: interval function -> (draw one (interval, truth) from a generator, repetitions)
CALIBRATED: dict[str, tuple[Callable, int]] = {
    "stats.mean_interval": (_normal_mean, 1000),
    "stats.sample_interval": (_sample, 1000),
    "stats.t_interval (n = 4)": (_t, 1000),
    "stats.paired_difference": (_paired, 1000),
    "stats.bootstrap_interval": (_bootstrap, 400),
    "variance_reduction chi2 variance interval": (_chi2_variance, 1000),
    "frozen_momentum WLS intercept": (_wls_intercept, 1000),
    "weak_worst_case_mc secant order": (_secant_order, 1000),
}

#: the known truth of each canary claim, in the order of :func:`canary_verdicts`
EXPECTED = (True, False, True, False, True, False, True, False) + (True, False) * len(CALIBRATED)


def canary_verdicts() -> list[Verdict]:
    """The canary's claims decided by the shared helpers; their truth is :data:`EXPECTED`."""
    iv = mean_interval(1.0, 0.1)
    zb = z_value(0.95)
    eta = 2.0 ** -np.arange(2, 8)
    err = 0.7 * eta ** 2
    fit = fit_order(eta, err, 0.01 * err)
    out = []
    for x in (1.1, 1.3):
        out.append(Verdict(f"canary: {x} inside mean 1 +- z*0.1", REF, "known", iv, iv.contains(x),
                           "contains(value)"))
    for z in (1.5, 2.5):
        out.append(Verdict(f"canary: |z| = {z} passes a two-sided 95% z-test", REF, "known",
                           Value(z), np.bool_(abs(z) <= zb), "|z| <= z_0.975", zb))
    for p in (2.0, 2.05):
        out.append(Verdict(f"canary: 0.7 eta^2 has order {p:g} (two-sided)", REF, "known",
                           fit.order, fit.order.contains(p), "order interval contains p"))
    for p in (1.95, 2.05):
        out.append(Verdict(f"canary: 0.7 eta^2 has order >= {p:g}", REF, "known", fit.order,
                           consistent_with_order_at_least(fit, p), "upper end >= p"))
    return out + calibration_verdicts()


def coverage(draw: Callable, reps: int, seed: int,
             shrinks: tuple[float, ...] = (1.0,)) -> tuple[float, ...]:
    """Per factor in ``shrinks``: the fraction of ``reps`` intervals from ``draw(generator)``,
    each narrowed around its estimate by that factor, that contain their truth (one set of
    draws for all factors)."""
    g = np.random.default_rng(seed)
    hits = np.zeros(len(shrinks))
    for _ in range(reps):
        iv, truth = draw(g)
        for j, f in enumerate(shrinks):
            hits[j] += (iv.estimate - (iv.estimate - iv.low) * f <= truth
                        <= iv.estimate + (iv.high - iv.estimate) * f)
    return tuple(float(h) / reps for h in hits)


_CACHE: dict = {}


def _calibrated_functions() -> tuple:
    """The interval functions the calibration calls (a replaced one — a planted defect —
    changes the cache key, so its coverage is measured afresh)."""
    from .experiments import frozen_momentum, variance_reduction, weak_worst_case_mc
    return (mean_interval, sample_interval, t_interval, paired_difference, bootstrap_interval,
            variance_reduction._var_interval, frozen_momentum.intercept, weak_worst_case_mc.secant_order)


def calibration_verdicts(seed: int = 20240) -> list[Verdict]:
    """Per interval function of :data:`CALIBRATED`: its coverage lies in the band (true) and
    that of the same intervals narrowed by 1/√2 does (false).  Deterministic; computed once
    per process for the same functions and seed (about a second)."""
    key = (seed,) + tuple(id(f) for f in _calibrated_functions())
    if key not in _CACHE:
        _CACHE[key] = _calibration(seed)
    return list(_CACHE[key])


def _calibration(seed: int) -> list[Verdict]:
    out = []
    for i, (name, (draw, reps)) in enumerate(CALIBRATED.items()):
        half = BAND_SD * np.sqrt(NOMINAL * (1 - NOMINAL) / reps)
        band = (NOMINAL - half, NOMINAL + half)
        covs = coverage(draw, reps, seed + i, (1.0, 2 ** -0.5))
        for c, what in zip(covs, ("", " narrowed by 1/sqrt(2)")):
            out.append(Verdict(
                f"canary: {name}{what} covers its known truth at the nominal {NOMINAL:.0%}", REF,
                "known", Value(c), np.bool_(band[0] <= c <= band[1]),
                f"coverage over {reps} synthetic data sets (seed {seed + i}) inside nominal +- "
                f"{BAND_SD:g} binomial sd = [{band[0]:.4f}, {band[1]:.4f}]"))
    return out


def canary_result():
    """The canary as an :class:`~sdeverify.experiments.base.ExperimentResult` named
    ``"canary"`` (it must not pass)."""
    from .experiments.base import ExperimentResult
    return ExperimentResult("canary", {}, {"x": np.zeros(1)}, tuple(canary_verdicts()),
                            {"seed": 0, "size": "smoke"})


def machinery_problems(entry: Callable, job_passed: Callable) -> list[str]:
    """What the verdict machinery got wrong on the canary (empty: nothing).

    ``entry(name, result, figure)`` is the ``check`` command's summary entry of a finished
    check (a dict with ``"passed"`` and the table ``"rows"``, whose last column is PASS or
    FAIL) and ``job_passed(entries)`` its rule for the whole job; both are passed in so that
    the canary exercises the command's own code."""
    from .experiments.base import ExperimentResult
    problems = []
    res = canary_result()
    got = tuple(v.passed for v in res.verdicts)
    if got != EXPECTED:
        problems.append(f"claims decided {got}, known truth {EXPECTED}")
    if not all(type(v.passed) is bool for v in res.verdicts):
        problems.append("Verdict.passed is not a plain bool")
    if res.passed:
        problems.append("a result with failing verdicts passes")
    true_only = ExperimentResult("canary_true", {}, {}, tuple(v for v, t in zip(res.verdicts, EXPECTED) if t))
    if not true_only.passed:
        problems.append("a result whose verdicts all passed does not pass")
    with tempfile.TemporaryDirectory(prefix="sdeverify-canary-") as tmp:
        res.save(tmp)
        back = ExperimentResult.load(tmp, "canary")
        if tuple(v.passed for v in back.verdicts) != got or back.passed != res.passed:
            problems.append("the outcomes change on save/load")
    e_fail, e_ok = entry("canary", res, None), entry("canary_true", true_only, None)
    if e_fail["passed"] or not e_ok["passed"]:
        problems.append(f"summary entries say passed={e_fail['passed']} (failing) / {e_ok['passed']} (passing)")
    marks = tuple(r[-1] == "PASS" for r in e_fail.get("rows", []))
    if marks != EXPECTED:
        problems.append(f"table rows mark {marks}, known truth {EXPECTED}")
    if job_passed([e_ok, e_fail]) or not job_passed([e_ok, e_ok]):
        problems.append("the job's rule does not fail a job with a failing check")
    if job_passed([e_ok, {"name": "crashed", "passed": False, "error": "canary"}]):
        problems.append("the job's rule passes a job with a crashed check")
    return problems
