"""The Numba CPU engine: one generic kernel factory, specialised (and cached) per problem
functions, observables, dtype and dimension.

Work is split over threads in blocks of ``config.BLOCK`` consecutive paths: the kernel is
compiled ``nogil`` and does the blocks ``lo ≤ blk < hi`` it is given; :func:`sdeverify.threads.run_ranges`
hands ranges of blocks to the threads (no ``parallel=True``: its parfor passes double the
compile time).
Inside a block, ``config.LANES`` consecutive paths (the *lanes*) advance together, one step
at a time, with their states laid out lane-minor (``x[opt, i, lane]``):

1. the draws of the step for all lanes come from :func:`sdeverify.rng.fill_lanes64` /
   ``fill_lanes32``: Philox and the branch-free Box–Muller transform, vectorised over lanes;
2. one loop over the lanes applies each optimizer's update.  The problem's ``grad`` and
   ``noise`` (or its ``oracle``, which computes both at once, when it has one) are inlined
   into that loop and work on small stack arrays of compile-time size
   ``d``, so LLVM unrolls their loops over coordinates, promotes the stack arrays to
   registers and vectorises the lane loop: SIMD over paths, for any problem written as plain
   loops (a problem that calls libm, e.g. ``np.sin``, still runs, lane by lane).  Above
   ``config.FUSE_MAX_DIM`` the oracle runs lane by lane and only the update is vectorised.
   A problem with an ``oracle_lanes`` (:mod:`sdeverify.problems.base`) has it called on
   the whole block's lanes at once, for every d (float64): its loops have the lanes
   innermost and vectorise where a large per-lane body (CosineWell(8)'s eight sines) left
   the fused loop scalar.

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
    m = a m + b g;   x = x − γ m;    a path with some x_i not finite or |x_i| > bound stops
                                     (x, m frozen, ``div_step`` = k + 1): the update loop
                                     keeps max_i |x_i| per lane (a select, NaN kept, so the
                                     loop stays vectorised) and tests it once; ``bound`` is
                                     the spec's divergence bound (see ``simulate``).

(A stopped lane still runs through the vector loop with ``x0`` as its input; its result is
discarded.)  ``dtype="float32"``: x, m, g and the draws in float32, coefficients cast to
float32, problem parameters stay float64, statistics accumulate in float64.

Compiled kernels are cached on disk (``cache=True`` semantics) under a key made of the
bytecode of the kernel and of the problem / observable functions (:mod:`.cache`), so a new
process starts without compiling.

The kernel factory :func:`_make_kernel` assembles three parts, each built by a function of
its own: :func:`_recorder` (observables into the accumulators: a small per-kernel
``evaluate`` and the shared, problem-independent :func:`_fold`, compiled once), :func:`_fused_step` and
:func:`_split_step` (one optimizer step over the lanes, the divergence rule included; one of
them is compiled, by ``d``), called by the block loop of :func:`_block_kernel`.  They are Numba closures: their compile-time constants are in
capitals and the names are short; the glossary below gives every one.

Glossary (compile-time constants):

=============  =================================================================================
``D``          dimension d of x (``problem.dim``)
``N_DRAWS``    base draws per oracle call (``problem.n_draws``); ``ROWS``: that rounded up to 4
               (:func:`sdeverify.rng.n_rows`), the rows of a draw buffer, of which the
               generator is asked for N_DRAWS (``n_used``: with N_DRAWS = 2 it computes one
               Box–Muller pair per path and step, not two)
``N_PARAMS``   problem parameters copied to the stack (0: read in place), see config.STACK_PARAMS
``N_CALLS``    oracle calls per step: 1, or 2 for SVAG (Def. 6.1)
``L``          lanes, ``config.LANES``; the last axis of every lane array
``FTYPE``      the state dtype (``np.float64`` or ``np.float32``); ``ZERO`` its 0
=============  =================================================================================

Arrays of one block (one thread), lanes last; "(n_opt, …)" arrays are indexed by optimizer
first, and the step functions get one optimizer's slice:

=============  =================================================================================
``X, M``       (n_opt, D, L) iterates x and momentum buffers m of the lanes
``A, B``       (n_opt, steps) the coefficients a_k, b_k of every optimizer (kernel arguments)
``Gamma``      (n_opt, steps) the step sizes γ_k of every optimizer (kernel argument)
``alive``      (n_opt, L) the lane has not diverged
``dstep``      (n_opt, L) the step at which the lane diverged (its ``div_step``), −1 if not
``Z1, Z2``     (ROWS, L) base draws of the step, oracle call 1 (and 2, SVAG)
``G``          (D, L) oracle outputs g of the lanes (split step only)
``XL, V, W``   (D, L) the lanes' oracle inputs, noise of call 1 and of call 2 (split step with
               ``oracle_lanes`` only); ``G2``: (D, L) scratch for call 2's unused gradient
               (not needed when ``oracle_pair_lanes`` makes both calls)
``S``          (L,) per-lane scratch of the split step: max_i |x_i| (divergence rule)
``x_in``       (D,) the input x of a lane's oracle call (x0 for a stopped lane)
``x_old``      (D,) the lane's x before the step (fused step only)
``g, v, w``    (D,) gradient, noise vector of call 1, noise vector of call 2
``z``          (N_DRAWS,) the base draws of one lane's oracle call
``x_start``    (D,) x0, copied to the stack (provably not aliased by X)
``p``          the problem's float64 parameter vector (on the stack when N_PARAMS > 0)
=============  =================================================================================

Scalars of one step and optimizer: ``a, b, gamma`` the coefficients a_k, b_k, γ_k (γ_k the
step size) of :class:`sdeverify.optim.Coefficients`; ``sigma`` the noise scale σ,
``s1 = σ r1``, ``s2 = σ r2`` (the SVAG weights r1, r2 of Def. 6.1); ``k`` the step index
(0-based).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import config, rng
from ..compile_lock import compile_once
from ..threads import run_ranges
from ..observables import LOSS, SQNORM, USER0, _no_user, user_evaluator
from .cache import enable_disk_cache, fingerprint, key_hash, unique_names
from .output import EngineOutput

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


# ---- the parts of the kernel -----------------------------------------------------------------
@numba.njit(inline="always")
def _welford(acc, j, r, o, v):
    """Fold v into acc[j, r, o] = (count, mean, M2) (indices, not a view: no refcounts)."""
    c = acc[j, r, o, 0] + 1.0
    delta = v - acc[j, r, o, 1]
    mean = acc[j, r, o, 1] + delta / c
    acc[j, r, o, 0] = c
    acc[j, r, o, 1] = mean
    acc[j, r, o, 2] += delta * (v - mean)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fold(stats, diffs, bad, vals, raised, states, store, X, alive, r, p0, nl):
    """Fold the observable values ``vals`` (n_opt, n_obs, L) of lanes 0..nl-1 (global paths
    p0..p0+nl-1, in this order) at recorded slot ``r`` into the block's accumulators (see
    :func:`_recorder`).  Problem-independent: compiled once per dtype and shared by every
    kernel (disk-cached), where a per-kernel copy cost about 2 s of each kernel's compile."""
    for ln in range(nl):
        for j in range(X.shape[0]):
            if not alive[j, ln]:
                continue
            if store:
                for i in range(X.shape[1]):
                    states[j, r, p0 + ln, i] = X[j, i, ln]
            for o in range(vals.shape[1]):
                v = vals[j, o, ln]
                if raised[j, o, ln]:
                    bad[j, r, o, 1] += 1.0
                elif not np.isfinite(v):
                    bad[j, r, o, 0] += 1.0
                else:
                    _welford(stats, j, r, o, v)
                    if alive[0, ln] and np.isfinite(vals[0, o, ln]):
                        _welford(diffs, j, r, o, v - vals[0, o, ln])


