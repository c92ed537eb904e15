"""Def. 3.3 / Def. A.1 / Lemma A.2: heavy-ball (torch.optim.SGD) and EMA-form SGDM coincide.

HeavyBall(γ_k, μ_k, τ) with torch semantics and SGDM with the schedule produced by
:func:`sdeverify.heavy_ball_to_sgdm` are driven by the same oracle noise (common random
numbers) on CosineWell; the iterates must agree path by path up to floating-point rounding.
Three schedules: constant (η = γ/(1−μ)), torch dampening τ (η = γ(1−τ)/(1−μ)), and a random
per-step schedule with random momentum.

Decision rule: max over paths, steps recorded and coordinates of |x_HB − x_SGDM| / (1 + |x|)
≤ 1e-9 (rounding of a few thousand multiply-adds is ~1e-13; anything structural is O(η)).
A negative control — the *naive* mapping η = γ/(1−μ) under dampening — must exceed 1e-3.

**Independent references.**  The comparison above shares :mod:`sdeverify.optim`'s coefficient
code between its two sides (the converter reads ``HeavyBall.coefficients``), so one wrong
coefficient makes both sides wrong together.  Each engine optimizer is therefore also compared
with a plain step-by-step transcription of its documented update, written here without any
code from :mod:`sdeverify.optim` and driven by the same gradients (noise-free, σ = 0, so both
see ∇L(x_k) exactly; the coefficients multiply noise and gradient alike):

* ``torch.optim.SGD`` (PyTorch docs): ``buf = g`` on the first step, then
  ``buf = μ_k buf + (1 − τ) g``, ``x −= γ_k buf`` — against the engine's ``HeavyBall`` and
  against the engine's SGDM run with the converted schedule;
* Def. 3.3 (EMA form): ``m = β_k m + (1 − β_k) g``, ``x −= η_k m`` with a random per-step β_k;
* Def. 3.2: ``x −= η_k g``;
* and, when PyTorch is installed, the transcription against real ``torch.optim.SGD``
  (float64, gradients set by hand); without PyTorch that verdict is not issued.

Rule: max relative deviation ≤ 1e-9 over all steps, as above.

**Engine vs reference backend.**  The compiled CPU engine against the NumPy reference
backend (``backend="numpy"``, a separate path-by-path implementation of the same update and
the NumPy twin of the generator) with noise (σ = 1.3), SGD, SGDM and HeavyBall, 64 paths ×
50 steps: states must agree to 1e-12 (they are bitwise equal by construction).

**Schedules (Def 4.1, Eq 8).**  The library schedules in :mod:`sdeverify.schedules` are
compared with direct transcriptions of their definitions, written here: the averaged learning
rate as the explicit double sum η̄_k = (1 − β_k) Σ_{j ≥ k} η_j Π_{i=k+1..j} β_i (the total
displacement caused by g_k, truncated at the horizon) with a random time-varying β_k — no
recursion, so a wrong index in the recursion shows; ``step_decay`` as lr·factor^#(milestones
≤ k) (torch MultiStepLR); ``warmup`` as lr·min(1, (k + 1)/w); ``cosine`` as warm-up then
lr_min + ½(lr − lr_min)(1 + cos(π i/n)); ``scaled_family`` as (η·shape_k, 1 − λη^α);
``svag_schedule`` as each η_k repeated ℓ times divided by ℓ.  Rule: max relative deviation
≤ 1e-12.
"""
from __future__ import annotations

import numpy as np

from .. import config
from ..optim import SGD, SGDM, HeavyBall, heavy_ball_to_sgdm
from ..problems import SVAG, CosineWell

from ..figstyle import figsize, legend_below, styled
from .base import (Call, ExperimentResult, Progress, Value, Verdict, experiment, run_many,
                   save_figure, simulate, subplots, tick)

NAME = "hb_equivalence"
TITLE = "Def 3.3/A.1, Lemma A.2: heavy-ball (torch) == EMA SGDM with converted schedule"
SIZES = {"smoke": dict(paths=256, steps=200), "quick": dict(paths=2048, steps=1000),
         "full": dict(paths=16384, steps=4000)}
TOL = 1e-9


def _max_rel_dev(res) -> float:
    x = res.states
    return float(np.max(np.abs(x[1] - x[0]) / (1.0 + np.abs(x[0]))))


