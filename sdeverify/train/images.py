"""Image data sets for the conv trainer: ``Dataset`` with ``X (n, C, H, W)``.

* :func:`conv_teacher` — the embedded default for tests and quick checks: smooth random
  images labelled by a small random conv net, with label noise;
* :func:`cifar10_images` — CIFAR-10 from its official "python version" folder, kept as
  N×3×32×32 images (the form the paper's ResNets train on, Sec. 6).

Both are standardised per channel with the *training* split's mean and standard deviation
(over images, rows and columns), as ``torchvision.transforms.Normalize`` does with CIFAR's
channel statistics.
"""
from __future__ import annotations

import os

import numpy as np

from .. import rng, validation
from ..validation import finite_float, positive_int
from .conv_reference import conv2d
from .datasets import Dataset, _permutation, read_cifar10

__all__ = ["conv_teacher", "teacher_logits", "balanced_argmax", "cifar10_images",
           "standardise_channels"]

#: Philox streams of the generated images, the conv teacher's weights and the label noise.
STREAM_IMAGE, STREAM_CONV_TEACHER, STREAM_IMAGE_LABEL = 25, 26, 27
#: Channels of the teacher's two conv layers.
TEACHER_CHANNELS = (8, 16)
_BLUR = np.exp(-0.5 * np.arange(-3, 4) ** 2)
_BLUR = _BLUR / _BLUR.sum()                  # Gaussian, σ = 1 pixel, radius 3


def standardise_channels(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(X − μ_c)/σ_c`` per channel c, with μ, σ of the training images over (image, row,
    column); a channel with zero spread is only centred."""
    mu = X_train.mean(axis=(0, 2, 3), keepdims=True)
    sd = X_train.std(axis=(0, 2, 3), keepdims=True)
    sd = np.where(sd > 0, sd, 1.0)
    return (X_train - mu) / sd, (X_test - mu) / sd


def _smooth(Z: np.ndarray) -> np.ndarray:
    """Periodic separable Gaussian blur (σ = 1 pixel) of ``Z (..., H, W)``."""
    for axis in (-2, -1):
        Z = sum(w * np.roll(Z, s, axis=axis) for s, w in zip(range(-3, 4), _BLUR))
    return Z


def teacher_logits(X: np.ndarray, seed: int, classes: int) -> np.ndarray:
    """The conv teacher of :func:`conv_teacher` on images ``X (n, C, H, W)``: logits
    ``(n, classes)``.  Two 3×3 convs (``C → 8 → 16``, zero padding, He-normal weights made
    mirror-symmetric, ``w[..., j] ← (w[..., j] + w[..., k−1−j])/2``), each followed by ReLU,
    global average pooling, a linear map with standard normal weights."""
    n, C = X.shape[:2]
    K1, K2 = TEACHER_CHANNELS
    n1, n2 = K1 * C * 9, K2 * K1 * 9
    tw = rng.draws_numpy(rng.NORMAL, seed, np.array([0]), 0, STREAM_CONV_TEACHER,
                         n1 + n2 + K2 * classes)[0]
    W1 = tw[:n1].reshape(1, K1, C, 3, 3) * np.sqrt(2.0 / (C * 9))
    W2 = tw[n1:n1 + n2].reshape(1, K2, K1, 3, 3) * np.sqrt(2.0 / (K1 * 9))
    W1, W2 = (0.5 * (w + w[..., ::-1]) for w in (W1, W2))
    feats = np.empty((n, K2))
    for i in range(0, n, 256):                  # chunks: im2col of all images at once is large
        h = np.maximum(conv2d(X[None, i:i + 256], W1, 1, 1), 0.0)
        feats[i:i + 256] = np.maximum(conv2d(h, W2, 1, 1), 0.0)[0].mean(axis=(2, 3))
    return feats @ tw[n1 + n2:].reshape(K2, classes)


def balanced_argmax(logits: np.ndarray, iters: int = 200) -> np.ndarray:
    """``argmax_c (z_c + b_c)`` of the per-class standardised logits, with class offsets
    ``b`` adjusted ``iters`` times by ``b_c ← b_c − 0.1·log((count_c + 1)/(n/classes))`` so
    that the classes come out about equally frequent."""
    n, k = logits.shape
    sd = logits.std(axis=0)
    z = (logits - logits.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    bias = np.zeros(k)
    for _ in range(iters):
        counts = np.bincount(np.argmax(z + bias, axis=1), minlength=k)
        bias -= 0.1 * np.log((counts + 1) / (n / k))
    return np.argmax(z + bias, axis=1).astype(np.int64)


def conv_teacher(n: int = 4096, size: int = 16, channels: int = 3, classes: int = 10, *,
                 label_noise: float = 0.1, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """Generated images with labels from a random conv teacher (everything Philox, keyed by
    ``seed``).

    Images: white Gaussian noise blurred by a periodic Gaussian of σ = 1 pixel (a smooth
    random field).  Labels: :func:`balanced_argmax` of the :func:`teacher_logits` (two
    mirror-symmetric convs, ReLU, global average pooling, linear), then a fraction
    ``label_noise`` replaced by a uniformly random class.  The teacher commutes with the
    horizontal flip (symmetric kernels and padding) and pools globally, so a label does not
    change when the image is flipped and hardly when it is shifted: the crop-and-flip
    augmentation (:mod:`sdeverify.train.augment`) preserves labels, as it does on CIFAR.  A
    fixed ``test_fraction`` of the images (a Philox permutation keyed by ``seed``) is held
    out; per-channel standardisation.
    """
    n = positive_int("n", n)
    size = positive_int("size", size)
    if size < 4:
        raise ValueError(f"size must be >= 4 pixels, got {size}")
    channels = positive_int("channels", channels)
    classes = positive_int("classes", classes)
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    label_noise = finite_float("label_noise", label_noise, low=0.0, high=1.0)
    test_fraction = finite_float("test_fraction", test_fraction, low=0.0, high=1.0,
                                 low_open=True, high_open=True)
    seed = validation.seed(seed)
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty split of {n} images")

    rows = np.arange(n)
    X = _smooth(rng.draws_numpy(rng.NORMAL, seed, rows, 0, STREAM_IMAGE, channels * size * size)
                .reshape(n, channels, size, size))
    y = balanced_argmax(teacher_logits(X, seed, classes))
    u = rng.draws_numpy(rng.UNIFORM, seed, rows, 0, STREAM_IMAGE_LABEL, 2)
    y = np.where(u[:, 0] < label_noise, np.minimum((u[:, 1] * classes).astype(np.int64), classes - 1), y)

    perm = _permutation(n, seed)
    te, tr = perm[:n_test], perm[n_test:]
    Xtr, Xte = standardise_channels(X[tr], X[te])
    return Dataset(Xtr, y[tr], Xte, y[te], classes,
                   f"conv_teacher(n={n}, {channels}x{size}x{size}, classes={classes}, "
                   f"noise={label_noise:g})")


def cifar10_images(folder: str | os.PathLike, *, n_train: int | None = None,
                   n_test: int | None = None) -> Dataset:
    """CIFAR-10 as images: the official split (:func:`read_cifar10`), ``(n, 3, 32, 32)``
    float64 standardised per channel with the training images' statistics; ``n_train`` /
    ``n_test`` keep the first images only (for quick runs; the statistics are those of the
    kept training images)."""
    Xtr, ytr, Xte, yte = read_cifar10(folder, n_train=n_train, n_test=n_test)
    Xtr, Xte = standardise_channels(Xtr.astype(np.float64), Xte.astype(np.float64))
    return Dataset(Xtr, ytr, Xte, yte, 10, "cifar10_images")
