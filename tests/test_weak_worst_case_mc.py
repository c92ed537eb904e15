"""weak_worst_case_mc: the Monte Carlo worst-case search of Thm 4.5 (docs/theory.md §15) — its
family's oracle, its noise laws, and its verdict's power against a wrong averaged lr."""
from __future__ import annotations

import numpy as np
import pytest

from sdeverify.experiments import weak_worst_case_mc as wm
from sdeverify.optim import SGD

#: a cheap version of the quick size: its η grid and paths, two problems, α = 0
KW = dict(size="quick", seed=0, problems=2, alphas=(0.0,))


def test_family_gradient_is_the_loss_gradient():
    g = np.random.default_rng(3)
    for i in range(4):
        P, _, _ = wm.random_problem(g, i)
        for x in g.standard_normal((5, 2)):
            h = 1e-6
            fd = [(P.value(x + h * e) - P.value(x - h * e)) / (2 * h) for e in np.eye(2)]
            np.testing.assert_allclose(P.gradient(x), fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("code, skew, kurt", [(2.0, 0.0, 1.8), (3.0, 2.0, 9.0)])
def test_noise_laws_are_standardised(code, skew, kurt):
    """The uniform base draw mapped to the uniform and the centred exponential law: mean 0,
    variance 1, and the stated skewness and kurtosis (midpoint quadrature over (0, 1))."""
    n = 2_000_000
    u = (np.arange(n) + 0.5) / n
    z = np.array([wm._standard(x, code) for x in u[:: n // 20000]])   # the njit map, sampled
    zz = np.where(code == 2.0, (u - 0.5) * np.sqrt(12.0), -np.log(u) - 1.0)
    np.testing.assert_allclose(z, zz[:: n // 20000], rtol=1e-12)
    assert abs(zz.mean()) < 1e-4 and abs(zz.var() - 1) < 1e-3
    assert abs((zz ** 3).mean() - skew) < 5e-3 and abs((zz ** 4).mean() - kurt) < 5e-2


def test_noise_covariance_depends_on_x():
    """Σ(x) = (1 + κ|x|²)BBᵀ + ρ² sin²(u·x) eeᵀ (Gaussian member: v is linear in ξ, so Σ(x) =
    Σ_j v(e_j)v(e_j)ᵀ exactly) against the formula, and its shape changes with x."""
    g = np.random.default_rng(0)
    P = next(P for P, _, _ in (wm.random_problem(g, 0) for _ in range(20)) if P.params[16:18] @ P.params[16:18] > 1)
    p = P.params
    shapes = []
    u = p[16:18]
    for x in (np.zeros(2), 0.5 * np.pi * u / (u @ u)):          # u·x = 0 and π/2
        out = np.empty(2)
        V = np.array([(P.noise(x, p, xi, out), out.copy())[1] for xi in np.eye(3)])
        S = V.T @ V
        B, e = p[11:15].reshape(2, 2), np.array([np.cos(p[18]), np.sin(p[18])])
        want = (1 + p[10] * x @ x) * B @ B.T + (p[15] * np.sin(p[16:18] @ x)) ** 2 * np.outer(e, e)
        np.testing.assert_allclose(S, want, rtol=1e-12, atol=1e-14)
        shapes.append(S / np.trace(S))
    assert np.abs(shapes[0] - shapes[1]).max() > 1e-3      # exact: not a multiple of one matrix


def test_worst_case_passes_and_fails_with_sgd_at_1_1_times_its_averaged_lr(monkeypatch):
    good = wm.run(**KW).verdicts
    assert len(good) == 1 and good[0].passed and not good[0].claim.startswith("NOT"), good[0]
    assert "{" not in good[0].rule and "h = (v.x)^" in good[0].rule      # names the worst pair
    real = wm.pair

    def wrong(eta, alpha, T, shape=None):
        sgdm, sgd, raw, steps = real(eta, alpha, T, shape)
        return sgdm, SGD(1.1 * np.asarray(sgd.lr)), raw, steps
    monkeypatch.setattr(wm, "pair", wrong)
    bad = wm.run(**KW).verdicts
    assert len(bad) == 1 and not bad[0].passed, bad[0]
    assert bad[0].measured.high < 0.5
