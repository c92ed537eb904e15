"""Least squares on generated data, with noise from real minibatch sampling.

    L(x) = (1/2n) Σ_j (a_jᵀx − y_j)²,   ∇L(x) = Q x − r,  Q = AᵀA/n,  r = Aᵀy/n.

One oracle call draws B indices j_1..j_B uniformly *with replacement* (from B uniform base
draws) and the noise is the minibatch deviation ``v = g_B(x) − ∇L(x)``, with
``g_B = (1/B) Σ_b a_{j_b}(a_{j_b}ᵀx − y_{j_b})``.  With noise scale σ = 1 the oracle returns
exactly the minibatch gradient, and Cov v = Σ₁(x)/B: σ² ∝ 1/B arises from the sampling
itself.  Parameter layout ``p = [n, B, Q (d·d), r (d), A (n·d), y (n)]``.  ``ls_oracle``
computes ∇L once per call for the gradient and the deviation (``grad`` and ``noise`` each
compute it), with the separate functions' bits.  (No ``oracle_lanes``: written over a
block of lanes, the gathers of the sampled rows ran about 1.5x slower than this per-path oracle
in the engine's fused step.)
"""
from __future__ import annotations

import numba
import numpy as np
from numpy.typing import ArrayLike

from ..compile_lock import compile_once
from ..reprs import call_repr
from ..validation import positive_int
from .base import NGOS, pack

__all__ = ["LinearRegression"]


@numba.njit(cache=True)
def ls_grad(x, p, out):
    d = x.shape[0]
    for i in range(d):
        s = 0.0
        for j in range(d):
            s += p[2 + i * d + j] * x[j]
        out[i] = s - p[2 + d * d + i]


@numba.njit(cache=True)
def ls_noise(x, p, xi, out):
    d = x.shape[0]
    n = int(p[0])
    B = int(p[1])
    a0 = 2 + d * d + d
    y0 = a0 + n * d
    for i in range(d):
        out[i] = 0.0
    for b in range(B):
        j = min(int(xi[b] * n), n - 1)           # branch-free (a select): u < 1 but u·n may round to n
        res = -p[y0 + j]
        for i in range(d):
            res += p[a0 + j * d + i] * x[i]
        for i in range(d):
            out[i] += p[a0 + j * d + i] * res
    inv = 1.0 / B
    for i in range(d):
        s = 0.0
        for j in range(d):
            s += p[2 + i * d + j] * x[j]
        out[i] = out[i] * inv - (s - p[2 + d * d + i])


@numba.njit(cache=True)
def ls_oracle(x, p, xi, g, v):
    """ls_grad(x, p, g) and ls_noise(x, p, xi, v) with ∇L computed once.  The minibatch loop
    is written out as in ls_noise, not shared through a helper: the CUDA engine compiles each
    problem function as a device function, which cannot call a CPU-jitted helper."""
    d = x.shape[0]
    n = int(p[0])
    B = int(p[1])
    a0 = 2 + d * d + d
    y0 = a0 + n * d
    for i in range(d):
        v[i] = 0.0
    for b in range(B):
        j = min(int(xi[b] * n), n - 1)
        res = -p[y0 + j]
        for i in range(d):
            res += p[a0 + j * d + i] * x[i]
        for i in range(d):
            v[i] += p[a0 + j * d + i] * res
    inv = 1.0 / B
    for i in range(d):
        s = 0.0
        for j in range(d):
            s += p[2 + i * d + j] * x[j]
        gi = s - p[2 + d * d + i]          # in float64 (not g[i]: a float32 g is rounded)
        g[i] = gi
        v[i] = v[i] * inv - gi


@numba.njit(cache=True)
def ls_loss(x, p):
    d = x.shape[0]
    n = int(p[0])
    a0 = 2 + d * d + d
    y0 = a0 + n * d
    v = 0.0
    for j in range(n):
        res = -p[y0 + j]
        for i in range(d):
            res += p[a0 + j * d + i] * x[i]
        v += res * res
    return 0.5 * v / n


