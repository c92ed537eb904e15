"""App. A.2, the descent lemma for momentum: one SGDM step from (x₀, m₀), σ held fixed.

With m̄ = βm₀ + (1 − β)∇L(x₀) the expected new buffer (Def. 3.3; docs/theory.md §12),

    E[L(x₁)] − L(x₀) = −η ∇L·m̄ + (η²/2) m̄ᵀ∇²L m̄ + (η²(1 − β)²σ²/2) tr(∇²L Σ) + R(η),

R = o(η²): the SGD lemma (Lemma 3.4) with the gradient replaced by the expected buffer and
the noise term shrunk by (1 − β)² — the per-step variance reduction of Sec. 4.1.  Measured
on the non-convex ``CosineWell`` (state-dependent noise) at two points, β = 0.9 and a buffer
m₀ that is neither 0 nor ∇L (so that the βm₀ and (1 − β)∇L parts of m̄ are both exercised),
with the same estimator as ``descent_lemma`` (the exact quadratic model as a per-path
control variate, :func:`descent_lemma.one_step`).

Decision rules: (i) the three closed-form terms equal the Monte Carlo means of the linear and
quadratic model terms E[∇L·δ] and E[½δᵀ∇²Lδ] at the largest η — two-sided z-tests at both
points, family-wise level TERMS_ALPHA; (ii) "the remainder is o(η²)": the lower end of the
95% interval of the order fitted to |R(η)| is > 2; (iii) the Taylor prediction of R
(δ ~ N(−ηm̄, η²(1 − β)²σ²Σ)) lies in the interval of R at the smallest η (two-sided,
Bonferroni over the points, the rest of the check's share of ``experiments/budget.py``).
"""
from __future__ import annotations

import numpy as np

from .. import theory
from ..optim import SGDM
from ..problems import CosineWell
from ..rng import substream
from ..stats import Interval, fit_order, sample_interval, z_value
from ..figstyle import figsize, legend_below, styled
from .base import ExperimentResult, Progress, Verdict, experiment, save_figure, subplots, tick
from .budget import ALPHA
from .descent_lemma import POINTS, one_step, taylor_remainder

NAME = "sgdm_descent_lemma"
TITLE = "App A.2: SGDM one-step expected loss change; remainder o(eta^2)"

SIZES = {"smoke": dict(etas=2.0 ** -np.arange(1, 6), paths=20000),
         "quick": dict(etas=2.0 ** -np.arange(1, 7), paths=100000),
         "full": dict(etas=2.0 ** -np.arange(1, 10), paths=1000000)}
M0 = np.array([[1.1, 0.3, -0.8], [-0.6, 0.9, 0.5]])

#: family-wise level of the closed-form-terms z-tests (4 tests)
TERMS_ALPHA = 1e-4
#: family-wise level of the two Taylor-prediction tests: the rest of the check's share
TAYLOR_ALPHA = ALPHA[NAME] - TERMS_ALPHA


def terms_verdict(pieces: np.ndarray, eta: float, beta: float) -> Verdict:
    """Rule (i): ``pieces`` (points, 2, 3) = (estimate, standard error, closed form) of
    E[∇L·δ] and E[½δᵀHδ]; two-sided z-tests, family-wise TERMS_ALPHA."""
    n = pieces[:, :, 0].size
    zb = z_value(1 - TERMS_ALPHA / n)
    zs = (pieces[:, :, 0] - pieces[:, :, 2]) / pieces[:, :, 1]
    i, k = np.unravel_index(int(np.argmax(np.abs(zs))), zs.shape)
    est, se, ex = pieces[i, k]
    what = ("E[grad.delta] = -eta grad.mbar" if k == 0 else
            "E[delta H delta/2] = eta^2/2 (mbar H mbar + (1-beta)^2 sigma^2 tr(H Sigma))")
    return Verdict(
        f"App A.2's three SGDM terms (closed form) = E of the linear and quadratic model terms, "
        f"eta={eta:g}, beta={beta:g}", "App A.2", f"worst: {what} = {ex:.5g} (x0 = {POINTS[i].tolist()})",
        Interval(float(est), float(est - zb * se), float(est + zb * se), 1 - TERMS_ALPHA / n),
        bool(np.all(np.abs(zs) <= zb)),
        f"two-sided z-tests of both terms at both points, |z| max {np.abs(zs).max():.2f} <= {zb:.2f} "
        f"(family-wise {1 - TERMS_ALPHA:.2%})")


