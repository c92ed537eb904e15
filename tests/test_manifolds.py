"""Manifold problems (valley, sphere, diagonal net): Φ, P, derivatives and noise factors
against finite differences and numerical gradient flow, at points near Γ (hypothesis)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as hst
from scipy.integrate import solve_ivp

from sdeverify.problems import DiagonalNet, Sphere, Valley
from sdeverify.slow_sde import slow_coefficients

SETTINGS = settings(max_examples=15, deadline=None)
coef = hst.floats(-0.5, 0.5)
small = hst.floats(-0.3, 0.3)


def _valleys():
    return [Valley(), Valley(h=(1.0, 0.3, 0.5), sx2=(0.2, 0.1, 0.05), sy2=(0.5, 0.0, 0.3), m=2),
            Valley.label_noise_like(h=(2.0, -0.5, 1.0, 0.2), c=1.5, sx2=0.3, m=3),
            Valley(h=(1.0, 0.2, 0.5, 0.0, 0.0, 0.05), sx2=(0.2,), sy2=(0.5, 0.1))]   # width 8


VALLEYS = _valleys()
DN = DiagonalNet.generate(4, 7, 2, seed=3)


def _fd_grad(f, x, e=1e-6):
    x = np.asarray(x, dtype=np.float64)
    out = []
    for i in range(x.size):
        d = np.zeros_like(x)
        d[i] = e
        out.append((f(x + d) - f(x - d)) / (2 * e))
    return np.stack(out, axis=-1)


def _check_derivatives(prob, x, rng, tol=1e-6):
    """∇L, ∇²L and ∂²(∇L)[M] against central differences of the level below."""
    scale = 1.0 + np.abs(prob.gradient(x)).max()
    assert np.allclose(_fd_grad(prob.value, x), prob.gradient(x), atol=tol * scale * 10, rtol=1e-6)
    H = prob.hessian_at(x)
    assert np.allclose(H, H.T, atol=1e-12)
    assert np.allclose(_fd_grad(prob.gradient, x).T, H, atol=tol * 10 * (1 + np.abs(H).max()))
    M = rng.standard_normal((prob.dim, prob.dim))
    M = M + M.T
    fd = _fd_grad(lambda z: np.sum(M * prob.hessian_at(z)), x)
    assert np.allclose(fd, prob.third_contraction(x, M), atol=tol * 10 * (1 + np.abs(fd).max()))


def _check_noise_factor(prob, x, rng):
    """The njit noise function applies exactly S(x) to the draws: v = S(x) ξ."""
    xi = rng.standard_normal(prob.n_draws)
    v = np.empty(prob.dim)
    prob.noise(np.asarray(x, dtype=np.float64), prob.params, xi, v)
    assert np.allclose(v, prob.noise_sqrt_at(x) @ xi, atol=1e-12)


def _gradient_flow(prob, x, t_max=60.0):
    sol = solve_ivp(lambda t, z: -prob.gradient(z), (0.0, t_max), np.asarray(x, float),
                    method="LSODA", rtol=1e-11, atol=1e-13)
    return sol.y[:, -1]


def _check_projection_pieces(prob, zeta, tol=1e-6):
    """On Γ: L = 0, ∇L = 0, Φ(ζ) = ζ; P symmetric idempotent of rank dim Γ, P ∇²L = 0, and
    P = ∂Φ(ζ) (finite differences of Φ)."""
    assert prob.value(zeta) < 1e-20
    assert np.allclose(prob.project(zeta), zeta, atol=1e-10)
    P = prob.tangent_projector(zeta)
    assert np.allclose(P, P.T, atol=1e-12) and np.allclose(P @ P, P, atol=1e-10)
    assert round(np.trace(P)) == prob.manifold_dim
    H = prob.hessian_at(zeta)
    assert np.allclose(P @ H, 0.0, atol=1e-9 * (1 + np.abs(H).max()))
    J = _fd_grad(prob.project, zeta, e=1e-6)          # J[i, k] = ∂Φ_i/∂x_k
    assert np.allclose(J, P, atol=tol * 10)


# ---- valley -------------------------------------------------------------------------------
@SETTINGS
@given(x=hst.floats(-1.5, 1.5), y=hst.lists(small, min_size=3, max_size=3),
       which=hst.integers(0, len(VALLEYS) - 1), seed=hst.integers(0, 2 ** 16))
def test_valley_derivatives_and_noise(x, y, which, seed):
    p = VALLEYS[which]
    pt = np.concatenate([[x], y[:p.m]])
    rng = np.random.default_rng(seed)
    _check_derivatives(p, pt, rng)
    _check_noise_factor(p, pt, rng)


@SETTINGS
@given(x=hst.floats(-1.5, 1.5), y=hst.lists(small, min_size=3, max_size=3),
       which=hst.integers(0, len(VALLEYS) - 1))
def test_valley_projection(x, y, which):
    p = VALLEYS[which]
    pt = np.concatenate([[x], y[:p.m]])
    z = p.project(pt)
    assert np.allclose(z, _gradient_flow(p, pt, t_max=80.0), atol=1e-7)
    _check_projection_pieces(p, z)
    # Φ is constant along gradient flow: ∂Φ(x) ∇L(x) = 0 (Lemma C.1)
    g = p.gradient(pt)
    assert np.allclose(p.project(pt - 1e-5 * g), z, atol=1e-9)


def _rk4_projection_numpy(p, X, n_sub=16):
    """Valley.project's RK4 written in NumPy over all points at once, the same operations in
    the same order (Horner with the zero-padded coefficients, no FMA): bit for bit what the
    compiled kernel must give, whatever its grouping of points."""
    c = np.zeros(8)
    c[:np.trim_zeros(p.h, "b").size] = np.trim_zeros(p.h, "b")

    def poly(x):
        v, dv = np.zeros_like(x), np.zeros_like(x)
        for k in range(7, -1, -1):
            dv = dv * x + v
            v = v * x + c[k]
        return v, dv
    s0 = np.zeros(X.shape[0])
    for i in range(1, X.shape[1]):
        s0 = s0 + X[:, i] * X[:, i]
    x, d = X[:, 0].copy(), -s0 / n_sub
    for _ in range(n_sub):
        h, dh = poly(x)
        k1 = dh / (4.0 * h)
        h, dh = poly(x + 0.5 * d * k1)
        k2 = dh / (4.0 * h)
        h, dh = poly(x + 0.5 * d * k2)
        k3 = dh / (4.0 * h)
        h, dh = poly(x + d * k3)
        k4 = dh / (4.0 * h)
        x = x + d * (k1 + 2.0 * k2 + 2.0 * k3 + k4) / 6.0
    return x


@pytest.mark.parametrize("which", range(len(VALLEYS)))
@pytest.mark.parametrize("n", [1, 63, 64, 200])
def test_valley_projection_kernel_is_bitwise_its_numpy_twin(which, n):
    p = VALLEYS[which]
    g = np.random.default_rng(n + 10 * which)
    X = np.column_stack([g.uniform(-1.5, 1.5, n), g.normal(0, 0.4, (n, p.m))])
    z = p.project(X)
    assert np.all(z[:, 1:] == 0)
    np.testing.assert_array_equal(z[:, 0], _rk4_projection_numpy(p, X))


@SETTINGS
@given(x=hst.floats(-1.5, 1.5), which=hst.integers(0, len(VALLEYS) - 1))
def test_valley_slow_drift_closed_form_matches_generic(x, which):
    p = VALLEYS[which]
    z = np.zeros(p.dim)
    z[0] = x
    for sigma in (0.5, 1.3):
        b, D = slow_coefficients(p, z, sigma)
        assert np.allclose(b, p.slow_drift(z, sigma), atol=1e-12)
        assert np.allclose(D @ D.T, np.diag([sigma ** 2 * p.sx2_at(x)] + [0.0] * p.m), atol=1e-12)


def test_valley_polynomials_give_the_same_bits_at_either_stored_width(monkeypatch):
    """A valley whose polynomials fit in 4 coefficients stores them 4 wide (every valley of the
    checks); the same valley stored 8 wide gives the same bits everywhere: the engine's run
    (lanes oracle, statistics, divergence steps, final states), the per-path functions, Φ and the
    coupled slow SDE."""
    import sdeverify as sv
    from sdeverify.problems import manifolds
    from sdeverify.slow_sde import coupled_slow_sde

    def make():
        return Valley(h=(1.0, 0.3, 0.8, 0.2), sx2=(0.3, 0.1), sy2=(0.6, 0.0, 0.2), m=2)
    short = make()
    monkeypatch.setattr(manifolds, "_NCOEF_SHORT", 0)       # every polynomial 8 wide
    wide = make()
    assert short.params.size == 4 + 3 * 4 and wide.params.size == 4 + 3 * 8
    assert VALLEYS[-1].params.size == 4 + 3 * 8               # degree 5: 8 wide by default
    x0 = np.array([0.4, 0.3, -0.2])
    runs = [sv.simulate(P, [sv.SGD(0.05), sv.SGDM(0.05, 0.7)], x0, steps=60, paths=200, seed=4,
                        sigma=2.5, record=[0, 20, 60], observables=["loss", "sqnorm"])
            for P in (short, wide)]
    for name in ("mean", "var", "x_final", "m_final", "div_step", "block_stats"):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name), err_msg=name)
    g = np.random.default_rng(7)
    for x in g.normal(0.0, 0.7, (20, 3)):
        xi = g.standard_normal(3)
        outs = []
        for P in (short, wide):
            gr, nz = np.empty(3), np.empty(3)
            P.grad(x, P.params, gr)
            P.noise(x, P.params, xi, nz)
            outs.append((gr, nz, P.loss(x, P.params), P.project(x)))
        for a, b in zip(*outs):
            np.testing.assert_array_equal(a, b)
    slow = [coupled_slow_sde(P, x0, eta=0.05, steps=40, paths=100, sigma=1.5, seed=2)
            for P in (short, wide)]
    np.testing.assert_array_equal(*slow)


def test_valley_batch_and_label_noise_ou():
    p = Valley.label_noise_like(c=2.0, sx2=0.25)
    X = np.array([[0.5, 0.1], [1.0, -0.2], [-0.3, 0.0]])
    assert np.allclose(p.project(X), np.stack([p.project(x) for x in X]))
    assert p.label_noise_ou() == (2.0, 1.0, 0.25)
    assert Valley(h=(1.0, 0.0, 2.0)).label_noise_ou() is None
    m, v = p.ou_moments(1.0, 0.0, 1.0)
    assert m == 1.0 and v == 0.0
    # the Euler moments converge to the OU moments as eta -> 0 at fixed t = K eta^2
    for eta in (0.1, 0.01):
        me, ve = p.ou_euler_moments(1.0, eta, round(1 / eta ** 2), 1.0)
        m, v = p.ou_moments(1.0, 1.0, 1.0)
        assert abs(me - m) < 2 * eta ** 2 and abs(ve - v) < 2 * eta ** 2
    # the scheduled recursion: λ ≡ 1 is the closed form; λ ≡ c is time rescaled by c² with
    # the stationary variance unchanged (drift and squared diffusion both scale by c²)
    me, ve = p.ou_euler_moments_scheduled(1.0, 0.01, np.ones(150), 1.3)
    assert np.allclose((me, ve), p.ou_euler_moments(1.0, 0.1, 150, 1.3), rtol=1e-12)
    me, ve = p.ou_euler_moments_scheduled(1.0, 1e-4, np.full(40000, 0.5), 1.3)
    m, v = p.ou_moments(1.0, 1.0, 1.3)
    assert abs(me - m) < 1e-3 and abs(ve - v) < 1e-3


# ---- sphere -------------------------------------------------------------------------------
@SETTINGS
@given(d=hst.integers(2, 5), seed=hst.integers(0, 2 ** 16), r=hst.floats(0.8, 1.2))
def test_sphere_pieces(d, seed, r):
    p = Sphere(d, noise_std=0.7)
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    pt = r * u / np.linalg.norm(u)
    _check_derivatives(p, pt, rng)
    _check_noise_factor(p, pt, rng)
    z = p.project(pt)
    assert np.allclose(z, _gradient_flow(p, pt), atol=1e-7)
    _check_projection_pieces(p, z)
    b, D = slow_coefficients(p, z, 1.1)
    # generic formula: the drift is the (normal) Itô term of Brownian motion on the sphere
    assert np.allclose(b, p.slow_drift(z, 1.1), atol=1e-12)
    assert np.allclose(D @ D.T, (1.1 * 0.7) ** 2 * p.tangent_projector(z), atol=1e-12)


def test_sphere_closed_forms():
    p = Sphere(3)
    t = np.array([0.0, 0.5, 2.0])
    assert np.allclose(p.correlation_decay(t, 1.0), np.exp(-t))
    # the Legendre-series law of <ζ_t, ζ_0> has the right first two moments
    u = np.linspace(-1, 1, 20001)
    for tt in (0.3, 1.0):
        F = p.cos_cdf(u, tt, 1.0)
        assert F[0] == 0.0 and abs(F[-1] - 1.0) < 1e-9 and np.all(np.diff(F) >= -1e-12)
        dens = np.gradient(F, u)
        assert abs(np.trapezoid(u * dens, u) - p.correlation_decay(tt, 1.0)) < 1e-4
        assert abs(np.trapezoid(u * u * dens, u) - p.cos2_mean(tt, 1.0)) < 1e-4
    m1, m2 = p.euler_moments(0.01, 10 ** 4, 1.0)
    assert abs(m1 - np.exp(-1.0)) < 1e-3 and abs(m2 - p.cos2_mean(1.0, 1.0)) < 1e-3


# ---- diagonal linear network ----------------------------------------------------------------
@SETTINGS
@given(seed=hst.integers(0, 2 ** 16), off=hst.floats(0.0, 0.2))
def test_diagonal_net_pieces(seed, off):
    p = DN
    rng = np.random.default_rng(seed)
    w = p.project(0.8 + 0.3 * rng.standard_normal(p.dim))     # a point on Γ
    pt = w + off * rng.standard_normal(p.dim) / np.sqrt(p.dim)  # and one near it
    _check_derivatives(p, pt, rng)
    _check_noise_factor(p, pt, rng)
    z = p.project(pt)
    assert np.allclose(z, p.gradient_flow(pt), atol=1e-7)
    _check_projection_pieces(p, z, tol=1e-5)
    # label noise: Σ = ∇²L on Γ; closed-form drift = generic formula = −σ²/4 P ∇tr∇²L
    S = p.noise_sqrt_at(z)
    assert np.allclose(S @ S.T, p.hessian_at(z), atol=1e-10)
    b, D = slow_coefficients(p, z, 0.9)
    assert np.allclose(b, p.slow_drift(z, 0.9), atol=1e-9 * (1 + np.abs(b).max()))
    assert np.allclose(D, 0.0, atol=1e-10)
    assert np.isclose(p.sharpness(z), np.trace(p.hessian_at(z)))
    assert np.allclose(_fd_grad(p.sharpness, z), p.sharpness_gradient(z), atol=1e-5)


def test_diagonal_net_validation():
    with pytest.raises(ValueError, match="n < D"):
        DiagonalNet(np.ones((4, 3)), np.ones(4))
    with pytest.raises(ValueError, match="sparsity"):
        DiagonalNet.generate(3, 5, 6)
    with pytest.raises(ValueError, match="dim"):
        Sphere(1)
