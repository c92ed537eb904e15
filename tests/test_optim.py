"""Optimizer semantics: HeavyBall = torch.optim.SGD, HeavyBall ≡ SGDM with the converted
schedule (THEORY §2), schedules and the averaged learning rate (Eq. 8)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import sdeverify as sv
from sdeverify import schedules
from sdeverify.rng import NORMAL, draws_numpy


def torch_sgd_reference(problem, x0, lr, momentum, dampening, steps, sigma, seed, path):
    """A literal transcription of torch.optim.SGD.step (momentum > 0, no Nesterov, no weight
    decay) driven by the same oracle draws the engine uses for this path."""
    x = np.array(x0, dtype=np.float64)
    buf = None
    g = np.empty_like(x)
    v = np.empty_like(x)
    for k in range(steps):
        xi = draws_numpy(NORMAL, seed, np.array([path]), k, 0, problem.n_draws)[0]
        problem.grad.py_func(x, problem.params, g)
        problem.noise.py_func(x, problem.params, xi, v)
        d_p = g + sigma * v
        if buf is None:
            buf = d_p.copy()                       # torch.clone(d_p).detach()
        else:
            buf = buf * momentum[k] + (1 - dampening) * d_p   # buf.mul_(μ).add_(d_p, alpha=1-τ)
        x = x - lr[k] * buf                        # p.add_(buf, alpha=-lr)
    return x


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 40), st.floats(0.0, 0.9), st.integers(0, 2 ** 32))
def test_heavy_ball_is_torch_sgd(steps, dampening, sched_seed):
    g = np.random.default_rng(sched_seed)
    lr = g.uniform(0.0, 0.1, steps)
    mom = g.uniform(0.05, 0.99, steps)
    P = sv.problems.CosineWell(2)
    res = sv.simulate(P, [sv.HeavyBall(lr, mom, dampening)], [0.3, -1.2], steps=steps, paths=3,
                      sigma=0.5, seed=7, record=[steps])
    for path in range(3):
        ref = torch_sgd_reference(P, [0.3, -1.2], lr, mom, dampening, steps, 0.5, 7, path)
        np.testing.assert_allclose(res.x_final[0, path], ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.floats(0.0, 0.95), st.booleans(), st.integers(0, 2 ** 32))
def test_heavy_ball_equals_converted_sgdm(steps, dampening, constant, sched_seed):
    g = np.random.default_rng(sched_seed)
    lr = g.uniform(0.0, 0.2, steps)
    mom = np.full(steps, g.uniform(0.05, 0.99)) if constant else g.uniform(0.05, 0.99, steps)
    eta, beta, c = sv.heavy_ball_to_sgdm(lr, mom, dampening, steps=steps)
    P = sv.problems.CosineWell(3)
    res = sv.simulate(P, [sv.HeavyBall(lr, mom, dampening), sv.SGDM(eta, beta)],
                      [0.5, -0.5, 2.0], steps=steps, paths=4, sigma=1.0, seed=1, record=[steps])
    np.testing.assert_allclose(res.x_final[1], res.x_final[0], rtol=1e-9, atol=1e-11)
    assert np.all((beta >= 0) & (beta < 1))


def test_conversion_canonical_cases():
    # tau = 0, constant mu: beta = mu, eta = gamma / (1 - mu)
    eta, beta, _ = sv.heavy_ball_to_sgdm(0.01, 0.9, 0.0, steps=5)
    np.testing.assert_allclose(beta, 0.9)
    np.testing.assert_allclose(eta, 0.1)
    # torch with dampening 0 < tau < mu: beta_0 = (mu - tau)/(1 - tau), then mu; eta = gamma(1-tau)/(1-mu)
    eta, beta, _ = sv.heavy_ball_to_sgdm(0.01, 0.9, 0.5, steps=5)
    np.testing.assert_allclose(beta[0], 0.4 / 0.5)
    np.testing.assert_allclose(beta[1:], 0.9)
    np.testing.assert_allclose(eta, 0.01 * 0.5 / 0.1)


def test_sgd_and_sgdm_beta0_coincide_exactly(quad2):
    res = sv.simulate(quad2, [sv.SGD(0.1), sv.SGDM(0.1, 0.0)], [0.0, 0.0], steps=50, paths=300,
                      sigma=1.0, seed=2)
    assert np.array_equal(res.x_final[0], res.x_final[1])
    assert np.array_equal(res.mean[0], res.mean[1])


def test_momentum_zero_heavy_ball_is_sgd(quad2):
    res = sv.simulate(quad2, [sv.SGD(0.1), sv.HeavyBall(0.1, 0.0, dampening=0.7)], [0.0, 0.0],
                      steps=20, paths=10, sigma=1.0)
    assert np.array_equal(res.x_final[0], res.x_final[1])


def test_averaged_lr():
    np.testing.assert_allclose(schedules.averaged_lr(np.full(50, 0.1), 0.9), 0.1)
    K = 30
    trunc = schedules.averaged_lr(np.full(K, 0.1), 0.9, tail="truncate")
    np.testing.assert_allclose(trunc, 0.1 * (1 - 0.9 ** (K - np.arange(K))))
    # direct definition (Eq. 8) for a random schedule, truncated
    g = np.random.default_rng(0)
    lr, beta = g.uniform(0, 0.1, 20), g.uniform(0, 0.95, 20)
    direct = [(1 - beta[k]) * sum(lr[s] * np.prod(beta[k + 1:s + 1]) for s in range(k, 20))
              for k in range(20)]
    np.testing.assert_allclose(schedules.averaged_lr(lr, beta, tail="truncate"), direct)


def test_schedules():
    np.testing.assert_allclose(schedules.step_decay(1.0, 6, [2, 4], 0.5), [1, 1, .5, .5, .25, .25])
    np.testing.assert_allclose(schedules.warmup(1.0, 5, 4), [.25, .5, .75, 1, 1])
    cos = schedules.cosine(1.0, 10, lr_min=0.1)
    assert cos[0] == pytest.approx(1.0) and cos[-1] > 0.1 and np.all(np.diff(cos) <= 0)
    lr, beta = schedules.scaled_family(0.01, 0.5, 0.5, 4)
    np.testing.assert_allclose(1 - beta, 0.5 * 0.01 ** 0.5)
    assert schedules.svag_schedule(0.1, 4, 3).shape == (12,)
    with pytest.raises(ValueError, match="lam"):
        schedules.scaled_family(1.0, 0.0, 2.0, 4)
