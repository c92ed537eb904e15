"""SDE limits over O(1/η) steps (THEORY §7; Li, Tai, E 2019; Thm. 4.5; kinetic limit at α = 1).

With noise scale σ = σ₀ η^{-1/2} and a fixed horizon T, the weak error

    err(η) = max_{k ≤ T/η} | E h(x_k) − E h(X_{kη}) |

is measured for a grid of η and fitted to C η^p (:func:`sdeverify.stats.fit_order`), for

* ``sgd``                 SGD(η)                               vs the first-order SDE;
* ``sgdm_a0``             SGDM(η, β = 0.9)          (α = 0)    vs the first-order SDE;
* ``sgdm_a05``            SGDM(η, 1 − β = η^{1/2})  (α = 0.5)  vs the first-order SDE;
* ``sgdm_a1_kinetic``     SGDM(η, 1 − β = ρη)       (α = 1)    vs the kinetic SDE;
* ``sgdm_a1_first_order`` the same SGDM                        vs the first-order SDE;

on two problems: a 2-d :class:`~sdeverify.problems.Quadratic` (exact moments on both sides:
the discrete recursions of :func:`sdeverify.sde._discrete_moments` and the closed-form OU /
kinetic moments; the max runs over every k) and the non-convex
:class:`~sdeverify.problems.CosineWell` with state-dependent noise (Monte Carlo with common
random numbers, :func:`sdeverify.sde.weak_error`: the SDE reference is Euler–Maruyama on the
grid η/r, Talay–Tubaro-extrapolated with the step-2η/r scheme, on the same Brownian
increments as the optimizers; the max runs over 33 evenly spaced k, with a simultaneous
Bonferroni interval).  Test functions: the loss and the first coordinate.

What is (and is not) being tested: with Gaussian noise, SGD at lr η and σ = σ₀η^{-1/2} *is*
Euler–Maruyama for the first-order SDE at step η, and SGDM with β = 1 − ρη *is* the
semi-implicit EM for the kinetic SDE (see :mod:`sdeverify.sde`), so those two errors are
the schemes' weak discretisation errors — order 1 is the expected answer, and the check is
that the toolkit measures it.  The substantive comparisons are SGDM with α < 1 against the
first-order SDE (Thm. 4.5) and SGDM at α = 1 against the first-order SDE (no convergence).
On the quadratic the exact moments hold for any noise law with covariance Σ (the test
functions are at most quadratic); on CosineWell the coupled Monte Carlo uses Gaussian noise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import sde
from ..optim import SGD, SGDM
from ..problems import CosineWell, Quadratic
from ..stats import Interval, fit_order, richardson_order, z_value
from ..figstyle import figsize, fit_line, legend_below, styled
from .base import (Call, ExperimentResult, Progress, Timer, Value, Verdict, experiment, run_many,
                   save_figure, subplots, tick)
from .budget import ALPHA

NAME = "sde_limit"
TITLE = "SDE limits over O(1/η) steps: SGD/SGDM (α<1) → first-order SDE, SGDM (α=1) → kinetic SDE"

SERIES = ("sgd", "sgdm_a0", "sgdm_a05", "sgdm_a1_kinetic", "sgdm_a1_first_order")
LABELS = {"sgd": "SGD vs SDE",
          "sgdm_a0": "SGDM α=0 (β=0.9) vs SDE",
          "sgdm_a05": "SGDM α=0.5 vs SDE",
          "sgdm_a1_kinetic": "SGDM α=1 vs kinetic SDE",
          "sgdm_a1_first_order": "SGDM α=1 vs first-order SDE"}
#: the lower bound on the weak order each series is checked against (None: bounded away)
PREDICTED_ORDER = {"sgd": 1.0, "sgdm_a0": 0.5, "sgdm_a05": 0.25, "sgdm_a1_kinetic": 1.0,
                   "sgdm_a1_first_order": None}
PROBLEMS = ("quadratic", "cosine_well")
#: series whose order is known exactly (the discretisation order of EM / semi-implicit EM):
#: their verdicts are two-sided
EXACT_ORDER = ("sgd", "sgdm_a1_kinetic")
#: level of the two-sided Monte Carlo order interval (a calibrated two-sided 95% rule would
#: fail 5% of the time per verdict)
TWO_SIDED_LEVEL = 1 - ALPHA[NAME] / 4   # 4 two-sided Monte Carlo order tests (CosineWell)
#: "bounded away from 0": the order's interval contains 0 or lies below this
FLAT_ORDER = 0.1

#: orders are fitted where the scheme's dimensionless step κ (:func:`_kappa`) is at most this:
#: the asymptotic regime (relaxation times of both problems ≳ 0.6, momentum's 1/ρ = 0.5)
KAPPA_MAX = 0.1

_SIZES = {
    # numbers of steps N = T/η of the two grids; paths and sub-steps of the Monte Carlo part
    "smoke": dict(quad_n_steps=tuple(10 * 2 ** j for j in range(8)),
                  cos_n_steps=(20, 40, 80, 160, 320), paths=4096, substeps=2),
    "quick": dict(quad_n_steps=tuple(10 * 2 ** j for j in range(9)),
                  cos_n_steps=(10, 20, 40, 80, 160), paths=8192, substeps=4),
    "full": dict(quad_n_steps=tuple(10 * 2 ** j for j in range(11)),
                 cos_n_steps=(10, 25, 60, 150, 250, 400, 630, 1000),
                 paths=32768, substeps=4),
}
_DEFAULTS = dict(T=2.0, sigma0=0.8, rho=2.0, beta0=0.9, lam_half=1.0, kappa_max=KAPPA_MAX,
                 test_functions=("loss", "x0"),
                 quad_hessian=((1.0, 0.3), (0.3, 0.5)), quad_noise=((1.0, 0.2), (0.2, 0.5)),
                 quad_center=(0.5, -0.5), quad_x0=(2.0, 1.0),
                 cos_dim=2, cos_amplitude=2.0, cos_x0=(0.5, -1.0))


def _kappa(series: str, eta: np.ndarray, p: dict) -> np.ndarray:
    """The scheme's dimensionless step κ: for SGD and SGDM with α < 1 the momentum's averaging
    window η/(1 − β) in time units (SGD: η); for α = 1 the per-step momentum decay
    1 − β = ρη, i.e. the kinetic EM step in units of the momentum relaxation time 1/ρ
    (η/(1 − β) = 1/ρ does not shrink there)."""
    if series == "sgd":
        return eta
    if series == "sgdm_a0":
        return eta / (1.0 - p["beta0"])
    if series == "sgdm_a05":
        return eta ** 0.5 / p["lam_half"]
    return p["rho"] * eta


def _fit_mask(series: str, eta: np.ndarray, p: dict) -> np.ndarray:
    """Grid points the verdict's order is fitted on: κ ≤ kappa_max (the asymptotic regime)."""
    return _kappa(series, eta, p) <= p["kappa_max"] * (1 + 1e-12)


