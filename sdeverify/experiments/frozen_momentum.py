"""App. B.2: with momentum index α > 1, SGDM is frozen over O(1/η) steps.

Set-up of Thm 4.5 (σ = σ₀η^{-1/2}, K = T/η steps, m₀ = 0) but 1 − β = η^α with α > 1.  The
buffer then forgets on the time scale η^{-α} ≫ K, so over the K steps it only accumulates
(1 − β)·Σ g_j, and x_K − x₀ → 0: the trajectory "becomes trivial" (App. B.2), unlike SGD or
SGDM with α < 1, which move by O(1) in the same time.  docs/theory.md §12 derives the rate:
with a frozen gradient the displacement is exactly

    E x_K − x₀ = −c_K ∇L(x₀),     c_K = η[K − β(1 − β^K)/(1 − β)] = (T²/2) η^{α−1} (1 + O(η^{α−1})),
    Var x_{K,i} = η²σ²Σ_ii(x₀) Σ_{t=1..K} (1 − β^t)² = (σ₀²T³/3) Σ_ii(x₀) η^{2(α−1)} (1 + O(η^{α−1})),

(the Sec. 4.1 closed forms of THEORY §5 with β = 1 − η^α) and, on a non-linear loss, the
gradient and noise change along the way by O(η^{α−1}), a relative correction of that order.
So both ratios

    r_mean,i(η) = −(E x_{K,i} − x_{0,i}) / (c_K ∂_iL(x₀)),     r_var,i(η) = Var x_{K,i} / (η²σ²Σ_ii Σ(1 − β^t)²)

tend to 1 as η → 0, linearly in s = η^{α−1}: the displacement vanishes with order α − 1
and the prediction includes its coefficient.  Measured on the non-convex ``CosineWell``
(state-dependent noise) from x₀ = (1, −0.5), T = 1, σ₀ = 0.5.

Decision rule: a weighted least-squares fit r = a + b·s over the η grid, per coordinate and
ratio; the intercept a (the η → 0 limit) must lie within a two-sided z-interval of 1, at the
family-wise level of the check's share of ``experiments/budget.py`` (Bonferroni over
coordinates, the two ratios and the α values).  A 10% error in the predicted drift or
variance moves a by 10%, many standard errors at the quick size.
"""
from __future__ import annotations

import numpy as np

from .. import theory
from ..optim import SGDM
from ..problems import CosineWell
from ..rng import substream
from ..stats import Interval, z_value
from ..figstyle import figsize, legend_below, styled
from .base import (Call, ExperimentResult, Progress, Verdict, experiment, run_many, save_figure,
                   simulate, subplots, tick)
from .budget import ALPHA

NAME = "frozen_momentum"
TITLE = "App B.2: alpha > 1 freezes SGDM over O(1/eta) steps (displacement ~ eta^(alpha-1))"

SIZES = {"smoke": dict(alphas=(1.5,), etas=2.0 ** -np.arange(3, 8), paths=10000),
         "quick": dict(alphas=(1.5,), etas=2.0 ** -np.arange(3, 9), paths=50000),
         "full": dict(alphas=(1.25, 1.5, 1.75), etas=2.0 ** -np.arange(3, 11), paths=200000)}
X0 = np.array([1.0, -0.5])


def drift_coefficient(eta: float, beta: float, K: int) -> float:
    """c_K = η[K − β(1 − β^K)/(1 − β)]: E x_K − x₀ = −c_K ∇L for a constant gradient and
    m₀ = 0 (THEORY §5: Kη minus the empty-buffer lag)."""
    return float(K * eta - theory.endpoint_mean_bias_sgdm(eta, beta, 1.0, K))


