"""Thm 5.5 across the momentum index: SGDM with 1 − β = η^α shares SGD's slow SDE, α ∈ [0, 2).

Same problems and set-up as ``slow_sde`` (THEORY §8): the valley L = ½(1 + x²)y² with
label-noise-like normal noise and tangent noise, and (quick and full size) the sphere in R³;
σ = 1.25 held fixed, t = T/η² steps, test function h₁ (Φ(x)₀ on the valley, ⟨Φ(x), ζ₀⟩ on the
sphere).  SGD(η) and SGDM(η, 1 − β = λη^α) for α ∈ {0 (β = 0.9), 0.5, 1, 1.5, 1.9} share the
oracle noise (common random numbers), so the *gap* E h₁(Φ(x_K^SGDM)) − E h₁(Φ(x_K^SGD)) is a
paired mean with a small standard error.  Each SGDM's distance to the exact slow SDE,
E h₁(Φ(x_K)) − E h₁(ζ_T), is kept in the data and the figure.

The paper's range is α ∈ [0, 2) (THEORY §13).  Thm 5.5 states convergence, not a rate;
THEORY §13 gives a heuristic for the gap's order, p(α) = min(1, 2 − α): the buffer needs
η^(−α) steps — a slow time η^(2−α) — to reach its stationary state, during which SGDM lags
behind the slow SDE (for α ≤ 1 this is dominated by SGD's own O(η) discretisation effects).

Decision rules, per problem and α, on the gap's fitted order (``stats.fit_order``, 95%):

* **resolvable** α — the heuristic predicts that the gap shrinks at least 2× over the η grid,
  (η_max/η_min)^p(α) ≥ 2: the gap must vanish, i.e. the order's lower end > 0 (Thm 5.5;
  a one-sided rule because the theorem gives no rate), and the gap keeps one sign over the
  grid (no two gaps beyond ±3 standard errors of opposite signs: C·η^p cannot change sign,
  while a vanishing gap plus an O(1) offset — a wrong limit — does).  Whether p(α) lies in the interval is
  stated in the verdict as a finding, not used as a rule (the heuristic is not a proof).
* **not resolvable** α (near the range's end): convergence at order ≤ 2 − α is too slow to
  be seen at reachable η.  The verdict says so in its claim ("NOT RESOLVED"), is not counted
  as confirming the theorem, and fails only if the gap significantly *grows* as η shrinks
  (order's upper end < 0), which would contradict the theorem.
"""
from __future__ import annotations

import numpy as np

from ..optim import SGD, SGDM
from ..rng import substream
from ..stats import fit_order
from ..figstyle import figsize, legend_below, styled
from .base import (Call, ExperimentResult, Progress, Verdict, experiment, run_many, save_figure,
                   simulate, subplots, tick)
from .slow_sde import _Case

NAME = "slow_sde_alpha"
TITLE = "Thm 5.5 across alpha in [0, 2): the SGDM-SGD gap on the slow time scale"

SIZES = {"smoke": dict(problems=("valley",), etas=(0.07, 0.05, 0.035, 0.025, 0.0175), paths=2048),
         "quick": dict(problems=("valley", "sphere"), etas=(0.07, 0.05, 0.035, 0.025, 0.0175, 0.0125), paths=4096),
         "full": dict(problems=("valley", "sphere"),
                      etas=(0.07, 0.05, 0.035, 0.025, 0.0175, 0.0125, 0.00875, 0.00625), paths=16384)}
ALPHAS = (0.0, 0.5, 1.0, 1.5, 1.9)
#: |gap|/se beyond which a gap's sign counts as established
SIGN_Z = 3.0
#: the heuristic shrink factor over the η grid below which an α counts as not resolvable
RESOLVABLE = 2.0


def heuristic_order(alpha: float) -> float:
    """p(α) = min(1, 2 − α): the gap's order by the buffer-equilibration heuristic (THEORY §13)."""
    return min(1.0, 2.0 - alpha)


