"""Engine throughput, side by side: sdeverify's Numba engine (float64, float32), the same maths
vectorised in NumPy, JAX on CPU (jit over lax.scan, vectorised over paths) and the RNG bound.

Reference workload: d = 8 diagonal quadratic, SGD and SGDM (β = 0.9) coupled (they
share the noise), 2**16 paths × 1024 steps, float64, 16 recorded steps, observables loss and
sqnorm.  Throughput counts path·dim·steps per second (each path-step-dimension once, not per
optimizer).  Times are medians of ``--repeats`` runs after a warm-up run.

    python benchmarks/throughput.py                 # everything, ~4 minutes on 2 cores
    python benchmarks/throughput.py --quick         # steps / 8 for the slow baselines
    python benchmarks/throughput.py --only main     # sections: compile main threads scaling memory figure
    python benchmarks/throughput.py --only problems # every built-in problem vs NumPy and the RNG bound
    python benchmarks/throughput.py --only problems --problems Cosine,Diagonal   # some of them
    python benchmarks/throughput.py --ab HEAD~1 --problems Cosine   # interleaved A/B (see --ab-rounds)

Prints a report; ``--json FILE`` also saves the numbers; the figure goes to
figures/throughput.png (throughput vs paths per implementation).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

import sdeverify as sv
from sdeverify import config, rng
from sdeverify.problems import NGOS, Quadratic

ROOT = Path(__file__).resolve().parents[1]
D, PATHS, STEPS, N_REC = 8, 2 ** 16, 1024, 16
LR, BETA, SIGMA = 0.05, 0.9, 1.0


# ---- the workload ------------------------------------------------------------------------------
@numba.njit(cache=True)
def diag_grad(x, p, out):          # L = ½ Σ h_i x_i²: p = [h (d), s (d)]
    for i in range(x.shape[0]):
        out[i] = p[i] * x[i]


@numba.njit(cache=True)
def diag_noise(x, p, xi, out):     # v = s ⊙ ξ
    d = x.shape[0]
    for i in range(d):
        out[i] = p[d + i] * xi[i]


@numba.njit(cache=True)
def diag_loss(x, p):
    s = 0.0
    for i in range(x.shape[0]):
        s += 0.5 * p[i] * x[i] * x[i]
    return s


def curvatures(d):
    return np.linspace(0.5, 2.0, d)


def diag_problem(d=D):
    return NGOS(dim=d, grad=diag_grad, noise=diag_noise, loss=diag_loss,
                params=np.concatenate([curvatures(d), np.ones(d)]), name=f"diag{d}")


def records(steps, n_rec=N_REC):
    return np.arange(1, n_rec + 1) * (steps // n_rec)


def run_ours(paths, steps, d=D, dtype="float64", problem=None):
    problem = problem or diag_problem(d)
    return sv.simulate(problem, [sv.SGD(LR), sv.SGDM(LR, BETA)], np.ones(d), steps=steps,
                       paths=paths, sigma=SIGMA, seed=1, record=records(steps),
                       observables=["loss", "sqnorm"], dtype=dtype)


def run_numpy(paths, steps, d=D):
    """The same maths, vectorised over paths in NumPy (PCG64 normals, in-place updates; no
    divergence check — favourable to NumPy)."""
    gen = np.random.Generator(np.random.PCG64(1))
    h = curvatures(d)
    a = np.array([0.0, BETA])[:, None, None]
    b = np.array([1.0, 1 - BETA])[:, None, None]
    x = np.ones((2, paths, d))
    m = np.zeros((2, paths, d))
    g = np.empty_like(x)
    z = np.empty((paths, d))
    rec = set(records(steps).tolist())
    out = []
    for k in range(steps):
        gen.standard_normal(out=z)
        np.multiply(h, x, out=g)
        g += SIGMA * z
        m *= a
        m += b * g
        x -= LR * m
        if k + 1 in rec:
            out.append(((0.5 * h * x * x).sum(-1).mean(-1), (x * x).sum(-1).mean(-1)))
    return out


def make_jax(paths, steps, d=D, dtype="float64"):
    """JAX on CPU: jit over lax.scan (outer: records, inner: steps), vectorised over paths;
    threefry normals (counter-based, like ours).  None if JAX is not installed."""
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax import lax
    dt = jnp.float64 if dtype == "float64" else jnp.float32
    h = jnp.asarray(curvatures(d), dt)
    a = jnp.asarray([0.0, BETA], dt)[:, None, None]
    b = jnp.asarray([1.0, 1 - BETA], dt)[:, None, None]
    every = steps // N_REC

    def step(carry, k):
        x, m, key = carry
        z = jax.random.normal(jax.random.fold_in(key, k), (paths, d), dt)
        g = h * x + SIGMA * z
        m = a * m + b * g
        return (x - LR * m, m, key), None

    def block(carry, r):
        carry, _ = lax.scan(step, carry, r * every + jnp.arange(every))
        x = carry[0]
        return carry, ((0.5 * h * x * x).sum(-1).mean(-1), (x * x).sum(-1).mean(-1))

    @jax.jit
    def run(key):
        x = jnp.ones((2, paths, d), dt)
        carry, obs = lax.scan(block, (x, jnp.zeros_like(x), key), jnp.arange(N_REC))
        return carry[0], obs

    key = jax.random.PRNGKey(1)
    return lambda: jax.block_until_ready(run(key))


@numba.njit(parallel=True, cache=True)
def _rng_bound(k0, k1, paths, steps, d, f32):
    """Only the draws of the engine (same blocks, lanes, threads), summed to stay alive."""
    n_blocks = (paths + config.BLOCK - 1) // config.BLOCK
    acc = np.zeros(n_blocks)
    for blk in numba.prange(n_blocks):
        rows = 4 * ((d + 3) // 4)
        z64 = np.empty((rows, config.LANES))
        z32 = np.empty((rows, config.LANES), dtype=np.float32)
        s = 0.0
        for p0 in range(blk * config.BLOCK, min((blk + 1) * config.BLOCK, paths), config.LANES):
            for k in range(steps):
                if f32:
                    rng.fill_lanes32(rng.NORMAL, k0, k1, p0, k, 0, z32)
                    s += z32[0, 0]
                else:
                    rng.fill_lanes64(rng.NORMAL, k0, k1, p0, k, 0, z64)
                    s += z64[0, 0]
        acc[blk] = s
    return acc.sum()


def run_bound(paths, steps, d=D, dtype="float64"):
    """The RNG bound: our generator alone, the same normals on the same threads."""
    return _rng_bound(*rng.key_words(1), paths, steps, d, dtype == "float32")


# ---- timing ------------------------------------------------------------------------------------
WAIT_IDLE = 0.0
QUIET = 0.05            # a run is "quiet" when other processes used < 5% of the CPUs during it
HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds():
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - v[4]) / HZ
    except OSError:
        return float("nan")


def measure(fn):
    """(wall s, our CPU s, share of all CPUs used by *other* processes meanwhile)."""
    b, c, t = _busy_seconds(), time.process_time(), time.perf_counter()
    fn()
    t, c = time.perf_counter() - t, time.process_time() - c
    others = max(0.0, _busy_seconds() - b - c) / (t * (os.cpu_count() or 1))
    return t, c, others


class Timing:
    """Repeated runs: medians of wall and CPU time, and of the wall time of the quiet runs."""

    def __init__(self, runs):
        self.runs = runs
        t, c, o = (np.array(x) for x in zip(*runs))
        self.wall, self.cpu, self.others = float(np.median(t)), float(np.median(c)), float(np.median(o))
        self.n_quiet = int(np.sum(o < QUIET))
        self.quiet = float(np.median(t[o < QUIET])) if self.n_quiet else None

    def as_dict(self):
        return {"wall": self.wall, "cpu": self.cpu, "others": self.others, "quiet": self.quiet,
                "n_quiet": self.n_quiet, "runs": self.runs}


def timed(fn, repeats):
    fn()                                            # warm-up (compile, caches)
    wait_idle(WAIT_IDLE)
    return Timing([measure(fn) for _ in range(repeats)])


def rate(paths, steps, d, t):
    return paths * steps * d / t


def fmt(r):
    return f"{r / 1e6:8.1f} M"


def load():
    return os.getloadavg()[0]


def _cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[3] + v[4], sum(v)          # idle + iowait, total


def busy_fraction(dt=1.0):
    """Fraction of all CPUs busy (other processes included) over ``dt`` seconds (Linux)."""
    try:
        i0, t0 = _cpu_times()
        time.sleep(dt)
        i1, t1 = _cpu_times()
        return 1.0 - (i1 - i0) / max(t1 - t0, 1)
    except OSError:
        return float("nan")


def wait_idle(limit_s):
    """On a shared machine: wait (up to limit_s) until other processes use < 10% of the CPUs."""
    if limit_s <= 0:
        return
    t = time.time()
    while time.time() - t < limit_s:
        b = busy_fraction()
        if b < 0.1:
            return
    print(f"  (machine still {100 * busy_fraction():.0f}% busy after {limit_s} s: timing anyway)")


# ---- sections ----------------------------------------------------------------------------------
def section_main(args, res):
    """The reference workload, every implementation side by side."""
    steps_slow = STEPS // 8 if args.quick else STEPS
    rows = {}

    def add(name, fn, steps, repeats=args.repeats, count=None):
        rows[name] = (count or PATHS * steps * D, timed(fn, repeats), steps)

    for dtype in ("float64", "float32"):
        add(f"sdeverify cpu {dtype}", lambda: run_ours(PATHS, STEPS, dtype=dtype), STEPS)
        add(f"RNG bound {dtype}", lambda: run_bound(PATHS, STEPS, dtype=dtype), STEPS)
    dense = Quadratic(np.diag(curvatures(D)))
    add("sdeverify cpu float64, dense Quadratic", lambda: run_ours(PATHS, STEPS, problem=dense), STEPS)
    slow = max(1, args.repeats // 2)
    add("NumPy vectorised float64", lambda: run_numpy(PATHS, steps_slow), steps_slow, slow)
    jx = make_jax(PATHS, steps_slow)
    if jx is None:
        print("JAX not installed (pip install -e .[bench]): JAX skipped")
    else:
        add("JAX jit+scan float64", jx, steps_slow, slow)
        add("JAX jit+scan float32", make_jax(PATHS, steps_slow, dtype="float32"), steps_slow, slow)
    gen = np.random.Generator(np.random.PCG64(0))
    buf = np.empty(2 ** 22)
    add("NumPy PCG64 normals alone (normals/s)", lambda: gen.standard_normal(out=buf), 0,
        count=buf.size)
    print(f"\n== reference workload: d={D} diagonal quadratic, SGD + SGDM(β={BETA}) coupled, "
          f"{PATHS} paths × {STEPS} steps, {N_REC} records, {numba.get_num_threads()} threads ==")
    print("path·dim·steps per second of wall time (median; and median over the quiet runs, when "
          "other processes used < 5% of the CPUs), per CPU-second (robust to sharing), and the "
          "share of the CPUs other processes used during the runs")
    print(f"{'':42s} {'wall':>9s} {'quiet wall':>11s} {'per CPU-s':>10s} {'others':>7s}")
    for name, (work, tm, st) in rows.items():
        q = f"{work / tm.quiet / 1e6:9.1f} M ({tm.n_quiet})" if tm.quiet else f"{'-':>11s}    "
        print(f"{name:42s} {work / tm.wall / 1e6:7.1f} M {q} {work / tm.cpu / 1e6:8.1f} M "
              f"{100 * tm.others:6.0f}%")
    per_cpu = {k: work / tm.cpu for k, (work, tm, st) in rows.items()}
    ratios = {"per CPU-s: ours f64 / NumPy": per_cpu["sdeverify cpu float64"] / per_cpu["NumPy vectorised float64"],
              "per CPU-s: ours f64 / RNG bound f64": per_cpu["sdeverify cpu float64"] / per_cpu["RNG bound float64"],
              "per CPU-s: ours f32 / RNG bound f32": per_cpu["sdeverify cpu float32"] / per_cpu["RNG bound float32"],
              "per CPU-s: ours f32 / ours f64": per_cpu["sdeverify cpu float32"] / per_cpu["sdeverify cpu float64"]}
    if "JAX jit+scan float64" in rows:
        ratios["per CPU-s: ours f64 / JAX f64"] = per_cpu["sdeverify cpu float64"] / per_cpu["JAX jit+scan float64"]
        ratios["per CPU-s: ours f32 / JAX f32"] = per_cpu["sdeverify cpu float32"] / per_cpu["JAX jit+scan float32"]
    for k, v in ratios.items():
        print(f"{k:42s} {v:8.2f}")
    res["main"] = {"rows": {k: dict(work=w, steps=st, **tm.as_dict()) for k, (w, tm, st) in rows.items()},
                   "ratios": ratios, "per_cpu": per_cpu}


def section_accuracy(args, res):
    """float32 vs float64 on the reference workload (same Philox words, float32 arithmetic)."""
    r64, r32 = run_ours(PATHS, STEPS), run_ours(PATHS, STEPS, dtype="float32")
    rel = np.abs(r32.mean - r64.mean) / np.abs(r64.mean)
    sem_rel = r64.sem / np.abs(r64.mean)
    dx = np.abs(r32.x_final.astype(np.float64) - r64.x_final)
    per_path = float(dx.max() / np.abs(r64.x_final).max())
    print(f"\n== float32 accuracy (reference workload) ==\n"
          f"relative error of the mean: loss {rel[..., 0].max():.1e}, sqnorm {rel[..., 1].max():.1e} "
          f"(Monte Carlo relative sem {sem_rel.min():.1e} or more); "
          f"final states: max |x32 - x64| = {per_path:.1e} max |x64|")
    res["accuracy"] = {"rel_err_loss": float(rel[..., 0].max()), "rel_err_sqnorm": float(rel[..., 1].max()),
                       "rel_sem_min": float(sem_rel.min()), "state_err": per_path}


def section_threads(args, res):
    """Parallel efficiency T1 / (2 T2), 1 vs 2 threads, runs interleaved.  On a shared machine
    only pairs of quiet runs count for the wall efficiency; the CPU-time efficiency
    CPU1 / CPU2 (CPU seconds for the same work) is robust to sharing and measures the
    parallel overhead alone."""
    n = numba.get_num_threads()
    work = PATHS * (STEPS // 2) * D
    print(f"\n== parallel efficiency, {PATHS} paths × {STEPS // 2} steps ==")
    out = {}
    for name, fn in [("sdeverify cpu float64", lambda: run_ours(PATHS, STEPS // 2)),
                     ("sdeverify cpu float32", lambda: run_ours(PATHS, STEPS // 2, dtype="float32")),
                     ("RNG bound float64", lambda: run_bound(PATHS, STEPS // 2))]:
        for t_ in (1, 2):
            numba.set_num_threads(t_)
            fn()
        wait_idle(WAIT_IDLE)
        pairs = []
        for _ in range(args.repeats * 2):
            numba.set_num_threads(1)
            m1 = measure(fn)
            numba.set_num_threads(2)
            m2 = measure(fn)
            pairs.append((m1, m2))
        numba.set_num_threads(n)
        quiet = [(a, b) for a, b in pairs if a[2] < QUIET and b[2] < QUIET]
        ceff = float(np.median([a[1] / b[1] for a, b in pairs]))
        weff = float(np.median([a[0] / (2 * b[0]) for a, b in quiet])) if quiet else None
        t1 = float(np.median([a[0] for a, b in (quiet or pairs)]))
        t2 = float(np.median([b[0] for a, b in (quiet or pairs)]))
        out[name] = {"wall_efficiency_quiet": weff, "n_quiet_pairs": len(quiet),
                     "cpu_efficiency": ceff, "t1": t1, "t2": t2, "pairs": pairs}
        w = f"{100 * weff:5.1f}% ({len(quiet)} quiet pairs)" if weff else "  n/a (no quiet pair)"
        print(f"{name:24s} 1 thread {work / t1 / 1e6:7.1f} M  2 threads {work / t2 / 1e6:7.1f} M "
              f"{'(quiet)' if quiet else '(shared)'}  wall efficiency {w}   "
              f"CPU-time efficiency {100 * ceff:5.1f}%")
    res["threads"] = out


def section_scaling(args, res):
    """How time grows with paths, steps and d (ours, float64, all threads)."""
    out = {"paths": [], "steps": [], "d": []}
    print("\n== scaling (sdeverify cpu float64): wall s, CPU s, wall rate, per CPU-s rate ==")

    def show(p, st, d, tm, extra=""):
        w = p * st * d
        print(f"paths {p:7d}  steps {st:5d}  d {d:3d}: {tm.wall:7.3f} s {tm.cpu:7.3f} s "
              f"{w / tm.wall / 1e6:7.1f} M {w / tm.cpu / 1e6:7.1f} M  others {100 * tm.others:3.0f}%{extra}")

    for p in [2 ** 10, 2 ** 12, 2 ** 14, 2 ** 16, 2 ** 18]:
        tm = timed(lambda: run_ours(p, 256), args.repeats)
        out["paths"].append((p, tm.as_dict()))
        show(p, 256, D, tm)
    for st in [128, 512, 2048, 4096]:
        tm = timed(lambda: run_ours(PATHS, st), max(1, args.repeats // 2))
        out["steps"].append((st, tm.as_dict()))
        show(PATHS, st, D, tm)
    for d in [2, 4, 8, 16, 32]:
        tm = timed(lambda: run_ours(PATHS, 256, d=d), args.repeats)
        tb = timed(lambda: run_bound(PATHS, 256, d=d), args.repeats)
        out["d"].append((d, tm.as_dict(), tb.as_dict()))
        show(PATHS, 256, d, tm, f"   RNG bound per CPU-s {PATHS * 256 * d / tb.cpu / 1e6:7.1f} M, "
                                f"ours / bound {tb.cpu / tm.cpu:.2f}")
    res["scaling"] = out


_MEM_SNIPPET = """
import sys
sys.path.insert(0, {bench!r})
import throughput as T
T.{fn}(256, 64)                                   # warm-up: imports, cache load, compile
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")     # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
T.{fn}({paths}, {steps})
print(base, status("VmHWM"))
"""


def section_memory(args, res):
    """Peak resident memory of one run (fresh process each, Linux): must not grow with the
    number of steps.  Peak minus the resident size just before the run."""
    print(f"\n== peak memory of one run, {PATHS} paths, d={D} (fresh process each; MiB) ==")
    out = []
    for fn in ("run_ours", "run_numpy"):
        for st in (256, 1024, 4096) if fn == "run_ours" else (256, 1024):
            code = _MEM_SNIPPET.format(bench=str(ROOT / "benchmarks"), fn=fn, paths=PATHS, steps=st)
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if r.returncode:
                print(f"{fn}: memory measurement unavailable ({r.stderr.strip().splitlines()[-1]})")
                return
            base, peak = (float(v) for v in r.stdout.split())
            out.append((fn, st, base, peak))
            print(f"{fn:10s} steps {st:5d}: run adds {peak - base:7.1f} MiB to {base:7.1f} MiB resident")
    res["memory"] = out


def section_compile(args, res):
    """Cold compile (empty Numba cache) and cached start of ``sdeverify simulate``."""
    exe = Path(sys.executable).with_name("sdeverify")
    cli = [str(exe)] if exe.exists() else \
        [sys.executable, "-m", "sdeverify.cli"] if (ROOT / "sdeverify" / "cli.py").exists() else None
    cmd = (cli + ["simulate", "--paths", "4096", "--steps", "1000", "--quiet"]) if cli else \
        [sys.executable, "-c", "import numpy as np, sdeverify as sv; sv.simulate(sv.problems.Quadratic("
         "np.eye(8)), [sv.SGD(.05), sv.SGDM(.05, .9)], np.ones(8), steps=1000, paths=4096, sigma=1.)"]
    print(f"\n== compile: {' '.join(cmd[1:])} ==")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold (empty cache)", "warm (cached)", "warm (cached) again"):
            t = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            out[label] = time.perf_counter() - t
            print(f"{label:24s} {out[label]:6.2f} s wall, whole command")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sdeverify"], env=env, check=True)
        out["import sdeverify"] = time.perf_counter() - t
        print(f"{'import sdeverify alone':24s} {out['import sdeverify']:6.2f} s")
    res["compile"] = out


def section_figure(args, res):
    """Throughput vs paths for each implementation -> figures/throughput.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    st = 64 if args.quick else 256
    grid = [2 ** k for k in range(8, 19, 2)]
    impls = {"sdeverify float64": lambda p: run_ours(p, st),
             "sdeverify float32": lambda p: run_ours(p, st, dtype="float32"),
             "RNG bound float64": lambda p: run_bound(p, st),
             "NumPy vectorised": lambda p: run_numpy(p, st)}
    jaxes = {}
    if make_jax(256, 64) is not None:
        impls["JAX jit+scan"] = lambda p: jaxes.setdefault(p, make_jax(p, st))()
    curves, cpu_curves = {}, {}
    print(f"\n== throughput vs paths ({st} steps): wall rate / per CPU-s rate, M/s ==")
    print(f"{'paths':20s} " + " ".join(f"{p:>15d}" for p in grid))
    for name, fn in impls.items():
        tms = [timed(lambda: fn(p), 3) for p in grid]
        curves[name] = [p * st * D / tm.wall for p, tm in zip(grid, tms)]
        cpu_curves[name] = [p * st * D / tm.cpu for p, tm in zip(grid, tms)]
        print(f"{name:20s} " + " ".join(f"{a / 1e6:7.1f}/{b / 1e6:7.1f}"
                                        for a, b in zip(curves[name], cpu_curves[name])))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, cs, lab in ((axes[0], curves, "per second of wall time"),
                        (axes[1], cpu_curves, "per CPU-second")):
        for name, ys in cs.items():
            ax.loglog(grid, ys, "o-" if "sdeverify" in name else "s--", label=name)
        ax.set_xlabel("paths")
        ax.set_title(f"path·dim·steps {lab}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("throughput")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"d={D} diagonal quadratic, SGD+SGDM coupled, {st} steps, "
                 f"{numba.get_num_threads()} threads, shared 2-core AMD EPYC (Zen 4)", fontsize=9)
    fig.tight_layout()
    path = ROOT / "figures" / "throughput.png"
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    res["figure"] = {"paths": grid, "steps": st, "wall": curves, "per_cpu": cpu_curves}


