"""Lemma 3.4, the descent lemma, on the non-convex CosineWell with state-dependent noise.

    E[L(x₁)] − L(x₀) = −η‖∇L‖² + (η²/2)∇Lᵀ∇²L∇L + (η²σ²/2) tr(∇²L Σ) + R(η),  R = o(η²).

One SGD step from fixed points x₀ with σ held fixed (σ = 1.3 by default: ≠ 1, so that σ and σ²
differ).  The remainder is estimated by the
engine's ensemble with the exact quadratic model as a control variate: per path,

    r = L(x₁) − [L(x₀) + ∇L·δ + ½ δᵀ∇²L δ],   δ = x₁ − x₀,

whose expectation is exactly R(η) (the model's expectation is the three terms above), and
whose per-path spread is O(η³) instead of O(η) — without it R would drown in Monte Carlo
noise.  The leading term is R ≈ (1/6) E ∂³L[δ, δ, δ] = O(η³).

Decision rules: (i) "the remainder is o(η²)" — the lower end of the 95% interval of the
order fitted to |R(η)| is > 2; (ii) the Taylor prediction (1/6)E∂³L[δ,δ,δ] + (1/24)E∂⁴L[δ⁴]
lies in the interval of R at the smallest η (family-wise over the two points at the
check's false-failure share, ``experiments/budget.py``).  (The plain change E L(x₁) − L(x₀) and the three terms
are kept in the data and drawn, but its O(η) Monte Carlo noise cannot resolve R.)
"""
from __future__ import annotations

import numpy as np

from .. import theory
from ..optim import SGD
from ..problems import CosineWell
from ..rng import substream
from ..stats import Interval, fit_order, sample_interval, z_value
from ..figstyle import legend_below, styled
from .base import (ExperimentResult, Progress, Verdict, experiment, save_figure, simulate, subplots,
                   tick)
from .budget import ALPHA

NAME = "descent_lemma"
TITLE = "Lemma 3.4: one-step expected loss change; remainder o(eta^2)"

SIZES = {"smoke": dict(etas=2.0 ** -np.arange(1, 6), paths=20000),
         "quick": dict(etas=2.0 ** -np.arange(1, 8), paths=100000),
         "full": dict(etas=2.0 ** -np.arange(1, 10), paths=1000000)}
POINTS = np.array([[0.7, -1.2, 2.5], [1.5, 0.4, -0.9]])


#: family-wise level of the closed-form-terms verdict (4 z-tests); at 1e-3 it failed 1 seed
#: in 100 (seed 47); 1e-4 keeps the main job's false-failure budget (a wrong coefficient in a
#: term is > 10 standard errors)
TERMS_ALPHA = 1e-4
#: family-wise level of the two Taylor-prediction verdicts: the rest of the budget share
TAYLOR_ALPHA = ALPHA[NAME] - TERMS_ALPHA


