"""A separable non-convex loss with state-dependent noise.

    L(x) = Σ_i [ ½ x_i² + a cos x_i ],
    ∇L(x)_i = x_i − a sin x_i,         ∇²L(x) = diag(1 − a cos x_i),
    Σ(x) = diag(1 + sin² x_i),         noise v_i = sqrt(1 + sin² x_i) ξ_i.

For a > 1 the origin is a local maximum of each coordinate and the minima sit at the
non-zero roots of x = a sin x (±1.8955 for a = 2): a double well with bounded curvature
|L''| ≤ 1 + a and bounded, smooth, x-dependent noise.  Parameter layout ``p = [a]``.
sin and cos are :mod:`sdeverify.vmath`'s (≤ 1 ulp from NumPy's, vectorised over lanes).
``cos_oracle`` computes sin x_i once for the gradient and the noise of one oracle call
(``grad`` and ``noise`` each compute it), ``cos_oracle_lanes`` the same for a block of
lanes, both with the separate functions' bits.  The problem gives the lanes oracle for
d ≥ 4 only (:data:`LANES_FROM_DIM`): from d = 4 the per-path oracle's lane loop no longer
vectorises (d = 4: 48 → 182 M/s per CPU-second with the lanes oracle), while at d ≤ 3 it
does and is as fast or faster (d = 3: 168 vs 156; with SVAG, whose second call the lanes
oracle computes in full, 131 vs 96).  ``cos_oracle_pair_lanes`` makes SVAG's two calls in one,
with one sine and one sqrt(1 + sin² x) for both noises.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import ArrayLike

from .. import vmath
from ..compile_lock import compile_once
from ..reprs import call_repr
from ..validation import finite_float, positive_int
from .base import NGOS

__all__ = ["CosineWell"]


#: CosineWell gives the engine its lanes oracle from this dimension on (module docstring).
LANES_FROM_DIM = 4


@numba.njit(cache=True)
def cos_grad(x, p, out):
    a = p[0]
    for i in range(x.shape[0]):
        out[i] = x[i] - a * vmath.sin(x[i])


@numba.njit(cache=True)
def cos_noise(x, p, xi, out):
    for i in range(x.shape[0]):
        s = vmath.sin(x[i])
        out[i] = math.sqrt(1.0 + s * s) * xi[i]


@numba.njit(cache=True)
def cos_oracle(x, p, xi, g, v):
    """cos_grad(x, p, g) and cos_noise(x, p, xi, v) with one sine per coordinate."""
    a = p[0]
    for i in range(x.shape[0]):
        s = vmath.sin(x[i])
        g[i] = x[i] - a * s
        v[i] = math.sqrt(1.0 + s * s) * xi[i]


@numba.njit(cache=True)
def cos_oracle_lanes(X, p, Z, G, V):
    """cos_oracle for every lane (column) of X (d, L), draws Z (≥ d, L), lanes innermost."""
    a = p[0]
    for i in range(X.shape[0]):
        for ln in range(X.shape[1]):
            s = vmath.sin(X[i, ln])
            G[i, ln] = X[i, ln] - a * s
            V[i, ln] = math.sqrt(1.0 + s * s) * Z[i, ln]


@numba.njit(cache=True)
def cos_oracle_pair_lanes(X, p, Z1, Z2, G, V, W):
    """SVAG's two calls of cos_oracle_lanes at X (draws Z1, Z2) with one sine and one noise
    scale sqrt(1 + sin² x) per coordinate and lane (G: the gradient, V, W: the two noises)."""
    a = p[0]
    for i in range(X.shape[0]):
        for ln in range(X.shape[1]):
            s = vmath.sin(X[i, ln])
            G[i, ln] = X[i, ln] - a * s
            c = math.sqrt(1.0 + s * s)
            V[i, ln] = c * Z1[i, ln]
            W[i, ln] = c * Z2[i, ln]


@numba.njit(cache=True)
def cos_loss(x, p):
    a = p[0]
    v = 0.0
    for i in range(x.shape[0]):
        v += 0.5 * x[i] * x[i] + a * vmath.cos(x[i])
    return v


class CosineWell(NGOS):
    """``CosineWell(dim, amplitude=2.0, noise_dist="normal")``: see the module docstring.

    L(x) = Σ_i [½ x_i² + a cos x_i] with Σ(x) = diag(1 + sin² x_i): a non-convex NGOS
    (Def. 3.1) with state-dependent noise, used for the weak-approximation checks of
    Thm. 4.5 (docs/theory.md §6) beyond quadratics.

    Parameters
    ----------
    dim : dimension d.
    amplitude : a ≥ 0 (a double well per coordinate when a > 1).
    noise_dist : "normal" or "rademacher".
    """

    def __init__(self, dim: int = 2, amplitude: float = 2.0, *, noise_dist: str = "normal") -> None:
        dim = positive_int("dim", dim)
        self.amplitude = finite_float("amplitude", amplitude, low=0.0)
        if noise_dist not in ("normal", "gaussian", "rademacher"):
            raise ValueError(f"noise_dist must be 'normal' or 'rademacher', got {noise_dist!r}")
        super().__init__(dim=dim, grad=cos_grad, noise=cos_noise, loss=cos_loss,
                         params=np.array([self.amplitude]), n_draws=dim,
                         noise_dist=noise_dist, name="cosine_well", oracle=cos_oracle,
                         oracle_lanes=cos_oracle_lanes if dim >= LANES_FROM_DIM else None,
                         oracle_pair_lanes=cos_oracle_pair_lanes if dim >= LANES_FROM_DIM else None)

    def _call_repr(self) -> str:
        return call_repr("CosineWell", self.dim, self.amplitude, noise_dist=self.noise_dist)

    def hessian_at(self, x: ArrayLike) -> np.ndarray:
        """∇²L(x) = diag(1 − a cos x_i), (d, d)."""
        return np.diag(1.0 - self.amplitude * np.cos(np.asarray(x, dtype=np.float64)))

    def noise_cov_at(self, x: ArrayLike) -> np.ndarray:
        """Σ(x) = diag(1 + sin² x_i), (d, d)."""
        return np.diag(1.0 + np.sin(np.asarray(x, dtype=np.float64)) ** 2)

    def third_derivative(self, x: ArrayLike) -> np.ndarray:
        """Diagonal of ∂³L: a sin x_i, (d,) (all mixed third derivatives vanish)."""
        return self.amplitude * np.sin(np.asarray(x, dtype=np.float64))


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
