"""The NumPy reference trainer: plain, readable, the oracle of the tests.

Backend contract (every trainer backend implements it; model ``m = j·R + r`` is optimizer
``j`` on replica ``r``, and all models of a replica share its minibatches):

* ``Trainer(model, X, y, n_opt, n_rep, dtype)`` — ``X (n, d)``, ``y (n,)`` the training set;
* ``set_state(W, Mom)`` / ``get_state() -> (W, Mom)`` — flat parameters and momentum
  buffers, ``(M, P)`` host arrays;
* ``train(idx, a, b, gamma, r) -> batch_loss`` — ``len(idx)`` minibatch slots (1, or 2 for
  SVAG), each ``(S, R, B)`` int64 row indices; per-optimizer coefficients ``a, b, gamma``
  of shape ``(J, S)``; slot weights ``r``.  For each of the S steps and every model:

      g = Σ_s r_s ∇L(w; batch_s) + λ w,   m ← a m + b g,   w ← w − γ m

  (the (a, b, γ) form of every optimizer, :mod:`sdeverify.optim`); returns the data loss of
  slot 0's batch *before* each step, ``(S, M)`` float64;
* ``evaluate(X, y) -> (loss_sum, correct)`` — summed data loss and number of correct
  predictions of every model on ``(X, y)``, ``(M,)`` float64 each;
* ``gradients(W, X, y) -> G`` — the gradient (λ w included) of the mean loss over ``(X, y)``
  at parameters ``W (M, P)``.
"""
from __future__ import annotations

import numpy as np

from .models import MLP


def forward(model: MLP, W: np.ndarray, A0: np.ndarray) -> list[np.ndarray]:
    """Activations ``[A_0, A_1, …, Z_L]`` of a stack of models: ``W (M, P)``, ``A0 (M, B, d)``;
    the last entry is the logits."""
    acts = [A0]
    layers = model.unflatten(W)
    for l, (Wl, bl) in enumerate(layers):
        Z = np.matmul(acts[-1], Wl) + bl[:, None, :]
        if l < len(layers) - 1:
            Z = np.maximum(Z, 0.0) if model.activation == "relu" else np.tanh(Z)
        acts.append(Z)
    return acts


