"""Thm 4.5's weak order searched for its worst case where no exact recursion exists (Monte Carlo).

``weak_worst_case`` searches linear–Gaussian quadratics with the exact moment recursion.  This
check searches the problems that recursion cannot reach — non-quadratic non-separable losses,
state-dependent noise covariance, non-Gaussian (also skewed) noise — by Monte Carlo with
common random numbers (docs/theory.md §15).  The family, in d = 2:

* loss L(x) = ½(x − c)ᵀH(x − c) + (q/4)|x|⁴ + a cos(w·x): H = Q diag(λ) Qᵀ (Q a random
  rotation, λ log-uniform in [0.2, 3]), c standard normal, q uniform in [0, 0.5] (quartic,
  non-separable), a uniform in [0, 1] and w standard normal (a cosine coupling of the
  coordinates; L is non-convex where a|w|² exceeds the curvature);
* noise v(x) = √(1 + κ|x|²) B ξ_{1,2} + ρ sin(u·x) e ξ₃, so Σ(x) = (1 + κ|x|²)BBᵀ +
  ρ² sin²(u·x) eeᵀ changes both its scale and its shape with x (B standard normal / √2,
  κ uniform in [0, 1], ρ in [0.5, 1.5], u standard normal, e a random unit vector);
* the base draws ξ, mean 0 and variance 1, of one of four laws, problem i taking law i mod 4:
  Gaussian, Rademacher (kurtosis 1), uniform on [−√3, √3] (kurtosis 1.8) and the centred
  exponential −ln U − 1 (skewness 2, kurtosis 9; finite moments of every order).  Student-t
  noise is not in the family (the engine's base draws are normal, Rademacher or uniform);
* test functions h(x) = (v·x)^p, p = 1 … 4, v a random unit vector per problem;
* the set-up of ``weak_approximation``: x₀ = (1, −0.5), T = 1, σ = σ₀η^(−1/2) (σ₀ = 0.5),
  1 − β = λη^α (λ = 0.1 at α = 0, else 1), SGDM against SGD with the averaged lr (Eq 8),
  the two driven by the same draws path by path (common random numbers).

Estimator: per η, the paired means of h(x_k^SGDM) − h(y_k^SGD) at ``records`` steps up to
T/η with their standard errors; the error max_k |E h(x_k) − E h(y_k)| gets a 95%
simultaneous (Bonferroni over the steps) interval (``stats.max_abs_interval``); its order
its order is the mean log-slope over the ``tail`` smallest η of the grid (the secant between
the range's end points, :func:`secant_order`, with a normal interval from their standard
errors; a power-law fit through the interior points would turn the bending of a curve
towards a floor into lack of fit and hide it).

Decision rule per α (the Monte Carlo floor): the order is fitted on the ``tail`` smallest η
(4 at quick and full size: a factor 8 in η), and it counts only if the error is *resolved*
at both end points — the lower end of its simultaneous interval is at least half the estimate (otherwise the
error is too close to what the paths can measure, and its log-log slope says little; such
pairs are counted and reported, never searched).  The η grid stops where the errors of the family
are still resolved at the size's path count (2⁻¹⁰ at quick size with 4 000 paths).  Over the
resolved fits the smallest fitted order is the worst case; it agrees with Thm 4.5 iff the
upper end of its 95% interval ≥ (1 − α)/2.  If it is below, the verdict is NOT RESOLVED
(pre-asymptotic) when the order fitted on the ``tail`` smallest η exceeds the one fitted on
the ``tail`` largest η (the local order still rises, as in ``weak_worst_case``), and
FAIL otherwise; NOT RESOLVED (Monte Carlo floor) when no fit is resolved.  Reported: the
worst problem (its noise law, q, a, κ, ρ), the test function, the median order, and whether
1 − α lies in the worst interval.  The verdict is one-sided against a bound the family's
orders clear by about 2× at α ≤ 0.5 (not a calibrated test of a known value, so it takes no
share of the main job's budget; its false-failure rate is measured over seeds).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ..problems import NGOS
from ..rng import substream
from ..stats import Interval, max_abs_interval, z_value
from ..figstyle import figsize, legend_below, styled
from .base import (Call, ExperimentResult, Progress, Verdict, experiment, run_many, save_figure,
                   simulate, subplots, tick)
from .weak_approximation import pair

NAME = "weak_worst_case_mc"
TITLE = ("Thm 4.5: smallest weak order over non-quadratic losses with state-dependent, "
         "non-Gaussian noise (Monte Carlo, common random numbers)")

SIZES = {"smoke": dict(problems=2, etas=2.0 ** -np.arange(4, 9), alphas=(0.0,), paths=4000, records=8,
                       tail=3),
         "quick": dict(problems=4, etas=2.0 ** -np.arange(4, 11), alphas=(0.0, 0.5), paths=4000, records=12,
                       tail=4),
         "full": dict(problems=12, etas=2.0 ** -np.arange(4, 12), alphas=(0.0, 0.25, 0.5, 0.75),
                      paths=10000, records=16, tail=4)}
X0 = np.array([1.0, -0.5])
POWERS = (1, 2, 3, 4)
#: the base-draw laws of the family: (name, the engine's draw kind, code read by the noise)
NOISE_LAWS = (("Gaussian", "normal", 0.0), ("Rademacher", "rademacher", 1.0),
              ("uniform", "uniform", 2.0), ("centred exponential", "uniform", 3.0))
# parameter layout p: H (0-3), c (4-5), q (6), a (7), w (8-9), kappa (10), B (11-14), rho (15),
# u (16-17), the angle of e (18), the law's code (19)
_NP = 20


@numba.njit(cache=True)
def family_grad(x, p, out):
    """∇L = H(x − c) + q|x|²x − a sin(w·x) w."""
    d0, d1 = x[0] - p[4], x[1] - p[5]
    r2 = x[0] * x[0] + x[1] * x[1]
    s = math.sin(p[8] * x[0] + p[9] * x[1])
    out[0] = p[0] * d0 + p[1] * d1 + p[6] * r2 * x[0] - p[7] * s * p[8]
    out[1] = p[2] * d0 + p[3] * d1 + p[6] * r2 * x[1] - p[7] * s * p[9]


@numba.njit(cache=True)
def _standard(z, code):
    """A base draw mapped to mean 0, variance 1 under the problem's law."""
    if code == 2.0:
        return (z - 0.5) * 3.4641016151377544          # uniform (0, 1) -> [−√3, √3]
    if code == 3.0:
        return -math.log(z) - 1.0                       # Exp(1) − 1
    return z                                            # normal, Rademacher: as drawn


