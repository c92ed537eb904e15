"""A register-blocked GEMM for the convolutions' products, callable from ``@njit`` code.

:func:`gemm` computes the row-major ``C[m×n] ← op(A)·B + β·C`` with ``A`` addressed by two
strides (so ``Aᵀ`` of a row-major matrix costs nothing) and ``B`` row-major ``(k, n)``.  The
conv layers' three products have a narrow output (16–64 channels): the forward pass
``patches·Wᵀ`` and a stride-1 input gradient (``n`` = output channels, ``k`` = 9·C), and the
weight gradient ``patchesᵀ·dy`` (a reduction over 64–1024 output pixels).

How: ``B`` is packed into zero-padded panels of ``NR`` columns (one 512-bit vector — 16
float32 or 8 float64 — for outputs that narrow, else two; used in place when ``B`` is one
such panel already), and its rows taken ``KC`` at a time; a micro-kernel
(:func:`_make_tile`, LLVM IR emitted by a Numba intrinsic) keeps an ``MR × NR`` block of
``C`` in vector registers across the reduction — at each step one vector load of ``B`` per
``NV`` vectors and ``MR`` broadcasts of ``A``, ``MR·NV`` fused multiply-adds — and then adds
it to (or stores it over) ``C``.  The tile's rows and columns that fall outside ``C`` are
computed from zero-padded copies and discarded.  LLVM compiles it for the host CPU (AVX-512
``zmm`` registers where the CPU has them), independently of the BLAS library's kernel choice.

Every summation order is a function of the shapes only (reduction in blocks of ``KC`` in
increasing ``k``, each block's sum added to ``C`` in block order), so results are bitwise
reproducible; they differ from BLAS's by rounding only.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .blas import gemm as blas_gemm

__all__ = ["gemm", "gemm_packed", "pack", "packed_size", "product", "used", "KC", "AVX512"]

_JIT = dict(cache=True, error_model="numpy", nogil=True, fastmath=False)
#: Rows of ``B`` (the reduction) per packed block.
KC = 256


def _avx512() -> bool:
    """Whether Numba compiles for a CPU with AVX-512F (its ``NUMBA_CPU_FEATURES`` when set;
    none when only ``NUMBA_CPU_NAME`` is, e.g. ``generic``; else the host's)."""
    import llvmlite.binding as llb
    if numba.config.CPU_NAME not in (None, "host") and not numba.config.CPU_FEATURES:
        return False
    feats = numba.config.CPU_FEATURES or llb.get_host_cpu_features().flatten()
    return "+avx512f" in feats.split(",")


#: The micro-kernel's 24-32 vector registers exist only with AVX-512; elsewhere (AVX2: 16
#: registers, the 512-bit vectors split in two) it would spill, and :func:`product` keeps BLAS.
AVX512 = _avx512()


def _no_unroll(module: ir.Module):
    """A loop-id metadata node ``!{self, !{"llvm.loop.unroll.disable"}}``: the micro-kernel's
    reduction loop is not unrolled (unrolling it made LLVM hoist the next step's broadcasts
    and spill accumulators to the stack)."""
    md = module.add_metadata([module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])])
    md.operands = (md,) + tuple(md.operands)
    return md