def _optimizers(eta: float, p: dict) -> dict:
    """The schemes at step η (their noise scale σ₀η^{-1/2} is set by the caller)."""
    return {"sgd": SGD(eta, name="sgd"),
            "sgdm_a0": SGDM(eta, p["beta0"], name="sgdm_a0"),
            "sgdm_a05": SGDM(eta, 1.0 - p["lam_half"] * eta ** 0.5, name="sgdm_a05"),
            "sgdm_a1": SGDM(eta, 1.0 - p["rho"] * eta, name="sgdm_a1")}


def _quadratic_point(problem, p, eta) -> dict:
    """Exact weak errors on the quadratic at one η, {series: {h: error}} — one task's work
    (a :class:`~sdeverify.dispatch.Call`: on a cluster each η runs on a worker)."""
    fo = sde.FirstOrderSDE(problem, p["sigma0"])
    kin = sde.KineticSDE(problem, p["sigma0"], p["rho"])
    hs = list(p["test_functions"])
    n = int(round(p["T"] / eta))
    tt = np.arange(n + 1) * eta
    ref = {"fo": sde.exact_expectation(fo, p["quad_x0"], tt, hs),
           "kin": sde.exact_expectation(kin, p["quad_x0"], tt, hs)}
    opts = _optimizers(eta, p)
    pairs = {"sgd": ("sgd", "fo"), "sgdm_a0": ("sgdm_a0", "fo"), "sgdm_a05": ("sgdm_a05", "fo"),
             "sgdm_a1_kinetic": ("sgdm_a1", "kin"), "sgdm_a1_first_order": ("sgdm_a1", "fo")}
    moments, out = {}, {s: {} for s in SERIES}
    for s, (o, r) in pairs.items():
        if o not in moments:
            moments[o] = sde._discrete_moments(problem, opts[o], p["sigma0"] / np.sqrt(eta),
                                               p["quad_x0"], n)
        m, C = moments[o]
        for j, h in enumerate(hs):
            e = sde.quadratic_expectation(problem, m, C, h) - ref[r][:, j]
            out[s][h] = np.abs(e).max()
    return out


