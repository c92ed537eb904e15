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

from .stats import consistent_with_order_at_least, fit_order, mean_interval, z_value
from .verdict import Value, Verdict

__all__ = ["EXPECTED", "canary_verdicts", "canary_result", "machinery_problems"]

#: the known truth of each canary claim, in the order of :func:`canary_verdicts`
EXPECTED = (True, False, True, False, True, False, True, False)
REF = "canary (method)"


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
