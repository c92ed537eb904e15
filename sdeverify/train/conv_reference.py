"""NumPy reference of the CIFAR ResNet (:mod:`sdeverify.train.convnet`): plain, readable, the
oracle of the conv tests.

Every function works on a stack of M models at once: activations are ``(M, B, C, H, W)``
(model, image, channel, row, column), parameters the views of
:meth:`ResNet.unflatten` with a leading model axis.

* ``conv2d``: k×k, stride 1 or 2, zero padding, no bias, by im2col — the patches of every
  output pixel form the rows of a ``(B·Ho·Wo, C·k·k)`` matrix per model, multiplied by the
  ``(O, C·k·k)`` weight matrix; the backward pass is the two transposed products and col2im
  (the patch gradients added back onto the padded input).
* ``BatchNorm2d``, training mode: per model and channel, the batch mean and the *biased*
  variance over (image, row, column) normalise (ε = 1e-5), then the affine γ·x̂ + β; the exact
  backward pass through the statistics.  The running statistics are updated as torch does
  (momentum 0.1): ``mean ← 0.9·mean + 0.1·μ``, ``var ← 0.9·var + 0.1·σ²·N/(N − 1)`` with the
  *unbiased* batch variance, N = B·H·W.  Evaluation mode normalises by the running
  statistics (a fixed affine map; its backward pass has no statistics terms).
* ReLU, basic blocks with option A/B shortcuts, global average pooling, linear head,
  softmax cross-entropy (mean over the batch; :func:`sdeverify.train.reference.loss_terms`).

:class:`ConvTrainer` implements the backend contract of :mod:`sdeverify.train.reference`,
with BN running statistics as part of the state and optional augmentation parameters per
step (:mod:`sdeverify.train.augment`).  The network's wiring (:class:`_Net`) calls its layer
functions through an :class:`Ops` table, so a backend with another memory layout
(:mod:`sdeverify.train.conv_cpu`, channels last) supplies only the layers and reuses the
wiring, the loss, the training loop and the SVAG / running-statistics rules.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .augment import apply as augment_apply
from .convnet import BN_EPS, BN_MOMENTUM, Block, ResNet
from .reference import _stack, loss_terms

__all__ = ["conv2d", "conv2d_backward", "batchnorm_train", "batchnorm_eval", "batchnorm_backward",
           "shortcut_a", "shortcut_a_backward", "Ops", "NCHW", "forward", "backward",
           "loss_and_grad", "ConvTrainer"]


# ---- convolution ---------------------------------------------------------------------------
def _out_size(h: int, k: int, stride: int, pad: int) -> int:
    return (h + 2 * pad - k) // stride + 1


def im2col(X: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """Patches ``(M, B, Ho, Wo, C, k, k)`` of ``X (M, B, C, H, W)``: entry ``[..., i, j]`` of
    output pixel (ho, wo) is the zero-padded input at row ``ho·stride + i − pad``, column
    ``wo·stride + j − pad``."""
    M, B, C, H, W = X.shape
    Ho, Wo = _out_size(H, k, stride, pad), _out_size(W, k, stride, pad)
    Xp = np.pad(X, ((0, 0), (0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((M, B, Ho, Wo, C, k, k), dtype=X.dtype)
    for i in range(k):
        for j in range(k):
            win = Xp[:, :, :, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]
            cols[..., i, j] = win.transpose(0, 1, 3, 4, 2)
    return cols


def col2im(dcols: np.ndarray, x_shape: tuple, stride: int, pad: int) -> np.ndarray:
    """The adjoint of :func:`im2col`: patch gradients ``(M, B, Ho, Wo, C, k, k)`` summed back
    onto the input ``x_shape``."""
    M, B, C, H, W = x_shape
    Ho, Wo, k = dcols.shape[2], dcols.shape[3], dcols.shape[-1]
    dXp = np.zeros((M, B, C, H + 2 * pad, W + 2 * pad), dtype=dcols.dtype)
    for i in range(k):
        for j in range(k):
            dXp[:, :, :, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride] += \
                dcols[..., i, j].transpose(0, 1, 4, 2, 3)
    return dXp[:, :, :, pad:pad + H, pad:pad + W]


def _bmm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A[m] @ B[m]`` for every model m, one 2-D product each: NumPy sends 2-D products (plain
    or transposed views) to BLAS, but not stacked 3-D ones with a transposed operand (10-50×
    slower for the conv shapes here)."""
    out = np.empty((A.shape[0], A.shape[1], B.shape[2]), dtype=np.result_type(A, B))
    for m in range(A.shape[0]):
        np.matmul(A[m], B[m], out=out[m])
    return out