def intercept(s: np.ndarray, r: np.ndarray, se: np.ndarray) -> tuple[float, float, float]:
    """Weighted least squares r ≈ a + b s (weights 1/se²): (a, its standard error, b)."""
    X = np.stack([np.ones_like(s), s], axis=1)
    W = 1.0 / se ** 2
    cov = np.linalg.inv(X.T @ (W[:, None] * X))
    a, b = cov @ (X.T @ (W * r))
    return float(a), float(np.sqrt(cov[0, 0])), float(b)


def ratios(X: np.ndarray, eta: float, beta: float, K: int, sigma: float, grad: np.ndarray,
           noise_var: np.ndarray) -> np.ndarray:
    """(2, d, 2): for the mean and the variance ratio of the module docstring, per coordinate,
    (ratio, standard error) from endpoint samples ``X`` (paths, d)."""
    n = X.shape[0]
    disp = X.mean(axis=0) - X0
    cK = drift_coefficient(eta, beta, K)
    mean_r = -disp / (cK * grad)
    mean_se = X.std(axis=0, ddof=1) / np.sqrt(n) / np.abs(cK * grad)
    var_pred = theory.endpoint_variance_sgdm(eta, beta, sigma, K) * noise_var
    dev = X - X.mean(axis=0)
    v = dev.var(axis=0, ddof=1)
    v_se = np.sqrt(np.maximum((dev ** 4).mean(axis=0) - v ** 2, 0.0) / n)
    return np.stack([np.stack([mean_r, mean_se], -1), np.stack([v / var_pred, v_se / var_pred], -1)])


def _point(P: CosineWell, cfg: dict, seed: int, ai: int, ei: int, grad: np.ndarray,
           noise_var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (α, η) = (``cfg["alphas"][ai]``, ``cfg["etas"][ei]``): SGDM with 1 − β = η^α, σ =
    σ₀η^{-1/2}, over K = T/η steps from ``X0``, and the point's statistics — the mean and
    variance ratios of :func:`ratios` (2, d, 2) and the mean displacement E x_K − x₀ (d,).
    One task's work (a :class:`~sdeverify.dispatch.Call`: on a cluster each point runs on a
    worker, its ``simulate`` call too)."""
    alpha, eta = tuple(cfg["alphas"])[ai], np.asarray(cfg["etas"])[ei]
    K = int(round(cfg["T"] / eta))
    beta, sigma = 1.0 - eta ** alpha, cfg["sigma0"] / np.sqrt(eta)
    res = simulate(P, [SGDM(eta, beta)], X0, steps=K, paths=cfg["paths"], sigma=sigma,
                   seed=substream(seed, f"frozen_momentum.a{ai}", ei), record=[K],
                   observables=["x0"], store_states=True)
    X = res.states[0, -1]
    return ratios(X, eta, beta, K, sigma, grad, noise_var), X.mean(axis=0) - X0


@experiment(NAME, SIZES, defaults=dict(T=1.0, sigma0=0.5))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Run SGDM with 1 − β = η^α, α > 1, over T/η steps, every (α, η) one item of one sweep
    (:func:`~.base.run_many`); rules in the module docstring."""
    alphas, etas = tuple(cfg["alphas"]), np.asarray(cfg["etas"])
    T, s0 = cfg["T"], cfg["sigma0"]
    if min(alphas) <= 1.0:
        raise ValueError(f"alphas must all be > 1 (App B.2's regime), got {alphas}")
    P = CosineWell(2, amplitude=2.0)
    grad, noise_var = P.gradient(X0), np.diag(P.noise_cov_at(X0))
    R = np.empty((len(alphas), len(etas), 2, 2, 2))      # alpha, eta, (mean, var), coord, (r, se)
    disp = np.empty((len(alphas), len(etas), 2))
    n_tests = len(alphas) * 2 * 2
    lvl = 1 - ALPHA[NAME] / n_tests
    zb = z_value(lvl)
    verdicts = []
    points = run_many([Call(_point, (P, cfg, seed, ai, ei, grad, noise_var),
                            label=f"frozen_momentum alpha[{ai}] eta[{ei}]")
                       for ai in range(len(alphas)) for ei in range(len(etas))])
    tick(progress, len(points), len(points))
    for k, (r, dx) in enumerate(points):
        R[divmod(k, len(etas))] = r
        disp[divmod(k, len(etas))] = dx
    for ai, alpha in enumerate(alphas):
        s = etas ** (alpha - 1.0)
        for qi, (what, pred) in enumerate((
                ("mean displacement E x_K - x0", f"-(T^2/2) eta^(alpha-1) grad L(x0) = "
                 f"{np.round(-0.5 * T ** 2 * grad, 4).tolist()} x eta^{alpha - 1:g} (leading)"),
                ("endpoint variance Var x_K", f"(sigma0^2 T^3/3) Sigma_ii(x0) eta^(2 alpha-2) = "
                 f"{np.round(s0 ** 2 * T ** 3 / 3 * noise_var, 4).tolist()} x eta^{2 * alpha - 2:g} (leading)"))):
            fits = [intercept(s, R[ai, :, qi, i, 0], R[ai, :, qi, i, 1]) for i in range(2)]
            zs = [(a - 1.0) / se for a, se, _ in fits]
            w = int(np.argmax(np.abs(zs)))
            a, se, b = fits[w]
            verdicts.append(Verdict(
                f"alpha={alpha:g} > 1: {what} over T/eta steps vanishes like the frozen-buffer "
                "closed form", "App B.2 (THEORY §12)",
                f"ratio measured/closed form -> 1 as eta -> 0; {pred}",
                Interval(a, a - zb * se, a + zb * se, lvl), bool(max(abs(z) for z in zs) <= zb),
                f"WLS fit ratio = a + b eta^(alpha-1) over eta = {etas.min():g}..{etas.max():g} per "
                f"coordinate; |a - 1|/se <= {zb:.2f} (two-sided, family-wise {1 - ALPHA[NAME]:.3%}); "
                f"worst coordinate {w}, slope b = {b:.3g}"))
    data = {"alphas": np.array(alphas), "etas": etas, "ratios": R, "displacement": disp,
            "grad": grad}
    return dict(cfg, alphas=list(alphas), etas=etas.tolist()), data, verdicts


