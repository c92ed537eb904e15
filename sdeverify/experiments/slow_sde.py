"""Sec. 5, Thm. 5.5: near a manifold of minimizers, SGD and SGDM run for t/η² steps with a
fixed noise scale σ converge to the same slow SDE for Φ(x) (THEORY §8).

Two problems with closed-form slow SDEs (:mod:`sdeverify.problems.manifolds`):

* valley L = ½(1 + x²)y², label-noise-like normal noise s_y² = c·h and tangent noise s_x² = a:
  the slow SDE is the OU process dx = −θx dt + σ√a dW, θ = cσ²/2 (Gaussian law known);
  test functions h₁ = Φ(x)₀, h₂ = Φ(x)₀²;
* sphere L = ¼(‖x‖² − 1)² in R³, Σ = s²I (s = 0.8): Brownian motion on S² at rate σ²s²;
  test functions h₁ = ⟨Φ(x), ζ₀⟩ (mean exp(−σ²s²t)), h₂ = ⟨Φ(x), ζ₀⟩² (mean
  1/3 + 2/3 exp(−3σ²s²t)); law of h₁ from the Legendre series of the heat kernel.

Noise scale σ = 1.25 by default (≠ 1, so that the factor σ² in front of Σ is tested).
Optimizers (common random numbers): SGD(η); SGDM(η, β = 0.9); SGDM(η, 1 − β = λη^α) with
α = 0.5.  For each η, t/η² steps; Φ(x) at the recorded times t.

Estimators.  The SGD − slow-SDE error E h(Φ(x_K)) − E h(ζ_t) is estimated as
``mean[h(Φ(x_K)) − h(z_K)] + (E h(z_K) − E h(ζ_t))`` where z is the Euler scheme (dt = η²)
of the slow SDE driven by the same draws (:func:`~sdeverify.slow_sde.coupled_slow_sde`,
paired path by path) and the second term is exact (closed-form Euler moments).  SGDM − SGD
is the paired mean of h(Φ(x_SGDM)) − h(Φ(x_SGD)).  Intervals are 95% normal intervals of
paired means.  Distributions at the final time: one-sample Kolmogorov–Smirnov test of h₁
against the exact slow-SDE law, and its Wasserstein-1 distance with a percentile bootstrap
interval (basic bootstrap, since resampling biases W1 upwards; null level: the coupled Euler samples, which follow the slow SDE up to O(η²)).

Distances between laws at the final time T: W1 between the samples of h₁(Φ(x_T)) and those
of the coupled Euler scheme (paired basic bootstrap; the coupling removes the 1/√N floor an
independent sample would put under W1, and the scheme's law is O(η²) from the slow SDE's);
also, for reference, W1 to the exact law and the one-sample KS test against it.

Decision rules (per problem; h₁ at the final time T):

1. **SGD → slow SDE at order 1**: the fitted order p of |error| ~ C η^p (stats.fit_order,
   weighted by (err/sem)², lack of fit inflates the interval) must contain the order THEORY
   §8 derives, 1 (the finite-η corrections — the normal variance, its equilibration time,
   Φ(x) − x, the fast noise in the tangent motion — are all of relative size η), two-sided,
   at level 1 − ``SGD_ORDER_ALPHA``/2 per problem (a share of the main job's budget).  A slow
   drift 10% off leaves an O(1) error (order ≈ 0: fails); so would a rate that is not 1.
2. **SGDM − SGD → 0**, for β = 0.9 and for α = 0.5: fitted order of the paired difference,
   lower end of its 95% interval > 0 (one-sided: Thm 5.5 claims convergence, no rate;
   THEORY §13's heuristic order 1 is reported as a finding — on the sphere at β = 0.9 the
   gap closes at order ≈ 2, outside it).
3. **same law at η_min**: the one-sample Kolmogorov–Smirnov test of h₁(Φ(x_T)) against the
   exact slow-SDE law does not reject at the check's share of the main job's false-failure
   budget (``experiments/budget.py``; Bonferroni over the three optimizers and the problems;
   a fixed level of 0.01 gave 1 false failure in 30 seeds)
   at the smallest η.  (The fitted orders of W1 to the coupled slow SDE are reported in
   ``data`` and the figure, not used as a rule: at quick size their intervals are too wide
   on the sphere.)
4. **the general formula (Thm 5.5) = the closed forms**: the drift
   :func:`~sdeverify.slow_sde.slow_coefficients` computes from the Hessian, the noise, the
   tangent projector and the third-derivative contraction equals each problem's closed-form
   ``slow_drift`` at random points of Γ (max |difference| ≤ 1e-9 (1 + max |b|)), on the
   valley of this check, a generic valley (h, s_x², s_y² polynomials, m = 2) and a sphere in
   R⁴ with s = 0.7 — σ = 1.25 ≠ 1 throughout.  On the sphere only the −½H⁺∂²(∇L)[Σ_∥] term
   is non-zero, on the valley only the −½P∂²(∇L)[𝓛(Σ_⊥)] term: each term is tested.
   The built-in noises commute with the tangent projector P (there PΣ = PΣP), so the drift
   is also recomputed with Σ given tangent-normal cross terms ε(PAQ + QAᵀP), Q = I − P,
   which Thm 5.5's drift must ignore (it reads Σ only through PΣP and QΣQ): max relative
   change ≤ 1e-9 (2e-16 measured; Σ_∥ = PΣ instead of PΣP changes it by 3e-2).
5. **a problem through the general path**: the valley's slow SDE integrated by
   :func:`~sdeverify.slow_sde.solve_slow_sde` with ``closed_form=False`` (the generic
   formula at every step), dt = 0.01, t = 1, under a step learning-rate schedule
   λ_t = 0.6 → 0.3 at t = ½ (the slow SDE of η_t = λ_t η has drift λ_t² b and diffusion
   λ_t σ Σ^½: a constant λ = 1 could not tell λ from λ²); mean and variance of x_t against
   the exact moments of that Euler scheme (``Valley.ou_euler_moments_scheduled``, a plain
   recursion), two-sided z-tests at family-wise 99.99% (a dropped or mis-scaled drift term
   moves the mean by > 20 sd).
"""
from __future__ import annotations