def conv2d(X: np.ndarray, Wt: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """``out[m, b, o, ho, wo] = Σ_{c,i,j} Wt[m, o, c, i, j] · X_pad[m, b, c, ho·s + i, wo·s + j]``
    for ``X (M, B, C, H, W)`` and ``Wt (M, O, C, k, k)``; output ``(M, B, O, Ho, Wo)``."""
    M, B = X.shape[:2]
    O, k = Wt.shape[1], Wt.shape[-1]
    cols = im2col(X, k, stride, pad)
    Ho, Wo = cols.shape[2:4]
    rows = _bmm(cols.reshape(M, B * Ho * Wo, -1), Wt.reshape(M, O, -1).transpose(0, 2, 1))
    return np.ascontiguousarray(rows.reshape(M, B, Ho, Wo, O).transpose(0, 1, 4, 2, 3))


def conv2d_backward(dout: np.ndarray, X: np.ndarray, Wt: np.ndarray, stride: int, pad: int,
                    need_dx: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """``(dX, dWt)`` from ``dout = ∂loss/∂out (M, B, O, Ho, Wo)`` (the patches are recomputed
    from ``X`` rather than kept from the forward pass); ``dX`` is None unless ``need_dx``."""
    M, B, O, Ho, Wo = dout.shape
    k = Wt.shape[-1]
    drows = np.ascontiguousarray(dout.transpose(0, 1, 3, 4, 2)).reshape(M, B * Ho * Wo, O)
    cols = im2col(X, k, stride, pad).reshape(M, B * Ho * Wo, -1)
    dW = _bmm(drows.transpose(0, 2, 1), cols).reshape(Wt.shape)
    if not need_dx:
        return None, dW
    dcols = _bmm(drows, Wt.reshape(M, O, -1)).reshape(M, B, Ho, Wo, *Wt.shape[2:])
    return col2im(dcols, X.shape, stride, pad), dW


# ---- batch normalisation -------------------------------------------------------------------
def _ch(v: np.ndarray) -> np.ndarray:
    """A per-(model, channel) ``(M, C)`` array broadcast against ``(M, B, C, H, W)``."""
    return v[:, None, :, None, None]


def batchnorm_train(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = BN_EPS):
    """Training-mode BatchNorm2d of ``x (M, B, C, H, W)`` with ``γ, β (M, C)``.

    Returns ``(y, cache, mean, var_unbiased)``: the output, what :func:`batchnorm_backward`
    needs, and the batch statistics for the running-statistics update.  ValueError if a
    channel has fewer than 2 values (B·H·W < 2: no variance)."""
    M, B, C, H, W = x.shape
    N = B * H * W
    if N < 2:
        raise ValueError(f"batch: BatchNorm in training mode needs more than 1 value per "
                         f"channel (batch × height × width >= 2), got {B} x {H} x {W}")
    mean = x.mean(axis=(1, 3, 4))
    xc = x - _ch(mean)
    var = (xc * xc).mean(axis=(1, 3, 4))
    inv = 1.0 / np.sqrt(var + eps)
    xhat = xc * _ch(inv)
    return _ch(gamma) * xhat + _ch(beta), ("train", xhat, inv, gamma), mean, var * (N / (N - 1))


def batchnorm_eval(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                   running_var: np.ndarray, eps: float = BN_EPS):
    """Evaluation-mode BatchNorm2d: ``γ (x − running_mean)/√(running_var + ε) + β``.
    Returns ``(y, cache)``."""
    inv = 1.0 / np.sqrt(running_var + eps)
    xhat = (x - _ch(running_mean)) * _ch(inv)
    return _ch(gamma) * xhat + _ch(beta), ("eval", xhat, inv, gamma)


def batchnorm_backward(dy: np.ndarray, cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dx, dγ, dβ)`` of either mode.  Training mode differentiates through the batch
    statistics: ``dx = γ/(σ N) · (N dy − Σdy − x̂ Σ(dy x̂))`` with sums over (image, row,
    column) of each channel; evaluation mode is ``dx = γ dy/σ_running``."""
    mode, xhat, inv, gamma = cache
    dbeta = dy.sum(axis=(1, 3, 4))
    dgamma = (dy * xhat).sum(axis=(1, 3, 4))
    if mode == "eval":
        return dy * _ch(gamma * inv), dgamma, dbeta
    N = dy.shape[1] * dy.shape[3] * dy.shape[4]
    dx = _ch(gamma * inv / N) * (N * dy - _ch(dbeta) - xhat * _ch(dgamma))
    return dx, dgamma, dbeta


# ---- shortcut A ----------------------------------------------------------------------------
def shortcut_a(x: np.ndarray, c_out: int) -> np.ndarray:
    """Option-A shortcut: ``x[..., ::2, ::2]`` with ``(c_out − C)//2`` zero channels in front
    and the rest behind."""
    M, B, C, H, W = x.shape
    front = (c_out - C) // 2
    out = np.zeros((M, B, c_out, (H + 1) // 2, (W + 1) // 2), dtype=x.dtype)
    out[:, :, front:front + C] = x[:, :, :, ::2, ::2]
    return out


def shortcut_a_backward(dout: np.ndarray, x_shape: tuple) -> np.ndarray:
    """The adjoint of :func:`shortcut_a`."""
    C = x_shape[2]
    front = (dout.shape[2] - C) // 2
    dx = np.zeros(x_shape, dtype=dout.dtype)
    dx[:, :, :, ::2, ::2] = dout[:, :, front:front + C]
    return dx


# ---- the network ---------------------------------------------------------------------------
class Ops(NamedTuple):
    """The layer functions a network pass calls, for one memory layout of the activations
    (the NumPy reference: :data:`NCHW`; the Numba CPU backend: channels last).  Each has the
    signature of the reference function of the same name; ``to_internal`` maps images
    ``(M, B, C, H, W)`` to the layout, ``pool`` is global average pooling to ``(M, B, C)``
    and ``pool_backward(df, h_shape)`` its adjoint; ``relu(x) = max(x, 0)``,
    ``add_relu(u, s) = max(u + s, 0)`` (a block's output) and ``relu_backward(d, y) =
    d·[y > 0]`` (the gradient through a ReLU whose output was ``y``)."""
    to_internal: Callable
    conv2d: Callable
    conv2d_backward: Callable
    batchnorm_train: Callable
    batchnorm_eval: Callable
    batchnorm_backward: Callable
    shortcut_a: Callable
    shortcut_a_backward: Callable
    pool: Callable
    pool_backward: Callable
    relu: Callable
    add_relu: Callable
    relu_backward: Callable


#: The reference layout: activations ``(M, B, C, H, W)``, the functions above.
NCHW = Ops(lambda X: X, conv2d, conv2d_backward, batchnorm_train, batchnorm_eval,
           batchnorm_backward, shortcut_a, shortcut_a_backward,
           lambda h: h.mean(axis=(3, 4)),
           lambda df, shape: np.broadcast_to(df[..., None, None] / (shape[3] * shape[4]), shape),
           lambda x: np.maximum(x, 0.0), lambda u, s: np.maximum(u + s, 0.0),
           lambda d, y: d * (y > 0))


class _Net:
    """One forward pass of a stack of models (parameters ``P``, running statistics ``R``)
    and its backward pass, with the layer functions ``ops``; the intermediate values live in
    ``self.tape``."""

    def __init__(self, model: ResNet, W: np.ndarray, buffers: np.ndarray | None, train: bool,
                 ops: Ops = NCHW):
        self.model, self.train, self.ops = model, train, ops
        self.P = model.unflatten(W)
        self.R = None if buffers is None else model.unflatten_buffers(buffers)
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.tape: dict[str, tuple] = {}

    def conv_bn(self, conv: str, bn: str, x, stride: int, pad: int):
        ops = self.ops
        c = ops.conv2d(x, self.P[conv], stride, pad)
        if not self.model.norm:                    # no BatchNorm: the conv output goes on
            self.tape[conv] = (x, stride, pad, None)
            return c
        g, b = self.P[f"{bn}.weight"], self.P[f"{bn}.bias"]
        if self.train:
            y, cache, mean, var = ops.batchnorm_train(c, g, b)
            self.stats[bn] = (mean, var)
        else:
            y, cache = ops.batchnorm_eval(c, g, b, self.R[f"{bn}.running_mean"],
                                          self.R[f"{bn}.running_var"])
        self.tape[conv] = (x, stride, pad, cache)
        return y

    def conv_bn_backward(self, conv: str, bn: str, dy, G, need_dx: bool = True):
        x, stride, pad, cache = self.tape[conv]
        if cache is None:
            dc = dy
        else:
            dc, G[f"{bn}.weight"][...], G[f"{bn}.bias"][...] = self.ops.batchnorm_backward(dy, cache)
        dx, G[conv][...] = self.ops.conv2d_backward(dc, x, self.P[conv], stride, pad, need_dx)
        return dx

    def block(self, blk: Block, x):
        p = blk.prefix
        h = self.ops.relu(self.conv_bn(f"{p}.conv1.weight", f"{p}.bn1", x, blk.stride, 1))
        u = self.conv_bn(f"{p}.conv2.weight", f"{p}.bn2", h, 1, 1)
        if blk.shortcut == "B":
            s = self.conv_bn(f"{p}.shortcut.0.weight", f"{p}.shortcut.1", x, blk.stride, 0)
        elif blk.shortcut == "A":
            s = self.ops.shortcut_a(x, blk.c_out)
        else:
            s = x
        out = self.ops.add_relu(u, s)
        self.tape[p] = (x.shape, h, out)
        return out

    def block_backward(self, blk: Block, dout, G):
        p = blk.prefix
        x_shape, h, out = self.tape[p]
        d = self.ops.relu_backward(dout, out)
        dh = self.ops.relu_backward(self.conv_bn_backward(f"{p}.conv2.weight", f"{p}.bn2", d, G), h)
        dx = self.conv_bn_backward(f"{p}.conv1.weight", f"{p}.bn1", dh, G)
        if blk.shortcut == "B":
            dx += self.conv_bn_backward(f"{p}.shortcut.0.weight", f"{p}.shortcut.1", d, G)
        elif blk.shortcut == "A":
            dx += self.ops.shortcut_a_backward(d, x_shape)
        else:
            dx += d
        return dx

    def forward(self, X):
        h = self.ops.relu(self.conv_bn("conv1.weight", "bn1", self.ops.to_internal(X), 1, 1))
        self.tape["stem"] = h
        for blk in self.model.blocks():
            h = self.block(blk, h)
        f = self.ops.pool(h)                                        # global average pooling
        self.tape["head"] = (f, h.shape)
        return f @ self.P["linear.weight"].transpose(0, 2, 1) + self.P["linear.bias"][:, None, :]

    def backward(self, dZ, G):
        f, h_shape = self.tape["head"]
        G["linear.weight"][...] = dZ.transpose(0, 2, 1) @ f
        G["linear.bias"][...] = dZ.sum(axis=1)
        df = dZ @ self.P["linear.weight"]
        dh = self.ops.pool_backward(df, h_shape)
        for blk in reversed(self.model.blocks()):
            dh = self.block_backward(blk, dh, G)
        dh = self.ops.relu_backward(dh, self.tape["stem"])
        self.conv_bn_backward("conv1.weight", "bn1", dh, G, need_dx=False)

    def updated_buffers(self, buffers: np.ndarray) -> np.ndarray:
        """The running statistics after this (training-mode) batch, torch's rule."""
        out = buffers.copy()
        views = self.model.unflatten_buffers(out)
        for bn, (mean, var) in self.stats.items():
            rm, rv = views[f"{bn}.running_mean"], views[f"{bn}.running_var"]
            rm[...] = (1.0 - BN_MOMENTUM) * rm + BN_MOMENTUM * mean
            rv[...] = (1.0 - BN_MOMENTUM) * rv + BN_MOMENTUM * var
        return out


def check_images(model: ResNet, X: np.ndarray, name: str = "X", lead: int = 1) -> None:
    """ValueError unless ``X`` has ``lead`` leading axes followed by ``model.input_shape``."""
    if X.ndim != lead + 3 or tuple(X.shape[lead:]) != model.input_shape:
        raise ValueError(f"{name} must have shape (..., {', '.join(map(str, model.input_shape))}) "
                         f"with {lead} leading ax{'i' if lead == 1 else 'e'}s to match the model "
                         f"(channels, height, width), got {X.shape}")


def forward(model: ResNet, W: np.ndarray, X: np.ndarray, buffers: np.ndarray | None = None,
            train: bool = True, ops: Ops = NCHW) -> np.ndarray:
    """Logits ``(M, B, classes)`` of images ``X (M, B, C, H, W)``; evaluation mode
    (``train=False``) normalises with the running statistics ``buffers (M, n_buffers)``."""
    check_images(model, X, lead=2)
    if not train and buffers is None:
        raise ValueError("buffers: evaluation mode needs the BN running statistics")
    return _Net(model, W, buffers, train, ops).forward(X)


def backward(net: _Net, dZ: np.ndarray, W: np.ndarray) -> np.ndarray:
    """The flat gradient ``(M, P)`` of a forward pass ``net`` given ``dZ = ∂loss/∂logits``."""
    G = np.zeros_like(W)
    net.backward(dZ, net.model.unflatten(G))
    return G


def loss_and_grad(model: ResNet, W: np.ndarray, X: np.ndarray, y: np.ndarray,
                  buffers: np.ndarray | None = None, train: bool = True, decay: bool = True,
                  ops: Ops = NCHW):
    """Mean cross-entropy ``(M,)``, its gradient ``(M, P)`` (plus λ·mask·w when ``decay``,
    mask = :meth:`ResNet.decay_mask`) and the BN running statistics after the batch.

    ``X (M, B, C, H, W)``, ``y (M, B)``.  Training mode (``train=True``) normalises by the
    batch statistics and returns the updated running statistics (None when ``buffers`` is
    None); evaluation mode uses ``buffers`` and returns them unchanged.  Nothing is modified
    in place.  ``ops``: the layer functions (:class:`Ops`)."""
    check_images(model, X, lead=2)
    if not train and buffers is None:
        raise ValueError("buffers: evaluation mode needs the BN running statistics")
    net = _Net(model, W, buffers, train, ops)
    Z = net.forward(X)
    losses, _, dZ = loss_terms(model, Z, y)
    G = backward(net, dZ / X.shape[1], W)
    if decay and model.weight_decay:
        G += model.weight_decay * model.decay_mask() * W
    new = net.updated_buffers(buffers) if (train and buffers is not None) else buffers
    return losses.mean(axis=1), G, new


# ---- the trainer ---------------------------------------------------------------------------
class ConvTrainer:
    """NumPy reference backend for :class:`ResNet` (contract: :mod:`sdeverify.train.reference`).

    ``X (n, C, H, W)`` images and ``y (n,)`` labels; model ``m = j·R + r`` is optimizer ``j``
    on replica ``r``.  The state is ``(W, Mom, buffers)``: flat parameters, momentum and BN
    running statistics, ``(M, P)``, ``(M, P)``, ``(M, n_buffers)``.

    **Augmentation.** ``train(..., aug=...)`` takes, per minibatch slot, the crop offsets and
    flips ``(dy, dx, flip)`` of :func:`sdeverify.train.augment.draw`, each ``(S, R, B)``, for
    the rows ``idx[slot]``; every optimizer of a replica sees the same augmented images.

    **SVAG and BatchNorm.** SVAG's gradient ``r₁ g(B₁) + r₂ g(B₂)`` (Def. 6.1) is computed by
    two separate forward/backward passes, each minibatch normalised by *its own* batch
    statistics: each ``g(B_s)`` is then exactly the stochastic gradient a plain step with batch
    size B computes, the two are independent draws of the same oracle at the same weights
    (what Def. 6.1 combines), and their mean is unchanged — normalising the union ``B₁ ∪ B₂``
    jointly would couple the two gradients through shared statistics and change the oracle
    to a batch-2B one.  The running statistics are updated once per step, from slot 0's batch
    statistics only, so a step with ``r = (1, 0)`` (ℓ = 1) is bitwise a plain step, and the
    running averages see one batch of size B per step whatever ℓ is (docs/theory.md §9).
    """
    #: The layer functions (a backend overrides them).
    ops: Ops = NCHW

    def __init__(self, model: ResNet, X: np.ndarray, y: np.ndarray, n_opt: int, n_rep: int,
                 dtype: str = "float64"):
        if not isinstance(model, ResNet):
            raise ValueError(f"model must be a ResNet, got {type(model).__name__}")
        self.model, self.dtype = model, np.dtype(dtype)
        X = np.asarray(X)
        check_images(model, X)
        y = np.asarray(y)
        if y.shape != (X.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must be integer labels, one per image ({X.shape[0]}), got "
                             f"{y.dtype} of shape {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= model.n_classes):
            raise ValueError(f"y must be in [0, {model.n_classes - 1}], got values in "
                             f"[{y.min()}, {y.max()}]")
        if not np.all(np.isfinite(X)):
            raise ValueError("X contains NaN or inf values")
        self.X = np.ascontiguousarray(X, dtype=self.dtype)
        self.y = np.ascontiguousarray(y, dtype=np.int64)
        self.J, self.R = n_opt, n_rep
        self.decay = (model.weight_decay * model.decay_mask()).astype(self.dtype)
        self.W = self.Mom = self.buffers = None

    def set_state(self, W, Mom, buffers=None) -> None:
        """Parameters, momentum and BN running statistics (default: 0 means, 1 variances)."""
        self.W = np.array(W, dtype=self.dtype, order="C")
        self.Mom = np.array(Mom, dtype=self.dtype, order="C")
        self.buffers = (self.model.init_buffers(self.W.shape[0], self.dtype) if buffers is None
                        else np.array(buffers, dtype=self.dtype, order="C"))

    def get_state(self):
        """``(W, Mom, buffers)`` copies."""
        return self.W.copy(), self.Mom.copy(), self.buffers.copy()

    def _images(self, rows: np.ndarray, aug, s: int) -> np.ndarray:
        """The (augmented) images of ``rows (R, B)``, tiled over the optimizers: (M, B, C, H, W)."""
        X = self.X[rows]
        if aug is not None:
            dy, dx, flip = aug
            X = augment_apply(X, dy[s], dx[s], flip[s])
        return np.tile(X, (self.J, 1, 1, 1, 1))

    def train(self, idx, a, b, gamma, r, aug=None) -> np.ndarray:
        """S steps (module contract); returns slot 0's mean batch loss before each step."""
        S = idx[0].shape[0]
        if idx[0].shape[2] < 2:
            raise ValueError(f"batch: BatchNorm in training mode needs a batch of at least 2 "
                             f"images, got {idx[0].shape[2]}")
        M = self.J * self.R
        out = np.empty((S, M))
        jj = np.repeat(np.arange(self.J), self.R)
        dt = self.dtype.type
        for s in range(S):
            g = np.zeros_like(self.W)
            buffers = self.buffers
            for slot in range(len(idx)):
                if r[slot] == 0.0:
                    continue
                rows = idx[slot][s]
                Xb = self._images(rows, None if aug is None else aug[slot], s)
                loss, G, new = loss_and_grad(self.model, self.W, Xb, np.tile(self.y[rows], (self.J, 1)),
                                             self.buffers, train=True, decay=False, ops=self.ops)
                g += dt(r[slot]) * G
                if slot == 0:
                    out[s] = loss
                    buffers = new
            g += self.decay * self.W
            self.Mom = a[jj, s, None].astype(self.dtype) * self.Mom + b[jj, s, None].astype(self.dtype) * g
            self.W = self.W - gamma[jj, s, None].astype(self.dtype) * self.Mom
            self.buffers = buffers
        return out

    def evaluate(self, X, y, chunk: int = 256):
        """Summed loss and correct predictions ``(M,)`` on ``(X, y)`` in evaluation mode
        (BN running statistics)."""
        X = np.asarray(X, dtype=self.dtype)
        check_images(self.model, X)
        M = self.W.shape[0]
        loss_sum, correct = np.zeros(M), np.zeros(M)
        for i in range(0, X.shape[0], chunk):
            yb = np.asarray(y[i:i + chunk], dtype=np.int64)
            Z = forward(self.model, self.W, _stack(X[i:i + chunk], M), self.buffers, train=False,
                        ops=self.ops)
            losses, corr, _ = loss_terms(self.model, Z, _stack(yb, M))
            loss_sum += losses.sum(axis=1)
            correct += corr.sum(axis=1)
        return loss_sum, correct

    def gradients(self, W, X, y):
        """Gradient (λ·mask·w included) of the mean loss over ``(X, y)`` at ``W (M, P)``, BN in
        training mode with the statistics of the whole ``X``; the running statistics are not
        touched."""
        W = np.asarray(W, dtype=self.dtype)
        X = np.asarray(X, dtype=self.dtype)
        check_images(self.model, X)
        M = W.shape[0]
        _, G, _ = loss_and_grad(self.model, W, _stack(X, M), _stack(np.asarray(y, dtype=np.int64), M),
                                ops=self.ops)
        return G