class LinearRegression(NGOS):
    """``LinearRegression(features, targets, batch_size, max_batch=None)`` or
    ``.generate(n, d, batch_size, seed)``.

    The engine compiles one kernel per number of base draws per step; ``max_batch`` (≥ B)
    reserves draws for batches up to that size, so that a sweep over B shares one compiled
    kernel (the first B draws are used; the rest cost generator time only).

    An NGOS (Def. 3.1, docs/theory.md §1) whose noise is real minibatch sampling: the
    batch-size model of docs/theory.md §10.

    Parameters
    ----------
    features : (n, d) matrix A.
    targets : (n,) vector y.
    batch_size : B, indices drawn (with replacement) per oracle call.
    max_batch : draws reserved per call (≥ B); default B.
    """

    def __init__(self, features: ArrayLike, targets: ArrayLike, batch_size: int, *,
                 max_batch: int | None = None) -> None:
        A = np.asarray(features, dtype=np.float64)
        y = np.asarray(targets, dtype=np.float64)
        if A.ndim != 2:
            raise ValueError(f"features must be an (n, d) matrix, got shape {A.shape}")
        if y.shape != (A.shape[0],):
            raise ValueError(f"targets must have shape ({A.shape[0]},), got {y.shape}")
        if not (np.all(np.isfinite(A)) and np.all(np.isfinite(y))):
            raise ValueError("features and targets must be finite")
        self.batch_size = positive_int("batch_size", batch_size)
        draws = self.batch_size if max_batch is None else positive_int("max_batch", max_batch)
        if draws < self.batch_size:
            raise ValueError(f"max_batch must be >= batch_size ({self.batch_size}), got {draws}")
        n, d = A.shape
        self.features, self.targets = A, y
        self.Q = A.T @ A / n
        self.r = A.T @ y / n
        super().__init__(dim=d, grad=ls_grad, noise=ls_noise, loss=ls_loss, oracle=ls_oracle,
                         params=pack(n, self.batch_size, self.Q, self.r, A, y),
                         n_draws=draws, noise_dist="uniform", name="linear_regression")

    @classmethod
    def generate(cls, n: int = 256, d: int = 4, batch_size: int = 8, *, noise: float = 0.5,
                 seed: int = 0, max_batch: int | None = None) -> "LinearRegression":
        """Gaussian features, a planted x*, and targets y = A x* + noise·ε."""
        n = positive_int("n", n)
        d = positive_int("d", d)
        g = np.random.default_rng(seed)
        A = g.standard_normal((n, d))
        x_star = g.standard_normal(d)
        return cls(A, A @ x_star + noise * g.standard_normal(n), batch_size, max_batch=max_batch)

    def _call_repr(self) -> str:
        extra = {} if self.n_draws == self.batch_size else {"max_batch": self.n_draws}
        return call_repr("LinearRegression", self.features, self.targets, self.batch_size,
                         **extra)

    def hessian_at(self, x: ArrayLike) -> np.ndarray:
        """∇²L(x) = Q = AᵀA/n, (d, d) (constant)."""
        return self.Q.copy()

    def per_sample_cov(self, x: ArrayLike) -> np.ndarray:
        """Σ₁(x) = Cov_j[a_j(a_jᵀx − y_j)] over a uniform index j, (d, d); the oracle's is Σ₁/B."""
        gj = self.features * (self.features @ x - self.targets)[:, None]
        c = gj - gj.mean(axis=0)
        return c.T @ c / gj.shape[0]

    def noise_cov_at(self, x: ArrayLike) -> np.ndarray:
        """Σ(x) = Σ₁(x)/B, (d, d): the covariance of the minibatch gradient's deviation."""
        return self.per_sample_cov(np.asarray(x, dtype=np.float64)) / self.batch_size


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
