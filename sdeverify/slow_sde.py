"""The slow SDE on a manifold of minimizers (Sec. 5, Thm. 5.5; THEORY §8).

Near a manifold Γ of minimizers, with the noise scale σ held fixed and time t = kη², SGD
(Li, Wang, Arora 2021) and SGDM (Thm. 5.5) converge to

    dζ = λ_t σ P_ζ S(ζ) dW + λ_t² b(ζ) dt,
    b(ζ) = −½ ∇²L⁺ ∂²(∇L)[σ²Σ_∥] − ½ P_ζ ∂²(∇L)[𝓛_{∇²L}(σ²Σ_⊥)],

with Σ_∥ = PΣP, Σ_⊥ = (I−P)Σ(I−P), 𝓛_A(Σ) the solution X of AX + XA = Σ on the normal
space, ∂²(∇L)[M] = Σ_ij M_ij ∂_i∂_j∇L, and λ_t the learning-rate schedule (η_k = η λ_{kη²}).

Entry points:

* :func:`slow_coefficients` — drift and diffusion from the pieces a
  :class:`~sdeverify.problems.manifolds.ManifoldProblem` provides (generic formula);
* :func:`solve_slow_sde` — ambient Euler–Maruyama with projection back to Γ by Φ after each
  step (weak order 1 in dt), independent Gaussian increments, any ManifoldProblem;
* :func:`solve_slow_ode` — the deterministic case (Σ_∥ = 0, e.g. label noise): RK4 with
  projection, order 4;
* :func:`coupled_slow_sde` — the same Euler scheme with dt = η², driven by the *engine's own
  draws* for each (path, step) (counter-based RNG, :mod:`sdeverify.rng`): its paths are
  coupled path by path to the SGD/SGDM paths of :func:`sdeverify.simulate` with the same
  seed, so E h(Φ(x_k)) − E h(ζ_k) is estimated with the small variance of a paired
  difference.  Its own bias against the exact slow SDE is O(η²) (Euler, dt = η²), and is
  known in closed form for the valley and the sphere.
"""
from __future__ import annotations

import types
import warnings
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np

from . import config, rng
from .engine.cache import enable_disk_cache, fingerprint
from .threads import run_ranges
from .validation import finite_float, nonneg_int, positive_int, vector
from .validation import seed as valid_seed


# --------------------------------------------------------------------------------------------
# coefficients
# --------------------------------------------------------------------------------------------
def lyapunov_normal(H: np.ndarray, Sigma: np.ndarray, rel_tol: float = 1e-9) -> tuple:
    """For symmetric H (…, d, d): the normal-space solution X of HX + XH = Σ_⊥ and H⁺.

    The normal space is spanned by the eigenvectors of H with eigenvalue > rel_tol·max|λ|
    (on Γ the Hessian is PSD with kernel T_ζΓ).  Returns ``(X, H_pinv, V_normal_mask)``.
    """
    lam, V = np.linalg.eigh(H)
    scale = np.max(np.abs(lam), axis=-1, keepdims=True)
    normal = lam > rel_tol * np.maximum(scale, 1e-300)
    inv = np.where(normal, 1.0 / np.where(normal, lam, 1.0), 0.0)
    Hp = np.einsum("...ik,...k,...jk->...ij", V, inv, V)
    S = np.einsum("...ki,...kl,...lj->...ij", V, Sigma, V)
    denom = lam[..., :, None] + lam[..., None, :]
    both = normal[..., :, None] & normal[..., None, :]
    Xe = np.where(both, S / np.where(both, denom, 1.0), 0.0)
    X = np.einsum("...ik,...kl,...jl->...ij", V, Xe, V)
    return X, Hp, normal


