"""The Numba CPU trainer: the backend contract of :mod:`sdeverify.train.reference`, compiled.

One compiled kernel serves every MLP (widths, activation and loss are run-time arguments),
per dtype (float64, float32).  Each model's forward and backward pass runs over the batch in
row blocks of ``Trainer.rows_per_block`` rows (256, or the widest hidden layer if wider): a
block's activations (A_0 … logits) and
back-propagated gradients stay in cache, so the element-wise loops around the GEMMs (bias +
activation, softmax-cross-entropy gradient, activation derivative fused with the bias
gradient) never stream batch-sized arrays through memory.  The GEMMs call the BLAS that
SciPy ships (``sgemm``/``dgemm``, :mod:`sdeverify.train.blas`); the weight gradients are
accumulated over the blocks by ``gemm`` with β = 1, with transposes passed as flags (no
copies).  The softmax-CE gradient is row-local, so blocking is exact up to summation order.
All S steps of all models run inside one call (no Python per step), except on the per-step
parts path below (:func:`_train_parts`: one thread-pool round per step).

Parallelism: models (replica × optimizer) are independent, so the cores split the models
(a static split: results are bitwise the same for any thread count) and each runs its
models' whole step loop, with OpenBLAS held to one thread meanwhile
(:mod:`sdeverify.train.blas_threads`).  The kernels are compiled ``nogil`` and take the
range of chunks they do; :func:`sdeverify.threads.run_ranges` runs the chunks on threads
(Numba's ``parallel=True`` would roughly double their compile time).  A batch of at least
``Trainer.parts`` (2) blocks is split in that many parts whose gradients are added in a
fixed order; with fewer models than cores, the parts of each model's batch run on
different cores (per step: the parts on the threads, then the ordered sums and updates,
:func:`_train_parts`) — the same results as one after the other.  Smaller batches of
fewer models than cores run on one thread with BLAS's own threads (as do ``evaluate`` and
``gradients`` then).
"""
from __future__ import annotations

from contextlib import nullcontext

import numba
import numpy as np

from ..compile_lock import compile_once
from ..threads import cap as thread_cap
from ..threads import n_threads, run_ranges
from .blas import gemm
from .blas_threads import at_most, single_threaded
from .models import ACTIVATIONS, LOSSES, MLP
from .reference import HostTrainer

_JIT = dict(cache=True, error_model="numpy", nogil=True)
RELU, TANH = ACTIVATIONS["relu"], ACTIVATIONS["tanh"]
CE, SQ = LOSSES["cross_entropy"], LOSSES["squared"]


@numba.njit(**_JIT)
def _work_size(sizes, B):
    """Length of the activation buffer: B·(sum of all layer widths)."""
    return B * np.sum(sizes)


@numba.njit(**_JIT)
def _loss_rows(Z, y, rows, loss_kind, dZ, scale):
    """Per-batch data-loss sum and number of correct rows; writes scale·∂loss_i/∂Z into dZ."""
    B, C = Z.shape
    total = 0.0
    correct = 0.0
    for i in range(B):
        t = y[rows[i]]
        zmax = Z[i, 0]
        arg = 0
        for c in range(1, C):
            if Z[i, c] > zmax:
                zmax = Z[i, c]
                arg = c
        if arg == t:
            correct += 1.0
        if loss_kind == CE:
            s = 0.0
            for c in range(C):
                e = np.exp(Z[i, c] - zmax)
                dZ[i, c] = e
                s += e
            total += np.log(s) + zmax - Z[i, t]
            for c in range(C):
                dZ[i, c] = dZ[i, c] / s
            dZ[i, t] -= 1.0
        else:
            for c in range(C):
                r = Z[i, c] - (1.0 if c == t else 0.0)
                dZ[i, c] = r
                total += 0.5 * r * r
        for c in range(C):
            dZ[i, c] *= scale
    return total, correct


@numba.njit(**_JIT)
def _pass(X, y, rows, w, sizes, w_off, b_off, act, loss_kind, buf, d1, d2, g, need_grad, rb, scale):
    """Forward (and, if ``need_grad``, backward) pass of one model on the rows ``rows``, in
    row blocks of ``rb`` rows so that each block's activations stay in cache.

    ``buf`` holds one block's activations A_0 … A_{L-1} and logits; ``d1``/``d2`` alternate
    as the back-propagated ∂/∂Z; the gradient of the *mean* data loss over all rows is
    accumulated block by block into ``g`` (weights by ``gemm`` with β = 1).
    Returns ``(loss_sum, correct)`` over the rows."""
    B = rows.shape[0]
    total = 0.0
    correct = 0.0
    for r0 in range(0, B, rb):
        r1 = min(B, r0 + rb)
        tot, cor = _block(X, y, rows[r0:r1], w, sizes, w_off, b_off, act, loss_kind, buf, d1, d2,
                          g, need_grad, r0 == 0, scale)
        total += tot
        correct += cor
    return total, correct


