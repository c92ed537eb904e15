"""sdeverify.vmath: accuracy against NumPy, special values, the NumPy twin's bits,
vectorisation; and the O(d) path of a diagonal Quadratic.

Accuracy is measured in ulps (units in the last place) against NumPy's functions, on dense
fixed-seed samples over the documented ranges and on Hypothesis-drawn arguments; the bounds
are the ones the module docstring promises.  Run with ``-s`` to see the measured maxima.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdeverify import vmath
from sdeverify.problems import NGOS, Quadratic, pack
from sdeverify.problems import quadratic as qmod

NAMES = ("sin", "cos", "exp", "log", "log1p", "expm1", "tanh")
#: documented accuracy (module docstring) and the range each is measured on
ULP = {"sin": 1, "cos": 1, "exp": 1, "log": 1, "log1p": 2, "expm1": 2, "tanh": 3}
RANGES = {"sin": (-1e4, 1e4), "cos": (-1e4, 1e4), "exp": (-745.0, 709.0), "log": (5e-324, 1e300),
          "log1p": (-1.0 + 2 ** -53, 1e300), "expm1": (-50.0, 709.0), "tanh": (-30.0, 30.0)}


def ulps(got, ref) -> np.ndarray:
    """|got − ref| in ulps (distance between the float64 bit patterns, monotone order)."""
    a = np.asarray(got, dtype=np.float64).view(np.int64)
    b = np.asarray(ref, dtype=np.float64).view(np.int64)
    a = np.where(a < 0, np.int64(-2 ** 63) - a, a)
    b = np.where(b < 0, np.int64(-2 ** 63) - b, b)
    return np.abs(a - b)


def sample(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Dense sample of the range: uniform, plus log-uniform magnitudes where the range is wide."""
    g = np.random.default_rng(seed)
    lo, hi = RANGES[name]
    x = g.uniform(lo, hi, n)
    if name in ("log", "log1p"):
        x[: n // 2] = 10.0 ** g.uniform(-323 if name == "log" else -20, 300, n // 2)
        if name == "log1p":
            x[n // 2: 3 * n // 4] = g.uniform(-1.0, 1.0, n - n // 2 - n // 4)
    if name in ("expm1", "tanh", "sin"):
        x[: n // 4] = 10.0 ** g.uniform(-20, 0.5, n // 4) * g.choice([-1.0, 1.0], n // 4)
    return x


def twin(name):
    return getattr(vmath, name).py_func


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_dense_sample(name):
    x = sample(name, 100_000)
    err = ulps(twin(name)(x), getattr(np, name)(x))
    print(f"\n{name}: max {err.max()} ulp from NumPy over {x.size} points in {RANGES[name]}")
    assert err.max() <= ULP[name], (name, x[np.argmax(err)])


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40)
@given(data=st.data())
def test_accuracy_hypothesis(name, data):
    lo, hi = RANGES[name]
    x = np.array(data.draw(st.lists(st.floats(lo, hi, allow_nan=False), min_size=1, max_size=64)))
    err = ulps(twin(name)(x), getattr(np, name)(x))
    assert err.max() <= ULP[name], (name, x[np.argmax(err)])


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 2.2250738585072014e-308,
                    1.0, -1.0, 0.5, 1e-300, -1e-300, 709.78, 709.79, 710.0, -745.1, -746.0, 1e308,
                    -1e308, 20.0, -20.0, 1e-8, -1e-8, np.pi, -np.pi / 2, 3.0 * np.pi / 4])


@pytest.mark.parametrize("name", NAMES)
def test_special_values_match_numpy(name):
    """Zeros (with their sign), infinities, NaN, subnormals, over- and underflow."""
    x = SPECIAL
    with np.errstate(all="ignore"):
        got, ref = twin(name)(x), getattr(np, name)(x)
    finite_err = ulps(got, ref)[np.isfinite(ref) & (np.abs(x) <= RANGES[name][1])]
    assert np.all(finite_err <= ULP[name])
    special = ~np.isfinite(ref) | (ref == 0.0)
    np.testing.assert_array_equal(got[special], ref[special])            # NaN == NaN here
    assert np.array_equal(np.signbit(got[ref == 0.0]), np.signbit(ref[ref == 0.0]))


@numba.njit(error_model="numpy")
def _all_lanes(x, out):
    """Every function in a plain loop: the form the engine's lane loop takes."""
    for i in range(x.shape[0]):
        out[0, i] = vmath.sin(x[i])
        out[1, i] = vmath.cos(x[i])
        out[2, i] = vmath.exp(x[i])
        out[3, i] = vmath.log(x[i])
        out[4, i] = vmath.log1p(x[i])
        out[5, i] = vmath.expm1(x[i])
        out[6, i] = vmath.tanh(x[i])