# ---- per-problem throughput ---------------------------------------------------------------------
P_PATHS, P_STEPS, P_LR, P_BETA = 2 ** 15, 512, 0.01, 0.9
P_SIGMA = P_LR ** -0.5


def _dense_quadratic(d: int):
    """A dense quadratic of dimension d (H and Σ with off-diagonal entries, fixed seed): the
    per-path oracle is O(d²) and, past the fused step's dimensions, needs the lanes oracle."""
    from sdeverify.problems import Quadratic
    A = np.random.default_rng(0).standard_normal((d, d))
    return Quadratic(A @ A.T / d + 0.1 * np.eye(d), noise_cov=0.5 * np.eye(d) + 0.1)


def builtin_problems():
    """name -> (problem, x0): every built-in problem at d = 8 (and a dense quadratic at
    d = 16), manifolds at the dimensions their checks use; the hand-written diagonal problem of
    the main section for scale."""
    from sdeverify.problems import (SVAG, CosineWell, DiagonalNet, LinearRegression, Quadratic,
                                    Sphere, Valley)
    h = curvatures(D)
    return {
        "hand-written diagonal (reference)": (diag_problem(D), np.ones(D)),
        "Quadratic(np.diag(h))": (Quadratic(np.diag(h)), np.ones(D)),
        "Quadratic(dense, d=16)": (_dense_quadratic(16), np.ones(16)),
        "CosineWell(8)": (CosineWell(D), np.ones(D)),
        "SVAG(CosineWell(8), 4)": (SVAG(CosineWell(D), 4.0), np.ones(D)),
        "LinearRegression(n=256, d=8, B=8)": (LinearRegression.generate(256, D, 8), np.zeros(D)),
        "Valley.label_noise_like (d=2)": (Valley.label_noise_like(h=(1.0, 0.0, 1.0), c=2.0, sx2=0.25),
                                          np.array([0.5, 0.1])),
        "Sphere(3)": (Sphere(3, noise_std=0.8), np.array([1.0, 0.0, 0.0])),
        "DiagonalNet(n=5, D=10) (d=20)": (DiagonalNet.generate(5, 10, 2), np.full(20, 0.5)),
    }