@numba.njit(**_JIT)
def _block(X, y, rows, w, sizes, w_off, b_off, act, loss_kind, buf, d1, d2, g, need_grad, first,
           scale):
    """One row block of :func:`_pass`; ``first`` overwrites ``g``, later blocks add to it."""
    nb = rows.shape[0]
    L = sizes.shape[0] - 1
    d0 = sizes[0]
    A0 = buf[0:nb * d0].reshape(nb, d0)
    for i in range(nb):          # plain loops: slice assignments cost seconds to compile
        r = rows[i]
        for c in range(d0):
            A0[i, c] = X[r, c]
    a_off = np.empty(L + 1, dtype=np.int64)
    a_off[0] = 0
    off = nb * d0
    for l in range(L):
        ni, no = sizes[l], sizes[l + 1]
        gemm(False, False, nb, no, ni, 1.0, buf[a_off[l]:], ni, w[w_off[l]:], no, 0.0, buf[off:], no)
        Z = buf[off:off + nb * no].reshape(nb, no)
        bl = w[b_off[l]:b_off[l] + no]
        if l == L - 1:
            for i in range(nb):
                for c in range(no):
                    Z[i, c] += bl[c]
        elif act == RELU:
            for i in range(nb):
                for c in range(no):
                    z = Z[i, c] + bl[c]
                    Z[i, c] = 0.0 if z <= 0.0 else z      # NaN stays NaN (never 0)
        else:
            for i in range(nb):
                for c in range(no):
                    Z[i, c] = np.tanh(Z[i, c] + bl[c])
        a_off[l + 1] = off
        off += nb * no
    C = sizes[L]
    Zl = buf[a_off[L]:a_off[L] + nb * C].reshape(nb, C)
    dZ = d1[0:nb * C].reshape(nb, C)
    total, correct = _loss_rows(Zl, y, rows, loss_kind, dZ, scale)
    if need_grad:
        beta = 0.0 if first else 1.0
        gb = g[b_off[L - 1]:b_off[L - 1] + C]
        if first:
            for c in range(C):
                gb[c] = 0.0
        for i in range(nb):
            for c in range(C):
                gb[c] += dZ[i, c]
        cur, other = d1, d2
        for l in range(L - 1, -1, -1):
            ni, no = sizes[l], sizes[l + 1]
            # gW_l (+)= A_lᵀ dZ_l
            gemm(True, False, ni, no, nb, 1.0, buf[a_off[l]:], ni, cur, no, beta, g[w_off[l]:], no)
            if l > 0:
                # dA = dZ_l W_lᵀ, then dZ_{l-1} = dA ⊙ act'(A) and its bias gradient, one pass
                gemm(False, True, nb, ni, no, 1.0, cur, no, w[w_off[l]:], no, 0.0, other, ni)
                A = buf[a_off[l]:a_off[l] + nb * ni].reshape(nb, ni)
                dA = other[0:nb * ni].reshape(nb, ni)
                gb = g[b_off[l - 1]:b_off[l - 1] + ni]
                if first:
                    for c in range(ni):
                        gb[c] = 0.0
                if act == RELU:
                    for i in range(nb):
                        for c in range(ni):
                            v = dA[i, c] if A[i, c] > 0.0 else 0.0
                            dA[i, c] = v
                            gb[c] += v
                else:
                    for i in range(nb):
                        for c in range(ni):
                            v = dA[i, c] * (1.0 - A[i, c] * A[i, c])
                            dA[i, c] = v
                            gb[c] += v
                cur, other = other, cur
    return total, correct


@numba.njit(**_JIT)
def _chunk(t, T, M):
    """Models of thread chunk t: a static split, so results do not depend on T."""
    return t * M // T, (t + 1) * M // T