@numba.njit(cache=True)
def family_noise(x, p, xi, out):
    """v = √(1 + κ|x|²) B ξ_{1,2} + ρ sin(u·x) e ξ₃, e = (cos φ, sin φ)."""
    code = p[19]
    z0, z1, z2 = _standard(xi[0], code), _standard(xi[1], code), _standard(xi[2], code)
    s = math.sqrt(1.0 + p[10] * (x[0] * x[0] + x[1] * x[1]))
    r = p[15] * math.sin(p[16] * x[0] + p[17] * x[1]) * z2
    out[0] = s * (p[11] * z0 + p[12] * z1) + r * math.cos(p[18])
    out[1] = s * (p[13] * z0 + p[14] * z1) + r * math.sin(p[18])


@numba.njit(cache=True)
def family_loss(x, p):
    """L = ½(x − c)ᵀH(x − c) + (q/4)|x|⁴ + a cos(w·x)."""
    d0, d1 = x[0] - p[4], x[1] - p[5]
    r2 = x[0] * x[0] + x[1] * x[1]
    return (0.5 * (d0 * (p[0] * d0 + p[1] * d1) + d1 * (p[2] * d0 + p[3] * d1))
            + 0.25 * p[6] * r2 * r2 + p[7] * math.cos(p[8] * x[0] + p[9] * x[1]))