def _numpy_oracle(P):
    """(grad(x), noise(x, z), draw(gen, shape), n_calls, r1, r2): the problem's maths
    vectorised over a leading batch axis (x: (2, paths, d)), from its public attributes."""
    from sdeverify.problems import CosineWell, DiagonalNet, LinearRegression, Quadratic, Sphere, Valley
    normal = lambda gen, shape: gen.standard_normal(shape)
    r1, r2 = P.svag_coefficients
    calls = 1 if P.svag_ell == 1.0 else 2
    if isinstance(P, Quadratic):
        H, S, c = P.hessian, P.noise_sqrt, P.center
        if np.count_nonzero(H - np.diag(np.diag(H))) == 0 and np.count_nonzero(S - np.diag(np.diag(S))) == 0:
            h, s = np.diag(H), np.diag(S)          # what a NumPy user writes for a diagonal H
            return (lambda x: h * (x - c) + P.linear), (lambda x, z: s * z), normal, calls, r1, r2
        return (lambda x: (x - c) @ H.T + P.linear), (lambda x, z: z @ S.T), normal, calls, r1, r2
    if P.grad is diag_grad:
        h, s = P.params[:P.dim], P.params[P.dim:]
        return (lambda x: h * x), (lambda x, z: s * z), normal, calls, r1, r2
    if isinstance(P, CosineWell):
        a = P.amplitude
        return ((lambda x: x - a * np.sin(x)), (lambda x, z: np.sqrt(1.0 + np.sin(x) ** 2) * z),
                normal, calls, r1, r2)
    if isinstance(P, Sphere):
        s = P.noise_std
        return ((lambda x: ((x * x).sum(-1, keepdims=True) - 1.0) * x), (lambda x, z: s * z),
                normal, calls, r1, r2)
    if isinstance(P, Valley):
        pv = np.polynomial.polynomial.polyval
        dh = np.polynomial.polynomial.polyder(P.h)

        def grad(x):
            y = x[..., 1:]
            return np.concatenate([0.5 * pv(x[..., :1], dh) * (y * y).sum(-1, keepdims=True),
                                   pv(x[..., :1], P.h) * y], axis=-1)

        def noise(x, z):
            return np.concatenate([np.sqrt(np.maximum(pv(x[..., :1], P.sx2), 0.0)) * z[..., :1],
                                   np.sqrt(np.maximum(pv(x[..., :1], P.sy2), 0.0)) * z[..., 1:]], axis=-1)
        return grad, noise, normal, calls, r1, r2
    if isinstance(P, DiagonalNet):
        A, yv, n, Dn = P.features, P.targets, P.n, P.D

        def grad(x):
            u, v = x[..., :Dn], x[..., Dn:]
            G = ((u * u - v * v) @ A.T - yv) @ A / n
            return np.concatenate([2.0 * u * G, -2.0 * v * G], axis=-1)

        def noise(x, z):
            zz = z @ A / np.sqrt(n)
            return np.concatenate([-2.0 * x[..., :Dn] * zz, 2.0 * x[..., Dn:] * zz], axis=-1)
        return grad, noise, normal, calls, r1, r2
    if isinstance(P, LinearRegression):
        A, yv, Q, r, B = P.features, P.targets, P.Q, P.r, P.batch_size
        n = A.shape[0]

        def grad(x):
            return x @ Q.T - r

        def noise(x, z):
            j = np.minimum((z[..., :B] * n).astype(np.int64), n - 1)      # (paths, B)
            Aj = A[j]                                                        # (paths, B, d)
            res = np.einsum("pbd,opd->opb", Aj, x) - yv[j]                  # (2, paths, B)
            return np.einsum("pbd,opb->opd", Aj, res) / B - grad(x)
        return grad, noise, (lambda gen, shape: gen.random(shape)), calls, r1, r2
    raise ValueError(f"no NumPy version of {P!r}")