def torch_sgd_transcription(grad, x0, lr, momentum, dampening: float, steps: int,
                            buf0=None) -> np.ndarray:
    """Iterates x_0..x_K of ``torch.optim.SGD`` (no weight decay, no Nesterov) transcribed from
    its documentation; ``lr``/``momentum`` are per-step arrays; ``buf0`` the momentum buffer
    of a resumed run (its optimizer state), None for a fresh optimizer.  Independent of
    sdeverify.optim."""
    x = np.array(x0, dtype=np.float64)
    out = [x.copy()]
    buf = None if buf0 is None else np.array(buf0, dtype=np.float64)
    for k in range(steps):
        g = grad(x)
        if momentum[k] != 0.0:
            buf = g.copy() if buf is None else momentum[k] * buf + (1.0 - dampening) * g
            g = buf
        x = x - lr[k] * g
        out.append(x.copy())
    return np.array(out)


def ema_sgdm_transcription(grad, x0, lr, beta, steps: int) -> np.ndarray:
    """Iterates of Def. 3.3: m = β_k m + (1 − β_k) g, x −= η_k m (m_0 = 0); β ≡ 0 is SGD."""
    x = np.array(x0, dtype=np.float64)
    m = np.zeros_like(x)
    out = [x.copy()]
    for k in range(steps):
        m = beta[k] * m + (1.0 - beta[k]) * grad(x)
        x = x - lr[k] * m
        out.append(x.copy())
    return np.array(out)


def torch_sgd_real(grad, x0, lr, momentum, dampening: float, steps: int):
    """The same iterates from real ``torch.optim.SGD`` (float64), or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    p = torch.nn.Parameter(torch.tensor(np.asarray(x0, dtype=np.float64)))
    opt = torch.optim.SGD([p], lr=float(lr[0]), momentum=float(momentum[0]), dampening=dampening)
    out = [p.detach().numpy().copy()]
    for k in range(steps):
        for group in opt.param_groups:
            group["lr"], group["momentum"] = float(lr[k]), float(momentum[k])
        p.grad = torch.tensor(grad(p.detach().numpy().copy()))
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.array(out)


def _rel_dev(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(a - ref) / (1.0 + np.abs(ref))))


def _engine_path(P, opt, x0, steps: int) -> np.ndarray:
    """Noise-free engine iterates x_0..x_K of one optimizer (one block of identical paths)."""
    res = simulate(P, [opt], x0, steps=steps, paths=8, sigma=0.0, seed=0,
                   record=np.arange(steps + 1), store_states=True)
    return res.states[0, :, 0, :]


def reference_schedules(K: int, g: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The random per-step schedules of :func:`reference_verdicts`, drawn from ``g`` (in this
    order): torch's lr_k ∈ [0.005, 0.05] and μ_k ∈ [0.5, 0.95], the EMA form's η_k ∈ [0.02,
    0.2] and β_k ∈ [0.3, 0.95], K steps each."""
    lr_t, mu_t = g.uniform(0.005, 0.05, K), g.uniform(0.5, 0.95, K)
    return lr_t, mu_t, g.uniform(0.02, 0.2, K), g.uniform(0.3, 0.95, K)


def reference_verdicts(P, K: int, g: np.random.Generator) -> tuple[list, dict]:
    """Engine optimizers against the independent transcriptions (module docstring), on the
    schedules :func:`reference_schedules` draws from ``g``."""
    return compare_with_references(P, K, reference_schedules(K, g))