@numba.njit(**_JIT)
def _half(rows, k, K):
    """Rows of part k of K: the gradient of a batch is the sum of its K parts' gradients,
    added in order, whichever thread computes each part (so results do not depend on it)."""
    B = rows.shape[0]
    return rows[k * B // K:(k + 1) * B // K]


@numba.njit(**_JIT)
def _grad(X, y, rows, w, sizes, w_off, b_off, act, loss_kind, buf, d1, d2, g, gk, rb, K):
    """Mean-loss gradient of one model on the batch ``rows`` (into ``g``; ``gk`` is scratch)
    as the ordered sum over its K parts; returns the loss sum."""
    scale = 1.0 / rows.shape[0]
    tot = 0.0
    for k in range(K):                     # one call site of _pass: less code to compile
        t, _ = _pass(X, y, _half(rows, k, K), w, sizes, w_off, b_off, act, loss_kind, buf, d1, d2,
                     g if k == 0 else gk, True, rb, scale)
        tot += t
        if k > 0:
            for p in range(g.shape[0]):
                g[p] += gk[p]
    return tot


@numba.njit(**_JIT)
def _train(X, y, idx0, idx1, slots, W, Mom, a, b, gamma, r0, r1, wd, R, sizes, w_off, b_off,
           act, loss_kind, out_loss, T, rb, K, t_lo, t_hi):
    """All S steps of the models of chunks ``t_lo ≤ t < t_hi`` of T; models are
    independent, so each thread runs the whole step loop for its chunk of models (the
    caller runs the T chunks on T threads, :func:`sdeverify.threads.run_ranges`)."""
    S, _, B = idx0.shape
    M, P = W.shape
    maxw = np.max(sizes)
    two = slots == 2 and r1 != 0.0
    nb = min(B, rb)
    for t in range(t_lo, t_hi):
        buf = np.empty(_work_size(sizes, nb), dtype=W.dtype)
        d1 = np.empty(nb * maxw, dtype=W.dtype)
        d2 = np.empty(nb * maxw, dtype=W.dtype)
        g0 = np.empty(P, dtype=W.dtype)
        g1 = np.empty(P, dtype=W.dtype)
        gk = np.empty(P if K > 1 else 0, dtype=W.dtype)
        m0, m1 = _chunk(t, T, M)
        for s in range(S):
            for m in range(m0, m1):
                j = m // R
                rr = m % R
                w = W[m]
                for slot in range(2 if two else 1):
                    tot = _grad(X, y, idx0[s, rr] if slot == 0 else idx1[s, rr], w, sizes, w_off, b_off,
                                act, loss_kind, buf, d1, d2, g0 if slot == 0 else g1, gk, rb, K)
                    if slot == 0:
                        out_loss[s, m] = tot / B
                _update(w, Mom[m], g0, g1, two, r0, r1, wd, a[j, s], b[j, s], gamma[j, s])


def _train_parts(X, y, idx0, idx1, slots, W, Mom, a, b, gamma, r0, r1, wd, R, sizes, w_off, b_off,
                 act, loss_kind, out_loss, T, rb, K):
    """:func:`_train` with the K parts of each model's batch on different threads (for fewer
    models than cores): per step, the parts' gradients on T threads (:func:`_parts_grads`),
    then the ordered sums and updates (:func:`_parts_update`).  Bitwise the same results as
    :func:`_train` with the same K."""
    S, _, B = idx0.shape
    M, P = W.shape
    two = slots == 2 and r1 != 0.0
    N = M * K
    G0 = np.empty((N, P), dtype=W.dtype)
    G1 = np.empty((N if two else 1, P), dtype=W.dtype)
    part = np.empty(N)
    for s in range(S):
        run_ranges(_parts_grads, T, X, y, idx0[s], idx1[s], two, W, sizes, w_off, b_off, act,
                   loss_kind, G0, G1, part, R, T, rb, K, threads=T, per_thread=1)
        _parts_update(W, Mom, G0, G1, part, two, r0, r1, wd, a[:, s], b[:, s], gamma[:, s], R, K,
                      out_loss[s], B)


@numba.njit(**_JIT)
def _parts_grads(X, y, idx0, idx1, two, W, sizes, w_off, b_off, act, loss_kind, G0, G1, part,
                 R, T, rb, K, t_lo, t_hi):
    """One step's gradients of the parts (model m, part k) of chunks ``t_lo ≤ t < t_hi``
    of T: into rows ``m·K + k`` of G0 (and G1, SVAG's second batch), loss sums into part."""
    B = idx0.shape[1]
    maxw = np.max(sizes)
    nb = min(B, rb)
    N = W.shape[0] * K
    scale = 1.0 / B
    for t in range(t_lo, t_hi):
        buf = np.empty(_work_size(sizes, nb), dtype=W.dtype)
        d1 = np.empty(nb * maxw, dtype=W.dtype)
        d2 = np.empty(nb * maxw, dtype=W.dtype)
        i0, i1 = _chunk(t, T, N)
        for it in range(i0, i1):
            m, k = it // K, it % K
            rr = m % R
            for slot in range(2 if two else 1):
                tot, _ = _pass(X, y, _half(idx0[rr] if slot == 0 else idx1[rr], k, K), W[m], sizes,
                               w_off, b_off, act, loss_kind, buf, d1, d2, G0[it] if slot == 0 else G1[it],
                               True, rb, scale)
                if slot == 0:
                    part[it] = tot


@numba.njit(**_JIT)
def _parts_update(W, Mom, G0, G1, part, two, r0, r1, wd, a, b, gamma, R, K, out_loss, B):
    """One step's ordered sums of the K parts of each model and its update."""
    M, P = W.shape
    for m in range(M):
        j = m // R
        g0, g1 = G0[m * K], G1[m * K if two else 0]
        tot = part[m * K]
        for k in range(1, K):
            tot += part[m * K + k]
            for p in range(P):
                g0[p] += G0[m * K + k, p]
            if two:
                for p in range(P):
                    g1[p] += G1[m * K + k, p]
        out_loss[m] = tot / B
        _update(W[m], Mom[m], g0, g1, two, r0, r1, wd, a[j], b[j], gamma[j])


@numba.njit(**_JIT)
def _update(w, mom, g0, g1, two, r0, r1, wd, a, b, gamma):
    """g = r₀ g⁽⁰⁾ (+ r₁ g⁽¹⁾) + λ w;  m ← a m + b g;  w ← w − γ m (a, b, γ: one
    step's coefficients of :class:`sdeverify.optim.Coefficients`; λ = ``wd``)."""
    for p in range(w.shape[0]):
        gp = r0 * g0[p]
        if two:
            gp = gp + r1 * g1[p]
        gp = gp + wd * w[p]
        mp = a * mom[p] + b * gp
        mom[p] = mp
        w[p] = w[p] - gamma * mp


@numba.njit(**_JIT)
def _evaluate(X, y, W, sizes, w_off, b_off, act, loss_kind, chunk, loss_sum, correct, T, rb,
              t_lo, t_hi):
    """Loss sums and correct counts of the models of chunks ``t_lo ≤ t < t_hi`` of T."""
    n = X.shape[0]
    M, P = W.shape
    maxw = np.max(sizes)
    for t in range(t_lo, t_hi):
        buf = np.empty(_work_size(sizes, min(chunk, rb)), dtype=W.dtype)
        d1 = np.empty(min(chunk, rb) * maxw, dtype=W.dtype)
        g = np.empty(1, dtype=W.dtype)
        rows_all = np.arange(n)
        m0, m1 = _chunk(t, T, M)
        for m in range(m0, m1):
            for i0 in range(0, n, chunk):
                rows = rows_all[i0:min(n, i0 + chunk)]
                tot, cor = _pass(X, y, rows, W[m], sizes, w_off, b_off, act, loss_kind, buf, d1, d1, g, False, rb, 1.0)
                loss_sum[m] += tot
                correct[m] += cor


@numba.njit(**_JIT)
def _gradients(X, y, W, sizes, w_off, b_off, act, loss_kind, wd, G, T, rb, t_lo, t_hi):
    """Full-batch gradients (+ weight decay) of the models of chunks ``t_lo ≤ t < t_hi`` of T."""
    n = X.shape[0]
    M, P = W.shape
    maxw = np.max(sizes)
    for t in range(t_lo, t_hi):
        nb = min(n, rb)
        buf = np.empty(_work_size(sizes, nb), dtype=W.dtype)
        d1 = np.empty(nb * maxw, dtype=W.dtype)
        d2 = np.empty(nb * maxw, dtype=W.dtype)
        rows = np.arange(n)
        m0, m1 = _chunk(t, T, M)
        for m in range(m0, m1):
            _pass(X, y, rows, W[m], sizes, w_off, b_off, act, loss_kind, buf, d1, d2, G[m], True, rb, 1.0 / n)
            for p in range(P):
                G[m, p] = G[m, p] + wd * W[m, p]


def _threads(M: int) -> tuple[int, object]:
    """Numba threads over models (BLAS single-threaded), or one thread with BLAS's own
    threads when there are fewer models than cores — at most this thread's cap of
    :func:`sdeverify.threads.limited` (a Dask task's share of the cores), if any."""
    T = min(n_threads(), M)
    if T > 1:
        return T, single_threaded()
    c = thread_cap()
    return 1, (nullcontext() if c is None else at_most(c))


class Trainer(HostTrainer):
    """Numba CPU backend (contract: :mod:`sdeverify.train.reference`)."""

    #: rows per block of the forward/backward pass (see :func:`_pass`); None: 256, or the
    #: widest hidden layer if wider (whose w×w weights BLAS packs once per block)
    block_rows: int | None = None
    #: a batch of at least ``parts × rows_per_block`` rows is split in this many parts whose
    #: gradients are added in order (:func:`_grad`): with fewer models than cores, the parts
    #: run on different cores (:func:`_train_parts`), with the same results
    parts: int = 2
    #: threads of :meth:`train` (None: Numba's thread count).  The results do not depend on
    #: it; the main job's ``train_engine`` sets it to take the per-step parts path
    #: (:func:`_train_parts`) even in a one-thread worker.
    threads: int | None = None

    def __init__(self, model: MLP, X: np.ndarray, y: np.ndarray, n_opt: int, n_rep: int,
                 dtype: str = "float64"):
        super().__init__(model, X, y, n_opt, n_rep, dtype)
        self.sizes, self.w_off, self.b_off = model.layout()
        self.act, self.loss_kind = ACTIVATIONS[model.activation], LOSSES[model.loss]

    @property
    def rows_per_block(self) -> int:
        if self.block_rows is not None:
            return int(self.block_rows)
        return max(256, int(np.max(self.sizes[1:-1], initial=0)))

    def train(self, idx, a, b, gamma, r) -> np.ndarray:
        S, _, B = idx[0].shape
        M = self.W.shape[0]
        out = np.empty((S, M))
        t = self.dtype.type
        idx1 = idx[1] if len(idx) > 1 else idx[0]
        rb = self.rows_per_block
        K = self.parts if B >= self.parts * rb else 1
        T = min(self.threads or n_threads(), M * K)
        if M < T:          # fewer models than cores: their batch parts go to the cores
            kernel, blas = _train_parts, single_threaded()
        else:
            kernel, (T, blas) = _train, _threads(M)
        args = (self.X, self.y, np.ascontiguousarray(idx[0]), np.ascontiguousarray(idx1), len(idx),
                self.W, self.Mom, np.ascontiguousarray(a, dtype=self.dtype),
                np.ascontiguousarray(b, dtype=self.dtype), np.ascontiguousarray(gamma, dtype=self.dtype),
                t(r[0]), t(r[1] if len(r) > 1 else 0.0), t(self.model.weight_decay), self.R,
                self.sizes, self.w_off, self.b_off, self.act, self.loss_kind, out, T, rb, K)
        with blas:
            if kernel is _train_parts:
                _train_parts(*args)
            else:
                run_ranges(_train, T, *args, threads=T, per_thread=1)
        return out

    def evaluate(self, X, y, chunk: int = 1024):
        M = self.W.shape[0]
        loss_sum, correct = np.zeros(M), np.zeros(M)
        T, blas = _threads(M)
        with blas:
            run_ranges(_evaluate, T, np.ascontiguousarray(X, dtype=self.dtype),
                       np.ascontiguousarray(y, dtype=np.int64), self.W, self.sizes, self.w_off,
                       self.b_off, self.act, self.loss_kind, min(chunk, len(X)), loss_sum, correct,
                       T, self.rows_per_block, threads=T, per_thread=1)
        return loss_sum, correct

    def gradients(self, W, X, y):
        W = np.ascontiguousarray(W, dtype=self.dtype)
        G = np.empty_like(W)
        T, blas = _threads(W.shape[0])
        with blas:
            run_ranges(_gradients, T, np.ascontiguousarray(X, dtype=self.dtype),
                       np.ascontiguousarray(y, dtype=np.int64), W, self.sizes, self.w_off,
                       self.b_off, self.act, self.loss_kind, self.dtype.type(self.model.weight_decay),
                       G, T, self.rows_per_block, threads=T, per_thread=1)
        return G


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