def loss_terms(model: MLP, Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample losses ``(M, B)``, correctness ``(M, B)`` and ∂(per-sample loss)/∂Z."""
    M, B, C = Z.shape
    onehot = np.zeros_like(Z)
    np.put_along_axis(onehot, y[..., None], 1.0, axis=2)
    correct = (np.argmax(Z, axis=2) == y).astype(np.float64)
    if model.loss == "cross_entropy":
        zmax = Z.max(axis=2, keepdims=True)
        e = np.exp(Z - zmax)
        s = e.sum(axis=2, keepdims=True)
        lse = np.log(s) + zmax
        losses = (lse[..., 0] - np.take_along_axis(Z, y[..., None], axis=2)[..., 0])
        dZ = e / s - onehot
    else:
        r = Z - onehot
        losses = 0.5 * np.sum(r * r, axis=2)
        dZ = r
    return losses, correct, dZ


def loss_and_grad(model: MLP, W: np.ndarray, X: np.ndarray, y: np.ndarray,
                  decay: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mean data loss ``(M,)`` and its gradient ``(M, P)`` (plus λw when ``decay``) for
    inputs ``X (M, B, d)`` and labels ``y (M, B)``."""
    acts = forward(model, W, X)
    losses, _, dZ = loss_terms(model, acts[-1], y)
    B = X.shape[1]
    dZ = dZ / B
    G = np.zeros_like(W)
    grads = model.unflatten(G)
    layers = model.unflatten(W)
    for l in range(model.n_layers - 1, -1, -1):
        gW, gb = grads[l]
        gW[...] = np.matmul(np.swapaxes(acts[l], 1, 2), dZ)
        gb[...] = dZ.sum(axis=1)
        if l > 0:
            dA = np.matmul(dZ, np.swapaxes(layers[l][0], 1, 2))
            A = acts[l]
            dZ = dA * (A > 0) if model.activation == "relu" else dA * (1.0 - A * A)
    if decay:
        G += model.weight_decay * W
    return losses.mean(axis=1), G


class HostTrainer:
    """What the host-memory backends share: the training set and the (M, P) state arrays."""

    def __init__(self, model: MLP, X: np.ndarray, y: np.ndarray, n_opt: int, n_rep: int,
                 dtype: str = "float64"):
        self.model, self.dtype = model, np.dtype(dtype)
        self.X = np.ascontiguousarray(X, dtype=self.dtype)
        self.y = np.ascontiguousarray(y, dtype=np.int64)
        self.J, self.R = n_opt, n_rep
        self.W = self.Mom = None

    def set_state(self, W, Mom) -> None:
        self.W = np.array(W, dtype=self.dtype, order="C")
        self.Mom = np.array(Mom, dtype=self.dtype, order="C")

    def get_state(self):
        return self.W.copy(), self.Mom.copy()


class Trainer(HostTrainer):
    """NumPy reference backend (see the module docstring for the contract)."""

    def _rows(self, idx_step: np.ndarray) -> np.ndarray:
        return np.tile(idx_step, (self.J, 1))              # (M, B): model j*R + r -> replica r

    def train(self, idx, a, b, gamma, r) -> np.ndarray:
        S = idx[0].shape[0]
        M = self.J * self.R
        out = np.empty((S, M))
        jj = np.repeat(np.arange(self.J), self.R)
        dt = self.dtype.type
        for s in range(S):
            g = np.zeros_like(self.W)
            for slot in range(len(idx)):
                if r[slot] == 0.0:
                    continue
                rows = self._rows(idx[slot][s])
                loss, G = loss_and_grad(self.model, self.W, self.X[rows], self.y[rows], decay=False)
                g += dt(r[slot]) * G
                if slot == 0:
                    out[s] = loss
            g += dt(self.model.weight_decay) * self.W
            self.Mom = a[jj, s, None].astype(self.dtype) * self.Mom + b[jj, s, None].astype(self.dtype) * g
            self.W = self.W - gamma[jj, s, None].astype(self.dtype) * self.Mom
        return out

    def evaluate(self, X, y, chunk: int = 1024):
        M = self.J * self.R
        loss_sum, correct = np.zeros(M), np.zeros(M)
        X = np.asarray(X, dtype=self.dtype)
        for i in range(0, X.shape[0], chunk):
            xb, yb = X[i:i + chunk], np.asarray(y[i:i + chunk], dtype=np.int64)
            acts = forward(self.model, self.W, _stack(xb, M))
            losses, corr, _ = loss_terms(self.model, acts[-1], _stack(yb, M))
            loss_sum += losses.sum(axis=1)
            correct += corr.sum(axis=1)
        return loss_sum, correct

    def gradients(self, W, X, y):
        W = np.asarray(W, dtype=self.dtype)
        X = np.asarray(X, dtype=self.dtype)
        M = W.shape[0]
        _, G = loss_and_grad(self.model, W, _stack(X, M), _stack(np.asarray(y, dtype=np.int64), M))
        return G


def _stack(a: np.ndarray, M: int) -> np.ndarray:
    """M contiguous copies of ``a`` (a stride-0 broadcast makes np.matmul 3x slower)."""
    return np.ascontiguousarray(np.broadcast_to(a, (M,) + a.shape))


def hvp(model: MLP, W: np.ndarray, X: np.ndarray, y: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Exact Hessian–vector products ``H(w_m) v_m`` of the mean loss (+ λ‖w‖²/2) for a stack
    of models, by Pearlmutter's R-operator (forward-over-backward): the directional
    derivative of the backward pass along ``V (M, P)``.  ReLU's second derivative is taken
    as 0 (as autograd does), tanh's is −2a(1 − a²).  ``X (M, B, d)``, ``y (M, B)``.  For many
    directions at the same weights use :func:`hvp_operator` (same numbers, bitwise)."""
    return hvp_operator(model, W, X, y)(V)


def hvp_operator(model: MLP, W: np.ndarray, X: np.ndarray, y: np.ndarray):
    """``V ↦ H(w_m) v_m`` (:func:`hvp`) at fixed weights ``W`` and data: the forward pass, the
    loss derivatives and the first-order backward pass (none of which depends on ``V``) are
    computed once, so that each product costs only the R-passes — what a Lanczos iteration
    at fixed weights needs (:func:`sdeverify.train.fit` sharpness)."""
    acts = forward(model, W, X)
    layers = model.unflatten(W)
    relu = model.activation == "relu"
    L = model.n_layers
    _, _, dZ = loss_terms(model, acts[-1], y)
    B = X.shape[1]
    deltas, backs = [None] * L, [None] * L     # ∂loss/∂Z_l (mean over rows); the pre-mask products
    deltas[L - 1] = dZ / B
    for l in range(L - 1, 0, -1):
        A = acts[l]
        backs[l] = np.matmul(deltas[l], np.swapaxes(layers[l][0], 1, 2))
        deltas[l - 1] = backs[l] * (A > 0) if relu else backs[l] * (1.0 - A * A)
    if model.loss == "cross_entropy":
        p = dZ + 0.0
        np.put_along_axis(p, y[..., None], np.take_along_axis(p, y[..., None], axis=2) + 1.0, axis=2)

    def apply(V: np.ndarray) -> np.ndarray:
        dirs = model.unflatten(V)
        RA = [np.zeros_like(X)]                         # R(A_l)
        RZ = []
        for l, (Wl, bl) in enumerate(layers):
            dW, db = dirs[l]
            rz = np.matmul(RA[-1], Wl) + np.matmul(acts[l], dW) + db[:, None, :]
            RZ.append(rz)
            if l < L - 1:
                A = acts[l + 1]
                RA.append(rz * (A > 0) if relu else rz * (1.0 - A * A))
        if model.loss == "cross_entropy":
            rz = RZ[-1]
            rdelta = (p * rz - p * np.sum(p * rz, axis=2, keepdims=True)) / B
        else:
            rdelta = RZ[-1] / B
        HV = np.zeros_like(W)
        out = model.unflatten(HV)
        for l in range(L - 1, -1, -1):
            Wl = layers[l][0]
            dW = dirs[l][0]
            delta = deltas[l]
            hW, hb = out[l]
            hW[...] = np.matmul(np.swapaxes(RA[l], 1, 2), delta) + np.matmul(np.swapaxes(acts[l], 1, 2), rdelta)
            hb[...] = rdelta.sum(axis=1)
            if l > 0:
                A = acts[l]
                rback = np.matmul(rdelta, np.swapaxes(Wl, 1, 2)) + np.matmul(delta, np.swapaxes(dW, 1, 2))
                if relu:
                    rdelta = rback * (A > 0)
                else:
                    d1 = 1.0 - A * A
                    rdelta = rback * d1 + backs[l] * (-2.0 * A * d1) * RZ[l - 1]
        return HV + model.weight_decay * V

    return apply