def _make_tile(MR: int, NV: int, unit: str):
    """The ``MR × NR`` micro-kernel (``NR`` = ``NV`` 512-bit vectors: 16·NV float32 or 8·NV
    float64 columns), an intrinsic
    ``tile(a, a_off, a_rs, a_ks, bp, b_off, c, c_off, ldc, kc, beta)``:
    ``c[c_off + i·ldc + j] = β·c[…] + Σ_{t<kc} a[a_off + i·a_rs + t·a_ks]·bp[b_off + t·NR + j]``
    for ``i < MR``, ``j < NR`` (``β`` is 0 or 1: with 0, ``c`` is not read).  The ``MR·NR``
    sums are vector SSA values (phi nodes of the reduction loop), so they live in registers;
    the reduction runs in increasing ``t``, one fused multiply-add per step.  ``unit``: which
    of A's strides is the constant 1 (its argument is ignored): ``"k"`` (row-major ``A``: each
    row a pointer walking on), ``"row"`` (a transposed ``A``: the ``MR`` values of a step at
    fixed offsets from one pointer) — a runtime unit stride cost 40% of the speed (address
    arithmetic for every broadcast, measured)."""

    @intrinsic
    def tile(typingctx, a, a_off, a_rs, a_ks, bp, b_off, c, c_off, ldc, kc, beta):
        dt = c.dtype
        sig = types.void(a, a_off, a_rs, a_ks, bp, b_off, c, c_off, ldc, kc, beta)

        def codegen(context, builder, signature, args):
            (a_, a_off_, a_rs_, a_ks_, b_, b_off_, c_, c_off_, ldc_, kc_, beta_) = args
            sty = context.get_value_type(dt)
            L = 64 // (dt.bitwidth // 8)                      # lanes of a 512-bit vector
            NR = NV * L
            vty = ir.VectorType(sty, L)
            i64 = ir.IntType(64)
            a_off_, a_rs_, a_ks_, b_off_, c_off_, ldc_, kc_ = (
                context.cast(builder, v, t, types.int64) for v, t in zip(
                    (a_off_, a_rs_, a_ks_, b_off_, c_off_, ldc_, kc_),
                    (signature.args[1], signature.args[2], signature.args[3], signature.args[5],
                     signature.args[7], signature.args[8], signature.args[9])))
            if unit == "k":
                a_ks_ = ir.Constant(i64, 1)
            else:
                a_rs_ = ir.Constant(i64, 1)
            pa = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=a_).data
            pb = cgutils.create_struct_proxy(signature.args[4])(context, builder, value=b_).data
            pc = cgutils.create_struct_proxy(signature.args[6])(context, builder, value=c_).data
            pa = builder.gep(pa, [a_off_])
            pb = builder.gep(pb, [b_off_])
            pc = builder.gep(pc, [c_off_])
            zero = ir.Constant(vty, [ir.Constant(sty, 0.0)] * L)
            undef = ir.Constant(vty, ir.Undefined)
            bmask = ir.Constant(ir.VectorType(ir.IntType(32), L), [0] * L)
            fnty = ir.FunctionType(vty, [vty, vty, vty])
            fma = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.v{L}f{dt.bitwidth}")
            row_off = [builder.mul(a_rs_, ir.Constant(i64, i)) for i in range(MR)]

            entry = builder.basic_block
            loop = builder.append_basic_block("tile.loop")
            done = builder.append_basic_block("tile.done")
            builder.cbranch(builder.icmp_signed(">", kc_, ir.Constant(i64, 0)), loop, done)

            builder.position_at_end(loop)
            t = builder.phi(i64)
            accs = [builder.phi(vty) for _ in range(MR * NV)]
            boff = builder.mul(t, ir.Constant(i64, NR))
            bv = []
            for v in range(NV):
                p = builder.gep(pb, [builder.add(boff, ir.Constant(i64, v * L))])
                bv.append(builder.load(builder.bitcast(p, vty.as_pointer()), align=dt.bitwidth // 8))
            aoff = builder.mul(t, a_ks_)
            new = []
            for i in range(MR):
                s = builder.load(builder.gep(pa, [builder.add(aoff, row_off[i])]))
                bc = builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(ir.IntType(32), 0)),
                                            undef, bmask)
                for v in range(NV):
                    new.append(builder.call(fma, [bc, bv[v], accs[i * NV + v]]))
            t1 = builder.add(t, ir.Constant(i64, 1))
            last = builder.basic_block
            br = builder.cbranch(builder.icmp_signed("<", t1, kc_), loop, done)
            br.set_metadata("llvm.loop", _no_unroll(builder.module))
            t.add_incoming(ir.Constant(i64, 0), entry)
            t.add_incoming(t1, last)
            for acc, nv in zip(accs, new):
                acc.add_incoming(zero, entry)
                acc.add_incoming(nv, last)

            builder.position_at_end(done)
            outs = []
            for i in range(MR * NV):
                phi = builder.phi(vty)
                phi.add_incoming(zero, entry)
                phi.add_incoming(new[i], last)
                outs.append(phi)
            add = builder.fcmp_ordered("!=", context.cast(builder, beta_, signature.args[10], dt),
                                       ir.Constant(sty, 0.0))
            ptrs = []
            for i in range(MR):
                crow = builder.mul(ldc_, ir.Constant(i64, i))
                for v in range(NV):
                    ptrs.append(builder.bitcast(
                        builder.gep(pc, [builder.add(crow, ir.Constant(i64, v * L))]), vty.as_pointer()))
            al = dt.bitwidth // 8
            with builder.if_else(add) as (then, otherwise):
                with then:
                    for p, val in zip(ptrs, outs):
                        builder.store(builder.fadd(builder.load(p, align=al), val), p, align=al)
                with otherwise:
                    for p, val in zip(ptrs, outs):
                        builder.store(val, p, align=al)
            return context.get_dummy_value()
        return sig, codegen
    return tile


