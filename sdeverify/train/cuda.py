"""The numba.cuda trainer: data and every model's weights resident on the GPU.

The heavy-batch backend of the paper's Sec. 6 experiments (many replicas × optimizers of one
MLP trained in one launch; SGD and SGDM of Defs. 3.2-3.3, SVAG's two-minibatch step).

Implements the backend contract of :mod:`sdeverify.train.reference` (read its docstring): model
``m = j·R + r`` is optimizer ``j`` on replica ``r``; one :meth:`Trainer.train` call uploads the
S steps' minibatch indices and coefficients once, runs all S steps on the device and copies the
``(S, M)`` batch losses back once at the end.  Per step and minibatch slot the kernels are

* ``gather``: the replica's rows ``X[idx]`` and labels (the training set lives on the device);
* one tiled shared-memory GEMM, batched over models (grid z = model), register-blocked (each
  thread owns a ``TM × TN`` sub-tile), with compile-time transposes and epilogues.  It computes

  - forward ``Z = A W + b`` (epilogue: bias, then the activation; none on the logits),
  - weight gradient ``[A, 1]ᵀ dZ``: a ``(in+1) × out`` product whose extra row of ones is the
    bias gradient — ``W_l`` and ``b_l`` are adjacent in the flat layout, so the product is
    written straight into the flat gradient vector at the layer's offset (this fuses the
    bias-gradient reduction into the GEMM),
  - input gradient ``dZ Wᵀ`` (epilogue: times the activation's derivative, from the stored
    activations: ``A > 0`` for ReLU, ``1 − A²`` for tanh);

* a fused softmax-cross-entropy (or squared) loss + gradient kernel, one thread per (model,
  sample), writing ``dZ/B`` and the per-sample loss, then a per-model tree reduction (fixed
  order: the losses are deterministic);
* a fused optimizer update, one thread per (model, parameter):
  ``g = Σ_s r_s g_s + λ w;  m ← a m + b g;  w ← w − γ m`` (the (a, b, γ) form of
  :mod:`sdeverify.optim`).

Tile sizes are compile-time constants of the kernel factory: 128×128 and 64×64 output tiles
(8×8 and 4×4 per thread) on a GPU, the larger one when both output dimensions reach 128 and
it still fills every multiprocessor; 8×8 and 4×4 tiles (4×4 and 2×2 per thread) under Numba's
CUDA simulator, so the tiny simulated tests span several blocks, partial tiles and both
kernels.  Non-finite values propagate (NaN weights give NaN losses, which the caller reports);
the simulator, though, must only see finite data (see ``SIM_TPB``).  float32 by default (the GPU's fast path), float64 on
request; the GPU contracts multiply-adds into FMAs and sums in another order than NumPy, so it
agrees with the reference trainer up to rounding.

Without a GPU this module imports fine; constructing a :class:`Trainer` raises a one-line
``RuntimeError``, unless the simulator is on (``NUMBA_ENABLE_CUDASIM=1``, slow: tests only).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .. import cuda_arch
from ..engine.cuda import _cuda
from ..validation import dtype as valid_dtype
from ..validation import positive_int
from .models import LOSSES, MLP

try:  # a module global, so that the CUDA simulator can swap it inside kernels
    from numba import cuda
except Exception:  # pragma: no cover - depends on the install
    cuda = None

#: GEMM tiles ``(BM, BN, BK, TM, TN)``: a block computes a BM×BN output tile in BK-deep
#: k-slices staged in shared memory; each of its (BM/TM)·(BN/TN) threads owns TM×TN outputs.
GPU_TILES = {"big": (128, 128, 8, 8, 8), "small": (64, 64, 16, 4, 4)}
#: Register caps of the float32 kernels (None: the compiler's choice).  ptxas 13 for sm_90 gives
#: the big tile 132-160 registers (one 256-thread block per multiprocessor) and no spills; a cap
#: of 128 (two blocks) spills 8-36 bytes.  Measured on an H200 (benchmarks/RESULTS.md): the cap
#: is slower, forward 21.2 vs 22.0 TFLOP/s, weight gradient 10.2 vs 10.5.
GPU_MAX_REGISTERS = {"big": None, "small": None}
SIM_TILES = {"big": (8, 8, 4, 4, 4), "small": (4, 4, 4, 2, 2)}
#: The big tile is used when both output dimensions of a product are at least this and it
#: gives at least one block per multiprocessor (else the small tile keeps more of them busy).
GPU_BIG_MIN, SIM_BIG_MIN = 128, 6
#: Threads per block of the element-wise kernels (gather, loss, reduction, update).  Under the
#: simulator a block's threads are Python threads sharing module globals: keep them few (see
#: ``SIM_THREADS_PER_BLOCK`` in :mod:`sdeverify.engine.cuda`; no kernel here raises a
#: floating-point warning on finite data, so several threads per block are safe).
GPU_TPB, SIM_TPB = 128, 4
#: Largest activation buffer (elements) of one evaluation chunk.
EVAL_ELEMENTS = 1 << 25
#: Evaluation sets kept on the device (e.g. a training subset and the test set).
EVAL_SETS = 4

# Shared memory is *dynamic* (``cuda.shared.array(0, …)``, size given at launch) in every kernel
# here: Numba's simulator allocates a static shared array on the first thread's call with an
# unlocked check-then-set, so two threads of a block can end up with different "shared" arrays
# (seen: 4 failures in 10 simulated runs); its dynamic shared memory is one buffer per launch.

RELU, TANH, IDENTITY = 0, 1, 2
EPI_NONE, EPI_BIAS_ACT, EPI_DERIV = 0, 1, 2
_KERNELS: dict = {}


def _numba_dtype(dtype: np.dtype):
    return numba.float32 if dtype == np.float32 else numba.float64


def _cached(key, build):
    if key not in _KERNELS:
        _KERNELS[key] = build()
    return _KERNELS[key]


def make_gemm(dtype: np.dtype, tile: tuple, trans_a: bool, trans_b: bool, epilogue: int, act: int,
              max_registers: int | None = None, split_k: bool = False):
    """Batched ``C[z] (nm×nn) = op(A[z]) op(B[z])`` (+ epilogue) on flat 1-D arrays.

    ``op(A)(i, k)`` is ``a[offa + (z % zmoda)·saz + i·lda + k]`` (``k·lda + i`` when
    ``trans_a``); row ``ones_row`` of ``op(A)`` reads as ones (−1: none).  ``op(B)(k, j)`` is
    ``b[offb + z·sbz + k·ldb + j]`` (``j·ldb + k`` when ``trans_b``); ``C(i, j)`` is
    ``c[offc + z·scz + i·ldc + j]``, accumulated into when ``accumulate``.  Epilogues:
    ``EPI_BIAS_ACT`` adds ``e[offe + z·sez + j]`` then applies ``act``; ``EPI_DERIV``
    multiplies by the derivative of ``act`` at the activation ``e[offe + z·sez + i·ldc + j]``.
    Launch with grid ``(⌈nn/BN⌉, ⌈nm/BM⌉, models)``, ``gemm.threads`` threads and
    ``gemm.shared_bytes`` of dynamic shared memory.  ``max_registers`` caps the registers per
    thread (more resident blocks per multiprocessor; ignored by the simulator).

    ``split_k``: a two-level z for split-K products of several models in one launch — the
    kernel takes three more parameters ``zs, ska, skb`` and grid z = ``models · zs``; block z
    is model ``m = z // zs``, split ``q = z % zs``: ``op(A)`` starts at ``offa + (m % zmoda)·saz
    + q·ska``, ``op(B)`` at ``offb + m·sbz + q·skb`` and ``C`` at ``offc + z·scz`` (each split's
    partial product in its own slice).  Default off: the kernel and its parameters are
    unchanged.
    """
    BM, BN, BK, TM, TN = tile
    TX, TY = BN // TN, BM // TM
    NT = TX * TY
    if BM % TM or BN % TN or (BM * BK) % NT or (BK * BN) % NT:
        raise ValueError(f"inconsistent GEMM tile {tile}")
    LOADS_A, LOADS_B = BM * BK // NT, BK * BN // NT
    BMP, BNP = BM + 1, BN + 1          # padded rows: conflict-free transposed stores
    B0 = BK * BMP                      # the B tile's start in the shared buffer
    DT, NPDT = _numba_dtype(dtype), np.dtype(dtype).type
    ZERO, ONE = NPDT(0.0), NPDT(1.0)
    U = numba.uint64   # unsigned indices: Numba adds no negative-index wraparound code

    sim = numba.config.ENABLE_CUDASIM
    opts = {} if max_registers is None or sim else {"max_registers": max_registers}
    inline = {} if sim else {"forceinline": True}   # NVVM inlines it: one kernel's code

    @cuda.jit(device=True, **inline)
    def body(a, abase, lda, b, bbase, ldb, c, cbase, ldc, e, ebase, nm, nn, nk, ones_row,
             accumulate):
        """The block's output tile of one product (bases: the z slice's start in a, b, c, e)."""
        sh = cuda.shared.array(0, DT)   # dynamic: A tile [BK][BMP], then B tile [BK][BNP]
        acc = cuda.local.array((TM, TN), DT)
        ar = cuda.local.array(TM, DT)
        br = cuda.local.array(TN, DT)
        pa = cuda.local.array(LOADS_A, DT)
        pb = cuda.local.array(LOADS_B, DT)
        t = cuda.threadIdx.x
        tx = t % TX
        ty = t // TX
        i0 = cuda.blockIdx.y * BM
        j0 = cuda.blockIdx.x * BN
        for ii in range(TM):
            for jj in range(TN):
                acc[ii, jj] = ZERO
        # Software pipelining: tile k0's global loads go to registers (pa, pb) before the
        # previous tile is multiplied out of shared memory, hiding their latency.
        for k0 in range(0, nk + BK, BK):
            if k0 > 0:                      # (a block-uniform branch: barriers are safe)
                for it in range(LOADS_A):
                    q = t + it * NT
                    if trans_a:
                        sh[U((q // BM) * BMP + q % BM)] = pa[it]
                    else:
                        sh[U((q % BK) * BMP + q // BK)] = pa[it]
                for it in range(LOADS_B):
                    q = t + it * NT
                    if trans_b:
                        sh[U(B0 + (q % BK) * BNP + q // BK)] = pb[it]
                    else:
                        sh[U(B0 + (q // BN) * BNP + q % BN)] = pb[it]
                cuda.syncthreads()
            if k0 < nk:
                for it in range(LOADS_A):   # consecutive threads read consecutive addresses
                    q = t + it * NT
                    if trans_a:
                        i, k = i0 + q % BM, k0 + q // BM
                    else:
                        i, k = i0 + q // BK, k0 + q % BK
                    v = ZERO
                    if i < nm and k < nk:
                        if i == ones_row:
                            v = ONE
                        elif trans_a:
                            v = a[U(abase + k * lda + i)]
                        else:
                            v = a[U(abase + i * lda + k)]
                    pa[it] = v
                for it in range(LOADS_B):
                    q = t + it * NT
                    if trans_b:
                        j, k = j0 + q // BK, k0 + q % BK
                    else:
                        j, k = j0 + q % BN, k0 + q // BN
                    v = ZERO
                    if j < nn and k < nk:
                        if trans_b:
                            v = b[U(bbase + j * ldb + k)]
                        else:
                            v = b[U(bbase + k * ldb + j)]
                    pb[it] = v
            if k0 > 0:
                for kk in range(BK):
                    for ii in range(TM):
                        ar[ii] = sh[U(kk * BMP + ty + ii * TY)]
                    for jj in range(TN):
                        br[jj] = sh[U(B0 + kk * BNP + tx + jj * TX)]
                    for ii in range(TM):
                        for jj in range(TN):
                            acc[ii, jj] += ar[ii] * br[jj]
                cuda.syncthreads()
        for ii in range(TM):
            i = i0 + ty + ii * TY
            if i < nm:
                for jj in range(TN):
                    j = j0 + tx + jj * TX
                    if j < nn:
                        v = acc[ii, jj]
                        if epilogue == EPI_BIAS_ACT:
                            v += e[U(ebase + j)]
                            if act == RELU:
                                if v <= ZERO:       # NaN stays NaN (never 0)
                                    v = ZERO
                        elif epilogue == EPI_DERIV:
                            d = e[U(ebase + i * ldc + j)]
                            if act == RELU:
                                if not d > ZERO:
                                    v = ZERO
                            else:
                                v = v * (ONE - d * d)
                        if accumulate:
                            v += c[U(cbase + i * ldc + j)]
                        c[U(cbase + i * ldc + j)] = v
        if epilogue == EPI_BIAS_ACT and act == TANH:
            # a second pass over this thread's own outputs: tanh inside the loop above stops
            # its unrolling, which would move ``acc`` from registers to local memory
            for ii in range(TM):
                i = i0 + ty + ii * TY
                for jj in range(TN):
                    j = j0 + tx + jj * TX
                    if i < nm and j < nn:
                        c[U(cbase + i * ldc + j)] = math.tanh(c[U(cbase + i * ldc + j)])

    if split_k:
        @cuda.jit(**opts)
        def gemm(a, offa, saz, zmoda, lda, b, offb, sbz, ldb, c, offc, scz, ldc, e, offe, sez,
                 nm, nn, nk, ones_row, accumulate, zs, ska, skb):
            z = cuda.blockIdx.z
            m = z // zs
            q = z - m * zs
            body(a, offa + (m % zmoda) * saz + q * ska, lda, b, offb + m * sbz + q * skb, ldb,
                 c, offc + z * scz, ldc, e, offe + z * sez, nm, nn, nk, ones_row, accumulate)
    else:
        @cuda.jit(**opts)
        def gemm(a, offa, saz, zmoda, lda, b, offb, sbz, ldb, c, offc, scz, ldc, e, offe, sez,
                 nm, nn, nk, ones_row, accumulate):
            z = cuda.blockIdx.z
            body(a, offa + (z % zmoda) * saz, lda, b, offb + z * sbz, ldb, c, offc + z * scz,
                 ldc, e, offe + z * sez, nm, nn, nk, ones_row, accumulate)

    gemm.threads = NT
    gemm.shared_bytes = (BK * BMP + BK * BNP) * np.dtype(dtype).itemsize
    gemm.tile = tile
    gemm.variant = (trans_a, trans_b, epilogue, act, split_k)
    return gemm


def gemm_config(nm: int, nn: int, models: int, tiles: dict = GPU_TILES, big_min: int = GPU_BIG_MIN,
                n_sm: int = 132) -> tuple[str, tuple, tuple]:
    """``(tile name, tile, grid)`` of the batched GEMM for an ``nm × nn`` output per model:
    the big tile when both output dimensions reach ``big_min`` and it gives at least one block
    per multiprocessor (``n_sm`` of them), else the small tile; grid ``(⌈nn/BN⌉, ⌈nm/BM⌉,
    models)``."""
    BM, BN = tiles["big"][:2]
    big_blocks = -(-nm // BM) * -(-nn // BN) * models
    size = "big" if min(nm, nn) >= big_min and big_blocks >= n_sm else "small"
    tile = tiles[size]
    return size, tile, ((nn + tile[1] - 1) // tile[1], (nm + tile[0] - 1) // tile[0], models)


def eval_chunk(M: int, n: int, max_width: int, tiles: dict = GPU_TILES) -> int:
    """Rows per evaluation chunk: at most ``EVAL_ELEMENTS`` activations of ``M`` models and
    few enough rows that the GEMM grid's y dimension (rows / BM of the smaller tile) stays
    within the GPU's 65535 blocks."""
    rows_cap = cuda_arch.MAX_GRID[1] * min(t[0] for t in tiles.values())
    return max(1, min(n, EVAL_ELEMENTS // (M * max_width), rows_cap))


def make_pointwise(dtype: np.dtype, loss: int, tpb: int):
    """The element-wise kernels: ``(gather, loss_grad, reduce, update)``."""
    NPDT = np.dtype(dtype).type
    ZERO, ONE = NPDT(0.0), NPDT(1.0)
    CE = loss == LOSSES["cross_entropy"]

    @cuda.jit
    def gather(X, y, idx, off, n_rows, d, a0, y0):
        """``a0[row] = X[idx[off + row]]``, ``y0[row] = y[idx[off + row]]``; grid (rows, ⌈d/tpb⌉)."""
        row = cuda.blockIdx.x
        col = cuda.blockIdx.y * tpb + cuda.threadIdx.x
        if row >= n_rows:
            return
        src = idx[off + row]
        if col < d:
            a0[row * d + col] = X[src * d + col]
        if col == 0:
            y0[row] = y[src]

    @cuda.jit
    def loss_grad(zl, offz, labels, ymod, sy, nb, nc, denom, dz, offd, losses, correct):
        """Per (sample, model): loss and correctness of logits row ``zl[offz + (m·nb + i)·nc :]``
        with label ``labels[(m % ymod)·sy + i]``; writes ∂loss/∂z / denom.  Grid (⌈nb/tpb⌉, M)."""
        i = cuda.blockIdx.x * tpb + cuda.threadIdx.x
        m = cuda.blockIdx.y
        if i >= nb:
            return
        row = offz + (m * nb + i) * nc
        drow = offd + (m * nb + i) * nc
        lab = labels[(m % ymod) * sy + i]
        zmax = zl[row]
        arg = 0
        for c in range(1, nc):
            if zl[row + c] > zmax:
                zmax = zl[row + c]
                arg = c
        if CE:
            s = ZERO
            for c in range(nc):
                s += math.exp(zl[row + c] - zmax)
            lse = math.log(s) + zmax
            for c in range(nc):
                p = math.exp(zl[row + c] - zmax) / s
                if c == lab:
                    p -= ONE
                dz[drow + c] = p / denom
            losses[m * nb + i] = lse - zl[row + lab]
        else:
            tot = ZERO
            for c in range(nc):
                r = zl[row + c]
                if c == lab:
                    r -= ONE
                tot += r * r
                dz[drow + c] = r / denom
            losses[m * nb + i] = NPDT(0.5) * tot
        correct[m * nb + i] = 1.0 if arg == lab else 0.0

    @cuda.jit
    def reduce(losses, correct, nb, scale, out_loss, off_loss, out_correct, off_correct, accumulate):
        """Per model (one block): fixed-order tree sums of the per-sample losses and
        correctness; ``out_loss[off_loss + m] (+)= scale · Σ loss``, likewise the count."""
        sh = cuda.shared.array(0, numba.float64)   # losses [0, tpb), counts [tpb, 2 tpb)
        m = cuda.blockIdx.x
        t = cuda.threadIdx.x
        a = 0.0
        b = 0.0
        for i in range(t, nb, tpb):
            a += losses[m * nb + i]
            b += correct[m * nb + i]
        sh[t] = a
        sh[tpb + t] = b
        cuda.syncthreads()
        h = tpb // 2
        while h > 0:
            if t < h:
                sh[t] += sh[t + h]
                sh[tpb + t] += sh[tpb + t + h]
            cuda.syncthreads()
            h //= 2
        if t == 0:
            if accumulate:
                out_loss[off_loss + m] += scale * sh[0]
                out_correct[off_correct + m] += sh[tpb]
            else:
                out_loss[off_loss + m] = scale * sh[0]
                out_correct[off_correct + m] = sh[tpb]

    @cuda.jit
    def update(w, mom, g, n_slots, r0, r1, lam, a, b, gamma, s, S, R, P, M):
        """``g = Σ r_s g_s + λ w;  m ← a m + b g;  w ← w − γ m`` for parameter p of model m
        (``a, b, gamma``: the optimizers' coefficients a_k, b_k, γ_k, (optimizers, S) flat);
        grid (⌈P/tpb⌉, M); slots with r_s = 0 are not read."""
        p = cuda.blockIdx.x * tpb + cuda.threadIdx.x
        m = cuda.blockIdx.y
        if p >= P:
            return
        q = m * P + p
        j = m // R
        gr = ZERO
        if r0 != ZERO:
            gr = r0 * g[q]
        if n_slots > 1 and r1 != ZERO:
            gr += r1 * g[M * P + q]
        gr += lam * w[q]
        mm = a[j * S + s] * mom[q] + b[j * S + s] * gr
        mom[q] = mm
        w[q] = w[q] - gamma[j * S + s] * mm

    return gather, loss_grad, reduce, update


class _Workspace:
    """Device buffers of one (models, rows) shape: activations and their gradients of layers
    1..L (flat, layer l at ``off[l−1]``), per-sample losses and correctness."""

    def __init__(self, model: MLP, dt, M: int, nb: int):
        w = model.widths
        sizes = [M * nb * w[l + 1] for l in range(model.n_layers)]
        self.off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
        self.M, self.nb = M, nb
        self.acts = cuda.device_array(self.off[-1], dtype=dt)
        self.deltas = cuda.device_array(self.off[-1], dtype=dt)
        self.losses = cuda.device_array(M * nb, dtype=np.float64)
        self.correct = cuda.device_array(M * nb, dtype=np.float64)


class Trainer:
    """numba.cuda backend (the contract is in :mod:`sdeverify.train.reference`)."""

    def __init__(self, model: MLP, X: np.ndarray, y: np.ndarray, n_opt: int, n_rep: int,
                 dtype: str = "float32"):
        _cuda()
        self.model = model
        self.dtype = np.dtype(valid_dtype(dtype))
        self.J, self.R = positive_int("n_opt", n_opt), positive_int("n_rep", n_rep)
        self.M = self.J * self.R
        if self.M > 65535:   # models index a grid dimension, limited to 65535 blocks
            raise ValueError(f"n_opt * n_rep must be <= 65535 on the GPU, got {self.M}")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        y = np.ascontiguousarray(y, dtype=np.int64)
        self._check_data(X, y, "X", "y")
        self.n = X.shape[0]
        self.X_dev, self.y_dev = cuda.to_device(X.ravel()), cuda.to_device(y)
        sim = bool(numba.config.ENABLE_CUDASIM)
        self.tiles = SIM_TILES if sim else GPU_TILES
        self.big_min = SIM_BIG_MIN if sim else GPU_BIG_MIN
        self.n_sm = 1 if sim else cuda.get_current_device().MULTIPROCESSOR_COUNT
        self.limits = cuda_arch.current_limits()
        self._launches_ok: set = set()
        self.tpb = SIM_TPB if sim else GPU_TPB
        self.act = {"relu": RELU, "tanh": TANH}[model.activation]
        sizes, w_off, b_off = model.layout()
        self.w_off, self.b_off = w_off.tolist(), b_off.tolist()
        self.P = model.n_params
        key = (self.dtype.str, LOSSES[model.loss], self.tpb)
        self._gather, self._loss, self._reduce, self._update = _cached(
            ("pointwise",) + key, lambda: make_pointwise(self.dtype, LOSSES[model.loss], self.tpb))
        self.W = self.Mom = None
        self._ws: dict = {}
        self._eval_cache: dict = {}
        self._train_bufs: tuple = (None,)   # ((R, B, slots), gathered rows, labels, G, scratch)

    def _check_data(self, X: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
        d, C = self.model.n_inputs, self.model.n_classes
        if X.ndim != 2 or X.shape[1] != d or X.shape[0] < 1:
            raise ValueError(f"{xname} must have shape (n >= 1, {d}), got {X.shape}")
        if y.shape != (X.shape[0],):
            raise ValueError(f"{yname} must have shape ({X.shape[0]},), got {y.shape}")
        if y.min() < 0 or y.max() >= C:
            raise ValueError(f"{yname} must hold class labels in [0, {C - 1}], "
                             f"got values in [{y.min()}, {y.max()}]")

    # ---- state ------------------------------------------------------------------------
    def set_state(self, W, Mom) -> None:
        W = np.ascontiguousarray(W, dtype=self.dtype)
        Mom = np.ascontiguousarray(Mom, dtype=self.dtype)
        for name, v in (("W", W), ("Mom", Mom)):
            if v.shape != (self.M, self.P):
                raise ValueError(f"{name} must have shape (models={self.M}, params={self.P}), "
                                 f"got {v.shape}")
        self.W, self.Mom = cuda.to_device(W.ravel()), cuda.to_device(Mom.ravel())

    def get_state(self):
        return (self.W.copy_to_host().reshape(self.M, self.P),
                self.Mom.copy_to_host().reshape(self.M, self.P))

    # ---- kernels ------------------------------------------------------------------------
    def _workspace(self, M: int, nb: int) -> _Workspace:
        if (M, nb) not in self._ws:
            self._ws[(M, nb)] = _Workspace(self.model, self.dtype, M, nb)
        return self._ws[(M, nb)]

    def _gemm(self, ta: bool, tb: bool, epi: int, act: int, nm: int, nn: int, models: int, *args):
        size, tile, grid = gemm_config(nm, nn, models, self.tiles, self.big_min, self.n_sm)
        regs = GPU_MAX_REGISTERS[size] if self.dtype == np.float32 else None
        k = _cached(("gemm", self.dtype.str, tile, ta, tb, epi, act, regs),
                    lambda: make_gemm(self.dtype, tile, ta, tb, epi, act, regs))
        k = self._launch(k, grid, k.threads, k.shared_bytes, regs)
        a, offa, saz, zmoda, lda, b, offb, sbz, ldb, c, offc, scz, ldc, e, offe, sez, nk, ones, accum = args
        k(a, offa, saz, zmoda, lda, b, offb, sbz, ldb, c, offc, scz, ldc,
                           e, offe, sez, nm, nn, nk, ones, accum)

    def _launch(self, kernel, grid, threads: int, shared: int = 0, registers: int | None = None):
        """``kernel[grid, threads, 0, shared]`` after :func:`sdeverify.cuda_arch.check_launch`
        against this GPU's limits (a clear ValueError instead of a launch failure)."""
        key = (grid, threads, shared, registers)
        if key not in self._launches_ok:      # a few configurations, each checked once
            cuda_arch.check_launch(self.limits, threads, shared, registers, grid)
            self._launches_ok.add(key)
        return kernel[grid, threads, 0, shared]

    def _forward(self, W, ws: _Workspace, a0, a0_off: int, a0_sz: int, a0_mod: int) -> None:
        """Activations of layers 1..L into ``ws.acts``; input rows ``a0[a0_off + (m % a0_mod)·a0_sz:]``."""
        w, M, nb, L = self.model.widths, ws.M, ws.nb, self.model.n_layers
        for l in range(L):
            din, dout = w[l], w[l + 1]
            if l == 0:
                A, offa, saz, zmod = a0, a0_off, a0_sz, a0_mod
            else:
                A, offa, saz, zmod = ws.acts, ws.off[l - 1], nb * din, M
            act = self.act if l < L - 1 else IDENTITY
            self._gemm(False, False, EPI_BIAS_ACT, act, nb, dout, M,
                       A, offa, saz, zmod, din, W, self.w_off[l], self.P, dout,
                       ws.acts, ws.off[l], nb * dout, dout, W, self.b_off[l], self.P, din, -1, 0)

    def _loss_grad(self, ws: _Workspace, labels, ymod: int, sy: int, denom: float) -> None:
        nc = self.model.n_classes
        L = self.model.n_layers
        grid = ((ws.nb + self.tpb - 1) // self.tpb, ws.M)
        self._launch(self._loss, grid, self.tpb)(ws.acts, ws.off[L - 1], labels, ymod, sy, ws.nb, nc,
                                   self.dtype.type(denom), ws.deltas, ws.off[L - 1],
                                   ws.losses, ws.correct)

    def _backward(self, W, ws: _Workspace, G, g_off: int, a0, a0_off: int, a0_sz: int,
                  a0_mod: int, accumulate: int) -> None:
        """Gradient (without λw) from ``ws.deltas`` of the last layer into ``G[g_off + m·P:]``."""
        w, M, nb = self.model.widths, ws.M, ws.nb
        for l in range(self.model.n_layers - 1, -1, -1):
            din, dout = w[l], w[l + 1]
            if l == 0:
                A, offa, saz, zmod = a0, a0_off, a0_sz, a0_mod
            else:
                A, offa, saz, zmod = ws.acts, ws.off[l - 1], nb * din, M
            # [A, 1]ᵀ dZ: rows 0..din−1 are ∂W_l, row din (ones) is ∂b_l, adjacent in the layout
            self._gemm(True, False, EPI_NONE, IDENTITY, din + 1, dout, M,
                       A, offa, saz, zmod, din, ws.deltas, ws.off[l], nb * dout, dout,
                       G, g_off + self.w_off[l], self.P, dout, G, 0, 0, nb, din, accumulate)
            if l > 0:   # dZ_{l−1} = (dZ_l W_lᵀ) ⊙ act'(A_l)
                self._gemm(False, True, EPI_DERIV, self.act, nb, din, M,
                           ws.deltas, ws.off[l], nb * dout, M, dout, W, self.w_off[l], self.P, dout,
                           ws.deltas, ws.off[l - 1], nb * din, din,
                           ws.acts, ws.off[l - 1], nb * din, dout, -1, 0)

    # ---- contract -------------------------------------------------------------------------
    def train(self, idx, a, b, gamma, r) -> np.ndarray:
        if self.W is None:
            raise RuntimeError("call set_state(W, Mom) before train()")
        n_slots = len(idx)
        if n_slots not in (1, 2):
            raise ValueError(f"idx must hold 1 or 2 minibatch slots, got {n_slots}")
        idx = np.ascontiguousarray(np.stack([np.asarray(i, dtype=np.int64) for i in idx]))
        if idx.ndim != 4 or idx.shape[2] != self.R or idx.shape[1] < 1 or idx.shape[3] < 1:
            raise ValueError(f"each idx slot must have shape (steps, replicas={self.R}, batch), "
                             f"got {idx.shape[1:]}")
        if idx.min() < 0 or idx.max() >= self.n:
            raise ValueError(f"idx must hold row indices in [0, {self.n - 1}], "
                             f"got values in [{idx.min()}, {idx.max()}]")
        _, S, R, B = idx.shape
        coef = []
        for name, v in (("a", a), ("b", b), ("gamma", gamma)):
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (self.J, S):
                raise ValueError(f"{name} must have shape (optimizers={self.J}, steps={S}), got {v.shape}")
            coef.append(cuda.to_device(np.ascontiguousarray(v.astype(self.dtype).ravel())))
        r = np.asarray(r, dtype=np.float64).ravel()
        if r.shape != (n_slots,) or not np.all(np.isfinite(r)):
            raise ValueError(f"r must hold {n_slots} finite slot weights, got {r!r}")
        dt = self.dtype.type
        r0, r1 = dt(r[0]), dt(r[1] if n_slots > 1 else 0.0)
        lam = dt(self.model.weight_decay)
        M, P, d, tpb = self.M, self.P, self.model.n_inputs, self.tpb
        ws = self._workspace(M, B)
        if self._train_bufs[0] != (R, B, n_slots):
            self._train_bufs = ((R, B, n_slots), cuda.device_array(R * B * d, dtype=self.dtype),
                                cuda.device_array(R * B, dtype=np.int64),
                                cuda.device_array(n_slots * M * P, dtype=self.dtype),
                                cuda.device_array(M, dtype=np.float64))
        _, a0, y0, G, scratch = self._train_bufs
        idx_dev = cuda.to_device(idx.ravel())
        out = cuda.device_array(S * M, dtype=np.float64)
        for s in range(S):
            for slot in range(n_slots):
                if slot > 0 and r[slot] == 0.0:
                    continue
                self._launch(self._gather, (R * B, (d + tpb - 1) // tpb), tpb)(
                    self.X_dev, self.y_dev, idx_dev, (slot * S + s) * R * B, R * B, d, a0, y0)
                self._forward(self.W, ws, a0, 0, B * d, R)
                self._loss_grad(ws, y0, R, B, float(B))
                if slot == 0:
                    self._launch(self._reduce, (M,), tpb, 16 * tpb)(ws.losses, ws.correct, B, 1.0 / B, out, s * M, scratch, 0, 0)
                if r[slot] != 0.0:
                    self._backward(self.W, ws, G, slot * M * P, a0, 0, B * d, R, 0)
            self._launch(self._update, ((P + tpb - 1) // tpb, M), tpb)(
                self.W, self.Mom, G, n_slots, r0, r1, lam, coef[0], coef[1], coef[2], s, S, self.R, P, M)
        return out.copy_to_host().reshape(S, M)

    def _device_data(self, X, y):
        """Device copies of an evaluation set.  The last ``EVAL_SETS`` sets are kept, by the
        identity of the ``X`` and ``y`` objects (a run evaluates the same arrays again and
        again; they must not be modified in place in between)."""
        key = (id(X), id(y))
        if key in self._eval_cache:
            return self._eval_cache[key][2:]
        Xc = np.ascontiguousarray(X, dtype=self.dtype)
        yc = np.ascontiguousarray(y, dtype=np.int64)
        self._check_data(Xc, yc, "X", "y")
        if len(self._eval_cache) >= EVAL_SETS:
            self._eval_cache.pop(next(iter(self._eval_cache)))
        # X and y are kept alive with their copies, so that their ids are not reused
        self._eval_cache[key] = (X, y, cuda.to_device(Xc.ravel()), cuda.to_device(yc), Xc.shape[0])
        return self._eval_cache[key][2:]

    def _chunk(self, M: int, n: int) -> int:
        return eval_chunk(M, n, max(self.model.widths[1:]), self.tiles)

    def evaluate(self, X, y):
        if self.W is None:
            raise RuntimeError("call set_state(W, Mom) before evaluate()")
        Xd, yd, n = self._device_data(X, y)
        M, d = self.M, self.model.n_inputs
        loss_sum = cuda.to_device(np.zeros(M))
        correct = cuda.to_device(np.zeros(M))
        c = self._chunk(M, n)
        for i in range(0, n, c):
            nb = min(c, n - i)
            ws = self._workspace(M, nb)
            self._forward(self.W, ws, Xd, i * d, 0, 1)
            self._loss_grad(ws, yd[i:i + nb], 1, 0, 1.0)
            self._launch(self._reduce, (M,), self.tpb, 16 * self.tpb)(ws.losses, ws.correct, nb, 1.0, loss_sum, 0, correct, 0, 1)
        return loss_sum.copy_to_host(), correct.copy_to_host()

    def gradients(self, W, X, y):
        W = np.ascontiguousarray(W, dtype=self.dtype)
        if W.ndim != 2 or W.shape[1] != self.P:
            raise ValueError(f"W must have shape (models, params={self.P}), got {W.shape}")
        Xc = np.ascontiguousarray(X, dtype=self.dtype)
        yc = np.ascontiguousarray(y, dtype=np.int64)
        self._check_data(Xc, yc, "X", "y")
        M, n, d = W.shape[0], Xc.shape[0], self.model.n_inputs
        Wd, Xd, yd = cuda.to_device(W.ravel()), cuda.to_device(Xc.ravel()), cuda.to_device(yc)
        G = cuda.device_array(M * self.P, dtype=self.dtype)
        c = self._chunk(M, n)
        for i in range(0, n, c):
            nb = min(c, n - i)
            ws = self._workspace(M, nb)
            self._forward(Wd, ws, Xd, i * d, 0, 1)
            self._loss_grad(ws, yd[i:i + nb], 1, 0, float(n))
            self._backward(Wd, ws, G, 0, Xd, i * d, 0, 1, int(i > 0))
        G = G.copy_to_host().reshape(M, self.P)
        G += self.dtype.type(self.model.weight_decay) * W
        return G
