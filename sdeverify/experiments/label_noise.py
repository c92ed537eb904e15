"""Sec. 5: label-noise SGD and SGDM on a diagonal linear network lower the sharpness along the
same path — the slow SDE's, which for label noise is a deterministic flow on Γ (THEORY §8).

Problem (:class:`~sdeverify.problems.diagonal_net.DiagonalNet`): n = 5 Gaussian samples in
D = 10 dimensions, a planted 2-sparse β*, w = (u, v), β = u⊙u − v⊙v, label noise of scale
σ = 1.25 (Σ = ∇²L on Γ).  Start: ζ₀ = Φ(u = v = 1), a dense interpolating solution of sharpness
tr ∇²L ≈ 68.  The slow SDE has no diffusion (Σ_∥ = 0) and drift −(σ²/4) P ∇tr∇²L: it is solved
by RK4 with projection (:func:`~sdeverify.slow_sde.solve_slow_ode`).

Optimizers (common random numbers): SGD(η), SGDM(η, β = 0.9), SGDM(η, 1 − β = λη^α), α = 0.5,
λ = 0.3, for t/η² steps; S(t) = E tr∇²L(Φ(x_t)) at recorded slow times t.

Decision rules:

1. **sharpness decreases** (each optimizer, smallest η): the 95% interval of the relative
   decrease 1 − E S(T)/S(0) lies above 0.
2. **same path** (each optimizer): the error e(η) = max_t |E S(t) − S_ode(t)| (its standard
   error taken at the maximising t) fitted as C η^p has a 95% interval for p with lower
   end > 0: SGD, SGDM(β = 0.9) and SGDM(α = 0.5) all converge to the slow flow, hence to
   each other.
3. **towards sparse solutions** (each optimizer, smallest η): the off-support mass
   Σ_{i ∉ supp β*} |β_i(Φ(x_T))| has a 95% interval below its initial value.
"""
from __future__ import annotations

import time

import numpy as np

from ..optim import SGD, SGDM
from ..problems.diagonal_net import DiagonalNet
from ..slow_sde import solve_slow_ode
from ..stats import Interval, fit_order, mean_interval
from ..figstyle import figsize, fit_line, legend_below, styled
from .base import (Call, ExperimentResult, Progress, Verdict, experiment, run_many, save_figure,
                   simulate, subplots, tick)

NAME = "label_noise"
TITLE = "Sec 5: label-noise SGD and SGDM reduce sharpness along the same slow path"

SIZES = {
    "smoke": dict(etas=(0.04, 0.028, 0.02, 0.014), paths=128, T=0.5, n_times=6),
    "quick": dict(etas=(0.04, 0.028, 0.02, 0.014, 0.01), paths=256, T=1.0, n_times=11),
    "full": dict(etas=(0.04, 0.028, 0.02, 0.014, 0.01, 0.007, 0.005), paths=1024, T=1.0, n_times=21),
}
OPT_LABELS = ("SGD", "SGDM b=0.9", "SGDM a=0.5")


def _optimizers(eta, beta, alpha, lam):
    return [SGD(eta, name=OPT_LABELS[0]), SGDM(eta, beta, name=OPT_LABELS[1]),
            SGDM(eta, 1.0 - lam * eta ** alpha, name=OPT_LABELS[2])]


def _slow_flow(prob: DiagonalNet, zeta0: np.ndarray, T: float, sigma: float,
               times: np.ndarray) -> np.ndarray:
    """The label-noise slow SDE's deterministic flow on Γ from ζ₀ (RK4 with projection,
    :func:`~sdeverify.slow_sde.solve_slow_ode`) at ``times``: states (n_t, 2D).  One task's
    work (a :class:`~sdeverify.dispatch.Call`)."""
    sol = solve_slow_ode(prob, zeta0, t=T, dt=min(0.005, T / 50), sigma=sigma, record=times)
    return sol.states[:, 0]


