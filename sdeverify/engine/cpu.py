"""The Numba CPU engine: one generic kernel factory, specialised (and cached) per problem
functions, observables, dtype and dimension.

Work is split over threads in blocks of ``config.BLOCK`` consecutive paths (``prange``).
Inside a block, ``config.LANES`` consecutive paths (the *lanes*) advance together, one step
at a time, with their states laid out lane-minor (``x[opt, i, lane]``):

1. the draws of the step for all lanes come from :func:`sdeverify.rng.fill_lanes64` /
   ``fill_lanes32``: Philox and the branch-free Box–Muller transform, vectorised over lanes;
2. one loop over the lanes applies each optimizer's update.  The problem's ``grad`` and
   ``noise`` are inlined into that loop and work on small stack arrays of compile-time size
   ``d``, so LLVM unrolls their loops over coordinates, promotes the stack arrays to
   registers and vectorises the lane loop: SIMD over paths, for any problem written as plain
   loops (a problem that calls libm, e.g. ``np.sin``, still runs, lane by lane).

Nothing is allocated in the step loop (buffers are allocated once per block), and the
observables are folded into the block's (count, mean, M2) accumulators in place, in path
order, so the statistics are bitwise those of a path-by-path loop: identical for any thread
count and any split into shards.  A non-finite observable value is not folded in but counted
(``block_bad[..., 0]``); a loss or user observable that raises is caught and counted too
(``block_bad[..., 1]``: compiled code cannot carry the exception out of a parallel loop).  All optimizers of a call share the draws of each
(path, step): common random numbers.

Per step and optimizer, exactly as the reference engine (``a, b, γ`` from
:mod:`sdeverify.optim`)::

    g = grad(x) + σ v(x, ξ)          (SVAG: (grad(x) + σ r1 v(x, ξ¹)) + σ r2 v(x, ξ²))
    m = a m + b g;   x = x − γ m;    a path whose Σ_i x_i is no longer finite, or (in a
                                     pass of its own after the step, which keeps the update
                                     loop vectorised) with some |x_i| > bound, stops (x, m
                                     frozen, ``div_step`` = k + 1); ``bound`` is the spec's
                                     divergence bound (see ``simulate``).

(A stopped lane still runs through the vector loop with ``x0`` as its input; its result is
discarded.)  ``dtype="float32"``: x, m, g and the draws in float32, coefficients cast to
float32, problem parameters stay float64, statistics accumulate in float64.

Compiled kernels are cached on disk (``cache=True`` semantics) under a key made of the
bytecode of the kernel and of the problem / observable functions, so a new process starts
without compiling.  As with Numba's own cache, a change in a *helper* called by a problem
function (not the function itself) is not detected: clear ``__pycache__`` after such edits.
"""
from __future__ import annotations

import hashlib
import types as pytypes

import numba
import numpy as np
from numba import types
from numba.core import caching, cgutils
from numba.extending import intrinsic

from .. import config, rng
from ..observables import LOSS, SQNORM, USER0, user_evaluator

BLOCK = config.BLOCK
LANES = config.LANES
assert BLOCK % LANES == 0, "config.LANES must divide config.BLOCK"
_KERNELS: dict = {}


@intrinsic
def _stack_empty(typingctx, n, dtype):
    """A 1-d C-contiguous array of compile-time length ``n`` on the stack (no allocation, no
    reference counting).  After inlining, LLVM promotes it to registers."""
    if not isinstance(n, types.IntegerLiteral) or not isinstance(dtype, (types.NumberClass, types.DType)):
        return None
    dt, size = dtype.dtype, n.literal_value
    arrty = types.Array(dt, 1, "C")

    def codegen(context, builder, sig, args):
        lty = context.get_data_type(dt)
        ptr = cgutils.alloca_once(builder, lty, size=max(size, 1))
        ary = context.make_array(arrty)(context, builder)
        item = context.get_abi_sizeof(lty)
        context.populate_array(ary, data=ptr, shape=[context.get_constant(types.intp, size)],
                               strides=[context.get_constant(types.intp, item)],
                               itemsize=context.get_constant(types.intp, item), meminfo=None)
        return ary._getvalue()

    return arrty(n, dtype), codegen