def run_problem_numpy(P, x0, paths, steps):
    """SGD + SGDM(β) coupled (same draws), vectorised over paths in NumPy, with the same
    records and observables (loss, sqnorm) as :func:`run_problem_ours`."""
    grad, noise, draw, calls, r1, r2 = _numpy_oracle(P)
    gen = np.random.Generator(np.random.PCG64(1))
    a = np.array([0.0, P_BETA])[:, None, None]
    b = np.array([1.0, 1.0 - P_BETA])[:, None, None]
    x = np.tile(np.asarray(x0, dtype=np.float64), (2, paths, 1))
    m = np.zeros_like(x)
    rec = set(records(steps).tolist())
    out = []
    for k in range(steps):
        z = draw(gen, (paths, P.n_draws))
        if calls == 1:
            g = grad(x) + P_SIGMA * noise(x, z)
        else:
            g = (grad(x) + (P_SIGMA * r1) * noise(x, z)) + (P_SIGMA * r2) * noise(x, draw(gen, (paths, P.n_draws)))
        m *= a
        m += b * g
        x -= P_LR * m
        if k + 1 in rec:
            out.append((x * x).sum(-1).mean(-1))
    return out


def run_problem_ours(P, x0, paths, steps):
    return sv.simulate(P, [sv.SGD(P_LR), sv.SGDM(P_LR, P_BETA)], x0, steps=steps, paths=paths,
                       sigma=P_SIGMA, seed=1, record=records(steps), observables=["loss", "sqnorm"])