def _recorder(loss_, user_eval, D: int, unique, guard: bool):
    """``record(stats, diffs, bad, vals, raised, states, store, X, alive, x_rec, p, codes, r,
    p0, nl)``: fold the observables of lanes 0..nl-1 (global paths p0..p0+nl-1, in this
    order) at recorded slot ``r`` into the block's accumulators, in two parts: this kernel's
    ``evaluate`` (the observables of every live lane and optimizer; the only part that
    depends on the problem) and the shared :func:`_fold`.

    ``stats``, ``diffs``: (n_opt, n_rec, n_obs, 3) float64 (count, mean, M2) of h(x_j) and of
    h(x_j) − h(x_0) (paired with optimizer 0); ``bad``: (n_opt, n_rec, n_obs, 2) counts of
    non-finite ``[..., 0]`` and raised ``[..., 1]`` values; ``vals``, ``raised``: (n_opt,
    n_obs, L) float64 / bool scratch; ``states``: (n_opt, n_rec, paths, D) written when
    ``store``; ``X``, ``alive``: the lane arrays; ``x_rec``: (D,) scratch; ``p``: problem
    parameters; ``codes``: (n_obs,) observable codes (:mod:`sdeverify.observables`: ≥ 0 a
    coordinate, ``SQNORM``, ``LOSS``, ``USER0 − u`` user function u).  Values are folded in
    float64 whatever the state dtype.

    ``guard``: evaluate the loss and user observables inside a try block (a raise is counted
    in ``bad[..., 1]``).  Off only for the package's own problems without user observables
    (:func:`_needs_guard`): their losses are plain arithmetic that cannot raise, and the try
    block cost about 0.7 s of each kernel's compile."""

    if guard:
        @numba.njit
        @unique
        def guarded(code, x, p):
            """Loss or user observable; (value, raised) — the exception itself cannot leave."""
            try:
                if code == LOSS:
                    return np.float64(loss_(x, p)), False
                return np.float64(user_eval(USER0 - code, x)), False
            except Exception:
                return np.nan, True
    else:
        @numba.njit(inline="always")
        def guarded(code, x, p):
            """The loss (the only code left: there are no user observables)."""
            return np.float64(loss_(x, p)), False

    @numba.njit(inline="always")
    def observe(code, x, p):
        """(h(x), raised) for one observable code."""
        if code >= 0:
            return np.float64(x[code]), False
        if code == SQNORM:
            s = 0.0
            for i in range(x.shape[0]):
                s += np.float64(x[i]) * np.float64(x[i])
            return s, False
        return guarded(code, x, p)

    @numba.njit
    @unique
    def evaluate(vals, raised, X, alive, x_rec, p, codes, nl):
        for ln in range(nl):
            for j in range(X.shape[0]):
                if not alive[j, ln]:
                    continue
                for i in range(D):
                    x_rec[i] = X[j, i, ln]
                for o in range(codes.shape[0]):
                    v, rs = observe(codes[o], x_rec, p)
                    vals[j, o, ln] = v
                    raised[j, o, ln] = rs

    @numba.njit(inline="always")
    def record(stats, diffs, bad, vals, raised, states, store, X, alive, x_rec, p, codes, r, p0, nl):
        evaluate(vals, raised, X, alive, x_rec, p, codes, nl)
        _fold(stats, diffs, bad, vals, raised, states, store, X, alive, np.int64(r), p0, nl)   # not Literal[0]: one signature

    return record


