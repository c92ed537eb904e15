"""Engine throughput, side by side: sdeverify's Numba engine (float64, float32), the same maths
vectorised in NumPy, JAX on CPU (jit over lax.scan, vectorised over paths) and the RNG bound.

Reference workload (issue 5): d = 8 diagonal quadratic, SGD and SGDM (β = 0.9) coupled (they
share the noise), 2**16 paths × 1024 steps, float64, 16 recorded steps, observables loss and
sqnorm.  Throughput counts path·dim·steps per second (each path-step-dimension once, not per
optimizer).  Times are medians of ``--repeats`` runs after a warm-up run.

    python benchmarks/throughput.py                 # everything, ~4 minutes on 2 cores
    python benchmarks/throughput.py --quick         # steps / 8 for the slow baselines
    python benchmarks/throughput.py --only main     # sections: compile main threads scaling memory figure

Prints a report; ``--json FILE`` also saves the numbers; the figure goes to
figures/throughput.png (throughput vs paths per implementation).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


def timed(fn, repeats):
    fn()                                            # warm-up (compile, caches)
    wait_idle(WAIT_IDLE)
    ts, cs = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    return float(np.median(ts)), float(np.median(cs))


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
        t, c = timed(fn, repeats)
        rows[name] = ((count or PATHS * steps * D) / t, t, c, steps)

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
    add("NumPy PCG64 normals alone (1 thread), normals/s", lambda: gen.standard_normal(out=buf), 0,
        count=buf.size)
    print(f"\n== reference workload: d={D} diagonal quadratic, SGD + SGDM(β={BETA}) coupled, "
          f"{PATHS} paths × {STEPS} steps, {N_REC} records, {numba.get_num_threads()} threads ==")
    print(f"{'':48s} {'per second':>10s}   median wall / CPU time")
    for name, (r, t, c, st) in rows.items():
        print(f"{name:48s} {fmt(r)}   {t:7.3f} s / {c:7.3f} s  ({st} steps)")
    ours, ours32 = rows["sdeverify cpu float64"][0], rows["sdeverify cpu float32"][0]
    ratios = {"ours/NumPy": ours / rows["NumPy vectorised float64"][0],
              "ours/RNG bound (float64)": ours / rows["RNG bound float64"][0],
              "ours f32/RNG bound f32": ours32 / rows["RNG bound float32"][0],
              "ours f32/ours f64": ours32 / ours}
    if "JAX jit+scan float64" in rows:
        ratios["ours/JAX"] = ours / rows["JAX jit+scan float64"][0]
        ratios["ours f32/JAX f32"] = ours32 / rows["JAX jit+scan float32"][0]
    for k, v in ratios.items():
        print(f"{k:48s} {v:8.2f}")
    res["main"] = {"rows": {k: {"rate": r, "wall": t, "cpu": c, "steps": st}
                            for k, (r, t, c, st) in rows.items()},
                   "ratios": ratios, "load": load()}


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
    """Parallel efficiency: 1 vs 2 threads (runs interleaved, so that a change in the
    background load hits both).  Wall efficiency T1 / (2 T2) is the target; the CPU-time
    efficiency CPU1 / CPU2 (total CPU seconds for the same work) is robust to other
    processes sharing the machine and measures the parallel overhead alone.  "CPUs busy
    between runs" is what other processes use while we sleep (0% on a dedicated machine)."""
    n = numba.get_num_threads()
    print(f"\n== parallel efficiency, {PATHS} paths × {STEPS // 2} steps: T1 / (2 T2) ==")
    out = {}
    for name, fn in [("sdeverify cpu float64", lambda: run_ours(PATHS, STEPS // 2)),
                     ("sdeverify cpu float32", lambda: run_ours(PATHS, STEPS // 2, dtype="float32")),
                     ("RNG bound float64", lambda: run_bound(PATHS, STEPS // 2))]:
        ts, cs = {1: [], 2: []}, {1: [], 2: []}
        for t_ in (1, 2):
            numba.set_num_threads(t_)
            fn()
        wait_idle(WAIT_IDLE)
        busy = []
        for _ in range(args.repeats):
            for t_ in (1, 2):
                numba.set_num_threads(t_)
                t, c = time.perf_counter(), time.process_time()
                fn()
                ts[t_].append(time.perf_counter() - t)
                cs[t_].append(time.process_time() - c)
            busy.append(busy_fraction(0.5))
        numba.set_num_threads(n)
        t1, t2 = float(np.median(ts[1])), float(np.median(ts[2]))
        c1, c2 = float(np.median(cs[1])), float(np.median(cs[2]))
        eff, ceff = t1 / (2 * t2), c1 / c2
        out[name] = {"t1": t1, "t2": t2, "efficiency": eff, "cpu1": c1, "cpu2": c2,
                     "cpu_efficiency": ceff, "busy_between_runs": float(np.median(busy))}
        print(f"{name:24s} 1 thread {fmt(rate(PATHS, STEPS // 2, D, t1))}  2 threads "
              f"{fmt(rate(PATHS, STEPS // 2, D, t2))}  wall efficiency {100 * eff:5.1f}%   "
              f"CPU-time efficiency {100 * ceff:5.1f}%   (CPUs busy between runs: "
              f"{100 * np.median(busy):.0f}%)")
    res["threads"] = out


def section_scaling(args, res):
    """How time grows with paths, steps and d (ours, float64)."""
    out = {"paths": [], "steps": [], "d": []}
    print("\n== scaling (sdeverify cpu float64) ==")
    for p in [2 ** 10, 2 ** 12, 2 ** 14, 2 ** 16, 2 ** 18]:
        st = 256
        t, _ = timed(lambda: run_ours(p, st), args.repeats)
        out["paths"].append((p, t))
        print(f"paths {p:7d}  steps {st:5d}  d {D:3d}: {t:7.3f} s  {fmt(rate(p, st, D, t))}")
    for st in [128, 512, 2048, 4096]:
        t, _ = timed(lambda: run_ours(PATHS, st), max(1, args.repeats // 2))
        out["steps"].append((st, t))
        print(f"paths {PATHS:7d}  steps {st:5d}  d {D:3d}: {t:7.3f} s  {fmt(rate(PATHS, st, D, t))}")
    for d in [2, 4, 8, 16, 32]:
        st = 256
        t, _ = timed(lambda: run_ours(PATHS, st, d=d), args.repeats)
        tb, _ = timed(lambda: run_bound(PATHS, st, d=d), args.repeats)
        out["d"].append((d, t, tb))
        print(f"paths {PATHS:7d}  steps {st:5d}  d {d:3d}: {t:7.3f} s  {fmt(rate(PATHS, st, d, t))}"
              f"   (RNG bound {fmt(rate(PATHS, st, d, tb))}, ratio {tb / t:.2f})")
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
    curves = {}
    for name, fn in impls.items():
        curves[name] = [rate(p, st, D, timed(lambda: fn(p), 3)[0]) for p in grid]
        print(f"{name:20s} " + " ".join(f"{r / 1e6:7.1f}" for r in curves[name]) + "  M/s")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, ys in curves.items():
        ax.loglog(grid, ys, "o-" if "sdeverify" in name else "s--", label=name)
    ax.set_xlabel("paths")
    ax.set_ylabel("path·dim·steps / s")
    ax.set_title(f"d={D} diagonal quadratic, SGD+SGDM coupled, {st} steps, "
                 f"{numba.get_num_threads()} threads", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = ROOT / "figures" / "throughput.png"
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    res["figure"] = {"paths": grid, "steps": st, "curves": curves}


SECTIONS = {"compile": section_compile, "main": section_main, "accuracy": section_accuracy,
            "threads": section_threads, "scaling": section_scaling, "memory": section_memory,
            "figure": section_figure}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="steps / 8 for NumPy and JAX")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    ap.add_argument("--wait-idle", type=float, default=0.0,
                    help="shared machines: before each timing, wait up to this many seconds "
                         "for the other processes to leave the CPUs idle")
    args = ap.parse_args(argv)
    global WAIT_IDLE
    WAIT_IDLE = args.wait_idle
    try:
        import jax
        jv = jax.__version__
    except ImportError:
        jv = "not installed"
    info = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
            "cpu": numba.config.CPU_NAME or "", "python": platform.python_version(),
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
