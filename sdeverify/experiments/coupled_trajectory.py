"""Thm B.3's coupled trajectory: y_k = x_k − β_k A_k m_k is an SGD run with the averaged lr.

For any schedules (η_k, β_k), EMA-form SGDM (Def. 3.3)

    m_{k+1} = β_k m_k + (1 − β_k) g_k,     x_{k+1} = x_k − η_k m_{k+1},

and the backward recursion of Eq. 8 (docs/theory.md §4)

    A_k = η_k + β_{k+1} A_{k+1},     η̄_k = (1 − β_k) A_k,

the coupled point y_k = x_k − β_k A_k m_k obeys, exactly and path by path,

    y_{k+1} = y_k − η̄_k g_k                                    (THEORY §4, §12)

with g_k the gradient SGDM drew at x_k — an SGD step with the averaged lr whose gradient is
taken at x_k instead of y_k.  This is the bridge of the proof of Thm 4.5 (App. B.1, Thm B.3).

What is checked, on random schedules (η_k, β_k i.i.d. uniform; a constant schedule cannot
tell β_k from β_{k+1}) and the non-convex ``CosineWell`` with state-dependent noise:

* the engine's SGDM iterates x_k, with the gradients g_k = ∇L(x_k) + σ Σ(x_k)^{1/2} z_k
  rebuilt independently from the engine's standard normals z_k (recovered from a zero-gradient
  SGD run with the same seed) and the buffer m_k rebuilt from them by the EMA recursion:
  x_{k+1} = x_k − η_k m_{k+1} to rounding;
* the identity above, with η̄ from :func:`sdeverify.schedules.averaged_lr` — the project's
  Eq. 8 — to rounding (max |residual| / max |η̄_k g_k| <= 1e-10);
* a negative control: the same identity with the index of β in the recursion shifted
  (A_k = η_k + β_k A_{k+1}) must fail by far (relative residual > 1e-3): otherwise the
  random schedule would not exercise the index.

All three are deterministic comparisons (they cannot fail by chance).
"""
from __future__ import annotations

import numpy as np

from ..optim import SGDM
from ..problems import CosineWell
from ..rng import substream
from ..schedules import averaged_lr
from ..figstyle import legend_below, styled
from .base import (ExperimentResult, Progress, Value, Verdict, experiment, save_figure, simulate,
                   subplots, tick)
from .instruments import engine_draws

NAME = "coupled_trajectory"
TITLE = "Thm B.3: the coupled trajectory y = x - beta A m is SGD with the averaged lr"

SIZES = {"smoke": dict(steps=60, paths=50),
         "quick": dict(steps=200, paths=200),
         "full": dict(steps=1000, paths=1000)}

#: relative residual below which an exact identity holds (float64 rounding over the run)
TOL = 1e-10
#: relative residual above which the shifted-index control counts as detected
CONTROL_MIN = 1e-3


def coupled_points(x: np.ndarray, m: np.ndarray, lr: np.ndarray, beta: np.ndarray,
                   eta_bar: np.ndarray) -> np.ndarray:
    """y_k = x_k − β_k A_k m_k with A_k = η̄_k/(1 − β_k) (Thm B.3, THEORY §4), for
    k = 0..K−1; ``x``, ``m``: (K+1, paths, d), schedules (K,)."""
    A = eta_bar / (1.0 - beta)
    K = lr.shape[0]
    return x[:K] - (beta * A)[:, None, None] * m[:K]


def identity_residual(y: np.ndarray, g: np.ndarray, eta_bar: np.ndarray) -> float:
    """max_k |y_{k+1} − y_k + η̄_k g_k| / max |η̄_k g_k| over k = 0..K−2, paths, coordinates."""
    step = eta_bar[:-1, None, None] * g[:-1]
    res = y[1:] - y[:-1] + step
    return float(np.abs(res).max() / np.abs(step).max())