def random_problem(g: np.random.Generator, index: int) -> tuple[NGOS, np.ndarray, dict]:
    """Member ``index`` of the family (module docstring): the problem, its test direction v
    and its parameters (for the report)."""
    Q, _ = np.linalg.qr(g.standard_normal((2, 2)))
    lam = np.exp(g.uniform(np.log(0.2), np.log(3.0), 2))
    H = Q @ np.diag(lam) @ Q.T
    c = g.standard_normal(2)
    q, a = g.uniform(0.0, 0.5), g.uniform(0.0, 1.0)
    w = g.standard_normal(2)
    kappa, rho = g.uniform(0.0, 1.0), g.uniform(0.5, 1.5)
    B = g.standard_normal((2, 2)) / np.sqrt(2.0)
    u = g.standard_normal(2)
    phi = g.uniform(0.0, 2 * np.pi)
    v = g.standard_normal(2)
    law, kind, code = NOISE_LAWS[index % len(NOISE_LAWS)]
    p = np.concatenate([H.ravel(), c, [q, a], w, [kappa], B.ravel(), [rho], u, [phi, code]])
    P = NGOS(dim=2, grad=family_grad, noise=family_noise, loss=family_loss, params=p, n_draws=3,
             noise_dist=kind, name=f"worst-case family #{index} ({law})")
    info = dict(law=law, eigenvalues=np.round(lam, 3).tolist(), q=round(q, 3), a=round(a, 3),
                kappa=round(kappa, 3), rho=round(rho, 3))
    return P, v / np.linalg.norm(v), info


def mc_call(P: NGOS, eta: float, alpha: float, cfg: dict, seed: int) -> dict:
    """The coupled SGDM / SGD(averaged lr) run at one η, as ``simulate`` keywords."""
    sgdm, sgd, _, steps = pair(eta, alpha, cfg["T"])
    rec = np.unique(np.linspace(0, steps, cfg["records"] + 1).round().astype(np.int64))
    return dict(problem=P, optimizers=[sgd, sgdm], x0=X0, steps=steps, paths=cfg["paths"],
                sigma=cfg["sigma0"] / np.sqrt(eta), seed=seed, record=rec, observables=["loss"],
                store_states=True, on_divergence="raise")


def mc_point(P: NGOS, v: np.ndarray, eta: float, alpha: float, cfg: dict, seed: int) -> np.ndarray:
    """One (problem, α, η) point, one task's work: the coupled run (:func:`mc_call`) and its
    :func:`weak_errors`."""
    return weak_errors(simulate(**mc_call(P, eta, alpha, cfg, seed)), v)


def weak_errors(res, v: np.ndarray, level: float = 0.95) -> np.ndarray:
    """(len(POWERS), 3): max_k |E h(x_k^SGDM) − E h(y_k^SGD)| for h = (v·x)^p, as
    (estimate, low, high) of a simultaneous interval over the recorded steps k > 0."""
    s = res.states[:, 1:] @ v                     # (2, n_rec − 1, paths): v·x per path
    out = np.empty((len(POWERS), 3))
    for hi, pw in enumerate(POWERS):
        d = s[1] ** pw - s[0] ** pw                # SGDM − SGD, path by path (CRN)
        iv = max_abs_interval(d.mean(axis=1), d.std(axis=1, ddof=1) / np.sqrt(d.shape[1]), level)
        out[hi] = iv.estimate, iv.low, iv.high
    return out


#: a fitted error is resolved when its simultaneous interval's lower end is at least this
#: fraction of the estimate (the error known to within a factor 2 at both ends of the range)
RESOLVED_FRACTION = 0.5


def secant_order(etas: np.ndarray, e: np.ndarray, level: float = 0.95) -> Interval:
    """Mean order of an error curve over ``etas`` (its end points): log(e₀/e₁)/log(η₀/η₁), with
    a normal interval from the two end points' standard errors (independent runs; the sem of
    each is its simultaneous interval's half-width over z₉₅, an overstatement).  No power-law
    fit over the interior points: a curve bending towards a floor would inflate a fit's lack
    of fit and hide what the end points show."""
    est = e[[0, -1], 0]
    rel = (e[[0, -1], 2] - e[[0, -1], 1]) / (2 * z_value()) / est
    lr = np.log(etas[0] / etas[-1])
    p, se = float(np.log(est[0] / est[1]) / lr), float(np.hypot(*rel) / lr)
    z = z_value(level)
    return Interval(p, p - z * se, p + z * se, level)