def _fused_step(both_, noise_, D: int, N_DRAWS: int, N_CALLS: int, L: int, ZERO):
    """``step(a, b, gamma, X, M, alive, dstep, k, Z1, Z2, x_in, x_old, g, v, z, x_start, p,
    sigma, s1, s2, bound)``: one optimizer, one step, all L lanes, for small D.

    Per lane: g = grad(x) + σ v(x, ξ) (SVAG: (grad(x) + σ r1 v(x, ξ¹)) + σ r2 v(x, ξ²)),
    m = a m + b g, x = x − γ m; a lane with some x_i not finite or |x_i| > ``bound`` stops
    (x, m kept, ``dstep`` = k + 1).  ``X``, ``M``: (D, L) and ``alive``, ``dstep``: (L,), this
    optimizer's slices, updated in place; ``Z1``, ``Z2``: (ROWS, L) the step's draws;
    ``x_in``, ``x_old``, ``g``, ``v``, ``z``: stack scratch (module glossary).  Oracle and
    update run in one loop over lanes: the body unrolls over coordinates when D is small,
    and LLVM vectorises over lanes.  ``both_(x, p, xi, g, v)`` is the problem's ``oracle``
    or ``grad`` then ``noise`` (:func:`_both`); SVAG's second call needs the noise only."""

    @numba.njit(inline="always")
    def fused_step(a, b, gamma, X, M, alive, dstep, k, Z1, Z2, x_in, x_old, g, v, z, x_start, p,
                   sigma, s1, s2, bound):
        for ln in range(L):
            al = alive[ln]
            for i in range(D):
                x_old[i] = X[i, ln]
                x_in[i] = x_old[i] if al else x_start[i]
            for i in range(N_DRAWS):
                z[i] = Z1[i, ln]
            both_(x_in, p, z, g, v)
            if N_CALLS == 2:                             # SVAG: a second oracle call
                for i in range(D):
                    g[i] = g[i] + s1 * v[i]
                for i in range(N_DRAWS):
                    z[i] = Z2[i, ln]
                noise_(x_in, p, z, v)
            s = ZERO
            for i in range(D):
                mi = a * M[i, ln] + b * (g[i] + (sigma if N_CALLS == 1 else s2) * v[i])
                xi = x_in[i] - gamma * mi
                ax = abs(xi)
                s = ax if (ax > s or ax != ax) else s    # max |x_i|; a NaN stays
                M[i, ln] = mi if al else M[i, ln]
                X[i, ln] = xi if al else x_old[i]
            ok = s <= bound and s < np.inf               # finite and within the bound
            dstep[ln] = k + 1 if (al and not ok) else dstep[ln]
            alive[ln] = al and ok

    return fused_step