import time

import numpy as np
from scipy import stats as st

from .. import config
from ..optim import SGD, SGDM
from ..problems.manifolds import Sphere, Valley
from ..rng import substream
from ..slow_sde import coupled_slow_sde, slow_coefficients, solve_slow_sde
from ..stats import Interval, bootstrap_interval, fit_order, wasserstein1, z_value
from ..figstyle import figsize, fit_line, legend_below, styled
from .base import (Call, ExperimentResult, Progress, Value, Verdict, experiment, run_many,
                   save_figure, simulate, subplots, tick)
from .budget import ALPHA

NAME = "slow_sde"
TITLE = "Sec 5 / Thm 5.5: SGD and SGDM converge to the same slow SDE on the manifold"

SIZES = {
    "smoke": dict(etas=(0.1, 0.07, 0.05, 0.035, 0.025, 0.0175), paths=4096, times=(0.5, 1.0), n_boot=30),
    "quick": dict(etas=(0.1, 0.07, 0.05, 0.035, 0.025, 0.0175, 0.0125), paths=4096,
                  times=(0.25, 0.5, 1.0), n_boot=50),
    "full": dict(etas=(0.08, 0.056, 0.04, 0.028, 0.02, 0.014, 0.01, 0.007, 0.005), paths=10240,
                 times=(0.25, 0.5, 1.0), n_boot=200),
}
PROBLEMS = ("valley", "sphere")
OPT_LABELS = ("SGD", "SGDM b=0.9", "SGDM a=0.5")
TEST_LABELS = {"valley": ("x", "x^2"), "sphere": ("<z,z0>", "<z,z0>^2")}


# ---- problem set-ups -----------------------------------------------------------------------
class _Case:
    """A problem, its start, its test functions and the exact slow-SDE quantities."""

    def __init__(self, name: str, sigma: float, c: float = 2.0, a: float = 0.25):
        self.name, self.sigma = name, sigma
        if name == "valley":
            self.problem = Valley.label_noise_like(h=(1.0, 0.0, 1.0), c=c, sx2=a)
            self.x0 = np.array([1.0, 0.0])
        else:
            self.problem = Sphere(3, noise_std=0.8)       # σ²s² = 1 at σ = 1.25
            self.x0 = np.array([1.0, 0.0, 0.0])

    def stat(self, Z):
        """The scalar statistic h₁ of projected states (…, d)."""
        return Z[..., 0]

    def tests(self, Z):
        s = self.stat(Z)
        return np.stack([s, s * s], axis=-2)          # (…, 2, paths)

    def exact(self, t):
        t = np.asarray(t, dtype=np.float64)
        if self.name == "valley":
            m, v = self.problem.ou_moments(self.x0[0], t, self.sigma)
            return np.stack([m, m * m + v])
        return np.stack([self.problem.correlation_decay(t, self.sigma), self.problem.cos2_mean(t, self.sigma)])

    def euler_exact(self, eta, steps):
        if self.name == "valley":
            m, v = self.problem.ou_euler_moments(self.x0[0], eta, steps, self.sigma)
            return np.stack([m, m * m + v])
        m1, m2 = self.problem.euler_moments(eta, steps, self.sigma)
        return np.stack([m1, m2])

    def cdf(self, t):
        if self.name == "valley":
            m, v = self.problem.ou_moments(self.x0[0], t, self.sigma)
            return st.norm(m, np.sqrt(v)).cdf
        return lambda u: self.problem.cos_cdf(u, t, self.sigma)

    def support(self, t):
        if self.name == "valley":
            m, v = self.problem.ou_moments(self.x0[0], t, self.sigma)
            return float(m - 9 * np.sqrt(v)), float(m + 9 * np.sqrt(v))
        return -1.0, 1.0


def w1_to_cdf(samples, grid, F_grid) -> float:
    """Wasserstein-1 distance ∫|F_n − F| between an empirical law and a continuous CDF F
    tabulated on ``grid`` (which must cover the support up to negligible mass)."""
    s = np.sort(np.asarray(samples, dtype=np.float64))
    Fn = np.searchsorted(s, grid, side="right") / s.size
    return float(np.trapezoid(np.abs(Fn - F_grid), grid))


def _optimizers(eta: float, beta: float, alpha: float, lam: float):
    return [SGD(eta, name=OPT_LABELS[0]), SGDM(eta, beta, name=OPT_LABELS[1]),
            SGDM(eta, 1.0 - lam * eta ** alpha, name=OPT_LABELS[2])]


#: most path·steps one task simulates (SGD, both SGDM and the coupled slow SDE, ≈ 0.4 s on
#: this project's CPU): a point with more is cut into path shards (multiples of
#: ``config.BLOCK``), so that a cluster's workers share the small-η points (40 000 steps at
#: η = 0.005); the statistics see the shards joined, so the bits do not depend on the cut
SHARD_WORK = 2 ** 24


def _steps(cfg: dict, i: int) -> tuple[float, int, np.ndarray]:
    """η, the step count t/η² and the recorded steps of point ``i``."""
    etas, times = np.asarray(cfg["etas"], float), np.asarray(cfg["times"], float)
    eta = etas[i]
    K = int(round(times[-1] / eta ** 2))
    rec = np.unique(np.round(np.concatenate([[0.0], times]) / eta ** 2).astype(np.int64))
    return eta, K, rec


