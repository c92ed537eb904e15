"""Minibatch indices from the counter-based generator, shared by every backend.

A replica's batches are a pure function of ``(seed, replica, step)``, so the CPU, CUDA and
NumPy backends train on identical batches, every optimizer of a replica sees the same
batches (common random numbers: SGD-vs-SGDM differences are paired), and replica shards
reproduce the batches of one large run.

* ``sampling="replacement"``: batch slot ``s`` of step ``k`` is ``⌊u·n⌋`` for the Philox
  uniforms ``u`` of (replica, step k, stream ``STREAM_BATCH + s``), ``s = 0, 1``.
* ``sampling="shuffle"`` (epochs without replacement): epoch ``e`` of a replica is the
  permutation that sorts the uniforms of (replica, step e, ``STREAM_SHUFFLE``); step ``k``
  takes the next ``slots·B`` indices of it (the last incomplete part of an epoch is
  dropped, as ``drop_last=True`` in a torch DataLoader).
"""
from __future__ import annotations

import numpy as np

from .. import rng
from .models import STREAM_BATCH, STREAM_SHUFFLE

SAMPLING = ("shuffle", "replacement")


class BatchSampler:
    """Indices of ``slots`` (1, or 2 for SVAG) minibatches of size ``batch`` per step."""

    def __init__(self, seed: int, n: int, batch: int, replicas: np.ndarray,
                 sampling: str = "shuffle", slots: int = 1):
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        if sampling == "shuffle" and slots * batch > n:
            raise ValueError(f"batch_size={batch} (x{slots} minibatches per step) is larger than "
                             f"the training set ({n} samples)")
        self.seed, self.n, self.batch, self.slots = int(seed), int(n), int(batch), int(slots)
        self.replicas = np.asarray(replicas, dtype=np.int64)
        self.sampling = sampling
        self.steps_per_epoch = max(1, n // (slots * batch))
        self._perm_epoch, self._perm = -1, None

    def _epoch(self, e: int) -> np.ndarray:
        if e != self._perm_epoch:
            u = rng.draws_numpy(rng.UNIFORM, self.seed, self.replicas, e, STREAM_SHUFFLE, self.n)
            self._perm = np.argsort(u, axis=1, kind="stable")
            self._perm_epoch = e
        return self._perm

    def indices(self, k0: int, k1: int) -> list[np.ndarray]:
        """``slots`` int64 arrays of shape ``(k1 − k0, replicas, batch)`` for steps k0..k1−1."""
        S, R, B = k1 - k0, self.replicas.shape[0], self.batch
        out = [np.empty((S, R, B), dtype=np.int64) for _ in range(self.slots)]
        for i, k in enumerate(range(k0, k1)):
            if self.sampling == "replacement":
                for s in range(self.slots):
                    u = rng.draws_numpy(rng.UNIFORM, self.seed, self.replicas, k, STREAM_BATCH + s, B)
                    out[s][i] = np.minimum((u * self.n).astype(np.int64), self.n - 1)
            else:
                e, j = divmod(k, self.steps_per_epoch)
                perm = self._epoch(e)
                pos = j * self.slots * B
                for s in range(self.slots):
                    out[s][i] = perm[:, pos + s * B: pos + (s + 1) * B]
        return out