def _cosine_point(problem, p, eta, seed) -> tuple[dict, float]:
    """Monte Carlo weak errors on CosineWell at one η — one task's work: ({series: {h:
    (err, low, high, sem)}}, the EM reference's bias)."""
    fo = sde.FirstOrderSDE(problem, p["sigma0"])
    kin = sde.KineticSDE(problem, p["sigma0"], p["rho"])
    hs = list(p["test_functions"])
    opts = _optimizers(eta, p)
    kw = dict(eta=eta, T=p["T"], paths=p["paths"], substeps=p["substeps"], seed=seed,
              observables=hs)
    w1 = sde.weak_error(fo, [opts["sgd"], opts["sgdm_a0"], opts["sgdm_a05"], opts["sgdm_a1"]],
                        p["cos_x0"], **kw)
    w2 = sde.weak_error(kin, [opts["sgdm_a1"]], p["cos_x0"], **kw)
    em_bias = max(np.abs(w1.em_bias).max(), np.abs(w2.em_bias).max())
    src = {"sgd": (w1, "sgd"), "sgdm_a0": (w1, "sgdm_a0"), "sgdm_a05": (w1, "sgdm_a05"),
           "sgdm_a1_kinetic": (w2, "sgdm_a1"), "sgdm_a1_first_order": (w1, "sgdm_a1")}
    out = {s: {} for s in SERIES}
    for s, (w, o) in src.items():
        for h in hs:
            iv = w.max_error(o, h)
            out[s][h] = (iv.estimate, iv.low, iv.high, w.sem_at_max(o, h))
    return out, em_bias


def _quadratic_errors(problem, p, etas, progress, done, total):
    """Exact weak errors on the quadratic, {series: {h: err array}}: every η one item of a
    sweep (:func:`~.base.run_many`)."""
    res = run_many([Call(_quadratic_point, (problem, p, eta)) for eta in etas])
    out = {s: {h: np.array([r[s][h] for r in res]) for h in p["test_functions"]} for s in SERIES}
    done += len(etas)
    tick(progress, done, total)
    return out, done


def _cosine_errors(problem, p, etas, seed, progress, done, total):
    """Monte Carlo weak errors on CosineWell: {series: {h: (err, low, high, sem)}}, em_bias;
    every η one item of a sweep (:func:`~.base.run_many`)."""
    res = run_many([Call(_cosine_point, (problem, p, eta, seed)) for eta in etas])
    out = {s: {h: np.array([r[0][s][h] for r in res]).reshape(len(res), 4)
               for h in p["test_functions"]} for s in SERIES}
    done += len(etas)
    tick(progress, done, total)
    return out, np.array([r[1] for r in res]), done


