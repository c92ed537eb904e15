"""What fraction of its RNG bound a built-in problem *can* reach: the problem's oracle alone
against the generator alone, on this machine.

The per-problem target of benchmarks/RESULTS.md ("≥ 50% of the RNG bound") compares a
whole run with the generator making that run's draws and nothing else.  A run of SGD and SGDM
coupled (the per-problem workload of ``throughput.py``) makes the draws once per step and
calls the oracle once per optimizer (twice with SVAG's ℓ > 1), so per path·dim·step

    T_run ≥ T_rng + n_opt · n_calls · T_oracle,

whatever the engine does around them (updates, records, divergence checks only add).  The
largest fraction of the bound any engine can reach with the problem's arithmetic is therefore

    F_max = T_rng / (T_rng + n_opt · n_calls · T_oracle),

and ≥ 50% needs n_opt · n_calls · T_oracle ≤ T_rng (with SVAG and an ``oracle_pair_lanes``,
which makes both calls at once, n_calls · T_oracle is the pair's time).  This script measures
both terms the way the CPU engine runs them: the oracle is the problem's ``oracle_lanes``
(its ``oracle_pair_lanes`` with SVAG, when it has one) (float64) over a block
of d × 64 lanes, or its per-path ``oracle`` (``grad`` then ``noise`` without one) in a loop over
the 64 lanes, inlined into a compiled loop with compile-time sizes, fed its own output back so
that nothing is hoisted; T_rng is ``throughput.py``'s bound (the generator filling that
problem's rows, its kind, its calls per step).  One thread, CPU time, medians.

    python benchmarks/oracle_floor.py                      # every built-in problem, ~1 min
    python benchmarks/oracle_floor.py --problems Cosine --json out.json

Prints per problem T_oracle and T_rng (ns per path·dim, per path·dim·step), F_max and, from
the NumPy version of ``throughput.py`` timed here too (per CPU-second), the largest ratio to
NumPy any engine can reach with this oracle, T_numpy / (T_rng + n_opt · n_calls · T_oracle).
The measured fraction of the real engine is ``throughput.py --only problems`` (same workload):
it must come out below F_max, which checks the harness.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as T                                      # noqa: E402

from sdeverify import config, rng                          # noqa: E402
from sdeverify.engine.cpu import _both, _inline, _stack_empty   # noqa: E402

N_OPT = 2                       # SGD and SGDM coupled, as in throughput.py's per-problem workload
L = config.LANES


def _pair_of(P):
    """The problem's ``oracle_pair_lanes`` when the engine would call it (SVAG, with its lanes
    oracle), else None."""
    pair = getattr(P, "oracle_pair_lanes", None)
    return pair if P.svag_ell != 1.0 and getattr(P, "oracle_lanes", None) is not None else None


def oracle_loop(P):
    """A compiled ``loop(X, p, Z, reps)`` running the problem's oracle ``reps`` times over the
    block X (d, L) as the CPU engine runs it (float64), each call fed the previous output
    (with SVAG and an ``oracle_pair_lanes``: the pair, both calls, with Z and Z reversed)."""
    D, N_DRAWS, N_PARAMS = P.dim, P.n_draws, max(1, len(P.params))
    lanes = getattr(P, "oracle_lanes", None)
    pair = _pair_of(P)
    if pair is not None:
        pair_ = _inline(pair)

        def loop(X, p, Z, reps):
            G = np.empty((D, L))
            V = np.empty((D, L))
            W = np.empty((D, L))
            Z2 = Z[::-1].copy()
            q = _stack_empty(N_PARAMS, np.float64)
            for i in range(N_PARAMS):
                q[i] = p[i]
            acc = 0.0
            for _ in range(reps):
                pair_(X, q, Z, Z2, G, V, W)
                acc += G[0, 0] + V[D - 1, L - 1] + W[D - 1, 0]
                X[0, 0] = X[0, 0] + 1e-300 * acc
            return acc
    elif lanes is not None:
        lanes_ = _inline(lanes)

        def loop(X, p, Z, reps):
            G = np.empty((D, L))
            V = np.empty((D, L))
            q = _stack_empty(N_PARAMS, np.float64)  # the parameters on the stack, as in the engine:
            for i in range(N_PARAMS):              # their length is then a compile-time constant
                q[i] = p[i]
            acc = 0.0
            for _ in range(reps):
                lanes_(X, q, Z, G, V)
                acc += G[0, 0] + V[D - 1, L - 1]
                X[0, 0] = X[0, 0] + 1e-300 * acc          # a dependency: nothing is hoisted
            return acc
    else:
        both_ = _both(_inline(P.grad), _inline(P.noise), P.oracle)

        def loop(X, p, Z, reps):
            G = np.empty((D, L))
            V = np.empty((D, L))
            x = _stack_empty(D, np.float64)      # on the stack, as in the engine: in registers
            z = _stack_empty(N_DRAWS, np.float64)
            g = _stack_empty(D, np.float64)
            v = _stack_empty(D, np.float64)
            q = _stack_empty(N_PARAMS, np.float64)
            for i in range(N_PARAMS):              # the parameters on the stack too (the engine's)
                q[i] = p[i]
            acc = 0.0
            for _ in range(reps):
                for ln in range(L):
                    for i in range(D):
                        x[i] = X[i, ln]
                    for i in range(N_DRAWS):
                        z[i] = Z[i, ln]
                    both_(x, q, z, g, v)
                    for i in range(D):
                        G[i, ln] = g[i]
                        V[i, ln] = v[i]
                acc += G[0, 0] + V[D - 1, L - 1]
                X[0, 0] = X[0, 0] + 1e-300 * acc
            return acc
    return numba.njit(error_model="numpy")(loop)


def _cpu(fn, repeats: int) -> float:
    fn()                                                   # compile / warm
    out = []
    for _ in range(repeats):
        c = time.process_time()
        fn()
        out.append(time.process_time() - c)
    return float(np.median(out))


def floor_of(P, x0, reps: int, repeats: int, seed: int = 1, numpy_steps: int = 0) -> dict:
    """T_oracle, T_rng (ns per path·dim per call, per path·dim·step) and F_max for problem P,
    the block's lanes started at x0 plus a small spread (as paths are after a few steps); with
    ``numpy_steps`` also the NumPy version of throughput.py (per CPU-second, that many steps)
    and the largest ratio to it any engine can reach with this oracle, T_numpy / T_run."""
    gen = np.random.default_rng(seed)
    D = P.dim
    X = np.asarray(x0, dtype=np.float64)[:, None] + 0.1 * gen.standard_normal((D, L))
    rows = rng.n_rows(P.n_draws)
    k0, k1 = rng.key_words(seed)
    Z = np.empty((rows, L))
    rng.fill_lanes64(P.draw_kind, k0, k1, 0, 0, 0, Z)       # the problem's own kind of draws
    p = np.ascontiguousarray(P.params, dtype=np.float64)
    loop = oracle_loop(P)
    calls = 1 if P.svag_ell == 1.0 else 2
    paired = _pair_of(P) is not None               # one timed call makes both of SVAG's
    t_oracle = _cpu(lambda: loop(X.copy(), p, Z, reps), repeats) / (reps * L * D)
    if paired:
        t_oracle /= calls                           # per oracle call, as the other rows
    paths, steps = 2 ** 12, 256
    t_rng = _cpu(lambda: T._rng_bound_draws(P.draw_kind, k0, k1, paths, steps, rows, calls, P.n_draws),
                 repeats) / (paths * steps * D)
    need = N_OPT * calls * t_oracle
    out = {"d": D, "calls": calls, "lanes_oracle": getattr(P, "oracle_lanes", None) is not None,
           "pair_oracle": paired, "oracle_ns": 1e9 * t_oracle, "rng_ns": 1e9 * t_rng,
           "oracle_share_ns": 1e9 * need, "f_max": t_rng / (t_rng + need)}
    if numpy_steps:
        t_np = _cpu(lambda: T.run_problem_numpy(P, x0, T.P_PATHS, numpy_steps),
                    max(1, repeats // 2)) / (T.P_PATHS * numpy_steps * D)
        out["numpy_ns"] = 1e9 * t_np
        out["max_vs_numpy"] = t_np / (t_rng + need)     # = F_max × (NumPy time / bound time)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", default=None, help="comma list of substrings of the problem names")
    ap.add_argument("--reps", type=int, default=20000, help="oracle calls per timing")
    ap.add_argument("--repeats", type=int, default=7, help="timings per problem (median)")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    ap.add_argument("--numpy-steps", type=int, default=64,
                    help="steps of the NumPy version (throughput.py's, 2**15 paths; 0: skip it)")
    args = ap.parse_args(argv)
    numba.set_num_threads(1)
    print(f"one thread, CPU time, medians of {args.repeats}; {platform.processor() or platform.machine()}, "
          f"LLVM target {numba.config.CPU_NAME or 'host'}")
    print(f"{'problem':36s} {'d':>3s} {'oracle':>12s} {'per step':>9s} {'RNG':>7s} {'F_max':>6s} "
          f"{'NumPy':>7s} {'max ×NumPy':>10s}")
    print(f"{'':36s} {'':>3s} {'ns/path·dim':>12s} {'×opt×calls':>9s} {'ns':>7s} {'':>6s} {'ns':>7s}")
    rows = {}
    for name, (P, x0) in T.builtin_problems().items():
        if not T._selected(name, args.problems):
            continue
        r = floor_of(P, x0, args.reps, args.repeats, numpy_steps=args.numpy_steps)
        rows[name] = r
        npy = (f"{r['numpy_ns']:7.2f} {r['max_vs_numpy']:9.1f}×" if "numpy_ns" in r else "")
        print(f"{name:36s} {r['d']:3d} {r['oracle_ns']:12.3f} {r['oracle_share_ns']:9.3f} "
              f"{r['rng_ns']:7.3f} {100 * r['f_max']:5.0f}% {npy}"
              f"{'' if r['f_max'] >= 0.5 else '  (< 50%: out of reach with this oracle)'}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.processor(), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
