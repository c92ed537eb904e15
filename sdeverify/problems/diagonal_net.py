"""A diagonal linear network on generated sparse regression data, with label noise.

    f_j(w) = ⟨u⊙u − v⊙v, a_j⟩,   L(w) = (1/2n) Σ_j (f_j(w) − y_j)²,   w = (u, v) ∈ R^{2D},

with n < D samples, so the interpolating solutions Γ = {w : f_j(w) = y_j ∀j} form a manifold
of dimension 2D − n (where the Jacobian J, rows ∇f_j = (2u⊙a_j, −2v⊙a_j), has rank n).

Label noise: the oracle is the gradient of the loss with every label perturbed,
y_j → y_j + σ√n ξ_j.  That adds σ·v with

    v = −(1/√n) Σ_j ξ_j ∇f_j(w) = −Jᵀξ/√n,      Σ(w) = Cov v = JᵀJ / n,

which on Γ equals ∇²L (the label-noise covariance of Blanc et al. 2020; Li, Wang, Arora 2021
§5).  One oracle call costs O(nD): z = Aᵀξ/√n, v = (−2u⊙z, 2v⊙z).

Pieces of the slow SDE (:class:`~sdeverify.problems.manifolds.ManifoldProblem`):

* Φ: gradient flow keeps u_i(t) = u_i(0) e^{−2G_i}, v_i(t) = v_i(0) e^{2G_i} with
  G = Aᵀq/n, q(t) = ∫_0^t r ds ∈ R^n, r the residual.  The limit is the unique q solving
  A(u0² e^{−4Aᵀq/n} − v0² e^{4Aᵀq/n}) = y, the maximiser of a strictly concave function,
  found by damped Newton (:meth:`DiagonalNet.project`); :meth:`DiagonalNet.gradient_flow`
  integrates the flow numerically instead (the cross-check).
* P = I − Jᵀ(JJᵀ)⁻¹J, ∇²L = (JᵀJ + Σ_j r_j H_j)/n with H_j = diag(2a_j, −2a_j),
  ∂²(∇L)[M] = (1/n) Σ_j [tr(M H_j) ∇f_j + 2 H_j M ∇f_j] (f_j quadratic: ∂³f_j = 0).
* On Γ, Σ_∥ = PΣP = 0: the slow SDE is the deterministic flow
  dζ/dt = −(σ²/4) P ∇ tr ∇²L(ζ), which lowers the sharpness
  tr ∇²L = (4/n) Σ_ij a_ji² (u_i² + v_i²) — a weighted ℓ1 norm of β = u⊙u − v⊙v at its
  minimum u_i v_i = 0: the drift favours sparse solutions.

Parameter layout ``p = [n, D, A (n·D, row-major), y (n)]``.  ``dn_oracle_lanes`` computes
``dn_grad`` and ``dn_noise`` for a block of paths at once, lanes innermost, so that the CPU
engine vectorises the O(nD) products over paths (d = 2D is above the per-path fused step's
limit); it gives the per-path functions' bits in float64.
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
from .base import pack
from .manifolds import ManifoldProblem

__all__ = ["DiagonalNet"]


@inline
def dn_residual_g(x, p, g):
    """g = Aᵀ r / n with r = A(u² − v²) − y; returns nothing (g filled)."""
    n = int(p[0])
    D = x.shape[0] // 2          # = p[1]; from the shape, a compile-time constant in the engine
    for i in range(D):
        g[i] = 0.0
    for j in range(n):
        r = -p[2 + n * D + j]
        base = 2 + j * D
        for i in range(D):
            r += p[base + i] * (x[i] * x[i] - x[D + i] * x[D + i])
        for i in range(D):
            g[i] += p[base + i] * r
    for i in range(D):
        g[i] /= n


@numba.njit(cache=True)
def dn_grad(x, p, out):
    D = x.shape[0] // 2
    # use out[D:] as scratch for g (then overwrite)
    g = out[D:]
    dn_residual_g(x, p, g)
    for i in range(D):
        gi = g[i]
        out[i] = 2.0 * x[i] * gi
        out[D + i] = -2.0 * x[D + i] * gi


@numba.njit(cache=True)
def dn_noise(x, p, xi, out):
    n = xi.shape[0]              # = p[0] (n_draws = n); the shapes are compile-time in the engine
    D = x.shape[0] // 2
    s = 1.0 / math.sqrt(n)
    for i in range(D):
        z = 0.0
        for j in range(n):
            z += p[2 + j * D + i] * xi[j]
        z *= s
        out[i] = -2.0 * x[i] * z
        out[D + i] = 2.0 * x[D + i] * z


@numba.njit(cache=True)
def dn_oracle_lanes(X, p, Z, G, V):
    """dn_grad and dn_noise of every lane (column) of X (2D, L), draws Z (≥ n, L), into G and
    V (2D, L), with the per-path functions' arithmetic in the same order; until they are
    overwritten, β = u⊙u − v⊙v is kept in V[D:], the residual of sample j in V[0] and Aᵀr
    in G[D:]."""
    n = int(p[0])
    D = X.shape[0] // 2
    L = X.shape[1]
    for i in range(D):
        for ln in range(L):
            G[D + i, ln] = 0.0
            V[D + i, ln] = X[i, ln] * X[i, ln] - X[D + i, ln] * X[D + i, ln]
    for j in range(n):
        base = 2 + j * D
        y = p[2 + n * D + j]
        for ln in range(L):
            V[0, ln] = -y
        for i in range(D):
            a = p[base + i]
            for ln in range(L):
                V[0, ln] += a * V[D + i, ln]
        for i in range(D):
            a = p[base + i]
            for ln in range(L):
                G[D + i, ln] += a * V[0, ln]
    for i in range(D):
        for ln in range(L):
            gi = G[D + i, ln] / n
            G[i, ln] = 2.0 * X[i, ln] * gi
            G[D + i, ln] = -2.0 * X[D + i, ln] * gi
    s = 1.0 / math.sqrt(n)
    for i in range(D):
        for ln in range(L):
            V[i, ln] = 0.0
        for j in range(n):
            a = p[2 + j * D + i]
            for ln in range(L):
                V[i, ln] += a * Z[j, ln]
        for ln in range(L):
            z = V[i, ln] * s
            V[i, ln] = -2.0 * X[i, ln] * z
            V[D + i, ln] = 2.0 * X[D + i, ln] * z


@numba.njit(cache=True)
def dn_loss(x, p):
    n = int(p[0])
    D = int(p[1])
    tot = 0.0
    for j in range(n):
        r = -p[2 + n * D + j]
        for i in range(D):
            r += p[2 + j * D + i] * (x[i] * x[i] - x[D + i] * x[D + i])
        tot += r * r
    return 0.5 * tot / n


@numba.njit(cache=True)
def dn_sharpness(x, p):
    """tr ∇²L on Γ: (4/n) Σ_ij a_ji² (u_i² + v_i²) (the trace of JᵀJ/n at any point)."""
    n = int(p[0])
    D = int(p[1])
    tot = 0.0
    for j in range(n):
        for i in range(D):
            a = p[2 + j * D + i]
            tot += a * a * (x[i] * x[i] + x[D + i] * x[D + i])
    return 4.0 * tot / n


@numba.njit(cache=True)
def _cholesky_solve(J, b, x):
    """x = J⁻¹ b for a symmetric positive definite J (n × n), by Cholesky in place of J
    (J = A diag(h) Aᵀ with h > 0 and A of full row rank).  A few lines instead of
    ``np.linalg.solve``, whose LAPACK binding costs seconds of compilation."""
    n = b.shape[0]
    for j in range(n):
        d = J[j, j]
        for k in range(j):
            d -= J[j, k] * J[j, k]
        d = np.sqrt(d)
        J[j, j] = d
        for i in range(j + 1, n):
            acc = J[i, j]
            for k in range(j):
                acc -= J[i, k] * J[j, k]
            J[i, j] = acc / d
    for i in range(n):                       # L y = b
        acc = b[i]
        for k in range(i):
            acc -= J[i, k] * x[k]
        x[i] = acc / J[i, i]
    for i in range(n - 1, -1, -1):           # Lᵀ x = y
        acc = x[i]
        for k in range(i + 1, n):
            acc -= J[k, i] * x[k]
        x[i] = acc / J[i, i]


@numba.njit(cache=True)
def dn_project(X, p, tol, max_iter, out):
    """Φ for a batch X (N, 2D): damped Newton on the concave dual potential
    Ψ(q) = −(n/4) Σ_i (u_i² e^{−s_i} + v_i² e^{s_i}) − yᵀq, s = 4Aᵀq/n (module docstring);
    the limit of gradient flow is (u e^{−s/2}, v e^{s/2}) at the maximiser."""
    n = int(p[0])
    D = int(p[1])
    A = p[2:2 + n * D].reshape((n, D))
    y = p[2 + n * D:2 + n * D + n]
    ymax = 1.0
    for j in range(n):
        ymax = max(ymax, abs(y[j]))
    q = np.zeros(n)
    s = np.zeros(D)
    q2 = np.zeros(n)
    s2 = np.zeros(D)
    F = np.zeros(n)
    Jq = np.zeros((n, n))
    hd = np.zeros(D)
    dq = np.zeros(n)
    u2 = np.empty(D)
    v2 = np.empty(D)
    for r in range(X.shape[0]):
        psi = 0.0
        for i in range(D):               # plain loops: slice expressions cost seconds to compile
            u2[i] = X[r, i] * X[r, i]
            v2[i] = X[r, D + i] * X[r, D + i]
            psi -= 0.25 * n * (u2[i] + v2[i])
            s[i] = 0.0
        for j in range(n):
            q[j] = 0.0
        for it in range(max_iter):
            fmax = 0.0
            for j in range(n):
                acc = -y[j]
                for i in range(D):
                    acc += A[j, i] * (u2[i] * np.exp(-s[i]) - v2[i] * np.exp(s[i]))
                F[j] = acc
                fmax = max(fmax, abs(acc))
            if fmax <= tol * ymax:
                break
            for i in range(D):
                hd[i] = (4.0 / n) * (u2[i] * np.exp(-s[i]) + v2[i] * np.exp(s[i]))
            for j in range(n):
                for k in range(n):
                    acc = 0.0
                    for i in range(D):
                        acc += A[j, i] * hd[i] * A[k, i]
                    Jq[j, k] = acc
            _cholesky_solve(Jq, F, dq)
            slope = 0.0
            for j in range(n):
                slope += F[j] * dq[j]
            step = 1.0
            while True:
                for j in range(n):
                    q2[j] = q[j] + step * dq[j]
                psi2 = 0.0
                for i in range(D):
                    acc = 0.0
                    for j in range(n):
                        acc += A[j, i] * q2[j]
                    s2[i] = 4.0 * acc / n
                    psi2 -= 0.25 * n * (u2[i] * np.exp(-s2[i]) + v2[i] * np.exp(s2[i]))
                for j in range(n):
                    psi2 -= y[j] * q2[j]
                # near the solution Ψ is flat to rounding: take full Newton steps there
                if psi2 >= psi + 0.25 * step * slope or step < 1e-12 or fmax < 1e-6 * ymax:
                    break
                step *= 0.5
            for j in range(n):
                q[j] = q2[j]
            for i in range(D):
                s[i] = s2[i]
            psi = psi2
        for i in range(D):
            out[r, i] = X[r, i] * np.exp(-0.5 * s[i])
            out[r, D + i] = X[r, D + i] * np.exp(0.5 * s[i])


class DiagonalNet(ManifoldProblem):
    """``DiagonalNet(features, targets)`` or ``DiagonalNet.generate(n, D, sparsity, seed)``.

    State w = (u, v) ∈ R^{2D}; β = u⊙u − v⊙v is the regression vector.  See the module
    docstring for the loss, the label-noise oracle and the manifold pieces; the slow SDE is
    that of Thm. 5.5 (docs/theory.md §8).

    Parameters
    ----------
    features : (n, D) matrix A, n < D.
    targets : (n,) labels y.
    name : label used in results and plots.
    """

    def __init__(self, features: ArrayLike, targets: ArrayLike, *,
                 name: str = "diagonal_net") -> None:
        A = np.asarray(features, dtype=np.float64)
        y = np.asarray(targets, dtype=np.float64)
        if A.ndim != 2:
            raise ValueError(f"features must be an (n, D) matrix, got shape {A.shape}")
        n, D = A.shape
        if y.shape != (n,):
            raise ValueError(f"targets must have shape ({n},), got {y.shape}")
        if n >= D:
            raise ValueError(f"need fewer samples than features (n < D) for a manifold of "
                             f"interpolating solutions, got n={n}, D={D}")
        if not (np.all(np.isfinite(A)) and np.all(np.isfinite(y))):
            raise ValueError("features and targets must be finite")
        self.features, self.targets = A, y
        self.n, self.D = n, D
        self.manifold_dim = 2 * D - n
        super().__init__(dim=2 * D, grad=dn_grad, noise=dn_noise, loss=dn_loss,
                         oracle_lanes=dn_oracle_lanes, params=pack(n, D, A, y), n_draws=n,
                         noise_dist="normal", name=name)

    @classmethod
    def generate(cls, n: int = 5, D: int = 10, sparsity: int = 2, *, seed: int = 0,
                 scale: float = 1.0) -> "DiagonalNet":
        """Gaussian features a_j ~ N(0, I_D), a planted β* with ``sparsity`` non-zero entries
        (±``scale``), noiseless targets y = Aβ*."""
        n = positive_int("n", n)
        D = positive_int("D", D)
        sparsity = positive_int("sparsity", sparsity)
        if sparsity > D:
            raise ValueError(f"sparsity must be <= D={D}, got {sparsity}")
        g = np.random.default_rng(seed)
        A = g.standard_normal((n, D))
        beta = np.zeros(D)
        idx = g.choice(D, sparsity, replace=False)
        beta[idx] = finite_float("scale", scale, low=0.0, low_open=True) * g.choice([-1.0, 1.0], sparsity)
        out = cls(A, A @ beta)
        out.beta_star = beta
        return out

    def _call_repr(self) -> str:
        return call_repr("DiagonalNet", self.features, self.targets, name=self._own_name)

    # helpers -----------------------------------------------------------------------------
    def split(self, w: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(u, v), each (…, D), from w = (u, v) (…, 2D)."""
        w = np.asarray(w, dtype=np.float64)
        return w[..., :self.D], w[..., self.D:]

    def beta(self, w: ArrayLike) -> np.ndarray:
        """The regression vector β = u⊙u − v⊙v, (…, D)."""
        u, v = self.split(w)
        return u * u - v * v

    def residual(self, w: ArrayLike) -> np.ndarray:
        """r = Aβ − y, (…, n)."""
        return self.beta(w) @ self.features.T - self.targets

    def jacobian(self, w: ArrayLike) -> np.ndarray:
        """J (…, n, 2D): rows ∇f_j = (2u⊙a_j, −2v⊙a_j)."""
        u, v = self.split(w)
        A = self.features
        return np.concatenate([2.0 * u[..., None, :] * A, -2.0 * v[..., None, :] * A], axis=-1)

    def _Hj(self) -> np.ndarray:
        """diag of H_j = ∇²f_j: (n, 2D)."""
        return np.concatenate([2.0 * self.features, -2.0 * self.features], axis=-1)

    # manifold pieces ------------------------------------------------------------------------
    def project(self, x: ArrayLike, tol: float = 1e-13, max_iter: int = 100) -> np.ndarray:
        """Φ(w): the limit of gradient flow, via the dual Newton solve (module docstring);
        shape of ``x`` ((2D,) or (N, 2D))."""
        x = np.asarray(x, dtype=np.float64)
        X = np.ascontiguousarray(x.reshape(-1, self.dim))
        out = np.empty_like(X)
        dn_project(X, self.params, tol, max_iter, out)
        return out.reshape(x.shape)

    def gradient_flow(self, w: ArrayLike, t_max: float = 200.0, rtol: float = 1e-12) -> np.ndarray:
        """Φ(w) by integrating ẇ = −∇L(w) numerically (scipy LSODA/Radau) to ``t_max``; one
        point (2D,)."""
        from scipy.integrate import solve_ivp
        w = np.asarray(w, dtype=np.float64)
        sol = solve_ivp(lambda t, z: -self.gradient(z), (0.0, t_max), w, method="LSODA",
                        rtol=rtol, atol=1e-14)
        return sol.y[:, -1]

    def tangent_projector(self, zeta: ArrayLike) -> np.ndarray:
        """P = I − Jᵀ(JJᵀ)⁻¹J, (2D, 2D) or (N, 2D, 2D)."""
        J = self.jacobian(zeta)
        G = J @ np.swapaxes(J, -1, -2)
        return np.eye(self.dim) - np.swapaxes(J, -1, -2) @ np.linalg.solve(G, J)

    def hessian_at(self, x: ArrayLike) -> np.ndarray:
        """∇²L = (JᵀJ + Σ_j r_j H_j)/n, (2D, 2D) or (N, 2D, 2D)."""
        x = np.asarray(x, dtype=np.float64)
        J = self.jacobian(x)
        r = self.residual(x)
        H = np.swapaxes(J, -1, -2) @ J
        diag = r @ self._Hj()                      # Σ_j r_j diag(H_j)
        idx = np.arange(self.dim)
        H[..., idx, idx] += diag
        return H / self.n

    def noise_sqrt_at(self, x: ArrayLike) -> np.ndarray:
        """S = −Jᵀ/√n, an (2D × n) factor (S Sᵀ = Σ; not square)."""
        return -np.swapaxes(self.jacobian(x), -1, -2) / np.sqrt(self.n)

    def third_contraction(self, x: ArrayLike, M: ArrayLike) -> np.ndarray:
        """∂²(∇L)[M] = (1/n) Σ_j [tr(M H_j) ∇f_j + 2 H_j M ∇f_j], (2D,) or (N, 2D)."""
        x = np.asarray(x, dtype=np.float64)
        M = np.asarray(M, dtype=np.float64)
        J = self.jacobian(x)                       # (…, n, 2D)
        Hd = self._Hj()                            # (n, 2D)
        trMH = np.einsum("...kk,jk->...j", M, Hd)  # tr(M H_j)
        MJ = np.einsum("...kl,...jl->...jk", M, J)  # (M ∇f_j)_k
        out = np.einsum("...j,...jk->...k", trMH, J) + 2.0 * np.einsum("jk,...jk->...k", Hd, MJ)
        return out / self.n

    def sharpness(self, zeta: ArrayLike) -> np.ndarray:
        """tr(JᵀJ/n) = (4/n) Σ_ij a_ji² (u_i² + v_i²) (= tr ∇²L on Γ); scalar or (N,)."""
        u, v = self.split(zeta)
        return (4.0 / self.n) * ((u * u + v * v) @ (self.features ** 2).T).sum(axis=-1)

    def sharpness_gradient(self, zeta: ArrayLike) -> np.ndarray:
        """∇ tr(JᵀJ/n) = (8/n) (u⊙Σ_j a_j², v⊙Σ_j a_j²)."""
        u, v = self.split(zeta)
        c = (8.0 / self.n) * np.sum(self.features ** 2, axis=0)
        return np.concatenate([u * c, v * c], axis=-1)

    def slow_drift(self, zeta: ArrayLike, sigma: float) -> np.ndarray:
        """Closed form for label noise (Σ = ∇²L on Γ, THEORY §8): b = −(σ²/4) P ∇ tr ∇²L."""
        zeta = np.asarray(zeta, dtype=np.float64)
        P = self.tangent_projector(zeta)
        return -0.25 * sigma ** 2 * np.einsum("...ij,...j->...i", P, self.sharpness_gradient(zeta))


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