def _inline(f):
    """``f`` recompiled to be inlined (Numba IR level) into the kernel."""
    return numba.njit(inline="always", error_model="numpy")(f.py_func)


def _make_kernel(grad, noise, loss, user_eval, dtype: str, D: int, ND: int, NP: int, NC: int):
    ftype = np.float32 if dtype == "float32" else np.float64
    zero = ftype(0.0)
    one = ftype(1.0)
    fill = rng.fill_lanes(dtype)
    ROWS = rng.n_rows(ND)
    L = LANES
    grad_, noise_, loss_ = _inline(grad), _inline(noise), _inline(loss)
    key = "|".join([_fingerprint(f) for f in (grad, noise, loss, user_eval)] + [dtype, str(D), str(ND), str(NP), str(NC), str(L)])
    unique = _unique_names(hashlib.sha256(key.encode()).hexdigest()[:16])

    @numba.njit
    @unique
    def guarded(code, x, params):
        """Loss or user observable; (value, raised) — the exception itself cannot leave."""
        try:
            if code == LOSS:
                return np.float64(loss_(x, params)), False
            return np.float64(user_eval(USER0 - code, x)), False
        except Exception:
            return np.nan, True

    @numba.njit(inline="always")
    def observe(code, x, params):
        if code >= 0:
            return np.float64(x[code]), False
        if code == SQNORM:
            s = 0.0
            for i in range(x.shape[0]):
                s += np.float64(x[i]) * np.float64(x[i])
            return s, False
        return guarded(code, x, params)

    @numba.njit(inline="always")
    def welford(acc, j, r, o, v):
        """Fold v into acc[j, r, o] = (count, mean, M2) (indices, not a view: no refcounts)."""
        c = acc[j, r, o, 0] + 1.0
        delta = v - acc[j, r, o, 1]
        mean = acc[j, r, o, 1] + delta / c
        acc[j, r, o, 0] = c
        acc[j, r, o, 1] = mean
        acc[j, r, o, 2] += delta * (v - mean)

    @numba.njit
    @unique
    def record(stats, diffs, bad, vals, states, store, X, alive, xr, params, codes, r, p0, nl):
        """Fold lanes 0..nl-1 (paths p0..p0+nl-1, in order) into the accumulators of slot r;
        non-finite values are counted in ``bad[j, r, o, 0]``, raised ones in ``[..., 1]``."""
        for ln in range(nl):
            for j in range(X.shape[0]):
                if not alive[j, ln]:
                    continue
                for i in range(D):
                    xr[i] = X[j, i, ln]
                if store:
                    for i in range(D):
                        states[j, r, p0 + ln, i] = xr[i]
                for o in range(codes.shape[0]):
                    v, raised = observe(codes[o], xr, params)
                    vals[j, o] = v
                    if raised:
                        bad[j, r, o, 1] += 1.0
                    elif not np.isfinite(v):
                        bad[j, r, o, 0] += 1.0
                    else:
                        welford(stats, j, r, o, v)
                        if alive[0, ln] and np.isfinite(vals[0, o]):
                            welford(diffs, j, r, o, v - vals[0, o])

    @numba.njit(inline="always")
    def fused_step(a, b, lr, X, M, alive, dstep, k, Z1, Z2, Gb, S, xs, xo, gs, vs, ws, zs,
                   xinit, prm, sigma, sr1, sr2):
        """One optimizer, one step, all lanes; oracle and update in one loop over lanes (the
        whole body unrolls over coordinates when d is small, and LLVM vectorises over lanes)."""
        for ln in range(L):
            al = alive[ln]
            for i in range(D):
                xo[i] = X[i, ln]
                xs[i] = xo[i] if al else xinit[i]
            for i in range(ND):
                zs[i] = Z1[i, ln]
            grad_(xs, prm, gs)
            noise_(xs, prm, zs, vs)
            if NC == 2:                                  # SVAG: a second oracle call
                for i in range(D):
                    gs[i] = gs[i] + sr1 * vs[i]
                for i in range(ND):
                    zs[i] = Z2[i, ln]
                noise_(xs, prm, zs, vs)
            s = zero
            for i in range(D):
                mi = a * M[i, ln] + b * (gs[i] + (sigma if NC == 1 else sr2) * vs[i])
                xi = xs[i] - lr * mi
                s += xi
                M[i, ln] = mi if al else M[i, ln]
                X[i, ln] = xi if al else xo[i]
            fin = np.isfinite(s)
            dstep[ln] = k + 1 if (al and not fin) else dstep[ln]
            alive[ln] = al and fin

    @numba.njit(inline="always")
    def split_step(a, b, lr, X, M, alive, dstep, k, Z1, Z2, Gb, S, xs, xo, gs, vs, ws, zs,
                   xinit, prm, sigma, sr1, sr2):
        """The same step in two loops over lanes, (a) the oracle into ``Gb[:, lane]``, (b) the
        update with the lanes innermost, so that (b) vectorises for any d."""
        for ln in range(L):
            for i in range(D):
                xs[i] = X[i, ln] if alive[ln] else xinit[i]
            for i in range(ND):
                zs[i] = Z1[i, ln]
            grad_(xs, prm, gs)
            noise_(xs, prm, zs, vs)
            if NC == 1:
                for i in range(D):
                    Gb[i, ln] = gs[i] + sigma * vs[i]
            else:                                        # SVAG: a second oracle call
                for i in range(ND):
                    zs[i] = Z2[i, ln]
                noise_(xs, prm, zs, ws)
                for i in range(D):
                    Gb[i, ln] = (gs[i] + sr1 * vs[i]) + sr2 * ws[i]
        for ln in range(L):
            S[ln] = zero
        for i in range(D):
            for ln in range(L):
                al = alive[ln]
                x = X[i, ln]
                mi = a * M[i, ln] + b * Gb[i, ln]
                xi = x - lr * mi
                S[ln] += xi
                M[i, ln] = mi if al else M[i, ln]
                X[i, ln] = xi if al else x
        for ln in range(L):
            al = alive[ln]
            fin = np.isfinite(S[ln])
            dstep[ln] = k + 1 if (al and not fin) else dstep[ln]
            alive[ln] = al and fin

    @numba.njit(inline="always")
    def bound_check(X, alive, dstep, k, S, bound):
        """The divergence bound, in a pass of its own after the step (a test inside the
        update loop stops LLVM from vectorising it): a lane still alive with some
        |x_i| > bound stops at this step.  Non-finite x is caught by the step itself."""
        for ln in range(L):
            S[ln] = zero
        for i in range(D):
            for ln in range(L):
                a = abs(X[i, ln])
                S[ln] = a if a > S[ln] else S[ln]
        for ln in range(L):
            over = S[ln] > bound
            dstep[ln] = k + 1 if (alive[ln] and over) else dstep[ln]
            alive[ln] = alive[ln] and not over

    lane_step = fused_step if D <= config.FUSE_MAX_DIM else split_step

    def kernel(x0, m0, params, sigma, A, B, G, rec_steps, codes, k0, k1, path0, n_paths,
               draw_kind, r1, r2, bound, block_stats, block_diff, block_bad, x_final, m_final,
               div_step, states, store):
        n_opt, steps = A.shape
        n_rec = rec_steps.shape[0]
        n_blocks = (n_paths + BLOCK - 1) // BLOCK
        sr1 = sigma * r1
        sr2 = sigma * r2
        for blk in numba.prange(n_blocks):
            X = np.empty((n_opt, D, L), dtype=ftype)
            M = np.empty((n_opt, D, L), dtype=ftype)
            Z1 = np.empty((ROWS, L), dtype=ftype)
            Z2 = np.empty((ROWS if NC == 2 else 4, L), dtype=ftype)
            alive = np.empty((n_opt, L), dtype=np.bool_)
            dstep = np.empty((n_opt, L), dtype=np.int64)
            vals = np.empty((n_opt, codes.shape[0]))
            xr = np.empty(D, dtype=ftype)
            Gb = np.empty((D, L), dtype=ftype)
            S = _stack_empty(L, ftype)
            xs = _stack_empty(D, ftype)
            xo = _stack_empty(D, ftype)
            xinit = _stack_empty(D, ftype)       # x0 on the stack: provably not aliased by X
            for i in range(D):
                xinit[i] = x0[i]
            if NP > 0:       # the parameters on the stack too: their loads leave the lane loop
                prm = _stack_empty(NP, np.float64)
                for i in range(NP):
                    prm[i] = params[i]
            else:
                prm = params
            gs = _stack_empty(D, ftype)
            vs = _stack_empty(D, ftype)
            ws = _stack_empty(D, ftype)
            zs = _stack_empty(ND, ftype)
            stats = block_stats[blk]
            diffs = block_diff[blk]
            bad = block_bad[blk]
            hi = min((blk + 1) * BLOCK, n_paths)
            for p0 in range(blk * BLOCK, hi, L):
                nl = min(L, hi - p0)
                for j in range(n_opt):
                    for i in range(D):
                        for ln in range(L):
                            X[j, i, ln] = x0[i]
                            M[j, i, ln] = m0[j, i]
                    for ln in range(L):
                        alive[j, ln] = True
                        dstep[j, ln] = -1
                r = 0
                if n_rec > 0 and rec_steps[0] == 0:
                    record(stats, diffs, bad, vals, states, store, X, alive, xr, params, codes, 0, p0, nl)
                    r = 1
                for k in range(steps):
                    fill(draw_kind, k0, k1, path0 + p0, k, 0, Z1)
                    if NC == 2:
                        fill(draw_kind, k0, k1, path0 + p0, k, 1, Z2)
                    for j in range(n_opt):
                        a = A[j, k]
                        b = B[j, k]
                        lr = G[j, k]
                        lane_step(a, b, lr, X[j], M[j], alive[j], dstep[j], k, Z1, Z2, Gb, S,
                                  xs, xo, gs, vs, ws, zs, xinit, prm, sigma, sr1, sr2)
                        bound_check(X[j], alive[j], dstep[j], k, S, bound)
                    if r < n_rec and rec_steps[r] == k + 1:
                        record(stats, diffs, bad, vals, states, store, X, alive, xr, params, codes, r, p0, nl)
                        r += 1
                for ln in range(nl):
                    for j in range(n_opt):
                        div_step[j, p0 + ln] = dstep[j, ln]
                        for i in range(D):
                            x_final[j, p0 + ln, i] = X[j, i, ln]
                            m_final[j, p0 + ln, i] = M[j, i, ln]

    disp = numba.njit(parallel=True, error_model="numpy")(unique(kernel))
    _enable_cache(disp, key)
    return disp


