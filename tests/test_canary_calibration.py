"""The canary's calibration of the verdicts' interval functions: every function covers its
known truth at the nominal level, and each kind of interval defect turns a known-true claim
false (so `check` fails before any check runs)."""
import numpy as np
import pytest

from sdeverify import canary, runner, stats
from sdeverify.experiments import frozen_momentum, variance_reduction, weak_worst_case_mc


def _flipped():
    vs = canary.calibration_verdicts()
    want = canary.EXPECTED[len(canary.EXPECTED) - len(vs):]
    return [v.claim for v, w in zip(vs, want) if v.passed != w]


def test_every_calibrated_interval_covers_at_nominal():
    assert _flipped() == []
    assert len(canary.EXPECTED) == 8 + 2 * len(canary.CALIBRATED)


def _t_with_normal_quantile(samples, level=0.95):
    x = np.asarray(samples, dtype=np.float64).ravel()
    return stats.mean_interval(x.mean(), x.std(ddof=1) / np.sqrt(x.size), level)


def _chi2_fixed_width(s2, n, level):           # a fixed ±20% instead of the χ² quantiles
    return stats.Interval(s2, 0.8 * s2, 1.2 * s2, level)


@pytest.mark.parametrize("defect", ["t_uses_normal_quantile", "sample_sem_without_sqrt",
                                    "bootstrap_sorted_wrong", "chi2_fixed_width",
                                    "wls_variance_for_se", "paired_ignores_pairing",
                                    "secant_se_not_over_log_ratio"])
def test_canary_catches_interval_defects(monkeypatch, defect):
    if defect == "t_uses_normal_quantile":      # covers ~0.86 at n = 4
        monkeypatch.setattr(canary, "t_interval", _t_with_normal_quantile)
    elif defect == "sample_sem_without_sqrt":   # s/n instead of s/√n: far too narrow
        monkeypatch.setattr(canary, "sample_interval", lambda x, level=0.95: stats.mean_interval(
            np.mean(x), np.std(x, ddof=1) / np.size(x), level))
    elif defect == "bootstrap_sorted_wrong":    # quantiles at (1 ± level)/2 of the wrong tail: too wide
        real = stats.bootstrap_interval
        monkeypatch.setattr(canary, "bootstrap_interval", lambda *a, **k: (lambda iv: stats.Interval(
            iv.estimate, 2 * iv.low - iv.estimate, 2 * iv.high - iv.estimate, iv.level))(real(*a, **k)))
    elif defect == "chi2_fixed_width":
        monkeypatch.setattr(variance_reduction, "_var_interval", _chi2_fixed_width)
    elif defect == "wls_variance_for_se":       # the intercept's variance reported as its se
        real = frozen_momentum.intercept
        monkeypatch.setattr(frozen_momentum, "intercept",
                            lambda s, r, se: (lambda a, sa, b: (a, sa ** 2, b))(*real(s, r, se)))
    elif defect == "paired_ignores_pairing":    # a sd of a alone: too wide for correlated pairs
        monkeypatch.setattr(canary, "paired_difference", lambda a, b, level=0.95: stats.mean_interval(
            np.mean(a) - np.mean(b), np.std(a, ddof=1) / np.sqrt(np.size(a)), level))
    elif defect == "secant_se_not_over_log_ratio":   # log-error se not divided by log(eta ratio)
        real = weak_worst_case_mc.secant_order
        monkeypatch.setattr(weak_worst_case_mc, "secant_order", lambda etas, e, level=0.95: (
            lambda iv, r: stats.Interval(iv.estimate, iv.estimate - (iv.estimate - iv.low) * r,
                                         iv.estimate + (iv.high - iv.estimate) * r, level))(
            real(etas, e, level), float(np.log(etas[0] / etas[-1]))))
    assert _flipped(), defect
    _, problems = runner.canary_row()
    assert problems, defect
