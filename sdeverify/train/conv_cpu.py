"""The Numba CPU backend of the CIFAR ResNet: :class:`ConvTrainer`, the contract of
:class:`sdeverify.train.conv_reference.ConvTrainer` on compiled layer kernels.

The network's wiring (blocks, shortcuts, head, loss, the training loop, the SVAG and
running-statistics rules) is the reference's own (:class:`conv_reference.Ops`); this module
supplies the layer functions on a **channels-last** layout, activations ``(M, B, H, W, C)``:

* conv, by chunks of a model's images (items (model, chunk) on the threads; a chunk holds
  ``max(1, ROWS // (Ho·Wo))`` images, so a 32×32 image is a chunk of its own and 2×2 images
  go 256 to a product): an im2col kernel copies each image into a zero-bordered buffer and
  writes each output pixel's patch as one row of a ``(chunk·Ho·Wo, k·k·C)`` buffer (order
  ``(i, j, c)``, the weights permuted to match; each kernel row's ``k·C`` entries are one
  contiguous run of the bordered row, copied by an inline loop with unsigned indices) and
  one single-threaded product with the ``(O, k·k·C)`` weight rows gives the chunk's
  output rows — which *are* its channels-last output, no transpose; the patches stay in
  cache between the two.  The products run in :mod:`conv_gemm`'s register-blocked AVX-512
  kernel where the output and the reduction are at least one vector (16 float32 / 8
  float64 entries; :func:`conv_gemm.used`), else in BLAS.  A stride-1 conv with outputs at
  least ``IMPLICIT_WIDTH`` wide skips im2col: one product per kernel row straight on the
  bordered image (:func:`_implicit_image`), forward and backward.  Backward: the weight gradient per (model, group of images; the
  number of groups a shape rule, :func:`_groups`) — the patches recomputed chunk by chunk,
  ``patchesᵀ·dy`` accumulated into the group's partial sum (the groups' sums added in group
  order); the input gradient of a stride-1 conv is the forward kernel again, on ``dy`` with
  the flipped, transposed kernel at pad ``k − 1 − pad`` (a product with a ``k·k·O``-long
  reduction, no col2im); a strided conv's patch gradients ``dy·weights`` are summed back
  onto the image (col2im; one thread per group, so no two threads write the same pixel);
* BatchNorm: per-(model, channel) sums over fixed row chunks (Σx, Σ(x − μ)², and Σdy with
  Σdy·x̂ in one pass; accumulated in float64, the chunks summed in a fixed order; fewer than
  ``SMALL_C`` channels one channel at a time in four interleaved partial sums), then
  element-wise kernels for γx̂ + β and for the training-mode input gradient, in the
  reference's arithmetic order; x̂ is recomputed from the cached input, not stored;
* ReLU, a block's ``max(u + s, 0)`` and the ReLU gradient: element-wise kernels.

The output arrays of a training step come from the trainer's :class:`Workspace` and are
reused by the next step (fresh large arrays cost page faults at every step).

Kernels are ``nogil`` and take a range ``lo, hi`` of independent items ((model, chunk),
(model, image group) or (model, row chunk)); :func:`_run` hands the ranges to
:func:`sdeverify.threads.run_ranges` on as many threads as the call's estimated work keeps
busy (``PARALLEL_WORK``).  A small network (a pass under ``SPLIT_WORK`` FLOPs) instead runs
whole training steps, evaluations and gradients of groups of models (replicas) on the threads,
each kernel call on its own thread (:meth:`ConvTrainer._parts`): its hundreds of kernel
calls per step are too small to split.  Every chunk, group and summation order is a function
of the shapes only, and each model's arithmetic is the same in any group, so results are
bitwise the same for any thread count and any number of models per launch.  One compiled
kernel per dtype (float32, float64), cached on disk.
"""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

import numba
import numpy as np

from ..compile_lock import compile_once
from ..threads import limited, n_threads, run_ranges
from .conv_gemm import gemm, gemm_packed, pack, packed_size, product, used
from .blas_threads import single_threaded
from .conv_reference import ConvTrainer as _ReferenceTrainer
from .conv_reference import Ops, _out_size
from .convnet import BN_EPS

__all__ = ["ConvTrainer", "NHWC"]

_JIT = dict(cache=True, error_model="numpy", nogil=True)
_U = numba.uint64
#: 0 and 1 as int64 values, not literals, in calls of conv_gemm (a literal argument would
#: compile a variant of its own: compile time)
_ZERO, _ONE = np.int64(0), np.int64(1)
#: Row chunks per model of the BatchNorm reductions (fixed: results do not depend on threads).
CHUNKS = 8
#: At most this many groups of a model's images whose weight-gradient partial sums are added
#: (how many depends on the layer's shape only, :func:`_groups`: never on threads or models).
GROUPS = 8
#: Output pixels (im2col rows) per GEMM: a convolution takes its images in chunks of
#: ``max(1, ROWS // (Ho·Wo))`` (:func:`_chunk`), so a small image's product is not a BLAS call
#: per image (1.5-3.5x faster on 4x4 and 2x2 images, measured; a 32x32 image stays one
#: chunk, as before).
ROWS = 1024
#: Estimated work (multiply-adds; an element of an element-wise kernel counts
#: ``ELEMENT_WORK``) below which a kernel call runs on the calling thread, and the least work
#: per range when it is split (:func:`_run`): handing ranges to the pool costs tens of
#: microseconds idle, milliseconds on a loaded machine.
PARALLEL_WORK = 1 << 22
ELEMENT_WORK = 8
#: Channels from which the BatchNorm sums run a row at a time (vectorised over channels);
#: fewer: one channel at a time (:func:`_sums_by_channel`; 2-3× faster for 4 channels, 3×
#: slower for 16-64, measured).  A shape rule: the order of summation never depends on threads.
SMALL_C = 16
#: Training FLOPs of one pass (all models; ``ResNet.flops_per_sample()`` per image) below
#: which the trainer runs whole passes of groups of models on the threads instead of splitting
#: each kernel call (:meth:`ConvTrainer._parts`): a small network's step is hundreds of calls
#: too small to split.  Large networks (ResNet-20 at batch 128: 30 GFLOP per model-step) keep
#: the kernel-level threads.
SPLIT_WORK = 1 << 33
#: Output width from which a stride-1 convolution (forward, and the input gradient by the
#: flipped kernel) runs without im2col (:func:`_implicit`): it then computes ``2·pad`` extra
#: output pixels a row (6% of a 32-wide row; 20% of an 8-wide one, more than im2col costs).
IMPLICIT_WIDTH = 32