def fit_pair(etas: np.ndarray, e: np.ndarray, n: int) -> tuple[np.ndarray, bool, float]:
    """The order of one error curve ``e`` (n_eta, 3) over its ``n`` smallest η (secant, 95%):
    ([order, low, high], resolved, the same order over the ``n`` largest η).  Resolved: lower
    end ≥ ``RESOLVED_FRACTION`` × estimate at both end points of the smallest-η range."""
    o = secant_order(etas[-n:], e[-n:])
    head = secant_order(etas[:n], e[:n]).estimate
    ok = bool(np.all(e[[-n, -1], 1] >= RESOLVED_FRACTION * e[[-n, -1], 0]))
    return np.array([o.estimate, o.low, o.high]), ok, float(head)


@experiment(NAME, SIZES, defaults=dict(T=1.0, sigma0=0.5))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Search the family by Monte Carlo; rules in the module docstring."""
    etas, alphas, n = np.asarray(cfg["etas"], dtype=float), tuple(cfg["alphas"]), cfg["problems"]
    g = np.random.default_rng(substream(seed, "weak_worst_case_mc.problems"))
    probs = [random_problem(g, i) for i in range(n)]
    err = np.zeros((len(alphas), n, len(POWERS), len(etas), 3))
    fits = np.full((len(alphas), n, len(POWERS), 3), np.nan)
    resolved = np.zeros((len(alphas), n, len(POWERS)), dtype=bool)
    head = np.full((len(alphas), n, len(POWERS)), np.nan)
    # every (alpha, problem, eta) point one task — its coupled run and weak errors — handed
    # out together, longest (smallest eta) first; on a cluster only the errors come back
    keys = sorted(((ai, pi, ei) for ai in range(len(alphas)) for pi in range(n) for ei in range(len(etas))),
                  key=lambda k: (-k[2], k[0], k[1]))
    done = run_many([Call(mc_point, (probs[pi][0], probs[pi][1], etas[ei], alphas[ai], cfg,
                                     substream(seed, f"weak_worst_case_mc.a{ai}.p{pi}", ei)),
                          label=f"weak_worst_case_mc alpha={alphas[ai]:g} problem {pi} eta={etas[ei]:g}")
                     for ai, pi, ei in keys])
    for (ai, pi, ei), e in zip(keys, done):
        err[ai, pi, :, ei] = e
    for ai in range(len(alphas)):
        for pi in range(n):
            for hi in range(len(POWERS)):
                fits[ai, pi, hi], resolved[ai, pi, hi], head[ai, pi, hi] = fit_pair(etas, err[ai, pi, hi],
                                                                                    cfg["tail"])
    tick(progress, len(keys), len(keys))
    verdicts = [alpha_verdict(a, etas, cfg["tail"], probs, fits[ai], resolved[ai], head[ai])
                for ai, a in enumerate(alphas)]
    data = {"etas": etas, "alphas": np.array(alphas), "orders": fits, "errors": err,
            "resolved": resolved, "head_orders": head}
    params = dict(cfg, etas=etas.tolist(), alphas=list(alphas), x0=X0.tolist(),
                  problem_info=[info for _, _, info in probs])
    return params, data, verdicts


def alpha_verdict(a: float, etas, tail_n: int, probs, fits, resolved, head) -> Verdict:
    """The worst resolved order at momentum index ``a`` against Thm 4.5's bound."""
    bound, heur = (1 - a) / 2, 1 - a
    n, nh = fits.shape[0], fits.shape[1]
    claim = (f"Thm 4.5 worst case (Monte Carlo), alpha={a:g}: smallest weak order over {n} "
             f"non-quadratic problems with state-dependent, non-Gaussian noise x {nh} test functions")
    tail = f"order = log-slope between eta = {etas[-tail_n]:g} and {etas[-1]:g}"
    if not resolved.any():
        return Verdict("NOT RESOLVED (Monte Carlo floor) — " + claim, "Thm 4.5 (THEORY §15)",
                       f"order >= (1-alpha)/2 = {bound:g}", Interval(np.nan, np.nan, np.nan), True,
                       "no error curve is resolved (simultaneous interval's lower end >= "
                       f"{RESOLVED_FRACTION:g} x estimate) at both ends ({tail})")
    masked = np.where(resolved, fits[..., 0], np.inf)
    pi, hi = np.unravel_index(int(np.argmin(masked)), masked.shape)
    est, lo, up = fits[pi, hi]
    rising = bool(est > head[pi, hi])
    ok = bool(up >= bound)
    status = "" if ok else ("NOT RESOLVED (pre-asymptotic) — " if rising else "")
    info = probs[pi][2]
    return Verdict(
        status + claim, "Thm 4.5 (THEORY §15)",
        f"order >= (1-alpha)/2 = {bound:g}; finding: 1-alpha = {heur:g} "
        f"{'inside' if lo <= heur <= up else 'OUTSIDE'} the worst interval",
        Interval(float(est), float(lo), float(up), 0.95), ok or rising,
        f"rule: upper end of the worst resolved order's 95% interval >= (1-alpha)/2; if below, NOT "
        f"RESOLVED while the order still rises towards small eta (order over the smallest eta {est:.3g} > "
        f"over the largest {head[pi, hi]:.3g}: {'yes' if rising else 'no'}), else FAIL; {tail}; "
        f"resolved: {int(resolved.sum())}/{resolved.size} pairs (error's simultaneous lower end >= "
        f"{RESOLVED_FRACTION:g} x estimate at both ends; the others are too close to the Monte "
        f"Carlo floor and not searched); worst: problem {pi} "
        f"({info['law']} noise, eigenvalues {info['eigenvalues']}, q={info['q']}, a={info['a']}, "
        f"kappa={info['kappa']}, rho={info['rho']}), h = (v.x)^{POWERS[hi]}; median resolved order "
        f"{np.median(fits[..., 0][resolved]):.3g}")


