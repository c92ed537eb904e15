"""HeavyBall against the real torch.optim.SGD (skipped when torch is not installed; CI has
no torch — tests/test_optim.py checks the same semantics against a transcription of it)."""
import numpy as np
import pytest

import sdeverify as sv
from sdeverify.rng import NORMAL, draws_numpy

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("lr,momentum,dampening", [(0.05, 0.9, 0.0), (0.02, 0.8, 0.5), (0.1, 0.5, 0.9)])
def test_heavy_ball_matches_torch_sgd(lr, momentum, dampening):
    P = sv.problems.CosineWell(3)
    x0, steps, sigma, seed = np.array([0.4, -1.0, 2.0]), 60, 0.7, 5
    res = sv.simulate(P, [sv.HeavyBall(lr, momentum, dampening)], x0, steps=steps, paths=2,
                      sigma=sigma, seed=seed, record=[steps])
    for path in range(2):
        w = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum, dampening=dampening)
        v = np.empty(3)
        for k in range(steps):
            xi = draws_numpy(NORMAL, seed, np.array([path]), k, 0, 3)[0]
            P.noise.py_func(w.detach().numpy(), P.params, xi, v)
            opt.zero_grad()
            loss = 0.5 * (w ** 2).sum() + P.amplitude * torch.cos(w).sum()
            loss.backward()
            with torch.no_grad():
                w.grad += sigma * torch.from_numpy(v)
            opt.step()
        np.testing.assert_allclose(res.x_final[0, path], w.detach().numpy(), rtol=1e-12, atol=1e-12)
