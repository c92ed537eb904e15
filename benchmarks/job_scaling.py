"""The whole job on local Dask clusters of 1 and 2 workers: ``sdeverify check --SIZE
--workers N``, wall-clock, parallel efficiency T(1 worker) / (2 T(2 workers)), and every
check's data bitwise the same in both runs.

    PYTHONPATH=. python benchmarks/job_scaling.py [--size full] [--workers 1,2]
        [--only A,B,...] [--jobs K] [--out DIR] [--json benchmarks/results/job_scaling_full.json]

Each run is the CLI exactly as a user types it (``python -m sdeverify check --full --workers N
--quiet --out DIR/wN``), one after the other, in a fresh process; the Numba disk cache is
whatever the machine has (run ``sdeverify check --smoke`` and once ``--data conv_teacher
--smoke`` first so that no run pays for compiling: a cold kernel in one run only would bias
the ratio).  Per run: wall seconds, the CPU seconds of the run's process tree (the CLI, its
Dask scheduler, nannies and workers: ``RUSAGE_CHILDREN``), the CPU seconds of the driver
process alone (the CLI run through ``benchmarks/driver_cpu.py``: its check threads, kept
items, statistics, figures, saved points and the in-process scheduler), the megabytes of
points each check left (``--keep-points``), with ``--external`` the CPU
seconds of a scheduler started apart (its workers are then not children: their CPU counts in
"others", and the run's CPU seconds are the CLI's alone), the tasks each check sent (``summary.json``'s
``cluster``), and the CPU seconds every *other*
process used meanwhile as a share of the machine ("others", from /proc/stat) — the
efficiency is only meaningful when "others" is near 0.  Per check: its wall time in each run
(``summary.json``) — with the checks side by side on the cluster (the CLI's default; ``--jobs
1`` passes ``--jobs 1``: one after the other) these overlap, so their ratios say how long each
check waited, not how it scales.  The data of each check must be equal bitwise between the runs (timing
arrays excepted, ``files.TIMING``); the script says which are not.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdeverify.checkrun import load_check  # noqa: E402
from sdeverify.files import TIMING  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dask_scaling import busy_seconds  # noqa: E402  (/proc/stat, the same measure)
from driver_cpu import parse as parse_driver  # noqa: E402


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def points_mb(out: Path) -> dict:
    """Check name → megabytes of the points it left under ``out/points`` (``--keep-points``)."""
    base = out / "points"
    if not base.is_dir():
        return {}
    return {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 1e6
            for d in sorted(base.iterdir()) if d.is_dir()}


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def external_cluster(workers: int, folder: Path) -> Iterator[tuple[str, Callable[[], float]]]:
    """A Dask scheduler and ``workers`` one-thread workers in processes of their own, started
    with Dask's command line as a user would (``dask scheduler``, ``dask worker --nthreads 1
    --nworkers N``, Numba and BLAS at one thread); yields the scheduler's address and a function
    giving the scheduler process's CPU seconds so far; stops them on leaving."""
    import signal
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "scheduler.json"
    info.unlink(missing_ok=True)
    dask_cli = str(Path(sys.executable).parent / "dask")
    one = {v: "1" for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                            "MKL_NUM_THREADS")}
    env = dict(os.environ, PYTHONPATH=str(ROOT), **one)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    sched = subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0",
                              "--no-dashboard", "--scheduler-file", str(info)], **quiet)
    procs = [sched]
    try:
        for _ in range(600):
            if info.exists() and info.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        procs.append(subprocess.Popen([dask_cli, "worker", address, "--nthreads", "1",
                                       "--nworkers", str(workers), "--no-dashboard"], **quiet))
        from distributed import Client
        with Client(address) as c:
            c.wait_for_workers(workers, timeout=120)
        yield address, lambda: proc_cpu(sched.pid)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def run_job(size: str, workers: int, out: Path, only: str | None, jobs: int | None = None,
            keep_points: bool = False, scheduler: str | None = None) -> dict:
    """One ``sdeverify check`` on ``workers`` local Dask workers into ``out`` (``--jobs
    jobs`` checks at a time when given; on the running scheduler ``scheduler`` instead of a
    cluster of its own when given); its timings."""
    where = ["--workers", str(workers)] if scheduler is None else ["--scheduler", scheduler]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "driver_cpu.py"), "check", f"--{size}",
           *where, "--quiet", "--out", str(out)]
    if only:
        cmd += ["--only", only]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    if keep_points:
        cmd += ["--keep-points"]
    load = os.getloadavg()
    b, c, t = busy_seconds(), children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.perf_counter() - t
    ours = children_cpu() - c
    others = max(0.0, busy_seconds() - b - ours) / (wall * (os.cpu_count() or 1))
    summary = json.loads((out / "summary.json").read_text())
    checks = {e["name"]: e.get("wall_time") for e in summary.get("checks", [])}
    cluster = {e["name"]: e.get("cluster") for e in summary.get("checks", []) if e.get("cluster")}
    return {"workers": workers, "wall_s": wall, "cpu_s": ours, "others": others,
            "load_before": load, "load_after": os.getloadavg(), "exit": proc.returncode,
            "passed": summary.get("passed"), "checks_s": checks,
            "job_wall_s": summary.get("wall_time"), "driver": parse_driver(proc.stderr),
            "cluster": cluster, "tasks": sum(c.get("tasks", 0) for c in cluster.values()),
            "points_mb": points_mb(out), "stderr_tail": proc.stderr[-2000:]}