@experiment(NAME, SIZES, defaults=dict(sigma=1.3, beta=0.9))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Measure R(η) for one SGDM step at each point and η; rules in the module docstring."""
    sigma, beta = cfg["sigma"], cfg["beta"]
    etas, N = np.asarray(cfg["etas"]), cfg["paths"]
    P = CosineWell(3, amplitude=2.0)
    R = np.empty((len(POINTS), len(etas), 3))
    terms = np.empty((len(POINTS), len(etas), 3))
    lead = np.empty((len(POINTS), len(etas)))
    pieces = np.empty((len(POINTS), 2, 3))
    verdicts = []
    z_t = z_value(1 - TAYLOR_ALPHA / len(POINTS))
    for pi, (x0, m0) in enumerate(zip(POINTS, M0)):
        g, H, S = P.gradient(x0), P.hessian_at(x0), P.noise_cov_at(x0)
        mbar = beta * m0 + (1 - beta) * g
        for ei, eta in enumerate(etas):
            dlt, rem, _ = one_step(P, SGDM(eta, beta, m0=m0), x0, N, sigma,
                                   substream(seed, f"sgdm_descent_lemma.point{pi}", ei))
            r = sample_interval(rem)
            R[pi, ei] = r.estimate, r.low, r.high
            terms[pi, ei] = theory.sgdm_descent_terms(g, H, S, m0, eta, beta, sigma)
            if ei == 0:
                lin, quad = dlt @ g, 0.5 * np.einsum("pi,ij,pj->p", dlt, H, dlt)
                for k, (v, ex) in enumerate(((lin, terms[pi, 0, 0]),
                                             (quad, terms[pi, 0, 1] + terms[pi, 0, 2]))):
                    pieces[pi, k] = v.mean(), v.std(ddof=1) / np.sqrt(v.size), ex
            lead[pi, ei] = taylor_remainder(P, x0, -eta * mbar,
                                            (eta * (1 - beta) * sigma) ** 2 * np.diag(S))
            tick(progress, pi * len(etas) + ei + 1, len(POINTS) * len(etas))
        sem = (R[pi, :, 2] - R[pi, :, 1]) / (2 * z_value())
        f = fit_order(etas, np.abs(R[pi, :, 0]), sem)
        verdicts.append(Verdict(
            f"SGDM remainder is o(eta^2) at x0={x0.tolist()}, m0={m0.tolist()}", "App A.2",
            "order of |R(eta)| > 2 (leading term O(eta^3))", f.order, f.order.low > 2.0,
            "lower end of the 95% interval of the fitted order > 2"))
        se = sem[-1]
        ok = abs(R[pi, -1, 0] - lead[pi, -1]) <= z_t * se
        lvl = 1 - TAYLOR_ALPHA / len(POINTS)
        verdicts.append(Verdict(
            f"Taylor prediction of the SGDM remainder at smallest eta, x0={x0.tolist()}",
            "App A.2 (Taylor)", f"R = {lead[pi, -1]:.4g}",
            Interval(R[pi, -1, 0], R[pi, -1, 0] - z_t * se, R[pi, -1, 0] + z_t * se, lvl),
            bool(ok), f"prediction inside the {lvl:.3%} interval of R at the smallest eta "
            "(two-sided, Bonferroni over the two points)"))
    verdicts.append(terms_verdict(pieces, float(etas[0]), beta))
    data = {"etas": etas, "points": POINTS, "m0": M0, "remainder": R, "terms": terms,
            "leading_remainder": lead, "term_pieces": pieces}
    return dict(cfg, sigma=sigma, beta=beta, etas=etas.tolist()), data, verdicts


@styled
def plot(result: ExperimentResult, path):
    d = result.data
    etas = d["etas"]
    fig, ax = subplots(1, figsize(1, width="one"))
    for pi in range(d["points"].shape[0]):
        R = d["remainder"][pi]
        ax.errorbar(etas, np.abs(R[:, 0]), yerr=[R[:, 0] - R[:, 1], R[:, 2] - R[:, 0]], fmt="o",
                    color=f"C{pi}", label=f"$|R|$, $x_0 = {np.round(d['points'][pi], 2).tolist()}$")
        ax.plot(etas, np.abs(d["leading_remainder"][pi]), "--", color=f"C{pi}",
                label="Taylor prediction (3rd + 4th order)")
    ax.set(xscale="log", yscale="log", xlabel=r"$\eta$", ylabel=r"$|R(\eta)|$",
           title="App A.2: SGDM one-step remainder (95% CI)")
    from matplotlib.ticker import NullFormatter
    ax.xaxis.set_minor_formatter(NullFormatter())         # less than a decade: no crowded labels
    legend_below(ax)
    return save_figure(fig, path)