#: The micro-kernels: 24 rows × 1 vector (outputs of at most one vector's width: 16 float32
#: or 8 float64 channels) and 12 rows × 2 vectors (wider outputs); 24 accumulator registers
#: of the 32 of AVX-512 either way.
_MR1, _MR2 = 24, 12
_tile1 = _make_tile(_MR1, 1, "k")
_tile2 = _make_tile(_MR2, 2, "k")
_tile1t = _make_tile(_MR1, 1, "row")
_tile2t = _make_tile(_MR2, 2, "row")


@numba.njit(**_JIT)
def _edge(wide, mr, MR, NR, kc, a, a_off, a_rs, a_ks, bp, b_off, bt, c, c_off, ldc, nr, apad, ctmp):
    """A tile of ``mr ≤ MR`` rows and ``nr ≤ NR`` columns (or any tile of an ``A`` without a
    unit stride): the rows of ``A`` copied into the zero-padded ``apad (MR, kc)`` when
    ``mr < MR`` (or no stride is 1), the full tile computed into ``ctmp``, its
    ``mr × nr`` corner added to (``bt`` = 1) or stored over ``c`` — the same arithmetic as a
    full tile's."""
    src, so, rs, ks = a, a_off, a_rs, a_ks
    if mr < MR or a_ks != 1:
        for i in range(MR):
            for t in range(kc):
                apad[i * kc + t] = a[a_off + i * a_rs + t * a_ks] if i < mr else 0.0
        src, so, rs, ks = apad, 0, kc, 1
    if wide:
        _tile2(src, so, rs, ks, bp, b_off, ctmp, 0, NR, kc, 0.0)
    else:
        _tile1(src, so, rs, ks, bp, b_off, ctmp, 0, NR, kc, 0.0)
    for i in range(mr):
        for j in range(nr):
            d = c_off + i * ldc + j
            c[d] = (c[d] + ctmp[i * NR + j]) if bt != 0.0 else ctmp[i * NR + j]


@numba.njit(**_JIT)
def gemm(m, n, k, a, a_off, a_rs, a_ks, b, b_off, b_ks, b_ns, beta, c, c_off, ldc):
    """``C ← op(A)·B + β·C`` with ``β`` ∈ {0, 1}; all arrays 1-D, of one dtype (float32 or
    float64), offsets and strides in elements:
    ``C[i, j]`` = ``c[c_off + i·ldc + j]`` (``m × n``), ``A[i, t]`` = ``a[a_off + i·a_rs + t·a_ks]``
    (``m × k``: ``a_rs = lda, a_ks = 1`` for a row-major ``A``, ``a_rs = 1, a_ks = lda`` for
    the transpose of a row-major ``k × m`` matrix), ``B[t, j]`` = ``b[b_off + t·b_ks + j·b_ns]``
    (``k × n``; copied into panels first unless it is one already, so its layout costs
    little).  With β = 0, ``C`` is not read.  Module docstring: the blocking."""
    if beta != 0.0 and beta != 1.0:
        raise ValueError("beta must be 0 or 1 (C is overwritten or added to)")
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        if beta == 0.0:
            for i in range(m):
                for j in range(n):
                    c[c_off + i * ldc + j] = 0.0
        return
    NR = _panel(n, c.itemsize)
    if n == NR and b_ns == 1 and b_ks == NR:          # B is one panel already: no copy
        gemm_packed(m, n, k, a, a_off, a_rs, a_ks, b, b_off, beta, c, c_off, ldc)
        return
    bp = np.empty(packed_size(n, k, c.itemsize), dtype=c.dtype)
    zero = np.int64(0)      # not a literal 0: one compiled variant per dtype (compile time)
    pack(n, k, b, b_off, b_ks, b_ns, bp, zero)
    gemm_packed(m, n, k, a, a_off, a_rs, a_ks, bp, zero, beta, c, c_off, ldc)


@numba.njit(**_JIT)
def packed_size(n, k, itemsize):
    """Entries of ``B (k × n)`` packed by :func:`pack`."""
    NR = _panel(n, itemsize)
    return (n + NR - 1) // NR * k * NR


