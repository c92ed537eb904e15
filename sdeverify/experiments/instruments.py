"""Self-checks of the instruments every other verdict relies on: the generator and the intervals.

Runs first in ``sdeverify check``.  A generator whose variance is 1.01, or standard errors
that are √2 too small, would let every later verdict pass or fail for the wrong reason; the
checks here are what would catch them.

**Generator, as the engine uses it.**  ``ConstantGradient`` with zero gradient in d = 2
(the kernel of the 2-d quadratics used by the later checks), SGD with lr 1 and noise scale
σ = 1.7: every step moves x by −σ ξ, so ``z = (x_k − x_{k+1}) / σ`` recovers the draws the
engine applied, *including* the engine's use of σ (σ² instead of σ would give Var z = σ²).
N paths × S steps × 2 coordinates ≥ 10⁷ draws (both outputs of the Box–Muller pair) are
tested against N(0, 1):

* mean = 0, variance = 1, skewness = 0, excess kurtosis = 0 (normal-theory z-tests:
  sd √(1/n), √(2/n), √(6/n), √(24/n));
* Kolmogorov–Smirnov against the N(0, 1) CDF;
* independence: correlation of consecutive steps of a path, of the two coordinates of one
  draw (the Box–Muller pair) and of neighbouring paths (each √n·r ~ N(0, 1));
* the other draw kinds, from :func:`sdeverify.rng.draws_numpy` (bitwise the engines' values):
  uniform (the minibatch indices of ``LinearRegression``) KS against U(0, 1), Rademacher
  mean 0 with values ±1.

Power (stated in each verdict's rule, computed from n): with n = 10⁷ a variance error of
0.5% is 11 standard errors, a mean bias of 0.002 is 6; the KS test detects any CDF error
larger than its critical distance (≈ 6e-4 at n = 10⁷).

**Intervals, as the checks use them.**  Replications with a known answer, coverage counted:

* ``SimulationResult.sem`` and :func:`~sdeverify.stats.mean_interval`: R independent
  replications (disjoint path ranges of 3 blocks each, so that the block merge is
  exercised) of SGD on the 2-d quadratic, E x₀ and E L at step K
  against their exact values (:func:`sdeverify.theory.quadratic_moments`);
* ``SimulationResult.paired`` (common random numbers): E[x₀(SGDM) − x₀(SGD)] likewise;
* :func:`~sdeverify.stats.fit_order`: R synthetic error curves C η^p (1 + s ε), ε ~ N(0, 1),
  with known p, fitted with their standard errors (the setting of the Monte Carlo order fits).
  Its interval is inflated by the reduced χ² whenever that exceeds 1, so its coverage is
  above nominal by design (0.967 measured here); the rule asks for a coverage in
  [0.95, 0.985] (an interval √2 too narrow covers 0.896, √2 too wide 0.996);
* the same fit under *lack of fit*: the curves scatter 3× more than their stated standard
  errors say (as when a power law is fitted where it does not hold exactly).  Then the
  reduced χ² (≈ 9) is the only source of the right width: inflating the covariance by it
  with a Student-t quantile is exact when it exceeds 1, and the coverage is the nominal 0.95
  (0.9504 ± 0.0007 measured, 10⁵ replications); an inflation by √χ² covers 0.861, an interval
  √2 too narrow 0.882, √2 too wide 0.982;
* :func:`~sdeverify.stats.max_abs_interval` (the simultaneous interval of the weak-error
  maxima): K = 16 equal means, coverage ≈ (1 − 0.025/16)^16 ≈ 0.975 by its Bonferroni
  construction; rule: inside [0.95, 0.99] (without the Bonferroni step it covers ≈ 0.67,
  with a √2 too wide interval ≈ 1.000).

* the problem definitions: each kind of built-in problem the job runs (quadratics, cosine
  well, minibatch least squares, valley, sphere, diagonal net), its compiled ``grad`` against
  central finite differences of its compiled ``loss`` at random points (deterministic; rule
  max relative deviation ≤ 1e-6, a correct pair agrees to ≈ 1e-9);
* the problems' noise: each Gaussian problem's compiled ``noise`` applied
  to unit draws gives S(x), and S Sᵀ must equal its declared ``noise_cov_at(x)`` (the
  covariance the exact references read), linear in the draws (deterministic; rule max
  relative deviation ≤ 1e-9);
* :func:`~sdeverify.stats.richardson_order` on exact curves with a known order, on grids of
  ratio 0.5, 0.7 and 0.8 (deterministic; see :func:`richardson_verdict`).

Decision rules.  Every test of this module is one member of a family with family-wise level
1 − 10⁻³ (Bonferroni over the M tests): a normal-theory statistic passes iff |z| ≤ z_B; the
KS distance iff D ≤ D_B; a coverage count iff the nominal 0.95 lies inside the two-sided
Clopper–Pearson interval at level 1 − 10⁻³/M (for fit_order: meets the band above).  With R = 1000 that interval is about
[0.923, 0.975]: intervals √2 too narrow (coverage 0.834) or √2 too wide (0.994) fail.
False failures: ≤ 10⁻³ per run by construction; measured rate in paper_checks.md.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as st

from .. import rng, theory
from ..optim import SGD, SGDM
from ..problems import ConstantGradient, Quadratic
from ..stats import Interval, fit_order, max_abs_interval, mean_interval, richardson_order, z_value
from ..figstyle import legend_below, styled
from .base import (Call, ExperimentResult, Progress, Value, Verdict, experiment, run_many, simulate,
                   tick)
from .budget import ALPHA

NAME = "instruments"
TITLE = "Self-checks: the engine's generator against N(0,1); coverage of the intervals"

SIZES = {"smoke": dict(gen_paths=2 ** 20, gen_steps=5, other_draws=2 ** 20, reps=1000, rep_paths=768,
                       fit_reps=2000),
         "quick": dict(gen_paths=2 ** 20, gen_steps=5, other_draws=2 ** 20, reps=1000, rep_paths=768,
                       fit_reps=4000),
         "full": dict(gen_paths=2 ** 22, gen_steps=6, other_draws=2 ** 22, reps=4000, rep_paths=1024,
                      fit_reps=20000)}
#: family-wise false-failure level of all the verdicts of this module together
FAMILY_ALPHA = ALPHA[NAME]   # the main job's budget share (experiments/budget.py)
SIGMA = 1.7
NOMINAL = 0.95
N_GEN_TESTS, N_COV_TESTS = 10, 6
#: fit_order inflates its interval by the reduced χ² when it exceeds 1, so its coverage is
#: above nominal by design (measured 0.967 on the synthetic curves below, 8000 replications);
#: the band's upper end lies between that and the 0.996 of an interval √2 too wide.
FIT_ORDER_BAND = (0.95, 0.985)
#: max_abs_interval (Bonferroni over K) on K equal means: coverage ≈ (1 − α/2K)^K ≈ 0.975
#: (analytic, K = 16); without the Bonferroni correction it would be ≈ 0.67, with an interval
#: √2 too wide ≈ 1.000
MAX_ABS_K = 16
MAX_ABS_BAND = (0.95, 0.99)


def quadratic() -> Quadratic:
    """The 2-d quadratic of the Thm 4.5 check (same kernel), noise with correlated coordinates,
    and a centre c and linear term b that are not zero (so the exact moments' gradient at 0,
    b − Hc, is exercised with both signs: the other quadratics of the job have c = b = 0)."""
    return Quadratic(np.diag([1.0, 3.0]), noise_cov=np.array([[1.0, 0.3], [0.3, 0.5]]),
                     center=[0.6, -0.4], linear=[0.25, 0.1])


def engine_draws(paths: int, steps: int, seed: int, sigma: float = SIGMA) -> np.ndarray:
    """The standard normals the CPU engine applies, recovered from SGD(lr = 1) on a zero
    gradient: array (steps, paths, 2)."""
    P = ConstantGradient([0.0, 0.0])
    res = simulate(P, [SGD(1.0)], [0.0, 0.0], steps=steps, paths=paths, sigma=sigma, seed=seed,
                   record=np.arange(steps + 1), observables=["x0"], store_states=True)
    x = res.states[0]                                   # (steps + 1, paths, 2)
    return (x[:-1] - x[1:]) / sigma


def engine_draw_verdicts(paths: int, steps: int, seed: int) -> tuple[list[Verdict], dict]:
    """:func:`generator_verdicts` of the CPU engine's draws (:func:`engine_draws`)."""
    return generator_verdicts(engine_draws(paths, steps, seed))