def slow_coefficients(problem, zeta, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Drift b(ζ) and diffusion matrix D(ζ) = σ P S(ζ) of the slow SDE at ζ ∈ Γ (THEORY §8),
    from the problem's Hessian, noise covariance, tangent projector and third-derivative
    contraction alone (σ² multiplies Σ).  ``zeta`` is (d,) or (N, d)."""
    zeta = np.asarray(zeta, dtype=np.float64)
    sigma = finite_float("sigma", sigma, low=0.0)
    P = problem.tangent_projector(zeta)
    H = problem.hessian_at(zeta)
    H = 0.5 * (H + np.swapaxes(H, -1, -2))
    S = problem.noise_sqrt_at(zeta)
    Sig = sigma ** 2 * S @ np.swapaxes(S, -1, -2)
    Q = np.eye(problem.dim) - P
    Sig_par = P @ Sig @ P
    Sig_perp = Q @ Sig @ Q
    X, Hp, _ = lyapunov_normal(H, Sig_perp)
    t1 = np.einsum("...ij,...j->...i", Hp, problem.third_contraction(zeta, Sig_par))
    t2 = np.einsum("...ij,...j->...i", P, problem.third_contraction(zeta, X))
    return -0.5 * t1 - 0.5 * t2, sigma * P @ S


# --------------------------------------------------------------------------------------------
# generic solver (independent noise)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlowPath:
    """States of a slow-SDE ensemble: ``states[r, i]`` is path i at ``times[r]``."""
    times: np.ndarray
    states: np.ndarray
    dt: float
    meta: dict


def _lam(lr: Callable | float | None, t: float) -> float:
    if lr is None:
        return 1.0
    if callable(lr):
        return float(lr(t))
    return float(lr)


def _time_grid(problem, zeta0, t, dt, sigma, record):
    """Validate (t, dt, σ, ζ₀); dt shrunk so that t/dt steps land on t; the recorded step
    indices (default: 11 evenly spaced times in [0, t])."""
    t = finite_float("t", t, low=0.0, low_open=True)
    dt = finite_float("dt", dt, low=0.0, low_open=True)
    sigma = finite_float("sigma", sigma, low=0.0)
    zeta0 = vector("zeta0", zeta0, problem.dim)
    n_steps = int(np.ceil(t / dt - 1e-9))
    dt = t / n_steps
    if record is None:
        record = np.linspace(0.0, t, 11)
    rec = np.unique(np.clip(np.round(np.asarray(record, dtype=np.float64) / dt).astype(int), 0, n_steps))
    return t, dt, sigma, zeta0, n_steps, rec


def solve_slow_sde(problem, zeta0, *, t: float, dt: float, paths: int, sigma: float,
                   seed: int = 0, lr: Callable | float | None = None, record=None,
                   closed_form: bool = True) -> SlowPath:
    """Integrate the slow SDE from ζ_0 ∈ Γ up to time ``t`` (ambient Euler–Maruyama with
    projection back to Γ by Φ after every step).

        ζ ← Φ(ζ + λ_t² P b(ζ) dt + λ_t D(ζ) ΔW),   ΔW ~ N(0, dt I)

    The normal part of b is dropped: Φ's curvature supplies it (Φ(ζ + w) = ζ + Pw +
    ½∂²Φ[w, w] + …), so the scheme has weak order 1 in dt.  ``lr`` is λ (a float or a
    function of t; 1 by default).  ``closed_form`` uses the problem's ``slow_drift`` (a closed
    form where the problem has one) instead of the generic :func:`slow_coefficients`.
    ``record`` are the output times (default 11 evenly spaced in [0, t]).
    Noise: a NumPy Generator seeded with ``seed`` (independent of the engines' draws).
    """
    paths = positive_int("paths", paths)
    t, dt, sigma, zeta0, n_steps, rec = _time_grid(problem, zeta0, t, dt, sigma, record)
    g = np.random.default_rng(seed)
    Z = np.tile(problem.project(zeta0), (paths, 1))
    out = np.empty((rec.size, paths, problem.dim))
    r = 0
    if rec[0] == 0:
        out[0] = Z
        r = 1
    sdt = np.sqrt(dt)
    for k in range(n_steps):
        lam = _lam(lr, k * dt)
        if closed_form:
            b = problem.slow_drift(Z, sigma)
        else:
            b = slow_coefficients(problem, Z, sigma)[0]
        P = problem.tangent_projector(Z)
        D = sigma * P @ problem.noise_sqrt_at(Z)
        dW = g.standard_normal((paths, D.shape[-1])) * sdt
        step = lam * lam * dt * np.einsum("nij,nj->ni", P, b) + lam * np.einsum("nij,nj->ni", D, dW)
        Z = problem.project(Z + step)
        if r < rec.size and rec[r] == k + 1:
            out[r] = Z
            r += 1
    return SlowPath(rec * dt, out, dt, {"problem": problem.name, "sigma": sigma, "seed": seed,
                                        "paths": paths, "method": "ambient Euler-Maruyama + Φ"})


def solve_slow_ode(problem, zeta0, *, t: float, dt: float, sigma: float,
                   lr: Callable | float | None = None, record=None,
                   closed_form: bool = True) -> SlowPath:
    """The slow SDE when its diffusion vanishes (Σ_∥ = 0, e.g. label noise):
    dζ/dt = λ_t² b(ζ), integrated by classical RK4 on the field x ↦ λ² b(Φ(x)) (tangent to Γ
    on Γ, so Γ is invariant), with a projection Φ after each step.  Global error O(dt⁴).
    Returns a :class:`SlowPath` with one path."""
    t, dt, sigma, zeta0, n_steps, rec = _time_grid(problem, zeta0, t, dt, sigma, record)

    def field(x, s):
        z = problem.project(x)
        b = problem.slow_drift(z, sigma) if closed_form else slow_coefficients(problem, z, sigma)[0]
        P = problem.tangent_projector(z)
        return _lam(lr, s) ** 2 * (P @ b)

    z = problem.project(zeta0)
    out = np.empty((rec.size, 1, problem.dim))
    r = 0
    if rec[0] == 0:
        out[0, 0] = z
        r = 1
    for k in range(n_steps):
        s = k * dt
        k1 = field(z, s)
        k2 = field(z + 0.5 * dt * k1, s + 0.5 * dt)
        k3 = field(z + 0.5 * dt * k2, s + 0.5 * dt)
        k4 = field(z + dt * k3, s + dt)
        z = problem.project(z + dt * (k1 + 2 * k2 + 2 * k3 + k4) / 6.0)
        if r < rec.size and rec[r] == k + 1:
            out[r, 0] = z
            r += 1
    return SlowPath(rec * dt, out, dt, {"problem": problem.name, "sigma": sigma,
                                        "method": "RK4 on b∘Φ + Φ"})


# --------------------------------------------------------------------------------------------
# coupled solver (the engine's draws)
# --------------------------------------------------------------------------------------------
_KERNELS: dict = {}


def _coupled_lanes_src(z0, params, sigma, eta_k, rec_steps, k0, k1, path0, n_draws, rows,
                       draw_kind, out, blk_lo, blk_hi):
    """Coupled Euler kernel (source; ``STEP``, ``PER_PATH``, ``FILL`` and ``LANES`` are bound
    by :func:`_make_kernel`).  Groups of ``LANES`` paths (``config.LANES``, as in the CPU
    engine; any value gives the same numbers) are independent: the kernel does the groups
    ``blk_lo ≤ blk < blk_hi`` (ranges run on threads by :func:`sdeverify.threads.run_ranges`);
    the draws of a step come from the engine's lanes generator (``FILL`` =
    :func:`sdeverify.rng.fill_lanes64`, into a (``rows``, L) buffer, ``rows`` =
    :func:`sdeverify.rng.n_rows` of ``n_draws``) for the same (seed, path, step, stream 0) as
    :func:`sdeverify.simulate`.  The group's states are held lane-minor, ``Z`` (d, L).  With a
    problem's ``slow_step_lanes`` (``PER_PATH`` false) ``STEP(Z, params, buf, η_k, σ, work)``
    advances the whole group by one Euler step (a loop over lanes LLVM vectorises; ``work`` is
    (d + 2, L) scratch); with a per-path ``slow_step`` (``PER_PATH`` true)
    ``STEP(z, params, xi, η_k, σ, work)`` advances one path (``z`` a contiguous copy of
    ``Z[:, l]``, ``xi`` its ``n_draws`` draws, ``work`` (d,) scratch).  Writes the states at
    the ``rec_steps`` into ``out`` (n_rec, paths, d)."""
    n_paths = out.shape[1]
    d = z0.shape[0]
    steps = eta_k.shape[0]
    n_rec = rec_steps.shape[0]
    for blk in range(blk_lo, blk_hi):
        lo = blk * LANES
        L = min(LANES, n_paths - lo)
        z = np.empty((d, L))
        for i in range(d):
            z[i, :] = z0[i]
        buf = np.empty((rows, L))
        xi = np.empty(n_draws)
        zc = np.empty(d)
        wc = np.empty(d)
        work = np.empty((d + 2, L))
        r = 0
        if n_rec > 0 and rec_steps[0] == 0:
            out[0, lo:lo + L, :] = z.T
            r = 1
        for k in range(steps):
            FILL(draw_kind, k0, k1, path0 + lo, k, 0, buf, n_draws)
            if PER_PATH:
                for ln in range(L):
                    for i in range(n_draws):
                        xi[i] = buf[i, ln]
                    for i in range(d):
                        zc[i] = z[i, ln]
                    STEP(zc, params, xi, eta_k[k], sigma, wc)
                    for i in range(d):
                        z[i, ln] = zc[i]
            else:
                STEP(z, params, buf, eta_k[k], sigma, work)
            if r < n_rec and rec_steps[r] == k + 1:
                out[r, lo:lo + L, :] = z.T
                r += 1


def _make_kernel(step, per_path: bool):
    """Compile the coupled kernel for one problem's slow step (``slow_step_lanes``, or the
    per-path ``slow_step`` when ``per_path``): the kernel source with ``STEP`` bound as a
    global (not a closure), on the engine's disk cache (:mod:`sdeverify.engine.cache`) under
    the fingerprint of ``step``, so that an edited step function is recompiled."""
    qual = f"{getattr(step, '__module__', 'm')}.{getattr(step, '__qualname__', 'f')}"
    name = "coupled_" + "".join(ch if ch.isalnum() else "_" for ch in qual)
    fill = rng.fill_lanes("float64")
    src = _coupled_lanes_src
    g = dict(src.__globals__, STEP=step, PER_PATH=bool(per_path), FILL=fill, LANES=config.LANES)
    f = types.FunctionType(src.__code__, g, name, src.__defaults__, src.__closure__)
    f.__qualname__ = name
    disp = numba.njit(nogil=True)(f)
    enable_disk_cache(disp, "|".join([fingerprint(step), str(bool(per_path)), fingerprint(fill),
                                      str(config.LANES)]))
    return disp


def coupled_slow_sde(problem, x0, *, eta: float, steps: int, paths: int, sigma: float,
                     seed: int = 0, record=None, lr=None, path_offset: int = 0) -> np.ndarray:
    """Euler scheme (dt = η²) of the slow SDE, driven by the same base draws that
    :func:`sdeverify.simulate` gives path ``path_offset + i`` at step k for this ``seed``.

    ζ_0 = Φ(x0); each step calls the problem's njit ``slow_step_lanes`` (a group of paths
    at once) or ``slow_step`` (one path) with η_k = η·λ_k
    (``lr`` = per-step λ_k array, default 1).  Returns states (n_rec, paths, d) at the
    ``record`` step indices (default 0 and ``steps``).  The coupling makes
    h(Φ(x_k)) − h(ζ_k) small path by path (both see the same tangent noise), so its mean has
    a small standard error; the scheme's own weak error is O(η²).
    """
    if getattr(problem, "slow_step", None) is None and getattr(problem, "slow_step_lanes", None) is None:
        raise ValueError(f"{problem!r} has no njit slow_step; use solve_slow_sde instead")
    if problem.svag_ell != 1.0:
        raise ValueError("coupled_slow_sde does not support SVAG problems")
    eta = finite_float("eta", eta, low=0.0, low_open=True)
    steps = positive_int("steps", steps)
    paths = positive_int("paths", paths)
    sigma = finite_float("sigma", sigma, low=0.0)
    path_offset = nonneg_int("path_offset", path_offset)
    seed = valid_seed(seed)
    lam = np.ones(steps) if lr is None else np.asarray(lr, dtype=np.float64)[:steps]
    if lam.shape != (steps,):
        raise ValueError(f"lr must have at least {steps} entries")
    rec = np.array([0, steps]) if record is None else np.unique(np.asarray(record, dtype=np.int64))
    if rec[0] < 0 or rec[-1] > steps:
        raise ValueError(f"record must hold step indices in [0, {steps}]")
    lanes = getattr(problem, "slow_step_lanes", None)
    key = problem.slow_step if lanes is None else lanes
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernel(key, per_path=lanes is None)
    kern = _KERNELS[key]
    z0 = np.ascontiguousarray(problem.project(vector("x0", x0, problem.dim)))
    out = np.full((rec.size, paths, problem.dim), np.nan)
    k0, k1 = rng.key_words(seed)
    with warnings.catch_warnings():   # the specialised kernel has no source file of its own
        warnings.simplefilter("ignore", numba.NumbaDebugInfoWarning)
        run_ranges(kern, (paths + config.LANES - 1) // config.LANES, z0, problem.params, sigma,
                   np.ascontiguousarray(eta * lam), rec.astype(np.int64), k0, k1, path_offset,
                   problem.n_draws, rng.n_rows(problem.n_draws), problem.draw_kind, out)
    return out
