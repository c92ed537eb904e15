"""Networks trained by :func:`sdeverify.train.fit`: their parameter layout and initialisation.

A model is a *description* (widths, activation, loss, weight decay); its parameters are one
flat vector per replica, laid out layer by layer as ``W_0 (in×out, row-major), b_0, W_1, b_1,
…``.  Forward and backward passes are written by hand in each backend
(:mod:`sdeverify.train.reference` is the readable NumPy version).

Initialisation is drawn from the project's counter-based generator (Philox, keyed by
``(seed, replica)``), so a replica's initial weights do not depend on how many replicas run
or on the backend: He normal (std √(2/fan_in)) for ReLU, Glorot normal
(std √(2/(fan_in + fan_out))) for tanh; biases start at zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import rng
from ..validation import finite_float, positive_int

if TYPE_CHECKING:
    from .datasets import Dataset

__all__ = ["MLP", "ACTIVATIONS", "LOSSES", "STREAM_INIT", "STREAM_BATCH", "STREAM_BATCH2",
           "STREAM_SHUFFLE", "STREAM_PROBE"]

ACTIVATIONS = {"relu": 0, "tanh": 1}
LOSSES = {"cross_entropy": 0, "squared": 1}

#: Philox stream numbers of the trainer (the counter is (index//4, step, replica, stream)).
STREAM_INIT, STREAM_BATCH, STREAM_BATCH2, STREAM_SHUFFLE, STREAM_PROBE = 11, 12, 13, 14, 15


@dataclass(frozen=True)
class MLP:
    """A multi-layer perceptron ``widths[0] → widths[1] → … → widths[-1]``.

    Hidden layers apply ``activation`` ("relu" or "tanh"); the last layer's outputs are the
    logits of ``loss``:

    * ``"cross_entropy"``: mean over the batch of ``logsumexp(z) − z_y`` (softmax CE);
    * ``"squared"``: mean over the batch of ``½‖z − e_y‖²`` (one-hot targets).

    ``weight_decay`` λ ≥ 0 adds λ·w to every parameter's gradient (``torch.optim.SGD``'s
    ``weight_decay``); reported losses are data losses, without the λ‖w‖²/2 term.

    Parameters
    ----------
    widths : layer sizes (input features, hidden widths…, classes), at least 2.
    activation : "relu" (He init) or "tanh" (Glorot init).
    loss : "cross_entropy" or "squared".
    weight_decay : λ ≥ 0.
    """
    widths: tuple
    activation: str = "relu"
    loss: str = "cross_entropy"
    weight_decay: float = 0.0

    def __init__(self, widths: Sequence[int], activation: str = "relu",
                 loss: str = "cross_entropy", weight_decay: float = 0.0):
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or len(widths) < 2:
            raise ValueError(f"widths must be a sequence of at least 2 layer sizes "
                             f"(input, ..., classes), got {widths!r}")
        w = tuple(positive_int(f"widths[{i}]", v) for i, v in enumerate(widths))
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if loss == "cross_entropy" and w[-1] < 2:
            raise ValueError(f"cross_entropy needs at least 2 classes (widths[-1] >= 2), got {w[-1]}")
        object.__setattr__(self, "widths", w)
        object.__setattr__(self, "activation", activation)
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "weight_decay", finite_float("weight_decay", weight_decay, low=0.0))

    # ---- layout -------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Number of weight layers, ``len(widths) − 1``."""
        return len(self.widths) - 1

    @property
    def n_inputs(self) -> int:
        """Input features, ``widths[0]``."""
        return self.widths[0]

    @property
    def n_classes(self) -> int:
        """Output logits (classes), ``widths[-1]``."""
        return self.widths[-1]

    def layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sizes, w_off, b_off)`` as int64 arrays: layer widths and the offsets of each
        layer's weight matrix and bias in the flat parameter vector."""
        sizes = np.asarray(self.widths, dtype=np.int64)
        w_off = np.empty(self.n_layers, dtype=np.int64)
        b_off = np.empty(self.n_layers, dtype=np.int64)
        off = 0
        for l in range(self.n_layers):
            w_off[l] = off
            off += sizes[l] * sizes[l + 1]
            b_off[l] = off
            off += sizes[l + 1]
        return sizes, w_off, b_off

    @property
    def n_params(self) -> int:
        """Length of the flat parameter vector: Σ_l (w_l·w_{l+1} + w_{l+1})."""
        w = self.widths
        return int(sum(w[l] * w[l + 1] + w[l + 1] for l in range(self.n_layers)))

    def unflatten(self, p: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(W_l, b_l), …]`` views of a flat vector ``p`` (or of ``p[..., :]`` stacked)."""
        sizes, w_off, b_off = self.layout()
        out = []
        for l in range(self.n_layers):
            i, o = int(sizes[l]), int(sizes[l + 1])
            W = p[..., w_off[l]:w_off[l] + i * o].reshape(p.shape[:-1] + (i, o))
            out.append((W, p[..., b_off[l]:b_off[l] + o]))
        return out

    def flops_per_sample(self) -> int:
        """Multiply-adds ×2 of one forward + backward pass per sample (3 GEMMs per layer,
        2 for the first layer, whose input gradient is not needed)."""
        w = self.widths
        return int(sum(2 * w[l] * w[l + 1] * (3 if l > 0 else 2) for l in range(self.n_layers)))

    # ---- initialisation ----------------------------------------------------------------
    def init(self, seed: int, replicas: int, replica_offset: int = 0,
             dtype: str = "float64") -> np.ndarray:
        """Initial flat parameters, shape ``(replicas, n_params)``: He (ReLU) or Glorot (tanh)
        normal weights from Philox stream ``STREAM_INIT`` of replica ``replica_offset + r``,
        zero biases."""
        z = rng.draws_numpy(rng.NORMAL, seed, np.arange(replicas) + replica_offset, 0,
                            STREAM_INIT, self.n_params, "float64")
        sizes, w_off, b_off = self.layout()
        p = np.zeros_like(z)
        for l in range(self.n_layers):
            i, o = int(sizes[l]), int(sizes[l + 1])
            std = np.sqrt(2.0 / i) if self.activation == "relu" else np.sqrt(2.0 / (i + o))
            sl = slice(w_off[l], w_off[l] + i * o)
            p[:, sl] = std * z[:, sl]
        return p.astype(dtype)

    def check_data(self, data: "Dataset") -> None:
        """``ValueError`` unless ``data``'s rows are vectors of ``widths[0]`` features."""
        if data.X_train.ndim != 2 or data.n_features != self.n_inputs:
            raise ValueError(f"model input width widths[0]={self.n_inputs} does not match the "
                             f"data's {data.n_features} features")

    def describe(self) -> str:
        """A one-line label, e.g. ``MLP(32-128-10, relu, cross_entropy, wd=0)``."""
        return f"MLP({'-'.join(map(str, self.widths))}, {self.activation}, {self.loss}, wd={self.weight_decay:g})"