# ---- kernels ---------------------------------------------------------------------------------
@numba.njit(**_JIT)
def _padded(x, m, b, pad, xp):
    """Image b of model m into ``xp (H + 2·pad, W + 2·pad, C)``: ``xp[r + pad, w + pad] =
    x[m, b, r, w]`` for every pixel that falls inside ``xp`` (a negative pad crops); the
    other pixels of ``xp`` (its zero border) are not touched."""
    H, W, C = x.shape[2], x.shape[3], x.shape[4]
    Wp = xp.shape[1]
    xf, pf = x[m, b].reshape(-1), xp.reshape(-1)
    c0, c1 = max(0, -pad), min(W, Wp - pad)
    n = _U((c1 - c0) * C)
    for r in range(max(0, -pad), min(H, xp.shape[0] - pad)):
        d, s = _U(((r + pad) * Wp + c0 + pad) * C), _U((r * W + c0) * C)
        for t in range(n):
            pf[d + t] = xf[s + t]


@numba.njit(**_JIT)
def _patches(x, m, b0, b1, k, stride, pad, Ho, Wo, xp, cols):
    """im2col of images ``b0 ≤ b < b1`` of model m: row ``(b − b0)·Ho·Wo + ho·Wo + wo`` of
    ``cols (·, k·k·C)`` is the zero-padded patch of output pixel (ho, wo) of image b, in
    (i, j, c) order.  The image is first copied into the zero-bordered ``xp``
    (:func:`_padded`); then each kernel row i of a patch is the contiguous run
    ``xp[ho·stride + i, wo·stride : wo·stride + k, :]``, copied by an inline loop with
    unsigned indices (2-3× faster than a clipped copy per run, measured)."""
    C = x.shape[4]
    Wp = xp.shape[1]
    pf, cf = xp.reshape(-1), cols.reshape(-1)
    kc, row, step = _U(k * C), _U(Wp * C), _U(stride * C)
    d = _U(0)
    for b in range(b0, b1):
        _padded(x, m, b, pad, xp)
        for ho in range(_U(Ho)):
            for wo in range(_U(Wo)):
                s = ho * _U(stride) * row + wo * step
                for i in range(_U(k)):
                    for t in range(kc):
                        cf[d + t] = pf[s + t]
                    d += kc
                    s += row


@numba.njit(**_JIT)
def _unpatch(dcols, m, b, k, stride, pad, Ho, Wo, dxp, dx):
    """col2im of image b of model m: the patch gradients ``dcols (Ho·Wo, k·k·C)`` summed back
    (in the order of :func:`_patches`' runs) onto the zero-bordered buffer ``dxp``, whose
    inside is then ``dx[m, b]`` (overwritten; the adjoint of :func:`_patches`)."""
    H, W, C = dx.shape[2], dx.shape[3], dx.shape[4]
    Wp = dxp.shape[1]
    pf, cf, df = dxp.reshape(-1), dcols.reshape(-1), dx[m, b].reshape(-1)
    kc, row, step = _U(k * C), _U(Wp * C), _U(stride * C)
    for t in range(dxp.size):
        pf[t] = 0.0
    d = _U(0)
    for ho in range(_U(Ho)):
        for wo in range(_U(Wo)):
            s = ho * _U(stride) * row + wo * step
            for i in range(_U(k)):
                for t in range(kc):
                    pf[s + t] += cf[d + t]
                d += kc
                s += row
    n = _U(W * C)
    for r in range(H):
        d, s = _U(r * W * C), _U(((r + pad) * Wp + pad) * C)
        for t in range(n):
            df[d + t] = pf[s + t]


@numba.njit(**_JIT)
def _pad_shape(x, pad):
    """The shape of the zero-bordered image buffer of :func:`_padded`."""
    return (x.shape[2] + 2 * pad, x.shape[3] + 2 * pad, x.shape[4])


@numba.njit(**_JIT)
def _conv_forward(x, wrows, k, stride, pad, g, implicit, out, lo, hi):
    """Items ``m·Q + q`` (Q = ⌈B/g⌉ chunks of ``g`` images): ``out[m, chunk]`` (rows
    ``b·Ho·Wo + ho·Wo + wo``, channels last) = the chunk's patches · ``wrows[m]ᵀ``, one GEMM
    per chunk; the patches stay in cache between im2col and the GEMM.  ``implicit``
    (stride 1, :func:`_implicit`): image by image without im2col, :func:`_forward_implicit`."""
    B = x.shape[1]
    Ho, Wo, O = out.shape[2], out.shape[3], out.shape[4]
    K = wrows.shape[2]
    Q = (B + g - 1) // g
    if implicit:
        _forward_implicit(x, wrows, k, pad, g, out, lo, hi)
        return
    cols = np.empty((g * Ho * Wo, K), dtype=x.dtype)
    flat = cols.reshape(-1)
    xp = np.zeros(_pad_shape(x, pad), dtype=x.dtype)
    for it in range(lo, hi):
        m = it // Q
        b0 = it % Q * g
        b1 = min(B, b0 + g)
        _patches(x, m, b0, b1, k, stride, pad, Ho, Wo, xp, cols)
        product(False, True, (b1 - b0) * Ho * Wo, O, K, flat, K, wrows[m].reshape(-1), K, 0.0,
                out[m, b0:b1].reshape(-1), O)


def _implicit(pad, W, Wo, n, kc, itemsize) -> bool:
    """Whether a stride-1 convolution of ``W``-wide images to ``Wo``-wide outputs with ``n``
    output channels and kernel rows of ``kc = k·C`` entries runs without im2col
    (:func:`_forward_implicit`): padding not negative, outputs at least ``IMPLICIT_WIDTH``
    wide, and the products in :mod:`conv_gemm`'s tiles.  A shape rule."""
    Wp = W + 2 * pad
    return bool(pad >= 0 and Wo >= IMPLICIT_WIDTH and used(Wo * Wp, n, kc, itemsize))