def _split_step(both_, noise_, lanes_, pair_, D: int, N_DRAWS: int, N_CALLS: int, L: int, ZERO,
                LANES_ORACLE: bool, PAIR: bool):
    """``step(a, b, gamma, X, M, alive, dstep, k, Z1, Z2, x_in, g, v, w, z, G, S, x_start, p,
    sigma, s1, s2, XL, V, W, G2, bound)``: the same step as :func:`_fused_step` in two loops over
    lanes, for large D or a problem with ``oracle_lanes``: (a) the oracle of every lane into ``G`` (D, L), (b) the update with
    the lanes innermost, so that (b) vectorises for any D.  ``S`` (L,) holds max_i |x_i| per
    lane (the divergence rule).  With ``LANES_ORACLE`` (a compile-time switch) (a) is the problem's
    ``oracle_lanes`` over all lanes at once (``lanes_``, inputs ``XL``, outputs ``G``, ``V``,
    call 2 ``G2``, ``W``), and the same per-lane combination g + σ v (SVAG: (g + s₁ v) + s₂ w)
    formed inside the update loop instead of a pass of its own (float64 runs only, see
    :func:`_make_kernel`; DiagonalNet 1.12×, CosineWell 1.03× in an interleaved A/B).  With
    ``PAIR`` too (SVAG and a problem with ``oracle_pair_lanes``) both calls are one call of
    ``pair_``, which computes what they share once."""

    @numba.njit(inline="always")
    def split_step(a, b, gamma, X, M, alive, dstep, k, Z1, Z2, x_in, g, v, w, z, G, S, x_start, p,
                   sigma, s1, s2, XL, V, W, G2, bound):
        if LANES_ORACLE:
            for i in range(D):
                for ln in range(L):
                    XL[i, ln] = X[i, ln] if alive[ln] else x_start[i]
            if PAIR:                                     # SVAG's two calls in one
                pair_(XL, p, Z1, Z2, G, V, W)
            else:
                lanes_(XL, p, Z1, G, V)
                if N_CALLS == 2:                         # SVAG: a second oracle call
                    lanes_(XL, p, Z2, G2, W)
            # g + σ v (SVAG: (g + s1 v) + s2 w) is formed in the update loop below
        else:                                            # the oracle lane by lane
            for ln in range(L):
                for i in range(D):
                    x_in[i] = X[i, ln] if alive[ln] else x_start[i]
                for i in range(N_DRAWS):
                    z[i] = Z1[i, ln]
                both_(x_in, p, z, g, v)
                if N_CALLS == 1:
                    for i in range(D):
                        G[i, ln] = g[i] + sigma * v[i]
                else:                                        # SVAG: a second oracle call
                    for i in range(N_DRAWS):
                        z[i] = Z2[i, ln]
                    noise_(x_in, p, z, w)
                    for i in range(D):
                        G[i, ln] = (g[i] + s1 * v[i]) + s2 * w[i]
        for ln in range(L):
            S[ln] = ZERO
        for i in range(D):
            for ln in range(L):
                al = alive[ln]
                x = X[i, ln]
                if LANES_ORACLE:
                    if N_CALLS == 1:
                        gi = G[i, ln] + sigma * V[i, ln]
                    else:
                        gi = (G[i, ln] + s1 * V[i, ln]) + s2 * W[i, ln]
                else:
                    gi = G[i, ln]
                mi = a * M[i, ln] + b * gi
                xi = x - gamma * mi
                ax = abs(xi)
                S[ln] = ax if (ax > S[ln] or ax != ax) else S[ln]   # max |x_i|; a NaN stays
                M[i, ln] = mi if al else M[i, ln]
                X[i, ln] = xi if al else x
        for ln in range(L):                              # non-finite or beyond the bound
            al = alive[ln]
            ok = S[ln] <= bound and S[ln] < np.inf
            dstep[ln] = k + 1 if (al and not ok) else dstep[ln]
            alive[ln] = al and ok

    return split_step