def test_twin_is_bitwise_the_compiled_code():
    """The .py_func run by NumPy on arrays gives the bits of the vectorised compiled loop
    (float64 and float32 input), special values included."""
    g = np.random.default_rng(1)
    x = np.concatenate([SPECIAL, g.uniform(-800, 800, 3000), 10.0 ** g.uniform(-310, 308, 1000),
                        g.standard_normal(1000)])
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    for arr in (x, x32):
        out = np.empty((len(NAMES), arr.size))
        _all_lanes(arr, out)
        with np.errstate(all="ignore"):
            tw = np.array([twin(n)(arr) for n in NAMES])
        assert tw.dtype == np.float64
        assert np.array_equal(out.view(np.int64), tw.view(np.int64))


def _vector_ops(f) -> bool:
    """True when the compiled loop ``out[i] = f(x[i])`` has packed double arithmetic in its
    LLVM IR and calls no libm function."""
    @numba.njit(error_model="numpy")
    def loop(x, out):
        for i in range(x.shape[0]):
            out[i] = f(x[i])
    x = np.linspace(0.1, 2.0, 64)
    loop(x, np.empty_like(x))
    ir = loop.inspect_llvm(loop.signatures[0])
    libm = any(f"@{n}(" in ir or f"@llvm.{n}.f64" in ir for n in NAMES)
    return (" x double> " in ir and "fmul <" in ir) and not libm


def test_vectorises():
    """vmath.sin vectorises over a loop; np.sin (a libm call) does not — the check can fail."""
    assert _vector_ops(vmath.sin)
    assert not _vector_ops(np.sin)


# ---- the GPU-compatible building blocks ---------------------------------------------------------
def _hard_floats(seed: int = 2) -> np.ndarray:
    """Random bit patterns, the 2⁵¹..2⁵³ band (halves and odd integers), small fractions,
    specials."""
    g = np.random.default_rng(seed)
    band = np.concatenate([g.integers(2 ** 51, 2 ** 54, 4000).astype(np.float64),
                           g.integers(2 ** 50, 2 ** 52, 2000) + 0.5])
    x = np.concatenate([g.integers(0, 2 ** 63, 20000, dtype=np.int64).view(np.float64),
                        band, g.uniform(-3.0, 3.0, 4000), np.round(g.uniform(-50, 50, 1000)),
                        np.round(g.uniform(-50, 50, 1000)) + 0.5, 10.0 ** g.uniform(-320, 308, 2000),
                        SPECIAL, [2.0 ** 52 - 0.5, 2.0 ** 52, 2.0 ** 52 + 1, 2.0 ** 53 + 2, 0.25]])
    return np.concatenate([x, -x])


@numba.njit(error_model="numpy")
def _blocks(x, y, out):
    for i in range(x.shape[0]):
        out[i] = vmath._copysign(x[i], y[i])


def test_copysign_gives_numpys_bits():
    """``_copysign`` (built from bits, which numba-cuda lowers) gives np.copysign's bits,
    compiled and as the twin."""
    x = _hard_floats()
    y = np.random.default_rng(4).permutation(x)
    out = np.empty(x.size)
    _blocks(x, y, out)
    for got in (out, vmath._copysign(x, y)):
        assert np.array_equal(got.view(np.int64), np.copysign(x, y).view(np.int64))


@numba.njit(error_model="numpy")
def _quadrants(x, out):
    for i in range(x.shape[0]):
        out[i] = vmath._reduce_pio2(x[i])[2]


def test_quadrant_from_the_bits_is_n_mod_4():
    """sin and cos take the quadrant q = n mod 4 (n = x·2/π rounded) from the bits of
    n + 1.5·2⁵²: for every |x| < 2⁵¹ π/2 (negative n, ties and the ends of the range
    included) it equals the floor formula n − 4⌊n/4⌋, compiled and as the twin."""
    g = np.random.default_rng(5)
    top = 2.0 ** 51 * np.pi / 2 * (1 - 1e-15)
    n = np.concatenate([np.arange(-9.0, 10.0), g.integers(-2 ** 40, 2 ** 40, 4000).astype(float)])
    x = np.concatenate([n * (np.pi / 2) + g.uniform(-0.7, 0.7, n.size), (n + 0.5) * (np.pi / 2),
                        g.uniform(-top, top, 4000), 10.0 ** g.uniform(-300, 15, 4000),
                        [top, -top, 0.0, -0.0, np.pi / 4, -np.pi / 4]])
    nr = np.round(x * vmath._INVPIO2)                   # ties to even, as the reduction
    want = (nr - 4.0 * np.floor(0.25 * nr)).astype(np.int64)
    out = np.empty(x.size, dtype=np.int64)
    _quadrants(x, out)
    assert np.array_equal(out, want)
    assert np.array_equal(vmath._reduce_pio2(x)[2], want)
    assert set(np.unique(want)) == {0, 1, 2, 3}