@numba.njit(parallel=True, cache=True)
def _rng_bound_draws(kind, k0, k1, paths, steps, rows, n_calls, n_used=-1):
    """The draws a problem's run makes (its kind, rows, oracle calls per step; ``n_used``:
    its draws per call, as the engine asks the generator for them), alone."""
    n_blocks = (paths + config.BLOCK - 1) // config.BLOCK
    acc = np.zeros(n_blocks)
    for blk in numba.prange(n_blocks):
        z = np.empty((rows, config.LANES))
        s = 0.0
        for p0 in range(blk * config.BLOCK, min((blk + 1) * config.BLOCK, paths), config.LANES):
            for k in range(steps):
                for c in range(n_calls):
                    rng.fill_lanes64(kind, k0, k1, p0, k, c, z, n_used)
                    s += z[0, 0]
        acc[blk] = s
    return acc.sum()


def section_problems(args, res):
    """Each built-in problem: sdeverify vs a NumPy version of the same maths vs the RNG bound.
    Medians of ``--repeats`` runs (3 by default for this section), one process."""
    reps = args.problem_repeats
    steps_np = P_STEPS // 8 if args.quick else P_STEPS
    print(f"\n== per-problem throughput: SGD + SGDM({P_BETA}) coupled, {P_PATHS} paths × {P_STEPS} "
          f"steps (NumPy: {steps_np}), η = {P_LR}, σ = η^-1/2, float64, {numba.get_num_threads()} "
          f"threads; M path·dim·steps/s per CPU-second (wall in brackets), medians of {reps} ==")
    print(f"{'problem':36s} {'d':>3s} {'NumPy':>14s} {'sdeverify':>16s} {'RNG bound':>16s} "
          f"{'vs NumPy':>9s} {'of bound':>9s} {'diverged':>9s}")
    rows = {}
    k0, k1 = rng.key_words(1)
    for name, (P, x0) in builtin_problems().items():
        if not _selected(name, args.problems):
            continue
        d = P.dim
        calls = 1 if P.svag_ell == 1.0 else 2
        ours = timed(lambda: run_problem_ours(P, x0, P_PATHS, P_STEPS), reps)
        bound = timed(lambda: _rng_bound_draws(P.draw_kind, k0, k1, P_PATHS, P_STEPS, rng.n_rows(P.n_draws), calls, P.n_draws), reps)
        run_problem_numpy(P, x0, 256, 4)                                  # warm-up
        npy = Timing([measure(lambda: run_problem_numpy(P, x0, P_PATHS, steps_np)) for _ in range(reps)])
        div = float(np.mean(run_problem_ours(P, x0, P_PATHS, P_STEPS).div_step >= 0))
        w = P_PATHS * P_STEPS * d
        r = {"d": d, "numpy": P_PATHS * steps_np * d / npy.cpu, "ours": w / ours.cpu,
             "bound": w / bound.cpu, "numpy_wall": P_PATHS * steps_np * d / npy.wall,
             "ours_wall": w / ours.wall, "bound_wall": w / bound.wall, "diverged": div,
             "others": max(ours.others, bound.others, npy.others)}
        r["vs_numpy"], r["of_bound"] = r["ours"] / r["numpy"], r["ours"] / r["bound"]
        rows[name] = r
        print(f"{name:36s} {d:3d} {r['numpy'] / 1e6:6.1f} ({r['numpy_wall'] / 1e6:5.1f}) "
              f"{r['ours'] / 1e6:7.1f} ({r['ours_wall'] / 1e6:6.1f}) {r['bound'] / 1e6:7.1f} "
              f"({r['bound_wall'] / 1e6:6.1f}) {r['vs_numpy']:8.1f}× {100 * r['of_bound']:8.0f}% "
              f"{100 * div:8.1f}%", flush=True)
    if "hand-written diagonal (reference)" in rows and "Quadratic(np.diag(h))" in rows:
        ref = rows["hand-written diagonal (reference)"]["ours"]
        q = rows["Quadratic(np.diag(h))"]["ours"]
        print(f"Quadratic(np.diag(h)) / hand-written diagonal: {q / ref:.2f}")
    if rows:
        print(f"others' share of the CPUs during the runs: up to "
              f"{100 * max(r['others'] for r in rows.values()):.0f}%")
    res["problems"] = rows


