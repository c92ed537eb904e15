"""CIFAR data augmentation from the counter-based generator: random crop with 4-pixel zero
padding, then a horizontal flip with probability 1/2 (torchvision's ``RandomCrop(32,
padding=4)`` followed by ``RandomHorizontalFlip()``, the paper's CIFAR-10 pipeline).

The parameters of one image are a pure function of ``(seed, replica, epoch, sample index)``:
one Philox4x32-10 block with counter ``(sample, epoch, replica, STREAM_AUG)`` (the layout of
:func:`sdeverify.rng.draws_numpy`: the block of draws ``4·sample … 4·sample + 3`` of path
``replica``, step ``epoch``, stream ``STREAM_AUG``) gives four 32-bit words ``w0..w3``:

    dy = ⌊w0 · (2·pad + 1) / 2³²⌋ − pad,   dx = ⌊w1 · (2·pad + 1) / 2³²⌋ − pad,
    flip = the top bit of w2

(integer arithmetic only, so every backend computes the same values).  Because the key is the
*sample index*, not its position in a batch, every backend and every optimizer of a replica
sees the same augmented images, whatever the batch composition; an image drawn twice in one
epoch (sampling with replacement) is augmented the same way both times.
"""
from __future__ import annotations

import numpy as np

from .. import rng

__all__ = ["STREAM_AUG", "PAD", "draw", "apply"]

#: Philox stream of the augmentation parameters (next to the trainer's streams 11-15).
STREAM_AUG = 16
#: Zero padding of the random crop (pixels on each side).
PAD = 4


def draw(seed: int, replicas: np.ndarray, epoch, sample_idx: np.ndarray,
         pad: int = PAD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop offsets and flips of the images ``sample_idx`` (module docstring).

    Parameters
    ----------
    seed : the run's seed.
    replicas : ``(R,)`` replica indices.
    epoch : an int, or an integer array of shape ``sample_idx.shape[:-2]`` (e.g. one epoch
        per step of a ``(S, R, B)`` index array).
    sample_idx : ``(..., R, B)`` row indices into the training set; axis −2 is the replica.
    pad : the crop's zero padding (offsets in [−pad, pad]).

    Returns
    -------
    (dy, dx, flip)
        int64 offsets in [−pad, pad] and bool flips, each of ``sample_idx``'s shape.
    """
    replicas = np.asarray(replicas).reshape(-1)
    sample_idx = np.asarray(sample_idx)
    if sample_idx.ndim < 2 or sample_idx.shape[-2] != replicas.shape[0]:
        raise ValueError(f"sample_idx must have shape (..., replicas={replicas.shape[0]}, batch), "
                         f"got {sample_idx.shape}")
    if sample_idx.size and (sample_idx.dtype.kind not in "iu" or sample_idx.min() < 0):
        raise ValueError("sample_idx must hold non-negative integer row indices")
    epoch = np.asarray(epoch)
    if epoch.dtype.kind not in "iu" or (epoch.size and epoch.min() < 0):
        raise ValueError(f"epoch must be a non-negative integer (or array of them), got {epoch!r}")
    if epoch.ndim and epoch.shape != sample_idx.shape[:-2]:
        raise ValueError(f"epoch must be an int or have shape {sample_idx.shape[:-2]}, got {epoch.shape}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    rng.check_path_range(replicas, STREAM_AUG)
    k0, k1 = rng.key_words(seed)
    shape = sample_idx.shape
    reps = replicas.astype(np.uint64)
    with np.errstate(over="ignore"):
        c0 = sample_idx.astype(np.uint64)
        c1 = np.broadcast_to(epoch.astype(np.uint64).reshape(epoch.shape + (1, 1)), shape) & rng.MASK32
        c2 = np.broadcast_to((reps & rng.MASK32)[:, None], shape)
        c3 = np.broadcast_to(rng.stream_word(reps, STREAM_AUG)[:, None], shape)
        w = rng.philox4x32_py(c0, np.ascontiguousarray(c1), np.ascontiguousarray(c2),
                              np.ascontiguousarray(c3), k0, k1)
    n = np.uint64(2 * pad + 1)
    dy = ((w[0] * n) >> np.uint64(32)).astype(np.int64) - pad
    dx = ((w[1] * n) >> np.uint64(32)).astype(np.int64) - pad
    flip = (w[2] >> np.uint64(31)).astype(bool)
    return dy, dx, flip


def apply(X: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Augmented copies of images ``X (..., C, H, W)``; ``dy, dx, flip`` have shape
    ``X.shape[:-3]``.

    The crop of the zero-padded image at offset ``(pad + dy, pad + dx)`` is
    ``crop[c, i, j] = X[c, i + dy, j + dx]`` (0 outside the image), and the flip reverses
    its columns: ``out[c, i, j] = crop[c, i, W − 1 − j]`` when ``flip``."""
    X = np.asarray(X)
    lead, (C, H, W) = X.shape[:-3], X.shape[-3:]
    dy, dx, flip = (np.asarray(v) for v in (dy, dx, flip))
    for name, v in (("dy", dy), ("dx", dx), ("flip", flip)):
        if v.shape != lead:
            raise ValueError(f"{name} must have shape {lead} (X's leading axes), got {v.shape}")
    N = int(np.prod(lead, dtype=np.int64))
    Xf = X.reshape(N, C, H, W)
    rows = np.arange(H)[None, :] + dy.reshape(N, 1)
    j = np.arange(W)[None, :]
    cols = np.where(flip.reshape(N, 1), W - 1 - j, j) + dx.reshape(N, 1)
    inside = (((rows >= 0) & (rows < H))[:, None, :, None]
              & ((cols >= 0) & (cols < W))[:, None, None, :])
    out = Xf[np.arange(N)[:, None, None, None], np.arange(C)[None, :, None, None],
             np.clip(rows, 0, H - 1)[:, None, :, None], np.clip(cols, 0, W - 1)[:, None, None, :]]
    return np.where(inside, out, np.zeros((), dtype=X.dtype)).reshape(X.shape)