def compare_with_references(P, K: int, schedules: tuple[np.ndarray, ...]) -> tuple[list, dict]:
    """:func:`reference_verdicts` on given schedules (lr_k, μ_k, η_k, β_k): the verdicts and
    the deviation per case.  One task's work (a :class:`~sdeverify.dispatch.Call`)."""
    x0 = np.array([1.0, -0.5])
    grad = P.gradient
    (lr_t, mu_t, eta_e, beta_e), tau = schedules, 0.3
    torch_ref = torch_sgd_transcription(grad, x0, lr_t, mu_t, tau, K)
    eta_c, beta_c, _ = heavy_ball_to_sgdm(lr_t, mu_t, tau, steps=K)
    cases = {
        "engine HeavyBall == transcribed torch.optim.SGD (random lr_k, mu_k, tau=0.3)":
            (_engine_path(P, HeavyBall(lr_t, mu_t, tau), x0, K), torch_ref),
        "engine SGDM with converted schedule == transcribed torch.optim.SGD":
            (_engine_path(P, SGDM(eta_c, beta_c), x0, K), torch_ref),
        "engine SGDM == transcribed Def 3.3 (random eta_k, beta_k)":
            (_engine_path(P, SGDM(eta_e, beta_e), x0, K),
             ema_sgdm_transcription(grad, x0, eta_e, beta_e, K)),
        "engine SGD == transcribed Def 3.2 (random eta_k)":
            (_engine_path(P, SGD(eta_e), x0, K), ema_sgdm_transcription(grad, x0, eta_e, np.zeros(K), K)),
    }
    # resumed runs (a non-empty torch buffer: b_0 = 1 - tau): a zero buffer with random mu_k
    # (the conversion's c_0 = inf branch) and a non-zero buffer with constant mu (finite c_0)
    zero = np.zeros(2)
    eta_z, beta_z, _ = heavy_ball_to_sgdm(lr_t, mu_t, tau, steps=K, buffer_empty=False)
    cases["engine HeavyBall and converted SGDM resumed from a zero buffer (random lr_k, mu_k, tau=0.3) "
          "== transcribed torch.optim.SGD"] = (
        np.concatenate([_engine_path(P, HeavyBall(lr_t, mu_t, tau, buffer=zero), x0, K),
                        _engine_path(P, SGDM(eta_z, beta_z), x0, K)]),
        np.concatenate([torch_sgd_transcription(grad, x0, lr_t, mu_t, tau, K, buf0=zero)] * 2))
    u0 = np.array([0.4, -0.7])
    eta_r, beta_r, c_r = heavy_ball_to_sgdm(lr_t, 0.9, tau, steps=K, buffer_empty=False)
    cases["engine HeavyBall and converted SGDM resumed from a buffer u0 != 0 (mu=0.9, tau=0.3) "
          "== transcribed torch.optim.SGD"] = (
        np.concatenate([_engine_path(P, HeavyBall(lr_t, 0.9, tau, buffer=u0), x0, K),
                        _engine_path(P, SGDM(eta_r, beta_r, m0=c_r[0] * u0), x0, K)]),
        np.concatenate([torch_sgd_transcription(grad, x0, lr_t, np.full(K, 0.9), tau, K, buf0=u0)] * 2))
    real = torch_sgd_real(grad, x0, lr_t, mu_t, tau, K)
    if real is not None:
        cases["transcribed torch.optim.SGD == real torch.optim.SGD"] = (torch_ref, real)
    out, devs = [], {}
    for name, (a, ref) in cases.items():
        dev = _rel_dev(a, ref)
        devs[name] = dev
        out.append(Verdict(name, "Def 3.2 / 3.3 / A.1 (independent reference)",
                           f"identical iterates (max rel. dev <= {TOL:g})", Value(dev),
                           dev <= TOL, f"noise-free, max over {K} steps and coords of "
                                       f"|x - x_ref|/(1+|x_ref|) <= {TOL:g}", TOL))
    return out, devs


def backend_cases(P) -> dict[str, tuple]:
    """The cases of :func:`backend_verdict`, name -> (problem, steps): ``P`` (the kernel's
    fused step, d ≤ config.FUSE_MAX_DIM), ``P`` under SVAG (two oracle calls per step) and a
    10-d cosine well under SVAG (the split step for d > FUSE_MAX_DIM)."""
    return {"P": (P, 50), "P + SVAG(2)": (SVAG(P, 2.0), 50),
            f"CosineWell(10) + SVAG(2), split step (d > {config.FUSE_MAX_DIM})": (SVAG(CosineWell(10), 2.0), 20)}


def backend_deviation(Q, steps: int) -> float:
    """One case of :func:`backend_verdict`: SGD, SGDM and HeavyBall on ``Q`` with noise
    (σ = 1.3, 300 paths), the CPU engine against the NumPy reference backend — the largest
    relative deviation of their states, and of each one's streamed statistics from NumPy's
    over its stored paths.  One task's work (a :class:`~sdeverify.dispatch.Call`)."""
    opts = [SGD(0.05), SGDM(0.05, 0.9), HeavyBall(0.01, 0.8, 0.3)]
    x0 = np.linspace(1.0, -0.5, Q.dim)
    kw = dict(steps=steps, paths=300, sigma=1.3, seed=3, record=np.arange(steps + 1),
              store_states=True, observables=["x0", "sqnorm"])
    a = simulate(Q, opts, x0, **kw)
    b = simulate(Q, opts, x0, backend="numpy", **kw)
    return max(_rel_dev(a.states, b.states), _stats_dev(a), _stats_dev(b))


