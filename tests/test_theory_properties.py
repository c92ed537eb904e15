"""Property tests (hypothesis) of theorem predictions, on exact moments (no Monte Carlo)."""
import numpy as np
from hypothesis import given, settings, strategies as st

import sdeverify as sv
from sdeverify import theory
from sdeverify.experiments import weak_approximation as W


@settings(max_examples=40, deadline=None)
@given(st.floats(1e-3, 0.5), st.floats(0.0, 0.99), st.floats(0.1, 3.0), st.integers(1, 200))
def test_sec41_endpoint_variance_closed_form(eta, beta, sigma, k):
    """THEORY §5 (derived): Var x_k of SGD and SGDM (m0 = c) equal the exact recursion."""
    P = sv.problems.ConstantGradient([1.0])
    sgdm = theory.quadratic_moments(P, sv.SGDM(eta, beta, m0=[1.0]), [0.0], steps=k, sigma=sigma)
    sgd = theory.quadratic_moments(P, sv.SGD(eta), [0.0], steps=k, sigma=sigma)
    np.testing.assert_allclose(sgdm.cov[k, 0, 0], theory.endpoint_variance_sgdm(eta, beta, sigma, k),
                               rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(sgd.cov[k, 0, 0], theory.endpoint_variance_sgd(eta, sigma, k), rtol=1e-12)
    np.testing.assert_allclose(sgdm.mean[k, 0], sgd.mean[k, 0], rtol=1e-9)  # same mean with m0 = c
    # m0 = 0: SGDM lags by eta c beta (1 - beta^k)/(1 - beta)
    lag = theory.quadratic_moments(P, sv.SGDM(eta, beta), [0.0], steps=k, sigma=sigma).mean[k, 0] - sgd.mean[k, 0]
    np.testing.assert_allclose(lag, theory.endpoint_mean_bias_sgdm(eta, beta, 1.0, k), rtol=1e-9,
                               atol=1e-13 * (1 + k * eta))  # rounding of two means of size kη


@settings(max_examples=30, deadline=None)
@given(st.floats(1e-3, 0.5), st.floats(0.0, 0.99), st.floats(0.1, 3.0), st.integers(0, 100))
def test_sec41_update_variance_closed_form(eta, beta, sigma, k):
    """Var(x_{k+1} − x_k) = η² Var m_{k+1}; m_{k+1} = β^{k+1} m0 + (1−β)Σβ^{k−s} g_s."""
    var_m = sigma ** 2 * (1 - beta) ** 2 * sum(beta ** (2 * s) for s in range(k + 1))
    np.testing.assert_allclose(eta ** 2 * var_m, theory.update_variance_sgdm(eta, beta, sigma, k), rtol=1e-9)
    assert theory.update_variance_sgdm(eta, beta, sigma, 10 ** 6) <= theory.update_variance_sgd(eta, sigma, 0)


@settings(max_examples=20, deadline=None)
@given(st.floats(0.01, 0.5), st.floats(0.0, 0.95), st.integers(1, 300))
def test_averaged_lr_of_constant_schedule_is_eta(eta, beta, K):
    np.testing.assert_allclose(sv.schedules.averaged_lr(np.full(K, eta), beta), eta, rtol=1e-12)


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([0.0, 0.25, 0.5]), st.floats(0.2, 1.0))
def test_weak_error_shrinks_with_eta(alpha, sigma0):
    """Thm 4.5 on the quadratic (exact): the error at η = 2^-11 is below the one at 2^-4."""
    P = W.quadratic_problem()
    errs = []
    for eta in (2.0 ** -4, 2.0 ** -11):
        sgdm, sgd, _, steps = W.pair(eta, alpha, 1.0)
        errs.append(W.exact_errors(P, sgdm, sgd, steps, sigma0 / np.sqrt(eta))[0])
    assert errs[1] < errs[0]


@settings(max_examples=6, deadline=None)
@given(st.floats(0.2, 1.0))
def test_alpha_one_error_stays_bounded_away_from_zero(sigma0):
    """α = 1: the error does not vanish — at η = 2^-11 it is at least half its value at 2^-4."""
    P = W.quadratic_problem()
    errs = []
    for eta in (2.0 ** -4, 2.0 ** -11):
        sgdm, sgd, _, steps = W.pair(eta, 1.0, 1.0)
        errs.append(W.exact_errors(P, sgdm, sgd, steps, sigma0 / np.sqrt(eta))[0])
    assert errs[1] > 0.5 * errs[0]


def test_descent_lemma_is_exact_on_a_quadratic(quad2):
    """Lemma 3.4 has no remainder on a quadratic: one exact step equals the three terms."""
    x0, eta, sigma = np.array([0.3, 2.0]), 0.07, 1.3
    mom = theory.quadratic_moments(quad2, sv.SGD(eta), x0, steps=1, sigma=sigma)
    change = mom.expect(quad2, "loss")[1] - quad2.value(x0)
    terms = theory.descent_lemma_terms(quad2.gradient(x0), quad2.hessian, quad2.noise_cov, eta, sigma)
    np.testing.assert_allclose(change, sum(terms), rtol=1e-12)


def test_stability_threshold():
    """THEORY §9 (derived): EMA SGDM on curvature h is stable iff ηh < 2(1+β)/(1−β)."""
    P = sv.problems.Quadratic(np.array([[1.0]]))
    for beta in (0.0, 0.5, 0.9):
        th = theory.stability_threshold(beta)
        for f, stable in ((0.98, True), (1.02, False)):
            m = theory.quadratic_moments(P, sv.SGDM(th * f, beta), [1.0], steps=3000, sigma=0.0)
            assert (abs(m.mean[-1, 0]) < 1.0) == stable
