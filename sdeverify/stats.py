"""Statistics that are part of every answer: intervals, rate fits, decision rules.

Decision rules used by the checks (each check's docstring says which it applies):

* **contains(prediction)** — the prediction lies inside the 95% interval of the estimate.
* **order ≥ p** ("consistent with order at least p") — the *upper* end of the fitted order's
  95% interval is ≥ p.  A theorem's upper bound C·η^p on an error is contradicted only if
  the error provably decays slower than η^p.
* **order ≈ p** — p lies inside the order's 95% interval (two-sided: where a rate is known
  exactly; Monte Carlo fits use a 99.9% interval to keep false failures rare).
* **order = p, exact errors** — p lies inside the Richardson interval of the local orders
  (:func:`richardson_order`): the estimate the local orders converge to, ± twice the size of
  the last corrections.
* **bounded away from 0** — the *lower* end of the 95% interval of the error at the smallest
  η is > 0 and the fitted order's interval contains 0 or lies below a small threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _st

__all__ = ["z_value", "Interval", "mean_interval", "sample_interval", "paired_difference", "t_interval",
           "max_abs_interval", "OrderFit", "fit_order", "local_orders", "richardson_order",
           "consistent_with_order_at_least", "ks_two_sample", "wasserstein1",
           "bootstrap_interval"]


def z_value(level: float = 0.95, *, tails: int = 2) -> float:
    """Standard-normal quantile for a two-sided (or one-sided) interval of this level."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(_st.norm.ppf(1.0 - (1.0 - level) / tails))


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval [low, high]."""
    estimate: float
    low: float
    high: float
    level: float = 0.95

    def contains(self, value: float) -> bool:
        """Whether ``low <= value <= high`` (the rule "contains(prediction)")."""
        return bool(self.low <= value <= self.high)

    @property
    def half_width(self) -> float:
        """(high − low) / 2."""
        return 0.5 * (self.high - self.low)

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"

    def as_dict(self) -> dict[str, float]:
        """``{"estimate", "low", "high", "level"}`` as plain floats (for JSON)."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


def mean_interval(mean: float, sem: float, level: float = 0.95) -> Interval:
    """Normal-approximation interval mean ± z·sem (CLT; valid for the path counts used here)."""
    z = z_value(level)
    return Interval(float(mean), float(mean - z * sem), float(mean + z * sem), level)


def sample_interval(samples: ArrayLike, level: float = 0.95) -> Interval:
    """Interval for the mean of i.i.d. samples (any shape, flattened; at least 2):
    mean ± z·s/√n (:func:`mean_interval`)."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError("need at least 2 samples for an interval")
    return mean_interval(x.mean(), x.std(ddof=1) / np.sqrt(x.size), level)


def t_interval(samples: ArrayLike, level: float = 0.95) -> Interval:
    """Interval for the mean of n i.i.d. units (replicas, shards; any shape, flattened; n ≥ 2,
    NaN entries ignored): mean ± t_{n−1}·s/√n with Student's t quantile — exact for normal
    units, and what a handful of replicas needs (±1.96·s/√n covers only 85% at n = 4)."""
    from scipy.stats import t as student_t
    x = np.asarray(samples, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size < 2:
        raise ValueError("need at least 2 samples for an interval")
    half = float(student_t.ppf(0.5 + level / 2, x.size - 1)) * x.std(ddof=1) / np.sqrt(x.size)
    m = float(x.mean())
    return Interval(m, m - half, m + half, level)


def paired_difference(a: ArrayLike, b: ArrayLike, level: float = 0.95) -> Interval:
    """Interval for E[a − b] from paired samples (common random numbers): the variance used
    is that of the per-path difference, which is what makes CRN estimates sharp."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.size} and {b.size}")
    return sample_interval(a - b, level)


def max_abs_interval(means: ArrayLike, sems: ArrayLike, level: float = 0.95) -> Interval:
    """Interval for max_k |μ_k| from K estimates m_k ± sem_k (simultaneous, Bonferroni).

    With z_B the two-sided quantile at level 1 − (1 − level)/K, every μ_k lies in
    m_k ± z_B sem_k simultaneously with probability ≥ level, hence
    max_k |μ_k| ∈ [max_k dist(0, m_k ± z_B sem_k), max_k (|m_k| + z_B sem_k)].
    """
    m = np.abs(np.asarray(means, dtype=np.float64).ravel())
    s = np.asarray(sems, dtype=np.float64).ravel()
    if m.size == 0:
        raise ValueError("need at least one estimate")
    zb = z_value(1.0 - (1.0 - level) / m.size)
    low = np.maximum(m - zb * s, 0.0)
    return Interval(float(m.max()), float(low.max()), float((m + zb * s).max()), level)