def _eta_point(prob: DiagonalNet, zeta0: np.ndarray, cfg: dict, seed: int, times: np.ndarray,
               i: int) -> tuple:
    """One η (``cfg["etas"][i]``): SGD and both SGDM for T/η² steps from ζ₀ on common random
    numbers, and the point's statistics at the recorded times — mean and standard error of
    the sharpness S = tr ∇²L(Φ(x_t)) and of the off-support mass, non-finite paths left out.
    One task's work (a :class:`~sdeverify.dispatch.Call`: on a cluster each η runs on a
    worker, its ``simulate`` call too).  Returns (S_mean, S_sem, off_mean, off_sem) each
    (n_opt, n_t), the simulation's wall seconds, and at the last η the mean β(Φ(x_t))
    (n_opt, n_t, D) (None otherwise)."""
    eta = np.asarray(cfg["etas"], dtype=np.float64)[i]
    T, N = float(cfg["T"]), int(cfg["paths"])
    off = prob.beta_star == 0
    K = int(round(T / eta ** 2))
    rec = np.round(times / eta ** 2).astype(np.int64)
    t0 = time.perf_counter()
    res = simulate(prob, _optimizers(eta, cfg["beta"], cfg["alpha"], cfg["lam"]), zeta0, steps=K,
                   paths=N, sigma=cfg["sigma"], seed=seed, record=rec, observables=["loss"],
                   store_states=True)
    wall = time.perf_counter() - t0
    phi = prob.project(res.states)                 # (n_opt, n_t, N, 2D)
    S = prob.sharpness(phi)                        # (n_opt, n_t, N)
    O = np.abs(prob.beta(phi))[..., off].sum(axis=-1)
    beta_mean = np.nanmean(prob.beta(phi), axis=2) if i == len(cfg["etas"]) - 1 else None
    return (np.nanmean(S, axis=-1), np.nanstd(S, axis=-1, ddof=1) / np.sqrt(np.sum(np.isfinite(S), axis=-1)),
            np.nanmean(O, axis=-1), np.nanstd(O, axis=-1, ddof=1) / np.sqrt(np.sum(np.isfinite(O), axis=-1)),
            wall, beta_mean)