def _grid(n_steps, T: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(sorted(set(int(k) for k in n_steps)), dtype=np.int64)
    if n.size < 3 or n[0] < 1:
        raise ValueError(f"{name} needs at least 3 positive step counts (order fit), got {list(n_steps)}")
    return n, T / n


@experiment(NAME, _SIZES, defaults=_DEFAULTS)
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Weak error of SGD / SGDM against the first-order and kinetic SDEs over grids of η.

    Parameters (``overrides``): ``quad_n_steps`` / ``cos_n_steps`` (the two grids of
    N = T/η; the exact quadratic grid reaches smaller η than the Monte Carlo one), ``T`` (2),
    ``sigma0`` (0.8, not 1: at σ₀ = 1 a noise scaled by σ₀² instead of σ₀ is invisible), ``rho`` (2: 1 − β = ρη at α = 1; kinetic SDE with the same ρ), ``beta0``
    (0.9, α = 0), ``lam_half`` (1: 1 − β = lam_half·η^{1/2} at α = 0.5), ``kappa_max`` (0.1),
    ``paths``, ``substeps`` (r: the Monte Carlo SDE reference runs EM at η/r and 2η/r with
    extrapolation), ``test_functions`` (("loss", "x0")), the problems' ``quad_*``/``cos_*``.

    **Fit range.**  Thm. 4.5 and the SDE limits are statements about η → 0, so each order is
    fitted on the grid points where the scheme's dimensionless step κ ≤ ``kappa_max`` (0.1):
    κ = η/(1 − β), the momentum's averaging window in time units, for SGD (κ = η) and SGDM
    with α < 1; κ = 1 − β = ρη, the kinetic EM step in units of the momentum relaxation time,
    for α = 1.  A verdict is issued only when at least 3 points qualify (at quick size the
    α = 0 and α = 0.5 series on CosineWell have none: data only).  Including the coarse points
    biases the fits (measured at quick size over 40 seeds, all points: the kinetic loss order
    averaged 0.993 ± 0.012, so "order ≥ 1" failed 12% of seeds).  The fit over the whole grid
    is kept in the data as ``*.order_all``.

    Decision rules (:mod:`sdeverify.stats`), per problem × test function × series:

    * ``sgd`` and ``sgdm_a1_kinetic``: **order = 1, two-sided** (the weak order of
      Euler–Maruyama / the semi-implicit kinetic EM, known exactly; an order that came out
      2.3 is as wrong as one that came out 0.5).  Quadratic (exact errors): 1 lies inside
      the Richardson interval of the local orders (:func:`sdeverify.stats.richardson_order`:
      extrapolated local order ± twice its last corrections); CosineWell (Monte Carlo): 1 lies
      inside the fitted order's interval at level 1 − α/4 (α the check's share of the main
      job's false-failure budget, ``experiments/budget.py``: 99.975%).
    * ``sgdm_a0`` / ``sgdm_a05``: **order ≥ (1 − α)/2** (Thm. 4.5 bounds SGDM − SGD by
      C η^{(1−α)/2}; SGD − SDE is O(η)): upper end ≥ 0.5 / 0.25.
    * ``sgdm_a1_first_order``: **bounded away from 0**: the lower end of the error's 95%
      interval at the smallest η is > 0, and the order's interval contains 0 or lies below 0.1.

    Intervals: on the quadratic the errors are exact (max over every k), so the order's
    interval reflects only the lack of fit of a power law (t quantile on the residual scatter);
    on CosineWell each error is a max over 33 recorded k with a simultaneous (Bonferroni) 95%
    interval [low, high], and the fit's per-point standard error is (high − err)/1.96 — the
    simultaneous interval read as a marginal one, ≈ 1.6 × the standard error at the maximising
    k.  The plain standard error at the maximising k ignores that the max is *selected* from
    33 noisy estimates (biased upward most where the error is smallest) and gave undercovering
    order intervals (smoke size, SGD/x0: "order ≥ 1" failed at 99.9% for 1 seed in 100).  Fits
    are χ²-inflated when the power law does not fit within these errors.

    False-failure rates: the quadratic verdicts are deterministic.  The CosineWell verdicts
    were rerun over seeds 0..99 at smoke size and 0..11 at quick size: no verdict failed.
    (The SGD and kinetic ones test "order ≥ 1" where the true order *is* 1, so a calibrated
    95% interval would miss it from above 2.5% of the time; the conservative per-point errors
    above make it rarer.  A single failure of one of those at one seed is weak evidence: rerun
    with another seed or a larger size.)
    """
    p = dict(cfg)
    p["test_functions"] = tuple(p["test_functions"])
    nq, eq = _grid(p["quad_n_steps"], p["T"], "quad_n_steps")
    nc, ec = _grid(p["cos_n_steps"], p["T"], "cos_n_steps")
    emax = max(eq.max(), ec.max())
    if p["rho"] * emax > 1.0 or p["lam_half"] * emax ** 0.5 > 1.0 or not 0 <= p["beta0"] < 1:
        raise ValueError("the largest eta needs rho*eta <= 1 and lam_half*eta**0.5 <= 1; beta0 in [0, 1)")
    quad = Quadratic(np.array(p["quad_hessian"]), noise_cov=np.array(p["quad_noise"]),
                     center=np.array(p["quad_center"]))
    cos = CosineWell(p["cos_dim"], p["cos_amplitude"])
    total = eq.size + ec.size
    data: dict = {"quadratic.eta": eq, "cosine_well.eta": ec,
                  "test_functions": np.array(p["test_functions"]), "series": np.array(SERIES),
                  "problems": np.array(PROBLEMS)}
    verdicts = []
    with Timer() as tq:
        qerr, done = _quadratic_errors(quad, p, eq, progress, 0, total)
    with Timer() as tc:
        cerr, em_bias, done = _cosine_errors(cos, p, ec, seed, progress, done, total)
    data["quadratic.wall"] = tq.seconds
    data["cosine_well.wall"] = tc.seconds
    data["cosine_well.em_bias"] = em_bias
    for prob, etas in (("quadratic", eq), ("cosine_well", ec)):
        for s in SERIES:
            mask = _fit_mask(s, etas, p)
            data[f"{prob}.{s}.fit_mask"] = mask
            for h in p["test_functions"]:
                key = f"{prob}.{s}.{h}"
                if prob == "quadratic":
                    err = qerr[s][h]
                    low = high = err
                    sem = None
                else:
                    err, low, high, sem_k = (cerr[s][h][:, c] for c in range(4))
                    data[key + ".sem"] = sem_k
                    # the max over checkpoints is selected from noisy estimates: weight the
                    # fit by its simultaneous interval, read as if it were a marginal 95% one
                    sem = (high - err) / z_value(0.95)
                    data[key + ".fit_sem"] = sem
                data[key + ".err"], data[key + ".low"], data[key + ".high"] = err, low, high
                if not np.all(np.isfinite(err) & (err > 0)):
                    # an error of exactly 0 (or NaN) has no log-log fit: a failed verdict that
                    # says so, not a crash that would hide this check's other verdicts
                    for k in (".order_all", ".order"):
                        data[key + k] = np.full(3, np.nan)
                    data[key + ".log_c_all"] = data[key + ".log_c"] = np.nan
                    verdicts.append(_unfittable_verdict(prob, s, h, etas, err))
                    continue
                fit_all = fit_order(etas, err, sem)
                data[key + ".order_all"] = _order_array(fit_all)
                data[key + ".log_c_all"] = fit_all.log_c
                if mask.sum() < 3:
                    data[key + ".order"] = np.full(3, np.nan)
                    data[key + ".log_c"] = np.nan
                    continue
                fit = fit_order(etas[mask], err[mask], None if sem is None else sem[mask])
                data[key + ".order"] = _order_array(fit)
                data[key + ".log_c"] = fit.log_c
                two = None
                if s in EXACT_ORDER:
                    two = (richardson_order(etas[mask], err[mask]) if sem is None else
                           fit_order(etas[mask], err[mask], sem[mask], level=TWO_SIDED_LEVEL).order)
                    data[key + ".order_two_sided"] = np.array([two.estimate, two.low, two.high])
                verdicts.append(_make_verdict(prob, s, h, etas, err, low, high, fit, two))
    for v, d in (schedule_verdict(quad, p), extrapolation_verdict(quad, p)):
        verdicts.append(v)
        data.update(d)
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()}
    return params, data, verdicts


#: the schedule verdict's step sizes and its rule: local orders of exact errors in this band
SCHEDULE_ETAS = (0.04, 0.02, 0.01)
SCHEDULE_BAND = (0.9, 1.1)


def schedule_lambda(T: float):
    """λ_t of the schedule verdict: a step decay 1 → 0.5 at T/2."""
    return lambda t: 1.0 if t < T / 2 else 0.5


def schedule_verdict(quad, p: dict) -> tuple[Verdict, dict]:
    """SGD with a step-decay learning rate η_k = λ(kη) η (noise σ₀/√η) against the
    first-order SDE with that λ_t (drift λ_t ∇L, diffusion λ_t σ₀ Σ^½; docs/theory.md §7),
    both exactly: SGD's moment recursion and the SDE's moment ODEs.  Every other SDE verdict
    runs λ ≡ 1, where λ_t, λ_t² and √λ_t agree; here a mis-scaled λ leaves an error that does
    not shrink.  Rule: the local orders log₂(e(η)/e(η/2)) of the error in E L(X_T) lie in
    :data:`SCHEDULE_BAND` (they are 0.987 and 0.994 on this quadratic)."""
    T, s0, x0 = p["T"], p["sigma0"], p["quad_x0"]
    lam = schedule_lambda(T)
    m_ref, c_ref = sde.ou_moments(quad, s0, x0, [T], lam=lam)
    h_ref = sde.quadratic_expectation(quad, m_ref, c_ref, "loss")[0]
    errs = []
    for eta in SCHEDULE_ETAS:
        n = int(round(T / eta))
        lr = eta * np.array([lam(k * eta) for k in range(n)])
        m, c = sde._discrete_moments(quad, SGD(lr), s0 / np.sqrt(eta), x0, n)
        errs.append(abs(sde.quadratic_expectation(quad, m[-1:], c[-1:], "loss")[0] - h_ref))
    errs = np.array(errs)
    local = np.log2(errs[:-1] / errs[1:])
    ok = bool(np.all((local >= SCHEDULE_BAND[0]) & (local <= SCHEDULE_BAND[1])))
    return (Verdict("SGD with a step-decay lr (lambda 1 -> 0.5 at T/2) is an order-1 weak "
                    "approximation of the first-order SDE with lambda_t (quadratic, h = loss, exact)",
                    "Li, Tai, E 2019; THEORY §7", f"local orders in [{SCHEDULE_BAND[0]:g}, {SCHEDULE_BAND[1]:g}]",
                    Value(float(local[-1])), ok,
                    f"exact errors {', '.join(f'{e:.3g}' for e in errs)} at eta = "
                    f"{', '.join(f'{e:g}' for e in SCHEDULE_ETAS)}; local orders "
                    f"{', '.join(f'{o:.3f}' for o in local)}", SCHEDULE_BAND[0]),
            {"schedule.eta": np.array(SCHEDULE_ETAS), "schedule.err": errs})


#: rule of the extrapolation verdict: local orders of the residual (known order 2)
EXTRAPOLATION_BAND = (1.8, 2.3)


def extrapolation_verdict(quad, p: dict) -> tuple[Verdict, dict]:
    """:func:`sdeverify.sde.weak_error`'s Talay–Tubaro reference, checked where everything is
    exact: on the quadratic without noise (σ₀ = 0) the SDE is an ODE, SGD's error against it
    is known exactly (its moment recursion against the ODE's solution), and the error that
    ``weak_error`` reports (EM at h = η/2 and its step-2h scheme, extrapolated) must differ
    from it by O(h²).  The CosineWell verdicts cannot see a wrong extrapolation: they fit an
    order that stays 1 with a wrong constant.  Rule: local orders of the residual in
    :data:`EXTRAPOLATION_BAND` (2.08, 2.04 here; 1.03, 1.02 with the correction's sign
    flipped)."""
    fo = sde.FirstOrderSDE(quad, 0.0)
    hs = ("loss", "x0")
    devs = []
    for eta in (0.1, 0.05, 0.025):
        w = sde.weak_error(fo, [SGD(eta)], p["quad_x0"], eta=eta, T=p["T"], paths=256,
                           substeps=2, seed=1, observables=list(hs))
        exact = sde.exact_expectation(fo, p["quad_x0"], w.times, list(hs))
        m, c = sde._discrete_moments(quad, SGD(eta), 0.0, p["quad_x0"], int(round(p["T"] / eta)))
        disc = np.stack([sde.quadratic_expectation(quad, m[w.steps], c[w.steps], h) for h in hs], axis=-1)
        devs.append(float(np.abs(w.diff[0] - (disc - exact)).max()))
    devs = np.array(devs)
    local = np.log2(devs[:-1] / devs[1:])
    lo, hi = EXTRAPOLATION_BAND
    return (Verdict("sde.weak_error's Talay-Tubaro reference: SGD's error vs the ODE (quadratic, "
                    "sigma0 = 0) equals the exact one up to O(h^2)", "Talay-Tubaro; THEORY §7",
                    f"residual local orders in [{lo:g}, {hi:g}]", Value(float(local[-1])),
                    bool(np.all((local >= lo) & (local <= hi))),
                    f"max residual {', '.join(f'{d:.2g}' for d in devs)} at eta = 0.1, 0.05, 0.025 "
                    f"(h = eta/2); local orders {', '.join(f'{o:.2f}' for o in local)}", lo),
            {"extrapolation.residual": devs})


def _order_array(fit) -> np.ndarray:
    return np.array([fit.order.estimate, fit.order.low, fit.order.high])


def _unfittable_verdict(problem, series, h, etas, err) -> Verdict:
    """The failed verdict of a series whose errors are not all positive and finite: every
    claim of this check predicts a positive error at every η (an order is fitted on log-log
    axes), so an error of exactly 0 or NaN is itself a contradiction."""
    claim, ref = _claim_ref(problem, series, h)
    bad = [f"{e:.3g} at eta = {x:.3g}" for x, e in zip(etas, err) if not (np.isfinite(e) and e > 0)]
    smallest = float(np.min(np.where(np.isnan(err), np.inf, err)))
    return Verdict(claim, ref, "a positive error at every eta (an order is fitted on log-log axes)",
                   Value(smallest), False,
                   "errors not all positive and finite, no fit: " + "; ".join(bad[:4]))


def _claim_ref(problem, series, h) -> tuple[str, str]:
    """The claim and its reference for one (problem, series, test function) of the sweep."""
    pred = PREDICTED_ORDER[series]
    where = f"{problem}, h = {h}"
    if series == "sgd":
        claim = f"SGD is an order-1 weak approximation of the first-order SDE ({where})"
        ref = "Li, Tai, E 2019; THEORY §7"
    elif series in ("sgdm_a0", "sgdm_a05"):
        a = "0" if series == "sgdm_a0" else "0.5"
        claim = (f"SGDM with index α = {a} is a weak approximation of the first-order SDE, "
                 f"order ≥ (1 − α)/2 = {pred:g} ({where})")
        ref = "Thm. 4.5 (+ SGD → SDE at order 1); THEORY §6–7"
    elif series == "sgdm_a1_kinetic":
        claim = f"SGDM with 1 − β = ρη converges to the kinetic SDE ({where})"
        ref = "THEORY §7 (derived)"
    else:
        claim = (f"SGDM with 1 − β = ρη does not converge to the first-order SDE: error bounded "
                 f"away from 0 ({where})")
        ref = "THEORY §6–7: α = 1 is outside Thm. 4.5"
    return claim, ref


def _make_verdict(problem, series, h, etas, err, low, high, fit, two=None) -> Verdict:
    pred = PREDICTED_ORDER[series]
    claim, ref = _claim_ref(problem, series, h)
    if pred is None:
        i = int(np.argmin(etas))
        measured = Interval(float(err[i]), float(low[i]), float(high[i]))
        passed = bool(low[i] > 0 and (fit.order.contains(0.0) or fit.order.high < FLAT_ORDER))
        rule = (f"bounded away from 0: lower end of the error's 95% interval at the smallest η > 0, "
                f"and the fitted order's interval ({fit.order}) contains 0 or lies below {FLAT_ORDER}")
        return Verdict(claim, ref, "error → a non-zero constant as η → 0", measured, passed, rule)
    if series in EXACT_ORDER:
        passed = bool(two.contains(pred))
        if problem == "quadratic":
            how = (f"Richardson-extrapolated local order of the exact errors ± twice its last "
                   f"corrections contains {pred:g} (95% fit over the range: {fit.order})")
        else:
            how = (f"the fitted order's {TWO_SIDED_LEVEL:.1%} interval contains {pred:g} "
                   f"(95% interval: {fit.order})")
        rule = f"two-sided, order = {pred:g}: {how}"
        scheme = ("SGD is the SDE's Euler–Maruyama" if series == "sgd"
                  else "SGDM is the kinetic SDE's semi-implicit EM")
        prediction = f"error → 0 at order exactly {pred:g} ({scheme})"
        return Verdict(claim, ref, prediction, two, passed, rule)
    else:
        passed = bool(fit.order.high >= pred)
        rule = f"order ≥ {pred:g}: the upper end of the fitted order's 95% interval is ≥ {pred:g}"
        prediction = f"weak order ≥ {pred:g}"
    return Verdict(claim, ref, prediction, fit.order, passed, rule)


@styled
def plot(result: ExperimentResult, path) -> Path:
    """Log-log weak error vs η, one panel per problem × test function, with 95% intervals
    and the fitted power laws (over the fitted range) labelled with their orders."""
    from matplotlib.ticker import NullFormatter

    d = result.data
    hs = [str(h) for h in np.asarray(d["test_functions"])]
    probs = [str(p) for p in np.asarray(d["problems"])]
    colors = {"sgd": "C0", "sgdm_a0": "C1", "sgdm_a05": "C2", "sgdm_a1_kinetic": "C3",
              "sgdm_a1_first_order": "C7"}
    markers = {"sgd": "o", "sgdm_a0": "s", "sgdm_a05": "^", "sgdm_a1_kinetic": "D",
               "sgdm_a1_first_order": "x"}
    fig, axes = subplots(len(hs), figsize(len(hs), len(probs), aspect=0.95), nrows=len(probs),
                         squeeze=False)
    for r, prob in enumerate(probs):
        etas = np.asarray(d[f"{prob}.eta"], dtype=float)
        for c, h in enumerate(hs):
            ax = axes[r, c]
            for s in SERIES:
                key = f"{prob}.{s}.{h}"
                err = np.asarray(d[key + ".err"], dtype=float)
                lo = np.asarray(d[key + ".low"], dtype=float)
                hi = np.asarray(d[key + ".high"], dtype=float)
                o = np.asarray(d[key + ".order"], dtype=float)
                mask = np.asarray(d[f"{prob}.{s}.fit_mask"], dtype=bool)
                yerr = np.vstack([np.clip(err - lo, 0, None), np.clip(hi - err, 0, None)])
                lab = LABELS[s] + (f": $p = {o[0]:.2f}$ [{o[1]:.2f}, {o[2]:.2f}]" if np.isfinite(o[0])
                                   else " (no point in the fit range)")
                ax.errorbar(etas, err, yerr=yerr, fmt=markers[s], color=colors[s], ms=3.5,
                            lw=1, label=lab, mfc="none" if s.endswith("first_order") else None)
                ax.plot(etas, err, ":", color=colors[s], lw=0.7, alpha=0.6)
                if np.isfinite(o[0]) and mask.any():
                    fit_line(ax, etas[mask], order=o[0], log_c=float(d[key + ".log_c"]),
                             color=colors[s], lw=2.2, alpha=0.55)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(r"learning rate $\eta$ ($\sigma = \sigma_0\,\eta^{-1/2}$, $T$ fixed)")
            ax.set_ylabel(r"$\max_k\,|\mathbb{E}\,h(x_k) - \mathbb{E}\,h(X_{k\eta})|$, "
                          + f"$h$ = {h}")
            kind = "exact moments" if prob == "quadratic" else "Monte Carlo, CRN, 95% CI"
            ax.set_title(f"{prob} ({kind})")
            ax.grid(True, which="both", alpha=0.25)
            legend_below(ax)
    fig.suptitle(r"Weak error against the SDE limits (THEORY §7). Thick lines: fitted $C\eta^p$ over "
                 "each series' fit range\n"
                 r"($\eta/(1-\beta) \leq 0.1$ for $\alpha < 1$, $\rho\eta \leq 0.1$ for $\alpha = 1$); "
                 "$p$ with 95% interval")
    return save_figure(fig, path)
