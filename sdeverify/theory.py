"""Closed-form predictions used as references by the checks.

* Exact moment recursions of SGD/SGDM/HeavyBall on a quadratic with constant noise
  covariance (the iterates are linear in the noise, so mean and covariance of (x, m) obey
  linear recursions whatever the noise law).  These make the weak error of Thm. 4.5 on a
  quadratic computable with no Monte Carlo at all.
* Sec. 4.1 closed forms (THEORY §5, derived): per-step update variance and endpoint variance
  of SGD and SGDM with i.i.d. gradients.
* The descent lemma (Lemma 3.4): the η and η² terms of the one-step expected loss change.
* Stability thresholds on a quadratic (THEORY §9, derived).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numpy.typing import ArrayLike

from .compile_lock import compile_once
from .problems.quadratic import Quadratic

__all__ = ["Moments", "quadratic_moments", "update_variance_sgd", "update_variance_sgdm",
           "endpoint_variance_sgd", "endpoint_variance_sgdm", "endpoint_mean_bias_sgdm",
           "folded_normal_mean", "loss_variation", "descent_lemma_terms", "sgdm_descent_terms",
           "stability_threshold"]


@dataclass(frozen=True)
class Moments:
    """Exact mean and covariance of x_k at every step k = 0..steps (per optimizer)."""
    mean: np.ndarray   # (steps + 1, d)
    cov: np.ndarray    # (steps + 1, d, d)

    def expect(self, problem: Quadratic, observable: str) -> np.ndarray:
        """E h(x_k) for h = "loss", "sqnorm" or "x<i>" (exact: h is at most quadratic)."""
        mu, C = self.mean, self.cov
        if observable == "sqnorm":
            return np.einsum("kii->k", C) + np.einsum("ki,ki->k", mu, mu)
        if observable == "loss":
            H, c, b = problem.hessian, problem.center, problem.linear
            dm = mu - c
            return (0.5 * np.einsum("ij,kji->k", H, C) + 0.5 * np.einsum("ki,ij,kj->k", dm, H, dm)
                    + mu @ b)
        if observable.startswith("x") and observable[1:].isdigit():
            return mu[:, int(observable[1:])].copy()
        raise ValueError(f"exact moments support 'loss', 'sqnorm' and 'x<i>', got {observable!r}")


def quadratic_moments(problem: Quadratic, optimizer: Any, x0: ArrayLike, *, steps: int,
                      sigma: float) -> Moments:
    """Exact moments of an optimizer (SGD, SGDM, HeavyBall) on a :class:`Quadratic`.

    The reference of the Monte-Carlo-free weak error of Thm. 4.5 on a quadratic
    (docs/theory.md §6); the update is the EMA form of docs/theory.md §2.  With g = H(x − c) + b + σSξ and the update m' = a m + b_k g, x' = x − γ m', the state
    z = (x, m) follows z' = M_k z + u_k + N_k ξ, so

        E z' = M_k E z + u_k,     Cov z' = M_k Cov z M_kᵀ + N_k N_kᵀ.

    Exact whatever the noise law (only its covariance enters), because the iterates are
    linear in the noise.

    Parameters
    ----------
    problem : the quadratic (H, Σ = S Sᵀ, c, b).
    optimizer : an engine optimizer (anything with ``coefficients(steps, dim)``, e.g.
        :class:`sdeverify.SGD`, :class:`sdeverify.SGDM`, :class:`sdeverify.HeavyBall`).
    x0 : (d,) deterministic starting point.
    steps : number of steps K.
    sigma : noise scale σ (the oracle returns ∇L + σ S ξ).

    Returns
    -------
    Moments
        ``mean`` (K + 1, d) and ``cov`` (K + 1, d, d) of x_0 … x_K.
    """
    if not isinstance(problem, Quadratic):
        raise ValueError("quadratic_moments needs a Quadratic problem")
    d = problem.dim
    coef = optimizer.coefficients(steps, d)
    H, S = problem.hessian, problem.noise_sqrt
    g0 = problem.linear - H @ problem.center   # gradient at x = 0
    SS = sigma ** 2 * (S @ S.T)
    z0 = np.concatenate([np.asarray(x0, dtype=np.float64), coef.m0])
    f = lambda v: np.ascontiguousarray(v, dtype=np.float64)
    mean, cov = _moment_recursion(f(coef.a[:steps]), f(coef.b[:steps]), f(coef.gamma[:steps]),
                                  f(H), f(g0), f(SS), f(z0))
    return Moments(mean, cov)


@numba.njit(cache=True)
def _moment_recursion(a, b, gamma, H, g0, SS, z0):
    """The recursion of :func:`quadratic_moments` for z = (x, m) ∈ R^{2d}, in plain loops:
    E z' = M_k E z + u_k, Cov z' = M_k Cov z M_kᵀ + N_k N_kᵀ with
    M_k = [[I − γ_k b_k H, −γ_k a_k I], [b_k H, a_k I]], u_k = (−γ_k b_k g₀, b_k g₀) and
    N_k N_kᵀ = b_k² [[γ_k² Σ, −γ_k Σ], [−γ_k Σ, Σ]] (Σ = σ² S Sᵀ).  Returns the mean
    (K + 1, d) and covariance (K + 1, d, d) of x_0 … x_K."""
    d = H.shape[0]
    n = 2 * d
    steps = a.shape[0]
    mean = np.empty((steps + 1, d))
    cov = np.zeros((steps + 1, d, d))
    z = np.empty(n)
    for i in range(n):
        z[i] = z0[i]
    zn = np.empty(n)
    C = np.zeros((n, n))
    M = np.zeros((n, n))
    T = np.empty((n, n))
    u = np.empty(n)
    for i in range(d):
        mean[0, i] = z[i]
    for k in range(steps):
        ak, bk, gk = a[k], b[k], gamma[k]
        for i in range(d):
            for j in range(d):
                eye = 1.0 if i == j else 0.0
                M[i, j] = eye - gk * bk * H[i, j]
                M[i, d + j] = -gk * ak * eye
                M[d + i, j] = bk * H[i, j]
                M[d + i, d + j] = ak * eye
            u[i] = -gk * bk * g0[i]
            u[d + i] = bk * g0[i]
        for i in range(n):
            acc = u[i]
            for j in range(n):
                acc += M[i, j] * z[j]
            zn[i] = acc
        for i in range(n):
            z[i] = zn[i]
        for i in range(n):                    # T = M C
            for j in range(n):
                acc = 0.0
                for l in range(n):
                    acc += M[i, l] * C[l, j]
                T[i, j] = acc
        bb = bk * bk
        for i in range(n):                    # C = T Mᵀ + N Nᵀ
            for j in range(n):
                acc = 0.0
                for l in range(n):
                    acc += T[i, l] * M[j, l]
                si, sj = i % d, j % d
                w = gk * gk if (i < d and j < d) else (-gk if (i < d) != (j < d) else 1.0)
                C[i, j] = acc + bb * w * SS[si, sj]
        for i in range(d):
            mean[k + 1, i] = z[i]
            for j in range(d):
                cov[k + 1, i, j] = C[i, j]
    return mean, cov


# ---- Sec. 4.1: variance reduction with i.i.d. gradients (THEORY §5, derived) -------------

def update_variance_sgd(eta: float, sigma: float, k: ArrayLike) -> np.ndarray:
    """Var of one coordinate of x_{k+1} − x_k for SGD: η²σ² at every k (docs/theory.md §5);
    shape of ``k``."""
    return np.full(np.shape(k), eta ** 2 * sigma ** 2)


def update_variance_sgdm(eta: float, beta: float, sigma: float, k: ArrayLike) -> np.ndarray:
    """Var of x_{k+1} − x_k for SGDM with m_0 deterministic: η²σ²(1−β)²(1−β^{2(k+1)})/(1−β²)
    (docs/theory.md §5); shape of ``k``."""
    k = np.asarray(k, dtype=np.float64)
    return eta ** 2 * sigma ** 2 * (1 - beta) ** 2 * (1 - beta ** (2 * (k + 1))) / (1 - beta ** 2)


def endpoint_variance_sgd(eta: float, sigma: float, k: ArrayLike) -> np.ndarray:
    """Var of x_k for SGD: kη²σ² (docs/theory.md §5); shape of ``k``."""
    return np.asarray(k, dtype=np.float64) * eta ** 2 * sigma ** 2


def endpoint_variance_sgdm(eta: float, beta: float, sigma: float, k: ArrayLike) -> np.ndarray:
    """Var of x_k for SGDM: η²σ²[k − 2β(1−β^k)/(1−β) + β²(1−β^{2k})/(1−β²)]
    (docs/theory.md §5); shape of ``k``."""
    k = np.asarray(k, dtype=np.float64)
    return eta ** 2 * sigma ** 2 * (k - 2 * beta * (1 - beta ** k) / (1 - beta)
                                    + beta ** 2 * (1 - beta ** (2 * k)) / (1 - beta ** 2))


def endpoint_mean_bias_sgdm(eta: float, beta: float, c: float, k: ArrayLike) -> np.ndarray:
    """Extra displacement of E x_k for SGDM started from m_0 = 0 rather than c:
    +ηcβ(1−β^k)/(1−β) (SGDM lags behind SGD by this much; docs/theory.md §5); shape of ``k``."""
    k = np.asarray(k, dtype=np.float64)
    return eta * c * beta * (1 - beta ** k) / (1 - beta)


def folded_normal_mean(mu: ArrayLike, sd: ArrayLike) -> np.ndarray:
    """E|X| for X ~ N(mu, sd²), sd > 0: sd√(2/π) exp(−mu²/(2sd²)) + mu·erf(mu/(sd√2))."""
    from scipy.special import erf
    mu, sd = np.asarray(mu, dtype=np.float64), np.asarray(sd, dtype=np.float64)
    return sd * np.sqrt(2.0 / np.pi) * np.exp(-mu ** 2 / (2.0 * sd ** 2)) + mu * erf(mu / (sd * np.sqrt(2.0)))


def loss_variation(eta: float, beta: float, sigma: float, c: float, steps: int) -> float:
    """Expected loss variation Σ_{k<K} |L(x_{k+1}) − L(x_k)| of Sec. 4.1's set-up with the
    linear loss L(x) = c x (gradient c, noise N(0, σ²)), for SGDM with m_0 = c (β = 0: SGD):
    each ΔL_k = −ηc m_{k+1} is normal with mean −ηc² and variance c² Var(x_{k+1} − x_k)
    (docs/theory.md §5, §12), so the sum of folded-normal means is exact."""
    k = np.arange(steps)
    var = update_variance_sgdm(eta, beta, sigma, k) if beta > 0 else update_variance_sgd(eta, sigma, k)
    return float(np.sum(folded_normal_mean(-eta * c * c, abs(c) * np.sqrt(var))))


# ---- Lemma 3.4 -----------------------------------------------------------------------------

def descent_lemma_terms(grad: np.ndarray, hess: np.ndarray, noise_cov: np.ndarray,
                        eta: float, sigma: float) -> tuple[float, float, float]:
    """The three terms of Lemma 3.4 (docs/theory.md §3) at one point, from ∇L (d,), ∇²L (d, d)
    and Σ (d, d): (−η‖∇L‖², (η²/2)∇Lᵀ∇²L∇L, (η²σ²/2) tr(∇²L Σ))."""
    return (-eta * float(grad @ grad), 0.5 * eta ** 2 * float(grad @ hess @ grad),
            0.5 * eta ** 2 * sigma ** 2 * float(np.trace(hess @ noise_cov)))


def sgdm_descent_terms(grad: np.ndarray, hess: np.ndarray, noise_cov: np.ndarray,
                       momentum: np.ndarray, eta: float, beta: float,
                       sigma: float) -> tuple[float, float, float]:
    """The three terms of the SGDM descent lemma (App. A.2, docs/theory.md §12) for one step
    of Def. 3.3 from (x, m) with buffer m (d,): with m̄ = βm + (1−β)∇L the expected buffer,
    (−η ∇L·m̄, (η²/2) m̄ᵀ∇²L m̄, (η²(1−β)²σ²/2) tr(∇²L Σ)).  β = 0 gives Lemma 3.4's terms."""
    mbar = beta * np.asarray(momentum, dtype=np.float64) + (1.0 - beta) * grad
    return (-eta * float(grad @ mbar), 0.5 * eta ** 2 * float(mbar @ hess @ mbar),
            0.5 * eta ** 2 * (1.0 - beta) ** 2 * sigma ** 2 * float(np.trace(hess @ noise_cov)))


# ---- stability on a quadratic (THEORY §9, derived) ----------------------------------------

def stability_threshold(beta: float) -> float:
    """Largest η·h for which EMA-form SGDM is stable on curvature h: 2(1+β)/(1−β)."""
    return 2.0 * (1.0 + beta) / (1.0 - beta)


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