def test_inline_runs_python_when_called_from_python():
    """``vmath.inline``: compiled callers inline the helper; a call from Python runs its
    source as Python, so arguments Numba cannot type (as the CUDA simulator's device arrays)
    work."""
    @vmath.inline
    def first_plus_one(a):
        return a[0] + 1.0

    class Boxed:                      # not an array: Numba cannot type it
        def __getitem__(self, i):
            return 2.0

    @numba.njit
    def caller(a):
        return first_plus_one(a)

    assert first_plus_one(Boxed()) == 3.0
    assert caller(np.array([4.0])) == 5.0
    assert "first_plus_one" not in caller.inspect_llvm(caller.signatures[0])     # inlined


# ---- the diagonal Quadratic's O(d) path ---------------------------------------------------------
def _dense(P: Quadratic) -> NGOS:
    return NGOS(dim=P.dim, grad=qmod.quad_grad, noise=qmod.quad_noise, loss=qmod.quad_loss,
                params=pack(P.hessian, P.noise_sqrt, P.center, P.linear), name="dense")


def test_quadratic_detects_diagonal():
    h = np.array([0.5, 0.0, 2.0, 1.0])
    assert Quadratic(np.diag(h), np.diag([1.0, 4.0, 0.0, 2.0])).diagonal
    assert Quadratic(np.diag(h)).grad is qmod.qdiag_grad
    H = np.diag(h + 1.0)
    H[0, 1] = H[1, 0] = 0.1
    assert not Quadratic(H).diagonal
    cov = np.eye(4)
    cov[2, 3] = cov[3, 2] = 0.5
    assert not Quadratic(np.diag(h), cov).diagonal


def test_quadratic_diagonal_path_bitwise_equals_dense():
    """For finite x the O(d) functions give the dense functions' bits: every coordinate, the
    noise and the loss, zeros and x = c included; and a whole run agrees bitwise."""
    g = np.random.default_rng(3)
    d = 5
    h = np.array([0.5, 0.0, 2.0, 1.3, 1e-3])
    P = Quadratic(np.diag(h), np.diag(g.uniform(0.0, 2.0, d)), center=g.standard_normal(d),
                  linear=np.array([0.0, 1.0, -0.5, 0.0, 2.0]))
    D = _dense(P)
    X = np.concatenate([g.standard_normal((200, d)) * 10.0 ** g.uniform(-5, 5, (200, 1)),
                        P.center[None, :], -P.center[None, :], np.zeros((1, d))])
    X[0, 1] = -0.0
    for x in X:
        xi = g.standard_normal(d)
        a, b = np.empty(d), np.empty(d)
        P.grad.py_func(x, P.params, a)
        D.grad.py_func(x, D.params, b)
        assert np.array_equal(a.view(np.int64), b.view(np.int64))
        P.noise.py_func(x, P.params, xi, a)
        D.noise.py_func(x, D.params, xi, b)
        assert np.array_equal(a.view(np.int64), b.view(np.int64))
        assert np.float64(P.loss.py_func(x, P.params)).view(np.int64) == \
            np.float64(D.loss.py_func(x, D.params)).view(np.int64)
    import sdeverify as sv
    kw = dict(steps=15, paths=12, sigma=3.0, seed=4, backend="numpy", observables=["loss"])
    r1 = sv.simulate(P, [sv.SGD(0.3), sv.SGDM(0.3, 0.9)], np.ones(d), **kw)
    r2 = sv.simulate(D, [sv.SGD(0.3), sv.SGDM(0.3, 0.9)], np.ones(d), **kw)
    assert np.array_equal(r1.x_final, r2.x_final) and np.array_equal(r1.mean, r2.mean)


@numba.njit(error_model="numpy")
def _sin_cos(x, out):
    for i in range(x.shape[0]):
        out[0, i] = vmath.sin(x[i])
        out[1, i] = vmath.cos(x[i])


def test_sin_cos_within_one_ulp_on_ten_million_points():
    """sin and cos compiled (as the engine runs them) against np.sin / np.cos on 10⁷ fixed-seed
    points of |x| ≤ 1e4 (the documented range; CosineWell's paths stay within |x| ≲ 10): a
    quarter log-uniform in [1e-20, 3], the rest uniform."""
    g = np.random.default_rng(11)
    worst = np.zeros(2, dtype=np.int64)
    out = np.empty((2, 10 ** 6))
    for chunk in range(10):
        x = g.uniform(-1e4, 1e4, 10 ** 6)
        x[: 250_000] = 10.0 ** g.uniform(-20, 0.5, 250_000) * g.choice([-1.0, 1.0], 250_000)
        _sin_cos(x, out)
        worst = np.maximum(worst, [ulps(out[0], np.sin(x)).max(), ulps(out[1], np.cos(x)).max()])
    print(f"\nsin, cos: max {worst[0]}, {worst[1]} ulp from NumPy over 10^7 points in |x| <= 1e4")
    assert worst.max() <= 1
