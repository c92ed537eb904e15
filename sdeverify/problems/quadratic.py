"""Quadratic losses with constant noise covariance.

    L(x) = ½ (x − c)ᵀ H (x − c) + bᵀ x,   ∇L(x) = H (x − c) + b,   Σ(x) = Σ = S Sᵀ.

Parameter layout of ``p``: ``[H (d·d, row-major), S (d·d), c (d), b (d)]``.  When H and the
noise factor S are both diagonal (checked at construction) the problem uses O(d) functions
instead (``qdiag_*``, layout ``[diag H (d), diag S (d), c (d), b (d)]``): they give the
dense functions' bits for every finite x (the dense sums only add exact zeros, ±0 included,
to the one non-zero term), and differ only where some x_j is ±inf or NaN (dense: 0·inf
makes every coordinate NaN; diagonal: coordinate j alone), a path the engine stops anyway.
For this problem SGD and SGDM are linear-Gaussian: their mean and covariance obey exact
linear recursions (:mod:`sdeverify.theory`), the basis of the exact-moment tests and of
the Monte-Carlo-free weak error of Thm. 4.5.

The dense problem gives the CPU engine ``quad_oracle_lanes`` (H(x − c) + b and S ξ for a block
of paths, lanes innermost, each sum in the per-path functions' order: the same bits) for
d > ``config.FUSE_MAX_DIM``, where the engine would otherwise call the per-path functions path
by path (d = 16: 1.32× per CPU-second, interleaved A/B); up to that dimension the fused step
vectorises the per-path functions over paths already.  The diagonal functions vectorise within
a path at any d, and a lanes oracle did not beat them (0.87–1.06×): they have none.
"""
from __future__ import annotations

import numba
import numpy as np
from numpy.typing import ArrayLike

from .. import config
from ..compile_lock import compile_once
from ..reprs import call_repr
from ..validation import psd_sqrt, square_matrix, vector
from .base import NGOS, pack

__all__ = ["Quadratic", "ConstantGradient"]


@numba.njit(cache=True)
def quad_grad(x, p, out):
    d = x.shape[0]
    dd = d * d
    for i in range(d):
        s = 0.0
        for j in range(d):
            s += p[i * d + j] * (x[j] - p[2 * dd + j])
        out[i] = s + p[2 * dd + d + i]


@numba.njit(cache=True)
def quad_noise(x, p, xi, out):
    d = x.shape[0]
    dd = d * d
    for i in range(d):
        s = 0.0
        for j in range(d):
            s += p[dd + i * d + j] * xi[j]
        out[i] = s


@numba.njit(cache=True)
def quad_loss(x, p):
    d = x.shape[0]
    dd = d * d
    q = 0.0
    lin = 0.0
    for i in range(d):
        s = 0.0
        for j in range(d):
            s += p[i * d + j] * (x[j] - p[2 * dd + j])
        q += (x[i] - p[2 * dd + i]) * s
        lin += p[2 * dd + d + i] * x[i]
    return 0.5 * q + lin


@numba.njit(cache=True)
def qdiag_grad(x, p, out):
    d = x.shape[0]
    for i in range(d):
        out[i] = p[i] * (x[i] - p[2 * d + i]) + p[3 * d + i]


@numba.njit(cache=True)
def qdiag_noise(x, p, xi, out):
    d = x.shape[0]
    for i in range(d):
        out[i] = p[d + i] * xi[i]


@numba.njit(cache=True)
def qdiag_loss(x, p):
    d = x.shape[0]
    q = 0.0
    lin = 0.0
    for i in range(d):
        q += (x[i] - p[2 * d + i]) * (p[i] * (x[i] - p[2 * d + i]))
        lin += p[3 * d + i] * x[i]
    return 0.5 * q + lin


@numba.njit(cache=True)
def quad_oracle_lanes(X, p, Z, G, V):
    """quad_grad and quad_noise of every lane (column) of X (d, L), draws Z (≥ d, L), lanes
    innermost: each output's sum over j in the same order as the per-path functions.  V holds
    x − c first (computed once, not once per output), then the noise."""
    d = X.shape[0]
    L = X.shape[1]
    dd = d * d
    for j in range(d):
        c = p[2 * dd + j]
        for ln in range(L):
            V[j, ln] = X[j, ln] - c
    for i in range(d):
        for ln in range(L):
            G[i, ln] = 0.0
        for j in range(d):
            h = p[i * d + j]
            for ln in range(L):
                G[i, ln] += h * V[j, ln]
        b = p[2 * dd + d + i]
        for ln in range(L):
            G[i, ln] = G[i, ln] + b
    for i in range(d):
        for ln in range(L):
            V[i, ln] = 0.0
        for j in range(d):
            s = p[dd + i * d + j]
            for ln in range(L):
                V[i, ln] += s * Z[j, ln]


