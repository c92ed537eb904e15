"""Def. 3.3 / Def. A.1 / Lemma A.2: heavy-ball (torch.optim.SGD) and EMA-form SGDM coincide.

HeavyBall(γ_k, μ_k, τ) with torch semantics and SGDM with the schedule produced by
:func:`sdeverify.heavy_ball_to_sgdm` are driven by the same oracle noise (common random
numbers) on CosineWell; the iterates must agree path by path up to floating-point rounding.
Three schedules: constant (η = γ/(1−μ)), torch dampening τ (η = γ(1−τ)/(1−μ)), and a random
per-step schedule with random momentum.

Decision rule: max over paths, steps recorded and coordinates of |x_HB − x_SGDM| / (1 + |x|)
≤ 1e-9 (rounding of a few thousand multiply-adds is ~1e-13; anything structural is O(η)).
A negative control — the *naive* mapping η = γ/(1−μ) under dampening — must exceed 1e-3.
"""
from __future__ import annotations

import numpy as np

from ..optim import SGDM, HeavyBall, heavy_ball_to_sgdm
from ..problems import CosineWell
from ..simulate import simulate
from ..stats import Interval
from .base import ExperimentResult, Timer, Verdict, check_size, make_meta, tick

NAME = "hb_equivalence"
TITLE = "Def 3.3/A.1, Lemma A.2: heavy-ball (torch) == EMA SGDM with converted schedule"
SIZES = {"smoke": dict(paths=256, steps=200), "quick": dict(paths=2048, steps=1000),
         "full": dict(paths=16384, steps=4000)}
TOL = 1e-9


def _max_rel_dev(res) -> float:
    x = res.states
    return float(np.max(np.abs(x[1] - x[0]) / (1.0 + np.abs(x[0]))))


def run(*, size: str = "quick", seed: int = 0, progress=None, **overrides) -> ExperimentResult:
    size = check_size(size)
    cfg = dict(SIZES[size], **overrides)
    K, N = cfg["steps"], cfg["paths"]
    P = CosineWell(2)
    g = np.random.default_rng(seed)
    cases = {
        "constant (tau=0)": (0.01, 0.9, 0.0),
        "dampening tau=0.5": (0.01, 0.9, 0.5),
        "random per-step schedule, tau=0.3": (g.uniform(0.001, 0.02, K), g.uniform(0.5, 0.99, K), 0.3),
    }
    rec = np.unique(np.linspace(0, K, 11).astype(int))
    devs, verdicts = [], []
    with Timer() as t:
        for i, (name, (lr, mu, tau)) in enumerate(cases.items()):
            eta, beta, _ = heavy_ball_to_sgdm(lr, mu, tau, steps=K)
            res = simulate(P, [HeavyBall(lr, mu, tau), SGDM(eta, beta)], [1.0, -0.5], steps=K,
                           paths=N, sigma=1.0, seed=seed, record=rec, store_states=True)
            dev = _max_rel_dev(res)
            devs.append(dev)
            verdicts.append(Verdict(f"heavy-ball == converted SGDM, {name}", "Lemma A.2 / THEORY 2",
                                    f"identical iterates (max rel. dev <= {TOL:g})",
                                    Interval(dev, 0.0, dev), dev <= TOL,
                                    f"max |x_HB - x_SGDM|/(1+|x|) over paths, steps, coords <= {TOL:g}"))
            tick(progress, i + 1, len(cases) + 1)
        naive = simulate(P, [HeavyBall(0.01, 0.9, 0.5), SGDM(0.01 / 0.1, 0.9)], [1.0, -0.5],
                         steps=K, paths=N, sigma=1.0, seed=seed, record=rec, store_states=True)
        dn = _max_rel_dev(naive)
        verdicts.append(Verdict("negative control: naive eta = gamma/(1-mu) ignores dampening",
                                "THEORY 2", "detectably different (> 1e-3)", Interval(dn, 0.0, dn),
                                dn > 1e-3, "max rel. deviation > 1e-3"))
        tick(progress, len(cases) + 1, len(cases) + 1)
    data = {"cases": np.array(list(cases)), "max_rel_dev": np.array(devs), "naive_dev": np.array(dn)}
    return ExperimentResult(NAME, cfg, data, tuple(verdicts), make_meta(seed, size, t.seconds))


def plot(result: ExperimentResult, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    d = result.data
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = list(d["cases"]) + ["naive mapping (control)"]
    vals = list(d["max_rel_dev"]) + [float(d["naive_dev"])]
    ax.barh(names, np.maximum(vals, 1e-18), color=["C0"] * len(d["cases"]) + ["C3"])
    ax.axvline(TOL, color="k", ls="--", label=f"tolerance {TOL:g}")
    ax.set(xscale="log", xlabel="max |x_HB - x_SGDM| / (1 + |x|)", title="heavy-ball vs converted SGDM")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