def _block_kernel(record, fused_step, split_step, fill, FUSED: bool, FTYPE,
                  D: int, N_DRAWS: int, N_PARAMS: int, N_CALLS: int, L: int, LANES_ORACLE: bool,
                  PAIR: bool):
    """The kernel (plain Python, compiled by the caller): blocks of ``config.BLOCK`` paths in
    independent, ``blk_lo ≤ blk < blk_hi`` (the caller runs ranges on threads); in a block, groups of L lanes run all steps: draws for all lanes
    (``fill``), then for each optimizer the step (``fused_step`` if ``FUSED`` else
    ``split_step``: the other branch is pruned at compile time), and at
    recorded steps ``record``.  Its arguments are those of :func:`run` (the spec's fields,
    cast to FTYPE where they meet the state); it fills the :class:`EngineOutput` arrays."""
    ROWS = rng.n_rows(N_DRAWS)

    def kernel(x0, m0, params, sigma, A, B, Gamma, rec_steps, codes, k0, k1, path0, n_paths,
               draw_kind, r1, r2, bound, block_stats, block_diff, block_bad, x_final, m_final,
               div_step, states, store, blk_lo, blk_hi):
        n_opt, steps = A.shape
        n_rec = rec_steps.shape[0]
        s1 = sigma * r1
        s2 = sigma * r2
        for blk in range(blk_lo, blk_hi):
            X = np.empty((n_opt, D, L), dtype=FTYPE)
            M = np.empty((n_opt, D, L), dtype=FTYPE)
            Z1 = np.empty((ROWS, L), dtype=FTYPE)
            Z2 = np.empty((ROWS if N_CALLS == 2 else 4, L), dtype=FTYPE)
            alive = np.empty((n_opt, L), dtype=np.bool_)
            dstep = np.empty((n_opt, L), dtype=np.int64)
            vals = np.empty((n_opt, codes.shape[0], L))
            raised = np.empty((n_opt, codes.shape[0], L), dtype=np.bool_)
            x_rec = np.empty(D, dtype=FTYPE)
            G = np.empty((D, L), dtype=FTYPE)
            XL = np.empty((D if LANES_ORACLE else 1, L), dtype=FTYPE)
            V = np.empty((D if LANES_ORACLE else 1, L), dtype=FTYPE)
            W = np.empty((D if LANES_ORACLE and N_CALLS == 2 else 1, L), dtype=FTYPE)
            G2 = np.empty((D if LANES_ORACLE and N_CALLS == 2 and not PAIR else 1, L), dtype=FTYPE)
            S = _stack_empty(L, FTYPE)
            x_in = _stack_empty(D, FTYPE)
            x_old = _stack_empty(D, FTYPE)
            x_start = _stack_empty(D, FTYPE)     # x0 on the stack: provably not aliased by X
            for i in range(D):
                x_start[i] = x0[i]
            if N_PARAMS > 0:   # the parameters on the stack too: their loads leave the lane loop
                p = _stack_empty(N_PARAMS, np.float64)
                for i in range(N_PARAMS):
                    p[i] = params[i]
            else:
                p = params
            g = _stack_empty(D, FTYPE)
            v = _stack_empty(D, FTYPE)
            w = _stack_empty(D, FTYPE)
            z = _stack_empty(N_DRAWS, FTYPE)
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
                    record(stats, diffs, bad, vals, raised, states, store, X, alive, x_rec, params, codes, r, p0, nl)
                    r = 1
                for k in range(steps):
                    fill(draw_kind, k0, k1, path0 + p0, k, 0, Z1, N_DRAWS)
                    if N_CALLS == 2:
                        fill(draw_kind, k0, k1, path0 + p0, k, 1, Z2, N_DRAWS)
                    for j in range(n_opt):
                        a = A[j, k]
                        b = B[j, k]
                        gamma = Gamma[j, k]
                        if FUSED:
                            fused_step(a, b, gamma, X[j], M[j], alive[j], dstep[j], k, Z1, Z2,
                                       x_in, x_old, g, v, z, x_start, p, sigma, s1, s2, bound)
                        else:
                            split_step(a, b, gamma, X[j], M[j], alive[j], dstep[j], k, Z1, Z2,
                                       x_in, g, v, w, z, G, S, x_start, p, sigma, s1, s2,
                                       XL, V, W, G2, bound)
                    if r < n_rec and rec_steps[r] == k + 1:
                        record(stats, diffs, bad, vals, raised, states, store, X, alive, x_rec, params, codes, r, p0, nl)
                        r += 1
                for ln in range(nl):
                    for j in range(n_opt):
                        div_step[j, p0 + ln] = dstep[j, ln]
                        for i in range(D):
                            x_final[j, p0 + ln, i] = X[j, i, ln]
                            m_final[j, p0 + ln, i] = M[j, i, ln]

    return kernel