@numba.njit(**_JIT)
def _slack_buffer(x, pad, k):
    """A zeroed flat buffer for :func:`_padded`'s bordered image plus ``k`` pixels of slack
    (the last virtual pixels' patches of :func:`_forward_implicit` read past the border),
    and the bordered image as a view of its front."""
    Hp, Wp, C = _pad_shape(x, pad)
    flat = np.zeros((Hp * Wp + k) * C, dtype=x.dtype)
    return flat, flat[:Hp * Wp * C].reshape(Hp, Wp, C)


@numba.njit(**_JIT)
def _implicit_image(xpf, Wp, C, Ho, Wo, k, wp, outv, out_img):
    """One image's stride-1 convolution on its bordered copy ``xpf`` (``Wp`` pixels a row,
    ``C`` channels): every *virtual* output pixel ``q = ho·Wp + wo`` (``wo < Wp``) is
    ``Σ_i xpf[(q + i·Wp)·C : +k·C] · W_iᵀ`` — one GEMM per kernel row i straight on the
    image (its ``k·C`` entries are contiguous; A's rows are ``C`` apart), accumulated into
    ``outv (Ho·Wp, O)``; the pixels with ``wo < Wo`` are copied to ``out_img (Ho, Wo, O)``, the
    others (straddling a row end) dropped."""
    O = out_img.shape[2]
    seg = wp.size // k
    for i in range(k):
        gemm_packed(Ho * Wp, O, k * C, xpf, i * Wp * C, C, _ONE, wp, i * seg, 0.0 if i == 0 else 1.0,
                    outv, 0, O)
    of = out_img.reshape(-1)
    n = _U(Wo * O)
    for ho in range(Ho):
        s, d = _U(ho * Wp * O), _U(ho * Wo * O)
        for t in range(n):
            of[d + t] = outv[s + t]


@numba.njit(**_JIT)
def _pack_rows(wrows_m, k, kc, wp):
    """The weight rows ``(n, k·kc)`` of one model as ``k`` packed ``(kc × n)`` blocks (kernel
    row i's block at ``i·wp.size/k``), the B operands of :func:`_implicit_image`."""
    n = wrows_m.shape[0]
    K = wrows_m.shape[1]
    seg = wp.size // k
    wf = wrows_m.reshape(-1)
    for i in range(k):
        pack(n, kc, wf, i * kc, _ONE, K, wp, i * seg)


@numba.njit(**_JIT)
def _forward_implicit(x, wrows, k, pad, g, out, lo, hi):
    """The items of :func:`_conv_forward` (stride 1), image by image, by
    :func:`_implicit_image` (no im2col)."""
    B, C = x.shape[1], x.shape[4]
    Ho, Wo, O = out.shape[2], out.shape[3], out.shape[4]
    xpf, xp = _slack_buffer(x, pad, k)
    Wp = xp.shape[1]
    wp = np.empty(k * packed_size(O, k * C, x.itemsize), dtype=x.dtype)
    outv = np.empty(Ho * Wp * O, dtype=x.dtype)
    Q = (B + g - 1) // g
    last = -1
    for it in range(lo, hi):
        m = it // Q
        if m != last:
            _pack_rows(wrows[m], k, k * C, wp)
            last = m
        for b in range(it % Q * g, min(B, it % Q * g + g)):
            _padded(x, m, b, pad, xp)
            _implicit_image(xpf, Wp, C, Ho, Wo, k, wp, outv, out[m, b])


