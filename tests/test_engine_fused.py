"""The fused oracle: a problem's ``oracle`` (gradient and noise of one call in one function) and
``oracle_lanes`` (the same for a block of lanes) give the bits of ``grad`` and ``noise``, and
the engines that use them give the bits of the unfused path (every built-in problem that has
them, SGD and SGDM, float64 and float32), while a user problem without them runs as before.

Compile cost: the CPU runs use the kernels tests/test_engine.py and test_engine_dtype.py
compile anyway (the same problems, dimensions and draws); the unfused side of each float64
comparison is the NumPy reference engine (no compilation).  One float32 pair (fused and
unfused kernels of the minibatch problem) compiles two kernels.
"""
from __future__ import annotations

import copy

import numba
import numpy as np
import pytest

import sdeverify as sv
from sdeverify.engine.spec import make_spec
from sdeverify.observables import UserFunctionError
from sdeverify.problems import NGOS, SVAG, CosineWell, DiagonalNet, LinearRegression, Valley
from sdeverify.problems import nonconvex

OPTS = [sv.SGD(0.05), sv.SGDM(0.05, 0.9)]


def _minibatch_problem():
    """The batch_size check's kernel (tests/test_engine.py): d = 4, 64 draws reserved."""
    return LinearRegression.generate(n=256, d=4, batch_size=4, seed=1, max_batch=64)


def unfused(P: NGOS) -> NGOS:
    """The same problem without its fused functions: the engines call grad and noise."""
    Q = copy.copy(P)
    Q.oracle = Q.oracle_lanes = None
    return Q


FUSED = {"CosineWell(3)": lambda: CosineWell(3),              # oracle only (d < 4)
         "CosineWell(10)": lambda: CosineWell(10),
         "LinearRegression": _minibatch_problem,
         "DiagonalNet": lambda: DiagonalNet.generate(),
         "Valley": lambda: Valley(h=(1.0, 0.3, 1.0), sx2=(0.5, 0.2), sy2=(1.0, 0.1), m=3),
         "Valley(m=1)": lambda: Valley(h=(1.0, 0.3, 1.0), sx2=(0.5, 0.2), sy2=(1.0, 0.1), m=1)}


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


# The CPU engine's fused path (the per-path oracle in the fused step; oracle_lanes, for any d,
# in the split step) against the NumPy reference running the separate grad and noise.
@pytest.mark.parametrize("make", [lambda: CosineWell(3, noise_dist="rademacher"),  # fused + oracle
                                  lambda: SVAG(CosineWell(2), 3.0),        # fused + oracle, SVAG
                                  lambda: SVAG(CosineWell(10), 3.0),       # split + lanes, SVAG
                                  _minibatch_problem,
                                  lambda: DiagonalNet.generate(),          # split + lanes
                                  lambda: Valley(sx2=(0.5, 0.2), sy2=(1.0, 0.1))],
                         ids=["cosine", "cosine-svag", "cosine-lanes-svag", "minibatch", "dnet-lanes",
                              "valley"])
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