def _both(grad_, noise_, oracle):
    """``both(x, p, xi, g, v)``: one oracle call, gradient into ``g`` and noise into ``v`` —
    the problem's ``oracle`` (inlined) when it has one, else ``grad`` then ``noise``."""
    if oracle is not None:
        return _inline(oracle)

    @numba.njit(inline="always")
    def both(x, p, xi, g, v):
        grad_(x, p, g)
        noise_(x, p, xi, v)

    return both


@numba.njit(inline="always")
def _no_lanes(X, p, Z, G, V):      # pragma: no cover - pruned: LANES_ORACLE is False with it
    """Placeholder for a problem without ``oracle_lanes`` (never called)."""
    pass


@numba.njit(inline="always")
def _no_pair(X, p, Z1, Z2, G, V, W):    # pragma: no cover - pruned: PAIR is False with it
    """Placeholder for a run without ``oracle_pair_lanes`` (never called)."""
    pass


def _make_kernel(grad, noise, loss, user_eval, dtype: str, D: int, N_DRAWS: int, N_PARAMS: int,
                 N_CALLS: int, oracle=None, oracle_lanes=None, oracle_pair_lanes=None):
    """The compiled kernel for these problem functions (``grad``, ``noise``, ``loss`` and the
    optional ``oracle``, ``oracle_lanes``, ``oracle_pair_lanes``), this user-observable
    evaluator, dtype, dimension
    D, draws per call, stacked parameter count and oracle calls per step (module glossary),
    with its disk cache enabled."""
    FTYPE = np.float32 if dtype == "float32" else np.float64
    ZERO = FTYPE(0.0)
    L = LANES
    grad_, noise_, loss_ = _inline(grad), _inline(noise), _inline(loss)
    # oracle_lanes, when the problem has one, for every D (the fused step's one loop is not
    # vectorised over lanes once its body is large: CosineWell(8) ran 2.4x faster split with
    # oracle_lanes), in float64 only: a float32 run rounds the per-lane functions' scratch
    # (written into float32 outputs) where a lanes oracle's float64 scratch would not
    LANES_ORACLE = oracle_lanes is not None and dtype == "float64"
    # SVAG's two calls as one call of oracle_pair_lanes (what they share computed once)
    PAIR = LANES_ORACLE and N_CALLS == 2 and oracle_pair_lanes is not None
    fused_d = takes_fused_step(D, N_DRAWS) and not LANES_ORACLE
    # only the functions the kernel calls enter its key: an oracle_lanes does not change a
    # fused-step kernel, an oracle_pair_lanes a kernel of one call per step
    called = ((grad, noise, loss, user_eval, oracle) + ((oracle_lanes,) if LANES_ORACLE else ())
              + ((oracle_pair_lanes,) if PAIR else ()))
    key = "|".join([fingerprint(f) for f in called]
                   + [dtype, str(D), str(N_DRAWS), str(N_PARAMS), str(N_CALLS), str(L),
                      "fused" if fused_d else "split"])
    unique = unique_names(key_hash(key)[:16])
    record = _recorder(loss_, user_eval, D, unique, _needs_guard(loss, user_eval))
    both_ = _both(grad_, noise_, oracle)
    lanes_ = _inline(oracle_lanes) if LANES_ORACLE else _no_lanes
    fused = _fused_step(both_, noise_, D, N_DRAWS, N_CALLS, L, ZERO)
    pair_ = _inline(oracle_pair_lanes) if PAIR else _no_pair
    split = _split_step(both_, noise_, lanes_, pair_, D, N_DRAWS, N_CALLS, L, ZERO, LANES_ORACLE,
                        PAIR)
    kernel = _block_kernel(record, fused, split, rng.fill_lanes(dtype),
                           fused_d, FTYPE, D, N_DRAWS, N_PARAMS, N_CALLS, L, LANES_ORACLE, PAIR)
    disp = numba.njit(nogil=True, error_model="numpy")(unique(kernel))
    enable_disk_cache(disp, key)
    return disp