@styled
def plot(result: ExperimentResult, path):
    """Orders (95% intervals) of every resolved (problem, test function) pair per α, the worst
    one in black, against the bound (1 − α)/2 and 1 − α."""
    d = result.data
    fig, ax = subplots(1, figsize(1, width="one"))
    for ai, a in enumerate(d["alphas"]):
        o = d["orders"][ai][d["resolved"][ai]]                      # (n_resolved, 3)
        x = a + 0.06 * (np.arange(len(o)) / max(len(o) - 1, 1) - 0.5)
        ax.errorbar(x, o[:, 0], yerr=[o[:, 0] - o[:, 1], o[:, 2] - o[:, 0]], fmt=".", color=f"C{ai}",
                    ms=3, lw=0.6)
        if len(o):
            w = int(np.argmin(o[:, 0]))
            ax.plot(x[w], o[w, 0], "ko", ms=5, mfc="none")
        ax.plot([a - 0.05, a + 0.05], [(1 - a) / 2] * 2, "k-", lw=2)
        ax.plot([a - 0.05, a + 0.05], [1 - a] * 2, "k:", lw=1)
    ax.plot([], [], "k.", label="order over the smallest eta (resolved pairs, 95%)")
    ax.plot([], [], "ko", mfc="none", label="worst")
    ax.plot([], [], "k-", lw=2, label=r"bound $(1-\alpha)/2$ (Thm 4.5)")
    ax.plot([], [], "k:", label=r"$1-\alpha$")
    al = np.asarray(d["alphas"], dtype=float)
    ax.set(xlabel=r"$\alpha$", ylabel="weak order (Monte Carlo)", xlim=(al.min() - 0.1, al.max() + 0.1),
           title="Thm 4.5 worst case, Monte Carlo family")
    legend_below(ax)
    return save_figure(fig, path)