def _selected(name: str, problems: str | None) -> bool:
    """Whether ``--problems`` (comma list of case-sensitive substrings; empty: all) picks ``name``."""
    return not problems or any(s.strip() and s.strip() in name for s in problems.split(","))


# ---- interleaved A/B of two revisions -----------------------------------------------------------
AB_WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[2])
import sdeverify
assert sdeverify.__file__.startswith(sys.argv[1]), sdeverify.__file__
import throughput as T
probs = T.builtin_problems()
probs["reference workload (d=8 diagonal, 2**16 x 1024)"] = None
for line in sys.stdin:
    name = line.strip()
    if name not in probs:
        print(json.dumps({"error": name}), flush=True)
        continue
    if probs[name] is None:
        fn = lambda: T.run_ours(T.PATHS, T.STEPS)
        work = T.PATHS * T.STEPS * T.D
    else:
        P, x0 = probs[name]
        fn = lambda: T.run_problem_ours(P, x0, T.P_PATHS, T.P_STEPS)
        work = T.P_PATHS * T.P_STEPS * P.dim
    fn()                                         # warm (first use: compile or cache load)
    t, c, o = T.measure(fn)
    print(json.dumps({"wall": t, "cpu": c, "others": o, "work": work}), flush=True)
"""


def ab_main(args) -> None:
    """Interleaved A/B: revision ``--ab`` (extracted with ``git archive`` into a temporary
    folder) against this working tree, one long-lived worker process each, alternating
    A, B, B, A, … per selected problem (``--problems``; the reference workload too with
    ``--ab-reference``); prints per round and the medians of wall and per-CPU-second
    throughput and of B/A, with the load average."""
    import shlex
    import shutil
    import statistics as st
    tmp = tempfile.mkdtemp(prefix="ab_")
    subprocess.run(f"git -C {shlex.quote(str(ROOT))} archive {shlex.quote(args.ab)} | tar -x -C {tmp}",
                   shell=True, check=True)
    here = str(Path(__file__).resolve().parent)
    workers = {}
    for label, tree in (("A", tmp), ("B", str(ROOT))):
        workers[label] = subprocess.Popen(
            [sys.executable, "-c", AB_WORKER, tree, here], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd=tree, env=dict(os.environ, PYTHONPATH=tree))
    names = [n for n in builtin_problems() if _selected(n, args.problems)]
    if args.ab_reference:
        names.append("reference workload (d=8 diagonal, 2**16 x 1024)")
    out = {"A": args.ab, "B": "working tree", "load_start": load(), "rows": {}}
    print(f"A = {args.ab}, B = working tree; M path·dim·steps/s per CPU-second (wall)")
    try:
        for name in names:
            runs = {"A": [], "B": []}
            for r in range(args.ab_rounds):
                order = ("A", "B") if r % 2 == 0 else ("B", "A")
                for label in order:
                    w = workers[label]
                    w.stdin.write(name + "\n")
                    w.stdin.flush()
                    runs[label].append(json.loads(w.stdout.readline()))
            med = {k: {"cpu": st.median(x["work"] / x["cpu"] for x in v),
                       "wall": st.median(x["work"] / x["wall"] for x in v),
                       "others": st.median(x["others"] for x in v)} for k, v in runs.items()}
            # B/A of throughput (same work): A's seconds over B's, paired by round
            ratio_cpu = st.median(a["cpu"] / b["cpu"] for a, b in zip(runs["A"], runs["B"]))
            ratio_wall = st.median(a["wall"] / b["wall"] for a, b in zip(runs["A"], runs["B"]))
            out["rows"][name] = {"runs": runs, "median": med, "B/A cpu": ratio_cpu, "B/A wall": ratio_wall}
            print(f"{name:44s} A {med['A']['cpu'] / 1e6:7.1f} ({med['A']['wall'] / 1e6:6.1f})  "
                  f"B {med['B']['cpu'] / 1e6:7.1f} ({med['B']['wall'] / 1e6:6.1f})  B/A per CPU-s "
                  f"{ratio_cpu:5.3f}, wall {ratio_wall:5.3f}; others {100 * med['B']['others']:.0f}%  "
                  f"load {load():.2f}", flush=True)
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_end"] = load()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))


SECTIONS = {"compile": section_compile, "main": section_main, "accuracy": section_accuracy,
            "threads": section_threads, "scaling": section_scaling, "memory": section_memory,
            "figure": section_figure, "problems": section_problems}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="steps / 8 for NumPy and JAX")
    ap.add_argument("--problem-repeats", type=int, default=3, help="repeats of the problems section")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    ap.add_argument("--wait-idle", type=float, default=0.0,
                    help="shared machines: before each timing, wait up to this many seconds "
                         "for the other processes to leave the CPUs idle")
    ap.add_argument("--problems", default="", help="problems section / --ab: comma list of "
                    "substrings of the problem names (default: all)")
    ap.add_argument("--ab", default=None, metavar="REV", help="interleaved A/B of git revision REV "
                    "(A) against the working tree (B) on the selected problems, then exit")
    ap.add_argument("--ab-rounds", type=int, default=5, help="--ab: timed runs per side and problem")
    ap.add_argument("--ab-reference", action="store_true", help="--ab: also the reference workload")
    args = ap.parse_args(argv)
    if args.ab:
        return ab_main(args)
    global WAIT_IDLE
    WAIT_IDLE = args.wait_idle
    try:
        import jax
        jv = jax.__version__
    except ImportError:
        jv = "not installed"
    import llvmlite.binding as llvm
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"machine": f"{model}, {os.cpu_count()} logical CPUs",
            "cpu": llvm.get_host_cpu_name(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "jax": jv,
            "threads": numba.get_num_threads(), "lanes": config.LANES, "block": config.BLOCK,
            "load_at_start": load()}
    print("sdeverify throughput benchmark:", json.dumps(info))
    res = {"info": info}
    for name in args.only.split(","):
        SECTIONS[name.strip()](args, res)
    res["info"]["load_at_end"] = load()
    print(f"\nload average at start {info['load_at_start']:.2f}, at end {load():.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