def backend_summary(devs: dict[str, float]) -> tuple[Verdict, float]:
    """The verdict of :func:`backend_verdict` from each case's deviation, and the largest."""
    dev = max(devs.values())
    return Verdict("CPU engine == NumPy reference backend (SGD, SGDM, HeavyBall; sigma = 1.3; "
                   "one and two oracle calls, fused and split steps); their means and standard "
                   "errors == NumPy's of the stored paths",
                   "engine (method)", "identical paths and statistics (max rel. dev <= 1e-12)",
                   Value(dev), dev <= 1e-12, "300 paths (two blocks) with noise, all states and "
                   "the running (Welford) statistics of x0 and |x|^2 compared: "
                   + "; ".join(f"{k}: {v:.1g}" for k, v in devs.items()), 1e-12), dev


def backend_verdict(P) -> tuple[Verdict, float]:
    """CPU engine == NumPy reference backend, with noise (module docstring), on the cases of
    :func:`backend_cases`."""
    return backend_summary({name: backend_deviation(Q, steps) for name, (Q, steps) in backend_cases(P).items()})


def _stats_dev(res) -> float:
    """The engine's streamed mean and standard error of x0 and |x|² against NumPy's two-pass
    ones over the stored states (``res.states``: n_opt, n_rec, paths, d)."""
    dev = 0.0
    for j in range(res.states.shape[0]):
        x = res.states[j]
        for obs, v in (("x0", x[..., 0]), ("sqnorm", np.sum(x * x, axis=-1))):
            m, se = res.series(j, obs)
            want_se = v.std(axis=1, ddof=1) / np.sqrt(v.shape[1])
            dev = max(dev, _rel_dev(m, v.mean(axis=1)), _rel_dev(se, want_se))
    return dev


def schedule_references(g: np.random.Generator) -> dict:
    """(library value, transcribed definition) for each schedule (module docstring)."""
    from .. import schedules as S
    K = 60
    lr = g.uniform(0.01, 0.1, K)
    beta = g.uniform(0.5, 0.95, K)
    displacement = np.array([(1 - beta[k]) * sum(lr[j] * np.prod(beta[k + 1:j + 1]) for j in range(k, K))
                             for k in range(K)])
    ks = np.arange(K)
    miles = (7, 23, 41)
    decay = 0.3 * 0.2 ** np.array([sum(m <= k for m in miles) for k in ks])
    warm = 0.3 * np.minimum(1.0, (ks + 1) / 9)
    n = K - 5
    cos_ref = np.concatenate([0.3 * (np.arange(5) + 1) / 5,
                              0.01 + 0.5 * (0.3 - 0.01) * (1 + np.cos(np.pi * np.arange(n) / n))])
    shape = g.uniform(0.5, 1.5, K)
    fam_lr, fam_beta = S.scaled_family(0.04, 0.5, 0.7, K, shape)
    return {
        "averaged_lr (Eq 8), random beta_k, truncated tail": (S.averaged_lr(lr, beta, tail="truncate"), displacement),
        "averaged_lr (Eq 8), constant schedule, constant tail: eta_bar = eta":
            (S.averaged_lr(np.full(K, 0.05), np.full(K, 0.9), tail="constant"), np.full(K, 0.05)),
        "step_decay (torch MultiStepLR)": (S.step_decay(0.3, K, miles, 0.2), decay),
        "warmup (linear, lr/w .. lr)": (S.warmup(0.3, K, 9), warm),
        "cosine (5 warm-up steps, lr_min 0.01)": (S.cosine(0.3, K, 0.01, 5), cos_ref),
        "scaled_family (Def 4.1: eta*shape_k, 1 - lam*eta^alpha)":
            (np.concatenate([fam_lr, fam_beta]), np.concatenate([0.04 * shape, np.full(K, 1 - 0.7 * 0.04 ** 0.5)])),
        "svag_schedule (Def 6.1: l steps of eta_k/l)": (S.svag_schedule(lr, 3, K), np.repeat(lr / 3, 3)),
    }


def schedule_verdicts(g: np.random.Generator) -> tuple[list, dict]:
    out, devs = [], {}
    for name, (lib, ref) in schedule_references(g).items():
        lib, ref = np.asarray(lib, float), np.asarray(ref, float)
        dev = float(np.max(np.abs(lib - ref) / np.maximum(np.abs(ref), 1e-300))) if lib.shape == ref.shape \
            else float("inf")
        devs[name] = dev
        out.append(Verdict(f"schedule == its definition: {name}", "Def 4.1 / Eq 8 / Def 6.1",
                           "identical values (max rel. dev <= 1e-12)", Value(dev),
                           dev <= 1e-12, "library schedule vs direct transcription of its definition",
                           1e-12))
    return out, devs