def one_minus_beta(eta: float, alpha: float, lam: float) -> float:
    """1 − β = λ η^α, with α = 0 meaning the constant β = 0.9 of the other checks."""
    return 0.1 if alpha == 0.0 else lam * eta ** alpha


def alpha_verdict(problem: str, alpha: float, etas: np.ndarray, gap: np.ndarray,
                  sem: np.ndarray) -> Verdict:
    """The rule of the module docstring for one problem and α."""
    p = heuristic_order(alpha)
    shrink = (etas.max() / etas.min()) ** p
    f = fit_order(etas, np.abs(gap), sem)
    o = f.order
    inside = "inside" if o.contains(p) else "OUTSIDE"
    z = gap / sem
    one_sign = not (z.max() > SIGN_Z and z.min() < -SIGN_Z)
    if shrink >= RESOLVABLE:
        return Verdict(
            f"Thm 5.5, {problem}, alpha={alpha:g}: SGDM - SGD gap in E h1(Phi(x_T)) vanishes as eta -> 0",
            "Thm 5.5 (THEORY §13)",
            f"gap -> 0; heuristic order min(1, 2-alpha) = {p:g} (finding: {inside} the interval)",
            o, o.low > 0.0 and one_sign,
            f"lower end of the 95% interval of the fitted order of |gap| > 0 over eta = {etas.min():g}.."
            f"{etas.max():g}, and the gap keeps one sign (no two gaps beyond +-{SIGN_Z:g} se of opposite "
            f"signs: a power law C eta^p cannot change sign) "
            f"(heuristic shrink factor {shrink:.2g} >= {RESOLVABLE:g}: resolvable); gap at eta_min "
            f"{gap[-1]:.3g} +- {sem[-1]:.2g}")
    return Verdict(
        f"NOT RESOLVED — Thm 5.5, {problem}, alpha={alpha:g}: convergence too slow to see at reachable eta",
        "Thm 5.5 (THEORY §13)",
        f"gap -> 0 at order <= 2-alpha = {2 - alpha:.2g}: over this grid it could shrink by only "
        f"{shrink:.2g}x; not counted as confirming the theorem",
        o, o.high >= 0.0,
        f"inconclusive by design (heuristic shrink factor {shrink:.2g} < {RESOLVABLE:g}); fails only if "
        f"the gap grows significantly (upper end of the order's 95% interval < 0); gap "
        f"{gap[0]:.3g} -> {gap[-1]:.3g} over eta = {etas.max():g} -> {etas.min():g}")


def _eta_point(name: str, cfg: dict, seed: int, i: int) -> tuple:
    """One problem at one η (``cfg["etas"][i]``): SGD and the SGDM of every α on common random
    numbers for T/η² steps, and the point's statistics — the paired gaps SGDM − SGD of h₁ at
    T and every optimizer's distance to the exact slow SDE, with standard errors.  One task's
    work (a :class:`~sdeverify.dispatch.Call`: on a cluster each (problem, η) runs on a
    worker, its ``simulate`` call too).  Returns (gap, gap_sem, err, err_sem) at this η."""
    sigma, lam, T = cfg["sigma"], cfg["lam"], cfg["T"]
    case = _Case(name, sigma)
    exact = float(case.exact(T)[0])
    eta = np.asarray(cfg["etas"], float)[i]
    K = int(round(T / eta ** 2))
    opts = [SGD(eta, name="SGD")] + [SGDM(eta, 1.0 - one_minus_beta(eta, a, lam), name=f"SGDM a={a:g}")
                                     for a in ALPHAS]
    res = simulate(case.problem, opts, case.x0, steps=K, paths=cfg["paths"], sigma=sigma,
                   seed=substream(seed, f"slow_sde_alpha.{name}", i), record=[K],
                   observables=["loss"], store_states=True)
    h = case.stat(case.problem.project(res.states[:, -1]))      # (n_opt, N)
    ok = np.all(np.isfinite(h), axis=0)
    h = h[:, ok]
    d = h[1:] - h[0]
    return (d.mean(axis=1), d.std(axis=1, ddof=1) / np.sqrt(d.shape[1]), h.mean(axis=1) - exact,
            h.std(axis=1, ddof=1) / np.sqrt(h.shape[1]))