def _unique_names(tag: str):
    """A decorator giving a function a qualified name unique to this kernel's key.

    Numba names compiled functions by qualified name and a per-process counter, and links
    the non-inlined ones with "one definition" semantics.  Kernels of different problems
    loaded from the disk cache may have been compiled in different processes, where the same
    closure (``record``, ``guarded``) got the same name and counter: the process would then
    run one kernel's copy inside the other (seen: the loss of one problem evaluated inside the
    kernel of another).  Names that carry the key's hash cannot collide."""
    def rename(fn):
        fn.__name__ = f"{fn.__name__}_{tag}"
        fn.__qualname__ = f"{fn.__qualname__}_{tag}"
        return fn
    return rename


# ---- a disk cache whose key is stable across processes ---------------------------------------
def _code_hash(code, h) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, pytypes.CodeType):
            _code_hash(c, h)
        else:
            h.update(_value_key(c))


def _value_key(v) -> bytes:
    """Bytes that identify a constant or closure value (content, not identity)."""
    if callable(v):
        return _fingerprint(v).encode()
    if isinstance(v, np.ndarray):
        return repr((v.dtype.str, v.shape)).encode() + np.ascontiguousarray(v).tobytes()
    if isinstance(v, (frozenset, set)):
        return repr(sorted(_value_key(x) for x in v)).encode()
    if isinstance(v, tuple):
        return b"(" + b",".join(_value_key(x) for x in v) + b")"
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, np.generic)):
        return repr(v).encode()
    from numba.core.serialize import dumps     # anything else: as Numba does (may miss, never stale)
    return dumps(v)