@numba.njit(**_JIT)
def _conv_backward(dy, x, wrows, k, stride, pad, need_dx, g, dw_part, dx, lo, hi):
    """Items ``m·G + q`` (G = ``dw_part.shape[1]`` fixed groups of a model's images, each
    taken in chunks of ``g`` images): for each chunk, its patches (recomputed),
    ``dw_part[m, q] += patchesᵀ · dy`` (the weight gradient transposed, ``(k·k·C, O)``: BLAS
    then runs the narrow O side as its row panel, 1.7× faster than ``dyᵀ · patches`` for
    O = 16, measured) and, when ``need_dx``, the patch gradients ``dy · wrows[m]`` summed back
    onto ``dx[m, b]`` image by image."""
    B = x.shape[1]
    Ho, Wo, O = dy.shape[2], dy.shape[3], dy.shape[4]
    P = Ho * Wo
    K = wrows.shape[2]
    G = dw_part.shape[1]
    cols = np.empty((g * P, K), dtype=x.dtype)
    dcols = np.empty((g * P, K), dtype=x.dtype)
    flat, dflat = cols.reshape(-1), dcols.reshape(-1)
    xp = np.zeros(_pad_shape(x, pad), dtype=x.dtype)
    dxp = np.empty_like(xp)
    for it in range(lo, hi):
        m = it // G
        q = it % G
        acc = dw_part[m, q].reshape(-1)
        acc[:] = 0.0
        for b0 in range(B * q // G, B * (q + 1) // G, g):
            b1 = min(B * (q + 1) // G, b0 + g)
            rows = (b1 - b0) * P
            _patches(x, m, b0, b1, k, stride, pad, Ho, Wo, xp, cols)
            d = dy[m, b0:b1].reshape(-1)
            product(True, False, K, O, rows, flat, K, d, O, 1.0, acc, O)
            if need_dx:
                product(False, False, rows, K, O, d, O, wrows[m].reshape(-1), K, 0.0, dflat, K)
                for b in range(b0, b1):
                    _unpatch(dcols[(b - b0) * P:(b - b0 + 1) * P], m, b, k, stride, pad, Ho, Wo,
                             dxp, dx)


@numba.njit(**_JIT)
def _conv_backward_flipped(dy, x, frows, k, pad, g, implicit, dw_part, dx, lo, hi):
    """Stride 1, items ``m·G + q`` as :func:`_conv_backward`: for each chunk of ``g`` images
    of group q, the patches of ``dy`` at the flipped pad ``pad`` (one im2col serves both
    products): ``dx[m, chunk] = patches · frows[m]ᵀ`` (the flipped kernel
    :func:`_flipped_rows`) and ``dw_part[m, q] += patchesᵀ · x[m, chunk]``, the gradient of
    the flipped kernel, ``(k·k·O, C)``.  ``implicit`` (:func:`_implicit`): image by image
    without im2col, :func:`_backward_implicit`."""
    if implicit:
        _backward_implicit(dy, x, frows, k, pad, dw_part, dx, lo, hi)
        return
    B, H, W, C = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    K = frows.shape[2]
    G = dw_part.shape[1]
    cols = np.empty((g * H * W, K), dtype=x.dtype)
    flat = cols.reshape(-1)
    dyp = np.zeros(_pad_shape(dy, pad), dtype=x.dtype)
    for it in range(lo, hi):
        m = it // G
        q = it % G
        acc = dw_part[m, q].reshape(-1)
        acc[:] = 0.0
        for b0 in range(B * q // G, B * (q + 1) // G, g):
            b1 = min(B * (q + 1) // G, b0 + g)
            rows = (b1 - b0) * H * W
            _patches(dy, m, b0, b1, k, 1, pad, H, W, dyp, cols)
            product(False, True, rows, C, K, flat, K, frows[m].reshape(-1), K, 0.0,
                    dx[m, b0:b1].reshape(-1), C)
            product(True, False, K, C, rows, flat, K, x[m, b0:b1].reshape(-1), C, 1.0, acc, C)


@numba.njit(**_JIT)
def _backward_implicit(dy, x, frows, k, pad, dw_part, dx, lo, hi):
    """The items of :func:`_conv_backward_flipped` image by image on ``dy``'s bordered copy,
    no im2col: ``dx[m, b]`` by :func:`_implicit_image` with the flipped kernel, and for each
    kernel row i the gradient rows ``(i, j, o)`` of the flipped kernel,
    ``dw_part[m, q][i·k·O:][:k·O] += Σ_q dyp[(q + i·Wp)·O + j·O + o] · xv[q]`` over the
    virtual pixels q (one GEMM, A read straight from the bordered ``dy``), where ``xv`` is
    ``x[m, b]`` on the virtual pixels, zero on those straddling a row end."""
    B, H, W, C = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    O = dy.shape[4]
    G = dw_part.shape[1]
    dypf, dyp = _slack_buffer(dy, pad, k)
    Wp = dyp.shape[1]
    Q = H * Wp
    fp = np.empty(k * packed_size(C, k * O, x.itemsize), dtype=x.dtype)
    outv = np.empty(Q * C, dtype=x.dtype)
    xv = np.zeros(Q * C, dtype=x.dtype)
    n = _U(W * C)
    last = -1
    for it in range(lo, hi):
        m = it // G
        q = it % G
        acc = dw_part[m, q].reshape(-1)
        acc[:] = 0.0
        if m != last:
            _pack_rows(frows[m], k, k * O, fp)
            last = m
        for b in range(B * q // G, B * (q + 1) // G):
            _padded(dy, m, b, pad, dyp)
            _implicit_image(dypf, Wp, O, H, W, k, fp, outv, dx[m, b])
            xf = x[m, b].reshape(-1)
            for r in range(H):
                s, d = _U(r * W * C), _U(r * Wp * C)
                for t in range(n):
                    xv[d + t] = xf[s + t]
            for i in range(k):
                gemm(k * O, C, Q, dypf, i * Wp * O, _ONE, O, xv, _ZERO, C, _ONE, 1.0, acc,
                     i * k * O * C, C)


@numba.njit(**_JIT)
def _chunk_rows(N, ch):
    return N * ch // CHUNKS, N * (ch + 1) // CHUNKS


@numba.njit(**_JIT)
def _sums(x, shift, inv, dy, mode, out, lo, hi):
    """Items ``m·CHUNKS + ch``: per channel, over the chunk's rows of ``x (M, N, C)``, into
    ``out[m, ·, ch]`` (float64): ``Σ x`` (mode 0), ``Σ (x − shift)²`` (mode 1), or ``Σ dy``
    and ``Σ dy·x̂`` with ``x̂ = (x − shift)·inv`` (mode 2: the backward pass's sums, x̂
    recomputed exactly as :func:`_normalise` computes it).  Fewer than ``SMALL_C``
    channels: :func:`_sums_by_channel`; else a row at a time, the channels side by side
    (vectorised)."""
    M, N, C = x.shape
    for it in range(lo, hi):
        m = it // CHUNKS
        ch = it % CHUNKS
        r0, r1 = _chunk_rows(N, ch)
        xf, gf, sh, iv = x[m].reshape(-1), dy[m].reshape(-1), shift[m], inv[m]
        s0, s1 = out[m, 0, ch], out[m, 1, ch]
        s0[:] = 0.0
        s1[:] = 0.0
        if C < SMALL_C:
            _sums_by_channel(xf, gf, sh, iv, mode, r0, r1, C, s0, s1)
            continue
        for r in range(r0, r1):
            base = _U(r * C)
            if mode == 0:
                for c in range(_U(C)):
                    s0[c] += xf[base + c]
            elif mode == 1:
                for c in range(_U(C)):
                    d = xf[base + c] - sh[c]
                    s0[c] += d * d
            else:
                for c in range(_U(C)):
                    g = gf[base + c]
                    s0[c] += g
                    s1[c] += g * ((xf[base + c] - sh[c]) * iv[c])


@numba.njit(**_JIT)
def _sums_by_channel(xf, gf, sh, iv, mode, r0, r1, C, s0, s1):
    """:func:`_sums` of rows ``r0 ≤ r < r1`` one channel at a time, in four interleaved
    partial sums (rows ``r ≡ 0, 1, 2, 3 mod 4`` from ``r0``, then ``(a0 + a1) + (a2 + a3)``;
    leftover rows into a0): with few channels a row's channels are too few to vectorise and
    the sums' dependency chains set the pace (2-3× faster for 4 channels, measured)."""
    n4 = r0 + (r1 - r0) // 4 * 4
    c1, c2, c3 = _U(C), _U(2 * C), _U(3 * C)
    for c in range(C):
        a0 = a1 = a2 = a3 = 0.0
        b0 = b1 = b2 = b3 = 0.0
        h, v = sh[c], iv[c]
        if mode == 0:
            for r in range(r0, n4, 4):
                i = _U(r * C + c)
                a0 += xf[i]
                a1 += xf[i + c1]
                a2 += xf[i + c2]
                a3 += xf[i + c3]
            for r in range(n4, r1):
                a0 += xf[_U(r * C + c)]
        elif mode == 1:
            for r in range(r0, n4, 4):
                i = _U(r * C + c)
                d0, d1, d2, d3 = xf[i] - h, xf[i + c1] - h, xf[i + c2] - h, xf[i + c3] - h
                a0 += d0 * d0
                a1 += d1 * d1
                a2 += d2 * d2
                a3 += d3 * d3
            for r in range(n4, r1):
                d0 = xf[_U(r * C + c)] - h
                a0 += d0 * d0
        else:
            for r in range(r0, n4, 4):
                i = _U(r * C + c)
                g0, g1, g2, g3 = gf[i], gf[i + c1], gf[i + c2], gf[i + c3]
                a0 += g0
                a1 += g1
                a2 += g2
                a3 += g3
                b0 += g0 * ((xf[i] - h) * v)
                b1 += g1 * ((xf[i + c1] - h) * v)
                b2 += g2 * ((xf[i + c2] - h) * v)
                b3 += g3 * ((xf[i + c3] - h) * v)
            for r in range(n4, r1):
                i = _U(r * C + c)
                g0 = gf[i]
                a0 += g0
                b0 += g0 * ((xf[i] - h) * v)
        s0[c] = (a0 + a1) + (a2 + a3)
        s1[c] = (b0 + b1) + (b2 + b3)


@numba.njit(**_JIT)
def _tile(v, out):
    """``out[t] = v[t mod C]`` (C = ``v.size``): one value per channel, repeated over the
    consecutive channels-last rows of a block."""
    C = v.size
    for t in range(out.size):
        out[t] = v[t % C]


@numba.njit(**_JIT)
def _rows_per_block(C):
    """Rows the element-wise BatchNorm kernels take at once: a block of at least 64 entries,
    whose per-channel parameters are tiled to match (:func:`_tile`), so a few channels still
    give a loop long enough to vectorise (the same arithmetic per element; 1.2-2.4× faster
    on ≥ 4096 rows of 4-16 channels, measured)."""
    return max(1, 64 // C)


@numba.njit(**_JIT)
def _normalise(x, shift, inv, gamma, beta, y, lo, hi):
    """Items (model, chunk): ``y = γ x̂ + β`` with ``x̂ = (x − shift)·inv``, in blocks of
    :func:`_rows_per_block` rows."""
    M, N, C = x.shape
    R = _rows_per_block(C)
    par = np.empty((4, R * C), dtype=x.dtype)
    sh, iv, g, bt = par[0], par[1], par[2], par[3]
    last = -1
    for it in range(lo, hi):
        m = it // CHUNKS
        r0, r1 = _chunk_rows(N, it % CHUNKS)
        xf, yf = x[m].reshape(-1), y[m].reshape(-1)
        if m != last:
            _tile(shift[m], sh)
            _tile(inv[m], iv)
            _tile(gamma[m], g)
            _tile(beta[m], bt)
            last = m
        for r in range(r0, r1, R):
            base = _U(r * C)
            for t in range(_U(min(R, r1 - r) * C)):
                yf[base + t] = g[t] * ((xf[base + t] - sh[t]) * iv[t]) + bt[t]


@numba.njit(**_JIT)
def _bn_dx(dy, x, shift, inv, coef, dbeta, dgamma, n, dx, lo, hi):
    """Items (model, chunk): training-mode ``dx = coef·(n·dy − Σdy − x̂·Σdy·x̂)``,
    ``coef = γ·inv/n``, x̂ recomputed as in :func:`_normalise` (blocks of rows as there)."""
    M, N, C = dy.shape
    R = _rows_per_block(C)
    par = np.empty((5, R * C), dtype=x.dtype)
    sh, iv, cf, db, dg = par[0], par[1], par[2], par[3], par[4]
    last = -1
    for it in range(lo, hi):
        m = it // CHUNKS
        r0, r1 = _chunk_rows(N, it % CHUNKS)
        gf, xf, df = dy[m].reshape(-1), x[m].reshape(-1), dx[m].reshape(-1)
        if m != last:
            _tile(shift[m], sh)
            _tile(inv[m], iv)
            _tile(coef[m], cf)
            _tile(dbeta[m], db)
            _tile(dgamma[m], dg)
            last = m
        for r in range(r0, r1, R):
            base = _U(r * C)
            for t in range(_U(min(R, r1 - r) * C)):
                h = (xf[base + t] - sh[t]) * iv[t]
                df[base + t] = cf[t] * (n * gf[base + t] - db[t] - h * dg[t])


@numba.njit(**_JIT)
def _pointwise(mode, a, b, out, n_items, lo, hi):
    """Items: ``n_items`` equal slices of the flat arrays; ``out = max(a, 0)`` (mode 0),
    ``max(a + b, 0)`` (mode 1) or ``a·[b > 0]`` (mode 2), NaN kept as NumPy keeps it."""
    n = out.size
    for it in range(lo, hi):
        i0, i1 = _U(n * it // n_items), _U(n * (it + 1) // n_items)
        if mode == 0:
            for i in range(i0, i1):
                v = a[i]
                out[i] = 0.0 if v < 0.0 else v
        elif mode == 1:
            for i in range(i0, i1):
                v = a[i] + b[i]
                out[i] = 0.0 if v < 0.0 else v
        else:
            for i in range(i0, i1):
                out[i] = a[i] * (b[i] > 0.0)


# ---- reused output arrays ------------------------------------------------------------------
class Workspace:
    """Output arrays reused from one training step to the next.

    A step allocates the same few dozen large activation arrays every time; fresh ones cost
    page faults (glibc maps arrays above 32 MB freshly from the OS at every allocation: the
    8-model ResNet-20 step spent over 1 s of system time per step on them, 0.1 s with the
    workspace; measured with ``os.times``).  Every array handed out stays in the workspace;
    :meth:`empty` returns one of the requested shape and dtype that nothing outside the
    workspace references any more (CPython reference count: no tape entry, cache or view
    keeps it alive), else a new one, so the workspace holds about one step's peak activation
    memory.  Results do not depend on it: every array it hands out is fully overwritten, as
    ``np.empty``'s would be.  One workspace serves one thread (each trainer has its own).
    """

    def __init__(self) -> None:
        self._arrays: dict[tuple, list[np.ndarray]] = {}

    def empty(self, shape: tuple, dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` with arbitrary contents."""
        key = (tuple(int(n) for n in shape), np.dtype(dtype).str)
        arrays = self._arrays.setdefault(key, [])
        for a, refs in zip(arrays, _ref_counts(arrays)):
            if refs <= _HELD_ONLY_BY_LIST:
                return a
        arrays.append(np.empty(key[0], dtype=dtype))
        return arrays[-1]

    def clear(self) -> None:
        """Drop every array (the memory is freed once nothing else references it)."""
        self._arrays.clear()


def _ref_counts(arrays: list) -> list[int]:
    """The reference counts of ``arrays``' items as seen from here."""
    return [sys.getrefcount(a) for a in arrays]


#: What :func:`_ref_counts` reports for an array that only its list references (measured,
#: not assumed, so it stays right on interpreters that count differently).
_HELD_ONLY_BY_LIST = _ref_counts([np.empty(1)])[0]
_ACTIVE = threading.local()


@contextmanager
def using(ws: Workspace | None):
    """Within the block, this thread's layer functions take their outputs from ``ws``
    (``None``: fresh arrays, the default)."""
    prev = getattr(_ACTIVE, "ws", None)
    _ACTIVE.ws = ws
    try:
        yield ws
    finally:
        _ACTIVE.ws = prev


def _empty(shape, dtype) -> np.ndarray:
    ws = getattr(_ACTIVE, "ws", None)
    return np.empty(shape, dtype=dtype) if ws is None else ws.empty(shape, dtype)


# ---- layer functions (channels last) ---------------------------------------------------------
def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a)


def _run(kernel, n_items: int, work: int, *args) -> None:
    """``run_ranges(kernel, n_items, *args)`` on as many threads as the call's estimated
    ``work`` keeps busy: one (the calling thread) below ``2·PARALLEL_WORK``, and at most 4
    ranges per thread of at least ``PARALLEL_WORK`` each.  Results do not depend on it (the
    items are independent)."""
    n = max(1, int(work) // PARALLEL_WORK)
    threads = min(n_threads(), n)
    run_ranges(kernel, n_items, *args, threads=threads, per_thread=max(1, min(4, n // threads)))


def _chunk(B: int, Ho: int, Wo: int) -> int:
    """Images per im2col chunk (one GEMM) of a convolution with ``Ho × Wo`` outputs."""
    return max(1, min(B, ROWS // (Ho * Wo)))


def _groups(B: int, Ho: int, Wo: int) -> int:
    """Groups of a model's ``B`` images with their own weight-gradient partial sums: enough
    to spread a large layer over the threads, one when the layer is small (a shape rule, so
    the summation order never depends on the threads or the models per launch)."""
    return max(1, min(GROUPS, B, -(-B * Ho * Wo // ROWS)))


def _weight_rows(Wt):
    """``(M, O, C, k, k)`` weights as ``(M, O, k·k·C)`` rows in the patches' (i, j, c) order."""
    M, O, C, k, _ = Wt.shape
    return _c(Wt.transpose(0, 1, 3, 4, 2).reshape(M, O, k * k * C))


def conv2d(x, Wt, stride, pad):
    """:func:`conv_reference.conv2d` on ``x (M, B, H, W, C)``; output ``(M, B, Ho, Wo, O)``."""
    M, B, H, W, C = x.shape
    O, k = Wt.shape[1], Wt.shape[-1]
    out = _empty((M, B, _out_size(H, k, stride, pad), _out_size(W, k, stride, pad), O), x.dtype)
    Ho, Wo = out.shape[2], out.shape[3]
    g = _chunk(B, Ho, Wo)
    implicit = stride == 1 and _implicit(pad, W, Wo, O, k * C, x.itemsize)
    _run(_conv_forward, M * -(-B // g), M * B * Ho * Wo * O * k * k * C,
         _c(x), _weight_rows(Wt), k, stride, pad, g, implicit, out)
    return out


def _flipped_rows(Wt):
    """The transposed, flipped kernel ``W'[m, c, o, i, j] = W[m, o, c, k−1−i, k−1−j]`` as
    ``(M, C, k·k·O)`` rows in the patches' (i, j, o) order: ``dx = conv(dy, W')`` at pad
    ``k − 1 − pad`` for a stride-1 convolution (a negative pad crops: :func:`_patches` reads
    only pixels inside the image)."""
    return _weight_rows(Wt[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4))


def conv2d_backward(dy, x, Wt, stride, pad, need_dx=True):
    """:func:`conv_reference.conv2d_backward`, channels last; the weight gradient is the sum,
    in group order, of ``GROUPS`` per-group partial sums over a model's images.  A stride-1
    convolution's input gradient is the convolution of ``dy`` with the flipped kernel
    (:func:`_flipped_rows`: one product with a k·k·O-long reduction per image, no col2im), and
    the same patches of ``dy`` give the weight gradient (:func:`_conv_backward_flipped`); a
    strided one (or the stem's, ``need_dx=False``) takes the patches of ``x`` for the weight
    gradient and sums the patch gradients ``dy·W`` back by col2im."""
    M, B, Ho, Wo, O = dy.shape
    C, k = Wt.shape[2], Wt.shape[-1]
    H, W = x.shape[2], x.shape[3]
    dy, x = _c(dy), _c(x)
    work = 2 * M * B * Ho * Wo * O * k * k * C
    if need_dx and stride == 1:
        G = _groups(B, H, W)
        part = _empty((M, G, k * k * O, C), x.dtype)
        dx = _empty(x.shape, x.dtype)
        implicit = _implicit(k - 1 - pad, Wo, W, C, k * O, x.itemsize)
        _run(_conv_backward_flipped, M * G, work, dy, x, _flipped_rows(Wt), k, k - 1 - pad,
             _chunk(B, H, W), implicit, part, dx)
        S = part.sum(axis=1).reshape(M, k, k, O, C)        # S[m, i', j', o, c] = dW[m, o, c, k-1-i', k-1-j']
        return dx, S[:, ::-1, ::-1].transpose(0, 3, 4, 1, 2)
    G = _groups(B, Ho, Wo)
    part = _empty((M, G, k * k * C, O), x.dtype)
    dx = _empty(x.shape, x.dtype) if need_dx else np.empty((1,) * 5, dtype=x.dtype)
    _run(_conv_backward, M * G, work, dy, x, _weight_rows(Wt), k, stride, pad, need_dx,
         _chunk(B, Ho, Wo), part, dx)
    dW = part.sum(axis=1).reshape(M, k, k, C, O).transpose(0, 4, 3, 1, 2)
    return (dx if need_dx else None), dW


def _channel_sums(x2, shift, inv, dy2, mode):
    """Per-(model, channel) sums of :func:`_sums`, ``(M, 2, C)`` (accumulated in float64
    whatever the dtype: a float32 sum over 10⁵ rows would lose digits; the chunks' partial
    sums added in chunk order), in the arrays' dtype."""
    M, N, C = x2.shape
    part = np.empty((M, 2, CHUNKS, C), dtype=np.float64)
    _run(_sums, M * CHUNKS, ELEMENT_WORK * x2.size, x2, _c(shift), _c(inv), dy2, mode, part)
    return part.sum(axis=2).astype(x2.dtype)


def _affine(x2, shift, inv, gamma, beta):
    y = _empty(x2.shape, x2.dtype)
    _run(_normalise, x2.shape[0] * CHUNKS, ELEMENT_WORK * x2.size, x2, _c(shift), _c(inv),
         _c(gamma), _c(beta), y)
    return y


def batchnorm_train(x, gamma, beta, eps=BN_EPS):
    """:func:`conv_reference.batchnorm_train`, channels last.  The cache keeps the input and
    its statistics, not x̂ (the backward pass recomputes x̂: one array less per layer)."""
    M, B, H, W, C = x.shape
    N = B * H * W
    if N < 2:
        raise ValueError(f"batch: BatchNorm in training mode needs more than 1 value per "
                         f"channel (batch × height × width >= 2), got {B} x {H} x {W}")
    x2 = _c(x).reshape(M, N, C)
    one = np.ones((M, C), dtype=x2.dtype)
    mean = _channel_sums(x2, np.zeros((M, C), dtype=x2.dtype), one, x2, 0)[:, 0] / N
    var = _channel_sums(x2, mean, one, x2, 1)[:, 0] / N
    inv = 1.0 / np.sqrt(var + eps)
    y = _affine(x2, mean, inv, gamma, beta)
    return y.reshape(x.shape), ("train", x2, _c(mean), _c(inv), gamma), mean, var * (N / (N - 1))


def batchnorm_eval(x, gamma, beta, running_mean, running_var, eps=BN_EPS):
    """:func:`conv_reference.batchnorm_eval`, channels last."""
    M, B, H, W, C = x.shape
    inv = 1.0 / np.sqrt(running_var + eps)
    x2 = _c(x).reshape(M, -1, C)
    y = _affine(x2, running_mean, inv, gamma, beta)
    return y.reshape(x.shape), ("eval", x2, _c(running_mean), _c(inv), gamma)


def batchnorm_backward(dy, cache):
    """:func:`conv_reference.batchnorm_backward`, channels last."""
    mode, x2, shift, inv, gamma = cache
    M, N, C = x2.shape
    dy2 = _c(dy).reshape(M, N, C)
    sums = _channel_sums(x2, shift, inv, dy2, 2)
    dbeta, dgamma = sums[:, 0], sums[:, 1]
    if mode == "eval":
        return (dy2 * (gamma * inv)[:, None, :]).reshape(dy.shape), dgamma, dbeta
    dx = _empty(dy2.shape, dy2.dtype)
    _run(_bn_dx, M * CHUNKS, ELEMENT_WORK * dy2.size, dy2, x2, shift, inv, _c(gamma * inv / N),
         _c(dbeta), _c(dgamma), dy2.dtype.type(N), dx)
    return dx.reshape(dy.shape), dgamma, dbeta


def shortcut_a(x, c_out):
    """:func:`conv_reference.shortcut_a`, channels last."""
    M, B, H, W, C = x.shape
    front = (c_out - C) // 2
    out = _empty((M, B, (H + 1) // 2, (W + 1) // 2, c_out), x.dtype)
    out[..., :front] = 0.0
    out[..., front + C:] = 0.0
    out[..., front:front + C] = x[:, :, ::2, ::2, :]
    return out


def shortcut_a_backward(dout, x_shape):
    """:func:`conv_reference.shortcut_a_backward`, channels last."""
    C = x_shape[4]
    front = (dout.shape[4] - C) // 2
    dx = _empty(x_shape, dout.dtype)
    dx[...] = 0.0
    dx[:, :, ::2, ::2, :] = dout[..., front:front + C]
    return dx


def _apply(mode, a, b):
    a = _c(a)
    out = _empty(a.shape, a.dtype)
    n_items = a.shape[0] * CHUNKS
    _run(_pointwise, n_items, ELEMENT_WORK * a.size, mode, a.reshape(-1), _c(b).reshape(-1),
         out.reshape(-1), n_items)
    return out


def relu(x):
    """``max(x, 0)``."""
    return _apply(0, x, x)


def add_relu(u, s):
    """``max(u + s, 0)``, a block's output."""
    return _apply(1, u, s)


def relu_backward(d, y):
    """``d·[y > 0]``: the gradient through a ReLU whose output was ``y``."""
    return _apply(2, d, y)


def pool_backward(df, shape):
    """:data:`conv_reference.NCHW`'s ``pool_backward``, channels last, as an array."""
    out = _empty(shape, df.dtype)
    out[...] = (df / (shape[2] * shape[3]))[:, :, None, None, :]
    return out


#: The channels-last layer functions of this backend.
NHWC = Ops(to_internal=lambda X: _c(X.transpose(0, 1, 3, 4, 2)), conv2d=conv2d,
           conv2d_backward=conv2d_backward, batchnorm_train=batchnorm_train,
           batchnorm_eval=batchnorm_eval, batchnorm_backward=batchnorm_backward,
           shortcut_a=shortcut_a, shortcut_a_backward=shortcut_a_backward,
           pool=lambda h: h.mean(axis=(2, 3)), pool_backward=pool_backward, relu=relu,
           add_relu=add_relu, relu_backward=relu_backward)


class ConvTrainer(_ReferenceTrainer):
    """Numba CPU backend for :class:`~sdeverify.train.convnet.ResNet` (module docstring); the
    contract, state, augmentation and SVAG rules of the reference
    :class:`~sdeverify.train.conv_reference.ConvTrainer`.  ``dtype``: float32 or float64.

    Speed: on an AVX-512 CPU the convolutions' products of 16 channels and more run in
    :mod:`conv_gemm`'s own kernel (about 2× OpenBLAS's AVX2 "Haswell" kernels on ResNet-20's
    shapes, whatever ``OPENBLAS_CORETYPE`` says); narrower ones, and every product on a CPU
    without AVX-512, in SciPy's OpenBLAS, single-threaded per item (benchmarks/RESULTS.md).
    The training step's output arrays stay in :attr:`workspace` between calls."""
    ops = NHWC

    def __init__(self, model, X, y, n_opt, n_rep, dtype="float64"):
        if str(np.dtype(dtype)) not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        super().__init__(model, X, y, n_opt, n_rep, dtype)
        #: the training step's reused output arrays (kept while the trainer lives: about one
        #: step's peak activation memory)
        self.workspace = Workspace()

    # BLAS runs single-threaded: the kernels' items already occupy the threads (OpenBLAS's own
    # spinning threads would oversubscribe the cores, see blas_threads).
    def train(self, idx, a, b, gamma, r, aug=None):
        parts = self._parts(self.R, idx[0].shape[2] * self.J * self.R)
        with single_threaded():
            if len(parts) == 1:
                with using(self.workspace):
                    return super().train(idx, a, b, gamma, r, aug)
            S = idx[0].shape[0]
            out = np.empty((S, self.J, self.R))
            # explicit last axes: a net without BatchNorm has no buffers (size 0, no -1 to infer)
            state = [v.reshape(self.J, self.R, v.shape[-1]).copy() for v in (self.W, self.Mom, self.buffers)]

            def run(r0, r1):
                sub = self._part(r0, r1)
                sub.set_state(*(v[:, r0:r1].reshape(self.J * (r1 - r0), v.shape[2]) for v in state))
                part_aug = None if aug is None else [tuple(v[:, r0:r1] for v in slot) for slot in aug]
                with using(sub.workspace):
                    out[:, :, r0:r1] = _ReferenceTrainer.train(
                        sub, [i[:, r0:r1] for i in idx], a, b, gamma, r, part_aug
                    ).reshape(S, self.J, r1 - r0)
                for v, w in zip(state, (sub.W, sub.Mom, sub.buffers)):
                    v[:, r0:r1] = w.reshape(self.J, r1 - r0, w.shape[-1])

            self._on_threads(run, parts)
            self.W, self.Mom, self.buffers = (v.reshape(self.J * self.R, v.shape[2]) for v in state)
            return out.reshape(S, self.J * self.R)

    def evaluate(self, X, y, chunk: int = 256):
        M = self.W.shape[0]
        parts = self._parts(M, min(chunk, len(X)) * M)
        with single_threaded():
            if len(parts) == 1:
                with using(Workspace()):
                    return super().evaluate(X, y, chunk)
            loss_sum, correct = np.empty(M), np.empty(M)

            def run(m0, m1):
                sub = self._part(m0, m1)                # one per range: no shared state
                sub.W, sub.buffers = self.W[m0:m1], self.buffers[m0:m1]
                with using(Workspace()):
                    loss_sum[m0:m1], correct[m0:m1] = _ReferenceTrainer.evaluate(sub, X, y, chunk)

            self._on_threads(run, parts)
            return loss_sum, correct

    def gradients(self, W, X, y):
        W = np.asarray(W)
        parts = self._parts(W.shape[0], len(X) * W.shape[0])
        with single_threaded():
            if len(parts) == 1:
                return super().gradients(W, X, y)
            G = np.empty(W.shape, dtype=self.dtype)

            def run(m0, m1):
                G[m0:m1] = _ReferenceTrainer.gradients(self, W[m0:m1], X, y)

            self._on_threads(run, parts)
            return G

    # ---- small networks: whole passes of groups of models on the threads ---------------------
    def _threads(self) -> int:
        """Threads for the model groups of :meth:`_parts` (the kernels' count)."""
        return n_threads()

    def _parts(self, n: int, images: int) -> list[tuple[int, int]]:
        """Contiguous ranges of ``n`` units (replicas, or models) for the threads when a pass
        over ``images`` images (all models together) is too small for the kernels' own
        threads to pay (:data:`SPLIT_WORK`); else one range.  Each model's arithmetic is the
        same in any group, so the results do not depend on it."""
        t = min(self._threads(), n)
        if t < 2 or images * self.model.flops_per_sample() >= SPLIT_WORK:
            return [(0, n)]
        return [(n * i // t, n * (i + 1) // t) for i in range(t)]

    def _part(self, r0: int, r1: int) -> "ConvTrainer":
        """A trainer sharing this one's data for the range ``[r0, r1)`` of replicas of every
        optimizer (training) or of models (evaluation), its state set by the caller, with its
        own workspace; one per range (threads never share one), kept for the next call."""
        parts = self.__dict__.setdefault("_part_trainers", {})
        if (r0, r1) not in parts:
            sub = object.__new__(type(self))
            sub.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_part_trainers"})
            sub.R, sub.workspace = r1 - r0, Workspace()
            parts[r0, r1] = sub
        return parts[r0, r1]

    @staticmethod
    def _on_threads(fn, parts) -> None:
        """``fn(lo, hi)`` for every range of ``parts``, one thread each; inside, the kernels
        stay on their thread (:func:`sdeverify.threads.limited`)."""
        def one(lo, hi):
            for i in range(lo, hi):
                with limited(1):
                    fn(*parts[i])
        run_ranges(one, len(parts), threads=len(parts), per_thread=1)


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