@dataclass(frozen=True)
class OrderFit:
    """Fit err ≈ C·η^order on a log-log grid."""
    order: Interval
    log_c: float
    chi2_dof: float
    n_points: int

    def predict(self, eta: ArrayLike) -> np.ndarray:
        """The fitted power law C·η^order at ``eta`` (same shape as ``eta``)."""
        return np.exp(self.log_c) * np.asarray(eta, dtype=np.float64) ** self.order.estimate

    def as_dict(self) -> dict[str, object]:
        """The fit as plain numbers (``order`` as :meth:`Interval.as_dict`), for JSON."""
        return {"order": self.order.as_dict(), "log_c": self.log_c, "chi2_dof": self.chi2_dof,
                "n_points": self.n_points}


def fit_order(eta: ArrayLike, err: ArrayLike, err_sem: ArrayLike | None = None,
              level: float = 0.95) -> OrderFit:
    """Fit err ≈ C·η^p by weighted least squares of log err on log η, with an interval for p.

    The estimated order is what the weak-approximation checks compare with the order of
    Thm. 4.5 (docs/theory.md §6) under the decision rules of this module's docstring.
    Each point's weight is 1/Var(log err) ≈ (err/sem)² (delta method); without ``err_sem``
    (exact errors) the fit is unweighted.  When the reduced χ² exceeds 1 (the power law does
    not fit within the Monte Carlo error, e.g. higher-order terms at large η) the covariance
    is inflated by it and a Student-t quantile with n − 2 degrees of freedom is used, so the
    interval reflects both Monte Carlo error and lack of fit.

    Parameters
    ----------
    eta : (n,) positive step sizes (any order), n ≥ 3.
    err : (n,) positive errors measured at ``eta``.
    err_sem : (n,) standard errors of ``err`` (Monte Carlo), or None for exact errors.
    level : confidence level of the order's interval.

    Returns
    -------
    OrderFit
        ``order`` (an :class:`Interval` for p), ``log_c``, the reduced χ² and the number of
        points.
    """
    eta = np.asarray(eta, dtype=np.float64).ravel()
    err = np.asarray(err, dtype=np.float64).ravel()
    if eta.size != err.size or eta.size < 3:
        raise ValueError("fit_order needs at least 3 (eta, err) pairs of equal length")
    if np.any(eta <= 0) or np.any(err <= 0):
        raise ValueError("fit_order needs positive eta and err (log-log fit)")
    X = np.column_stack([np.ones_like(eta), np.log(eta)])
    y = np.log(err)
    if err_sem is None:
        w = np.ones_like(y)
    else:
        rel = np.asarray(err_sem, dtype=np.float64).ravel() / err
        w = 1.0 / np.maximum(rel, 1e-300) ** 2
    W = np.diag(w)
    cov = np.linalg.inv(X.T @ W @ X)
    beta = cov @ X.T @ W @ y
    resid = y - X @ beta
    dof = eta.size - 2
    chi2 = float(resid @ W @ resid / dof) if dof > 0 else 0.0
    if err_sem is None:  # exact errors: residual scatter is the only uncertainty
        cov = cov * float(resid @ resid / dof)
        q = float(_st.t.ppf(1.0 - (1.0 - level) / 2, dof))
    elif chi2 > 1.0:  # lack of fit beyond Monte Carlo error: inflate
        cov = cov * chi2
        q = float(_st.t.ppf(1.0 - (1.0 - level) / 2, dof))
    else:
        q = z_value(level)
    se = float(np.sqrt(cov[1, 1]))
    order = Interval(float(beta[1]), float(beta[1] - q * se), float(beta[1] + q * se), level)
    return OrderFit(order, float(beta[0]), chi2, int(eta.size))


