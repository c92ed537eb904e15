"""Problems whose minimizers form a manifold Γ: the setting of the slow SDE (Sec. 5, THEORY §8).

Besides the NGOS functions (``grad``, ``noise``, ``loss``) a :class:`ManifoldProblem` provides
the pieces the slow SDE of Thm. 5.5 is built from, as NumPy methods that accept one point
``(d,)`` or a batch ``(N, d)``:

* ``project(x)``                Φ(x), the limit of gradient flow started at x;
* ``tangent_projector(ζ)``      P_ζ, orthogonal projector onto T_ζΓ (ζ ∈ Γ);
* ``hessian_at(x)``             ∇²L(x);
* ``noise_cov_at(x)``           Σ(x) (the oracle noise is σ·v with Cov v = Σ);
* ``noise_sqrt_at(x)``          S(x) with S Sᵀ = Σ (what ``noise`` applies to the draws);
* ``third_contraction(x, M)``   ∂²(∇L)(x)[M] = Σ_jk M_jk ∂_j∂_k ∇L(x);
* ``sharpness(ζ)``              tr ∇²L(ζ).

Two problems live here, with closed forms:

* :class:`Valley`  L(x, y) = ½ h(x) |y|², x ∈ R, y ∈ R^m, h a positive polynomial; tangent
  noise variance s_x²(x) and normal noise variance s_y²(x) polynomials in x (label-noise-like
  s_y² = c·h is ``Valley.label_noise_like``).
* :class:`Sphere`  L(x) = ¼ (‖x‖² − 1)², x ∈ R^d, isotropic noise Σ = s² I.

The valley also has ``valley_oracle_lanes`` (its gradient and noise for a block of paths, lanes
innermost, the per-path bits in float64), which the CPU engine vectorises where the per-path
functions' three polynomials left its lane loop scalar (2.9× in one process).  Its polynomials
are stored 4 coefficients wide when all three fit (every valley of the checks), else 8: the
engine then runs Horner's loop over 4, not 8 (with h and h′ evaluated once per call instead of
twice, 1.15× on ``Valley.label_noise_like``; benchmarks/RESULTS.md).

The diagonal linear network with label noise is in :mod:`.diagonal_net`.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import ArrayLike

from ..compile_lock import compile_once
from ..reprs import call_repr
from ..validation import finite_float, positive_int
from ..vmath import inline
from .base import NGOS, pack

__all__ = ["ManifoldProblem", "Valley", "Sphere"]


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------
class ManifoldProblem(NGOS):
    """An NGOS whose minimizers form a smooth manifold Γ (Assumption 5.1, docs/theory.md §8).

    Subclasses implement the methods listed in the module docstring; the generic slow-SDE
    coefficients of :mod:`sdeverify.slow_sde` are built from them alone.
    ``manifold_dim`` is dim Γ.  ``slow_step`` (optional) is an njit function
    ``slow_step(z, p, xi, eta, sigma, work)`` doing one Euler step (dt = η²) of the slow SDE
    in place, driven by the oracle's base draws ``xi`` (used by
    :func:`sdeverify.slow_sde.coupled_slow_sde`); ``slow_step_lanes`` (optional, used
    instead when present) is the same step for a group of paths,
    ``slow_step_lanes(Z, p, XI, eta, sigma, work)`` with Z (d, L), XI (≥ n_draws, L) and
    scratch ``work`` (d + 2, L), written with the loop over lanes innermost so that it
    vectorises (the valley's 1.9× and the sphere's 4.4× faster coupled references).
    """

    manifold_dim: int
    slow_step = None
    slow_step_lanes = None

    def project(self, x: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        """Φ(x), the limit of gradient flow started at x; (d,) or (N, d) like ``x``."""
        raise NotImplementedError

    def tangent_projector(self, zeta: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        """P_ζ, the orthogonal projector onto T_ζΓ; (d, d) or (N, d, d)."""
        raise NotImplementedError

    def hessian_at(self, x: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        """∇²L(x), (d, d) or (N, d, d)."""
        raise NotImplementedError

    def noise_sqrt_at(self, x: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        """S(x) with S Sᵀ = Σ(x), (d, n_draws) or (N, d, n_draws)."""
        raise NotImplementedError

    def third_contraction(self, x: ArrayLike, M: ArrayLike) -> np.ndarray:  # pragma: no cover - abstract
        """∂²(∇L)(x)[M] = Σ_jk M_jk ∂_j∂_k ∇L(x) for M (d, d); (d,) or (N, d)."""
        raise NotImplementedError

    def noise_cov_at(self, x: ArrayLike) -> np.ndarray:
        """Σ(x) = S(x) S(x)ᵀ, (d, d) or (N, d, d)."""
        S = self.noise_sqrt_at(x)
        return S @ np.swapaxes(S, -1, -2)

    def sharpness(self, zeta: ArrayLike) -> np.ndarray:
        """tr ∇²L(ζ) (the quantity label noise minimizes on Γ); scalar or (N,)."""
        return np.trace(self.hessian_at(zeta), axis1=-2, axis2=-1)

    def distance_to_manifold(self, x: ArrayLike) -> np.ndarray:
        """‖x − Φ(x)‖ (not the Euclidean distance to Γ, but equivalent near Γ); scalar or (N,)."""
        x = np.asarray(x, dtype=np.float64)
        return np.linalg.norm(x - self.project(x), axis=-1)

    def slow_drift(self, zeta: ArrayLike, sigma: float) -> np.ndarray:
        """Drift of the slow SDE at ζ ∈ Γ (generic formula of THEORY §8; subclasses may give
        a closed form).  See :func:`sdeverify.slow_sde.slow_coefficients`."""
        from ..slow_sde import slow_coefficients
        return slow_coefficients(self, zeta, sigma)[0]

    def slow_diffusion(self, zeta: ArrayLike, sigma: float) -> np.ndarray:
        """Diffusion matrix D(ζ) of the slow SDE (dζ = D dW + b dt): σ P_ζ S(ζ), (d, n_draws)
        or (N, d, n_draws) (THEORY §8)."""
        zeta = np.asarray(zeta, dtype=np.float64)
        return sigma * self.tangent_projector(zeta) @ self.noise_sqrt_at(zeta)


# --------------------------------------------------------------------------------------------
# Valley: L(x, y) = ½ h(x) |y|²
# --------------------------------------------------------------------------------------------
# p = [m, nh, h_0..h_{nh-1}, na, a_0.., nb, b_0..] with polynomials in x (increasing powers):
# h (curvature), a = s_x² (tangent noise variance), b = s_y² (normal noise variance).  All three
# are stored zero-padded to one width nc = nh = na = nb, 4 when each has at most 4 coefficients
# (trailing zeros aside: every valley of the checks) and 8 otherwise, so len(p) = 4 + 3·nc and
# _poly reads nc from p's length.  In the CPU engine p is a stack array of compile-time length:
# Horner's loop then has a compile-time trip count, and the engine's lane loop unrolls it and
# vectorises (a trip count read from p's values kept it scalar).  Two widths, not the exact
# degree, so that the valleys share one kernel per (d, width).  Leading zero coefficients leave
# Horner's values bitwise unchanged for finite x (0·x + 0 = 0, then 0·x + c = c): a polynomial
# gives the same bits at either width.
_NCOEF = 8                  # the most coefficients a polynomial may have (degree ≤ 7)
_NCOEF_SHORT = 4            # the width used when every polynomial fits in it


@inline
def _poly(p, off, x):
    """Value and derivative of the polynomial stored at p[off] = nc, p[off+1 : off+1+nc], with
    nc = (len(p) − 4) / 3 (the layout above: a compile-time constant in the CPU engine)."""
    v = 0.0
    dv = 0.0
    nc = (p.shape[0] - 4) // 3
    for k in range(nc - 1, -1, -1):
        dv = dv * x + v
        v = v * x + p[off + 1 + k]
    return v, dv


@numba.njit(cache=True)
def valley_grad(x, p, out):
    h, dh = _poly(p, 1, x[0])
    s = 0.0
    for i in range(1, x.shape[0]):
        s += x[i] * x[i]
        out[i] = h * x[i]
    out[0] = 0.5 * dh * s


@numba.njit(cache=True)
def valley_noise(x, p, xi, out):
    nh = int(p[1])
    oa = 2 + nh
    na = int(p[oa])
    ob = oa + 1 + na
    a, _ = _poly(p, oa, x[0])
    b, _ = _poly(p, ob, x[0])
    out[0] = math.sqrt(max(a, 0.0)) * xi[0]
    sb = math.sqrt(max(b, 0.0))
    for i in range(1, x.shape[0]):
        out[i] = sb * xi[i]


@numba.njit(cache=True)
def valley_oracle_lanes(X, p, Z, G, V):
    """valley_grad and valley_noise of every lane (column) of X (d, L), draws Z (≥ d, L), lanes
    innermost, with the per-path arithmetic in the same order: Σ y_i² is summed into G[0] first,
    then one pass evaluates h, h', s_x², s_y² and finishes G[0] and V[0], keeping h and s_y in
    G[1] and V[1] until they are overwritten (row 1 last)."""
    d = X.shape[0]
    L = X.shape[1]
    nh = int(p[1])
    oa = 2 + nh
    na = int(p[oa])
    ob = oa + 1 + na
    for ln in range(L):
        G[0, ln] = 0.0
    for i in range(1, d):
        for ln in range(L):
            G[0, ln] += X[i, ln] * X[i, ln]
    for ln in range(L):
        x0 = X[0, ln]
        h, dh = _poly(p, 1, x0)
        a, _ = _poly(p, oa, x0)
        b, _ = _poly(p, ob, x0)
        G[0, ln] = 0.5 * dh * G[0, ln]
        V[0, ln] = math.sqrt(max(a, 0.0)) * Z[0, ln]
        G[1, ln] = h
        V[1, ln] = math.sqrt(max(b, 0.0))
    for i in range(d - 1, 0, -1):                 # row 1 (holding h and s_y) last
        for ln in range(L):
            G[i, ln] = G[1, ln] * X[i, ln]
            V[i, ln] = V[1, ln] * Z[i, ln]


@numba.njit(cache=True)
def valley_loss(x, p):
    h, _ = _poly(p, 1, x[0])
    s = 0.0
    for i in range(1, x.shape[0]):
        s += x[i] * x[i]
    return 0.5 * h * s


@numba.njit(cache=True)
def valley_project(X, p, n_sub, out):
    """Φ for a batch X (N, d): gradient flow keeps y ∥ y0 and, with s = |y|², obeys
    dx/ds = h'(x) / (4 h(x)) (exactly); integrate s from |y0|² down to 0 by RK4.  Points in
    groups of 64, the loop over a group's points innermost (it vectorises; each point's
    arithmetic is the same in any grouping)."""
    n = X.shape[0]
    xs = np.empty(64)
    ds = np.empty(64)
    for r0 in range(0, n, 64):
        L = min(64, n - r0)
        for ln in range(L):
            s0 = 0.0
            for i in range(1, X.shape[1]):
                s0 += X[r0 + ln, i] * X[r0 + ln, i]
            xs[ln] = X[r0 + ln, 0]
            ds[ln] = -s0 / n_sub
        for _ in range(n_sub):
            for ln in range(L):
                x, d = xs[ln], ds[ln]
                h, dh = _poly(p, 1, x)
                k1 = dh / (4.0 * h)
                h, dh = _poly(p, 1, x + 0.5 * d * k1)
                k2 = dh / (4.0 * h)
                h, dh = _poly(p, 1, x + 0.5 * d * k2)
                k3 = dh / (4.0 * h)
                h, dh = _poly(p, 1, x + d * k3)
                k4 = dh / (4.0 * h)
                xs[ln] = x + d * (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0
        for ln in range(L):
            out[r0 + ln] = xs[ln]


@numba.njit(cache=True)
def valley_slow_step_lanes(Z, p, XI, eta, sigma, work):
    """One Euler step (dt = η²) of the valley's slow SDE for a group of paths, Z (d, L), driven
    by the oracle's own draws XI (≥ d, L):
    x ← x − η σ s_x(x) ξ_0 − η² σ² m s_y² h′/(4h)  (y stays 0).  ``eta`` includes λ_k."""
    m = p[0]
    nh = int(p[1])
    oa = 2 + nh
    na = int(p[oa])
    ob = oa + 1 + na
    for ln in range(Z.shape[1]):
        x = Z[0, ln]
        h, dh = _poly(p, 1, x)
        a, _ = _poly(p, oa, x)
        b, _ = _poly(p, ob, x)
        Z[0, ln] = x - eta * sigma * np.sqrt(max(a, 0.0)) * XI[0, ln] - eta * eta * sigma * sigma * m * b * dh / (4.0 * h)


@numba.njit(cache=True)
def valley_slow_step(z, p, xi, eta, sigma, work):
    """One Euler step (dt = η²) of the valley's slow SDE driven by the oracle's own draws:
    x ← x − η σ s_x(x) ξ_0 − η² σ² m s_y² h′/(4h)  (y stays 0).  ``eta`` includes λ_k.
    The per-path reference that :func:`valley_slow_step_lanes` is tested against bitwise."""
    m = p[0]
    nh = int(p[1])
    oa = 2 + nh
    na = int(p[oa])
    ob = oa + 1 + na
    x = z[0]
    h, dh = _poly(p, 1, x)
    a, _ = _poly(p, oa, x)
    b, _ = _poly(p, ob, x)
    z[0] = x - eta * sigma * np.sqrt(max(a, 0.0)) * xi[0] - eta * eta * sigma * sigma * m * b * dh / (4.0 * h)


def _coeffs(name: str, c) -> np.ndarray:
    c = np.atleast_1d(np.asarray(c, dtype=np.float64)).ravel()
    if c.size == 0 or not np.all(np.isfinite(c)):
        raise ValueError(f"{name} must be a non-empty finite list of polynomial coefficients")
    if np.trim_zeros(c, "b").size > _NCOEF:
        raise ValueError(f"{name} must have at most {_NCOEF} coefficients (degree <= {_NCOEF - 1}), "
                         f"got {c.size}")
    return c


def _width(*cs: np.ndarray) -> int:
    """The stored width of the polynomials ``cs``: _NCOEF_SHORT if each fits, else _NCOEF."""
    return _NCOEF_SHORT if max(np.trim_zeros(c, "b").size for c in cs) <= _NCOEF_SHORT else _NCOEF


def _padded(c: np.ndarray, nc: int) -> np.ndarray:
    """The coefficients as stored in the parameter vector: [nc, c_0, .., c_{nc-1}]."""
    out = np.zeros(nc + 1)
    c = np.trim_zeros(c, "b")
    out[0], out[1:1 + c.size] = nc, c
    return out


class Valley(ManifoldProblem):
    """``Valley(h=(1, 0, 1), sx2=(0,), sy2=(1,), m=1)``: L(x, y) = ½ h(x) |y|² (THEORY §8).

    x ∈ R (the coordinate along Γ = {y = 0}), y ∈ R^m; the state is (x, y_1..y_m).
    ``h``, ``sx2``, ``sy2`` are polynomial coefficients in increasing powers of x (at most 8
    each, trailing zeros aside: degree ≤ 7): h (must stay > 0 where the iterates go), the tangent noise variance s_x²(x) and the normal
    noise variance s_y²(x) (each y-coordinate independently).  The noise is
    v = (s_x ξ_0, s_y ξ_1, …, s_y ξ_m), so Σ = diag(s_x², s_y², …).

    Closed forms: Φ(x, y) solves dx/ds = h'/(4h) from s = |y|² to 0 (RK4, exact to ~1e-12 near
    Γ); P = e_0 e_0ᵀ; slow SDE (σ² multiplying Σ)

        dx = σ s_x(x) dW − σ² m s_y²(x) h'(x) / (4 h(x)) dt.

    Parameters
    ----------
    h : coefficients of h(x) (increasing powers).
    sx2 : coefficients of the tangent noise variance s_x²(x).
    sy2 : coefficients of the normal noise variance s_y²(x).
    m : number of normal coordinates y.
    name : label used in results and plots.
    """

    def __init__(self, h: ArrayLike = (1.0, 0.0, 1.0), sx2: ArrayLike = (0.0,),
                 sy2: ArrayLike = (1.0,), m: int = 1, *, name: str = "valley") -> None:
        self.h = _coeffs("h", h)
        self.sx2 = _coeffs("sx2", sx2)
        self.sy2 = _coeffs("sy2", sy2)
        self.m = positive_int("m", m)
        self.manifold_dim = 1
        self.slow_step = valley_slow_step
        self.slow_step_lanes = valley_slow_step_lanes
        nc = _width(self.h, self.sx2, self.sy2)
        params = pack(self.m, _padded(self.h, nc), _padded(self.sx2, nc), _padded(self.sy2, nc))
        super().__init__(dim=1 + self.m, grad=valley_grad, noise=valley_noise, loss=valley_loss,
                         oracle_lanes=valley_oracle_lanes, params=params, n_draws=1 + self.m,
                         noise_dist="normal", name=name)
        self._dh = np.polynomial.polynomial.polyder(self.h)
        self._d2h = np.polynomial.polynomial.polyder(self._dh) if self.h.size > 1 else np.zeros(1)

    @classmethod
    def label_noise_like(cls, h: ArrayLike = (1.0, 0.0, 1.0), c: float = 1.0, sx2: float = 0.0,
                         m: int = 1, **kw) -> "Valley":
        """The valley with s_y² = c·h(x) (label-noise-like) and constant s_x²."""
        c = finite_float("c", c, low=0.0)
        return cls(h=h, sx2=(finite_float("sx2", sx2, low=0.0),), sy2=c * _coeffs("h", h), m=m, **kw)

    def _call_repr(self) -> str:
        return call_repr("Valley", h=self.h, sx2=self.sx2, sy2=self.sy2, m=self.m,
                         name=self._own_name)

    # polynomials ----------------------------------------------------------------------------
    def h_at(self, x: ArrayLike) -> np.ndarray | float:
        """h(x), elementwise over the along-Γ coordinate x (shape of ``x``)."""
        return np.polynomial.polynomial.polyval(x, self.h)

    def dh_at(self, x: ArrayLike) -> np.ndarray | float:
        """h′(x), shape of ``x``."""
        return np.polynomial.polynomial.polyval(x, self._dh)

    def d2h_at(self, x: ArrayLike) -> np.ndarray | float:
        """h″(x), shape of ``x``."""
        return np.polynomial.polynomial.polyval(x, self._d2h)

    def sx2_at(self, x: ArrayLike) -> np.ndarray | float:
        """Tangent noise variance s_x²(x), shape of ``x``."""
        return np.polynomial.polynomial.polyval(x, self.sx2)

    def sy2_at(self, x: ArrayLike) -> np.ndarray | float:
        """Normal noise variance s_y²(x), shape of ``x``."""
        return np.polynomial.polynomial.polyval(x, self.sy2)

    # manifold pieces ------------------------------------------------------------------------
    def project(self, x: ArrayLike, n_sub: int = 16) -> np.ndarray:
        """Φ(x, y) = (x∞, 0): dx/ds = h′/(4h) integrated from s = |y|² to 0 by ``n_sub`` RK4
        steps; shape of ``x`` ((d,) or (N, d))."""
        x = np.asarray(x, dtype=np.float64)
        X = np.ascontiguousarray(x.reshape(-1, self.dim))
        out = np.empty(X.shape[0])
        valley_project(X, self.params, n_sub, out)
        Z = np.zeros_like(X)
        Z[:, 0] = out
        return Z.reshape(x.shape)

    def tangent_projector(self, zeta: ArrayLike) -> np.ndarray:
        """P = e_0 e_0ᵀ, (d, d) or (N, d, d)."""
        zeta = np.asarray(zeta, dtype=np.float64)
        P = np.zeros(zeta.shape[:-1] + (self.dim, self.dim))
        P[..., 0, 0] = 1.0
        return P

    def hessian_at(self, x: ArrayLike) -> np.ndarray:
        """∇²L(x, y), (d, d) or (N, d, d)."""
        x = np.asarray(x, dtype=np.float64)
        X, y = x[..., 0], x[..., 1:]
        H = np.zeros(x.shape[:-1] + (self.dim, self.dim))
        H[..., 0, 0] = 0.5 * self.d2h_at(X) * np.sum(y * y, axis=-1)
        H[..., 0, 1:] = self.dh_at(X)[..., None] * y
        H[..., 1:, 0] = H[..., 0, 1:]
        idx = np.arange(1, self.dim)
        H[..., idx, idx] = self.h_at(X)[..., None]
        return H

    def noise_sqrt_at(self, x: ArrayLike) -> np.ndarray:
        """S = diag(s_x, s_y, …, s_y), (d, d) or (N, d, d)."""
        x = np.asarray(x, dtype=np.float64)
        X = x[..., 0]
        S = np.zeros(x.shape[:-1] + (self.dim, self.dim))
        S[..., 0, 0] = np.sqrt(np.maximum(self.sx2_at(X), 0.0))
        idx = np.arange(1, self.dim)
        S[..., idx, idx] = np.sqrt(np.maximum(self.sy2_at(X), 0.0))[..., None]
        return S

    def third_contraction(self, x: ArrayLike, M: ArrayLike) -> np.ndarray:
        """∂²(∇L)[M] for L = ½ h(x)|y|²: the third derivatives are
        ∂xxx = ½h'''|y|², ∂xxy_i = h'' y_i, ∂xy_iy_j = h' δ_ij (all others 0)."""
        x = np.asarray(x, dtype=np.float64)
        M = np.asarray(M, dtype=np.float64)
        X, y = x[..., 0], x[..., 1:]
        d3h = np.polynomial.polynomial.polyval(X, np.polynomial.polynomial.polyder(self.h, 3)) \
            if self.h.size > 3 else np.zeros_like(X)
        d2h, dh = self.d2h_at(X), self.dh_at(X)
        Mxx = M[..., 0, 0]
        Mxy = M[..., 0, 1:]
        Myy = M[..., 1:, 1:]
        out = np.zeros(x.shape)
        # component x: Σ_jk M_jk ∂x∂j∂k L
        out[..., 0] = (Mxx * 0.5 * d3h * np.sum(y * y, axis=-1)
                       + 2.0 * d2h * np.sum(Mxy * y, axis=-1)
                       + dh * np.trace(Myy, axis1=-2, axis2=-1))
        # component y_i: M_xx ∂y_i x x + 2 Σ_j M_{x y_j} ∂y_i x y_j
        out[..., 1:] = Mxx[..., None] * d2h[..., None] * y + 2.0 * dh[..., None] * Mxy
        return out

    def slow_drift(self, zeta: ArrayLike, sigma: float) -> np.ndarray:
        """Closed form (THEORY §8): b = −σ² m s_y² h′ / (4h) along x (zero normal part)."""
        zeta = np.asarray(zeta, dtype=np.float64)
        X = zeta[..., 0]
        out = np.zeros(zeta.shape)
        out[..., 0] = -sigma ** 2 * self.m * self.sy2_at(X) * self.dh_at(X) / (4.0 * self.h_at(X))
        return out

    def label_noise_ou(self) -> tuple[float, float, float] | None:
        """For h = 1 + q x², s_y² = c h, s_x² = a (constants): the slow SDE is the OU process
        dx = −θ x dt + σ√a dW with θ = c q m σ²/2.  Returns (c, q, a) or None."""
        h = np.trim_zeros(self.h, "b")
        if h.size != 3 or h[0] != 1.0 or h[1] != 0.0:
            return None
        sy = np.trim_zeros(self.sy2, "b")
        if sy.size != 3 or not np.allclose(sy / sy[0], h) or np.trim_zeros(self.sx2, "b").size > 1:
            return None
        return float(sy[0]), float(h[2]), float(self.sx2[0])

    def ou_moments(self, x0: float, t: ArrayLike, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean and variance of x(t) under the slow SDE when :meth:`label_noise_ou`
        applies: mean x0 e^{−θt}, variance σ² a (1 − e^{−2θt}) / (2θ); each of the shape of
        ``t`` (THEORY §8)."""
        c = self.label_noise_ou()
        if c is None:
            raise ValueError("ou_moments needs h = 1 + q x², s_y² = c·h and constant s_x²")
        cc, q, a = c
        theta = cc * q * self.m * sigma ** 2 / 2.0
        t = np.asarray(t, dtype=np.float64)
        mean = x0 * np.exp(-theta * t)
        var = sigma ** 2 * a * (-np.expm1(-2.0 * theta * t)) / (2.0 * theta) if theta > 0 \
            else sigma ** 2 * a * t
        return mean, var

    def ou_euler_moments(self, x0: float, eta: float, steps: ArrayLike,
                         sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean and variance after ``steps`` steps of the coupled Euler scheme
        (:func:`sdeverify.slow_sde.coupled_slow_sde`, dt = η²) of the OU slow SDE:
        X_{k+1} = ρ X_k − ησ√a ξ_k, ρ = 1 − θη², so mean ρ^K x0 and variance
        η²σ²a (1 − ρ^{2K}) / (1 − ρ²), each of the shape of ``steps``.  Its difference from
        :meth:`ou_moments` is O(η²)."""
        c = self.label_noise_ou()
        if c is None:
            raise ValueError("ou_euler_moments needs h = 1 + q x², s_y² = c·h and constant s_x²")
        cc, q, a = c
        theta = cc * q * self.m * sigma ** 2 / 2.0
        rho = 1.0 - theta * eta ** 2
        K = np.asarray(steps, dtype=np.float64)
        mean = x0 * rho ** K
        var = eta ** 2 * sigma ** 2 * a * (1.0 - rho ** (2 * K)) / (1.0 - rho ** 2) if theta > 0 \
            else eta ** 2 * sigma ** 2 * a * K
        return mean, var

    def ou_euler_moments_scheduled(self, x0: float, dt: float, lam: ArrayLike,
                                   sigma: float) -> tuple[float, float]:
        """Exact mean and variance after ``len(lam)`` Euler steps of size ``dt`` of the OU
        slow SDE under a learning-rate schedule λ_k (Thm 5.5 with η_t = λ_t η: drift λ²,
        diffusion λ): X_{k+1} = ρ_k X_k + λ_k σ√(a dt) ξ_k, ρ_k = 1 − θ λ_k² dt, so
        mean_{k+1} = ρ_k mean_k and var_{k+1} = ρ_k² var_k + λ_k² σ² a dt (a plain
        recursion, independent of the integrators it is compared with)."""
        c = self.label_noise_ou()
        if c is None:
            raise ValueError("ou_euler_moments_scheduled needs h = 1 + q x², s_y² = c·h and "
                             "constant s_x²")
        cc, q, a = c
        theta = cc * q * self.m * sigma ** 2 / 2.0
        mean, var = float(x0), 0.0
        for lk in np.asarray(lam, dtype=np.float64).ravel():
            rho = 1.0 - theta * lk * lk * dt
            mean, var = rho * mean, rho * rho * var + lk * lk * sigma ** 2 * a * dt
        return mean, var


# --------------------------------------------------------------------------------------------
# Sphere: L(x) = ¼ (‖x‖² − 1)²
# --------------------------------------------------------------------------------------------
@numba.njit(cache=True)
def sphere_grad(x, p, out):
    r2 = 0.0
    for i in range(x.shape[0]):
        r2 += x[i] * x[i]
    c = r2 - 1.0
    for i in range(x.shape[0]):
        out[i] = c * x[i]


@numba.njit(cache=True)
def sphere_noise(x, p, xi, out):
    s = p[0]
    for i in range(x.shape[0]):
        out[i] = s * xi[i]


@numba.njit(cache=True)
def sphere_loss(x, p):
    r2 = 0.0
    for i in range(x.shape[0]):
        r2 += x[i] * x[i]
    return 0.25 * (r2 - 1.0) ** 2


@numba.njit(cache=True)
def sphere_slow_step_lanes(Z, p, XI, eta, sigma, work):
    """One step of the sphere's slow SDE for a group of paths, Z (d, L), driven by the
    oracle's draws XI (≥ d, L): ζ ← Φ(ζ − η σ s P_ζ ξ).  (The normal Itô drift is supplied by
    the projection Φ(x) = x/‖x‖.)  Loops over lanes innermost (vectorised); ``work`` ≥ (2, L)."""
    s = p[0]
    d, L = Z.shape
    dot = work[0]
    nrm = work[1]
    for ln in range(L):
        dot[ln] = 0.0
        nrm[ln] = 0.0
    for i in range(d):
        for ln in range(L):
            dot[ln] += Z[i, ln] * XI[i, ln]
    for i in range(d):
        for ln in range(L):
            Z[i, ln] -= eta * sigma * s * (XI[i, ln] - dot[ln] * Z[i, ln])
            nrm[ln] += Z[i, ln] * Z[i, ln]
    for ln in range(L):
        nrm[ln] = np.sqrt(nrm[ln])
    for i in range(d):
        for ln in range(L):
            Z[i, ln] /= nrm[ln]


@numba.njit(cache=True)
def sphere_slow_step(z, p, xi, eta, sigma, work):
    """One step of the sphere's slow SDE driven by the oracle's draws: ζ ← Φ(ζ − η σ s P_ζ ξ).
    (The normal Itô drift is supplied by the projection Φ(x) = x/‖x‖.)  The per-path
    reference that :func:`sphere_slow_step_lanes` is tested against bitwise."""
    s = p[0]
    dot = 0.0
    for i in range(z.shape[0]):
        dot += z[i] * xi[i]
    nrm = 0.0
    for i in range(z.shape[0]):
        z[i] -= eta * sigma * s * (xi[i] - dot * z[i])
        nrm += z[i] * z[i]
    nrm = np.sqrt(nrm)
    for i in range(z.shape[0]):
        z[i] /= nrm


class Sphere(ManifoldProblem):
    """``Sphere(dim=3, noise_std=1.0)``: L(x) = ¼(‖x‖² − 1)², Γ the unit sphere, Σ = s² I.

    Φ(x) = x/‖x‖ exactly (gradient flow is radial), P = I − ζζᵀ, ∇²L(ζ) = 2ζζᵀ on Γ.
    Slow SDE: Brownian motion on the sphere with rate σ²s², so
    E⟨ζ_t, ζ_0⟩ = exp(−(d − 1) σ² s² t / 2) (THEORY §8).

    Parameters
    ----------
    dim : dimension d ≥ 2 (Γ = S^{d−1}).
    noise_std : s ≥ 0, the noise standard deviation per coordinate.
    name : label used in results and plots.
    """

    def __init__(self, dim: int = 3, noise_std: float = 1.0, *, name: str = "sphere") -> None:
        dim = positive_int("dim", dim)
        if dim < 2:
            raise ValueError(f"dim must be >= 2 for a sphere, got {dim}")
        self.noise_std = finite_float("noise_std", noise_std, low=0.0)
        self.manifold_dim = dim - 1
        self.slow_step = sphere_slow_step
        self.slow_step_lanes = sphere_slow_step_lanes
        super().__init__(dim=dim, grad=sphere_grad, noise=sphere_noise, loss=sphere_loss,
                         params=np.array([self.noise_std]), n_draws=dim, noise_dist="normal",
                         name=name)

    def _call_repr(self) -> str:
        return call_repr("Sphere", self.dim, self.noise_std, name=self._own_name)

    def project(self, x: ArrayLike) -> np.ndarray:
        """Φ(x) = x/‖x‖, shape of ``x``."""
        x = np.asarray(x, dtype=np.float64)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def tangent_projector(self, zeta: ArrayLike) -> np.ndarray:
        """P = I − ζζᵀ, (d, d) or (N, d, d)."""
        z = np.asarray(zeta, dtype=np.float64)
        return np.eye(self.dim) - z[..., :, None] * z[..., None, :]

    def hessian_at(self, x: ArrayLike) -> np.ndarray:
        """∇²L(x) = (‖x‖² − 1) I + 2xxᵀ, (d, d) or (N, d, d)."""
        x = np.asarray(x, dtype=np.float64)
        r2 = np.sum(x * x, axis=-1)
        return (r2 - 1.0)[..., None, None] * np.eye(self.dim) + 2.0 * x[..., :, None] * x[..., None, :]

    def noise_sqrt_at(self, x: ArrayLike) -> np.ndarray:
        """S = s I, (d, d) or (N, d, d)."""
        x = np.asarray(x, dtype=np.float64)
        return np.broadcast_to(self.noise_std * np.eye(self.dim), x.shape[:-1] + (self.dim, self.dim)).copy()

    def third_contraction(self, x: ArrayLike, M: ArrayLike) -> np.ndarray:
        """∂_i∂_j∂_k L = 2(δ_ij x_k + δ_ik x_j + δ_jk x_i) ⇒ ∂²(∇L)[M] = 2((M + Mᵀ)x + tr(M) x)."""
        x = np.asarray(x, dtype=np.float64)
        M = np.asarray(M, dtype=np.float64)
        Ms = M + np.swapaxes(M, -1, -2)
        return 2.0 * (np.einsum("...ij,...j->...i", Ms, x) + np.trace(M, axis1=-2, axis2=-1)[..., None] * x)

    def slow_drift(self, zeta: ArrayLike, sigma: float) -> np.ndarray:
        """Closed form: −σ² s² (d − 1)/2 · ζ (the Itô term of Brownian motion on the sphere)."""
        zeta = np.asarray(zeta, dtype=np.float64)
        return -0.5 * sigma ** 2 * self.noise_std ** 2 * (self.dim - 1) * zeta

    def correlation_decay(self, t: ArrayLike, sigma: float) -> np.ndarray:
        """E⟨ζ_t, ζ_0⟩ = exp(−(d − 1) σ² s² t / 2) (THEORY §8), shape of ``t``."""
        return np.exp(-0.5 * (self.dim - 1) * sigma ** 2 * self.noise_std ** 2 * np.asarray(t, dtype=np.float64))

    def cos2_mean(self, t: ArrayLike, sigma: float) -> np.ndarray:
        """E⟨ζ_t, ζ_0⟩² = 1/d + (1 − 1/d) exp(−d σ² s² t) (degree-2 spherical harmonics:
        eigenvalue 2d of −Δ, generator ½σ²s²Δ); shape of ``t``."""
        d = self.dim
        return 1.0 / d + (1.0 - 1.0 / d) * np.exp(-d * sigma ** 2 * self.noise_std ** 2 * np.asarray(t, dtype=np.float64))

    def cos_cdf(self, u: ArrayLike, t: float, sigma: float, n_terms: int = 400) -> np.ndarray:
        """CDF of ⟨ζ_t, ζ_0⟩ for Brownian motion on S² (d = 3 only), from the Legendre series
        of the heat kernel: p(u) = Σ_l (2l+1)/2 P_l(u) e^{−l(l+1)σ²s²t/2}, and
        ∫_{−1}^{u} P_l = (P_{l+1}(u) − P_{l−1}(u)) / (2l + 1).  Shape of ``u``."""
        if self.dim != 3:
            raise ValueError("cos_cdf is implemented for d = 3 only")
        from scipy.special import eval_legendre
        u = np.clip(np.asarray(u, dtype=np.float64), -1.0, 1.0)
        rate = sigma ** 2 * self.noise_std ** 2 * float(t) / 2.0
        out = 0.5 * (u + 1.0)
        for l in range(1, n_terms):
            w = np.exp(-l * (l + 1) * rate)
            if w < 1e-17:
                break
            out = out + 0.5 * w * (eval_legendre(l + 1, u) - eval_legendre(l - 1, u))
        return np.clip(out, 0.0, 1.0)

    def euler_moments(self, eta: float, steps: ArrayLike,
                      sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact E⟨ζ_K, ζ_0⟩ and E⟨ζ_K, ζ_0⟩² for the coupled Euler scheme
        ζ ← (ζ + w)/‖ζ + w‖, w = −ησs Pξ (tangent, |w|² = η²σ²s² χ²_{d−1}):
        E u' = ρ u with ρ = E(1 + |w|²)^{−1/2};  E u'² = A u² + B (1 − u²) with
        A = E 1/(1 + |w|²), B = E |w|²/((d − 1)(1 + |w|²)).  Differs from the slow SDE by O(η²).
        Each of the shape of ``steps``."""
        from scipy.special import gammaln, roots_genlaguerre
        k = self.dim - 1
        c = (eta * sigma * self.noise_std) ** 2
        # q ~ χ²_k: E f(q) = Σ w_i f(2 y_i) / Γ(k/2) with generalised Gauss–Laguerre nodes
        # (weight y^{k/2−1} e^{−y}); the integrands are analytic far beyond [0, ∞) for small c.
        y, w = roots_genlaguerre(80, k / 2.0 - 1.0)
        w = w / np.exp(gammaln(k / 2.0))
        q = 2.0 * y
        rho = float(np.sum(w / np.sqrt(1.0 + c * q)))
        A = float(np.sum(w / (1.0 + c * q)))
        B = float(np.sum(w * c * q / (k * (1.0 + c * q))))
        K = np.asarray(steps, dtype=np.float64)
        m1 = rho ** K
        lam = A - B                       # m2_{k+1} = B + (A − B) m2_k, m2_0 = 1
        fix = B / (1.0 - lam)
        m2 = fix + (1.0 - fix) * lam ** K
        return m1, m2


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
