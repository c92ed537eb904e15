"""The Numba CPU engine: one generic kernel, specialised (and cached) per problem functions.

Work is split over threads in blocks of ``config.BLOCK`` consecutive paths (``prange``);
inside a block each path runs all its steps with its state in a few small buffers allocated
once per block — nothing is allocated in the step loop, and the observables are folded into
the block's (count, mean, M2) accumulators in place.  All optimizers of a call share the
draws of each (path, step): common random numbers.
"""
from __future__ import annotations

import numba
import numpy as np

from .. import config
from ..observables import LOSS, SQNORM, USER0, user_evaluator
from ..rng import fill_draws

BLOCK = config.BLOCK
_KERNELS: dict = {}


def _make_kernel(grad, noise, loss, user_eval):
    @numba.njit(cache=True, inline="always")
    def observe(code, x, params):
        if code >= 0:
            return x[code]
        if code == LOSS:
            return loss(x, params)
        if code == SQNORM:
            s = 0.0
            for i in range(x.shape[0]):
                s += x[i] * x[i]
            return s
        return user_eval(USER0 - code, x)

    @numba.njit(cache=True, inline="always")
    def welford(acc, v):
        c = acc[0] + 1.0
        delta = v - acc[1]
        mean = acc[1] + delta / c
        acc[0] = c
        acc[1] = mean
        acc[2] += delta * (v - mean)

    @numba.njit(cache=True, inline="always")
    def record(stats, diffs, vals, states, store, x, alive, params, codes, r, ip):
        for j in range(x.shape[0]):
            if not alive[j]:
                continue
            if store:
                for i in range(x.shape[1]):
                    states[j, r, ip, i] = x[j, i]
            for o in range(codes.shape[0]):
                vals[j, o] = observe(codes[o], x[j], params)
                welford(stats[j, r, o], vals[j, o])
                if alive[0]:
                    welford(diffs[j, r, o], vals[j, o] - vals[0, o])

    @numba.njit(cache=True, parallel=True)
    def kernel(x0, m0, params, sigma, A, B, G, rec_steps, codes, k0, k1, path0, n_paths,
               n_draws, draw_kind, r1, r2, n_calls, block_stats, block_diff, x_final, m_final,
               div_step, states, store):
        n_opt, steps = A.shape
        d = x0.shape[0]
        n_rec = rec_steps.shape[0]
        n_blocks = (n_paths + BLOCK - 1) // BLOCK
        for blk in numba.prange(n_blocks):
            x = np.empty((n_opt, d))
            m = np.empty((n_opt, d))
            g = np.empty(d)
            v = np.empty(d)
            xi = np.empty(n_draws * n_calls)
            xi1 = xi[:n_draws]
            xi2 = xi[n_draws:]
            alive = np.empty(n_opt, dtype=np.bool_)
            stats = block_stats[blk]
            diffs = block_diff[blk]
            vals = np.empty((n_opt, codes.shape[0]))
            for ip in range(blk * BLOCK, min((blk + 1) * BLOCK, n_paths)):
                gp = path0 + ip
                for j in range(n_opt):
                    alive[j] = True
                    div_step[j, ip] = -1
                    for i in range(d):
                        x[j, i] = x0[i]
                        m[j, i] = m0[j, i]
                r = 0
                if n_rec > 0 and rec_steps[0] == 0:
                    record(stats, diffs, vals, states, store, x, alive, params, codes, 0, ip)
                    r = 1
                for k in range(steps):
                    fill_draws(draw_kind, k0, k1, gp, k, 0, xi1)
                    if n_calls == 2:
                        fill_draws(draw_kind, k0, k1, gp, k, 1, xi2)
                    for j in range(n_opt):
                        if not alive[j]:
                            continue
                        xj = x[j]
                        mj = m[j]
                        grad(xj, params, g)
                        noise(xj, params, xi1, v)
                        if n_calls == 2:
                            for i in range(d):
                                g[i] += sigma * r1 * v[i]
                            noise(xj, params, xi2, v)
                            for i in range(d):
                                g[i] += sigma * r2 * v[i]
                        else:
                            for i in range(d):
                                g[i] += sigma * v[i]
                        a = A[j, k]
                        b = B[j, k]
                        lr = G[j, k]
                        s = 0.0
                        for i in range(d):
                            mj[i] = a * mj[i] + b * g[i]
                            xj[i] -= lr * mj[i]
                            s += xj[i]
                        if not np.isfinite(s):
                            alive[j] = False
                            div_step[j, ip] = k + 1
                    if r < n_rec and rec_steps[r] == k + 1:
                        record(stats, diffs, vals, states, store, x, alive, params, codes, r, ip)
                        r += 1
                for j in range(n_opt):
                    for i in range(d):
                        x_final[j, ip, i] = x[j, i]
                        m_final[j, ip, i] = m[j, i]

    return kernel


def get_kernel(problem, user_funcs: tuple):
    """The kernel for this problem's functions and these user observables (built once)."""
    key = (problem.grad, problem.noise, problem.loss, tuple(id(f) for f in user_funcs))
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernel(problem.grad, problem.noise, problem.loss,
                                     user_evaluator(user_funcs))
    return _KERNELS[key]


def run(spec) -> dict:
    """Run a validated :class:`~sdeverify.engine.spec.RunSpec` on the CPU."""
    kernel = get_kernel(spec.problem, spec.user_funcs)
    out = spec.allocate()
    kernel(spec.x0, spec.m0, spec.problem.params, spec.sigma, spec.A, spec.B, spec.G,
           spec.record, spec.codes, spec.k0, spec.k1, spec.path_offset, spec.paths,
           spec.problem.n_draws, spec.problem.draw_kind, spec.r1, spec.r2, spec.n_calls,
           out["block_stats"], out["block_diff"], out["x_final"], out["m_final"], out["div_step"],
           out["states"], spec.store_states)
    return out
