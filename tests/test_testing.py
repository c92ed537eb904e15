"""sdeverify.testing: the assertions fail when the prediction is wrong, pass when it is right,
and their false-failure rate is the stated one (measured here over many seeds)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_
from scipy import stats as st

import sdeverify as sv
from sdeverify import theory
from sdeverify.testing import (StatisticalAssertionError, assert_mean, assert_order,
                               assert_paired_difference, assert_paired_less, assert_variance,
                               moment_observables, optimizers, problems, quadratics, replay,
                               run_sizes)
from sdeverify.testing.pytest_plugin import seed_for

P0 = sv.problems.ConstantGradient([0.3])
ETA, BETA, SIGMA, K = 0.1, 0.6, 1.7, 10


def _pair(seed, paths=1024):
    """SGD and SGDM (m0 = c) on a constant gradient: equal means at every step (Sec 4.1)."""
    return sv.simulate(P0, [sv.SGD(ETA), sv.SGDM(ETA, BETA, m0=[0.3])], [0.0], steps=K, paths=paths,
                       sigma=SIGMA, seed=seed, record=[K], observables=["sqnorm", "x0"])


def test_false_failure_rate_is_the_stated_one():
    """With one compared entry the rate is exactly alpha (CLT): over 200 seeds at alpha = 0.1
    the failures must lie in the central 99.9% of Binomial(200, 0.1) = [8, 35].  Intervals
    sqrt(2) too narrow would give ~49 failures, sqrt(2) too wide ~4: both fail this test."""
    lo, hi = st.binom.ppf(0.0005, 200, 0.1), st.binom.isf(0.0005, 200, 0.1)
    var_exact = theory.endpoint_variance_sgdm(ETA, BETA, SIGMA, K) + (K * ETA * 0.3) ** 2
    fails_mean = fails_pair = 0
    for s in range(200):
        r = _pair(5000 + s)
        try:
            assert_mean(r, var_exact, optimizer=1, observable="sqnorm", alpha=0.1)
        except StatisticalAssertionError:
            fails_mean += 1
        try:
            assert_paired_difference(r, 1, "x0", alpha=0.1)
        except StatisticalAssertionError:
            fails_pair += 1
    assert lo <= fails_mean <= hi, (fails_mean, lo, hi)
    assert lo <= fails_pair <= hi, (fails_pair, lo, hi)


def test_paired_less_false_failure_rate_is_the_stated_one():
    """The one-sided assert_paired_less at a true difference of exactly its margin (0: SGDM
    with m0 = c has SGD's mean, Sec 4.1) fails at rate alpha: over 600 seeds at alpha = 0.2
    the failures lie in the central 99.9% of Binomial(600, 0.2) = [89, 153]; a two-sided
    critical value by mistake gives ~60, the bound of the wrong side ~480.  With shown=True
    it *passes* at rate alpha (the same window)."""
    lo, hi = st.binom.ppf(0.0005, 600, 0.2), st.binom.isf(0.0005, 600, 0.2)
    fails = passes_shown = 0
    for s in range(600):
        r = _pair(9000 + s)
        try:
            assert_paired_less(r, "SGDM", "x0", baseline="SGD", alpha=0.2)
        except StatisticalAssertionError:
            fails += 1
        try:
            assert_paired_less(r, "SGDM", "x0", baseline="SGD", shown=True, alpha=0.2)
            passes_shown += 1
        except StatisticalAssertionError:
            pass
    assert lo <= fails <= hi, (fails, lo, hi)
    assert lo <= passes_shown <= hi, (passes_shown, lo, hi)


def test_paired_less_one_sided_and_named():
    """SGD at lr 0.1 moves twice as far along -c as at lr 0.05 (E x0 = -k lr c): the order is
    shown; the reversed claim fails saying so; messages name both optimizers (never '0')."""
    r = sv.simulate(P0, [sv.SGD(0.05), sv.SGD(0.1, name="SGD fast")], [0.0], steps=K,
                    paths=1024, sigma=SIGMA, seed=4, record=[K // 2, K], observables=["x0"])
    out = assert_paired_less(r, "SGD fast", "x0", shown=True)     # baseline: the first
    np.testing.assert_allclose(out.estimate, [-0.075, -0.15], atol=0.05)
    assert_paired_less(r, 1, "x0", baseline=0, steps=[K])
    with pytest.raises(StatisticalAssertionError, match=r"'x0', SGD − SGD fast.*opposite order"):
        assert_paired_less(r, "SGD", "x0", baseline="SGD fast")    # sign flipped for the first
    with pytest.raises(StatisticalAssertionError, match="opposite order"):
        assert_paired_less(r, "SGD fast", "x0", margin=-0.5)
    with pytest.raises(ValueError, match="recorded steps"):
        assert_paired_less(r, 1, "x0", steps=[3])
    with pytest.raises(ValueError, match="both 'SGD'"):
        assert_paired_less(r, "SGD", "x0", baseline=0)
    r3 = sv.simulate(P0, [sv.SGD(0.05), sv.SGD(0.1, name="b"), sv.SGD(0.2, name="c")], [0.0],
                     steps=K, paths=1024, sigma=SIGMA, seed=4, record=[K], observables=["x0"])
    with pytest.raises(ValueError, match="must be 'SGD'"):
        assert_paired_less(r3, "c", "x0", baseline="b")
    with pytest.raises(StatisticalAssertionError, match=r"'x0', SGDM − SGD: 1 of 1"):
        assert_paired_difference(_pair(1), "SGDM", "x0", equals=1.0)


def test_variance_assertion_rate_and_power():
    """assert_variance of x0 (from the moments the run recorded on request): over 400 seeds
    at alpha = 0.2 the failures lie in Binomial(400, 0.2)'s central 99.9% [55, 107].  The
    shift c = 1 lies ~2.7 sd from E x0 = -0.25, so a standard error that ignored the mean's
    estimation (sqrt(Var((x0 - c)^2)/n)) would be ~2.5x too wide (~0 failures); the
    variance of another beta fails; step 0 (every path equal) is exact."""
    lo, hi = st.binom.ppf(0.0005, 400, 0.2), st.binom.isf(0.0005, 400, 0.2)
    obs = moment_observables("x0", problem=P0, center=1.0)
    exact = theory.endpoint_variance_sgdm(ETA, BETA, SIGMA, np.array([0, K]))
    fails = 0
    for s in range(400):
        r = sv.simulate(P0, [sv.SGD(ETA), sv.SGDM(ETA, BETA)], [0.0], steps=K, paths=1024,
                        sigma=SIGMA, seed=7000 + s, record=[K], observables=obs)
        try:
            assert_variance(r, exact[1], optimizer="SGDM", observable="x0", alpha=0.2)
        except StatisticalAssertionError:
            fails += 1
    assert lo <= fails <= hi, (fails, lo, hi)
    r = sv.simulate(P0, [sv.SGD(ETA), sv.SGDM(ETA, BETA)], [0.0], steps=K, paths=8192,
                    sigma=SIGMA, seed=1, record=[0, K], observables=obs)
    out = assert_variance(r, exact, optimizer=1, observable="x0")
    assert out.n_compared == 1 and out.estimate[0] == 0.0 and out.high[0] - out.low[0] < 3e-9
    wrong = theory.endpoint_variance_sgdm(ETA, 0.5, SIGMA, np.array([0, K]))
    with pytest.raises(StatisticalAssertionError, match=r"variance of 'x0' of SGDM"):
        assert_variance(r, wrong, optimizer=1, observable="x0")
    with pytest.raises(ValueError, match="moment_observables"):
        assert_variance(_pair(1), 1.0, observable="x0")


def test_assert_mean_catches_a_wrong_prediction_and_says_where():
    r = sv.simulate(P0, sv.SGDM(ETA, BETA, m0=[0.3]), [0.0], steps=40, paths=8192, sigma=SIGMA,
                    seed=3, record=np.arange(41), observables=["sqnorm"])
    k = np.arange(41)
    right = theory.endpoint_variance_sgdm(ETA, BETA, SIGMA, k) + (k * ETA * 0.3) ** 2
    out = assert_mean(r, right, observable="sqnorm")
    assert out.passed and out.n_compared == 40            # step 0 is exact (sem 0)
    wrong = theory.endpoint_variance_sgdm(ETA, 0.5, SIGMA, k) + (k * ETA * 0.3) ** 2   # beta off
    with pytest.raises(StatisticalAssertionError, match=r"(?s)'sqnorm' of SGDM.*interval \["):
        assert_mean(r, wrong, observable="sqnorm")
    with pytest.raises(StatisticalAssertionError, match="exact"):
        assert_mean(r, right + np.where(k == 0, 1e-3, 0.0), observable="sqnorm")   # step 0 is exact


def test_assert_mean_on_raw_arrays_and_bad_input():
    assert_mean([1.0, 2.0], [1.01, 1.98], sem=[0.01, 0.01])
    with pytest.raises(StatisticalAssertionError):
        assert_mean([1.0, 2.0], [1.1, 2.0], sem=[0.01, 0.01])
    with pytest.raises(StatisticalAssertionError, match="no estimate"):
        assert_mean([np.nan, 2.0], 2.0, sem=[0.1, 0.1])               # diverged: never a pass
    with pytest.raises(ValueError, match="sem"):
        assert_mean([1.0], 1.0)
    with pytest.raises(ValueError, match="alpha"):
        assert_mean([1.0], 1.0, sem=0.1, alpha=1.5)


def test_equivalence_within_a_margin():
    r = _pair(11, paths=4096)
    out = assert_paired_difference(r, "SGDM", "x0", within=0.05)
    assert out.passed and np.all(out.high - out.low > 0)
    with pytest.raises(StatisticalAssertionError, match="inconclusive"):
        assert_paired_difference(r, "SGDM", "x0", within=3e-3)           # interval too wide
    with pytest.raises(StatisticalAssertionError, match="exceeds the margin"):
        assert_paired_difference(r, "SGDM", "x0", equals=0.5, within=0.1)
    with pytest.raises(ValueError, match="baseline"):
        assert_paired_difference(r, "SGDM", "x0", baseline=1)


def test_assert_order_two_sided():
    g = np.random.default_rng(0)
    x = 2.0 ** -np.arange(2, 9)
    sem = 0.02 * x
    err = x * (1 + 0.02 * g.standard_normal(x.size))
    assert assert_order(x, err, sem, equals=1.0).passed
    assert assert_order(x, err, sem, at_least=0.5).passed
    with pytest.raises(StatisticalAssertionError, match="order equals 2"):
        assert_order(x, err, sem, equals=2.0)
    with pytest.raises(StatisticalAssertionError, match="at least 1.5"):
        assert_order(x, err, sem, at_least=1.5)
    with pytest.raises(StatisticalAssertionError):       # an inflated order fails two-sided
        assert_order(x, x ** 1.3, sem, equals=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        assert_order(x, err, sem)


def test_assert_mean_on_a_train_result_uses_student_t():
    from sdeverify.train.result import TrainResult
    g = np.random.default_rng(1)
    vals = 0.5 + 0.1 * g.standard_normal((1, 2, 5, 1))
    res = TrainResult(("SGD",), ("test_acc",), np.array([10, 20]), vals, np.zeros((1, 5, 20)),
                      np.full((1, 5), -1))
    out = assert_mean(res, 0.5, observable="test_acc")
    t = st.t.isf(1e-3 / 2 / 2, 4)                          # 5 replicas: t with 4 dof
    np.testing.assert_allclose(out.high - out.estimate, t * vals[0, :, :, 0].std(axis=1, ddof=1) / np.sqrt(5))


@settings(max_examples=8, deadline=None, derandomize=True)
@given(quadratics(dims=st_.integers(1, 3)), optimizers(steps=30),
       run_sizes(steps=(30, 30), paths=(1024, 2048)))
def test_strategies_draw_valid_runs_with_exact_moments(P, opt, size):
    """Property: on any drawn quadratic and optimizer (per-step schedules) the ensemble's
    mean loss matches the exact moments — the project's own test of the strategies.  Dimensions
    1–3 (the default goes to 4): the dense kernels of d = 2 and 3 are compiled by
    test_moments.py as well, d = 4 would be compiled for this test alone (cold start)."""
    x0 = np.ones(P.dim)
    r = sv.simulate(P, opt, x0, sigma=0.8, seed=2, record=[0, 10, 30], observables=["loss"], **size)
    exact = theory.quadratic_moments(P, opt, x0, steps=30, sigma=0.8).expect(P, "loss")[[0, 10, 30]]
    assert_mean(r, exact, observable="loss", alpha=1e-4)


def _all_problems():
    P = sv.problems
    return [P.Quadratic([[2.0, 0.5], [0.5, 1.0]], noise_cov=[[1.0, 0.3], [0.3, 0.5]],
                        center=[1.0, -1.0], noise_dist="rademacher", name="q2"),
            P.Quadratic(np.diag([1.0, 3.0])), P.ConstantGradient([0.3, -0.1]),
            P.CosineWell(3, 1.5), P.LinearRegression.generate(8, 2, 3, max_batch=5),
            P.DiagonalNet.generate(3, 5, 2), P.Valley.label_noise_like(c=0.5, m=2),
            P.Sphere(4, 0.3), P.SVAG(P.Quadratic(np.eye(1) / 3), 4.0)]


@pytest.mark.parametrize("P", _all_problems(), ids=lambda P: P.name)
def test_problem_reprs_replay(P):
    """repr(problem) is the call that rebuilds it: H, Sigma, centre and every parameter, bit
    for bit (floats print exactly), SVAG included."""
    text = repr(P)
    Q = replay(text)
    assert type(Q) is type(P) and repr(Q) == text
    assert Q.params.tobytes() == P.params.tobytes()
    assert (Q.name, Q.dim, Q.n_draws, Q.noise_dist, Q.svag_ell) == \
        (P.name, P.dim, P.n_draws, P.noise_dist, P.svag_ell)
    assert (Q.grad, Q.noise, Q.loss) == (P.grad, P.noise, P.loss)


def test_custom_ngos_and_optimizer_reprs_replay():
    P = sv.problems.Quadratic(np.eye(2))
    custom = sv.problems.NGOS(dim=2, grad=P.grad, noise=P.noise, loss=P.loss, params=P.params,
                              name="mine")
    text = repr(custom)
    assert text.startswith("NGOS(dim=2, grad=qdiag_grad, ")
    back = replay(text, qdiag_grad=P.grad, qdiag_noise=P.noise, qdiag_loss=P.loss)
    assert repr(back) == text and back.params.tobytes() == P.params.tobytes()
    for opt in (sv.SGD(0.1), sv.SGD(np.linspace(0.0, 0.3, 4) / 7), sv.SGDM(0.1, 0.9, m0=[1.0, 2.0]),
                sv.SGDM([0.1, 0.2], [0.5, 0.6], name="sched"),
                sv.HeavyBall(0.1, 0.9, 0.3, buffer=np.ones(2), name="hb")):
        back = replay(repr(opt))
        assert back == opt and repr(back) == repr(opt)
        c0, c1 = opt.coefficients(2, 2), back.coefficients(2, 2)
        assert all(np.array_equal(getattr(c0, f), getattr(c1, f)) for f in ("a", "b", "gamma", "m0"))
    assert sv.SGD(0.1) != sv.SGD(0.2) and sv.SGD(0.1) != sv.SGDM(0.1, 0.0)
    # scalar schemes print exactly as before: training runs' fingerprints hold these texts
    assert repr(sv.SGDM(0.1, 0.9)) == "SGDM(lr=0.1, beta=0.9, m0=None, name='SGDM')"
    assert repr(sv.HeavyBall(0.1, 0.9)) == \
        "HeavyBall(lr=0.1, momentum=0.9, dampening=0.0, buffer=None, name='HeavyBall')"
    with pytest.raises(ValueError, match="text"):
        replay(3)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(problems(), optimizers(steps=6))
def test_drawn_examples_print_replayably(P, opt):
    """What Hypothesis prints for a falsifying example rebuilds the same problem/optimizer."""
    Q = replay(repr(P))
    assert repr(Q) == repr(P) and Q.params.tobytes() == P.params.tobytes()
    assert replay(repr(opt)) == opt


def test_pytest_plugin_pins_seeds_and_the_kernel_cache(tmp_path):
    """The opt-in plugin: a test's seed is a fixed function of its id and --sdeverify-seed
    (so fixed across runs) and differs between tests; NumPy's generator is seeded with it;
    NUMBA_CACHE_DIR and Numba's cache folder point at the session's folder; a failure
    reports its seed."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["sdeverify.testing.pytest_plugin"]\n')
    (tmp_path / "test_it.py").write_text(
        "import os, numpy as np\n"
        "def test_a(sdeverify_seed):\n"
        "    import numba.core.config as c\n"
        "    assert c.CACHE_DIR == os.environ['NUMBA_CACHE_DIR']   # where kernels compile to\n"
        "    print('SEED', sdeverify_seed, np.random.random(), os.environ['NUMBA_CACHE_DIR'])\n"
        "def test_b(sdeverify_seed):\n"
        "    print('SEED', sdeverify_seed, np.random.random())\n"
        "    assert False\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}

    def run(*args):
        p = subprocess.run([sys.executable, "-m", "pytest", "-s", *args], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
        return p.stdout + p.stderr

    first = run("--sdeverify-seed=1")                  # one session (each costs seconds)
    seeds = re.findall(r"SEED (\d+) (\S+)", first)
    assert [int(x) for x, _ in seeds] == [seed_for("test_it.py::test_a", 1),
                                         seed_for("test_it.py::test_b", 1)], first
    assert seeds[0][0] != seeds[1][0] != str(seed_for("test_it.py::test_b", 0))
    a = np.random.RandomState(int(seeds[0][0])).random_sample()
    assert float(seeds[0][1]) == a                     # numpy's global generator seeded with it
    cache = tmp_path / ".pytest_cache" / "d" / "sdeverify-kernels"
    assert str(cache) in first and cache.is_dir()
    assert f"seed {seeds[1][0]} (--sdeverify-seed=1)" in first and "kernel cache" in first
