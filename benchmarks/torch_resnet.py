"""The torch baseline of the ResNet benchmarks: the same CIFAR ResNet in ``torch.nn`` and a
training step looped over M models (``torch.optim.SGD`` with momentum 0.9 and weight decay), on
the CPU or a CUDA device.  Used by ``conv_throughput.py`` (CPU) and ``gpu_conv_check.py`` (GPU);
torch is never a dependency of the package."""
from __future__ import annotations

import numpy as np


def torch_resnet(torch, model):
    """``model`` (an ``sdeverify.train.ResNet``, option-A shortcuts) as a ``torch.nn`` module."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            out = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            sc = x
            if self.stride != 1 or self.pad:
                sc = nn.functional.pad(x[:, :, ::self.stride, ::self.stride],
                                       (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return torch.relu(out + sc)

    c = model.channels
    layers = [nn.Conv2d(model.input_shape[0], c[0], 3, 1, 1, bias=False),
              nn.BatchNorm2d(c[0]), nn.ReLU()]
    cin = c[0]
    for s, cout in enumerate(c):
        for i in range(model.blocks_per_stage):
            layers.append(Block(cin, cout, 2 if (i == 0 and s > 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, model.n_classes)]
    return nn.Sequential(*layers)


def torch_loop(torch, model, X: np.ndarray, y: np.ndarray, B: int, M: int, steps: int,
               device: str = "cpu"):
    """A function running ``steps`` training steps of M independent torch copies of ``model``,
    one after the other, each on its own minibatch of B rows of ``(X, y)``."""
    nn = torch.nn
    nets = [torch_resnet(torch, model).to(device) for _ in range(M)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            for n in nets]
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    g = np.random.default_rng(0)
    idx = torch.from_numpy(g.integers(0, X.shape[0], size=(steps, M, B))).to(device)

    def run():
        for s in range(steps):
            for m in range(M):
                rows = idx[s, m]
                opts[m].zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(nets[m](Xt[rows]), yt[rows])
                loss.backward()
                opts[m].step()
        if device != "cpu":
            torch.cuda.synchronize()
    return run