def _needs_guard(loss, user_eval) -> bool:
    """Whether the observables must be evaluated under try/except: unless there are no user
    observables and the loss is one of the package's own (``sdeverify.problems``), which
    cannot raise (loops, products and sums; the only divisions are by validated dataset
    sizes n ≥ 1); a user's ``NGOS`` loss or observable may."""
    module = getattr(getattr(loss, "py_func", loss), "__module__", "") or ""
    return not (user_eval is _no_user and module.startswith("sdeverify.problems."))


def takes_fused_step(D: int, N_DRAWS: int) -> bool:
    """Whether the kernel for dimension D and N_DRAWS draws per oracle call takes the fused
    step (:data:`config.FUSE_MAX_DIM`, :data:`config.FUSE_MAX_DRAWS`) — unless the problem
    has an ``oracle_lanes`` (float64), which always takes the split step; all give the same
    bits."""
    return D <= config.FUSE_MAX_DIM and N_DRAWS <= config.FUSE_MAX_DRAWS


def get_kernel(problem, user_funcs: tuple, dtype: str = "float64", n_calls: int = 1):
    """The kernel for this problem's functions, these user observables, this dtype and this
    dimension (built once per process; compiled once per machine thanks to the disk cache)."""
    n_par = problem.params.shape[0]
    n_par = n_par if n_par <= config.STACK_PARAMS else 0
    oracle = getattr(problem, "oracle", None)
    lanes = getattr(problem, "oracle_lanes", None)
    pair = getattr(problem, "oracle_pair_lanes", None)
    key = (problem.grad, problem.noise, problem.loss, oracle, lanes, pair,
           tuple(id(f) for f in user_funcs), dtype, problem.dim, problem.n_draws, n_par, n_calls)
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernel(problem.grad, problem.noise, problem.loss,
                                     user_evaluator(user_funcs), dtype, problem.dim,
                                     problem.n_draws, n_par, n_calls, oracle, lanes, pair)
    return _KERNELS[key]


def run(spec) -> EngineOutput:
    """Run a validated :class:`~sdeverify.engine.spec.RunSpec` on the CPU."""
    dtype = getattr(spec, "dtype", "float64")
    ft = np.dtype(dtype).type
    kernel = get_kernel(spec.problem, spec.user_funcs, dtype, spec.n_calls)
    out = EngineOutput.allocate(spec)
    cast = lambda a: np.ascontiguousarray(a, dtype=ft)
    n_blocks = (spec.paths + BLOCK - 1) // BLOCK
    run_ranges(kernel, n_blocks, cast(spec.x0), cast(spec.m0), spec.problem.params,
               ft(spec.sigma), cast(spec.a), cast(spec.b), cast(spec.gamma), spec.record, spec.codes,
               spec.k0, spec.k1, spec.path_offset, spec.paths, spec.problem.draw_kind,
               ft(spec.r1), ft(spec.r2), ft(spec.bound), out.block_stats, out.block_diff,
               out.block_bad, out.x_final, out.m_final, out.div_step, out.states,
               spec.store_states)
    return out


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
