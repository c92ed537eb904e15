"""Engine properties: reproducibility, shards, common random numbers, reference agreement,
user-defined problems and observables, SVAG, minibatch noise, persistence."""
import numba
import numpy as np
import pytest

import sdeverify as sv
from sdeverify import config, stats
from sdeverify.problems import NGOS, SVAG, CosineWell, LinearRegression, Quadratic

OPTS = [sv.SGD(0.05), sv.SGDM(0.05, 0.9)]


def _run(problem, **kw):
    args = dict(steps=40, paths=700, sigma=1.0, seed=3, observables=["loss", "sqnorm", "x0"])
    args.update(kw)
    return sv.simulate(problem, OPTS, np.full(problem.dim, 0.5), **args)


def test_identical_for_any_thread_count():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("NUMBA_NUM_THREADS=1: only one thread count can be set")
    P = CosineWell(3)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        a = _run(P)
        numba.set_num_threads(max(2, before))
        b = _run(P)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(a.x_final, b.x_final)
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.sem, b.sem)


def test_shards_merge_bitwise():
    P = CosineWell(2)
    whole = _run(P, paths=3 * config.BLOCK + 50)
    parts = [_run(P, paths=n, path_offset=o) for o, n in
             [(0, config.BLOCK), (config.BLOCK, 2 * config.BLOCK), (3 * config.BLOCK, 50)]]
    merged = parts[2].merge(parts[0], parts[1])
    assert np.array_equal(whole.x_final, merged.x_final)
    assert np.array_equal(whole.mean, merged.mean) and np.array_equal(whole.sem, merged.sem)
    assert np.array_equal(whole.paired(1, "loss")[0], merged.paired(1, "loss")[0])


def test_shard_offset_must_be_block_aligned():
    with pytest.raises(ValueError, match="path_offset"):
        _run(CosineWell(2), path_offset=3)


def test_seeds():
    P = CosineWell(2)
    assert np.array_equal(_run(P, seed=9).x_final, _run(P, seed=9).x_final)
    assert not np.any(_run(P, seed=9).x_final == _run(P, seed=10).x_final)


def test_common_random_numbers_reduce_the_variance_of_differences(quad2):
    """CRN: the paired SGDM−SGD difference has a far smaller sem than the unpaired one."""
    res = sv.simulate(quad2, [sv.SGD(0.01), sv.SGDM(0.01, 0.9)], [0.5, 0.5], steps=100,
                      paths=2000, sigma=0.3, seed=3, observables=["loss"])
    dmean, dsem = res.paired(1, "loss")
    unpaired = np.sqrt(res.sem[0, -1, 0] ** 2 + res.sem[1, -1, 0] ** 2)
    assert dsem[-1] < 0.5 * unpaired
    np.testing.assert_allclose(dmean, res.mean[1, :, 0] - res.mean[0, :, 0], atol=1e-9)


@pytest.mark.parametrize("make", [lambda: Quadratic(np.diag([1.0, 2.0]), center=[1, 0]),
                                  lambda: CosineWell(3, noise_dist="rademacher"),
                                  lambda: _minibatch_problem(),   # the batch_size check's kernel
                                  lambda: SVAG(CosineWell(2), 3.0)])
