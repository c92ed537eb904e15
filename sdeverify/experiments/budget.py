"""The main job's false-failure budget: how often a *correct* engine may fail.

A run of ``sdeverify check`` fails if any verdict fails.  For the verdicts that are
statistical tests of an exactly known value (a closed form inside an interval, a
distribution test, an interval's coverage), the probability of failing by chance is set by
their level; each check gets a share of the job's budget below and divides it among its
tests (Bonferroni), so by the union bound

    P(a correct engine fails the job through these verdicts) <= sum(ALPHA.values()).

The other verdicts cannot fail by chance (deterministic comparisons: transcriptions,
backends, closed forms against each other, Richardson intervals of exact errors) or test
effects far from their thresholds (an order > 2 whose true value is 3; a gap that is many
standard errors from 0); their false-failure rates are measured by rerunning with other
seeds (``python benchmarks/false_failures.py NAME``, paper_checks.md).
"""
from __future__ import annotations

#: design bound on the per-run false-failure probability of the calibrated verdicts
MAIN_JOB_ALPHA: float = 5e-3

#: each check's share: the union bound over its calibrated tests
ALPHA: dict[str, float] = {
    "instruments": 5e-4,          # generator moments, KS, independence, interval coverage
    "descent_lemma": 6e-4,        # Taylor prediction at 2 points (5e-4) + closed-form terms (1e-4)
    "variance_reduction": 5e-4,   # closed forms inside chi^2 / normal intervals at every (beta, k)
    "weak_approximation": 5e-4,   # Monte Carlo estimator against the exact error
    "sde_limit": 1e-3,            # 4 two-sided order tests on CosineWell (conservative errors)
    "slow_sde": 7e-4,             # KS against the exact law (5e-4) + general-formula path (1e-4)
                                  # + SGD -> slow SDE order = 1, two-sided, 2 problems (1e-4)
    "svag": 5e-4,                 # Monte Carlo gap = exact gap at every l (quadratic)
    "batch_size": 1e-4,           # minibatch oracle's mean and variance
    "sgdm_descent_lemma": 3e-4,   # App A.2: Taylor prediction at 2 points (2e-4) + terms (1e-4)
    "frozen_momentum": 3e-4,      # App B.2: extrapolated mean and variance limits
}


def share(check: str, n_tests: int = 1) -> float:
    """The per-test false-failure rate of one of ``n_tests`` calibrated tests of ``check``."""
    if n_tests < 1:
        raise ValueError(f"n_tests must be >= 1, got {n_tests}")
    return ALPHA[check] / n_tests
