"""SDE limits of SGD and SGDM over O(1/η) steps (THEORY §7), solved with the engine itself.

Two SDEs, for any NGOS problem (L, Σ) and a learning-rate shape λ_t:

* first order (SME; Li, Tai, E 2019) — the limit of SGD, and of SGDM with index α < 1::

      dX = −λ_t ∇L(X) dt + λ_t σ₀ Σ(X)^{1/2} dW

* kinetic — the limit of SGDM with α = 1, i.e. 1 − β = ρη::

      dX = −λ_t M dt,    dM = ρ (∇L(X) − M) dt + ρ σ₀ Σ(X)^{1/2} dW

**No new kernels: Euler–Maruyama is an optimizer.**  With step h and t_n = n h,

* EM for the first-order SDE,
  X_{n+1} = X_n − λ(t_n) h ∇L(X_n) + λ(t_n) σ₀ √h Σ^{1/2} ξ_n,
  *is* the engine's ``SGD(lr = λ(t_n) h)`` run with noise scale ``σ = σ₀ h^{-1/2}`` and
  Gaussian noise (the oracle returns ∇L + σ Σ^{1/2} ξ, and λh·σ₀h^{-1/2} = λσ₀√h);
* the semi-implicit EM for the kinetic SDE,
  M_{n+1} = (1 − ρh) M_n + ρh ∇L(X_n) + ρ σ₀ √h Σ^{1/2} ξ_n,  X_{n+1} = X_n − λ(t_n) h M_{n+1},
  *is* ``SGDM(lr = λ(t_n) h, beta = 1 − ρh)`` with the same σ = σ₀ h^{-1/2}.

Conversely SGD at lr η with σ = σ₀ η^{-1/2} is exactly EM of the SDE at step η (Gaussian
noise), and SGDM with β = 1 − ρη is exactly the kinetic scheme at step η: the weak error of
SGD against the SDE is the weak error of EM, order 1.

**Coupling any scheme to a finer grid (common random numbers).**  :class:`Embedded` runs a
scheme with step η on a grid r times finer: during the first r − 1 sub-steps x does not move
and the momentum buffer collects b_n/r · g per sub-step (a_n applied once), on the last
sub-step x moves by γ_n.  For coarse coefficients (a_n, b_n, γ_n) the sub-step coefficients are

    (a_n, b_n/r, 0), (1, b_n/r, 0), …, (1, b_n/r, γ_n)

so after r sub-steps m = a_n M + b_n (∇L(x_n) + σ_f Σ(x_n)^{1/2} Σ_i ξ_i / r).  With
σ_f = σ_c √r, the noise σ_f Σ_i ξ_i / r = σ_c (Σ_i ξ_i/√r) has exactly the law of one coarse
draw — for Gaussian base draws; with other laws the embedded scheme is the Gaussian-noise
version.  Because the engine draws ξ per (path, fine step), the coarse scheme then sees the
*same Brownian increments* as a fine EM path in the same call: the paired difference of
the two has the variance of a strong error, not of h(X), which is what makes weak errors
of order η measurable by Monte Carlo.

**Extrapolation (Talay–Tubaro).**  EM has weak order 1: E h(X^h_t) = E h(X_t) + C_t h + O(h²),
so 2 E h(X^h) − E h(X^{2h}) has bias O(h²).  :func:`solve` and :func:`weak_error` run the
step-2h scheme embedded in the step-h run (``Embedded(em(2h), 2)``, common random numbers),
so the correction E h(X^{2h}) − E h(X^h) is itself a sharp paired estimate.  Its size is
reported as ``em_bias`` (≈ the bias of the step-h solution that the extrapolation removes).

**Exact moments on quadratics.**  For a :class:`~sdeverify.problems.Quadratic` both SDEs are
linear (Ornstein–Uhlenbeck): :func:`ou_moments` and :func:`kinetic_moments` give the mean and
covariance of X_t (resp. (X_t, M_t)) in closed form — the matrix exponential of the drift
and Van Loan's block exponential for the Lyapunov integral ∫ e^{Fs} G Gᵀ e^{Fᵀs} ds — and
:func:`quadratic_expectation` turns them into E h for h = loss, ‖x‖², x_i.  A time-varying
λ_t (a callable) is handled by integrating the moment ODEs instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from .optim import SGD, SGDM, Coefficients, check_scheme
from .problems.base import NGOS
from .problems.quadratic import Quadratic
from .result import SimulationResult, index_pair
from .simulate import simulate
from .stats import Interval, max_abs_interval
from .validation import finite_float, positive_int, vector

__all__ = ["FirstOrderSDE", "KineticSDE", "Embedded", "SDESolution", "WeakError", "solve",
           "weak_error", "ou_moments", "kinetic_moments", "quadratic_expectation",
           "exact_expectation"]


# ---------------------------------------------------------------------------------------
# The equations
# ---------------------------------------------------------------------------------------
def _lam_values(lam, t: np.ndarray) -> np.ndarray:
    if callable(lam):
        out = np.asarray([float(lam(float(s))) for s in np.ravel(t)])
    else:
        out = np.full(np.size(t), float(lam))
    if not np.all(np.isfinite(out)) or np.any(out < 0):
        raise ValueError("lam must be finite and >= 0")
    return out


def _check_lam(lam):
    if callable(lam):
        return lam
    return finite_float("lam", lam, low=0.0)


@dataclass(frozen=True)
class FirstOrderSDE:
    """dX = −λ_t ∇L(X) dt + λ_t σ₀ Σ(X)^{1/2} dW (THEORY §7), the SME of SGD.

    ``lam`` is a constant or a callable t ↦ λ_t (the lr shape: η_k = η λ(kη)).
    """
    problem: NGOS
    sigma0: float
    lam: Any = 1.0

    def __post_init__(self):
        if not isinstance(self.problem, NGOS):
            raise ValueError(f"problem must be an NGOS problem, got {self.problem!r}")
        object.__setattr__(self, "sigma0", finite_float("sigma0", self.sigma0, low=0.0))
        object.__setattr__(self, "lam", _check_lam(self.lam))

    def em(self, h: float, steps: int) -> tuple[SGD, float]:
        """Euler–Maruyama with step h as an engine optimizer: ``(SGD(λ(t_n) h), σ₀ h^{-1/2})``."""
        h = finite_float("h", h, low=0.0, low_open=True)
        steps = positive_int("steps", steps)
        lr = _lam_values(self.lam, h * np.arange(steps)) * h
        return SGD(lr, name=f"EM(h={h:.4g})"), self.sigma0 / np.sqrt(h)


@dataclass(frozen=True)
class KineticSDE:
    """dX = −λ_t M dt, dM = ρ(∇L(X) − M) dt + ρ σ₀ Σ(X)^{1/2} dW (THEORY §7), the limit of
    SGDM with 1 − β = ρη (index α = 1).  ``m0`` is M_0 (zero by default, as SGDM's m_0)."""
    problem: NGOS
    sigma0: float
    rho: float
    lam: Any = 1.0
    m0: Any = None

    def __post_init__(self):
        if not isinstance(self.problem, NGOS):
            raise ValueError(f"problem must be an NGOS problem, got {self.problem!r}")
        object.__setattr__(self, "sigma0", finite_float("sigma0", self.sigma0, low=0.0))
        object.__setattr__(self, "rho", finite_float("rho", self.rho, low=0.0, low_open=True))
        object.__setattr__(self, "lam", _check_lam(self.lam))

    def em(self, h: float, steps: int) -> tuple[SGDM, float]:
        """Semi-implicit EM with step h: ``(SGDM(λ(t_n) h, β = 1 − ρh), σ₀ h^{-1/2})``; needs ρh ≤ 1."""
        h = finite_float("h", h, low=0.0, low_open=True)
        steps = positive_int("steps", steps)
        if self.rho * h > 1.0:
            raise ValueError(f"the kinetic EM step needs rho*h <= 1, got {self.rho * h:g}")
        lr = _lam_values(self.lam, h * np.arange(steps)) * h
        return (SGDM(lr, 1.0 - self.rho * h, m0=self.m0, name=f"KEM(h={h:.4g})"),
                self.sigma0 / np.sqrt(h))


# ---------------------------------------------------------------------------------------
# Embedding a coarse scheme into a finer grid (common random numbers)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Embedded:
    """``optimizer`` (a scheme with step η) run on a grid ``substeps`` times finer.

    Over r = ``substeps`` engine steps x stays put while the buffer gathers the r oracle
    draws at x (weight b_n/r each); x then moves once.  Run with noise scale σ_c·√r it is
    the coarse scheme with noise scale σ_c, driven by the sum of the r fine draws (see the
    module docstring).  ``steps`` passed to :meth:`coefficients` must be a multiple of r.
    """
    optimizer: Any
    substeps: int
    name: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "substeps", positive_int("substeps", self.substeps))
        check_scheme(self.optimizer, "optimizer")
        if self.name is None:
            object.__setattr__(self, "name", getattr(self.optimizer, "name", "scheme"))

    def coefficients(self, steps: int, dim: int) -> Coefficients:
        """Per-fine-step (a, b, γ) of length ``steps`` (a multiple of r): the coarse scheme's
        ``steps // r`` coefficients spread as (a_n, b_n/r, 0), (1, b_n/r, 0), …, (1, b_n/r, γ_n)."""
        r = self.substeps
        if steps % r:
            raise ValueError(f"steps ({steps}) must be a multiple of substeps ({r})")
        c = self.optimizer.coefficients(steps // r, dim)
        a = np.ones(steps)
        a[::r] = c.a
        b = np.repeat(c.b / r, r)
        gamma = np.zeros(steps)
        gamma[r - 1::r] = c.gamma
        return Coefficients(a, b, gamma, c.m0)


# ---------------------------------------------------------------------------------------
# Monte Carlo solution and weak errors
# ---------------------------------------------------------------------------------------
def _grid(T: float, h: float, what: str = "T/h") -> int:
    n = T / h
    k = int(round(n))
    if k < 1 or abs(n - k) > 1e-9 * max(1.0, n):
        raise ValueError(f"{what} must be a positive integer, got {n:.12g}")
    return k


@dataclass(frozen=True)
class SDESolution:
    """Monte Carlo moments E h(X_t) of an SDE at ``times``.

    ``mean``/``sem``: (n_times, n_obs), extrapolated (2E^h − E^{2h}) when ``extrapolated``;
    the sem of an extrapolated value is the conservative bound sem(E^h) + sem(E^{2h} − E^h).
    ``em_bias``: E^{2h} − E^h (paired), ≈ the O(h) bias the extrapolation removed.
    ``result``: the underlying :class:`SimulationResult` (fine EM is optimizer 0).
    """
    times: np.ndarray
    observables: tuple
    mean: np.ndarray
    sem: np.ndarray
    em_bias: np.ndarray | None
    h: float
    extrapolated: bool
    result: SimulationResult = field(repr=False)

    def series(self, observable: str) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, sem)`` of one observable over ``times``, each (n_times,)."""
        o = self.observables.index(observable)
        return self.mean[:, o], self.sem[:, o]


def _reference(sde, h: float, steps: int, extrapolate: bool):
    fine, sigma = sde.em(h, steps)
    opts = [fine]
    if extrapolate:
        if steps % 2:
            raise ValueError("extrapolation needs an even number of fine steps")
        coarse, _ = sde.em(2 * h, steps // 2)
        opts.append(Embedded(coarse, 2, name="EM(2h)"))
    return opts, sigma


def solve(sde: FirstOrderSDE | KineticSDE, x0: ArrayLike, *, T: float, h: float, paths: int,
          seed: int = 0, times: Sequence[float] | None = None,
          observables: Sequence[str | Callable] | Mapping[str, str | Callable] | None = None,
          extrapolate: bool = True, backend: str = "cpu", path_offset: int = 0) -> SDESolution:
    """E h(X_t) by Euler–Maruyama with step h (run as the engine's SGD/SGDM, see the module
    docstring) and, when ``extrapolate``, Talay–Tubaro extrapolation with the step-2h scheme
    on the same Brownian increments.  ``times`` must lie on the step-2h grid (step-h grid
    without extrapolation); default: 17 evenly spaced times in [0, T].

    The increments follow the problem's ``noise_dist``: Gaussian gives EM proper; Rademacher
    gives the weak EM scheme with two-point increments (same weak order 1, and the step-2h
    scheme then sums two of them, still a valid weak order-1 scheme for the extrapolation).
    The SDEs are those of docs/theory.md §7.

    Parameters
    ----------
    sde : the equation (its ``problem`` is the NGOS whose ∇L and Σ enter).
    x0 : (d,) deterministic X_0.
    T : horizon; ``T / h`` must be an integer (even with ``extrapolate``).
    h : Euler–Maruyama step.
    paths : number of Monte Carlo paths.
    seed : seed of the counter-based generator (as :func:`sdeverify.simulate`).
    times : times at which E h(X_t) is wanted (see above).
    observables : as :func:`sdeverify.simulate` (names "loss", "sqnorm", "x<i>" and/or njit
        functions h(x) -> float); default loss and ‖x‖².
    extrapolate : Talay–Tubaro extrapolation (bias O(h²) instead of O(h)).
    backend : engine backend ("cpu", "numpy", "cuda", …).
    path_offset : global index of the first path (shards merge exactly).

    Returns
    -------
    SDESolution
        ``times`` (n_t,), ``mean``/``sem`` (n_t, n_obs), ``em_bias`` and the raw result.
    """
    T = finite_float("T", T, low=0.0, low_open=True)
    h = finite_float("h", h, low=0.0, low_open=True)
    n = _grid(T, h)
    unit = 2 if extrapolate else 1
    if times is None:
        record = np.unique(np.linspace(0, n // unit, 17).round().astype(np.int64)) * unit
    else:
        t = np.asarray(times, dtype=np.float64).ravel()
        record = np.rint(t / h).astype(np.int64)
        if np.any(np.abs(record * h - t) > 1e-9 * max(T, 1.0)) or np.any(record % unit) \
                or np.any(record < 0) or np.any(record > n):
            raise ValueError(f"times must be multiples of {unit}*h in [0, T]")
        record = np.unique(record)
    opts, sigma = _reference(sde, h, n, extrapolate)
    res = simulate(sde.problem, opts, x0, steps=n, paths=paths, sigma=sigma, seed=seed,
                   record=record, observables=observables, backend=backend,
                   path_offset=path_offset)
    mean, sem = res.mean[0].copy(), res.sem[0].copy()
    bias = None
    if extrapolate:
        d_mean, d_sem = _paired_all(res, 1)
        mean, sem, bias = mean - d_mean, sem + d_sem, d_mean
    return SDESolution(res.steps * h, tuple(res.observables), mean, sem, bias, h,
                       bool(extrapolate), res)


def _paired_all(res: SimulationResult, j: int) -> tuple[np.ndarray, np.ndarray]:
    cols = [res.paired(j, o) for o in range(len(res.observables))]
    return np.stack([c[0] for c in cols], axis=1), np.stack([c[1] for c in cols], axis=1)


@dataclass(frozen=True)
class WeakError:
    """E h(x_k) − E h(X_{kη}) for discrete schemes with step η, coupled to an SDE solution.

    ``diff[j, r, o]`` and ``sem[j, r, o]``: optimizer j, recorded η-step ``steps[r]``
    (time ``times[r]``), observable o; ``reference``/``reference_sem``: E h(X_t);
    ``em_bias``: the O(h) bias of the un-extrapolated fine reference (diagnostic).
    """
    eta: float
    h: float
    steps: np.ndarray
    times: np.ndarray
    optimizers: tuple
    observables: tuple
    diff: np.ndarray
    sem: np.ndarray
    reference: np.ndarray
    reference_sem: np.ndarray
    em_bias: np.ndarray | None
    result: SimulationResult = field(repr=False)

    def _idx(self, optimizer: int | str, observable: int | str) -> tuple[int, int]:
        return index_pair(self.optimizers, self.observables, optimizer, observable)

    def max_error(self, optimizer: int | str, observable: int | str,
                  level: float = 0.95) -> Interval:
        """max over the recorded k of |E h(x_k) − E h(X_{kη})|, simultaneous (Bonferroni)
        interval (:func:`sdeverify.stats.max_abs_interval`)."""
        j, o = self._idx(optimizer, observable)
        return max_abs_interval(self.diff[j, :, o], self.sem[j, :, o], level)

    def sem_at_max(self, optimizer: int | str, observable: int | str) -> float:
        """Standard error of the recorded difference with the largest |mean|."""
        j, o = self._idx(optimizer, observable)
        return float(self.sem[j, np.argmax(np.abs(self.diff[j, :, o])), o])


def weak_error(sde: FirstOrderSDE | KineticSDE, optimizers: Sequence[Any] | Any, x0: ArrayLike, *,
               eta: float, T: float, paths: int, substeps: int = 4, seed: int = 0,
               record: ArrayLike | None = None,
               observables: Sequence[str | Callable] | Mapping[str, str | Callable] | None = None,
               extrapolate: bool = True, backend: str = "cpu", path_offset: int = 0) -> WeakError:
    """Weak error of discrete schemes with step η (and noise scale σ₀ η^{-1/2}) against the
    SDE, by Monte Carlo with common random numbers.

    One :func:`sdeverify.simulate` call on the fine grid h = η / ``substeps`` runs: the SDE's
    EM at step h (optimizer 0), its step-2h scheme embedded (extrapolation), and each of
    ``optimizers`` — given as if run with step η, e.g. ``SGD(eta)`` — :class:`Embedded` with
    ``substeps`` sub-steps, all driven by the same Brownian increments.  Then, per recorded
    η-step k (``record``: indices in [0, T/η], default 33 evenly spaced),

        diff_j(k) = E h(x_k^j) − [2 E h(X^h_{kη}) − E h(X^{2h}_{kη})]

    is a sum of two paired (CRN) differences; its sem is bounded by the sum of theirs.  The
    noise of the embedded schemes is Gaussian (see :class:`Embedded`).  The SDEs are those of
    docs/theory.md §7; SGD and SGDM are order-1 weak approximations of them (Thm. 4.5,
    docs/theory.md §6).

    Parameters
    ----------
    sde : the equation (its ``problem`` is the NGOS).
    optimizers : one optimizer or a list, each as if run with step η (SGD, SGDM, HeavyBall
        or any object with ``coefficients(steps, dim)``).
    x0 : (d,) deterministic starting point.
    eta : the schemes' step η; ``T / eta`` must be an integer.
    T : horizon.
    paths : number of Monte Carlo paths.
    substeps : fine EM steps per η-step (even with ``extrapolate``).
    seed : seed of the counter-based generator.
    record : η-step indices in [0, T/η] at which to compare; default 33 evenly spaced.
    observables : as :func:`sdeverify.simulate`; default loss and ‖x‖².
    extrapolate : Talay–Tubaro extrapolation of the reference.
    backend : engine backend ("cpu", "numpy", "cuda", …).
    path_offset : global index of the first path (shards merge exactly).

    Returns
    -------
    WeakError
        ``diff``/``sem`` (n_opt, n_rec, n_obs), the reference E h(X_t) and diagnostics.
    """
    eta = finite_float("eta", eta, low=0.0, low_open=True)
    T = finite_float("T", T, low=0.0, low_open=True)
    r = positive_int("substeps", substeps)
    if extrapolate and r % 2:
        raise ValueError("extrapolation needs an even number of substeps")
    n = _grid(T, eta, "T/eta")
    if not isinstance(optimizers, (list, tuple)):
        optimizers = [optimizers]
    if record is None:
        record = np.unique(np.linspace(0, n, 33).round().astype(np.int64))
    record = np.unique(np.asarray(record, dtype=np.int64).ravel())
    if record.size == 0 or record[0] < 0 or record[-1] > n:
        raise ValueError(f"record must hold eta-step indices in [0, {n}]")
    h = eta / r
    ref, sigma = _reference(sde, h, n * r, extrapolate)
    emb = [Embedded(o, r, name=getattr(o, "name", None)) for o in optimizers]
    res = simulate(sde.problem, ref + emb, x0, steps=n * r, paths=paths, sigma=sigma, seed=seed,
                   record=record * r, observables=observables, backend=backend,
                   path_offset=path_offset)
    k0 = len(ref)
    diffs, sems = [], []
    for j in range(k0, k0 + len(emb)):
        m, s = _paired_all(res, j)
        diffs.append(m)
        sems.append(s)
    diff, sem = np.stack(diffs), np.stack(sems)
    ref_mean, ref_sem = res.mean[0].copy(), res.sem[0].copy()
    bias = None
    if extrapolate:
        d_mean, d_sem = _paired_all(res, 1)
        diff, sem = diff + d_mean, sem + d_sem
        ref_mean, ref_sem, bias = ref_mean - d_mean, ref_sem + d_sem, d_mean
    return WeakError(eta, h, record, record * eta, tuple(res.optimizers[k0:]),
                     tuple(res.observables), diff, sem, ref_mean, ref_sem, bias, res)


# ---------------------------------------------------------------------------------------
# Exact moments on quadratics (linear SDEs)
# ---------------------------------------------------------------------------------------
def _quadratic(problem) -> Quadratic:
    if not isinstance(problem, Quadratic):
        raise ValueError(f"exact moments need a Quadratic problem, got {problem!r}")
    return problem


def _transition(F: np.ndarray, Q: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """(Φ, Q_Δ) = (e^{FΔ}, ∫₀^Δ e^{Fs} Q e^{Fᵀs} ds) by Van Loan's block exponential
    expm([[F, Q], [0, −Fᵀ]] δ) = [[Φ_δ, Ψ], [0, Φ_δ^{-T}]], Q_δ = Ψ Φ_δᵀ, on a step δ = Δ/2^j
    short enough (‖F‖δ ≤ 1/2) that e^{−Fᵀδ} cannot blow up, then j doublings
    (Φ, Q) ← (Φ², Φ Q Φᵀ + Q)."""
    n = F.shape[0]
    norm = float(np.abs(F).sum(axis=1).max()) * dt
    j = max(0, int(np.ceil(np.log2(norm / 0.5)))) if norm > 0.5 else 0
    delta = dt / 2 ** j
    blk = np.zeros((2 * n, 2 * n))
    blk[:n, :n], blk[:n, n:], blk[n:, n:] = F, Q, -F.T
    E = expm(blk * delta)
    Phi = E[:n, :n]
    Qd = E[:n, n:] @ Phi.T
    for _ in range(j):
        Qd = Phi @ Qd @ Phi.T + Qd
        Phi = Phi @ Phi
    return Phi, 0.5 * (Qd + Qd.T)


def _linear_moments(system: Callable[[float], tuple], z0: np.ndarray, C0: np.ndarray,
                    times: np.ndarray, constant: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of dZ = (F Z + f) dt + G dW at ``times`` (sorted, ≥ 0).

    ``system(t) -> (F, f, Q = G Gᵀ)``.  Constant systems: exact transitions over each
    interval, e^{FΔ} (affine part by augmenting the state with a constant 1) and the Lyapunov
    integral ∫₀^Δ e^{Fs} Q e^{Fᵀs} ds (:func:`_transition`, Van Loan).  Time-varying systems: the moment ODEs dμ/dt = Fμ + f, dC/dt = FC + CFᵀ + Q,
    integrated with rtol 1e-11.
    """
    times = np.asarray(times, dtype=np.float64).ravel()
    if times.size == 0 or np.any(times < 0) or np.any(np.diff(times) < 0):
        raise ValueError("times must be a non-empty, sorted array of values >= 0")
    n = z0.size
    means = np.empty((times.size, n))
    covs = np.empty((times.size, n, n))
    if constant:
        F, f, Q = system(0.0)
        Fa = np.zeros((n + 1, n + 1))
        Fa[:n, :n], Fa[:n, n] = F, f
        Qa = np.zeros((n + 1, n + 1))
        Qa[:n, :n] = Q
        cache: dict = {}
        mu = np.append(z0, 1.0)
        C = np.zeros((n + 1, n + 1))
        C[:n, :n] = C0
        t_prev = 0.0
        for i, t in enumerate(times):
            dt = t - t_prev
            if dt > 0:
                key = float(f"{dt:.12e}")  # grid spacings equal up to rounding share one transition
                if key not in cache:
                    cache[key] = _transition(Fa, Qa, dt)
                Phi, Qd = cache[key]
                mu = Phi @ mu
                C = Phi @ C @ Phi.T + Qd
                C = 0.5 * (C + C.T)
            means[i], covs[i] = mu[:n], C[:n, :n]
            t_prev = t
        return means, covs

    def rhs(t, y):
        F, f, Q = system(t)
        mu, C = y[:n], y[n:].reshape(n, n)
        return np.concatenate([F @ mu + f, (F @ C + C @ F.T + Q).ravel()])

    y0 = np.concatenate([z0, np.asarray(C0, dtype=np.float64).ravel()])
    if times[-1] == 0:
        sol_y = np.repeat(y0[:, None], times.size, axis=1)
    else:
        sol = solve_ivp(rhs, (0.0, times[-1]), y0, t_eval=times, rtol=1e-11, atol=1e-13,
                        method="DOP853")
        if not sol.success:
            raise RuntimeError(f"moment ODE integration failed: {sol.message}")
        sol_y = sol.y
    means[:] = sol_y[:n].T
    covs[:] = sol_y[n:].T.reshape(times.size, n, n)
    return means, 0.5 * (covs + covs.transpose(0, 2, 1))