@numba.njit(**_JIT)
def pack(n, k, b, b_off, b_ks, b_ns, bp, p_off):
    """``B[t, j]`` = ``b[b_off + t·b_ks + j·b_ns]`` (``k × n``) into the zero-padded panels of
    :func:`gemm_packed`: ``bp[p_off + (p·k + t)·NR + j'] = B[t, p·NR + j']``."""
    NR = _panel(n, bp.itemsize)
    for p in range((n + NR - 1) // NR):
        w = min(NR, n - p * NR)
        for t in range(k):
            s, d = b_off + t * b_ks + p * NR * b_ns, p_off + (p * k + t) * NR
            for j in range(w):
                bp[d + j] = b[s + j * b_ns]
            for j in range(w, NR):
                bp[d + j] = 0.0


@numba.njit(**_JIT)
def _panel(n, itemsize):
    """Columns of a tile (``NR``) for an ``n``-wide output: one vector, or two when wider."""
    L = 64 // itemsize
    return 2 * L if n > L else L


@numba.njit(**_JIT)
def gemm_packed(m, n, k, a, a_off, a_rs, a_ks, bp, b0, beta, c, c_off, ldc):
    """:func:`gemm` on a ``B`` packed by :func:`pack` at offset ``b0`` (panel p's row t at
    ``bp[b0 + (p·k + t)·NR :][:NR]``)."""
    NR = _panel(n, c.itemsize)
    wide = NR > 64 // c.itemsize
    MR = _MR2 if wide else _MR1
    P = (n + NR - 1) // NR
    apad = np.empty(MR * KC, dtype=c.dtype)
    ctmp = np.empty(MR * NR, dtype=c.dtype)
    for p in range(P):
        nr = min(NR, n - p * NR)
        for k0 in range(0, k, KC):
            kc = min(KC, k - k0)
            bt = beta if k0 == 0 else 1.0
            bo = b0 + (p * k + k0) * NR
            for m0 in range(0, m, MR):
                mr = min(MR, m - m0)
                ao = a_off + m0 * a_rs + k0 * a_ks
                co = c_off + m0 * ldc + p * NR
                if mr == MR and nr == NR and (a_ks == 1 or a_rs == 1):
                    if a_ks == 1:
                        if wide:
                            _tile2(a, ao, a_rs, a_ks, bp, bo, c, co, ldc, kc, bt)
                        else:
                            _tile1(a, ao, a_rs, a_ks, bp, bo, c, co, ldc, kc, bt)
                    elif wide:
                        _tile2t(a, ao, a_rs, a_ks, bp, bo, c, co, ldc, kc, bt)
                    else:
                        _tile1t(a, ao, a_rs, a_ks, bp, bo, c, co, ldc, kc, bt)
                else:
                    _edge(wide, mr, MR, NR, kc, a, ao, a_rs, a_ks, bp, bo, bt, c, co, ldc, nr,
                          apad, ctmp)


@numba.njit(**_JIT)
def used(m, n, k, itemsize):
    """Whether :func:`product` takes this kernel for an ``m × n`` output with a ``k``-long
    reduction (else BLAS): on an AVX-512 CPU, when the output is at least one vector wide
    and the reduction at least one vector long (``n, k ≥ 64 / itemsize``: 16 float32 or 8
    float64).  Narrower outputs waste most of a vector's lanes and short reductions pay the
    tile's overhead at every step (0.2-0.9× BLAS's rate on 3-8 channels, measured by
    benchmarks/conv_gemm_kernel.py; 1.9-3.4× on ResNet-20's 16-64).  A rule on the shapes
    only (and the CPU): never on threads or models."""
    L = 64 // itemsize
    return AVX512 and m >= 1 and n >= L and k >= L


@numba.njit(**_JIT)
def product(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Row-major ``C[m×n] ← op(A)·op(B) + β·C`` (β ∈ {0, 1}), the arguments of
    :func:`sdeverify.train.blas.gemm` without α: :func:`gemm` where :func:`used` says so,
    else BLAS."""
    if used(m, n, k, c.itemsize):
        zero, one = np.int64(0), np.int64(1)     # not literals: fewer compiled variants
        gemm(m, n, k, a, zero, one if ta else np.int64(lda), np.int64(lda) if ta else one,
             b, zero, one if tb else np.int64(ldb), np.int64(ldb) if tb else one, beta, c, zero,
             np.int64(ldc))
    else:
        blas_gemm(ta, tb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc)