def local_orders(x: ArrayLike, err: ArrayLike) -> np.ndarray:
    """Local orders log(e_i/e_{i+1}) / log(x_i/x_{i+1}) between consecutive grid points, shape (n − 1,)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    err = np.asarray(err, dtype=np.float64).ravel()
    if x.size != err.size or x.size < 2 or np.any(x <= 0) or np.any(err <= 0):
        raise ValueError("local_orders needs >= 2 positive (x, err) pairs of equal length")
    return np.log(err[:-1] / err[1:]) / np.log(x[:-1] / x[1:])


def richardson_order(x: ArrayLike, err: ArrayLike) -> Interval:
    """The asymptotic order of *exact* (Monte-Carlo-free) errors e(x) = C x^p (1 + D x + …).

    The local order between x_{i} and x_{i+1} = r x_i is p_i = p + O(x_i), so its error
    shrinks by the factor r per grid point; Richardson extrapolation of the last two gives
    p̂ = p_n + (p_n − p_{n−1}) r/(1 − r).  The interval is p̂ ± 2·max(|Δ_n|, |Δ_{n−1}|)·r/(1 − r)
    with Δ_j = p_j − p_{j−1}: twice the largest of the last two corrections, so that a
    slowly converging grid gives a wide interval.  Valid in the asymptotic regime, where the
    corrections shrink by ≈ r per grid point; far from it (local orders still drifting by
    more than r per point) the extrapolation is not trustworthy, so callers restrict the
    grid to the asymptotic range (the checks: κ ≤ 0.1).  ``x`` must be a
    geometric grid (any order) with at least 4 points; the smallest x are used.  The returned
    interval's ``level`` is 0: it is a deterministic error estimate, not a confidence interval.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    err = np.asarray(err, dtype=np.float64).ravel()
    if x.size < 4:
        raise ValueError("richardson_order needs at least 4 grid points (3 local orders)")
    order = np.argsort(-x)
    x, err = x[order], err[order]
    p = local_orders(x, err)
    ratios = x[1:] / x[:-1]
    r = float(ratios[-1])
    if not np.allclose(ratios[-3:], r, rtol=1e-6) or not 0 < r < 1:
        raise ValueError("richardson_order needs a geometric grid at its small end")
    f = r / (1.0 - r)
    d_n, d_prev = p[-1] - p[-2], p[-2] - p[-3]
    est = float(p[-1] + d_n * f)
    hw = float(2.0 * max(abs(d_n), abs(d_prev)) * f)
    return Interval(est, est - hw, est + hw, level=0.0)   # level 0: an error estimate, not a CI


def consistent_with_order_at_least(fit: OrderFit, p: float) -> bool:
    """Rule "order ≥ p": the upper end of the order's interval is ≥ p."""
    return bool(fit.order.high >= p)


def ks_two_sample(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov statistic and p-value."""
    r = _st.ks_2samp(np.ravel(a), np.ravel(b))
    return float(r.statistic), float(r.pvalue)


def wasserstein1(a: ArrayLike, b: ArrayLike) -> float:
    """Wasserstein-1 distance between two empirical 1-D distributions,
    ``∫ |F_a(t) − F_b(t)| dt`` — ``scipy.stats.wasserstein_distance``'s value, summed by NumPy
    instead of a BLAS dot product: the result's bits then do not depend on how many threads
    the BLAS library runs (scipy's ``vecdot`` splits a long sum over OpenBLAS's threads, so a
    Dask worker with one BLAS thread and a driver with two disagreed in the last ulps)."""
    a = np.sort(np.ravel(np.asarray(a, dtype=np.float64)))
    b = np.sort(np.ravel(np.asarray(b, dtype=np.float64)))
    if a.size == 0 or b.size == 0:
        raise ValueError("wasserstein1 needs two non-empty samples")
    t = np.sort(np.concatenate([a, b]))
    F_a = np.searchsorted(a, t[:-1], side="right") / a.size
    F_b = np.searchsorted(b, t[:-1], side="right") / b.size
    return float(np.sum(np.abs(F_a - F_b) * np.diff(t)))


def bootstrap_interval(stat: Callable[..., float], samples: Sequence[np.ndarray],
                       n_boot: int = 200, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``stat(*samples)``, resampling each sample (an array
    indexed along its first axis) with replacement, ``n_boot`` times."""
    g = np.random.default_rng(seed)
    est = float(stat(*samples))
    vals = np.empty(n_boot)
    for i in range(n_boot):
        vals[i] = stat(*[s[g.integers(0, len(s), len(s))] for s in samples])
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(est, float(lo), float(hi), level)
