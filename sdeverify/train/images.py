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
import pickle
from pathlib import Path

import numpy as np

from .. import rng, validation
from ..validation import finite_float, positive_int
from .conv_reference import conv2d
from .datasets import CIFAR10_TEST, CIFAR10_TRAIN, Dataset, _permutation

__all__ = ["conv_teacher", "cifar10_images", "read_cifar10", "standardise_channels"]

#: Philox streams of the generated images, the conv teacher's weights and the label noise.
STREAM_IMAGE, STREAM_CONV_TEACHER, STREAM_IMAGE_LABEL = 25, 26, 27
TEACHER_CHANNELS = 8
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


def conv_teacher(n: int = 4096, size: int = 16, channels: int = 3, classes: int = 10, *,
                 label_noise: float = 0.1, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """Generated images with labels from a random conv teacher (everything Philox, keyed by
    ``seed``).

    Images: white Gaussian noise blurred by a periodic Gaussian of σ = 1 pixel (a smooth
    random field).  Teacher: a 3×3 conv (``channels → 8``, He-normal weights, zero padding),
    ReLU, average pooling over the four quadrants of the image (so where a feature appears
    matters), a linear map of the 32 pooled features to ``classes`` logits (standard normal
    weights); each logit is standardised over the n images before the argmax, so that the
    classes are about equally frequent.  Then a fraction ``label_noise`` of the labels is
    replaced by a uniformly random class.  A fixed ``test_fraction`` of the images (a Philox
    permutation keyed by ``seed``) is held out; per-channel standardisation.
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
    K = TEACHER_CHANNELS
    tw = rng.draws_numpy(rng.NORMAL, seed, np.array([0]), 0, STREAM_CONV_TEACHER,
                         K * channels * 9 + 4 * K * classes)[0]
    Wc = tw[:K * channels * 9].reshape(1, K, channels, 3, 3) * np.sqrt(2.0 / (channels * 9))
    Wl = tw[K * channels * 9:].reshape(4 * K, classes)
    h = np.maximum(conv2d(X[None], Wc, 1, 1)[0], 0.0)           # (n, K, size, size)
    m = size // 2
    quads = [h[:, :, :m, :m], h[:, :, :m, m:], h[:, :, m:, :m], h[:, :, m:, m:]]
    feats = np.concatenate([q.mean(axis=(2, 3)) for q in quads], axis=1)
    logits = feats @ Wl
    logits = (logits - logits.mean(axis=0)) / np.where(logits.std(axis=0) > 0, logits.std(axis=0), 1.0)
    y = np.argmax(logits, axis=1).astype(np.int64)
    u = rng.draws_numpy(rng.UNIFORM, seed, rows, 0, STREAM_IMAGE_LABEL, 2)
    y = np.where(u[:, 0] < label_noise, np.minimum((u[:, 1] * classes).astype(np.int64), classes - 1), y)

    perm = _permutation(n, seed)
    te, tr = perm[:n_test], perm[n_test:]
    Xtr, Xte = standardise_channels(X[tr], X[te])
    return Dataset(Xtr, y[tr], Xte, y[te], classes,
                   f"conv_teacher(n={n}, {channels}x{size}x{size}, classes={classes}, "
                   f"noise={label_noise:g})")


def read_cifar10(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The raw official split of the CIFAR-10 "python version" folder
    (``cifar-10-batches-py``: pickled dicts with ``b"data"``, N×3072 uint8 channel-major
    32×32 images, and ``b"labels"``): ``(X_train (50000, 3, 32, 32) uint8, y_train int64,
    X_test (10000, 3, 32, 32) uint8, y_test)``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder must be the extracted 'cifar-10-batches-py' directory, "
                         f"{str(folder)!r} is not a directory")
    missing = [f for f in CIFAR10_TRAIN + (CIFAR10_TEST,) if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a CIFAR-10 python-version folder: missing {missing}")

    def read(name):
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        try:
            X = np.asarray(d[b"data"], dtype=np.uint8)
            y = np.asarray(d[b"labels"], dtype=np.int64)
        except (KeyError, TypeError):
            raise ValueError(f"{folder / name}: expected a dict with b'data' and b'labels'") from None
        if X.ndim != 2 or X.shape[1] != 3072 or y.shape != (X.shape[0],):
            raise ValueError(f"{folder / name}: data must be N x 3072 with N labels, got "
                             f"{X.shape} and {y.shape}")
        return X.reshape(-1, 3, 32, 32), y

    parts = [read(f) for f in CIFAR10_TRAIN]
    Xte, yte = read(CIFAR10_TEST)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), Xte, yte)


def cifar10_images(folder: str | os.PathLike, *, n_train: int | None = None,
                   n_test: int | None = None) -> Dataset:
    """CIFAR-10 as images: the official split (:func:`read_cifar10`), ``(n, 3, 32, 32)``
    float64 standardised per channel with the training images' statistics; ``n_train`` /
    ``n_test`` keep the first images only (for quick runs; the statistics are those of the
    kept training images)."""
    Xtr, ytr, Xte, yte = read_cifar10(folder)
    if n_train is not None:
        k = positive_int("n_train", n_train)
        Xtr, ytr = Xtr[:k], ytr[:k]
    if n_test is not None:
        k = positive_int("n_test", n_test)
        Xte, yte = Xte[:k], yte[:k]
    Xtr, Xte = standardise_channels(Xtr.astype(np.float64), Xte.astype(np.float64))
    return Dataset(Xtr, ytr, Xte, yte, 10, "cifar10_images")