def _z_verdict(claim: str, est: float, pred: float, sd: float, zb: float, power: str) -> Verdict:
    z = (est - pred) / sd
    level = 1 - FAMILY_ALPHA / (N_GEN_TESTS + N_COV_TESTS)
    iv = Interval(float(est), float(est - zb * sd), float(est + zb * sd), level)
    return Verdict(claim, "instrument (method)", f"{pred:g} (inside the {level:.5g} CI)", iv,
                   bool(abs(z) <= zb),
                   f"|z| = {abs(z):.2f} <= {zb:.2f} (Bonferroni share of family-wise {FAMILY_ALPHA:g}); {power}")


def generator_verdicts(z: np.ndarray) -> tuple[list[Verdict], dict]:
    """Moments, KS and independence of the draws ``z`` (steps, paths, 2); rules in the module doc."""
    n = z.size
    zb = z_value(1 - FAMILY_ALPHA / (N_GEN_TESTS + N_COV_TESTS))
    flat = z.ravel()
    m = float(flat.mean())
    c = flat - m
    c2 = c * c
    v = float(np.mean(c2))
    skew = float(np.mean(c2 * c) / v ** 1.5)
    kurt = float(np.mean(c2 * c2) / v ** 2 - 3.0)
    del c, c2
    sd_var = np.sqrt(2.0 / n)
    pw = lambda shift, sd: float(st.norm.cdf(shift / sd - zb))  # power of a one-sided shift
    out = [
        _z_verdict(f"engine draws (sigma = {SIGMA}) have mean 0, n = {n}", m, 0.0, np.sqrt(1.0 / n), zb,
                   f"power {pw(0.002, np.sqrt(1 / n)):.3f} against a mean bias of 0.002"),
        _z_verdict(f"engine draws have variance 1 (sigma applied once, not squared), n = {n}", v, 1.0,
                   sd_var, zb, f"power {pw(0.005, sd_var):.4f} against a 0.5% variance error"),
        _z_verdict(f"engine draws have skewness 0, n = {n}", skew, 0.0, np.sqrt(6.0 / n), zb,
                   f"power {pw(0.01, np.sqrt(6 / n)):.3f} against skewness 0.01"),
        _z_verdict(f"engine draws have excess kurtosis 0, n = {n}", kurt, 0.0, np.sqrt(24.0 / n), zb,
                   f"power {pw(0.02, np.sqrt(24 / n)):.3f} against excess kurtosis 0.02"),
    ]
    # KS against N(0, 1): D_B is the asymptotic critical distance at the Bonferroni level
    d_ks, p_ks = st.kstest(flat, "norm")
    alpha_i = FAMILY_ALPHA / (N_GEN_TESTS + N_COV_TESTS)
    d_crit = float(st.kstwobign.isf(alpha_i) / np.sqrt(n))
    # a variance error of 0.5% moves the CDF by at most 0.0025·φ(1) ≈ 6.0e-4 (at |x| = 1)
    shift = 0.0025 * st.norm.pdf(1.0)
    out.append(Verdict(f"engine draws ~ N(0, 1): Kolmogorov-Smirnov, n = {n}", "instrument (method)",
                       f"D <= critical {d_crit:.3g}", Value(float(d_ks)),
                       bool(d_ks <= d_crit),
                       f"KS distance <= its critical value at level {alpha_i:.2g} (p = {p_ks:.3g}); "
                       f"a 0.5% variance error shifts the CDF by {shift:.2g} "
                       f"({shift / d_crit:.2f} x critical)", d_crit))
    # independence: neighbouring steps, the two coordinates, neighbouring paths
    pairs = {"consecutive steps of a path": (z[:-1, :, 0], z[1:, :, 0]),
             "the two coordinates of one draw (Box-Muller pair)": (z[..., 0], z[..., 1]),
             "neighbouring paths": (z[:, :-1, 0], z[:, 1:, 0])}
    for name, (a, b) in pairs.items():
        a, b = a.ravel(), b.ravel()
        r = float(np.corrcoef(a, b)[0, 1])
        sd = 1.0 / np.sqrt(a.size)
        out.append(_z_verdict(f"engine draws independent: correlation of {name}", r, 0.0, sd, zb,
                              f"power {pw(0.003, sd):.3f} against a correlation of 0.003"))
    data = {"gen_mean": m, "gen_var": v, "gen_skew": skew, "gen_kurt": kurt, "gen_ks": float(d_ks),
            "gen_ks_p": float(p_ks), "gen_n": n,
            "gen_hist": np.histogram(flat, bins=np.linspace(-5, 5, 101))[0]}
    return out, data