@styled
def plot(result: ExperimentResult, path):
    d = result.data
    etas = d["etas"]
    fig, ax = subplots(2, figsize(2, aspect=0.95))
    for ai, alpha in enumerate(d["alphas"]):
        for i in range(2):
            ax[0].loglog(etas, np.abs(d["displacement"][ai, :, i]), "o-", color=f"C{2 * ai + i}",
                         label=rf"$|\mathbb{{E}}x_K - x_0|_{i}$, $\alpha = {alpha:g}$")
            for qi, mk in ((0, "o"), (1, "s")):
                r = d["ratios"][ai, :, qi, i]      # ±1.96·se over 10⁴+ paths: normal quantile
                ax[1].errorbar(etas, r[:, 0], yerr=1.96 * r[:, 1], fmt=mk, color=f"C{2 * ai + i}",
                               label=rf"{'mean' if qi == 0 else 'var'}, coord {i}, $\alpha = {alpha:g}$")
        ref = etas ** (alpha - 1)
        ax[0].loglog(etas, ref * np.abs(d["displacement"][ai, -1]).max() / ref[-1], "k:",
                     label=rf"$\propto\eta^{{{alpha - 1:g}}}$")
    ax[0].set(xlabel=r"$\eta$", ylabel=r"$|$mean displacement$|$ after $T/\eta$ steps",
              title=r"App B.2: frozen SGDM ($\alpha > 1$)")
    ax[1].axhline(1.0, color="k", lw=0.8)
    ax[1].set(xscale="log", xlabel=r"$\eta$", ylabel="measured / frozen-buffer closed form",
              title=r"ratios $\to 1$ (95% CI)")
    for a in ax:
        legend_below(a, ncol=2 if a is ax[1] else 1)
    return save_figure(fig, path)
