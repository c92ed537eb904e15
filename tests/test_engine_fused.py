"""The fused oracle: a problem's ``oracle`` (gradient and noise of one call in one function),
``oracle_lanes`` (the same for a block of lanes) and ``oracle_pair_lanes`` (SVAG's two calls
for a block of lanes) give the bits of ``grad`` and ``noise``, and
the engines that use them give the bits of the unfused path (every built-in problem that has
them, SGD and SGDM, float64 and float32), while a user problem without them runs as before.

Compile cost: the CPU runs use the kernels tests/test_engine.py and test_engine_dtype.py
compile anyway (the same problems, dimensions and draws); the unfused side of each float64
comparison is the NumPy reference engine (no compilation).  One float32 pair (fused and
unfused kernels of the minibatch problem) compiles two kernels.
"""
from __future__ import annotations

import copy
import math

import numba
import numpy as np
import pytest

import sdeverify as sv
from sdeverify import vmath
from sdeverify.engine.spec import make_spec
from sdeverify.observables import UserFunctionError
from sdeverify.problems import NGOS, SVAG, CosineWell, DiagonalNet, LinearRegression, Quadratic, Valley
from sdeverify.problems import nonconvex

OPTS = [sv.SGD(0.05), sv.SGDM(0.05, 0.9)]


def _minibatch_problem():
    """The batch_size check's kernel (tests/test_engine.py): d = 4, 64 draws reserved."""
    return LinearRegression.generate(n=256, d=4, batch_size=4, seed=1, max_batch=64)


def _dense_quadratic(d: int) -> Quadratic:
    """H and Σ with off-diagonal entries, c and b non-zero: every term of the dense sums counts."""
    g = np.random.default_rng(d)
    A = g.standard_normal((d, d))
    C = g.standard_normal((d, d))
    return Quadratic(A @ A.T / d + 0.1 * np.eye(d), noise_cov=C @ C.T / d + 0.3 * np.eye(d),
                     center=g.standard_normal(d), linear=g.standard_normal(d))


def unfused(P: NGOS) -> NGOS:
    """The same problem without its fused functions: the engines call grad and noise."""
    Q = copy.copy(P)
    Q.oracle = Q.oracle_lanes = Q.oracle_pair_lanes = None
    return Q


FUSED = {"CosineWell(3)": lambda: CosineWell(3),              # oracle only (d < 4)
         "CosineWell(10)": lambda: CosineWell(10),
         "LinearRegression": _minibatch_problem,
         "DiagonalNet": lambda: DiagonalNet.generate(),
         "Valley": lambda: Valley(h=(1.0, 0.3, 1.0), sx2=(0.5, 0.2), sy2=(1.0, 0.1), m=3),
         "Valley(m=1)": lambda: Valley(h=(1.0, 0.3, 1.0), sx2=(0.5, 0.2), sy2=(1.0, 0.1), m=1),
         "Quadratic(dense, d=10)": lambda: _dense_quadratic(10)}


def bits(a) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def _points(P, n, g):
    """x of every scale (tiny, unit, large, with signed zeros) and draws of the problem's kind."""
    X = g.standard_normal((n, P.dim)) * 10.0 ** g.uniform(-6, 3, (n, 1))
    X[0] = 0.0
    X[1] = -0.0
    if P.noise_dist == "uniform":
        Z = g.uniform(0.0, 1.0, (n, P.n_draws))
        Z[0] = np.nextafter(1.0, 0.0)
    else:
        Z = g.standard_normal((n, P.n_draws))
    return X, Z


