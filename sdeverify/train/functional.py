"""A trained network at given weights: its loss, gradient, logits and predictions on given data.

For analysis code: take weights from a :class:`~sdeverify.train.TrainResult` (``res.weights``
with ``keep_weights=True``, or ``res.weight_history`` with ``record_weights=``) and evaluate the
model there, on any inputs — in float64 with the NumPy reference (:mod:`sdeverify.train.reference`,
the trainers' oracle), so the numbers do not depend on a backend::

    res = fit(model, data, [SGD(0.5), SGDM(0.5, 0.9)], batch_size=64, steps=200, keep_weights=True)
    w = res.weights[1, 0]                                   # SGDM, replica 0
    L = loss(model, w, data.X_test, data.y_test)            # mean data loss
    g = gradient(model, w, data.X_train, data.y_train)      # ∇(mean loss) + λ w
    acc = (predict(model, w, data.X_test) == data.y_test).mean()

``weights`` may be one flat vector ``(P,)`` (results are then scalars / single arrays) or a
stack ``(M, P)`` (a leading axis of M models in every result).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import reference
from .models import MLP

__all__ = ["loss", "gradient", "logits", "predict"]


def _inputs(model: Any, weights: ArrayLike, X: ArrayLike, y: ArrayLike | None):
    if not isinstance(model, MLP):
        raise ValueError(f"model must be an sdeverify.train.MLP, got {type(model).__name__}")
    W = np.asarray(weights, dtype=np.float64)
    single = W.ndim == 1
    W = np.atleast_2d(W)
    if W.ndim != 2 or W.shape[1] != model.n_params:
        raise ValueError(f"weights must have shape ({model.n_params},) or (models, "
                         f"{model.n_params}) for {model.describe()}, got {np.shape(weights)}")
    if not np.all(np.isfinite(W)):
        raise ValueError("weights must be finite")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != model.n_inputs or X.shape[0] == 0:
        raise ValueError(f"X must have shape (n >= 1, {model.n_inputs}), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X must be finite")
    M = W.shape[0]
    Xs = np.ascontiguousarray(np.broadcast_to(X, (M,) + X.shape))
    ys = None
    if y is not None:
        y = np.asarray(y)
        if y.shape != (X.shape[0],) or y.dtype.kind not in "iu" \
                or (y.size and (y.min() < 0 or y.max() >= model.n_classes)):
            raise ValueError(f"y must be {X.shape[0]} integer labels in [0, {model.n_classes - 1}], "
                             f"got shape {y.shape}, dtype {y.dtype}")
        ys = np.ascontiguousarray(np.broadcast_to(y.astype(np.int64), (M, X.shape[0])))
    return W, Xs, ys, single


def loss(model: MLP, weights: ArrayLike, X: ArrayLike, y: ArrayLike) -> np.ndarray | float:
    """Mean data loss of ``model`` at ``weights`` over ``(X, y)`` (without the weight-decay
    term: the loss ``fit`` reports); a float for one weight vector, ``(M,)`` for a stack."""
    W, Xs, ys, single = _inputs(model, weights, X, y)
    losses, _, _ = reference.loss_terms(model, reference.forward(model, W, Xs)[-1], ys)
    out = losses.mean(axis=1)
    return float(out[0]) if single else out


def gradient(model: MLP, weights: ArrayLike, X: ArrayLike, y: ArrayLike) -> np.ndarray:
    """∇ of the mean data loss over ``(X, y)`` plus λ w (λ the model's weight decay) — the
    full-batch gradient the optimizers step along; ``(P,)`` or ``(M, P)``."""
    W, Xs, ys, single = _inputs(model, weights, X, y)
    _, G = reference.loss_and_grad(model, W, Xs, ys)
    return G[0] if single else G


def logits(model: MLP, weights: ArrayLike, X: ArrayLike) -> np.ndarray:
    """The network's outputs (logits) on ``X``: ``(n, classes)`` or ``(M, n, classes)``."""
    W, Xs, _, single = _inputs(model, weights, X, None)
    Z = reference.forward(model, W, Xs)[-1]
    return Z[0] if single else Z


def predict(model: MLP, weights: ArrayLike, X: ArrayLike) -> np.ndarray:
    """Predicted classes (argmax of the logits) on ``X``: ``(n,)`` or ``(M, n)`` int64."""
    return np.argmax(logits(model, weights, X), axis=-1).astype(np.int64)