@experiment(NAME, SIZES)
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Heavy-ball vs converted SGDM, the independent references, the schedules and the
    backend, every part one item of one sweep (:func:`~.base.run_many`); rules in the module
    docstring."""
    K, N = cfg["steps"], cfg["paths"]
    P = CosineWell(2)
    g = np.random.default_rng(seed)
    cases = {
        "constant (tau=0)": (0.01, 0.9, 0.0),
        "dampening tau=0.5": (0.01, 0.9, 0.5),
        "random per-step schedule, tau=0.3": (g.uniform(0.001, 0.02, K), g.uniform(0.5, 0.99, K), 0.3),
    }
    rec = np.unique(np.linspace(0, K, 11).astype(int))
    verdicts = []
    run_kw = dict(x0=[1.0, -0.5], steps=K, paths=N, sigma=1.0, seed=seed, record=rec, store_states=True)
    # the sweep's points, run together on a cluster: the simulations with their deviation
    # (computed as each comes in), the reference comparisons, the schedules and the backend
    calls = []
    for lr, mu, tau in cases.values():
        eta, beta, _ = heavy_ball_to_sgdm(lr, mu, tau, steps=K)
        calls.append(dict(problem=P, optimizers=[HeavyBall(lr, mu, tau), SGDM(eta, beta)],
                          then=_max_rel_dev, **run_kw))
    calls.append(dict(problem=P, optimizers=[HeavyBall(0.01, 0.9, 0.5), SGDM(0.01 / 0.1, 0.9)],
                      then=_max_rel_dev, **run_kw))
    K_ref = min(K, 400)
    calls += [Call(compare_with_references, (P, K_ref, reference_schedules(K_ref, g))),
              Call(schedule_verdicts, (g,))]
    backend = backend_cases(P)
    calls += [Call(backend_deviation, case) for case in backend.values()]
    out = run_many(calls)
    tick(progress, len(calls), len(calls))
    n_sim = len(cases) + 1
    *devs, dn = out[:n_sim]
    (ref_verdicts, ref_devs), (sched_verdicts, sched_devs) = out[n_sim:n_sim + 2]
    bv, bdev = backend_summary(dict(zip(backend, out[n_sim + 2:])))
    for name, dev in zip(cases, devs):
        verdicts.append(Verdict(f"heavy-ball == converted SGDM, {name}", "Lemma A.2 / THEORY §2",
                                f"identical iterates (max rel. dev <= {TOL:g})",
                                Value(dev), dev <= TOL,
                                f"max |x_HB - x_SGDM|/(1+|x|) over paths, steps, coords <= {TOL:g}",
                                TOL))
    verdicts.append(Verdict("negative control: naive eta = gamma/(1-mu) ignores dampening",
                            "THEORY §2", "detectably different (> 1e-3)", Value(dn),
                            dn > 1e-3, "max rel. deviation > 1e-3", 1e-3))
    verdicts += ref_verdicts + sched_verdicts + [bv]
    data = {"cases": np.array(list(cases)), "max_rel_dev": np.array(devs), "naive_dev": np.array(dn),
            "reference_cases": np.array(list(ref_devs)), "reference_dev": np.array(list(ref_devs.values())),
            "schedule_cases": np.array(list(sched_devs)), "schedule_dev": np.array(list(sched_devs.values())),
            "backend_dev": np.array(bdev)}
    return cfg, data, verdicts


@styled
def plot(result: ExperimentResult, path):
    d = result.data
    fig, ax = subplots(1, figsize(1, width="two", aspect=0.4))
    names = list(d["cases"]) + ["naive mapping (control)"]
    vals = list(d["max_rel_dev"]) + [float(d["naive_dev"])]
    ax.barh(names, np.maximum(vals, 1e-18), color=["C0"] * len(d["cases"]) + ["C3"])
    ax.axvline(TOL, color="k", ls="--", label=f"tolerance {TOL:g}")
    ax.set(xscale="log", xlabel=r"$\max\,|x_{\mathrm{HB}} - x_{\mathrm{SGDM}}| / (1 + |x|)$",
           title="heavy-ball vs converted SGDM")
    legend_below(ax)
    return save_figure(fig, path)
