"""The numba.cuda trainer of the CIFAR ResNet (:mod:`sdeverify.train.convnet`): the training
set, the augmentation parameters, every model's weights, momentum and BatchNorm running
statistics resident on the GPU.

The GPU backend of the paper's Sec. 6 ResNet experiments (Fig. 2, App. D.2: SGD and SGDM of
Defs. 3.2-3.3, SVAG's two-minibatch step of Def. 6.1 with BatchNorm).  Contract, state,
augmentation and SVAG/BatchNorm rules are those of the NumPy reference
:class:`sdeverify.train.conv_reference.ConvTrainer` (read its docstring): each minibatch is
normalised by its own batch statistics, the running statistics follow slot 0's.

One :meth:`ConvTrainer.train` call uploads the S steps' minibatch rows and augmentation
parameters once, runs every step on the device and copies the ``(S, M)`` batch losses back
once.  A step is :func:`launches_per_step` kernel launches (179 for ResNet-20 at batch 512,
any number of models), each launch object configured once per shape.  Activations of the M
models live in a *channel-major* layout ``(M, C, B, H, W)``: the
values of one (model, channel) are contiguous, so BatchNorm's per-channel reductions read
memory in order, and a convolution is one batched GEMM per layer over the models:

* ``gather``: the rows of each replica straight into the layer-0 input ``(R, C, B, H, W)``,
  cropped (zero padding) and flipped on the way (:mod:`sdeverify.train.augment`), and their
  labels;
* conv forward: ``im2col`` writes the patches ``(C·k·k, B·Ho·Wo)`` of every model, then the
  GEMM of :func:`sdeverify.train.cuda.make_gemm` computes ``W (O × C·k·k) · cols`` (a 16- or
  32-row tile when O is that narrow, :func:`conv_gemm_config`); backward: the patches are
  recomputed, ``dW = dout · colsᵀ`` and ``dcols = Wᵀ · dout`` (the GEMM's compile-time
  transposes), and ``col2im`` sums the patch gradients back onto each input pixel (one thread
  per pixel, in the reference's (i, j) order: no atomics, deterministic).  The weight
  gradient reduces over all B·Ho·Wo pixels into few output tiles: when those do not fill the
  GPU it is split by image groups (split-K: one launch for all models and splits, grid z =
  model × split; ``sum_splits`` adds the partial products in a fixed order;
  :data:`SPLIT_WAVES`);
* BatchNorm forward (``bn_forward``) and backward (``bn_backward``): one block of 512 threads
  per (channel, model), block tree reductions in shared memory (batch mean, biased variance,
  running statistics update; ``Σ dy`` and ``Σ dy·x̂``) — or, with :attr:`ConvTrainer.bn_split`,
  several blocks per pair (:data:`BN_WAVES`: chunk partials, then merge + apply).  Fused into
  them: forward, the normalisation, a residual block's shortcut (identity, option-A
  zero-pad, or the option-B conv's BN output) and the ReLU; backward, ReLU's adjoint (the
  masked gradient written back for the shortcut); ``col2im`` adds the shortcut's adjoint;
  global average ``pool`` and ``pool_back``;
* the linear head and its gradients by the same GEMM (the bias gradient as ``1ᵀ dZ`` through
  the GEMM's row of ones), the softmax cross-entropy and per-model loss reduction of
  :func:`sdeverify.train.cuda.make_pointwise`;
* ``update``: ``g = Σ_s r_s g_s + λ·mask·w;  m ← a m + b g;  w ← w − γ m`` with the decay mask
  of :meth:`ResNet.decay_mask` (BN γ/β and the linear bias excluded unless ``decay_bn``).

float32 and float64.  The GPU contracts multiply-adds into FMAs and sums in another order than
NumPy, so it agrees with the reference up to rounding.  Without a GPU this module imports
fine; constructing a :class:`ConvTrainer` raises a one-line ``RuntimeError`` unless Numba's
CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``, slow: tests only).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .. import cuda_arch
from ..engine.cuda import _cuda
from . import conv_reference
from .convnet import BN_EPS, BN_MOMENTUM, ResNet
from .cuda import (EPI_BIAS_ACT, EPI_NONE, GPU_BIG_MIN, GPU_MAX_REGISTERS, GPU_TILES, GPU_TPB,
                   IDENTITY, SIM_BIG_MIN, SIM_TPB, _cached, _numba_dtype, gemm_config,
                   make_gemm, make_pointwise)
from .models import LOSSES

try:  # a module global, so that the CUDA simulator can swap it inside kernels
    from numba import cuda
except Exception:  # pragma: no cover - depends on the install
    cuda = None

__all__ = ["ConvTrainer", "make_conv_kernels", "GEMM_VARIANTS", "KERNEL_PARAMS", "NARROW_TILES",
           "conv_gemm_config", "weight_grad_splits", "launches_per_step", "static_kernels"]

#: Blocks of a grid-stride element-wise launch: at most this many (each thread loops).  Under
#: the simulator every thread is a Python thread: few blocks keep the tests fast.
GPU_MAX_BLOCKS, SIM_MAX_BLOCKS = 1 << 20, 1
#: Threads per BatchNorm block on a GPU (each block streams one (model, channel) slice: more
#: threads, more loads in flight) and their register cap (512 × 128 = the 64 K registers of
#: a block; ptxas gives the BN kernels 56-79).
GPU_BN_TPB, GPU_BN_MAX_REGISTERS = 512, 128
#: Split-K of the conv weight gradient ``dW = dout · colsᵀ`` (a reduction over all B·Ho·Wo
#: pixels, few output tiles): when the models' output tiles give fewer than
#: ``SPLIT_WAVES × multiprocessors`` blocks, each model's pixels are split by images into S
#: groups (S divides B), one GEMM launch (grid z = model × split, ``make_gemm(split_k=True)``)
#: computes the M·S partial products and ``sum_splits`` adds them in order.  The simulator
#: pretends to have ``SIM_SPLIT_SMS`` multiprocessors, so that the tiny tests take both paths.
SPLIT_WAVES, SIM_SPLIT_SMS = 2, 4

#: GEMM tiles ``(BM, BN, BK, TM, TN)`` for products with few output rows: a conv's
#: ``O × (B·Ho·Wo)`` output and ``O × C·k²`` weight gradient have O = 16, 32 or 64 rows (× the
#: width multiplier), which the 64-row tile of :data:`sdeverify.train.cuda.GPU_TILES` fills
#: to 25% or 50%.  ``n16`` / ``n32`` are 16 / 32 rows by 256 / 128 columns (4 × 8 outputs per
#: thread, 128 threads): a product with at most BM rows takes the narrowest one that holds
#: them (:func:`conv_gemm_config`).
NARROW_TILES = {"n16": (16, 256, 8, 4, 8), "n32": (32, 128, 8, 4, 8)}
#: The simulator's GEMM tiles for the conv shapes (wide output tiles, 4 threads per block):
#: fewer simulated blocks than the MLP's :data:`sdeverify.train.cuda.SIM_TILES`, still
#: partial tiles in every dimension of the tiny test networks (4-8-16 channels: the narrow
#: tiles take the 4- and 8-channel products) and barriers between threads.
CONV_SIM_TILES = {"big": (8, 64, 16, 8, 16), "small": (4, 64, 16, 4, 16),
                  "n16": (4, 32, 8, 2, 16), "n32": (8, 32, 8, 4, 16)}
CONV_GPU_TILES = {**GPU_TILES, **NARROW_TILES}
#: BatchNorm over several blocks per (channel, model) (:attr:`ConvTrainer.bn_split`, off by
#: default until measured): one block per pair gives a single model only 16-64 blocks, each
#: streaming B·H·W values; with ``bn_split`` a pair's values are cut into Q chunks (Q a power
#: of two dividing N, ≥ one value per thread) until the pairs' chunks reach ``BN_WAVES ×
#: multiprocessors`` blocks, at one more launch per BatchNorm pass (chunk partials, then
#: merge + apply).
BN_WAVES = 4

#: The GEMM variants this trainer launches ``(label, trans_a, trans_b, epilogue, activation,
#: split_k)``.
GEMM_VARIANTS = [
    ("conv forward, head input/bias grad", False, False, EPI_NONE, IDENTITY, False),
    ("conv weight grad", False, True, EPI_NONE, IDENTITY, False),
    ("conv weight grad split-K", False, True, EPI_NONE, IDENTITY, True),
    ("conv input grad, head weight grad", True, False, EPI_NONE, IDENTITY, False),
    ("head forward", False, True, EPI_BIAS_ACT, IDENTITY, False),
]

#: Parameter types of the kernels of :func:`make_conv_kernels` as the launch code below passes
#: them ("dt" the trainer's dtype, "i64" Python ints / int64 arrays, "[]" a 1-D array):
#: :func:`static_kernels` builds their signatures from it for ``benchmarks/gpu_static.py``.
_I = "i64"
KERNEL_PARAMS = {
    "gather": dict(X="dt[]", y="i64[]", idx="i64[]", ioff=_I, dyv="i64[]", dxv="i64[]",
                   flip="i64[]", aoff=_I, use_aug=_I, R=_I, C=_I, B=_I, H=_I, W=_I,
                   x0="dt[]", y0="i64[]"),
    "im2col": dict(x="dt[]", xmod=_I, C=_I, B=_I, H=_I, W=_I, k=_I, s=_I, p=_I, Ho=_I, Wo=_I,
                   M=_I, cols="dt[]"),
    "col2im": dict(dcols="dt[]", C=_I, B=_I, H=_I, W=_I, k=_I, s=_I, p=_I, Ho=_I, Wo=_I, M=_I,
                   dx="dt[]", accumulate=_I, d="dt[]", smode=_I, Cd=_I),
    "bn_forward": dict(x="dt[]", C=_I, N=_I, M=_I, W="dt[]", og=_I, ob=_I, P=_I, train=_I,
                       buf="dt[]", orm=_I, orv=_I, NB=_I, update=_I, inv="dt[]", ioff=_I,
                       Ctot=_I, xhat="dt[]", y="dt[]", relu=_I, sc="dt[]", smode=_I, Cx=_I,
                       Ho=_I, Hx=_I),
    "bn_backward": dict(dy="dt[]", xhat="dt[]", C=_I, N=_I, M=_I, W="dt[]", og=_I, ob=_I, P=_I,
                        inv="dt[]", ioff=_I, Ctot=_I, G="dt[]", goff=_I, dx="dt[]", a="dt[]",
                        mask=_I),
    "bn_stats": dict(x="dt[]", C=_I, N=_I, M=_I, Q=_I, part="dt[]"),
    "bn_apply": dict(x="dt[]", C=_I, N=_I, M=_I, Q=_I, part="dt[]", W="dt[]", og=_I, ob=_I,
                     P=_I, train=_I, buf="dt[]", orm=_I, orv=_I, NB=_I, update=_I, inv="dt[]",
                     ioff=_I, Ctot=_I, xhat="dt[]", y="dt[]", relu=_I, sc="dt[]", smode=_I,
                     Cx=_I, Ho=_I, Hx=_I),
    "bn_grad_stats": dict(dy="dt[]", xhat="dt[]", C=_I, N=_I, M=_I, Q=_I, a="dt[]", mask=_I,
                          part="dt[]"),
    "bn_grad_apply": dict(dy="dt[]", xhat="dt[]", C=_I, N=_I, M=_I, Q=_I, part="dt[]",
                          W="dt[]", og=_I, ob=_I, P=_I, inv="dt[]", ioff=_I, Ctot=_I, G="dt[]",
                          goff=_I, dx="dt[]"),
    "pool": dict(h="dt[]", C=_I, B=_I, HW=_I, M=_I, f="dt[]"),
    "pool_back": dict(df="dt[]", C=_I, B=_I, HW=_I, M=_I, dh="dt[]"),
    "sum_splits": dict(part="dt[]", S=_I, L=_I, M=_I, G="dt[]", goff=_I, P=_I),
    "update": dict(w="dt[]", mom="dt[]", g="dt[]", n_slots=_I, r0="dt", r1="dt", decay="dt[]",
                   a="dt[]", b="dt[]", gamma="dt[]", s=_I, S=_I, R=_I, P=_I, M=_I),
}
#: Kernels launched one block per (channel, model) with a shared-memory tree reduction.
_REDUCING = ("bn_forward", "bn_backward", "bn_stats", "bn_apply", "bn_grad_stats",
             "bn_grad_apply")


def conv_gemm_config(nm: int, nn: int, models: int, tiles: dict = CONV_GPU_TILES,
                     big_min: int = GPU_BIG_MIN, n_sm: int = 132) -> tuple[str, tuple, tuple]:
    """``(tile name, tile, grid)`` of a product with an ``nm × nn`` output per model: the
    narrowest of :data:`NARROW_TILES` with at least ``nm`` rows, else the MLP trainer's rule
    (:func:`sdeverify.train.cuda.gemm_config`); grid ``(⌈nn/BN⌉, ⌈nm/BM⌉, models)``."""
    for size in ("n16", "n32"):
        tile = tiles[size]
        if nm <= tile[0]:
            return size, tile, (-(-nn // tile[1]), -(-nm // tile[0]), models)
    return gemm_config(nm, nn, models, tiles, big_min, n_sm)


def weight_grad_splits(c_out: int, kk: int, models: int, batch: int,
                       tiles: dict = CONV_GPU_TILES, big_min: int = GPU_BIG_MIN,
                       n_sm: int = 132) -> int:
    """Image groups S of a conv's weight-gradient product ``dW (c_out × kk)`` summed over the
    ``batch`` images' pixels (:data:`SPLIT_WAVES`): 1 when the ``models`` products' output
    tiles give ``SPLIT_WAVES × n_sm`` blocks, else the largest divisor of the batch up to
    what gives them (all models' splits share one launch)."""
    tile = conv_gemm_config(c_out, kk, models, tiles, big_min, n_sm)[1]
    blocks = models * -(-c_out // tile[0]) * -(-kk // tile[1])
    want = SPLIT_WAVES * n_sm
    if blocks >= want:
        return 1
    top = min(batch, -(-want // blocks))
    return max(d for d in range(1, top + 1) if batch % d == 0)


def bn_chunks(C: int, M: int, N: int, n_sm: int, threads: int) -> int:
    """Chunks Q per (channel, model) of a split BatchNorm (:data:`BN_WAVES`): the largest
    power of two with ``C·M·Q ≤`` about ``BN_WAVES·n_sm`` blocks, Q dividing N and N/Q at
    least ``threads``; 1 when the pairs alone give enough blocks."""
    want = BN_WAVES * n_sm
    Q = 1
    while C * M * Q * 2 <= want and N % (Q * 2) == 0 and N // (Q * 2) >= threads:
        Q *= 2
    return Q


def launches_per_step(model: ResNet, models: int, batch: int, tiles: dict = CONV_GPU_TILES,
                      big_min: int = GPU_BIG_MIN, n_sm: int = 132, slots: int = 1,
                      bn_split: bool = False, bn_threads: int = 512) -> int:
    """Kernel launches of one :meth:`ConvTrainer.train` step (``slots`` minibatch slots with
    non-zero weight), counted from the network's units: per slot a gather, per conv + BN unit
    im2col, GEMM and BN forward (shortcut add and ReLU fused), pooling, the head's GEMM, the
    loss and (slot 0) its reduction; backward the head's three GEMMs, pooling's adjoint, per
    unit BN backward (ReLU's adjoint fused), im2col, the weight-gradient GEMM (+ ``sum_splits``
    when split) and, except the stem, the input-gradient GEMM and col2im (the shortcut's
    adjoint fused); one update for all models and parameters.  ``bn_split``: one more launch
    per BN pass of a unit whose BN is chunked (:func:`bn_chunks`, ``bn_threads`` per block)."""
    plan = _Plan(model)
    chunked = 0
    if bn_split:
        chunked = sum(bn_chunks(u.c_out, models, batch * u.h_out ** 2, n_sm, bn_threads) > 1
                      for u in plan.units)
    fwd = 1 + 3 * len(plan.units) + 2 + 1 + chunked
    bwd = 4 + chunked + sum(3 + (weight_grad_splits(u.c_out, u.c_in * u.k ** 2, models, batch,
                                                    tiles, big_min, n_sm) > 1)
                            + 2 * (u is not plan.stem) for u in plan.units)
    return slots * (fwd + bwd) + 1 + 1


def make_conv_kernels(dtype: np.dtype, tpb: int, tpb_bn: int | None = None,
                      bn_max_registers: int | None = None) -> dict:
    """The conv trainer's own kernels (module docstring), ``{name: kernel}`` for ``dtype`` and
    ``tpb`` threads per block.  Element-wise kernels are grid-stride loops over a flat index;
    ``bn_forward`` / ``bn_backward`` give each block one (channel, model) pair at a time
    (grid-stride over the pairs), ``tpb_bn`` threads (a power of two; default ``tpb``, capped
    at ``bn_max_registers`` registers per thread) and ``tpb_bn`` values of ``dtype`` of
    dynamic shared memory."""
    DT, NPDT = _numba_dtype(dtype), np.dtype(dtype).type
    ZERO, ONE = NPDT(0.0), NPDT(1.0)
    EPS, KEEP, MOM = NPDT(BN_EPS), NPDT(1.0 - BN_MOMENTUM), NPDT(BN_MOMENTUM)
    TB = tpb_bn or tpb
    bn_opts = ({} if bn_max_registers is None or numba.config.ENABLE_CUDASIM
               else {"max_registers": bn_max_registers})

    @cuda.jit(device=True)
    def block_sum(sh, t, v):
        """Σ of ``v`` over the block's threads (fixed-order tree; every thread gets it)."""
        sh[t] = v
        cuda.syncthreads()
        h = TB // 2
        while h > 0:
            if t < h:
                sh[t] += sh[t + h]
            cuda.syncthreads()
            h //= 2
        r = sh[0]
        cuda.syncthreads()
        return r

    @cuda.jit
    def gather(X, y, idx, ioff, dyv, dxv, flip, aoff, use_aug, R, C, B, H, W, x0, y0):
        """``x0[r, c, b, h, w]`` = image ``idx[ioff + r·B + b]`` of ``X (n, C, H, W)``, cropped
        at ``(dy, dx)`` with zero padding and flipped (``use_aug``; parameters at ``aoff +
        r·B + b``), and its label into ``y0[r·B + b]``."""
        total = R * C * B * H * W
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            w = e % W
            q = e // W
            h = q % H
            q //= H
            b = q % B
            q //= B
            c = q % C
            r = q // C
            row = idx[ioff + r * B + b]
            hh, ww = h, w
            if use_aug:
                a = aoff + r * B + b
                if flip[a]:
                    ww = W - 1 - w
                hh += dyv[a]
                ww += dxv[a]
            v = ZERO
            if hh >= 0 and hh < H and ww >= 0 and ww < W:
                v = X[((row * C + c) * H + hh) * W + ww]
            x0[e] = v
            if c == 0 and h == 0 and w == 0:
                y0[r * B + b] = y[row]

    @cuda.jit
    def im2col(x, xmod, C, B, H, W, k, s, p, Ho, Wo, M, cols):
        """``cols[m, (c·k + i)·k + j, (b·Ho + ho)·Wo + wo]`` = ``x[m % xmod, c, b, ho·s + i − p,
        wo·s + j − p]`` (0 outside the image), ``x (·, C, B, H, W)``.  Grid (output pixels,
        patch rows, models), grid-stride in each: the patch row's (c, i, j) are the block's,
        a thread splits its pixel index only (two integer divisions per element, not twelve
        divisions and remainders)."""
        HWo = Ho * Wo
        No = B * HWo
        K = C * k * k
        for m in range(cuda.blockIdx.z, M, cuda.gridDim.z):
            for kk in range(cuda.blockIdx.y, K, cuda.gridDim.y):
                j = kk % k
                q = kk // k
                i = q % k
                c = q // k
                src = ((m % xmod) * C + c) * B * H * W
                dst = (m * K + kk) * No
                for n in range(cuda.grid(1), No, cuda.gridsize(1)):
                    b = n // HWo
                    pix = n - b * HWo
                    ho = pix // Wo
                    r = ho * s + i - p
                    cc = (pix - ho * Wo) * s + j - p
                    v = ZERO
                    if r >= 0 and r < H and cc >= 0 and cc < W:
                        v = x[src + (b * H + r) * W + cc]
                    cols[dst + n] = v

    @cuda.jit
    def col2im(dcols, C, B, H, W, k, s, p, Ho, Wo, M, dx, accumulate, d, smode, Cd):
        """The adjoint of ``im2col`` (xmod = M): each input pixel sums the patch gradients
        that read it, in (i, j) order, then (fused) the adjoint of the residual block's
        shortcut applied to its output gradient ``d (M, Cd, B, Ho, Wo)``: ``smode`` 0 none,
        1 identity (``+ d[e]``), 2 option A (``+ d[m, c + front, b, h/2, w/2]`` at even h, w,
        ``front = (Cd − C)//2``); into ``dx`` (``+=`` when ``accumulate``).  Grid (pixels,
        channels, models), grid-stride in each; stride 1 needs no division in the patch
        loop."""
        No = B * Ho * Wo
        HW = H * W
        K = C * k * k
        front = (Cd - C) // 2
        for m in range(cuda.blockIdx.z, M, cuda.gridDim.z):
            for c in range(cuda.blockIdx.y, C, cuda.gridDim.y):
                base = (m * C + c) * B * HW
                gbase = (m * K + c * k * k) * No
                for n in range(cuda.grid(1), B * HW, cuda.gridsize(1)):
                    b = n // HW
                    pix = n - b * HW
                    h = pix // W
                    w = pix - h * W
                    v = ZERO
                    if s == 1:
                        for i in range(k):
                            rr = h + p - i
                            if rr >= 0 and rr < Ho:
                                for j in range(k):
                                    cc = w + p - j
                                    if cc >= 0 and cc < Wo:
                                        v += dcols[gbase + (i * k + j) * No
                                                   + (b * Ho + rr) * Wo + cc]
                    else:
                        for i in range(k):
                            rr = h + p - i
                            if rr >= 0 and rr % s == 0 and rr // s < Ho:
                                for j in range(k):
                                    cc = w + p - j
                                    if cc >= 0 and cc % s == 0 and cc // s < Wo:
                                        v += dcols[gbase + (i * k + j) * No
                                                   + (b * Ho + rr // s) * Wo + cc // s]
                    e = base + n
                    if smode == 1:
                        v += d[e]
                    elif smode == 2 and h % 2 == 0 and w % 2 == 0:
                        v += d[(((m * Cd + c + front) * B + b) * Ho + h // 2) * Wo + w // 2]
                    if accumulate:
                        dx[e] += v
                    else:
                        dx[e] = v

    @cuda.jit(**bn_opts)
    def bn_forward(x, C, N, M, W, og, ob, P, train, buf, orm, orv, NB, update, inv, ioff, Ctot,
                   xhat, y, relu, sc, smode, Cx, Ho, Hx):
        """BatchNorm2d of channel c of model m of ``x (M, C, N)`` (blocks take the (c, m) pairs
        in turn): training mode by the batch mean and biased variance (and, when ``update``,
        the running statistics ``(1 − mom)·r + mom·stat``, the variance unbiased by
        ``N/(N − 1)``; mom, ε of :mod:`~sdeverify.train.convnet`), evaluation mode by the
        running statistics ``buf[m·NB + orm/orv + c]``; writes ``1/σ`` to ``inv[m·Ctot + ioff
        + c]``, ``x̂`` and ``y = γ x̂ + β`` (γ, β at ``W[m·P + og/ob + c]``), then — fused —
        the residual block's shortcut ``s`` added (``smode`` 1: ``sc`` itself, same shape;
        2: option A of ``sc (M, Cx, B, Hx, Hx)``: ``sc[m, c − front, b, 2h, 2w]`` on the
        channels ``front ≤ c < front + Cx``, ``front = (C − Cx)//2``; 0: none) and ReLU when
        ``relu``; ``Ho``: the output's height = width."""
        sh = cuda.shared.array(0, DT)
        t = cuda.threadIdx.x
        for cm in range(cuda.blockIdx.x, C * M, cuda.gridDim.x):   # block-uniform
            _bn_forward_channel(sh, t, cm % C, cm // C, x, C, N, W, og, ob, P, train, buf, orm,
                                orv, NB, update, inv, ioff, Ctot, xhat, y, relu, sc, smode, Cx,
                                Ho, Hx)

    @cuda.jit(device=True)
    def _bn_forward_channel(sh, t, c, m, x, C, N, W, og, ob, P, train, buf, orm, orv, NB,
                            update, inv, ioff, Ctot, xhat, y, relu, sc, smode, Cx, Ho, Hx):
        base = (m * C + c) * N
        if train:
            a = ZERO
            for i in range(t, N, TB):
                a += x[base + i]
            nf = NPDT(N)
            mean = block_sum(sh, t, a) / nf
            a = ZERO
            for i in range(t, N, TB):
                d = x[base + i] - mean
                a += d * d
            var = block_sum(sh, t, a) / nf
            iv = ONE / math.sqrt(var + EPS)
            if update and t == 0:
                _bn_running(c, m, mean, var, N, buf, orm, orv, NB)
        else:
            mean = buf[m * NB + orm + c]
            iv = ONE / math.sqrt(buf[m * NB + orv + c] + EPS)
        if t == 0:
            inv[m * Ctot + ioff + c] = iv
        _bn_apply(t, c, m, 0, N, mean, iv, x, C, N, W, og, ob, P, xhat, y, relu, sc, smode,
                  Cx, Ho, Hx)

    @cuda.jit(device=True)
    def _bn_running(c, m, mean, var, N, buf, orm, orv, NB):
        """The running statistics' update by the batch mean and (unbiased) variance."""
        nf = NPDT(N)
        rm = m * NB + orm + c
        rv = m * NB + orv + c
        buf[rm] = KEEP * buf[rm] + MOM * mean
        buf[rv] = KEEP * buf[rv] + MOM * (var * (nf / NPDT(max(N - 1, 1))))

    @cuda.jit(device=True)
    def _bn_apply(t, c, m, lo, hi, mean, iv, x, C, N, W, og, ob, P, xhat, y, relu, sc, smode,
                  Cx, Ho, Hx):
        """Entries [lo, hi) of (c, m): x̂, γ x̂ + β, the shortcut, ReLU (``bn_forward``)."""
        base = (m * C + c) * N
        g = W[m * P + og + c]
        bb = W[m * P + ob + c]
        HW = Ho * Ho
        cx = c - (C - Cx) // 2           # option A: the input channel this one copies
        xbase = (m * Cx + cx) * (N // HW) * Hx * Hx
        for i in range(lo + t, hi, TB):
            hv = (x[base + i] - mean) * iv
            xhat[base + i] = hv
            v = g * hv + bb
            if smode == 1:
                v += sc[base + i]
            elif smode == 2 and cx >= 0 and cx < Cx:
                hw = i % HW
                v += sc[xbase + (i // HW) * Hx * Hx + 2 * (hw // Ho) * Hx + 2 * (hw % Ho)]
            if relu and v < ZERO:
                v = ZERO
            y[base + i] = v

    @cuda.jit(**bn_opts)
    def bn_backward(dy, xhat, C, N, M, W, og, ob, P, inv, ioff, Ctot, G, goff, dx, a, mask):
        """Training-mode BatchNorm2d backward of channel c of model m (blocks take the (c, m)
        pairs in turn).  When ``mask``, ReLU's adjoint first (fused): ``dy ← dy·(a > 0)`` at
        the ReLU's output ``a``, written back into ``dy`` (a residual block's shortcut reads it
        too).  Then ``dβ = Σ dy``, ``dγ = Σ dy·x̂`` into ``G[goff + m·P + ob/og + c]`` and
        ``dx = γ·inv/N · (N·dy − dβ − x̂·dγ)``."""
        sh = cuda.shared.array(0, DT)
        t = cuda.threadIdx.x
        for cm in range(cuda.blockIdx.x, C * M, cuda.gridDim.x):   # block-uniform
            _bn_backward_channel(sh, t, cm % C, cm // C, dy, xhat, C, N, W, og, ob, P, inv,
                                 ioff, Ctot, G, goff, dx, a, mask)

    @cuda.jit(device=True)
    def _masked_sums(t, base, n, dy, xhat, act, mask):
        """This thread's share of ``Σ dy`` and ``Σ dy·x̂`` over entries ``[base, base + n)``,
        after ReLU's adjoint in place when ``mask`` (``dy ← dy·(act > 0)``; thread t masks
        only the entries it reads, so a later pass of the same thread sees them masked)."""
        a = ZERO
        b2 = ZERO
        for i in range(t, n, TB):
            d = dy[base + i]
            if mask and not act[base + i] > ZERO:
                d = d * ZERO
                dy[base + i] = d
            a += d
            b2 += d * xhat[base + i]
        return a, b2

    @cuda.jit(device=True)
    def _bn_backward_channel(sh, t, c, m, dy, xhat, C, N, W, og, ob, P, inv, ioff, Ctot, G,
                             goff, dx, act, mask):
        base = (m * C + c) * N
        a, b2 = _masked_sums(t, base, N, dy, xhat, act, mask)
        dbeta = block_sum(sh, t, a)
        dgamma = block_sum(sh, t, b2)
        if t == 0:
            G[goff + m * P + og + c] = dgamma
            G[goff + m * P + ob + c] = dbeta
        _bn_dx(t, c, m, 0, N, dbeta, dgamma, dy, xhat, C, N, W, og, P, inv, ioff, Ctot, dx)

    @cuda.jit(device=True)
    def _bn_dx(t, c, m, lo, hi, dbeta, dgamma, dy, xhat, C, N, W, og, P, inv, ioff, Ctot, dx):
        """Entries [lo, hi) of (c, m): ``dx = γ·inv/N · (N·dy − dβ − x̂·dγ)``."""
        base = (m * C + c) * N
        nf = NPDT(N)
        coef = W[m * P + og + c] * inv[m * Ctot + ioff + c] / nf
        for i in range(lo + t, hi, TB):
            dx[base + i] = coef * (nf * dy[base + i] - dbeta - xhat[base + i] * dgamma)

    # ---- BatchNorm over Q blocks per (channel, model): chunk partials, then merge + apply
    @cuda.jit(**bn_opts)
    def bn_stats(x, C, N, M, Q, part):
        """Chunk q (entries [q·L, (q+1)·L), L = N/Q) of channel c of model m of ``x (M, C,
        N)``: its mean and Σ (x − mean)² into ``part[2·((m·C + c)·Q + q) + 0/1]``."""
        sh = cuda.shared.array(0, DT)
        t = cuda.threadIdx.x
        L = N // Q
        for cmq in range(cuda.blockIdx.x, C * M * Q, cuda.gridDim.x):   # block-uniform
            base = (cmq // Q) * N + (cmq % Q) * L
            a = ZERO
            for i in range(t, L, TB):
                a += x[base + i]
            mq = block_sum(sh, t, a) / NPDT(L)
            a = ZERO
            for i in range(t, L, TB):
                d = x[base + i] - mq
                a += d * d
            m2 = block_sum(sh, t, a)
            if t == 0:
                part[2 * cmq] = mq
                part[2 * cmq + 1] = m2

    @cuda.jit(**bn_opts)
    def bn_apply(x, C, N, M, Q, part, W, og, ob, P, train, buf, orm, orv, NB, update, inv,
                 ioff, Ctot, xhat, y, relu, sc, smode, Cx, Ho, Hx):
        """``bn_forward`` of chunk q of (c, m) (blocks take the (c, m, q) triples in turn):
        training mode by the Q chunks' ``bn_stats`` merged in order (Chan et al.'s pairwise
        update of mean and Σ (x − mean)²; chunk 0's block updates the running statistics
        and writes ``1/σ``), evaluation mode by the running statistics."""
        t = cuda.threadIdx.x
        L = N // Q
        for cmq in range(cuda.blockIdx.x, C * M * Q, cuda.gridDim.x):   # block-uniform
            q = cmq % Q
            cm = cmq // Q
            c = cm % C
            m = cm // C
            if train:
                mean = part[2 * cm * Q]
                m2 = part[2 * cm * Q + 1]
                n = NPDT(L)
                for r in range(1, Q):
                    nn = n + NPDT(L)
                    delta = part[2 * (cm * Q + r)] - mean
                    mean += delta * NPDT(L) / nn
                    m2 += part[2 * (cm * Q + r) + 1] + delta * delta * n * NPDT(L) / nn
                    n = nn
                var = m2 / NPDT(N)
                iv = ONE / math.sqrt(var + EPS)
                if update and q == 0 and t == 0:
                    _bn_running(c, m, mean, var, N, buf, orm, orv, NB)
            else:
                mean = buf[m * NB + orm + c]
                iv = ONE / math.sqrt(buf[m * NB + orv + c] + EPS)
            if q == 0 and t == 0:
                inv[m * Ctot + ioff + c] = iv
            _bn_apply(t, c, m, q * L, (q + 1) * L, mean, iv, x, C, N, W, og, ob, P, xhat, y,
                      relu, sc, smode, Cx, Ho, Hx)

    @cuda.jit(**bn_opts)
    def bn_grad_stats(dy, xhat, C, N, M, Q, a, mask, part):
        """Chunk q of (c, m) of ``bn_backward``: ReLU's adjoint in place (``mask``), then its
        ``Σ dy`` and ``Σ dy·x̂`` into ``part[2·((m·C + c)·Q + q) + 0/1]``."""
        sh = cuda.shared.array(0, DT)
        t = cuda.threadIdx.x
        L = N // Q
        for cmq in range(cuda.blockIdx.x, C * M * Q, cuda.gridDim.x):   # block-uniform
            base = (cmq // Q) * N + (cmq % Q) * L
            s1, s2 = _masked_sums(t, base, L, dy, xhat, a, mask)
            s1 = block_sum(sh, t, s1)
            s2 = block_sum(sh, t, s2)
            if t == 0:
                part[2 * cmq] = s1
                part[2 * cmq + 1] = s2

    @cuda.jit(**bn_opts)
    def bn_grad_apply(dy, xhat, C, N, M, Q, part, W, og, ob, P, inv, ioff, Ctot, G, goff, dx):
        """``bn_backward`` of chunk q of (c, m) from the Q chunks' ``bn_grad_stats`` summed in
        order (chunk 0's block writes dγ, dβ)."""
        t = cuda.threadIdx.x
        for cmq in range(cuda.blockIdx.x, C * M * Q, cuda.gridDim.x):   # block-uniform
            q = cmq % Q
            cm = cmq // Q
            c = cm % C
            m = cm // C
            dbeta = ZERO
            dgamma = ZERO
            for r in range(Q):
                dbeta += part[2 * (cm * Q + r)]
                dgamma += part[2 * (cm * Q + r) + 1]
            if q == 0 and t == 0:
                G[goff + m * P + og + c] = dgamma
                G[goff + m * P + ob + c] = dbeta
            L = N // Q
            _bn_dx(t, c, m, q * L, (q + 1) * L, dbeta, dgamma, dy, xhat, C, N, W, og, P, inv,
                   ioff, Ctot, dx)

    @cuda.jit
    def pool(h, C, B, HW, M, f):
        """Global average pooling: ``f[m, b, c] = Σ_hw h[m, c, b, hw] / HW``."""
        for e in range(cuda.grid(1), M * B * C, cuda.gridsize(1)):
            c = e % C
            q = e // C
            b = q % B
            m = q // B
            base = ((m * C + c) * B + b) * HW
            a = ZERO
            for i in range(HW):
                a += h[base + i]
            f[e] = a / NPDT(HW)

    @cuda.jit
    def pool_back(df, C, B, HW, M, dh):
        """``dh[m, c, b, hw] = df[m, b, c] / HW``."""
        for e in range(cuda.grid(1), M * C * B * HW, cuda.gridsize(1)):
            q = e // HW
            b = q % B
            q //= B
            c = q % C
            m = q // C
            dh[e] = df[(m * B + b) * C + c] / NPDT(HW)

    @cuda.jit
    def sum_splits(part, S, L, M, G, goff, P):
        """``G[goff + m·P + i] = Σ_q part[(m·S + q)·L + i]`` (q in order): the split-K partial
        weight gradients of every model summed into the flat gradient."""
        for e in range(cuda.grid(1), M * L, cuda.gridsize(1)):
            i = e % L
            m = e // L
            a = ZERO
            for q in range(S):
                a += part[(m * S + q) * L + i]
            G[goff + m * P + i] = a

    @cuda.jit
    def update(w, mom, g, n_slots, r0, r1, decay, a, b, gamma, s, S, R, P, M):
        """``g = r₀ g₀ (+ r₁ g₁) + decay ⊙ w;  m ← a m + b g;  w ← w − γ m`` for every
        (model, parameter); ``decay = λ·mask`` per parameter; slots with r = 0 are not read;
        ``a, b, gamma`` are the optimizers' (optimizers, S) coefficients, flat."""
        for q in range(cuda.grid(1), M * P, cuda.gridsize(1)):
            p = q % P
            j = (q // P) // R
            gr = ZERO
            if r0 != ZERO:
                gr = r0 * g[q]
            if n_slots > 1 and r1 != ZERO:
                gr += r1 * g[M * P + q]
            gr += decay[p] * w[q]
            mm = a[j * S + s] * mom[q] + b[j * S + s] * gr
            mom[q] = mm
            w[q] = w[q] - gamma[j * S + s] * mm

    return dict(gather=gather, im2col=im2col, col2im=col2im, bn_forward=bn_forward,
                bn_backward=bn_backward, bn_stats=bn_stats, bn_apply=bn_apply,
                bn_grad_stats=bn_grad_stats, bn_grad_apply=bn_grad_apply, pool=pool,
                pool_back=pool_back, sum_splits=sum_splits, update=update)


def static_kernels(dtype, tpb: int = GPU_TPB, tpb_bn: int = GPU_BN_TPB,
                   bn_max_registers: int | None = GPU_BN_MAX_REGISTERS) -> list:
    """``(name, pyfunc, signature, threads, dynamic shared bytes, max registers)`` of every
    kernel of :func:`make_conv_kernels` as the launch code passes its arguments (for
    ``benchmarks/gpu_static.py``: NVVM + ptxas without a GPU)."""
    from numba import types as T
    dtype = np.dtype(dtype)
    scalars = {"dt": _numba_dtype(dtype), "i64": T.int64}
    ks = make_conv_kernels(dtype, tpb, tpb_bn, bn_max_registers)
    out = []
    for name, params in KERNEL_PARAMS.items():
        fn = ks[name].py_func
        names = list(fn.__code__.co_varnames[:fn.__code__.co_argcount])
        if names != list(params):
            raise KeyError(f"the {name} kernel's parameters {names} differ from KERNEL_PARAMS")
        sig = tuple(T.Array(scalars[t[:-2]], 1, "C") if t.endswith("[]") else scalars[t]
                    for t in params.values())
        bn = name in _REDUCING
        out.append((name, fn, sig, tpb_bn if bn else tpb, tpb_bn * dtype.itemsize if bn else 0,
                    bn_max_registers if bn else None))
    return out


# ---- the network plan ---------------------------------------------------------------------------
class _Unit:
    """One conv + BatchNorm: parameter/buffer offsets and shapes (per model)."""

    def __init__(self, model: ResNet, conv: str, bn: str, c_in: int, c_out: int, k: int,
                 stride: int, pad: int, h_in: int, ioff: int):
        lay = {t.name: t for t in model.layout()}
        buf = {t.name: t for t in model.buffer_layout()}
        self.w = lay[conv].offset
        self.og, self.ob = lay[f"{bn}.weight"].offset, lay[f"{bn}.bias"].offset
        self.orm, self.orv = buf[f"{bn}.running_mean"].offset, buf[f"{bn}.running_var"].offset
        self.c_in, self.c_out, self.k, self.stride, self.pad = c_in, c_out, k, stride, pad
        self.h_in = h_in
        self.h_out = (h_in + 2 * pad - k) // stride + 1
        self.ioff = ioff


class _Plan:
    """The ResNet as a list of units and blocks, with the sizes of its device buffers."""

    def __init__(self, model: ResNet):
        self.model = model
        units = []
        ioff = 0

        def unit(conv, bn, c_in, c_out, k, stride, pad, h_in):
            nonlocal ioff
            u = _Unit(model, conv, bn, c_in, c_out, k, stride, pad, h_in, ioff)
            ioff += c_out
            units.append(u)
            return u

        size = model.image_size
        c0 = model.channels[0]
        self.stem = unit("conv1.weight", "bn1", model.in_channels, c0, 3, 1, 1, size)
        self.blocks = []
        h = size
        for blk in model.blocks():
            p = blk.prefix
            u1 = unit(f"{p}.conv1.weight", f"{p}.bn1", blk.c_in, blk.c_out, 3, blk.stride, 1, h)
            u2 = unit(f"{p}.conv2.weight", f"{p}.bn2", blk.c_out, blk.c_out, 3, 1, 1, u1.h_out)
            us = (unit(f"{p}.shortcut.0.weight", f"{p}.shortcut.1", blk.c_in, blk.c_out, 1,
                       blk.stride, 0, h) if blk.shortcut == "B" else None)
            self.blocks.append((blk, u1, u2, us))
            h = u1.h_out
        self.units, self.Ctot = units, ioff
        self.h_last, self.c_last = h, model.channels[2]
        lay = {t.name: t for t in model.layout()}
        self.lin_w, self.lin_b = lay["linear.weight"].offset, lay["linear.bias"].offset
        # per image: the largest activation (C·H·W) and patch matrix (C·k·k·Ho·Wo)
        self.act = max(u.c_out * u.h_out ** 2 for u in units)
        self.act = max(self.act, model.in_channels * size ** 2)
        self.cols = max(u.c_in * u.k ** 2 * u.h_out ** 2 for u in units)


class _Workspace:
    """Device buffers of one (models, batch) shape: per unit its x̂ and output, per block its
    output, and the scratch of the passes."""

    def __init__(self, plan: _Plan, dt, M: int, B: int, Mx: int):
        def arr(n, d=dt):
            return cuda.device_array(max(int(n), 1), dtype=d)
        self.M, self.B = M, B
        self.xhat = {id(u): arr(M * u.c_out * B * u.h_out ** 2) for u in plan.units}
        # (a block's second unit writes the block's output, its BN fused with the shortcut)
        second = {id(b[2]) for b in plan.blocks}
        self.y = {id(u): arr(M * u.c_out * B * u.h_out ** 2) for u in plan.units
                  if id(u) not in second}
        self.out = {i: arr(M * b[2].c_out * B * b[2].h_out ** 2) for i, b in enumerate(plan.blocks)}
        big = M * B * plan.act
        self.conv = arr(big)
        self.cols = arr(M * B * plan.cols)
        self.dcols = arr(M * B * plan.cols)
        self.ga, self.gx, self.gb, self.gc = arr(big), arr(big), arr(big), arr(big)
        self.inv = arr(M * plan.Ctot)
        C3, K = plan.c_last, plan.model.n_classes
        self.f, self.df = arr(M * B * C3), arr(M * B * C3)
        self.z, self.dz = arr(M * B * K), arr(M * B * K)
        self.losses = arr(M * B, np.float64)
        self.correct = arr(M * B, np.float64)
        m = plan.model
        self.x0 = arr(Mx * m.in_channels * B * m.image_size ** 2)
        self.y0 = arr(Mx * B, np.int64)


class ConvTrainer(conv_reference.ConvTrainer):
    """numba.cuda backend for :class:`~sdeverify.train.convnet.ResNet` (module docstring):
    the contract, state, augmentation and SVAG rules of the reference
    :class:`~sdeverify.train.conv_reference.ConvTrainer`, on the GPU.  ``dtype``: float32
    (default, the GPU's fast path) or float64."""

    def __init__(self, model: ResNet, X: np.ndarray, y: np.ndarray, n_opt: int, n_rep: int,
                 dtype: str = "float32"):
        if str(np.dtype(dtype)) not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if not getattr(model, "norm", True):
            raise ValueError("model: the cuda backend trains ResNets with BatchNorm only; use "
                             "backend='cpu' or 'numpy' for norm=False")
        _cuda()
        super().__init__(model, X, y, n_opt, n_rep, dtype)
        self.M = self.J * self.R
        if self.M > 65535:   # models index a grid dimension, limited to 65535 blocks
            raise ValueError(f"n_opt * n_rep must be <= 65535 on the GPU, got {self.M}")
        self.plan = _Plan(model)
        self.P, self.NB = model.n_params, model.n_buffers
        self.sim = sim = bool(numba.config.ENABLE_CUDASIM)
        self.tiles = CONV_SIM_TILES if sim else CONV_GPU_TILES
        self.big_min = SIM_BIG_MIN if sim else GPU_BIG_MIN
        self.n_sm = 1 if sim else cuda.get_current_device().MULTIPROCESSOR_COUNT
        self.max_blocks = SIM_MAX_BLOCKS if sim else GPU_MAX_BLOCKS
        self.limits = cuda_arch.current_limits()
        #: BatchNorm over several blocks per (channel, model) (:data:`BN_WAVES`); off by default
        self.bn_split = False
        self._configured: dict = {}
        #: kernel launches so far (each launch of :meth:`_launch`; see :func:`launches_per_step`)
        self.launches = 0
        self.tpb = SIM_TPB if sim else GPU_TPB
        self.tpb_bn, self.bn_regs = (SIM_TPB, None) if sim else (GPU_BN_TPB, GPU_BN_MAX_REGISTERS)
        self.split_sms = SIM_SPLIT_SMS if sim else self.n_sm
        key = (self.dtype.str, self.tpb, self.tpb_bn, self.bn_regs)
        self.k = _cached(("conv",) + key, lambda: make_conv_kernels(self.dtype, *key[1:]))
        _, self._loss, self._reduce, _ = _cached(
            ("pointwise", self.dtype.str, LOSSES["cross_entropy"], self.tpb),
            lambda: make_pointwise(self.dtype, LOSSES["cross_entropy"], self.tpb))
        self.X_dev = cuda.to_device(self.X.ravel())
        self.y_dev = cuda.to_device(self.y)
        self.decay_dev = cuda.to_device(self.decay)
        self._ws: dict = {}
        self._eval_cache: dict = {}
        self._G = None
        self._scratches: dict = {}
        self.W_dev = self.Mom_dev = self.buf_dev = None

    # ---- state ------------------------------------------------------------------------------
    def set_state(self, W, Mom, buffers=None) -> None:
        """Parameters, momentum and BN running statistics (default: 0 means, 1 variances),
        uploaded to the device."""
        super().set_state(W, Mom, buffers)
        for name, v, n in (("W", self.W, self.P), ("Mom", self.Mom, self.P),
                           ("buffers", self.buffers, self.NB)):
            if v.shape != (self.M, n):
                raise ValueError(f"{name} must have shape (models={self.M}, {n}), got {v.shape}")
        self.W_dev = cuda.to_device(self.W.ravel())
        self.Mom_dev = cuda.to_device(self.Mom.ravel())
        self.buf_dev = cuda.to_device(self.buffers.ravel())

    def get_state(self):
        """``(W, Mom, buffers)`` copied from the device."""
        if self.W_dev is None:
            raise RuntimeError("call set_state(W, Mom) first")
        return (self.W_dev.copy_to_host().reshape(self.M, self.P),
                self.Mom_dev.copy_to_host().reshape(self.M, self.P),
                self.buf_dev.copy_to_host().reshape(self.M, self.NB))

    # ---- launches ---------------------------------------------------------------------------
    def _launch(self, kernel, grid, threads: int, shared: int = 0, registers: int | None = None):
        """``kernel[grid, threads, 0, shared]``, configured once per (kernel, shape) after
        :func:`sdeverify.cuda_arch.check_launch` against this GPU's limits (a clear ValueError
        instead of a launch failure), and counted in :attr:`launches`.  (The simulator's
        ``kernel[...]`` reconfigures the kernel object itself: there it is redone each time.)"""
        grid = grid if isinstance(grid, tuple) else (grid,)
        key = (id(kernel), grid, threads, shared)
        cfg = self._configured.get(key)
        if cfg is None:
            cuda_arch.check_launch(self.limits, threads, shared, registers, grid)
            cfg = kernel[grid, threads, 0, shared]
            if not self.sim:
                self._configured[key] = cfg
        self.launches += 1
        return cfg

    def _flat(self, name: str, n: int):
        """An element-wise kernel launched over ``n`` items (grid-stride)."""
        blocks = max(1, min(-(-int(n) // self.tpb), self.max_blocks))
        return self._launch(self.k[name], blocks, self.tpb)

    def _grid3(self, name: str, n: int, ny: int, nz: int):
        """A kernel grid-striding over ``n`` items in x, ``ny`` in y and ``nz`` in z (at most
        2 blocks in y and z under the simulator, whose blocks are Python threads: the
        grid-stride loops still take more than one step); at most about ``max_blocks``
        blocks in all (threads loop over the rest)."""
        cap = 2 if self.sim else cuda_arch.MAX_GRID[1]
        gy, gz = min(ny, cap), min(nz, cap)
        blocks = max(1, min(-(-int(n) // self.tpb), self.max_blocks // (gy * gz)))
        return self._launch(self.k[name], (blocks, gy, gz), self.tpb)

    def _per_channel(self, name: str, C: int, M: int):
        """A BatchNorm kernel: one block per (channel, model) on a GPU (grid-stride)."""
        blocks = max(1, min(C * M, self.max_blocks))
        return self._launch(self.k[name], blocks, self.tpb_bn, self.tpb_bn * self.dtype.itemsize,
                            self.bn_regs)

    def _gemm(self, ta: bool, tb: bool, epi: int, nm: int, nn: int, models: int, a, offa, saz,
              zmoda, lda, b, offb, sbz, ldb, c, offc, scz, ldc, e=None, offe=0, sez=0, nk=1,
              ones_row=-1, split=None):
        """One batched GEMM launch (:func:`sdeverify.train.cuda.make_gemm`, the tile of
        :func:`conv_gemm_config`); ``split = (zs, ska, skb)``: the split-K variant, grid z =
        ``models · zs``."""
        size, tile, grid = conv_gemm_config(nm, nn, models, self.tiles, self.big_min, self.n_sm)
        regs = GPU_MAX_REGISTERS.get(size) if self.dtype == np.float32 else None
        sk = split is not None
        k = _cached(("gemm", self.dtype.str, tile, ta, tb, epi, IDENTITY, regs, sk),
                    lambda: make_gemm(self.dtype, tile, ta, tb, epi, IDENTITY, regs, split_k=sk))
        args = (a, offa, saz, zmoda, lda, b, offb, sbz, ldb, c, offc, scz, ldc,
                c if e is None else e, offe, sez, nm, nn, nk, ones_row, 0)
        if sk:
            grid = grid[:2] + (models * split[0],)
            args += tuple(split)
        self._launch(k, grid, k.threads, k.shared_bytes, regs)(*args)

    def _splits(self, O: int, K: int, M: int, B: int) -> int:
        """Image groups S of the weight-gradient GEMM (:func:`weight_grad_splits` for this
        device; the simulator pretends to have :data:`SIM_SPLIT_SMS` multiprocessors)."""
        return weight_grad_splits(O, K, M, B, self.tiles, self.big_min, self.split_sms)

    def _scratch(self, n: int, use: str = "split-K"):
        """A device buffer of at least ``n`` elements for ``use`` (kept, grown when needed)."""
        buf = self._scratches.get(use)
        if buf is None or buf.size < n:
            buf = self._scratches[use] = cuda.device_array(n, dtype=self.dtype)
        return buf

    def _bn_chunks(self, C: int, M: int, N: int) -> int:
        """Chunks per (channel, model) of a BatchNorm pass (1 unless :attr:`bn_split`)."""
        if not self.bn_split:
            return 1
        return bn_chunks(C, M, N, self.split_sms, self.tpb_bn)

    def _per_chunk(self, name: str, n: int):
        """A chunked BatchNorm kernel over ``n`` (channel, model, chunk) blocks."""
        blocks = max(1, min(n, self.max_blocks))
        return self._launch(self.k[name], blocks, self.tpb_bn, self.tpb_bn * self.dtype.itemsize,
                            self.bn_regs)

    def _workspace(self, M: int, B: int, Mx: int) -> _Workspace:
        key = (M, B, Mx)
        if key not in self._ws:
            if len(self._ws) >= 3:
                self._ws.pop(next(iter(self._ws)))
            self._ws[key] = _Workspace(self.plan, self.dtype, M, B, Mx)
        return self._ws[key]

    # ---- layers -----------------------------------------------------------------------------
    def _conv(self, u: _Unit, ws: _Workspace, W, x, xmod: int) -> None:
        """``ws.conv (M, O, B·Ho·Wo) = W_u · im2col(x)``."""
        M, B = ws.M, ws.B
        K, No = u.c_in * u.k * u.k, B * u.h_out ** 2
        self._grid3("im2col", No, K, M)(x, xmod, u.c_in, B, u.h_in, u.h_in, u.k, u.stride,
                                        u.pad, u.h_out, u.h_out, M, ws.cols)
        self._gemm(False, False, EPI_NONE, u.c_out, No, M, W, u.w, self.P, M, K,
                   ws.cols, 0, K * No, No, ws.conv, 0, u.c_out * No, No, nk=K)

    def _conv_bn(self, u: _Unit, ws: _Workspace, W, x, xmod: int, train: bool, update: bool,
                 relu: bool, out=None, sc=None, smode: int = 0, Cx: int = 0, Hx: int = 0):
        """Conv, then BatchNorm (then the shortcut ``sc`` added, ``smode`` of the
        ``bn_forward`` kernel, then ReLU when ``relu``) into ``out`` (default: the unit's
        ``ws.y``)."""
        self._conv(u, ws, W, x, xmod)
        N = ws.B * u.h_out ** 2
        y = ws.y[id(u)] if out is None else out
        buf = self.buf_dev if self.buf_dev is not None else ws.inv
        rest = (W, u.og, u.ob, self.P, int(train), buf, u.orm, u.orv, self.NB, int(update),
                ws.inv, u.ioff, self.plan.Ctot, ws.xhat[id(u)], y, int(relu),
                y if sc is None else sc, smode, Cx or u.c_out, u.h_out, Hx or u.h_out)
        Q = self._bn_chunks(u.c_out, ws.M, N)
        if Q == 1:
            self._per_channel("bn_forward", u.c_out, ws.M)(ws.conv, u.c_out, N, ws.M, *rest)
            return y
        n = u.c_out * ws.M * Q
        part = self._scratch(2 * n, "BatchNorm")
        if train:
            self._per_chunk("bn_stats", n)(ws.conv, u.c_out, N, ws.M, Q, part)
        self._per_chunk("bn_apply", n)(ws.conv, u.c_out, N, ws.M, Q, part, *rest)
        return y

    def _conv_bn_backward(self, u: _Unit, ws: _Workspace, W, x, xmod: int, dy, act, G,
                          goff: int, dx=None, accumulate: bool = False, sd=None,
                          smode: int = 0, Cd: int = 0) -> None:
        """ReLU's adjoint at its output ``act`` (masking ``dy`` in place; None: no ReLU) and
        BN backward of ``dy`` (γ, β gradients into ``G``), the conv weight gradient into
        ``G`` and, when ``dx`` is given, the input gradient into (or added to) ``dx``, plus
        the shortcut's adjoint of ``sd`` (``smode`` of the ``col2im`` kernel)."""
        M, B = ws.M, ws.B
        N = B * u.h_out ** 2
        K = u.c_in * u.k * u.k
        Q = self._bn_chunks(u.c_out, M, N)
        if Q == 1:
            self._per_channel("bn_backward", u.c_out, M)(
                dy, ws.xhat[id(u)], u.c_out, N, M, W, u.og, u.ob, self.P, ws.inv, u.ioff,
                self.plan.Ctot, G, goff, ws.gc, dy if act is None else act,
                int(act is not None))
        else:
            n = u.c_out * M * Q
            part = self._scratch(2 * n, "BatchNorm")
            self._per_chunk("bn_grad_stats", n)(dy, ws.xhat[id(u)], u.c_out, N, M, Q,
                                                dy if act is None else act,
                                                int(act is not None), part)
            self._per_chunk("bn_grad_apply", n)(dy, ws.xhat[id(u)], u.c_out, N, M, Q, part, W,
                                                u.og, u.ob, self.P, ws.inv, u.ioff,
                                                self.plan.Ctot, G, goff, ws.gc)
        self._grid3("im2col", N, K, M)(x, xmod, u.c_in, B, u.h_in, u.h_in, u.k, u.stride,
                                       u.pad, u.h_out, u.h_out, M, ws.cols)
        # dW (O × K) = dc (O × N) · colsᵀ
        O, S = u.c_out, self._splits(u.c_out, K, M, B)
        if S == 1:
            self._gemm(False, True, EPI_NONE, O, K, M, ws.gc, 0, O * N, M, N,
                       ws.cols, 0, K * N, N, G, goff + u.w, self.P, K, nk=N)
        else:       # split-K: S image groups of Ns pixels, partial products summed in order
            Ns = N // S
            part = self._scratch(M * S * O * K)
            self._gemm(False, True, EPI_NONE, O, K, M, ws.gc, 0, O * N, M, N,
                       ws.cols, 0, K * N, N, part, 0, O * K, K, nk=Ns, split=(S, Ns, Ns))
            self._flat("sum_splits", M * O * K)(part, S, O * K, M, G, goff + u.w, self.P)
        if dx is None:
            return
        # dcols (K × N) = Wᵀ (K × O) · dc (O × N)
        self._gemm(True, False, EPI_NONE, K, N, M, W, u.w, self.P, M, K,
                   ws.gc, 0, u.c_out * N, N, ws.dcols, 0, K * N, N, nk=u.c_out)
        self._grid3("col2im", B * u.h_in ** 2, u.c_in, M)(
            ws.dcols, u.c_in, B, u.h_in, u.h_in, u.k, u.stride, u.pad, u.h_out, u.h_out, M, dx,
            int(accumulate), dx if sd is None else sd, smode, Cd or u.c_in)

    def _forward(self, ws: _Workspace, W, x0, xmod: int, train: bool, update: bool) -> None:
        """Logits ``ws.z (M, B, classes)`` of the layer-0 input ``x0`` (model m reads
        ``x0[m % xmod]``)."""
        M, B, plan = ws.M, ws.B, self.plan
        h = self._conv_bn(plan.stem, ws, W, x0, xmod, train, update, True)
        for i, (blk, u1, u2, us) in enumerate(plan.blocks):
            h1 = self._conv_bn(u1, ws, W, h, M, train, update, True)
            mode, s = 1, h
            if us is not None:
                s = self._conv_bn(us, ws, W, h, M, train, update, False)
            elif blk.shortcut == "A":
                mode = 2
            # relu(BN(conv(h1)) + shortcut(h)), one kernel after the conv
            h = self._conv_bn(u2, ws, W, h1, M, train, update, True, ws.out[i], s, mode,
                              u1.c_in, u1.h_in)
        C3, HW, K = plan.c_last, plan.h_last ** 2, self.model.n_classes
        self._flat("pool", M * B * C3)(h, C3, B, HW, M, ws.f)
        # Z (B × K) = f (B × C3) · W_linᵀ + b
        self._gemm(False, True, EPI_BIAS_ACT, B, K, M, ws.f, 0, B * C3, M, C3,
                   W, plan.lin_w, self.P, C3, ws.z, 0, B * K, K, W, plan.lin_b, self.P, nk=C3)

    def _backward(self, ws: _Workspace, W, x0, xmod: int, G, goff: int) -> None:
        """The data-loss gradient from ``ws.dz`` into ``G[goff + m·P:]`` (no weight decay)."""
        M, B, plan = ws.M, ws.B, self.plan
        C3, HW, K = plan.c_last, plan.h_last ** 2, self.model.n_classes
        # head: dW_lin (K × C3) = dZᵀ f, db (1 × K) = 1ᵀ dZ, df (B × C3) = dZ W_lin
        self._gemm(True, False, EPI_NONE, K, C3, M, ws.dz, 0, B * K, M, K,
                   ws.f, 0, B * C3, C3, G, goff + plan.lin_w, self.P, C3, nk=B)
        self._gemm(False, False, EPI_NONE, 1, K, M, ws.dz, 0, B * K, M, K,
                   ws.dz, 0, B * K, K, G, goff + plan.lin_b, self.P, K, nk=B, ones_row=0)
        self._gemm(False, False, EPI_NONE, B, C3, M, ws.dz, 0, B * K, M, K,
                   W, plan.lin_w, self.P, C3, ws.df, 0, B * C3, C3, nk=K)
        ga, gx = ws.ga, ws.gx
        self._flat("pool_back", M * C3 * B * HW)(ws.df, C3, B, HW, M, ga)
        for i in range(len(plan.blocks) - 1, -1, -1):
            blk, u1, u2, us = plan.blocks[i]
            x = ws.y[id(plan.stem)] if i == 0 else ws.out[i - 1]
            # ga: the gradient at the block's output, masked by its ReLU in u2's BN backward
            self._conv_bn_backward(u2, ws, W, ws.y[id(u1)], M, ga, ws.out[i], G, goff, ws.gb)
            if us is not None:
                self._conv_bn_backward(u1, ws, W, x, M, ws.gb, ws.y[id(u1)], G, goff, gx)
                self._conv_bn_backward(us, ws, W, x, M, ga, None, G, goff, gx, accumulate=True)
            else:       # the shortcut's adjoint of ga added in u1's col2im
                self._conv_bn_backward(u1, ws, W, x, M, ws.gb, ws.y[id(u1)], G, goff, gx,
                                       sd=ga, smode=2 if blk.shortcut == "A" else 1,
                                       Cd=u2.c_out)
            ga, gx = gx, ga
        stem = plan.stem
        self._conv_bn_backward(stem, ws, W, x0, xmod, ga, ws.y[id(stem)], G, goff)

    def _gather(self, ws: _Workspace, X, y, idx, ioff: int, aug, aoff: int, R: int) -> None:
        m = self.model
        C, H = m.in_channels, m.image_size
        dyv, dxv, flip = aug if aug is not None else (idx, idx, idx)
        self._flat("gather", R * C * ws.B * H * H)(
            X, y, idx, ioff, dyv, dxv, flip, aoff, int(aug is not None), R, C, ws.B, H, H,
            ws.x0, ws.y0)

    def _loss_grad(self, ws: _Workspace, ymod: int, sy: int, denom: float) -> None:
        grid = (-(-ws.B // self.tpb), ws.M)
        self._launch(self._loss, grid, self.tpb)(
            ws.z, 0, ws.y0, ymod, sy, ws.B, self.model.n_classes, self.dtype.type(denom),
            ws.dz, 0, ws.losses, ws.correct)

    # ---- contract ---------------------------------------------------------------------------
    def train(self, idx, a, b, gamma, r, aug=None) -> np.ndarray:
        """S steps (the reference's contract); returns slot 0's mean batch loss before each
        step, ``(S, M)``."""
        if self.W_dev is None:
            raise RuntimeError("call set_state(W, Mom) before train()")
        n_slots = len(idx)
        if n_slots not in (1, 2):
            raise ValueError(f"idx must hold 1 or 2 minibatch slots, got {n_slots}")
        idx = np.stack([np.asarray(i) for i in idx])
        if idx.ndim != 4 or idx.shape[2] != self.R or idx.shape[1] < 1 or not np.issubdtype(
                idx.dtype, np.integer):
            raise ValueError(f"each idx slot must be integer rows of shape (steps, "
                             f"replicas={self.R}, batch), got {idx.shape[1:]}")
        _, S, R, B = idx.shape
        if B < 2:
            raise ValueError(f"batch: BatchNorm in training mode needs a batch of at least 2 "
                             f"images, got {B}")
        if idx.min() < 0 or idx.max() >= self.X.shape[0]:
            raise ValueError(f"idx must hold row indices in [0, {self.X.shape[0] - 1}], "
                             f"got values in [{idx.min()}, {idx.max()}]")
        coef = []
        for name, v in (("a", a), ("b", b), ("gamma", gamma)):
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (self.J, S):
                raise ValueError(f"{name} must have shape (optimizers={self.J}, steps={S}), "
                                 f"got {v.shape}")
            coef.append(cuda.to_device(np.ascontiguousarray(v.astype(self.dtype).ravel())))
        r = np.asarray(r, dtype=np.float64).ravel()
        if r.shape != (n_slots,) or not np.all(np.isfinite(r)):
            raise ValueError(f"r must hold {n_slots} finite slot weights, got {r!r}")
        aug_dev = None
        if aug is not None:
            if len(aug) != n_slots:
                raise ValueError(f"aug must hold one (dy, dx, flip) per minibatch slot "
                                 f"({n_slots}), got {len(aug)}")
            parts = []
            for slot_aug in aug:
                if len(slot_aug) != 3:
                    raise ValueError("aug: each slot must be a (dy, dx, flip) triple")
                for name, v in zip(("dy", "dx", "flip"), slot_aug):
                    v = np.asarray(v)
                    if v.shape != (S, R, B):
                        raise ValueError(f"aug {name} must have shape (steps={S}, replicas={R}, "
                                         f"batch={B}), got {v.shape}")
                    parts.append(v.astype(np.int64))
            aug_dev = [cuda.to_device(np.ascontiguousarray(np.stack(parts[i::3]).ravel()))
                       for i in range(3)]
        dt = self.dtype.type
        r0, r1 = dt(r[0]), dt(r[1] if n_slots > 1 else 0.0)
        M, P = self.M, self.P
        ws = self._workspace(M, B, R)
        if self._G is None or self._G.size != n_slots * M * P:
            self._G = cuda.device_array(n_slots * M * P, dtype=self.dtype)
        G = self._G
        scratch = cuda.device_array(M, dtype=np.float64)
        idx_dev = cuda.to_device(np.ascontiguousarray(idx.astype(np.int64).ravel()))
        out = cuda.device_array(S * M, dtype=np.float64)
        for s in range(S):
            for slot in range(n_slots):
                if slot > 0 and r[slot] == 0.0:
                    continue
                off = (slot * S + s) * R * B
                self._gather(ws, self.X_dev, self.y_dev, idx_dev, off, aug_dev, off, R)
                self._forward(ws, self.W_dev, ws.x0, R, True, slot == 0)
                self._loss_grad(ws, R, B, float(B))
                if slot == 0:
                    self._launch(self._reduce, (M,), self.tpb, 16 * self.tpb)(
                        ws.losses, ws.correct, B, 1.0 / B, out, s * M, scratch, 0, 0)
                if r[slot] != 0.0:
                    self._backward(ws, self.W_dev, ws.x0, R, G, slot * M * P)
            self._flat("update", M * P)(self.W_dev, self.Mom_dev, G, n_slots, r0, r1,
                                        self.decay_dev, coef[0], coef[1], coef[2], s, S,
                                        self.R, P, M)
        return out.copy_to_host().reshape(S, M)

    def _device_data(self, X, y):
        """Device copies of an evaluation set (kept by the identity of ``X`` and ``y``: a run
        evaluates the same arrays again and again; they must not change in place)."""
        key = (id(X), id(y))
        if key not in self._eval_cache:
            Xc = np.ascontiguousarray(X, dtype=self.dtype)
            conv_reference.check_images(self.model, Xc)
            yc = np.ascontiguousarray(y, dtype=np.int64)
            if yc.shape != (Xc.shape[0],):
                raise ValueError(f"y must have shape ({Xc.shape[0]},), got {yc.shape}")
            if yc.size and (yc.min() < 0 or yc.max() >= self.model.n_classes):
                raise ValueError(f"y must be in [0, {self.model.n_classes - 1}], got values in "
                                 f"[{yc.min()}, {yc.max()}]")
            if len(self._eval_cache) >= 4:
                self._eval_cache.pop(next(iter(self._eval_cache)))
            self._eval_cache[key] = (X, y, cuda.to_device(Xc.ravel()), cuda.to_device(yc),
                                     Xc.shape[0])
        return self._eval_cache[key][2:]

    def evaluate(self, X, y, chunk: int = 256):
        """Summed loss and correct predictions ``(M,)`` on ``(X, y)`` in evaluation mode (BN
        running statistics), ``chunk`` images at a time."""
        if self.W_dev is None:
            raise RuntimeError("call set_state(W, Mom) before evaluate()")
        Xd, yd, n = self._device_data(X, y)
        M = self.M
        loss_sum = cuda.to_device(np.zeros(M))
        correct = cuda.to_device(np.zeros(M))
        for i in range(0, n, chunk):
            nb = min(chunk, n - i)
            ws = self._workspace(M, nb, 1)
            rows = cuda.to_device(np.arange(i, i + nb, dtype=np.int64))
            self._gather(ws, Xd, yd, rows, 0, None, 0, 1)
            self._forward(ws, self.W_dev, ws.x0, 1, False, False)
            self._loss_grad(ws, 1, 0, 1.0)
            self._launch(self._reduce, (M,), self.tpb, 16 * self.tpb)(
                ws.losses, ws.correct, nb, 1.0, loss_sum, 0, correct, 0, 1)
        return loss_sum.copy_to_host(), correct.copy_to_host()

    def gradients(self, W, X, y):
        """Gradient (λ·mask·w included) of the mean loss over ``(X, y)`` at ``W (M', P)``, BN
        in training mode with the statistics of the whole ``X`` (one pass: the statistics
        couple the batch); the running statistics are not touched."""
        W = np.ascontiguousarray(W, dtype=self.dtype)
        if W.ndim != 2 or W.shape[1] != self.P:
            raise ValueError(f"W must have shape (models, params={self.P}), got {W.shape}")
        Xc = np.ascontiguousarray(X, dtype=self.dtype)
        conv_reference.check_images(self.model, Xc)
        yc = np.ascontiguousarray(y, dtype=np.int64)
        if yc.shape != (Xc.shape[0],):
            raise ValueError(f"y must have shape ({Xc.shape[0]},), got {yc.shape}")
        M, n = W.shape[0], Xc.shape[0]
        Wd = cuda.to_device(W.ravel())
        ws = self._workspace(M, n, 1)
        rows = cuda.to_device(np.arange(n, dtype=np.int64))
        self._gather(ws, cuda.to_device(Xc.ravel()), cuda.to_device(yc), rows, 0, None, 0, 1)
        self._forward(ws, Wd, ws.x0, 1, True, False)
        self._loss_grad(ws, 1, 0, float(n))
        G = cuda.device_array(M * self.P, dtype=self.dtype)
        self._backward(ws, Wd, ws.x0, 1, G, 0)
        G = G.copy_to_host().reshape(M, self.P)
        G += self.decay * W
        return G