def _fingerprint(f) -> str:
    """Module, name and bytecode hash of a (compiled) function and of the functions and
    values it closes over: stable across processes, unlike the pickled dispatcher."""
    py = getattr(f, "py_func", f)
    if not isinstance(py, pytypes.FunctionType):
        return repr(py)
    h = hashlib.sha256()
    _code_hash(py.__code__, h)
    for cell in py.__closure__ or ():
        h.update(_value_key(cell.cell_contents))
    return f"{py.__module__}.{py.__qualname__}:{h.hexdigest()[:16]}"


class _KernelCache(caching.FunctionCache):
    def __init__(self, py_func, key: str):
        super().__init__(py_func)
        self._stable_key = hashlib.sha256(key.encode()).hexdigest()

    def _index_key(self, sig, codegen):
        code = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
        return (sig, codegen.magic_tuple(), (code, self._stable_key))


def _enable_cache(disp, key: str) -> None:
    try:
        disp._cache = _KernelCache(disp.py_func, key)
    except Exception:    # no writable cache location: compile every process, as Numba does
        pass


def get_kernel(problem, user_funcs: tuple, dtype: str = "float64", n_calls: int = 1):
    """The kernel for this problem's functions, these user observables, this dtype and this
    dimension (built once per process; compiled once per machine thanks to the disk cache)."""
    n_par = problem.params.shape[0]
    n_par = n_par if n_par <= config.STACK_PARAMS else 0
    key = (problem.grad, problem.noise, problem.loss, tuple(id(f) for f in user_funcs), dtype,
           problem.dim, problem.n_draws, n_par, n_calls)
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernel(problem.grad, problem.noise, problem.loss,
                                     user_evaluator(user_funcs), dtype, problem.dim,
                                     problem.n_draws, n_par, n_calls)
    return _KERNELS[key]


def run(spec) -> dict:
    """Run a validated :class:`~sdeverify.engine.spec.RunSpec` on the CPU."""
    dtype = getattr(spec, "dtype", "float64")
    ft = np.dtype(dtype).type
    kernel = get_kernel(spec.problem, spec.user_funcs, dtype, spec.n_calls)
    out = spec.allocate()
    cast = lambda a: np.ascontiguousarray(a, dtype=ft)
    kernel(cast(spec.x0), cast(spec.m0), spec.problem.params, ft(spec.sigma), cast(spec.A),
           cast(spec.B), cast(spec.G), spec.record, spec.codes, spec.k0, spec.k1,
           spec.path_offset, spec.paths, spec.problem.draw_kind, ft(spec.r1), ft(spec.r2),
           ft(spec.bound), out["block_stats"], out["block_diff"], out["block_bad"],
           out["x_final"], out["m_final"],
           out["div_step"], out["states"], spec.store_states)
    return out