def path_shards(cfg: dict, i: int) -> list[tuple[int, int]]:
    """(first path, count) of each shard of point ``i``: at most :data:`SHARD_WORK`
    path·steps each (at least one ``config.BLOCK`` of paths)."""
    K, N = _steps(cfg, i)[1], int(cfg["paths"])
    per = max(config.BLOCK, (SHARD_WORK // K) // config.BLOCK * config.BLOCK)
    return [(a, min(per, N - a)) for a in range(0, N, per)]


def _eta_paths(name: str, cfg: dict, seed: int, i: int, start: int, count: int) -> dict:
    """Paths ``start .. start + count − 1`` of one problem at one η (``cfg["etas"][i]``):
    SGD and both SGDM run t/η² steps (states projected by Φ at the recorded times after 0),
    next to the coupled Euler scheme of the slow SDE on the same paths' draws; and the
    seconds each took.  One task (a :class:`~sdeverify.dispatch.Call`: on a cluster it runs
    on a worker, its ``simulate`` call too)."""
    case = _Case(name, cfg["sigma"])
    eta, K, rec = _steps(cfg, i)
    opts = _optimizers(eta, cfg["beta"], cfg["alpha"], cfg["lam"])
    t0 = time.perf_counter()
    res = simulate(case.problem, opts, case.x0, steps=K, paths=count, path_offset=start,
                   sigma=case.sigma, seed=seed, record=rec, observables=["loss"], store_states=True)
    t1 = time.perf_counter()
    Z = coupled_slow_sde(case.problem, case.x0, eta=eta, steps=K, paths=count, sigma=case.sigma,
                         seed=seed, record=rec, path_offset=start)
    wall = np.array([t1 - t0, time.perf_counter() - t1])
    return dict(phi=case.problem.project(res.states[:, 1:]), Z=Z, wall=wall)


def _eta_point(name: str, cfg: dict, seed: int, i: int, shards: list) -> dict:
    """The statistics of one problem at one η from its path shards (:func:`_eta_paths`, in
    path order, joined here) — paired weak errors against the slow SDE (exact Euler-moment
    correction added) and SGDM − SGD at the recorded times, KS tests and W1 bootstraps at T,
    the histograms at the smallest η.  One task's work (a :class:`~sdeverify.dispatch.Call`).
    Returns the point's slices of the arrays :func:`_case_data` stacks over η."""
    case = _Case(name, cfg["sigma"])
    etas, times = np.asarray(cfg["etas"], float), np.asarray(cfg["times"], float)
    eta, n_t, n_opt = etas[i], len(times), 3
    bias = np.zeros((n_opt, 2, n_t))
    bias_sem = np.zeros_like(bias)
    diff = np.zeros_like(bias)
    diff_sem = np.zeros_like(bias)
    ks = np.zeros((n_opt + 1, 2))                # (statistic, p-value); last row: Euler
    w1 = np.zeros((n_opt + 1, 3))                # (estimate, low, high) to the exact law
    w1c = np.zeros((n_opt, 3))                   # to the coupled Euler samples (paired)
    T = times[-1]
    rec = _steps(cfg, i)[2]
    phi = np.concatenate([sh["phi"] for sh in shards], axis=2)   # (n_opt, n_t, N, d), t = 0 dropped
    Z = np.concatenate([sh["Z"] for sh in shards], axis=1)       # (n_rec, N, d)
    wall = np.sum([sh["wall"] for sh in shards], axis=0)
    hz = case.tests(Z[1:])                           # (n_t, 2, N)
    hx = case.tests(phi)                             # (n_opt, n_t, 2, N)
    corr = case.euler_exact(eta, rec[1:]) - case.exact(rec[1:] * eta ** 2)   # (2, n_t)
    for j in range(n_opt):
        d = hx[j] - hz                                # (n_t, 2, N)
        ok = np.isfinite(d)
        for k in range(n_t):
            for h in range(2):
                v = d[k, h][ok[k, h]]
                bias[j, h, k] = v.mean() + corr[h, k]
                bias_sem[j, h, k] = v.std(ddof=1) / np.sqrt(v.size)
                if j > 0:
                    e = (hx[j, k, h] - hx[0, k, h])
                    e = e[np.isfinite(e)]
                    diff[j, h, k] = e.mean()
                    diff_sem[j, h, k] = e.std(ddof=1) / np.sqrt(e.size)
    # distributions at T
    cdf, (lo, hi) = case.cdf(T), case.support(T)
    grid = np.linspace(lo, hi, 4001)
    F_grid = cdf(grid)
    samples = [case.stat(phi[j, -1]) for j in range(n_opt)] + [case.stat(Z[-1])]
    for j, s in enumerate(samples):
        s = s[np.isfinite(s)]
        r = st.kstest(s, cdf)
        ks[j] = r.statistic, r.pvalue
        iv = bootstrap_interval(lambda x: w1_to_cdf(x, grid, F_grid), (s,), n_boot=cfg["n_boot"],
                                seed=substream(seed, f"slow_sde.w1_bootstrap.eta{i}", j))
        # basic (reverse-percentile) bootstrap: the resampled W1 is biased upwards
        w1[j] = iv.estimate, max(0.0, 2 * iv.estimate - iv.high), 2 * iv.estimate - iv.low
    zs = case.stat(Z[-1])
    for j in range(n_opt):
        xy = np.column_stack([samples[j], zs])
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        iv = bootstrap_interval(lambda a: wasserstein1(a[:, 0], a[:, 1]), (xy,), n_boot=cfg["n_boot"],
                                seed=substream(seed, f"slow_sde.w1_coupled_bootstrap.eta{i}", j))
        w1c[j] = iv.estimate, max(0.0, 2 * iv.estimate - iv.high), 2 * iv.estimate - iv.low
    out = dict(bias=bias, bias_sem=bias_sem, diff=diff, diff_sem=diff_sem, ks=ks, w1=w1, w1c=w1c,
               wall=wall)
    if i == len(etas) - 1:
        edges = np.linspace(lo, hi, 61) if case.name == "sphere" else \
            np.linspace(*(np.array([-4.5, 4.5]) * np.sqrt(case.exact(T)[1] - case.exact(T)[0] ** 2)
                          + case.exact(T)[0]), 61)
        out.update(hist=np.stack([np.histogram(s, bins=edges, density=True)[0] for s in samples]),
                   hist_edges=edges, cdf_edges=cdf(edges))
    return out


def _case_data(name: str, cfg: dict, points: list) -> dict:
    """A problem's arrays from its points (:func:`_eta_point`, in η order): per-η slices
    stacked on axis 1 (axis 0 of ``wall``), the histograms of the last point, the exact
    slow-SDE curves."""
    case = _Case(name, cfg["sigma"])
    etas, times = np.asarray(cfg["etas"], float), np.asarray(cfg["times"], float)
    T = times[-1]
    p, last = name, points[-1]
    data = {f"{p}_etas": etas, f"{p}_times": times}
    for k in ("bias", "bias_sem", "diff", "diff_sem", "ks", "w1", "w1c"):
        data[f"{p}_{k}"] = np.stack([r[k] for r in points], axis=1)
    data.update({f"{p}_wall": np.stack([r["wall"] for r in points]), f"{p}_hist": last["hist"],
                 f"{p}_hist_edges": last["hist_edges"], f"{p}_exact_cdf_edges": last["cdf_edges"],
                 f"{p}_exact_curve_t": np.linspace(0, T, 101),
                 f"{p}_exact_curve": case.exact(np.linspace(0, T, 101)),
                 f"{p}_exact_at_times": case.exact(times)})
    return data


def ks_power_valley(rel_drift_error: float, paths: int, level: float, reps: int = 400,
                    seed: int = 0, sigma: float = 1.25, T: float = 1.0) -> float:
    """Power of rule 3 (the one-sample KS test of h₁ = x at time T against the valley's exact
    law) against a slow drift that is off by the factor 1 + ``rel_drift_error``: the fraction
    of ``reps`` samples of ``paths`` draws from the OU law with θ' = (1 + err)θ (the SGD of a
    model whose drift is wrong, at η → 0) that the test rejects at ``level``."""
    from scipy import stats as st
    case = _Case("valley", sigma)
    P, x0 = case.problem, float(case.x0[0])
    m, v = P.ou_moments(x0, T, sigma)
    theta = float(np.log(x0 / m) / T)                         # the check's θ = cqmσ²/2
    a = float(v) * 2 * theta / (sigma ** 2 * (1 - np.exp(-2 * theta * T)))   # tangent noise s_x²
    th = (1 + rel_drift_error) * theta
    m2 = x0 * np.exp(-th * T)
    v2 = sigma ** 2 * a * (1 - np.exp(-2 * th * T)) / (2 * th)
    g = np.random.default_rng(seed)
    cdf = st.norm(float(m), float(np.sqrt(v))).cdf
    rej = sum(st.kstest(g.normal(m2, np.sqrt(v2), paths), cdf).pvalue < level for _ in range(reps))
    return rej / reps


def _fit(etas, err, sem, level: float = 0.95):
    """fit_order on |err| (points with err = 0 dropped); None when < 3 points remain."""
    a = np.abs(err)
    m = a > 0
    if m.sum() < 3:
        return None
    return fit_order(np.asarray(etas)[m], a[m], np.asarray(sem)[m], level=level)


#: the order THEORY §8 predicts for SGD's weak error against the slow SDE (finite-η
#: corrections of relative size η: normal variance, equilibration, Φ(x) − x, fast noise)
SGD_PREDICTED_ORDER = 1.0
#: family-wise false-failure level of the two-sided SGD order tests (one per problem)
SGD_ORDER_ALPHA = 1e-4


def sgd_order_level(n_problems: int) -> float:
    """Confidence level of each SGD → slow-SDE order interval: the share ``SGD_ORDER_ALPHA``
    of the main job's budget (``experiments/budget.py``), Bonferroni over the problems."""
    return 1.0 - SGD_ORDER_ALPHA / n_problems


def ks_level(n_problems: int) -> float:
    """Per-test level of the KS rule (rule 3): what is left of the check's budget share after
    the general-path and SGD-order tests, Bonferroni over 3 optimizers and the problems."""
    return (ALPHA[NAME] - GENERAL_PATH_ALPHA - SGD_ORDER_ALPHA) / (3 * n_problems)


def poly_fit(etas, err, sem, level: float = 0.95):
    """Weighted least squares err ≈ a η + b η² (the two leading orders of a weak error);
    returns (Interval a, Interval b) with normal intervals (scaled by √χ² when χ²/dof > 1)."""
    etas, err, sem = (np.asarray(v, dtype=np.float64) for v in (etas, err, sem))
    X = np.column_stack([etas, etas ** 2])
    w = 1.0 / np.maximum(sem, 1e-300) ** 2
    cov = np.linalg.inv(X.T @ (X * w[:, None]))
    coef = cov @ X.T @ (w * err)
    dof = max(etas.size - 2, 1)
    chi2 = float(np.sum(w * (err - X @ coef) ** 2) / dof)
    if chi2 > 1.0:
        cov = cov * chi2
    z = st.norm.ppf(0.5 + level / 2)
    se = np.sqrt(np.diag(cov))
    return tuple(Interval(float(c), float(c - z * s), float(c + z * s), level) for c, s in zip(coef, se))


#: family-wise false-failure level of the general-path run (mean and variance z-tests); at
#: 1e-3 one seed in 100 failed (seed 85, mean z = 3.95): 1e-4 keeps the main job's budget
GENERAL_PATH_ALPHA = 1e-4


#: problems on which the general slow-SDE drift is compared with the closed forms
def general_formula_problems() -> dict:
    return {"valley of this check": Valley.label_noise_like(h=(1.0, 0.0, 1.0), c=2.0, sx2=0.25),
            "generic valley (m = 2)": Valley(h=(1.0, 0.5, 1.0, 0.3), sx2=(0.2, 0.1), sy2=(0.5, 0.2, 0.3), m=2),
            "sphere in R^4, s = 0.7": Sphere(4, noise_std=0.7)}


class _CrossNoise:
    """A problem whose noise covariance gets tangent-normal cross terms at Γ:
    Σ' = Σ + ε (P A Q + Q Aᵀ P), Q = I − P, so PΣ'P = PΣP and QΣ'Q = QΣQ; ε per point a
    quarter of λ_min(Σ)/‖A‖₂ keeps Σ' positive definite.  Given through its Cholesky
    factor; everything else is the wrapped problem's."""

    def __init__(self, problem, A: np.ndarray):
        self._p, self._A = problem, A

    def __getattr__(self, name):
        return getattr(self._p, name)

    def noise_sqrt_at(self, zeta):
        S = self._p.noise_sqrt_at(zeta)
        P = self._p.tangent_projector(zeta)
        C = P @ self._A @ (np.eye(self._p.dim) - P)
        sig = S @ np.swapaxes(S, -1, -2)
        eps = 0.25 * np.linalg.eigvalsh(sig)[..., :1, None] / np.linalg.norm(self._A, 2)
        return np.linalg.cholesky(sig + eps * (C + np.swapaxes(C, -1, -2)))


def points_on_manifold(P, g: np.random.Generator, n: int = 64) -> np.ndarray:
    """``n`` random points of Γ: a valley's x uniform in [−1, 1] (y = 0), otherwise the
    projection Φ of standard normal points."""
    if isinstance(P, Valley):
        Z = np.zeros((n, P.dim))
        Z[:, 0] = g.uniform(-1.0, 1.0, n)
        return Z
    return P.project(g.standard_normal((n, P.dim)))


def cross_term_invariance(sigma: float, g: np.random.Generator) -> float:
    """Max relative change of the general slow drift when Σ gets tangent-normal cross terms
    (:class:`_CrossNoise`), over the problems of :func:`general_formula_problems`."""
    worst = 0.0
    for P in general_formula_problems().values():
        Z = points_on_manifold(P, g)
        A = g.standard_normal((P.dim, P.dim))
        b0 = slow_coefficients(P, Z, sigma)[0]
        b1 = slow_coefficients(_CrossNoise(P, A), Z, sigma)[0]
        worst = max(worst, float(np.abs(b1 - b0).max() / (1.0 + np.abs(b0).max())))
    return worst


def general_path_schedule(t: float) -> float:
    """λ_t of the general-path run: a step decay 0.6 → 0.3 at t = ½ (never 1, and on the same
    side of 1 throughout, so λ for λ² in the drift (mean off by 53 sd at 4096 paths) or √λ
    for λ in the diffusion (variance off by 51 sd) cannot cancel between the two parts)."""
    return 0.6 if t < 0.5 else 0.3


def sgd_order_verdict(p: str, h1: str, T: float, etas, err, sem, lin, level: float) -> Verdict:
    """Rule 1: SGD's weak error against the slow SDE, E h₁(Φ(x_K)) − E h₁(ζ_T), has the
    order THEORY §8 predicts (1), two-sided: the fitted order's interval at ``level`` contains
    it.  ``lin`` is the η coefficient of the fit err ≈ aη + bη² (estimate, low, high), reported."""
    f = _fit(etas, err, sem, level)
    iv = (Interval(np.nan, np.nan, np.nan, level) if f is None else f.order)
    ok = bool(f is not None and iv.low <= SGD_PREDICTED_ORDER <= iv.high)
    return Verdict(
        f"{p}: SGD - slow SDE vanishes at order 1 in eta (E {h1} at t={T:g})", "Thm 5.5 / THEORY §8",
        f"error ~ C eta^{SGD_PREDICTED_ORDER:g} (finite-eta corrections of relative size eta)",
        iv, ok,
        f"two-sided: {SGD_PREDICTED_ORDER:g} inside the fitted order's {level:.4%} interval (the "
        f"budget share {SGD_ORDER_ALPHA:g}, Bonferroni over the problems; weighted log-log fit over "
        f"eta = {np.max(etas):g}..{np.min(etas):g}, lack of fit inflates the interval); the error "
        "near the Monte Carlo floor at the smallest eta carries little weight (weights (err/sem)^2); "
        f"a = {lin[0]:.3g} [{lin[1]:.3g}, {lin[2]:.3g}] in err ~ a eta + b eta^2 (95%). A slow drift "
        "10% off leaves an O(1) error: order ~ 0")


def general_formula_verdicts(sigma: float, seed: int, paths: int) -> tuple[list, dict]:
    """Rules 4 and 5 of the module docstring."""
    g = np.random.default_rng(substream(seed, "slow_sde.general_formula"))
    out, data = [], {}
    worst = {}
    for name, P in general_formula_problems().items():
        Z = points_on_manifold(P, g)
        b_gen = slow_coefficients(P, Z, sigma)[0]
        b_cf = P.slow_drift(Z, sigma)
        scale = 1.0 + float(np.abs(b_cf).max())
        worst[name] = float(np.abs(b_gen - b_cf).max() / scale)
    dev = max(worst.values())
    data["general_vs_closed_form"] = np.array(list(worst.values()))
    cross = cross_term_invariance(sigma, g)
    data["cross_term_dev"] = np.array(cross)
    out.append(Verdict("slow-SDE drift (Thm 5.5) depends on the noise only through its tangent "
                       "and normal blocks P Sigma P, (I-P) Sigma (I-P)", "Thm 5.5",
                       "unchanged by tangent-normal cross terms (max rel. change <= 1e-9)",
                       Value(cross), bool(cross <= 1e-9),
                       "Sigma + eps (P A (I-P) + (I-P) A^T P), A random, eps = lambda_min(Sigma) / "
                       "(4 ||A||) (Sigma stays positive definite), at 64 points of Γ per problem "
                       "(the built-in noises commute with P, where P Sigma = P Sigma P)",
                       1e-9))
    out.append(Verdict("slow-SDE drift: general formula (Thm 5.5) == closed forms on the manifold",
                       "Thm 5.5", "identical drift (max |b_gen - b_closed| / (1 + max|b|) <= 1e-9)",
                       Value(dev), bool(dev <= 1e-9),
                       "at 64 random points of Γ per problem, sigma = "
                       f"{sigma:g}: " + "; ".join(f"{k}: {v:.2g}" for k, v in worst.items()), 1e-9))
    # one problem through the general path, under a step schedule of the learning rate
    P = general_formula_problems()["valley of this check"]
    dt, t = 0.01, 1.0
    path = solve_slow_sde(P, [1.0, 0.0], t=t, dt=dt, paths=paths, sigma=sigma,
                          seed=substream(seed, "slow_sde.general_path"), record=[t], closed_form=False, lr=general_path_schedule)
    x = path.states[-1, :, 0]
    lam = [general_path_schedule(k * dt) for k in range(round(t / dt))]
    mean_e, var_e = P.ou_euler_moments_scheduled(1.0, dt, lam, sigma)
    zb = z_value(1 - GENERAL_PATH_ALPHA / 2)
    n = x.size
    zm = (x.mean() - mean_e) / np.sqrt(var_e / n)
    v = x.var(ddof=1)
    zv = (v - var_e) / (var_e * np.sqrt(2.0 / (n - 1)))
    data["general_path"] = np.array([x.mean(), mean_e, v, var_e])
    half = zb * np.sqrt(var_e / n)
    out.append(Verdict(
        f"valley slow SDE solved with the general drift formula under a step lr schedule "
        f"(lambda 0.6 -> 0.3): E x_t, Var x_t at t = {t:g}",
        "Thm 5.5", f"Euler-scheme moments: mean {float(mean_e):.4g}, variance {float(var_e):.4g}",
        Interval(float(x.mean()), float(x.mean() - half), float(x.mean() + half), 1 - GENERAL_PATH_ALPHA / 2),
        bool(abs(zm) <= zb and abs(zv) <= zb),
        f"{n} paths, dt = {dt:g}: |z| of the mean {abs(zm):.2f} and of the variance {abs(zv):.2f} "
        f"<= {zb:.2f} (family-wise {1 - GENERAL_PATH_ALPHA:.2%}); measured = mean with its "
        f"{1 - GENERAL_PATH_ALPHA / 2:.3%} interval"))
    return out, data


@experiment(NAME, SIZES, defaults=dict(sigma=1.25, beta=0.9, alpha=0.5, lam=0.3, problems=PROBLEMS))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Run the Thm. 5.5 comparison; see the module docstring for the decision rules.

    ``lam`` is λ in 1 − β = λη^α for the α = 0.5 family (λ = 0.3: β from 0.92 at η = 0.08
    to 0.98 at η = 0.005).  ``overrides`` replace entries of ``SIZES[size]``.
    """
    sigma = cfg["sigma"]
    beta = cfg["beta"]
    alpha = cfg["alpha"]
    lam = cfg["lam"]
    problems = cfg["problems"]
    for p in problems:
        if p not in PROBLEMS:
            raise ValueError(f"problems must be among {PROBLEMS}, got {p!r}")
    data, verdicts = {"problems": np.array(problems)}, []
    n_eta = len(cfg["etas"])
    keys = [(p, i) for p in problems for i in range(n_eta)]
    # first the simulations, cut into path shards and handed out longest first (smallest η:
    # t/η² steps) so that a cluster's workers do not finish on one long shard alone; then
    # each point's statistics from its shards joined; results put back in (problem, η) order
    shards = [(k, a, n) for k, (p, i) in enumerate(keys) for a, n in path_shards(cfg, i)]
    shards.sort(key=lambda t: -_steps(cfg, keys[t[0]][1])[1] * t[2])
    # (the general-formula part, the longest single task at full size, goes first)
    (gv, gd), *sims = run_many([Call(general_formula_verdicts, (sigma, seed, cfg["paths"]))]
                               + [Call(_eta_paths, (keys[k][0], cfg, seed, keys[k][1], a, n),
                                       label=f"slow_sde {keys[k][0]} eta[{keys[k][1]}] paths {a}+{n}")
                                  for k, a, n in shards])
    parts = [[] for _ in keys]
    for (k, a, _), r in sorted(zip(shards, sims), key=lambda t: t[0][:2]):
        parts[k].append(r)
    points = run_many([Call(_eta_point, (p, cfg, seed, i, parts[k]), label=f"slow_sde {p} eta[{i}]")
                       for k, (p, i) in enumerate(keys)])
    tick(progress, len(points), len(points))
    for pi, p in enumerate(problems):
        d = _case_data(p, cfg, points[pi * n_eta:(pi + 1) * n_eta])
        data.update(d)
        etas = d[f"{p}_etas"]
        fits = np.full((3, 2, 2, 4), np.nan)      # (opt, h, kind: 0 vs slow SDE / 1 vs SGD, [p, lo, hi, logC])
        polys = np.full((3, 2, 2, 3), np.nan)     # SGDM/SGD − slow SDE ≈ a η + b η²: [a, b] × [est, lo, hi]
        for j in range(3):
            for h in range(2):
                for kind, (m, s) in enumerate([(d[f"{p}_bias"], d[f"{p}_bias_sem"]),
                                               (d[f"{p}_diff"], d[f"{p}_diff_sem"])]):
                    if kind == 1 and j == 0:
                        continue
                    f = _fit(etas, m[j, :, h, -1], s[j, :, h, -1])
                    if f is not None:
                        fits[j, h, kind] = f.order.estimate, f.order.low, f.order.high, f.log_c
                a, b = poly_fit(etas, d[f"{p}_bias"][j, :, h, -1], d[f"{p}_bias_sem"][j, :, h, -1])
                polys[j, h, 0] = a.estimate, a.low, a.high
                polys[j, h, 1] = b.estimate, b.low, b.high
        data[f"{p}_fits"], data[f"{p}_poly"] = fits, polys
        h1 = TEST_LABELS[p][0]
        T = cfg["times"][-1]
        verdicts.append(sgd_order_verdict(p, h1, T, etas, d[f"{p}_bias"][0, :, 0, -1],
                                          d[f"{p}_bias_sem"][0, :, 0, -1], polys[0, 0, 0],
                                          sgd_order_level(len(problems))))
        for j, what in [(1, f"SGDM(beta={beta}) - SGD"), (2, f"SGDM(1-beta={lam}*eta^{alpha}) - SGD")]:
            f = fits[j, 0, 1]
            ok = bool(np.isfinite(f[1]) and f[1] > 0)
            heur = "inside" if f[1] <= 1.0 <= f[2] else "OUTSIDE"
            verdicts.append(Verdict(
                f"{p}: {what} -> 0 as eta -> 0 (E {h1} at t={T:g})", "Thm 5.5 / THEORY §8, §13",
                "error ~ C eta^p with p > 0 (convergence; Thm 5.5 gives no rate)",
                Interval(float(f[0]), float(f[1]), float(f[2])), ok,
                "lower end of the 95% interval of the fitted order p > 0 (one-sided: Thm 5.5 "
                "states convergence only; THEORY §13's heuristic order 1 for alpha <= 1 is "
                f"{heur} the interval, a finding, not a rule)"))
        w1c = d[f"{p}_w1c"]
        wf = np.full((3, 4), np.nan)               # W1 order fits: [p, lo, hi, logC]
        for j in range(3):
            f = _fit(etas, w1c[j, :, 0], (w1c[j, :, 2] - w1c[j, :, 1]) / (2 * 1.96))
            if f is not None:
                wf[j] = f.order.estimate, f.order.low, f.order.high, f.log_c
        data[f"{p}_w1c_fits"] = wf
        ks = d[f"{p}_ks"]
        pmin = float(ks[:3, -1, 1].min())
        alpha_ks = ks_level(len(problems))   # budget share
        w1 = d[f"{p}_w1"]
        jw = int(np.argmax(w1[:3, -1, 0]))
        verdicts.append(Verdict(
            f"{p}: law of {h1} at t={T:g}, eta={etas[-1]:g} matches the slow SDE (SGD and both SGDM)",
            "Thm 5.5 (convergence in distribution)",
            "one-sample KS test against the exact slow-SDE law does not reject",
            Interval(float(w1[jw, -1, 0]), float(w1[jw, -1, 1]), float(w1[jw, -1, 2])),
            pmin >= alpha_ks,
            f"min KS p-value {pmin:.3g} >= {alpha_ks:.3g} (Bonferroni over 3 optimizers and the problems); "
            f"measured = largest W1 to the exact law ({OPT_LABELS[jw]}), basic bootstrap 95%; "
            f"null (coupled Euler samples) W1 {w1[3, -1, 0]:.3g}"))
    verdicts += gv
    data.update(gd)
    params = dict(cfg, sigma=sigma, problems=list(problems), etas=list(cfg["etas"]),
                  times=list(cfg["times"]), optimizers=list(OPT_LABELS))
    return params, data, verdicts


# ---- figure ---------------------------------------------------------------------------------
def _eta_ticks(ax, etas):
    from matplotlib.ticker import FixedLocator, NullLocator
    ax.xaxis.set_major_locator(FixedLocator(etas))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{e:g}" for e in etas], rotation=45, fontsize=7)


def _yerr(iv):
    """Error-bar extents from rows (estimate, low, high), clipped at 0 (a basic-bootstrap
    interval need not contain its estimate)."""
    return [np.clip(iv[:, 0] - iv[:, 1], 0, None), np.clip(iv[:, 2] - iv[:, 0], 0, None)]


@styled
def plot(result: ExperimentResult, path):
    """Per problem (two rows of two panels): E h₁(Φ(x_t)) − E h₁(ζ_t) vs t; errors vs η
    (log-log, fits drawn over the points fitted); law at η_min; W1 to the exact law vs η with
    bootstrap intervals."""
    d, prm = result.data, result.params
    probs = [str(p) for p in d["problems"]]
    fig, axes = subplots(2, figsize(2, 2 * len(probs), aspect=0.8), nrows=2 * len(probs))
    axes = np.asarray(axes).reshape(len(probs), 4)
    cols = ("C0", "C1", "C2")
    names = ("SGD", r"SGDM $\beta=0.9$", r"SGDM $\alpha=0.5$")        # OPT_LABELS, typeset
    tex = {"x": "x", "x^2": "x^2", "<z,z0>": r"\langle z, z_0\rangle",
           "<z,z0>^2": r"\langle z, z_0\rangle^2"}
    for row, p in zip(axes, probs):
        etas, times = d[f"{p}_etas"], d[f"{p}_times"]
        bias, bsem, diff, dsem = d[f"{p}_bias"], d[f"{p}_bias_sem"], d[f"{p}_diff"], d[f"{p}_diff_sem"]
        h1 = tex.get(TEST_LABELS[p][0], TEST_LABELS[p][0])
        # (a) mean error vs t at eta_max and eta_min (±1.96·sem over ≥ 4096 paths: normal quantile)
        ax = row[0]
        ax.axhline(0.0, color="k", lw=1.2, label="slow SDE (exact)")
        for j in range(3):
            for i, mk, ls in [(0, "s", ":"), (len(etas) - 1, "o", "-")]:
                ax.errorbar(times * (1 + 0.01 * (j - 1)), bias[j, i, 0], yerr=1.96 * bsem[j, i, 0], fmt=mk + ls,
                            color=cols[j], ms=3, lw=0.9, mfc="none" if mk == "s" else cols[j],
                            label=rf"{names[j]}, $\eta={etas[i]:g}$")
        ax.set(xlabel=r"slow time $t = k\eta^2$",
               ylabel=rf"$\mathbb{{E}}\,{h1}(\Phi(x_t)) - \mathbb{{E}}\,{h1}(\zeta_t)$",
               title=f"{p}: mean vs slow SDE (95% CI)", xlim=(0, times[-1] * 1.05))
        legend_below(ax, ncol=2)
        # (b) errors vs eta
        ax = row[1]
        fits = d[f"{p}_fits"]
        series = [(bias[0, :, 0, -1], bsem[0, :, 0, -1], fits[0, 0, 0], "C0", "o", r"$|$SGD $-$ slow SDE$|$"),
                  (bias[1, :, 0, -1], bsem[1, :, 0, -1], fits[1, 0, 0], "C1", "o", rf"$|${names[1]} $-$ slow SDE$|$"),
                  (bias[2, :, 0, -1], bsem[2, :, 0, -1], fits[2, 0, 0], "C2", "o", rf"$|${names[2]} $-$ slow SDE$|$"),
                  (diff[1, :, 0, -1], dsem[1, :, 0, -1], fits[1, 0, 1], "C1", "^", rf"$|${names[1]} $-$ SGD$|$"),
                  (diff[2, :, 0, -1], dsem[2, :, 0, -1], fits[2, 0, 1], "C2", "^", rf"$|${names[2]} $-$ SGD$|$")]
        for m, s, f, c, mk, lab in series:
            a = np.abs(m)
            lo = np.clip(a - 1.96 * s, a * 0.05, None)
            ax.errorbar(etas, a, yerr=[a - lo, 1.96 * s], fmt=mk, color=c, ms=3.5,
                        mfc="none" if mk == "^" else c,
                        label=lab + (f": {f[0]:.2f} [{f[1]:.2f}, {f[2]:.2f}]" if np.isfinite(f[0]) else ""))
            fit_line(ax, etas[a > 0], order=f[0], log_c=f[3], ls="-" if mk == "o" else "--",
                     color=c, lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel=r"$\eta$",
               ylabel=rf"$|$error$|$ of $\mathbb{{E}}\,{h1}$ at $t={times[-1]:g}$",
               title=rf"{p}: weak errors (orders) shrink as $\eta \to 0$")
        _eta_ticks(ax, etas)
        legend_below(ax, drop=0.62)                  # under the rotated tick labels
        # (c) law at eta_min
        ax = row[2]
        edges = d[f"{p}_hist_edges"]
        mid = 0.5 * (edges[1:] + edges[:-1])
        dens = np.diff(d[f"{p}_exact_cdf_edges"]) / np.diff(edges)
        ax.plot(mid, dens, "k-", lw=2, label="slow SDE (exact)")
        ks = d[f"{p}_ks"]
        for j in range(3):
            ax.step(mid, d[f"{p}_hist"][j], where="mid", color=cols[j], lw=0.9,
                    label=f"{names[j]} (KS $p={ks[j, -1, 1]:.2g}$)")
        ax.set(xlabel=rf"${h1}(\Phi(x_T))$", ylabel="density",
               title=rf"{p}: law at $t={times[-1]:g}$, $\eta={etas[-1]:g}$, {prm['paths']} paths")
        legend_below(ax)
        # (d) W1 vs eta
        ax = row[3]
        w1, w1c, wf = d[f"{p}_w1"], d[f"{p}_w1c"], d[f"{p}_w1c_fits"]
        for j in range(3):
            f = wf[j]
            ax.errorbar(etas, w1c[j, :, 0], yerr=_yerr(w1c[j]), fmt="o", color=cols[j], ms=3,
                        label=f"{names[j]} vs coupled slow SDE"
                        + (f": {f[0]:.2f} [{f[1]:.2f}, {f[2]:.2f}]" if np.isfinite(f[0]) else ""))
            fit_line(ax, etas[np.abs(w1c[j, :, 0]) > 0], order=f[0], log_c=f[3], color=cols[j], lw=0.8)
            ax.plot(etas, w1[j, :, 0], ":", color=cols[j], lw=1, label=f"{names[j]} vs exact law (indep.)")
        ax.errorbar(etas, w1[3, :, 0], yerr=_yerr(w1[3]), fmt="x--", color="0.4", ms=3, lw=0.8,
                    label=r"null: Euler samples vs exact law ($1/\sqrt{N}$ floor)")
        ax.set(xscale="log", yscale="log", xlabel=r"$\eta$",
               ylabel=rf"$W_1$ of the law of ${h1}$ at $t={times[-1]:g}$",
               title=f"{p}: Wasserstein-1 to the slow SDE (bootstrap 95%)")
        _eta_ticks(ax, etas)
        legend_below(ax, drop=0.62)                  # under the rotated tick labels
    fig.suptitle(rf"{TITLE}" "\n" rf"($\sigma={prm['sigma']}$, $\beta={prm['beta']}$, "
                 rf"$1-\beta={prm['lam']}\,\eta^{{{prm['alpha']}}}$)")
    return save_figure(fig, path)
