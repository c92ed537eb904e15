"""``simulate(..., dtype="float32")``: float32 states and draws, float64 statistics, the same
reproducibility guarantees as float64, and accuracy close to float64 on a stable problem."""
import numba
import numpy as np
import pytest

import sdeverify as sv
from sdeverify import config
from sdeverify.problems import CosineWell, DiagonalNet, Quadratic

OPTS = [sv.SGD(0.05), sv.SGDM(0.05, 0.9)]
# d = 2, diagonal, centred at 0, identity noise: the problem `sdeverify simulate` builds, so
# its kernels (float64, float32) are those of test_cli.py's and test_fuzz.py's runs (fewer
# kernels to compile on a cold start)
QUAD = Quadratic(np.diag([0.5, 2.0]))


def _run(problem=QUAD, **kw):
    args = dict(steps=64, paths=300, sigma=1.0, seed=5, dtype="float32")
    args.update(kw)
    return sv.simulate(problem, OPTS, np.ones(problem.dim), **args)


def test_float32_states_and_float64_statistics():
    res = _run()
    assert res.x_final.dtype == np.float32 and res.m_final.dtype == np.float32
    assert res.mean.dtype == np.float64 and res.block_stats.dtype == np.float64
    assert res.meta["dtype"] == "float32"
    assert np.all(np.isfinite(res.mean))


def test_float32_close_to_float64_with_the_same_draws():
    """Same Philox words, float32 arithmetic: per-path states agree to float32 rounding
    (accumulated over 64 steps), and mean loss far inside the Monte Carlo error.  The bound
    1e-4 relative is ~100x the measured error (benchmarks/RESULTS.md)."""
    r32, r64 = _run(), _run(dtype="float64")
    scale = np.abs(r64.x_final).max()
    assert np.max(np.abs(r32.x_final - r64.x_final)) < 1e-4 * scale
    np.testing.assert_allclose(r32.mean, r64.mean, rtol=1e-4)
    assert np.all(np.abs(r32.mean - r64.mean) < 0.01 * r64.sem + 1e-12)


def test_float32_identical_for_any_thread_count_and_shards():
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = _run(paths=2 * config.BLOCK + 40)
        numba.set_num_threads(max(2, before))
        b = _run(paths=2 * config.BLOCK + 40)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(a.x_final, b.x_final) and np.array_equal(a.mean, b.mean)
    parts = [_run(paths=n, path_offset=o) for o, n in
             [(0, config.BLOCK), (config.BLOCK, config.BLOCK + 40)]]
    merged = parts[0].merge(parts[1])
    assert np.array_equal(a.x_final, merged.x_final) and np.array_equal(a.mean, merged.mean)


def test_float32_divergence_is_detected():
    """Along curvature 2, x_{k+1} ≈ −4 x_k.  With the bound off (overflow only), float32
    overflows (≈ 3e38) after ~64 steps, float64 (≈ 2e308) only after ~512; with the default
    bound 1e8 both are flagged at the same step, ~log(1e8)/log 4 ≈ 13."""
    kw = dict(steps=100, paths=50, sigma=1.0, divergence_bound=np.inf)
    with pytest.warns(sv.DivergenceWarning):
        res = sv.simulate(QUAD, [sv.SGD(2.5)], np.ones(QUAD.dim), dtype="float32", **kw)
    assert np.all((res.div_step[0] >= 60) & (res.div_step[0] <= 70))
    res64 = sv.simulate(QUAD, [sv.SGD(2.5)], np.ones(QUAD.dim), dtype="float64", **kw)
    assert np.all(res64.div_step[0] == -1)
    kw.pop("divergence_bound")
    with pytest.warns(sv.DivergenceWarning):
        r32 = sv.simulate(QUAD, [sv.SGD(2.5)], np.ones(QUAD.dim), dtype="float32", **kw)
    with pytest.warns(sv.DivergenceWarning):
        r64 = sv.simulate(QUAD, [sv.SGD(2.5)], np.ones(QUAD.dim), dtype="float64", **kw)
    assert np.all((r64.div_step[0] >= 11) & (r64.div_step[0] <= 16))
    assert np.array_equal(r32.div_step, r64.div_step)


def test_dtype_validation():
    with pytest.raises(ValueError, match="dtype"):
        _run(dtype="float16")
    with pytest.raises(ValueError, match="backend='cpu' only"):
        _run(backend="numpy")


def _dense_quadratic(d=2):
    rs = np.random.default_rng(0)
    a = rs.normal(size=(d, d))
    return Quadratic(a @ a.T / d + np.eye(d), noise_cov=np.eye(d) + 0.1, center=rs.normal(size=d))


# Problems whose kernels other tests or the smoke job compile anyway (cold-start cost).
@pytest.mark.parametrize("make", [_dense_quadratic,                         # fused, one call
                                  lambda: DiagonalNet.generate(),           # split (d = 20), one call
                                  lambda: sv.problems.SVAG(CosineWell(10), 3.0)],   # split, SVAG
                         ids=["fused", "split", "split-svag"])
def test_cpu_kernel_variants_match_the_reference_bitwise(make):
    """Both variants of the kernel (fused for d <= config.FUSE_MAX_DIM, split above), with and
    without SVAG: with problem functions made of IEEE arithmetic and the package's vector
    math (whose NumPy twins are bitwise) the CPU and NumPy engines agree bitwise, normal draws
    included (same operations in the same order)."""
    P = make()
    d = P.dim
    assert (d <= config.FUSE_MAX_DIM) == (make is _dense_quadratic)
    kw = dict(steps=12, paths=70, sigma=0.7, seed=2, record=[0, 5, 12], store_states=True)
    a64 = sv.simulate(P, OPTS, np.ones(d), **kw)
    ref = sv.simulate(P, OPTS, np.ones(d), backend="numpy", **kw)
    assert np.array_equal(a64.x_final, ref.x_final) and np.array_equal(a64.states, ref.states)
    assert np.array_equal(a64.mean, ref.mean)
