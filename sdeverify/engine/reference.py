"""The slow, obviously-right NumPy reference engine: an independent implementation that the
compiled engines are checked against.

Same maths as the compiled engines, written as plain loops: draws from the NumPy twin of the
counter-based generator, the problem's functions run as plain Python (``py_func``; its
``oracle`` for the first call of a step when it has one, as the compiled engines do), the
same per-block Welford accumulation.  Used by the tests to cross-check every kernel; meant
for small sizes only.
"""
from __future__ import annotations

import numpy as np

from .. import config
from ..observables import UserFunctionError, evaluate_py, welford
from ..rng import draws_numpy
from .output import EngineOutput


def run(spec) -> EngineOutput:
    out = EngineOutput.allocate(spec)
    p = spec.problem
    grad, noise, loss = p.grad.py_func, p.noise.py_func, p.loss.py_func
    oracle = getattr(p, "oracle", None)
    oracle = None if oracle is None else oracle.py_func
    n_opt, d = spec.a.shape[0], spec.x0.shape[0]
    paths = np.arange(spec.path_offset, spec.path_offset + spec.paths)
    x = np.tile(spec.x0, (spec.paths, n_opt, 1))
    m = np.tile(spec.m0, (spec.paths, 1, 1))
    alive = np.ones((spec.paths, n_opt), dtype=bool)
    out.div_step[:] = -1
    g = np.empty(d)
    v = np.empty(d)
    rec_slot = {int(s): r for r, s in enumerate(spec.record)}

    def record(r):
        vals = np.empty((n_opt, spec.codes.shape[0]))
        for ip in range(spec.paths):
            blk = ip // config.BLOCK
            for j in range(n_opt):
                if not alive[ip, j]:
                    continue
                if spec.store_states:
                    out.states[j, r, ip] = x[ip, j]
                for o, code in enumerate(spec.codes):
                    try:
                        v = evaluate_py(int(code), x[ip, j],
                                        lambda: loss(x[ip, j], p.params), spec.user_funcs)
                    except Exception as exc:
                        raise UserFunctionError(
                            f"observable {spec.obs_names[o]!r} raised {type(exc).__name__}: {exc} "
                            f"(optimizer {spec.names[j]!r}, path {spec.path_offset + ip}, "
                            f"step {int(spec.record[r])})") from exc
                    vals[j, o] = v
                    if not np.isfinite(v):
                        out.block_bad[blk, j, r, o, 0] += 1.0
                        continue
                    welford.py_func(out.block_stats[blk, j, r, o], v)
                    if alive[ip, 0] and np.isfinite(vals[0, o]):
                        welford.py_func(out.block_diff[blk, j, r, o], v - vals[0, o])

    if 0 in rec_slot:
        record(rec_slot[0])
    for k in range(spec.steps):
        xi1 = draws_numpy(p.draw_kind, spec.seed, paths, k, 0, p.n_draws)
        xi2 = draws_numpy(p.draw_kind, spec.seed, paths, k, 1, p.n_draws) if spec.n_calls == 2 else None
        for ip in range(spec.paths):
            for j in range(n_opt):
                if not alive[ip, j]:
                    continue
                if oracle is None:
                    grad(x[ip, j], p.params, g)
                    noise(x[ip, j], p.params, xi1[ip], v)
                else:
                    oracle(x[ip, j], p.params, xi1[ip], g, v)
                if xi2 is None:
                    g += spec.sigma * v
                else:
                    g += spec.sigma * spec.r1 * v
                    noise(x[ip, j], p.params, xi2[ip], v)
                    g += spec.sigma * spec.r2 * v
                m[ip, j] = spec.a[j, k] * m[ip, j] + spec.b[j, k] * g
                x[ip, j] -= spec.gamma[j, k] * m[ip, j]
                ax = np.abs(x[ip, j])           # not finite (inf too when bound = inf), or beyond
                if not (np.all(ax <= spec.bound) and np.all(ax < np.inf)):
                    alive[ip, j] = False
                    out.div_step[j, ip] = k + 1
        if k + 1 in rec_slot:
            record(rec_slot[k + 1])
    out.x_final[:] = x.transpose(1, 0, 2)
    out.m_final[:] = m.transpose(1, 0, 2)
    return out