@experiment(NAME, SIZES, defaults=dict(sigma=1.25, T=1.0, lam=1.0))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Sweep α for each problem, every (problem, η) one item of one sweep
    (:func:`~.base.run_many`); rules in the module docstring."""
    etas, T, sigma = np.asarray(cfg["etas"], float), cfg["T"], cfg["sigma"]
    problems = tuple(cfg["problems"])
    data, verdicts = {"alphas": np.array(ALPHAS), "etas": etas}, []
    n_eta = len(etas)
    points = run_many([Call(_eta_point, (name, cfg, seed, i), label=f"slow_sde_alpha {name} eta[{i}]")
                       for name in problems for i in range(n_eta)])
    tick(progress, len(points), len(points))
    for pi, name in enumerate(problems):
        gap, gap_sem, err, err_sem = (np.stack(a, axis=1) for a in zip(*points[pi * n_eta:(pi + 1) * n_eta]))
        exact = float(_Case(name, sigma).exact(T)[0])
        for ai, a in enumerate(ALPHAS):
            verdicts.append(alpha_verdict(name, a, etas, gap[ai], gap_sem[ai]))
        data.update({f"{name}_gap": gap, f"{name}_gap_sem": gap_sem, f"{name}_err": err,
                     f"{name}_err_sem": err_sem, f"{name}_exact": exact})
    return dict(cfg, problems=list(problems), etas=etas.tolist(), alphas=list(ALPHAS)), data, verdicts


@styled
def plot(result: ExperimentResult, path):
    d = result.data
    etas, alphas = d["etas"], d["alphas"]
    probs = [k[:-4] for k in d if k.endswith("_gap")]
    fig, ax = subplots(2, figsize(2, len(probs)), nrows=len(probs), squeeze=False)
    for r, name in enumerate(probs):
        for ai, a in enumerate(alphas):
            g, s = d[f"{name}_gap"][ai], d[f"{name}_gap_sem"][ai]   # ±1.96·sem over ≥ 2048 paths
            ax[r, 0].errorbar(etas, np.abs(g), yerr=1.96 * s, fmt="o-", color=f"C{ai}",
                              label=rf"$\alpha = {a:g}$ (heuristic order {heuristic_order(a):g})")
            e, es = d[f"{name}_err"][ai + 1], d[f"{name}_err_sem"][ai + 1]
            ax[r, 1].errorbar(etas, e, yerr=1.96 * es, fmt="o-", color=f"C{ai}",
                              label=rf"SGDM $\alpha = {a:g}$")
        ax[r, 1].errorbar(etas, d[f"{name}_err"][0], yerr=1.96 * d[f"{name}_err_sem"][0], fmt="ks--",
                          label="SGD")
        ax[r, 1].axhline(0.0, color="k", lw=0.6)
        ax[r, 0].set(xscale="log", yscale="log", xlabel=r"$\eta$",
                     ylabel=r"$|\mathbb{E}h_1(\mathrm{SGDM}) - \mathbb{E}h_1(\mathrm{SGD})|$ (paired)",
                     title=f"{name}: gap at $t = T$ (95% CI)")
        ax[r, 1].set(xscale="log", xlabel=r"$\eta$",
                     ylabel=r"$\mathbb{E}h_1(\Phi(x_K)) - \mathbb{E}h_1(\zeta_T)$",
                     title=f"{name}: distance to the exact slow SDE")
        for a in ax[r]:
            legend_below(a)
    return save_figure(fig, path)
