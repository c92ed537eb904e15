"""Small stand-ins for data the tests cannot download."""
from __future__ import annotations

import pickle

import numpy as np


def write_fake_cifar(folder, n_per: int = 6) -> None:
    """A CIFAR-10 "python version" folder with ``n_per`` random images per batch file."""
    rs = np.random.default_rng(0)
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rs.integers(0, 256, (n_per, 3072), dtype=np.uint8),
             b"labels": list(rs.integers(0, 10, n_per)), b"batch_label": name.encode()}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