@experiment(NAME, SIZES, defaults=dict(sigma=1.25, beta=0.9, alpha=0.5, lam=0.3, init_scale=1.0, n=5, D=10, sparsity=2, data_seed=0))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Run the label-noise sharpness experiment — the slow flow and every η one item of one
    sweep (:func:`~.base.run_many`); see the module docstring for the rules."""
    sigma = cfg["sigma"]
    beta = cfg["beta"]
    alpha = cfg["alpha"]
    lam = cfg["lam"]
    init_scale = cfg["init_scale"]
    n = cfg["n"]
    D = cfg["D"]
    sparsity = cfg["sparsity"]
    data_seed = cfg["data_seed"]
    etas = np.asarray(cfg["etas"], dtype=np.float64)
    T = float(cfg["T"])
    times = np.linspace(0.0, T, int(cfg["n_times"]))
    prob = DiagonalNet.generate(n, D, sparsity, seed=data_seed)
    zeta0 = prob.project(np.full(prob.dim, float(init_scale)))
    off = prob.beta_star == 0
    n_opt, n_eta = 3, len(etas)
    points = run_many([Call(_slow_flow, (prob, zeta0, T, sigma, times), label="label_noise slow flow")]
                      + [Call(_eta_point, (prob, zeta0, cfg, seed, times, i), label=f"label_noise eta[{i}]")
                         for i in range(n_eta)])
    tick(progress, n_eta, n_eta)
    Z_ode, points = points[0], points[1:]
    S_mean, S_sem, off_mean, off_sem = (np.stack([r[k] for r in points], axis=1) for k in range(4))
    wall = np.array([r[4] for r in points])
    beta_mean = points[-1][5]                              # at the smallest η
    S_ode = prob.sharpness(Z_ode)
    off_ode = np.abs(prob.beta(Z_ode))[:, off].sum(axis=1)
    dec = np.zeros((n_opt, n_eta, 3))                      # relative decrease (est, lo, hi)
    for i in range(n_eta):
        for j in range(n_opt):
            iv = mean_interval(1.0 - S_mean[j, i, -1] / S_ode[0], S_sem[j, i, -1] / S_ode[0])
            dec[j, i] = iv.estimate, iv.low, iv.high
    # errors against the slow flow
    err = np.abs(S_mean - S_ode[None, None, :])        # (n_opt, n_eta, n_t)
    kmax = np.argmax(err, axis=-1)
    e_max = np.take_along_axis(err, kmax[..., None], -1)[..., 0]
    e_sem = np.take_along_axis(S_sem, kmax[..., None], -1)[..., 0]
    fits = np.full((n_opt, 4), np.nan)
    verdicts = []
    for j in range(n_opt):
        f = fit_order(etas, e_max[j], e_sem[j])
        fits[j] = f.order.estimate, f.order.low, f.order.high, f.log_c
    jd = int(np.argmin(dec[:, -1, 1]))
    verdicts.append(Verdict(
        f"label noise lowers the sharpness tr Hess L on the manifold (eta={etas[-1]:g}, t={T:g})",
        "Sec 5 (Li, Wang, Arora 2021 label-noise slow SDE)",
        f"1 - S(T)/S(0) > 0 (slow flow: {1 - S_ode[-1] / S_ode[0]:.3f})",
        Interval(*dec[jd, -1]), bool(np.all(dec[:, -1, 1] > 0)),
        f"95% interval of the relative decrease above 0 for all three optimizers "
        f"(measured: the smallest, {OPT_LABELS[jd]})"))
    for j in range(n_opt):
        verdicts.append(Verdict(
            f"{OPT_LABELS[j]} follows the slow flow: max_t |E S(t) - S_ode(t)| -> 0 as eta -> 0",
            "Thm 5.5 / THEORY §8",
            "error ~ C eta^p with p > 0",
            Interval(*fits[j, :3]), bool(fits[j, 1] > 0),
            "lower end of the 95% interval of the fitted order p > 0"))
    off0 = float(np.abs(prob.beta(zeta0))[off].sum())
    jo = int(np.argmax(off_mean[:, -1, -1]))
    ivo = mean_interval(off_mean[jo, -1, -1], off_sem[jo, -1, -1])
    verdicts.append(Verdict(
        f"drift towards sparse solutions: off-support |beta| mass falls (eta={etas[-1]:g}, t={T:g})",
        "Sec 5 (implicit bias of label noise)",
        f"sum_(i off supp) |beta_i| below its initial {off0:.3f} (slow flow: {off_ode[-1]:.3f})",
        ivo, bool(all(off_mean[j, -1, -1] + 1.96 * off_sem[j, -1, -1] < off0 for j in range(n_opt))),
        f"upper end of the 95% interval below the initial value for all three optimizers "
        f"(measured: the largest, {OPT_LABELS[jo]})"))
    data = {"etas": etas, "times": times, "S_ode": S_ode, "off_ode": off_ode, "S_mean": S_mean,
            "S_sem": S_sem, "off_mean": off_mean, "off_sem": off_sem, "decrease": dec,
            "err_max": e_max, "err_sem": e_sem, "fits": fits, "wall": wall,
            "beta_ode": prob.beta(Z_ode), "beta_mean_min_eta": beta_mean,
            "beta_star": prob.beta_star, "off0": np.array(off0)}
    params = dict(cfg, etas=list(cfg["etas"]), sigma=sigma, beta=beta, alpha=alpha, lam=lam,
                  init_scale=init_scale, n=n, D=D, sparsity=sparsity, data_seed=data_seed,
                  optimizers=list(OPT_LABELS))
    return params, data, verdicts


@styled
def plot(result: ExperimentResult, path):
    """Sharpness vs slow time (all η, three optimizers, slow flow); error vs η with fits
    (drawn over the fitted η range); off-support mass vs slow time; β along the path at the
    smallest η."""
    d, prm = result.data, result.params
    etas, times = d["etas"], d["times"]
    cols = ("C0", "C1", "C2")
    names = ("SGD", r"SGDM $\beta=0.9$", r"SGDM $\alpha=0.5$")        # OPT_LABELS, typeset
    fig, ax = subplots(2, figsize(2, 2, aspect=0.85), nrows=2)
    ax = ax.ravel()
    # (a) sharpness vs t at the largest and smallest eta
    a = ax[0]
    a.plot(times, d["S_ode"], "k-", lw=2, label="slow SDE (deterministic flow)")
    for j in range(3):
        for i, ls in [(0, ":"), (len(etas) - 1, "-")]:
            m, s = d["S_mean"][j, i], d["S_sem"][j, i]    # bands ±1.96·sem over ≥ 128 paths (t: < 1% wider)
            a.plot(times, m, ls, color=cols[j], lw=1, label=rf"{names[j]}, $\eta={etas[i]:g}$")
            a.fill_between(times, m - 1.96 * s, m + 1.96 * s, color=cols[j], alpha=0.25)
    a.set(yscale="log", xlabel=r"slow time $t = k\eta^2$",
          ylabel=r"sharpness $\mathrm{tr}\,\nabla^2 L(\Phi(x_t))$",
          title="label noise lowers the sharpness (95% bands)")
    legend_below(a, ncol=2)
    # (b) error vs eta
    a = ax[1]
    for j in range(3):
        f = d["fits"][j]
        a.errorbar(etas, d["err_max"][j], yerr=1.96 * d["err_sem"][j], fmt="o", color=cols[j],
                   label=rf"{names[j]}: order {f[0]:.2f} [{f[1]:.2f}, {f[2]:.2f}]")
        fit_line(a, etas, order=f[0], log_c=f[3], color=cols[j], lw=0.8)
    a.set(xscale="log", yscale="log", xlabel=r"$\eta$",
          ylabel=r"$\max_t |\mathbb{E}S(t) - S_{\mathrm{slow}}(t)|$",
          title=r"distance to the slow flow shrinks as $\eta \to 0$")
    from matplotlib.ticker import FixedLocator, NullLocator
    a.xaxis.set_major_locator(FixedLocator(etas))
    a.xaxis.set_minor_locator(NullLocator())
    a.set_xticklabels([f"{e:g}" for e in etas], rotation=45)
    legend_below(a, drop=0.62)                       # under the rotated tick labels
    # (c) off-support mass
    a = ax[2]
    a.plot(times, d["off_ode"], "k-", lw=2, label="slow flow")
    i = len(etas) - 1
    for j in range(3):
        m, s = d["off_mean"][j, i], d["off_sem"][j, i]
        a.errorbar(times + 0.004 * (j - 1) * times[-1], m, yerr=1.96 * s, fmt="o", ms=3, color=cols[j],
                   label=rf"{names[j]}, $\eta={etas[i]:g}$")
    a.set(xlabel="slow time $t$", ylabel=r"$\sum_{i \notin \mathrm{supp}(\beta^*)} |\beta_i|$",
          title="drift towards sparse solutions")
    legend_below(a)
    # (d) beta coordinates
    a = ax[3]
    bo, bm, bs = d["beta_ode"], d["beta_mean_min_eta"], d["beta_star"]
    for k in range(bo.shape[1]):
        c = "C3" if bs[k] != 0 else "0.5"
        a.plot(times, bo[:, k], "-", color=c, lw=1.2)
        a.plot(times, bm[0, :, k], "o", color=c, ms=2.5)
    a.plot([], [], "-", color="C3", label=r"support of $\beta^*$ (slow flow)")
    a.plot([], [], "-", color="0.5", label="off support (slow flow)")
    a.plot([], [], "o", color="k", ms=3, label=rf"SGD mean, $\eta={etas[-1]:g}$")
    a.set(xlabel="slow time $t$", ylabel=r"$\beta_i = u_i^2 - v_i^2$",
          title="regression coefficients along the path")
    legend_below(a)
    fig.suptitle(f"{TITLE}\n(diagonal net $n={prm['n']}$, $D={prm['D']}$, "
                 rf"$\sigma={prm['sigma']}$, {prm['paths']} paths)")
    return save_figure(fig, path)