def differing(a: Path, b: Path) -> dict:
    """Check name → data keys not bitwise equal between two output folders (timing arrays
    excepted; a check missing from one folder is listed with ``["<missing>"]``)."""
    ra, rb = load_check(a).results, load_check(b).results
    bad = {}
    for name in sorted(set(ra) | set(rb)):
        if name not in ra or name not in rb:
            bad[name] = ["<missing>"]
            continue
        x, y = ra[name].data, rb[name].data
        keys = sorted(k for k in set(x) | set(y) if not TIMING.fullmatch(k))
        diff = []
        for k in keys:
            if k not in x or k not in y:
                diff.append(k)
                continue
            u, v = np.asarray(x[k]), np.asarray(y[k])
            if not np.array_equal(u, v, equal_nan=u.dtype.kind in "fc" and v.dtype.kind in "fc"):
                diff.append(k)
        if diff:
            bad[name] = diff
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="full", choices=("smoke", "quick", "full"))
    ap.add_argument("--workers", default="1,2", help="comma list, run in this order (default 1,2)")
    ap.add_argument("--only", default=None, help="comma list of checks (default: the whole job)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="checks at a time on the cluster (default: the CLI's, all side by side)")
    ap.add_argument("--external", action="store_true",
                    help="run on a scheduler and workers started apart (dask scheduler / dask "
                         "worker), through --scheduler: the driver's CPU is then the CLI's alone, "
                         "and the scheduler's is measured apart")
    ap.add_argument("--keep-points", action="store_true",
                    help="keep every check's points and report their megabytes")
    ap.add_argument("--out", default="/tmp/sdeverify-job-scaling")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    base = Path(args.out)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.size}, workers {counts}", flush=True)
    runs = []
    for w in counts:
        if args.external:
            with external_cluster(w, base / f"scheduler{w}") as (address, sched_cpu):
                c0 = sched_cpu()
                r = run_job(args.size, w, base / f"w{w}", args.only, args.jobs,
                            args.keep_points, scheduler=address)
                r["scheduler_cpu_s"] = sched_cpu() - c0
            print(f"    external scheduler: {r['scheduler_cpu_s']:.1f} CPU-s", flush=True)
        else:
            r = run_job(args.size, w, base / f"w{w}", args.only, args.jobs, args.keep_points)
        runs.append(r)
        drv = r["driver"] or {}
        print(f"  {w} worker(s): {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} CPU-s (driver "
              f"{drv.get('driver_cpu_s', float('nan')):.1f}), others "
              f"{100 * r['others']:.0f}%, load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}, "
              f"exit {r['exit']}, passed {r['passed']}", flush=True)
        if r["tasks"] and drv.get("driver_cpu_s"):
            print(f"    {r['tasks']} tasks; driver CPU per task (all of it, an upper bound): "
                  f"{1e3 * drv['driver_cpu_s'] / r['tasks']:.1f} ms")
        if r["points_mb"]:
            print("    points (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in r["points_mb"].items()))
    out = {"size": args.size, "only": args.only, "jobs": args.jobs, "cpus": os.cpu_count(), "runs": runs}
    t = {r["workers"]: r["wall_s"] for r in runs}
    if 1 in t and 2 in t:
        out["efficiency_2"] = t[1] / (2 * t[2])
        print(f"T1/(2 T2) = {100 * out['efficiency_2']:.1f}%")
        per = {}
        w1, w2 = runs[counts.index(1)]["checks_s"], runs[counts.index(2)]["checks_s"]
        for name in w1:
            if w1[name] and w2.get(name):
                per[name] = {"w1_s": w1[name], "w2_s": w2[name], "efficiency": w1[name] / (2 * w2[name])}
                print(f"    {name:24s} {w1[name]:7.1f} s  {w2[name]:7.1f} s  {100 * per[name]['efficiency']:5.1f}%")
        out["per_check"] = per
    if len(counts) > 1:
        bad = differing(base / f"w{counts[0]}", base / f"w{counts[1]}")
        out["differing"] = bad
        print("data bitwise equal between the runs" if not bad else f"DATA DIFFER: {bad}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
