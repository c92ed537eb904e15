"""Parallel efficiency of a full-size check on 1 and 2 local Dask workers, and the
scheduler's overhead per task.

    PYTHONPATH=. python benchmarks/dask_scaling.py [--check variance_reduction] [--size full]
        [--repeats 3] [--baseline-repeats N] [--json benchmarks/results/dask_scaling.json]

* **Scaling.**  The check's ``run()`` (every ``simulate``/``fit`` call of its sweep) inside
  ``sdeverify.distributed.use(client, points_dir=...)`` — what ``sdeverify check --only NAME
  --workers N`` does — on a ``LocalCluster`` of 1 and of 2 worker processes (1 thread each,
  ``NUMBA_NUM_THREADS=1``), timed alternately (1, 2, 1, 2, ...) after one untimed warm-up run
  per cluster (kernels loaded in every worker); next to the same run in this process without
  Dask on 1 Numba thread (the serial baseline) and on 2 threads (today's ``check``).
  Parallel efficiency = T(1 worker) / (2 T(2 workers)), from the medians.  Each run's
  results must equal the serial run's bitwise (checked).
* **Overhead per task.**  The round trip of a task that does nothing but receive a real
  shard's spec (same problem, optimizers and arguments, pickled as for a real shard) and
  return: one at a time (latency), and 400 submitted at once (throughput: wall / 400).
  Compared with the compute time of the default shard of the workload (sum of the shards'
  ``wall_time`` / number of tasks).
* **Warm-up.**  The first shard a fresh worker process runs (kernel loaded from Numba's
  disk cache, or compiled when the cache is cold) against its second.

The machine is shared: the CPU seconds used by other processes during each run are measured
from /proc/stat (all busy time minus this process and its workers) and reported as a share
of the machine ("others").
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numba  # noqa: E402

from sdeverify import config, experiments  # noqa: E402
from sdeverify import distributed as D  # noqa: E402


def busy_seconds() -> float:
    """CPU seconds all processes have spent busy (user + nice + system + irq), /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds() -> float:
    return time.process_time()


def workers_cpu(client) -> float:
    return 0.0 if client is None else float(sum(client.run(_cpu_seconds).values()))


def timed_run(name: str, size: str, client, points: Path | None):
    """(wall, others, result, session, our CPU seconds, worker utilisation) of one run of
    the check; utilisation = seconds the workers spent computing tasks (Dask's task stream)
    / (workers × wall)."""
    mod = experiments.get(name)
    b, c0, w0, t = busy_seconds(), time.process_time(), workers_cpu(client), time.perf_counter()
    util = None
    if client is None:
        res, s = mod.run(size=size, seed=0), None
    else:
        from distributed import get_task_stream
        with D.use(client, points_dir=points) as s, get_task_stream(client) as ts:
            res = mod.run(size=size, seed=0)
    wall = time.perf_counter() - t
    ours = time.process_time() - c0 + workers_cpu(client) - w0
    others = max(0.0, busy_seconds() - b - ours) / (wall * (os.cpu_count() or 1))
    if client is not None:
        busy = sum(ss["stop"] - ss["start"] for task in ts.data for ss in task["startstops"]
                   if ss["action"] == "compute")
        util = busy / (D.n_workers(client) * wall)
    return wall, others, res, s, ours, util


def same(a, b) -> bool:
    """Every data array of two experiment results equal, bitwise (NaN equal to NaN)."""
    def eq(x, y):
        x, y = np.asarray(x), np.asarray(y)
        return np.array_equal(x, y, equal_nan=x.dtype.kind in "fc" and y.dtype.kind in "fc")
    return sorted(a.data) == sorted(b.data) and all(eq(a.data[k], b.data[k]) for k in a.data)


def _noop(kind, args, start, count):
    return count


def overhead(client, point, n_burst: int = 400, n_seq: int = 100) -> dict:
    """Round trip of a task carrying ``point``'s real spec that does nothing."""
    start, count = point.shards[0]
    client.submit(_noop, point.kind, point.args, start, count, pure=False).result()
    seq = []
    for _ in range(n_seq):
        t = time.perf_counter()
        client.submit(_noop, point.kind, point.args, start, count, pure=False).result()
        seq.append(time.perf_counter() - t)
    t = time.perf_counter()
    fs = [client.submit(_noop, point.kind, point.args, start, count, pure=False)
          for _ in range(n_burst)]
    client.gather(fs)
    burst = (time.perf_counter() - t) / n_burst
    return {"latency_median_s": float(np.median(seq)), "latency_p90_s": float(np.percentile(seq, 90)),
            "burst_per_task_s": burst, "n_seq": n_seq, "n_burst": n_burst}