@pytest.mark.parametrize("name", sorted(FUSED))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_functions_give_the_bits_of_grad_and_noise(name, dtype):
    """Per call: ``oracle`` (compiled, and as Python in float64) and every lane of ``oracle_lanes`` equal
    ``grad`` and ``noise`` bit for bit, x, draws and outputs of the engine's dtype."""
    P = FUSED[name]()
    assert P.oracle is not None or P.oracle_lanes is not None
    ft = np.dtype(dtype)
    X, Z = _points(P, 64, np.random.default_rng(7))
    X, Z = X.astype(ft), Z.astype(ft)
    d = P.dim
    G_ref, V_ref = np.empty((64, d), ft), np.empty((64, d), ft)
    for k in range(64):
        P.grad(X[k], P.params, G_ref[k])
        P.noise(X[k], P.params, Z[k], V_ref[k])
    if P.oracle is not None:
        # as Python in float64 only: NumPy computes python-float × float32 in float32 (the
        # reference engine, which runs py_func, is float64)
        for run in (P.oracle,) + ((P.oracle.py_func,) if dtype == "float64" else ()):
            g, v = np.empty(d, ft), np.empty(d, ft)
            for k in range(64):
                run(X[k], P.params, Z[k], g, v)
                assert np.array_equal(bits(g), bits(G_ref[k])), (name, k)
                assert np.array_equal(bits(v), bits(V_ref[k])), (name, k)
    if P.oracle_lanes is not None and dtype == "float64":      # the engine uses it in float64
        XL, ZL = np.ascontiguousarray(X.T), np.ascontiguousarray(Z.T)
        G, V = np.empty_like(XL), np.empty_like(XL)
        P.oracle_lanes(XL, P.params, ZL, G, V)
        assert np.array_equal(bits(G.T), bits(G_ref)), name
        assert np.array_equal(bits(V.T), bits(V_ref)), name
    if P.oracle_pair_lanes is not None and dtype == "float64":   # SVAG's two calls in one
        Z2 = np.ascontiguousarray(np.roll(ZL, 5, axis=1)[::-1])      # other draws per lane
        W_ref = np.empty((64, d))
        for k in range(64):
            P.noise(X[k], P.params, np.ascontiguousarray(Z2[:, k]), W_ref[k])
        G, V, W = np.empty_like(XL), np.empty_like(XL), np.empty_like(XL)
        P.oracle_pair_lanes(XL, P.params, ZL, Z2, G, V, W)
        assert np.array_equal(bits(G.T), bits(G_ref)), name
        assert np.array_equal(bits(V.T), bits(V_ref)), name
        assert np.array_equal(bits(W.T), bits(W_ref)), name


# The CPU engine's fused path (the per-path oracle in the fused step; oracle_lanes, for any d,
# in the split step) against the NumPy reference running the separate grad and noise.
@pytest.mark.parametrize("make", [lambda: CosineWell(3, noise_dist="rademacher"),  # fused + oracle
                                  lambda: SVAG(CosineWell(2), 3.0),        # fused + oracle, SVAG
                                  lambda: SVAG(CosineWell(10), 3.0),       # split + lanes, SVAG
                                  _minibatch_problem,
                                  lambda: DiagonalNet.generate(),          # split + lanes
                                  lambda: Valley(sx2=(0.5, 0.2), sy2=(1.0, 0.1)),
                                  lambda: _dense_quadratic(10)],           # split + lanes
                         ids=["cosine", "cosine-svag", "cosine-lanes-svag", "minibatch", "dnet-lanes",
                              "valley", "quadratic-lanes"])
def test_cpu_fused_path_gives_the_bits_of_the_unfused_reference(make):
    P = make()
    assert P.oracle is not None or P.oracle_lanes is not None
    kw = dict(steps=12, paths=70, sigma=0.7, seed=2, record=[0, 5, 12], store_states=True,
              observables=["loss", "sqnorm"])
    x0 = np.full(P.dim, 0.5)
    fused = sv.simulate(P, OPTS, x0, **kw)
    ref = sv.simulate(unfused(P), OPTS, x0, backend="numpy", **kw)
    assert np.array_equal(fused.x_final, ref.x_final) and np.array_equal(fused.states, ref.states)
    assert np.array_equal(fused.mean, ref.mean) and np.array_equal(fused.sem, ref.sem)


def test_reference_engine_uses_the_oracle_with_the_same_bits():
    """The NumPy reference runs ``oracle`` when present: the same bits as without it."""
    P = SVAG(_minibatch_problem(), 2.0)
    kw = dict(steps=10, paths=40, sigma=1.3, seed=4, backend="numpy", observables=["loss"])
    a = sv.simulate(P, OPTS, np.zeros(4), **kw)
    b = sv.simulate(unfused(P), OPTS, np.zeros(4), **kw)
    assert np.array_equal(a.x_final, b.x_final) and np.array_equal(a.mean, b.mean)