def _is_diagonal(A: np.ndarray) -> bool:
    return not np.any(A - np.diag(np.diag(A)))


class Quadratic(NGOS):
    """``Quadratic(hessian, noise_cov=None, center=None)``: L(x) = ½(x−c)ᵀH(x−c) + bᵀx.

    An NGOS (Def. 3.1, docs/theory.md §1) with constant noise covariance Σ; SGD and SGDM on
    it have exact moment recursions (:func:`sdeverify.theory.quadratic_moments`) and its SDE
    limits are Ornstein–Uhlenbeck processes (:func:`sdeverify.sde.ou_moments`).

    Parameters
    ----------
    hessian : symmetric PSD (d, d) matrix H.
    noise_cov : PSD (d, d) matrix Σ (identity when omitted); its square root is computed once.
    center : (d,) minimiser c (zero when omitted).
    linear : optional (d,) linear term b (used by :func:`ConstantGradient`).
    noise_dist : "normal" or "rademacher" — both give noise with covariance Σ.
    name : label used in results and plots.

    When H and the computed square root of Σ are both exactly diagonal, ``diagonal`` is True
    and the oracle costs O(d) instead of O(d²) (module docstring: same bits for finite x).
    """

    def __init__(self, hessian: ArrayLike, noise_cov: ArrayLike | None = None,
                 center: ArrayLike | None = None, *, linear: ArrayLike | None = None,
                 noise_dist: str = "normal", name: str = "quadratic") -> None:
        H = square_matrix("hessian", hessian, psd=True)
        d = H.shape[0]
        cov = np.eye(d) if noise_cov is None else square_matrix("noise_cov", noise_cov, d, psd=True)
        c = np.zeros(d) if center is None else vector("center", center, d)
        b = np.zeros(d) if linear is None else vector("linear", linear, d)
        if noise_dist not in ("normal", "gaussian", "rademacher"):
            raise ValueError(f"noise_dist must be 'normal' or 'rademacher', got {noise_dist!r}")
        self.hessian, self.noise_cov, self.center, self.linear = H, cov, c, b
        self.noise_sqrt = psd_sqrt("noise_cov", cov)
        self.diagonal = _is_diagonal(H) and _is_diagonal(self.noise_sqrt)
        if self.diagonal:
            funcs = dict(grad=qdiag_grad, noise=qdiag_noise, loss=qdiag_loss)
            params = pack(np.diag(H), np.diag(self.noise_sqrt), c, b)
        else:                                  # the lanes oracle where the fused step stops
            funcs = dict(grad=quad_grad, noise=quad_noise, loss=quad_loss,
                         oracle_lanes=quad_oracle_lanes if d > config.FUSE_MAX_DIM else None)
            params = pack(H, self.noise_sqrt, c, b)
        super().__init__(dim=d, params=params, n_draws=d, noise_dist=noise_dist, name=name, **funcs)

    def _call_repr(self) -> str:
        linear = {"linear": self.linear} if np.any(self.linear) else {}
        return call_repr("Quadratic", self.hessian, noise_cov=self.noise_cov, center=self.center,
                         **linear, noise_dist=self.noise_dist, name=self._own_name)

    def hessian_at(self, x: ArrayLike) -> np.ndarray:
        """∇²L(x) = H, (d, d) (constant)."""
        return self.hessian.copy()

    def noise_cov_at(self, x: ArrayLike) -> np.ndarray:
        """Σ(x) = Σ, (d, d) (constant)."""
        return self.noise_cov.copy()


def ConstantGradient(c: ArrayLike, noise_cov: ArrayLike | None = None, *,
                     noise_dist: str = "normal") -> Quadratic:
    """L(x) = cᵀx: the oracle returns g ~ c + σ·noise, independent of x (Sec. 4.1 warm-up,
    docs/theory.md §5).

    Parameters
    ----------
    c : (d,) the constant gradient.
    noise_cov : PSD (d, d) noise covariance Σ (identity when omitted).
    noise_dist : "normal" or "rademacher".

    Returns
    -------
    Quadratic
        with H = 0 and linear term b = c.
    """
    c = vector("c", c)
    return Quadratic(np.zeros((c.size, c.size)), noise_cov, linear=c, noise_dist=noise_dist,
                     name="constant_gradient")


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
