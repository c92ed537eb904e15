"""Optional parity with torch (skipped when torch is not installed; torch is never a
runtime dependency): the same MLP from the same weights on the same batches, trained by
``torch.optim.SGD(momentum, dampening, weight_decay)`` and by our trainer with
``HeavyBall`` and with the converted EMA-form ``SGDM``, agrees to 1e-10 after 50 steps."""
import numpy as np
import pytest

import sdeverify as sv
from sdeverify.train import MLP, teacher_student
from sdeverify.train import cpu
from sdeverify.train.batches import BatchSampler

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("act,loss", [("relu", "cross_entropy"), ("tanh", "squared")])
def test_trainer_matches_torch_sgd(act, loss):
    torch.set_default_dtype(torch.float64)
    data = teacher_student(n=128, dim=6, classes=4, hidden=8, seed=2)
    m = MLP([6, 9, 7, 4], act, loss, weight_decay=1e-3)
    S, B, lr, mu, tau = 50, 16, 0.05, 0.9, 0.1
    W0 = m.init(3, 1)
    idx = BatchSampler(1, data.n_train, B, np.arange(1), "shuffle").indices(0, S)

    layers = []
    for l, (W, b) in enumerate(m.unflatten(W0[0])):
        lin = torch.nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(lin)
        if l < m.n_layers - 1:
            layers.append(torch.nn.ReLU() if act == "relu" else torch.nn.Tanh())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=mu, dampening=tau, weight_decay=1e-3)
    X = torch.from_numpy(data.X_train)
    y = torch.from_numpy(data.y_train)
    for s in range(S):
        rows = torch.from_numpy(idx[0][s, 0])
        z = net(X[rows])
        if loss == "cross_entropy":
            L = torch.nn.functional.cross_entropy(z, y[rows])
        else:
            target = torch.nn.functional.one_hot(y[rows], 4).to(z.dtype)
            L = 0.5 * ((z - target) ** 2).sum(dim=1).mean()
        opt.zero_grad()
        L.backward()
        opt.step()
    flat = np.concatenate([np.concatenate([lin.weight.detach().numpy().T.ravel(), lin.bias.detach().numpy()])
                           for lin in net if isinstance(lin, torch.nn.Linear)])

    eta, beta, _ = sv.heavy_ball_to_sgdm(lr, mu, tau, steps=S)
    for o in (sv.HeavyBall(lr, mu, tau), sv.SGDM(eta, beta)):
        c = o.coefficients(S, m.n_params)
        t = cpu.Trainer(m, data.X_train, data.y_train, 1, 1)
        t.set_state(W0, np.zeros_like(W0))
        t.train(idx, c.a[None], c.b[None], c.gamma[None], np.array([1.0]))
        assert np.max(np.abs(t.W[0] - flat) / (1 + np.abs(flat))) <= 1e-10, o