def test_cpu_fused_path_float32_gives_the_bits_of_the_unfused_kernel():
    """float32: the fused kernel's bits are the unfused kernel's (the minibatch oracle keeps ∇L
    in float64 where the separate noise function does)."""
    P = _minibatch_problem()
    kw = dict(steps=10, paths=70, sigma=1.0, seed=3, dtype="float32", observables=["loss"])
    x0 = np.full(4, 0.5)
    a = sv.simulate(P, OPTS, x0, **kw)
    b = sv.simulate(unfused(P), OPTS, x0, **kw)
    assert a.x_final.dtype == np.float32
    assert np.array_equal(a.x_final, b.x_final) and np.array_equal(a.mean, b.mean)


# ---- user problems ----------------------------------------------------------------------------
@numba.njit(cache=True)
def _wrong_oracle(x, p, xi, g, v):
    """cos_oracle with the noise's sine squared left out: disagrees with cos_noise."""
    a = p[0]
    for i in range(x.shape[0]):
        s = np.sin(x[i])
        g[i] = x[i] - a * s
        v[i] = xi[i]


def _cosine_user(**fused) -> NGOS:
    return NGOS(dim=2, grad=nonconvex.cos_grad, noise=nonconvex.cos_noise, loss=nonconvex.cos_loss,
                params=[2.0], name="user", **fused)


def test_an_oracle_that_disagrees_with_grad_and_noise_is_an_error_before_any_run():
    with pytest.raises(UserFunctionError, match="oracle .*disagrees with noise"):
        sv.simulate(_cosine_user(oracle=_wrong_oracle), OPTS, [0.5, 0.5], steps=2, paths=8, sigma=1.0)


def test_oracle_must_be_compiled():
    with pytest.raises(ValueError, match="oracle must be a numba.njit function"):
        _cosine_user(oracle=_wrong_oracle.py_func)
    with pytest.raises(ValueError, match="oracle_lanes must be a numba.njit function"):
        _cosine_user(oracle_lanes=lambda X, p, Z, G, V: None)


def test_fused_functions_enter_the_repr_and_the_fingerprint():
    """The replayable repr names the oracle; results with and without one never merge
    (different functions), while a problem without one keeps its old fingerprint text."""
    P = _cosine_user(oracle=nonconvex.cos_oracle)
    assert "oracle=cos_oracle" in repr(P)
    assert "oracle" not in repr(_cosine_user())
    spec = lambda Q: make_spec(Q, OPTS, [0.5, 0.5], steps=2, paths=8, sigma=1.0).fingerprint("x")
    assert spec(P)["problem"] != spec(_cosine_user())["problem"]
    Q = _cosine_user(oracle_lanes=nonconvex.cos_oracle_lanes,
                     oracle_pair_lanes=nonconvex.cos_oracle_pair_lanes)
    assert "oracle_pair_lanes=cos_oracle_pair_lanes" in repr(Q)
    R = copy.copy(Q)
    R.oracle_pair_lanes = None
    assert spec(Q)["problem"] != spec(R)["problem"]


# ---- SVAG's two calls in one (oracle_pair_lanes) ------------------------------------------------
def test_cosine_well_gives_the_pair_with_its_lanes_oracle():
    assert CosineWell(4).oracle_pair_lanes is nonconvex.cos_oracle_pair_lanes
    assert CosineWell(3).oracle_pair_lanes is None and CosineWell(3).oracle_lanes is None


#: the planted bugs of _planted_pair, chosen by p[1] (CosineWell's functions read p[0] only)
FAR, SECOND_FROM_Z1 = 1.0, 2.0