def shifted_averaged_lr(lr: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """The negative control: Eq. 8's recursion with β_k in place of β_{k+1}."""
    K = lr.shape[0]
    A = np.zeros(K + 1)
    for k in range(K - 1, -1, -1):
        A[k] = lr[k] + beta[k] * A[k + 1]
    return (1.0 - beta) * A[:K]


@experiment(NAME, SIZES, defaults=dict(sigma=1.3))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Run SGDM on random schedules and check the coupled identity; rules in the module doc."""
    K, N, sigma = cfg["steps"], cfg["paths"], cfg["sigma"]
    rs = np.random.default_rng(substream(seed, "coupled_trajectory.schedule"))
    lr = rs.uniform(0.01, 0.1, K)
    beta = rs.uniform(0.5, 0.95, K)
    P = CosineWell(2, amplitude=2.0)
    x0, m0 = np.array([0.9, -1.4]), np.array([0.3, -0.2])
    sim_seed = substream(seed, "coupled_trajectory.paths")
    res = simulate(P, [SGDM(lr, beta, m0=m0)], x0, steps=K, paths=N, sigma=sigma, seed=sim_seed,
                   record=np.arange(K + 1), observables=["x0"], store_states=True)
    tick(progress, 1, 2)
    x = res.states[0]                                           # (K+1, paths, 2)
    z = engine_draws(N, K, sim_seed, sigma=1.0)                 # (K, paths, 2)
    a = P.amplitude
    g = x[:K] - a * np.sin(x[:K]) + sigma * np.sqrt(1.0 + np.sin(x[:K]) ** 2) * z
    m = np.empty_like(x)
    m[0] = m0
    for k in range(K):
        m[k + 1] = beta[k] * m[k] + (1.0 - beta[k]) * g[k]
    step_dev = float(np.abs(x[1:] - (x[:K] - lr[:, None, None] * m[1:])).max()
                     / np.abs(lr[:, None, None] * m[1:]).max())
    eta_bar = averaged_lr(lr, beta, tail="truncate")
    dev = identity_residual(coupled_points(x, m, lr, beta, eta_bar), g, eta_bar)
    eb_ctrl = shifted_averaged_lr(lr, beta)
    ctrl = identity_residual(coupled_points(x, m, lr, beta, eb_ctrl), g, eb_ctrl)
    # the in-flight displacement x_k − y_k = β_k A_k m_k, for the figure
    gap = np.linalg.norm(x[:K] - coupled_points(x, m, lr, beta, eta_bar), axis=2)
    tick(progress, 2, 2)
    sched = f"{K} steps, eta_k ~ U(0.01, 0.1), beta_k ~ U(0.5, 0.95), {N} paths, sigma = {sigma:g}"
    verdicts = [
        Verdict("engine SGDM iterates == EMA recursion on gradients rebuilt from the engine's "
                "normals (random schedule, CosineWell, state-dependent noise)", "Def 3.3",
                f"x_(k+1) = x_k - eta_k m_(k+1) (max rel. dev <= {TOL:g})", Value(step_dev),
                step_dev <= TOL, f"{sched}; max over steps, paths, coords", TOL),
        Verdict("coupled trajectory y_k = x_k - beta_k A_k m_k obeys y_(k+1) = y_k - etabar_k g_k",
                "Thm B.3 / Eq. 8 (THEORY §4)",
                f"exact identity with etabar = schedules.averaged_lr (max rel. residual <= {TOL:g})",
                Value(dev), dev <= TOL, f"{sched}; residual relative to max |etabar_k g_k|", TOL),
        Verdict("negative control: the identity with beta_k instead of beta_(k+1) in Eq. 8's "
                "recursion fails", "Thm B.3 / Eq. 8 (THEORY §4)",
                f"max rel. residual > {CONTROL_MIN:g}", Value(ctrl), ctrl > CONTROL_MIN,
                "the random schedule must expose an index shift", CONTROL_MIN),
    ]
    data = {"lr": lr, "beta": beta, "eta_bar": eta_bar, "in_flight_mean": gap.mean(axis=1),
            "step_dev": step_dev, "identity_residual": dev, "control_residual": ctrl}
    return dict(cfg, sigma=sigma), data, verdicts


@styled
def plot(result: ExperimentResult, path):
    d = result.data
    fig, ax = subplots(2)
    k = np.arange(d["lr"].shape[0])
    ax[0].plot(k, d["lr"], lw=0.8, label=r"$\eta_k$ (random)")
    ax[0].plot(k, d["eta_bar"], lw=1.2, label=r"averaged lr $\bar\eta_k$ (Eq. 8, truncated)")
    ax[0].set(xlabel="step $k$", ylabel="learning rate", title="schedule and its averaged lr")
    legend_below(ax[0])
    ax[1].plot(k, d["in_flight_mean"], lw=1.0)
    ax[1].set(xlabel="step $k$", ylabel=r"mean $|x_k - y_k| = |\beta_k A_k m_k|$",
              title=f"in-flight displacement; identity residual {float(d['identity_residual']):.1e}")
    return save_figure(fig, path)