def test_reference_backend_agrees(make):
    P = make()
    kw = dict(paths=40, steps=25, store_states=True, record=[0, 5, 25])
    a = _run(P, backend="cpu", **kw)
    b = _run(P, backend="numpy", **kw)
    np.testing.assert_allclose(a.x_final, b.x_final, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(a.states, b.states, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(a.paired(1, "loss")[0], b.paired(1, "loss")[0], rtol=1e-9, atol=1e-12)


def test_reference_backend_bitwise_on_rademacher_cosine():
    """Where the arithmetic is identical (no transcendental draws) the backends agree bitwise."""
    P = Quadratic(np.diag([1.0, 2.0]), noise_dist="rademacher")
    a = _run(P, paths=30, steps=20)
    b = _run(P, paths=30, steps=20, backend="numpy")
    assert np.array_equal(a.x_final, b.x_final)


@numba.njit
def _my_grad(x, p, out):   # L(x) = p0/4 Σ x⁴
    for i in range(x.shape[0]):
        out[i] = p[0] * x[i] ** 3


@numba.njit
def _my_noise(x, p, xi, out):
    for i in range(x.shape[0]):
        out[i] = xi[i]


@numba.njit
def _my_loss(x, p):
    return 0.25 * p[0] * np.sum(x ** 4)


@numba.njit
def fourth_moment(x):
    return x[0] ** 4


def test_user_defined_problem_and_observable():
    P = NGOS(dim=2, grad=_my_grad, noise=_my_noise, loss=_my_loss, params=[2.0], name="quartic")
    res = sv.simulate(P, OPTS, [1.0, -1.0], steps=30, paths=500, sigma=0.3,
                      observables=["loss", fourth_moment])
    ref = sv.simulate(P, OPTS, [1.0, -1.0], steps=30, paths=500, sigma=0.3,
                      observables=["loss", fourth_moment], backend="numpy")
    assert res.observables == ("loss", "fourth_moment")
    np.testing.assert_allclose(res.mean, ref.mean, rtol=1e-10)
    assert np.all(np.isfinite(res.mean))


def test_svag_keeps_mean_and_multiplies_variance():
    """Def. 6.1: r1 + r2 = 1, r1² + r2² = ℓ.  One step from x0 on a constant-gradient problem:
    mean −ηc, variance ℓη²σ² (rule: within 4.4 sem / 4.4 sd of the variance estimate)."""
    ell = 4.0
    P = SVAG(sv.problems.ConstantGradient([1.0, 0.0]), ell)   # d = 2: the svag check's kernel
    r1, r2 = P.svag_coefficients
    assert r1 + r2 == pytest.approx(1.0) and r1 ** 2 + r2 ** 2 == pytest.approx(ell)
    res = sv.simulate(P, [sv.SGD(0.1)], [0.0, 0.0], steps=1, paths=40000, sigma=1.0, record=[1],
                      observables=["x0"])
    z = stats.z_value(1 - 1e-5)
    assert abs(res.mean[0, -1, 0] + 0.1) < z * res.sem[0, -1, 0]
    var, n = res.var[0, -1, 0], res.count[0, -1, 0]
    assert abs(var - ell * 0.01) < z * 0.01 * ell * np.sqrt(2 / (n - 1))


def _minibatch_problem():
    """B = 4 of 256 samples in d = 4, with 64 draws reserved: the kernel the batch_size check
    compiles (d, draws and the size of the data decide the kernel), so no extra compile."""
    return LinearRegression.generate(n=256, d=4, batch_size=4, seed=1, max_batch=64)


def test_minibatch_noise_covariance_is_sigma1_over_B():
    """LinearRegression: with σ = 1 the oracle is the real minibatch gradient; its covariance
    per coordinate equals Σ₁(x)/B (checked for one SGD step from x0: Var x1 = η² Σ/B)."""
    P = _minibatch_problem()
    x0 = np.array([0.3, -0.2, 0.5, 0.1])
    res = sv.simulate(P, [sv.SGD(1.0)], x0, steps=1, paths=40000, sigma=1.0, record=[1],
                      observables=[f"x{i}" for i in range(4)])
    cov = P.noise_cov_at(x0)
    grad = P.gradient(x0)
    z = stats.z_value(1 - 1e-5)
    for i in range(P.dim):
        assert abs(res.mean[0, -1, i] - (x0[i] - grad[i])) < z * res.sem[0, -1, i]
        n = res.count[0, -1, i]
        assert abs(res.var[0, -1, i] - cov[i, i]) < z * cov[i, i] * np.sqrt(3 / (n - 1))


def test_store_states_and_record(quad2):
    res = sv.simulate(quad2, OPTS, [0.0, 0.0], steps=10, paths=5, sigma=1.0, record=[0, 3, 10],
                      store_states=True)
    assert res.states.shape == (2, 3, 5, 2)
    np.testing.assert_array_equal(res.states[:, 0], 0.0)
    np.testing.assert_array_equal(res.states[:, -1], res.x_final)
    assert list(res.steps) == [0, 3, 10]


def test_save_load_roundtrip(tmp_path, quad2):
    res = sv.simulate(quad2, OPTS, [0.0, 0.0], steps=10, paths=300, sigma=1.0)
    res.save(tmp_path / "r")
    back = sv.SimulationResult.load(tmp_path / "r")
    assert back.optimizers == res.optimizers
    np.testing.assert_array_equal(back.mean, res.mean)
    np.testing.assert_array_equal(back.x_final, res.x_final)
    assert back.meta["seed"] == 0 and "numba" in back.meta["versions"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