def ou_moments(problem: Quadratic, sigma0: float, x0: ArrayLike, times: ArrayLike, *,
               lam: float | Callable[[float], float] = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean (n_t, d) and covariance (n_t, d, d) of the first-order SDE on a quadratic
    L = ½(x − c)ᵀH(x − c) + bᵀx (an Ornstein–Uhlenbeck process), X_0 = x0:

        dX = −λ_t (H X − H c + b) dt + λ_t σ₀ S dW,    S Sᵀ = Σ.

    Constant λ: μ_t, C_t from the matrix exponential and Van Loan's integral (exact);
    callable λ: moment ODEs.  ``times``: sorted times ≥ 0 (docs/theory.md §7).
    """
    q = _quadratic(problem)
    sigma0 = finite_float("sigma0", sigma0, low=0.0)
    lam = _check_lam(lam)
    H, Sig, c, b = q.hessian, q.noise_cov, q.center, q.linear
    x0 = vector("x0", x0, q.dim)

    def system(t):
        l = float(lam(t)) if callable(lam) else lam
        return -l * H, l * (H @ c - b), (l * sigma0) ** 2 * Sig

    return _linear_moments(system, x0, np.zeros((q.dim, q.dim)), np.asarray(times, dtype=float),
                           constant=not callable(lam))


def kinetic_moments(problem: Quadratic, sigma0: float, rho: float, x0: ArrayLike,
                    times: ArrayLike, *, lam: float | Callable[[float], float] = 1.0,
                    m0: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean (n_t, 2d) and covariance (n_t, 2d, 2d) of Z = (X, M) for the kinetic SDE
    on a quadratic, a linear SDE dZ = (F Z + f) dt + G dW with

        F = [[0, −λ I], [ρH, −ρI]],   f = [0, ρ(b − Hc)],   G Gᵀ = [[0, 0], [0, ρ²σ₀²Σ]].

    ``times``: sorted times ≥ 0; ``m0``: M_0 (zero by default) (docs/theory.md §7).
    """
    q = _quadratic(problem)
    sigma0 = finite_float("sigma0", sigma0, low=0.0)
    rho = finite_float("rho", rho, low=0.0, low_open=True)
    lam = _check_lam(lam)
    d = q.dim
    H, Sig, c, b = q.hessian, q.noise_cov, q.center, q.linear
    z0 = np.concatenate([vector("x0", x0, d), np.zeros(d) if m0 is None else vector("m0", m0, d)])
    I, Z = np.eye(d), np.zeros((d, d))

    def system(t):
        l = float(lam(t)) if callable(lam) else lam
        F = np.block([[Z, -l * I], [rho * H, -rho * I]])
        f = np.concatenate([np.zeros(d), rho * (b - H @ c)])
        Q = np.block([[Z, Z], [Z, (rho * sigma0) ** 2 * Sig]])
        return F, f, Q

    return _linear_moments(system, z0, np.zeros((2 * d, 2 * d)), np.asarray(times, dtype=float),
                           constant=not callable(lam))


def quadratic_expectation(problem: Quadratic, mean: ArrayLike, cov: ArrayLike,
                          observable: str) -> np.ndarray:
    """E h(X) from the mean (n, d) and covariance (n, d, d) of X (exact: h is at most
    quadratic): "loss" ½(μ−c)ᵀH(μ−c) + ½tr(HC) + bᵀμ, "sqnorm" ‖μ‖² + tr C, "x<i>" μ_i.
    Only the first d = problem.dim coordinates are used (so (X, M) moments can be passed).
    Returns shape (n,)."""
    q = _quadratic(problem)
    d = q.dim
    mu = np.atleast_2d(np.asarray(mean, dtype=np.float64))[:, :d]
    C = np.asarray(cov, dtype=np.float64).reshape(mu.shape[0], *np.shape(cov)[-2:])[:, :d, :d]
    if observable == "sqnorm":
        return np.einsum("kii->k", C) + np.einsum("ki,ki->k", mu, mu)
    if observable == "loss":
        dm = mu - q.center
        return (0.5 * np.einsum("ij,kji->k", q.hessian, C)
                + 0.5 * np.einsum("ki,ij,kj->k", dm, q.hessian, dm) + mu @ q.linear)
    if observable.startswith("x") and observable[1:].isdigit() and int(observable[1:]) < d:
        return mu[:, int(observable[1:])].copy()
    raise ValueError(f"exact expectations support 'loss', 'sqnorm' and 'x<i>' (i < {d}), "
                     f"got {observable!r}")


def exact_expectation(sde: FirstOrderSDE | KineticSDE, x0: ArrayLike, times: ArrayLike,
                      observables: str | Sequence[str]) -> np.ndarray:
    """E h(X_t), shape (n_times, n_obs), for either SDE on a :class:`Quadratic` — no Monte Carlo."""
    if isinstance(sde, KineticSDE):
        mean, cov = kinetic_moments(sde.problem, sde.sigma0, sde.rho, x0, times, lam=sde.lam,
                                    m0=sde.m0)
    elif isinstance(sde, FirstOrderSDE):
        mean, cov = ou_moments(sde.problem, sde.sigma0, x0, times, lam=sde.lam)
    else:
        raise ValueError(f"sde must be a FirstOrderSDE or KineticSDE, got {sde!r}")
    if isinstance(observables, str):
        observables = [observables]
    return np.stack([quadratic_expectation(sde.problem, mean, cov, o) for o in observables], axis=1)


def _discrete_moments(problem: Quadratic, optimizer, sigma: float, x0, steps: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean (steps+1, d) and covariance (steps+1, d, d) of x_k for an engine optimizer
    (coefficients a_k, b_k, γ_k) on a quadratic, whatever the noise law (Σ constant):
    z = (x, m), z' = A_k z + u_k + B_k ξ with m' = a m + b(Hx − Hc + b_lin + σSξ),
    x' = x − γ m'.  (Private twin of the recursions in ``sdeverify.theory``.)"""
    q = _quadratic(problem)
    d = q.dim
    co = optimizer.coefficients(positive_int("steps", steps), d)
    H, S = q.hessian, q.noise_sqrt
    k0 = q.linear - H @ q.center
    I = np.eye(d)
    mu = np.concatenate([vector("x0", x0, d), co.m0])
    C = np.zeros((2 * d, 2 * d))
    means = np.empty((steps + 1, d))
    covs = np.empty((steps + 1, d, d))
    means[0], covs[0] = mu[:d], C[:d, :d]
    A = np.empty((2 * d, 2 * d))
    SS = sigma ** 2 * (S @ S.T)
    for k in range(steps):
        a, b, g = co.a[k], co.b[k], co.gamma[k]
        A[d:, :d], A[d:, d:] = b * H, a * I
        A[:d, :d], A[:d, d:] = I - g * b * H, -g * a * I
        u = np.concatenate([-g * b * k0, b * k0])
        mu = A @ mu + u
        # noise enters as (−γ b σ S ξ, b σ S ξ): covariance b² [[γ², −γ], [−γ, 1]] ⊗ σ²SSᵀ
        Nc = b * b * np.block([[g * g * SS, -g * SS], [-g * SS, SS]])
        C = A @ C @ A.T + Nc
        means[k + 1], covs[k + 1] = mu[:d], C[:d, :d]
    return means, covs