def one_step(P: CosineWell, opt, x0: np.ndarray, paths: int, sigma: float,
             seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of ``opt`` from ``x0`` on the engine: per path the displacement δ = x₁ − x₀
    (paths, d), the remainder L(x₁) − [L(x₀) + ∇L·δ + ½δᵀ∇²Lδ] and the change L(x₁) − L(x₀)."""
    res = simulate(P, [opt], x0, steps=1, paths=paths, sigma=sigma, seed=seed, record=[1],
                   observables=["loss"], store_states=True)
    x1 = res.states[0, 0]                        # (paths, d)
    dlt = x1 - x0
    L0 = P.value(x0)
    L1 = 0.5 * np.sum(x1 ** 2, axis=1) + P.amplitude * np.sum(np.cos(x1), axis=1)
    model = L0 + dlt @ P.gradient(x0) + 0.5 * np.einsum("pi,ij,pj->p", dlt, P.hessian_at(x0), dlt)
    return dlt, L1 - model, L1 - L0


def taylor_remainder(P: CosineWell, x0: np.ndarray, mu: np.ndarray, var: np.ndarray) -> float:
    """Taylor prediction of the one-step remainder on the CosineWell when δ_i ~ N(mu_i, var_i)
    independently: (1/6) Σ ∂³L_i E δ_i³ + (1/24) Σ ∂⁴L_i E δ_i⁴ (+O(δ⁵)), with
    ∂³L_i = a sin x_i and ∂⁴L_i = a cos x_i."""
    a = P.amplitude
    return float(np.sum(P.third_derivative(x0) * (mu ** 3 + 3 * mu * var)) / 6.0
                 + np.sum(a * np.cos(x0) * (mu ** 4 + 6 * mu ** 2 * var + 3 * var ** 2)) / 24.0)


@experiment(NAME, SIZES, defaults=dict(sigma=1.3))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Measure R(η) at each point and η; rules in the module docstring."""
    sigma = cfg["sigma"]
    etas, N = np.asarray(cfg["etas"]), cfg["paths"]
    P = CosineWell(3, amplitude=2.0)
    R = np.empty((len(POINTS), len(etas), 3))
    change = np.empty((len(POINTS), len(etas), 3))
    terms = np.empty((len(POINTS), len(etas), 3))
    lead = np.empty((len(POINTS), len(etas)))
    pieces = np.empty((len(POINTS), 2, 3))         # E[∇L·δ], E[½δᵀHδ] at the largest η: est, sem, exact
    verdicts = []
    for pi, x0 in enumerate(POINTS):
        g, H, S = P.gradient(x0), P.hessian_at(x0), P.noise_cov_at(x0)
        for ei, eta in enumerate(etas):
            dlt, rem, chg = one_step(P, SGD(eta), x0, N, sigma,
                                     substream(seed, f"descent_lemma.point{pi}", ei))
            r = sample_interval(rem)
            R[pi, ei] = r.estimate, r.low, r.high
            c = sample_interval(chg)
            change[pi, ei] = c.estimate, c.low, c.high
            terms[pi, ei] = theory.descent_lemma_terms(g, H, S, eta, sigma)
            if ei == 0:     # the closed-form terms themselves, against the same paths
                lin, quad = dlt @ g, 0.5 * np.einsum("pi,ij,pj->p", dlt, H, dlt)
                for k, (v, ex) in enumerate(((lin, terms[pi, 0, 0]),
                                             (quad, terms[pi, 0, 1] + terms[pi, 0, 2]))):
                    pieces[pi, k] = v.mean(), v.std(ddof=1) / np.sqrt(v.size), ex
            # δ_i ~ N(−η g_i, η²σ²Σ_ii) for one SGD step
            lead[pi, ei] = taylor_remainder(P, x0, -eta * g, eta ** 2 * sigma ** 2 * np.diag(S))
            tick(progress, pi * len(etas) + ei + 1, len(POINTS) * len(etas))
        est = np.abs(R[pi, :, 0])
        sem = (R[pi, :, 2] - R[pi, :, 1]) / (2 * z_value())
        f = fit_order(etas, est, sem)
        verdicts.append(Verdict(
            f"remainder is o(eta^2) at x0={x0.tolist()}", "Lemma 3.4",
            "order of |R(eta)| > 2 (leading term O(eta^3))", f.order, f.order.low > 2.0,
            "lower end of the 95% interval of the fitted order > 2"))
        z999 = z_value(1 - TAYLOR_ALPHA / len(POINTS))
        sem_last = (R[pi, -1, 2] - R[pi, -1, 1]) / (2 * z_value())
        ok = abs(R[pi, -1, 0] - lead[pi, -1]) <= z999 * sem_last
        verdicts.append(Verdict(
            f"Taylor prediction of R (3rd+4th order) at smallest eta, x0={x0.tolist()}",
            "Lemma 3.4 (Taylor)", f"R = {lead[pi, -1]:.4g}",
            Interval(R[pi, -1, 0], R[pi, -1, 0] - z999 * sem_last, R[pi, -1, 0] + z999 * sem_last, 1 - TAYLOR_ALPHA / len(POINTS)),
            bool(ok), f"prediction inside the {1 - TAYLOR_ALPHA / len(POINTS):.3%} interval of R at the "
            "smallest eta (Bonferroni over the two points)"))
    zb = z_value(1 - TERMS_ALPHA / pieces[:, :, 0].size)
    zs = (pieces[:, :, 0] - pieces[:, :, 2]) / pieces[:, :, 1]
    i, k = np.unravel_index(int(np.argmax(np.abs(zs))), zs.shape)
    est, se, ex = pieces[i, k]
    verdicts.append(Verdict(
        f"Lemma 3.4's three terms (closed form) = E of the linear and quadratic model terms, eta={etas[0]:g}",
        "Lemma 3.4", f"worst: {'E[grad.delta] = -eta|g|^2' if k == 0 else 'E[delta H delta/2] = eta^2/2 (gHg + sigma^2 tr(H Sigma))'}"
        f" = {ex:.5g} (x0 = {POINTS[i].tolist()})",
        Interval(float(est), float(est - zb * se), float(est + zb * se), 1 - TERMS_ALPHA / pieces[:, :, 0].size),
        bool(np.all(np.abs(zs) <= zb)),
        f"two-sided z-tests of both terms at both points, |z| max {np.abs(zs).max():.2f} <= {zb:.2f} "
        f"(family-wise {1 - TERMS_ALPHA:.2%}); the remainder above uses the per-path model, not "
        "these formulas"))
    data = {"etas": etas, "points": POINTS, "remainder": R, "change": change, "terms": terms,
            "leading_remainder": lead, "term_pieces": pieces}
    return dict(cfg, sigma=sigma, etas=etas.tolist()), data, verdicts


@styled
def plot(result: ExperimentResult, path):
    d = result.data
    etas = d["etas"]
    fig, ax = subplots(2)
    for pi in range(d["points"].shape[0]):
        R = d["remainder"][pi]
        ax[0].errorbar(etas, np.abs(R[:, 0]), yerr=[R[:, 0] - R[:, 1], R[:, 2] - R[:, 0]], fmt="o",
                       color=f"C{pi}", label=f"$|R|$, $x_0 = {np.round(d['points'][pi], 2).tolist()}$")
        ax[0].plot(etas, np.abs(d["leading_remainder"][pi]), "--", color=f"C{pi}",
                   label="Taylor prediction (3rd + 4th order)")
        tsum = d["terms"][pi].sum(axis=1)
        ch = d["change"][pi]
        ax[1].errorbar(etas, -ch[:, 0], yerr=[ch[:, 2] - ch[:, 0], ch[:, 0] - ch[:, 1]], fmt="o",
                       color=f"C{pi}", label=rf"measured $-(\mathbb{{E}}L(x_1) - L(x_0))$, point {pi}")
        ax[1].plot(etas, -tsum, "-", color=f"C{pi}", lw=0.8, label="$-$(three terms of Lemma 3.4)")
    ax[0].plot(etas, etas ** 2 * np.abs(d["remainder"][0, 0, 0]) / etas[0] ** 2, "k:",
               label=r"$\propto\eta^2$ (reference)")
    ax[0].set(xscale="log", yscale="log", xlabel=r"$\eta$", ylabel=r"$|R(\eta)|$",
              title="Lemma 3.4 remainder (95% CI)")
    ax[1].set(xscale="log", yscale="log", xlabel=r"$\eta$", ylabel="expected one-step decrease",
              title="one-step expected decrease vs formula")
    from matplotlib.ticker import NullFormatter
    for a in ax:
        a.xaxis.set_minor_formatter(NullFormatter())      # less than a decade: no crowded labels
        legend_below(a)
    return save_figure(fig, path)