def _cp_interval(k, R: int, level: float):
    """Two-sided Clopper-Pearson interval(s) for k successes out of R (k may be an array)."""
    k = np.asarray(k, dtype=np.float64)
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):
        low = np.where(k > 0, st.beta.ppf(a, k, R - k + 1), 0.0)
        high = np.where(k < R, st.beta.ppf(1 - a, k + 1, R - k), 1.0)
    return low, high


def other_draw_verdicts(n: int, seed: int) -> tuple[list[Verdict], dict]:
    """Uniform (the minibatch index draws of ``LinearRegression``) and Rademacher draws, from
    :func:`sdeverify.rng.draws_numpy` (bitwise the engine's values): KS against U(0, 1) and
    the Rademacher mean, at the same Bonferroni share as the normal tests."""
    alpha_i = FAMILY_ALPHA / (N_GEN_TESTS + N_COV_TESTS)
    paths = np.arange(n // 4)
    u = rng.draws_numpy(rng.UNIFORM, seed, paths, 3, 0, 4).ravel()
    d_u, p_u = st.kstest(u, "uniform")
    d_crit = float(st.kstwobign.isf(alpha_i) / np.sqrt(u.size))
    r = rng.draws_numpy(rng.RADEMACHER, seed, paths, 3, 0, 4).ravel()
    zb = z_value(1 - alpha_i)
    out = [Verdict(f"uniform draws ~ U(0, 1): Kolmogorov-Smirnov, n = {u.size}", "instrument (method)",
                   f"D <= critical {d_crit:.3g}", Value(float(d_u)),
                   bool(d_u <= d_crit and np.all((u > 0) & (u < 1))),
                   f"KS distance <= its critical value at level {alpha_i:.2g} (p = {p_u:.3g}), all in (0, 1)",
                   d_crit),
           _z_verdict(f"Rademacher draws have mean 0 (values +-1), n = {r.size}", float(r.mean()), 0.0,
                      1.0 / np.sqrt(r.size), zb, f"values {sorted(set(np.unique(r).tolist()))}")]
    out[1] = Verdict(out[1].claim, out[1].reference, out[1].prediction, out[1].measured,
                     out[1].passed and bool(np.all(np.abs(r) == 1.0)), out[1].rule, out[1].threshold)
    return out, {"uniform_ks": float(d_u), "rademacher_mean": float(r.mean())}


def _normal_alt() -> tuple[float, float]:
    """Coverage of a nominal-95% normal interval √2 too narrow / √2 too wide."""
    z = z_value(NOMINAL)
    return tuple(float(2 * st.norm.cdf(z * f) - 1) for f in (2 ** -0.5, 2 ** 0.5))


def _max_abs_alt() -> tuple[float, float]:
    """Coverage of max_abs_interval on K equal means with its half-widths scaled by 1/√2, √2:
    (1 − q)^K with q the one-sided tail beyond the scaled Bonferroni quantile."""
    zb = z_value(1 - (1 - NOMINAL) / MAX_ABS_K)
    return tuple(float(st.norm.cdf(f * zb) ** MAX_ABS_K) for f in (2 ** -0.5, 2 ** 0.5))


#: fit_order on the synthetic curves with its interval scaled by 1/√2, √2 (measured, 8000 reps)
FIT_ORDER_ALT = (0.896, 0.9965)
#: the lack-of-fit family: how much the scatter exceeds the stated standard errors, and the
#: coverage of intervals √2 too narrow / too wide there (measured, 10⁵ replications)
LACK_OF_FIT = 3.0
FIT_ORDER_LOF_ALT = (0.882, 0.982)


def _coverage_verdict(claim: str, covered: np.ndarray, band: tuple[float, float],
                      alt: tuple[float, float] | None = None) -> Verdict:
    """Pass iff the Clopper-Pearson interval of the coverage meets ``band`` (the nominal
    coverage, or a range for a deliberately conservative procedure).  ``alt``: the coverages
    of the same procedure with intervals √2 too narrow / too wide, for the stated power."""
    R = covered.size
    k = int(covered.sum())
    level = 1 - FAMILY_ALPHA / (N_GEN_TESTS + N_COV_TESTS)
    low, high = (float(v) for v in _cp_interval(k, R, level))
    iv = Interval(k / R, low, high, level)
    # power: probability that an interval sqrt(2) too narrow / too wide fails this rule
    ks = np.arange(R + 1)
    lo_all, hi_all = _cp_interval(ks, R, level)
    fails = (hi_all < band[0]) | (lo_all > band[1])
    pw = [float(st.binom.pmf(ks[fails], R, p).sum()) for p in (alt or _normal_alt())]
    target = f"{band[0]:g}" if band[0] == band[1] else f"in [{band[0]:g}, {band[1]:g}]"
    return Verdict(claim, "instrument (method)", f"coverage {target} (vs the {level:.5g} CI)",
                   iv, bool(high >= band[0] and low <= band[1]),
                   f"{k}/{R} nominal-95% intervals cover the known value; pass iff the "
                   f"Clopper-Pearson interval at level {level:.5g} meets {target} (power: {pw[0]:.3f} "
                   f"vs intervals sqrt(2) too narrow, {pw[1]:.3f} vs sqrt(2) too wide)")


def coverage_runs(reps: int, paths: int, seed: int, steps: int = 12, eta: float = 0.15,
                  beta: float = 0.8) -> dict:
    """R replications (disjoint path ranges) of SGD and SGDM on the quadratic: 0/1 coverage of
    the nominal 95% intervals of E x₀, E L (SGD) and of the paired E[x₀(SGDM) − x₀(SGD)]."""
    P = quadratic()
    x0 = np.array([1.0, -0.5])
    sigma = SIGMA
    opts = [SGD(eta), SGDM(eta, beta)]
    ex = [theory.quadratic_moments(P, o, x0, steps=steps, sigma=sigma) for o in opts]
    truth = {"x0": ex[0].expect(P, "x0")[-1], "loss": ex[0].expect(P, "loss")[-1],
             "diff": ex[1].expect(P, "x0")[-1] - ex[0].expect(P, "x0")[-1]}
    cov = {k: np.empty(reps, dtype=bool) for k in truth}
    for r in range(reps):
        res = simulate(P, opts, x0, steps=steps, paths=paths, sigma=sigma, seed=seed,
                       record=[steps], observables=["x0", "loss"], path_offset=r * paths)
        for h in ("x0", "loss"):
            m, s = res.series(0, h)
            cov[h][r] = mean_interval(m[-1], s[-1]).contains(truth[h])
        m, s = res.paired(1, "x0")
        cov["diff"][r] = mean_interval(m[-1], s[-1]).contains(truth["diff"])
    return cov


def fit_order_coverage(reps: int, seed: int, p: float = 1.0, rel: float = 0.05,
                       scatter: float = 1.0) -> np.ndarray:
    """0/1 coverage of fit_order's 95% interval of the order on R synthetic curves
    err_i = C η_i^p (1 + scatter·rel·ε_i) with *stated* standard errors rel·C η_i^p (the Monte
    Carlo setting when ``scatter`` = 1; lack of fit beyond the stated errors when > 1)."""
    g = np.random.default_rng(rng.substream(seed, "instruments.fit_order_coverage",
                                            int(round(100 * scatter))))
    eta = 2.0 ** -np.arange(3, 9)
    true = 0.7 * eta ** p
    out = np.empty(reps, dtype=bool)
    for r in range(reps):
        err = true * (1.0 + scatter * rel * g.standard_normal(eta.size))
        out[r] = fit_order(eta, err, rel * true).order.contains(p)
    return out


def max_abs_coverage(reps: int, seed: int) -> np.ndarray:
    """0/1 coverage of :func:`~sdeverify.stats.max_abs_interval` for max_k |μ_k| with K equal
    μ_k = 1 estimated by m_k ~ N(1, s_k²), s_k known (the setting of the weak-error maxima)."""
    g = np.random.default_rng(rng.substream(seed, "instruments.max_abs_coverage"))
    sems = np.linspace(0.05, 0.1, MAX_ABS_K)
    out = np.empty(reps, dtype=bool)
    for r in range(reps):
        m = 1.0 + sems * g.standard_normal(MAX_ABS_K)
        out[r] = max_abs_interval(m, sems).contains(1.0)
    return out


def problem_zoo() -> dict:
    """The kinds of built-in problem the job runs (same classes and shapes)."""
    from ..problems import CosineWell, DiagonalNet, LinearRegression, Sphere, Valley
    return {"Quadratic (dense noise, c, b != 0)": quadratic(),
            "Quadratic (diagonal)": Quadratic(np.diag([0.5, 2.0, 4.0]), noise_cov=np.diag([1.0, 0.3, 2.0])),
            "CosineWell(3)": CosineWell(3),
            "LinearRegression (n = 64, d = 4, B = 3)": LinearRegression.generate(
                n=64, d=4, batch_size=3, noise=0.5, seed=1),
            "Valley (cubic h, m = 2)": Valley(h=(1.0, 0.5, 1.0, 0.3), sx2=(0.2, 0.1), sy2=(0.5, 0.2, 0.3), m=2),
            "Sphere(3)": Sphere(3, noise_std=0.8),
            "DiagonalNet (n = 5, D = 10)": DiagonalNet.generate(5, 10, seed=0)}


#: rule of the gradient-consistency verdict: central differences with h = 1e-5 (1 + |x_i|)
#: agree with a correct gradient to ≈ 1e-9 here; a factor or sign error moves them by O(1)
GRAD_FD_TOL = 1e-6


def gradient_consistency_verdict(seed: int) -> tuple[Verdict, dict]:
    """Each problem's compiled ``grad`` against central finite differences of its compiled
    ``loss`` at 6 random points: the oracle's mean and the loss the checks report must be one
    function and its gradient (a loss off by a factor passes every check that reads only
    gradients)."""
    g = np.random.default_rng(rng.substream(seed, "instruments.gradient_consistency"))
    worst = {}
    for name, P in problem_zoo().items():
        dev = 0.0
        for _ in range(6):
            x = g.uniform(-1.0, 1.0, P.dim)
            gr = P.gradient(x)
            for i in range(P.dim):
                h = 1e-5 * (1.0 + abs(x[i]))
                e = np.zeros(P.dim)
                e[i] = h
                fd = (P.value(x + e) - P.value(x - e)) / (2 * h)
                dev = max(dev, abs(fd - gr[i]) / (1.0 + abs(gr[i])))
        worst[name] = dev
    top = max(worst.values())
    return (Verdict("problem definitions: grad = derivative of loss (central differences)",
                    "instrument (method)", f"agree (max rel. dev <= {GRAD_FD_TOL:g})", Value(top),
                    bool(top <= GRAD_FD_TOL),
                    "6 random points per problem: " + "; ".join(f"{k}: {v:.1g}" for k, v in worst.items()),
                    GRAD_FD_TOL),
            {"grad_fd_dev": np.array(list(worst.values()))})


#: rule of the noise-covariance verdict (a correct problem agrees to ≈ 1e-15; a variance for
#: a standard deviation, a missing factor or a wrong parameter offset is off by O(1))
NOISE_COV_TOL = 1e-9


def noise_covariance_verdict(seed: int) -> tuple[Verdict, dict]:
    """Each Gaussian problem's compiled ``noise`` against its declared covariance: at 3
    random points, the columns ``noise(x, e_j)`` for the unit draws e_j give S(x), and
    S Sᵀ must equal ``noise_cov_at(x)`` while a random draw ξ must give S ξ (the noise is
    linear in the draws).  The problems' covariances are what the exact references and the
    slow-SDE formulas read; their compiled noise is what the engine applies — a noise scaled
    by a variance instead of its square root passes the gradient checks and is seen only
    where a statistic happens to depend on it (a planted bug of that kind did).  Minibatch problems (uniform
    index draws, not linear in them) are left out: ``batch_size`` tests their oracle's
    covariance statistically."""
    g = np.random.default_rng(rng.substream(seed, "instruments.noise_covariance"))
    worst = {}
    for name, P in problem_zoo().items():
        if P.noise_dist != "normal":
            continue
        dev = 0.0
        for _ in range(3):
            x = g.uniform(-1.0, 1.0, P.dim)
            S = np.empty((P.dim, P.n_draws))
            out = np.empty(P.dim)
            for j in range(P.n_draws):
                e = np.zeros(P.n_draws)
                e[j] = 1.0
                P.noise(x, P.params, e, out)
                S[:, j] = out
            want = np.asarray(P.noise_cov_at(x), dtype=np.float64)
            scale = max(float(np.abs(want).max()), 1e-300)
            dev = max(dev, float(np.abs(S @ S.T - want).max()) / scale)
            xi = g.normal(size=P.n_draws)
            P.noise(x, P.params, xi, out)
            dev = max(dev, float(np.abs(out - S @ xi).max()) / max(float(np.abs(S @ xi).max()), 1e-300))
        worst[name] = dev
    top = max(worst.values())
    return (Verdict("problem definitions: the compiled noise applies the declared covariance "
                    "(S S^T = Sigma(x), linear in the draws)", "Def 3.1 (NGOS); instrument (method)",
                    f"agree (max rel. dev <= {NOISE_COV_TOL:g})", Value(top),
                    bool(top <= NOISE_COV_TOL),
                    "3 random points per Gaussian problem: " + "; ".join(f"{k}: {v:.1g}" for k, v in worst.items()),
                    NOISE_COV_TOL),
            {"noise_cov_dev": np.array(list(worst.values()))})


def richardson_verdict() -> tuple[Verdict, dict]:
    """:func:`~sdeverify.stats.richardson_order` (the exact-error orders of the checks) on exact
    curves 0.3 x^p (1 + D x + 0.3 x²) with known p on geometric grids of ratio r = 0.5, 0.7,
    0.8 (the checks' grids halve, where the extrapolation factor r/(1 − r) is 1 and cannot
    show): the extrapolated order must lie within a tenth of its own half-width of p (correct:
    ≤ 0.04 of it; extrapolating without the factor: 0.29 at r = 0.7, 0.38 at r = 0.8)."""
    worst = 0.0
    for r in (0.5, 0.7, 0.8):
        x = 0.2 * r ** np.arange(6)
        for p, D in ((1.0, 0.8), (0.5, -1.5), (2.0, 0.4)):
            iv = richardson_order(x, 0.3 * x ** p * (1 + D * x + 0.3 * x * x))
            worst = max(worst, abs(iv.estimate - p) / max(iv.half_width, 1e-300))
    return (Verdict("stats.richardson_order: extrapolated order = the known order on grids of "
                    "ratio 0.5, 0.7, 0.8 (exact curves)", "instrument (method)",
                    "|estimate - p| <= 0.1 x its half-width", Value(worst), bool(worst <= 0.1),
                    "orders p = 1, 0.5, 2 with first- and second-order corrections; measured = "
                    "max |estimate - p| / half-width", 0.1),
            {"richardson_worst": np.array(worst)})


@experiment(NAME, SIZES)
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Generator and interval self-checks; rules in the module docstring."""
    verdicts, data = [], {}
    # the independent parts as one sweep (base.run_many): on a cluster each is a task
    gen, other, cov, fc, fl, mc, *checks = run_many([
        Call(engine_draw_verdicts, (cfg["gen_paths"], cfg["gen_steps"],
                                    rng.substream(seed, "instruments.generator"))),
        Call(other_draw_verdicts, (cfg["other_draws"], rng.substream(seed, "instruments.other_draws"))),
        Call(coverage_runs, (cfg["reps"], cfg["rep_paths"], rng.substream(seed, "instruments.coverage"))),
        Call(fit_order_coverage, (cfg["fit_reps"], seed)),
        Call(fit_order_coverage, (cfg["fit_reps"], seed, 1.0, 0.05, LACK_OF_FIT)),
        Call(max_abs_coverage, (cfg["fit_reps"], seed)),
        Call(gradient_consistency_verdict, (seed,)), Call(noise_covariance_verdict, (seed,)),
        Call(richardson_verdict)])
    for vs, d in (gen, other):
        verdicts += vs
        data.update(d)
    tick(progress, 1, 3)
    labels = {"x0": "SimulationResult.sem: 95% interval of E x0 (SGD, quadratic) covers the exact mean",
              "loss": "SimulationResult.sem: 95% interval of E L (SGD, quadratic) covers the exact mean",
              "diff": "SimulationResult.paired: 95% interval of E[x0(SGDM) - x0(SGD)] covers the exact value"}
    for k, lab in labels.items():
        verdicts.append(_coverage_verdict(lab, cov[k], (NOMINAL, NOMINAL)))
        data[f"coverage_{k}"] = cov[k]
    tick(progress, 2, 3)
    verdicts.append(_coverage_verdict(
        "stats.fit_order: 95% interval of the order covers the true order (synthetic curves)",
        fc, FIT_ORDER_BAND, FIT_ORDER_ALT))
    data["coverage_fit_order"] = fc
    verdicts.append(_coverage_verdict(
        f"stats.fit_order under lack of fit (scatter {LACK_OF_FIT:g}x the stated errors): "
        "the chi2 inflation restores 95% coverage", fl, (NOMINAL, NOMINAL), FIT_ORDER_LOF_ALT))
    data["coverage_fit_order_lack_of_fit"] = fl
    verdicts.append(_coverage_verdict(
        f"stats.max_abs_interval: 95% interval of max_k |mu_k| covers it (K = {MAX_ABS_K} equal means)",
        mc, MAX_ABS_BAND, _max_abs_alt()))
    data["coverage_max_abs"] = mc
    for v, d in checks:
        verdicts.append(v)
        data.update(d)
    tick(progress, 3, 3)
    return dict(cfg, sigma=SIGMA, family_alpha=FAMILY_ALPHA), data, verdicts


@styled
def plot(result: ExperimentResult, path):
    from .base import save_figure, subplots
    d = result.data
    fig, ax = subplots(2)
    edges = np.linspace(-5, 5, 101)
    mid = 0.5 * (edges[1:] + edges[:-1])
    n = float(d["gen_n"])
    expected = n * np.diff(st.norm.cdf(edges))
    ax[0].semilogy(mid, np.maximum(d["gen_hist"], 0.5), ".", label="engine draws")
    ax[0].semilogy(mid, expected, "-", lw=1, label=r"$\mathcal{N}(0, 1)$")
    ax[0].set(xlabel="$z$", ylabel="count",
              title=f"generator, $n = {int(n)}$ (KS $D = {float(d['gen_ks']):.2g}$)")
    legend_below(ax[0])
    names = ["x0", "loss", "diff", "fit_order", "max_abs"]
    cov = [float(np.mean(d[f"coverage_{k}"])) for k in names]
    ax[1].bar(names, cov)
    ax[1].axhline(NOMINAL, color="k", ls="--", label="nominal 0.95")
    ax[1].set(ylim=(0.8, 1.0), ylabel="coverage", title="coverage of the 95% intervals")
    ax[1].tick_params(axis="x", rotation=30)
    legend_below(ax[1])
    return save_figure(fig, path)