@numba.njit(cache=True)
def _planted_pair(X, p, Z1, Z2, G, V, W):
    """cos_oracle_pair_lanes with a planted bug: p[1] = FAR — the second noise off by 1e-9
    relative where |x| > 3 (away from the x0 the probe checks, so the run's bits tell whether
    the engine called it); p[1] = SECOND_FROM_Z1 — the second noise drawn from Z1."""
    a = p[0]
    for i in range(X.shape[0]):
        for ln in range(X.shape[1]):
            s = vmath.sin(X[i, ln])
            G[i, ln] = X[i, ln] - a * s
            c = math.sqrt(1.0 + s * s)
            V[i, ln] = c * Z1[i, ln]
            if p[1] == FAR:
                W[i, ln] = c * Z2[i, ln] * (1.0 + 1e-9 if abs(X[i, ln]) > 3.0 else 1.0)
            else:
                W[i, ln] = c * Z1[i, ln]


def _cosine_lanes(dim: int, bug: float, pair) -> NGOS:
    return NGOS(dim=dim, grad=nonconvex.cos_grad, noise=nonconvex.cos_noise, loss=nonconvex.cos_loss,
                params=[2.0, bug], oracle_lanes=nonconvex.cos_oracle_lanes, oracle_pair_lanes=pair)


def test_svag_runs_call_the_pair_in_place_of_two_lanes_oracle_calls():
    """SVAG on the CPU engine (float64) takes both calls from ``oracle_pair_lanes`` — a pair
    planted wrong away from x0 changes the run, the correct one gives the reference's bits —
    and a run without SVAG never calls it."""
    x0 = np.full(4, 0.5)
    kw = dict(steps=40, paths=64, sigma=3.0, seed=5, observables=["sqnorm"])
    planted = _cosine_lanes(4, FAR, _planted_pair)
    right = _cosine_lanes(4, FAR, nonconvex.cos_oracle_pair_lanes)
    ref = sv.simulate(unfused(SVAG(right, 2.0)), OPTS, x0, backend="numpy", **kw)
    assert np.abs(ref.x_final).max() > 3.0                # the planted branch is reached
    assert np.array_equal(sv.simulate(SVAG(right, 2.0), OPTS, x0, **kw).x_final, ref.x_final)
    assert not np.array_equal(sv.simulate(SVAG(planted, 2.0), OPTS, x0, **kw).x_final, ref.x_final)
    one_call = sv.simulate(unfused(right), OPTS, x0, backend="numpy", **kw)
    assert np.array_equal(sv.simulate(planted, OPTS, x0, **kw).x_final, one_call.x_final)


def test_a_pair_that_disagrees_with_noise_is_an_error_before_an_svag_run():
    """Refused before an SVAG run; a run without SVAG never calls the pair, and is not
    refused for it (nor does it compile it)."""
    P = _cosine_lanes(2, SECOND_FROM_Z1, _planted_pair)
    with pytest.raises(UserFunctionError, match=r"oracle_pair_lanes .*disagrees with noise \(lane 0, draws Z2\)"):
        sv.simulate(SVAG(P, 2.0), OPTS, [0.5, 0.5], steps=2, paths=8, sigma=1.0)
    r = sv.simulate(P, OPTS, [0.5, 0.5], steps=2, paths=8, sigma=1.0, backend="numpy")
    assert r.x_final.shape == (2, 8, 2)


def test_a_pair_needs_the_lanes_oracle_and_must_be_compiled():
    with pytest.raises(ValueError, match="oracle_pair_lanes needs oracle_lanes"):
        _cosine_user(oracle_pair_lanes=nonconvex.cos_oracle_pair_lanes)
    with pytest.raises(ValueError, match="oracle_pair_lanes must be a numba.njit function"):
        _cosine_user(oracle_lanes=nonconvex.cos_oracle_lanes,
                     oracle_pair_lanes=nonconvex.cos_oracle_pair_lanes.py_func)


def test_quadratic_gives_its_lanes_oracle_where_the_fused_step_stops():
    """Dense and d > config.FUSE_MAX_DIM only: up to it the fused step vectorises the per-path
    functions; the diagonal functions vectorise within a path at any d."""
    from sdeverify import config
    d = config.FUSE_MAX_DIM
    assert _dense_quadratic(d + 1).oracle_lanes is not None
    assert _dense_quadratic(d).oracle_lanes is None
    assert Quadratic(np.diag(np.arange(1.0, d + 3))).oracle_lanes is None
