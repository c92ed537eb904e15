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

import numpy as np
from numpy.typing import ArrayLike

from .problems.quadratic import Quadratic

__all__ = ["Moments", "quadratic_moments", "update_variance_sgd", "update_variance_sgdm",
           "endpoint_variance_sgd", "endpoint_variance_sgdm", "endpoint_mean_bias_sgdm",
           "descent_lemma_terms", "stability_threshold"]


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
    I = np.eye(d)
    SS = sigma ** 2 * (S @ S.T)
    mean = np.empty((steps + 1, d))
    cov = np.empty((steps + 1, d, d))
    z = np.concatenate([np.asarray(x0, dtype=np.float64), coef.m0])
    C = np.zeros((2 * d, 2 * d))
    mean[0], cov[0] = z[:d], C[:d, :d]
    M = np.zeros((2 * d, 2 * d))
    u = np.empty(2 * d)
    NN = np.empty((2 * d, 2 * d))
    for k in range(steps):
        a, b, gam = coef.a[k], coef.b[k], coef.gamma[k]
        M[:d, :d] = I - gam * b * H
        M[:d, d:] = -gam * a * I
        M[d:, :d] = b * H
        M[d:, d:] = a * I
        u[:d], u[d:] = -gam * b * g0, b * g0
        bb = b * b
        NN[:d, :d] = gam * gam * bb * SS
        NN[:d, d:] = NN[d:, :d] = -gam * bb * SS
        NN[d:, d:] = bb * SS
        z = M @ z + u
        C = M @ C @ M.T + NN
        mean[k + 1], cov[k + 1] = z[:d], C[:d, :d]
    return Moments(mean, cov)


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


# ---- Lemma 3.4 -----------------------------------------------------------------------------

def descent_lemma_terms(grad: np.ndarray, hess: np.ndarray, noise_cov: np.ndarray,
                        eta: float, sigma: float) -> tuple[float, float, float]:
    """The three terms of Lemma 3.4 (docs/theory.md §3) at one point, from ∇L (d,), ∇²L (d, d)
    and Σ (d, d): (−η‖∇L‖², (η²/2)∇Lᵀ∇²L∇L, (η²σ²/2) tr(∇²L Σ))."""
    return (-eta * float(grad @ grad), 0.5 * eta ** 2 * float(grad @ hess @ grad),
            0.5 * eta ** 2 * sigma ** 2 * float(np.trace(hess @ noise_cov)))


# ---- stability on a quadratic (THEORY §9, derived) ----------------------------------------

def stability_threshold(beta: float) -> float:
    """Largest η·h for which EMA-form SGDM is stable on curvature h: 2(1+β)/(1−β)."""
    return 2.0 * (1.0 + beta) / (1.0 - beta)
