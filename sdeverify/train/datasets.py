"""Data sets for :func:`sdeverify.train.fit`: a generated default, package-shipped digits,
your own arrays, and CIFAR-10 from its official "python version" folder.

Every data set is split once into a fixed train/test pair (a Philox permutation keyed by the
split seed, or the official split for CIFAR-10) and standardised with the *training* set's
per-feature mean and standard deviation (features with zero spread are left centred).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from .. import rng
from ..validation import finite_float, positive_int
from ..validation import seed as valid_seed

__all__ = ["Dataset", "from_arrays", "teacher_student", "digits", "cifar10", "read_cifar10",
           "CIFAR10_TRAIN", "CIFAR10_TEST"]

STREAM_X, STREAM_TEACHER, STREAM_LABEL, STREAM_SPLIT = 21, 22, 23, 24


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification set: ``X_train (n, d)``, integer labels ``y_train`` in
    ``[0, n_classes)``, and the same for the test split (float64, standardised).

    Checked when made (finite features, labels in range, ``n_classes`` an integer >= 2) and
    immutable after: the arrays are read-only (a writable array passed in is copied first),
    so nothing can put NaN into a data set that was checked."""
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str = "data"

    def __repr__(self) -> str:
        """One line: the name, the shapes and the classes (not thousands of array rows)."""
        return (f"Dataset({self.name!r}, train {tuple(self.X_train.shape)}, "
                f"test {tuple(self.X_test.shape)}, {self.n_classes} classes, "
                f"fingerprint {self.fingerprint()})")

    def __post_init__(self):
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, (int, np.integer)) \
                or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {self.n_classes!r}")
        object.__setattr__(self, "n_classes", int(self.n_classes))
        for part in ("train", "test"):
            X, y = getattr(self, f"X_{part}"), getattr(self, f"y_{part}")
            _check_xy(X, y, self.n_classes, f"X_{part}", f"y_{part}")
        if self.X_train.shape[1:] != self.X_test.shape[1:]:
            raise ValueError(f"X_train has samples of shape {self.X_train.shape[1:]} but X_test "
                             f"has {self.X_test.shape[1:]}")
        for name in ("X_train", "y_train", "X_test", "y_test"):
            object.__setattr__(self, name, _read_only(getattr(self, name)))

    @property
    def n_train(self) -> int:
        """Number of training rows."""
        return int(self.X_train.shape[0])

    @property
    def n_features(self) -> int:
        """Number of features (columns of ``X_train``)."""
        return int(self.X_train.shape[1])

    def fingerprint(self) -> str:
        """A content hash (shards of one training run must use the same data)."""
        import hashlib
        h = hashlib.sha256()
        for a in (self.X_train, self.y_train, self.X_test, self.y_test):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def split_validation(self, fraction: float = 0.2, seed: int = 0) -> "Dataset":
        """A new Dataset whose test part is a held-out slice of *this* training set (for
        choosing hyper-parameters without touching the test set)."""
        fraction = finite_float("fraction", fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        perm = _permutation(self.n_train, valid_seed(seed))
        n_val = max(1, int(round(fraction * self.n_train)))
        va, tr = perm[:n_val], perm[n_val:]
        return Dataset(self.X_train[tr], self.y_train[tr], self.X_train[va], self.y_train[va],
                       self.n_classes, f"{self.name}/validation")


def _read_only(a: np.ndarray) -> np.ndarray:
    """``a`` itself if nothing can write to it (read-only and owning its data), else a
    read-only copy."""
    if a.flags.writeable or a.base is not None:
        a = a.copy()
    a.flags.writeable = False
    return a


def _frozen(*arrays: np.ndarray) -> list[np.ndarray]:
    """Arrays made here, marked read-only without a copy (those that own their data)."""
    out = []
    for a in arrays:
        if a.base is None:
            a.flags.writeable = False
        out.append(a)
    return out


def _check_xy(X, y, n_classes, xname="X", yname="y") -> None:
    if not isinstance(X, np.ndarray) or X.ndim not in (2, 4) or min(X.shape) < 1:
        raise ValueError(f"{xname} must be a 2-d array (samples, features) or a 4-d array of "
                         f"images (samples, channels, height, width), got shape "
                         f"{getattr(X, 'shape', None)}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{xname} contains NaN or inf values ({int(np.sum(~np.isfinite(X)))} entries)")
    if not isinstance(y, np.ndarray) or y.shape != (X.shape[0],):
        raise ValueError(f"{yname} must be a 1-d array with one label per row of {xname} "
                         f"({X.shape[0]}), got shape {getattr(y, 'shape', None)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{yname} must hold integer class labels, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{yname} must be in [0, {n_classes - 1}] (n_classes={n_classes}), "
                         f"got values in [{y.min()}, {y.max()}]")


def _permutation(n: int, seed: int) -> np.ndarray:
    u = rng.draws_numpy(rng.UNIFORM, seed, np.array([0]), 0, STREAM_SPLIT, n)[0]
    return np.argsort(u, kind="stable")


def _standardise(X_train, X_test):
    """Both splits centred and scaled by the training split's per-feature mean and standard
    deviation (a feature with zero spread is only centred).  Finite features too large for
    that arithmetic (|x| near 1e308) are first divided by their column's largest |x|, which
    leaves the standardised values unchanged in exact arithmetic (other columns are
    computed as they always were)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mu, sd = X_train.mean(axis=0), X_train.std(axis=0)
    huge = ~(np.isfinite(mu) & np.isfinite(sd))
    if np.any(huge):
        scale = np.where(huge, np.max(np.abs(X_train), axis=0), 1.0)
        X_train, X_test = X_train / scale, X_test / scale
        mu = np.where(huge, X_train.mean(axis=0), mu)
        sd = np.where(huge, X_train.std(axis=0), sd)
    sd = np.where(sd > 0, sd, 1.0)
    return (X_train - mu) / sd, (X_test - mu) / sd


def from_arrays(X: ArrayLike, y: ArrayLike, *, test_fraction: float = 0.2, seed: int = 0,
                standardize: bool = True, n_classes: int | None = None,
                name: str = "arrays") -> Dataset:
    """Your own data: ``X (n, d)`` features, ``y (n,)`` integer labels.  A fixed random
    ``test_fraction`` of the rows (a Philox permutation keyed by ``seed``) is held out.

    Parameters
    ----------
    X : (n, d) finite features.
    y : (n,) integer class labels in [0, n_classes) (integral floats are accepted).
    test_fraction : fraction of rows held out as the test split, in (0, 1).
    seed : key of the split permutation.
    standardize : standardise features with the training split's mean and std.
    n_classes : number of classes; default ``max(y) + 1`` (at least 2).
    name : label used in results.

    Returns
    -------
    Dataset
        float64 features and int64 labels of the two splits.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if y.dtype.kind == "f" and y.size and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    k = int(y.max()) + 1 if n_classes is None and y.size and np.issubdtype(y.dtype, np.integer) \
        else (positive_int("n_classes", n_classes) if n_classes is not None else 2)
    _check_xy(X, y, k)
    test_fraction = finite_float("test_fraction", test_fraction, low=0.0, high=1.0,
                                 low_open=True, high_open=True)
    n = X.shape[0]
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty split of {n} samples")
    perm = _permutation(n, valid_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    Xtr, Xte = X[tr], X[te]
    if standardize:
        Xtr, Xte = _standardise(Xtr, Xte)
    return Dataset(*_frozen(Xtr, y[tr].astype(np.int64), Xte, y[te].astype(np.int64)),
                   max(k, 2), name)


def teacher_student(n: int = 4096, dim: int = 32, classes: int = 10, *, hidden: int = 64,
                    label_noise: float = 0.1, temperature: float = 1.0, seed: int = 0,
                    test_fraction: float = 0.25) -> Dataset:
    """The embedded default: inputs ``x ~ N(0, I_dim)``, labels from a random teacher MLP
    ``dim → hidden (tanh) → classes`` (Glorot-normal weights scaled by 1/temperature, label =
    argmax of its logits), then a fraction ``label_noise`` of labels replaced by a uniformly
    random class.  Everything is drawn from Philox keyed by ``seed``."""
    n = positive_int("n", n)
    dim = positive_int("dim", dim)
    classes = positive_int("classes", classes)
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    hidden = positive_int("hidden", hidden)
    label_noise = finite_float("label_noise", label_noise, low=0.0, high=1.0)
    temperature = finite_float("temperature", temperature, low=0.0, low_open=True)
    seed = valid_seed(seed)
    rows = np.arange(n)
    X = rng.draws_numpy(rng.NORMAL, seed, rows, 0, STREAM_X, dim)
    tw = rng.draws_numpy(rng.NORMAL, seed, np.array([0]), 0, STREAM_TEACHER,
                         dim * hidden + hidden * classes)[0]
    W1 = tw[:dim * hidden].reshape(dim, hidden) * np.sqrt(2.0 / (dim + hidden))
    W2 = tw[dim * hidden:].reshape(hidden, classes) * np.sqrt(2.0 / (hidden + classes))
    logits = np.tanh(X @ W1) @ W2 / temperature
    y = np.argmax(logits, axis=1).astype(np.int64)
    u = rng.draws_numpy(rng.UNIFORM, seed, rows, 0, STREAM_LABEL, 2)
    flip = u[:, 0] < label_noise
    y = np.where(flip, np.minimum((u[:, 1] * classes).astype(np.int64), classes - 1), y)
    return from_arrays(X, y, test_fraction=test_fraction, seed=seed, n_classes=classes,
                       name=f"teacher_student(n={n}, dim={dim}, classes={classes}, noise={label_noise:g})")


def digits(*, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True) -> Dataset:
    """scikit-learn's bundled 8×8 handwritten digits (1797 samples, 64 features, 10
    classes; no download), split and scaled exactly as :func:`from_arrays` does with its
    defaults: a random ``test_fraction`` (0.2) of the rows held out (Philox permutation keyed
    by ``seed``) and, with ``standardize`` (the default), **every feature standardised** with
    the training split's mean and standard deviation (``standardize=False``: the raw pixel
    intensities 0..16).  Needs the optional extra: ``pip install 'sdeverify[data]'``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("digits() needs scikit-learn: pip install 'sdeverify[data]' "
                          "(or pip install scikit-learn)") from None
    d = load_digits()
    return from_arrays(d.data, d.target.astype(np.int64), test_fraction=test_fraction,
                       seed=seed, standardize=standardize, n_classes=10, name="digits")


CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"


def read_cifar10(folder: str | os.PathLike, *, n_train: int | None = None,
                 n_test: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The raw official split of the CIFAR-10 "python version" folder
    (``cifar-10-batches-py``: pickled dicts with ``b"data"``, N×3072 uint8 channel-major
    32×32 images, and ``b"labels"``): ``(X_train (50000, 3, 32, 32) uint8, y_train int64,
    X_test (10000, 3, 32, 32) uint8, y_test)``; ``n_train`` / ``n_test`` keep the first rows."""
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
    Xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if n_train is not None:
        k = positive_int("n_train", n_train)
        Xtr, ytr = Xtr[:k], ytr[:k]
    if n_test is not None:
        k = positive_int("n_test", n_test)
        Xte, yte = Xte[:k], yte[:k]
    return Xtr, ytr, Xte, yte


def cifar10(folder: str | os.PathLike, *, n_train: int | None = None,
            n_test: int | None = None) -> Dataset:
    """CIFAR-10 from the official "python version" folder (``cifar-10-batches-py``: pickled
    ``data_batch_1`` … ``data_batch_5`` and ``test_batch``, each a dict with ``b"data"``
    (N×3072 uint8, channel-major 32×32 images) and ``b"labels"``).  Uses the official split,
    flattened to 3072 features and standardised per feature; ``n_train``/``n_test`` keep the
    first rows only (for quick runs).

    Parameters
    ----------
    folder : the extracted ``cifar-10-batches-py`` directory (no download is attempted).
    n_train : keep the first ``n_train`` of the 50 000 training images (all by default).
    n_test : keep the first ``n_test`` of the 10 000 test images (all by default).

    Returns
    -------
    Dataset
        (n_train, 3072) / (n_test, 3072) standardised features, labels in [0, 10).
    """
    Xtr, ytr, Xte, yte = read_cifar10(folder, n_train=n_train, n_test=n_test)
    Xtr = Xtr.reshape(Xtr.shape[0], 3072).astype(np.float64)
    Xte = Xte.reshape(Xte.shape[0], 3072).astype(np.float64)
    Xtr, Xte = _standardise(Xtr, Xte)
    return Dataset(*_frozen(Xtr, ytr, Xte, yte), 10, "cifar10")