def first_vs_second_task(point) -> dict:
    """A fresh 1-worker cluster: the round trip of its first shard and of the same shard again."""
    with D.cluster(workers=1) as client:
        out = []
        for _ in range(2):
            t = time.perf_counter()
            client.submit(D.run_shard, point.kind, point.args, *point.shards[0], pure=False).result()
            out.append(time.perf_counter() - t)
    return {"first_s": out[0], "second_s": out[1]}


def projection(points_dir: Path, driver_s: float, latency_s: float,
               workers=(1, 2, 4, 8, 16, 32, 64, 128)) -> dict:
    """Wall time of the same sweep on W workers, predicted from its saved points.

    The checks run their points one after the other; point p (single-core compute C_p, the
    sum of its shards' ``wall_time``) is cut by :func:`sdeverify.distributed.plan_shards`
    for W workers into n_p shards and takes ceil(n_p / W) · C_p / n_p + one task latency.
    Add the driver's own serial time (theory, statistics, saving: serial wall − Σ C_p).
    Assumes equal shards, no contention and a scheduler that keeps up (see the text)."""
    from sdeverify.result import SimulationResult
    pts = []
    for f in sorted(points_dir.glob("simulate-*.json")):
        r = SimulationResult.load(f.with_suffix(""))
        m = r.meta
        unit = m["steps_total"] * len(r.optimizers) * m["dim"] * (1 if m.get("svag_ell", 1) == 1 else 2)
        pts.append((m["wall_time"], r.paths, unit))
    total = sum(c for c, _, _ in pts)
    out = {"points": len(pts), "compute_s": total, "driver_s": driver_s}
    for w in workers:
        wall = driver_s
        tasks = 0
        for c, paths, unit in pts:
            n = len(D.plan_shards(paths, unit, w, block=config.BLOCK))
            tasks += n
            wall += -(-n // w) * c / n + latency_s
        out[w] = {"wall_s": wall, "speedup": (driver_s + total) / wall,
                  "efficiency": (driver_s + total) / (w * wall), "tasks": tasks}
    return out


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", default="variance_reduction")
    ap.add_argument("--size", default="full", choices=("smoke", "quick", "full"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-repeats", type=int, default=None,
                    help="runs of the serial and local baselines (default: --repeats; the "
                         "efficiency uses only the Dask runs)")
    ap.add_argument("--warmup", default="full", choices=("smoke", "quick", "full"),
                    help="size of the untimed warm-up run (kernels compiled / loaded)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; dask {__import__('dask').__version__}; "
          f"{args.check} --{args.size}, {args.repeats} repeats", flush=True)
    print(f"load before: {load()}", flush=True)
    out = {"check": args.check, "size": args.size, "repeats": args.repeats, "warmup": args.warmup,
           "machine": {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
                       "dask": __import__("dask").__version__, "numba": numba.__version__},
           "load_before": load(), "min_task_work": D.MIN_TASK_WORK,
           "shards_per_worker": D.SHARDS_PER_WORKER}
    tmp = Path(tempfile.mkdtemp(prefix="dask_scaling."))

    # serial baselines in this process (no Dask): 1 and 2 Numba threads
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    timed_run(args.check, args.warmup, None, None)                   # warm-up (compile)
    print(f"load at start: {load()}", flush=True)
    n_base = args.repeats if args.baseline_repeats is None else max(1, args.baseline_repeats)
    serial = [timed_run(args.check, args.size, None, None) for _ in range(n_base)]
    ref = serial[0][2]
    numba.set_num_threads(min(2, before))
    local2 = [timed_run(args.check, args.size, None, None) for _ in range(n_base)]
    numba.set_num_threads(before)

    rows = {1: [], 2: []}
    sessions = {}
    with D.Cluster(workers=1) as c1, D.Cluster(workers=2) as c2:
        clients = {1: c1.start(), 2: c2.start()}
        for n, cl in clients.items():                                 # warm-up: kernels loaded
            timed_run(args.check, args.warmup, cl, None)
        for rep in range(args.repeats):
            for n, cl in clients.items():
                pts = tmp / f"w{n}-{rep}"
                wall, others, res, s, cpu_s, util = timed_run(args.check, args.size, cl, pts)
                if not same(res, ref):
                    raise SystemExit(f"{n} workers: results differ from the serial run")
                rows[n].append((wall, others, cpu_s, util))
                sessions[n] = s
                print(f"  {n} worker(s): {wall:.2f} s (others {100 * others:.0f}%), CPU "
                      f"{cpu_s:.1f} s, workers busy {100 * util:.0f}%, {s.computed} points, "
                      f"{s.tasks} tasks", flush=True)
        # the workload's default shard: compute time per task, from the saved points
        shard_time = {}
        for n in (1, 2):
            from sdeverify.result import SimulationResult
            files = sorted((tmp / f"w{n}-0").glob("simulate-*.json"))
            total = sum(SimulationResult.load(f.with_suffix("")).meta["wall_time"] for f in files)
            shard_time[n] = total / max(sessions[n].tasks, 1)
        # overhead of one task carrying a real spec (the first point of the check's sweep)
        point = _first_point(args.check, args.size, clients[2])
        ov = overhead(clients[2], point)
    warm = first_vs_second_task(point)
    compute1 = shard_time[1] * sessions[1].tasks
    proj = projection(tmp / "w1-0", max(0.0, float(np.median([x[0] for x in serial])) - compute1),
                      ov["latency_median_s"])

    med = lambda xs: float(np.median([x[0] for x in xs]))
    t_serial, t_local2 = med(serial), med(local2)
    t1, t2 = med(rows[1]), med(rows[2])
    eff = t1 / (2 * t2)
    out.update({
        "serial_1thread_s": [x[0] for x in serial], "local_2threads_s": [x[0] for x in local2],
        "serial_others": [x[1] for x in serial], "local2_others": [x[1] for x in local2],
        "serial_cpu_s": [x[4] for x in serial],
        "workers_1_cpu_s": [x[2] for x in rows[1]], "workers_2_cpu_s": [x[2] for x in rows[2]],
        "workers_1_busy": [x[3] for x in rows[1]], "workers_2_busy": [x[3] for x in rows[2]],
        "workers_1_s": [x[0] for x in rows[1]], "workers_2_s": [x[0] for x in rows[2]],
        "workers_1_others": [x[1] for x in rows[1]], "workers_2_others": [x[1] for x in rows[2]],
        "median_s": {"serial_1thread": t_serial, "local_2threads": t_local2, "workers_1": t1,
                     "workers_2": t2},
        "parallel_efficiency": eff, "dask_1worker_over_serial": t1 / t_serial,
        "points": sessions[2].computed, "tasks": {1: sessions[1].tasks, 2: sessions[2].tasks},
        "mean_task_compute_s": shard_time, "overhead": ov,
        "overhead_share_of_task": {n: ov["latency_median_s"] / shard_time[n] for n in (1, 2)},
        "first_task": warm, "projection": proj, "load_after": load()})
    print(f"serial (1 thread, no Dask)   {t_serial:8.2f} s")
    print(f"local (2 threads, no Dask)   {t_local2:8.2f} s")
    print(f"Dask, 1 worker               {t1:8.2f} s   ({t1 / t_serial:.3f}x the serial run)")
    print(f"Dask, 2 workers              {t2:8.2f} s")
    print(f"parallel efficiency T1/(2 T2) = {100 * eff:.1f}%")
    med_i = lambda xs, i: float(np.median([x[i] for x in xs]))
    print(f"CPU seconds (ours, driver + workers): serial {med_i(serial, 4):.1f}, 1 worker "
          f"{med_i(rows[1], 2):.1f}, 2 workers {med_i(rows[2], 2):.1f}; workers busy "
          f"{100 * med_i(rows[1], 3):.0f}% (1) / {100 * med_i(rows[2], 3):.0f}% (2) of their wall time")
    print(f"tasks: {sessions[1].tasks} (1 worker), {sessions[2].tasks} (2 workers) for "
          f"{sessions[2].computed} points; mean compute per task {shard_time[1]:.3f} s / "
          f"{shard_time[2]:.3f} s")
    print(f"no-op task with a real spec: latency {1e3 * ov['latency_median_s']:.2f} ms "
          f"(p90 {1e3 * ov['latency_p90_s']:.2f}), {1e3 * ov['burst_per_task_s']:.2f} ms/task in a "
          f"burst of {ov['n_burst']}: {100 * ov['latency_median_s'] / shard_time[2]:.2f}% of a "
          f"2-worker task")
    print(f"fresh worker: first shard {warm['first_s']:.2f} s, second {warm['second_s']:.2f} s")
    print(f"projected (from the {proj['points']} saved points: {proj['compute_s']:.1f} s of "
          f"compute, {proj['driver_s']:.1f} s in the driver):")
    for w in (k for k in proj if isinstance(k, int)):
        print(f"  {w:4d} workers: {proj[w]['wall_s']:8.2f} s, speedup {proj[w]['speedup']:6.2f}, "
              f"efficiency {100 * proj[w]['efficiency']:5.1f}%, {proj[w]['tasks']} tasks")
    print(f"load after: {out['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


def _first_point(name: str, size: str, client):
    """The first simulate call the check makes, as a point (captured, not run)."""
    captured = []

    class _Stop(Exception):
        pass

    real = D.simulate

    def capture(problem, optimizers, x0, *, executor, shard_paths=None, **kw):
        captured.append(D.simulate_point(problem, optimizers, x0, workers=D.n_workers(client), **kw))
        raise _Stop

    D.simulate = capture
    try:
        with D.use(client):
            experiments.get(name).run(size=size, seed=0)
    except _Stop:
        pass
    finally:
        D.simulate = real
    if not captured:
        raise SystemExit(f"{name} made no simulate call")
    return captured[0]


if __name__ == "__main__":
    sys.exit(main())
