"""Parallel efficiency of a check on 1 and 2 local Dask workers, the scheduler's overhead per
task, and a scaling model of the checks projected to 8, 32 and 64 workers.

    PYTHONPATH=. python benchmarks/dask_scaling.py [--check weak_approximation] [--size full]
        [--repeats 3] [--baseline-repeats N] [--json benchmarks/results/dask_scaling.json]
    PYTHONPATH=. python benchmarks/dask_scaling.py --model-only --checks A,B,... --size quick
    PYTHONPATH=. python benchmarks/dask_scaling.py --from-json benchmarks/results/dask_scaling_model_whole_full.json

* **Scaling.**  The check's ``run()`` inside ``sdeverify.distributed.use(client,
  points_dir=..., local_below=LOCAL_WORK)`` — what ``sdeverify check --only NAME --workers N``
  does — on a ``LocalCluster`` of 1 and of 2 worker processes (1 thread each,
  ``NUMBA_NUM_THREADS=1``), timed alternately (1, 2, 1, 2, ...) after one untimed warm-up run
  per cluster (kernels loaded in every worker); next to the same run in this process without
  Dask on 1 Numba thread (the serial baseline) and on 2 threads.  Parallel efficiency =
  T(1 worker) / (2 T(2 workers)), from the medians.  Each run's results must equal the
  serial run's bitwise (checked).
* **Scaling model** (:func:`project`).  The serial run is instrumented
  (:func:`recording`): every *batch* of work the check hands out at once — a
  ``run_many``/``simulate_many`` sweep, or a lone ``simulate``/``fit`` call — and every item
  of it (a simulation with its paths and work, or a per-point ``Call``) with its compute
  time, and the time of its statistics (``then``); the driver's serial time is the wall
  time minus all of these.  On W workers a batch's simulations are cut as ``plan_shards``
  cuts them for W, the items that ``kept_here`` keeps (below ``LOCAL_WORK``, up to a fair
  share) stay in the driver, and the tasks are list-scheduled longest first on W workers;
  the statistics are computed in the driver as each point comes in, overlapping the
  cluster's work but for the last point's:
  T(W) = driver + Σ_batches [max(local + statistics, makespan + last statistics,
  tasks × burst cost) + latency], with the measured latency and burst cost per task
  (Amdahl's law with the measured task costs and the real shard plan).
  Efficiency(W) = T(1) / (W T(W)).  Validated against the measured 1- and 2-worker runs
  (printed side by side).
* **The whole job** (:func:`project_side_by_side`), as ``check --workers N`` runs it: every
  check in its own thread from the start (longest first), their batches as above, on one
  cluster: an event simulation in which the W workers take the oldest released task (Dask's
  first-in-first-out priority; a batch's tasks longest first), each dispatch costs the
  scheduler the burst cost, and the driver is *one* resource shared by every check (its
  serial time, the items it keeps, the statistics).  Also the checks one after the other
  (the sum of the per-check projections), for comparison.  ``--from-json`` recomputes both
  from a saved ``--model-only`` recording without running anything.
* **Overhead per task.**  The round trip of a task that does nothing but receive a real
  shard's spec (same problem, optimizers and arguments, pickled as for a real shard) and
  return: one at a time (latency), and 400 submitted at once (throughput: wall / 400).
* **Warm-up.**  The first shard a fresh worker process runs (kernel loaded from Numba's
  disk cache, or compiled when the cache is cold) against its second.

The machine is shared: the CPU seconds used by other processes during each run are measured
from /proc/stat (all busy time minus this process and its workers) and reported as a share
of the machine ("others").
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
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
        with D.use(client, points_dir=points, local_below=D.LOCAL_WORK) as s, \
                get_task_stream(client) as ts:
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
    """Every data array of two experiment results equal, bitwise (NaN equal to NaN), except
    the timing arrays (``files.TIMING``: wall-clock seconds differ from run to run)."""
    from sdeverify.files import TIMING

    def eq(x, y):
        x, y = np.asarray(x), np.asarray(y)
        return np.array_equal(x, y, equal_nan=x.dtype.kind in "fc" and y.dtype.kind in "fc")
    keys = [k for k in a.data if not TIMING.fullmatch(k)]
    return sorted(a.data) == sorted(b.data) and all(eq(a.data[k], b.data[k]) for k in keys)


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


@dataclasses.dataclass
class Item:
    """One item of a batch: a simulation / training call (its paths or replicas, work per
    path and shard block) or a per-point ``Call`` (one task), and its measured compute."""
    kind: str
    compute_s: float
    total: int = 1
    unit: float = 0.0
    block: int = 1
    work: float = float("inf")
    then_s: float = 0.0         # its statistics (``then``), computed in the driver


@contextlib.contextmanager
def recording():
    """Within the block, every check's batches are recorded (a list of lists of
    :class:`Item`, yielded): each ``run_many`` sweep (``simulate_many`` included) is one
    batch, each ``simulate``/``fit`` call made outside one is a batch of its own; calls made
    inside an item (a ``Call`` that simulates) belong to it."""
    import importlib
    import pkgutil
    import sdeverify.experiments as E
    from sdeverify.dispatch import Call
    sim_mod = sys.modules["sdeverify.simulate"]
    fit_mod = sys.modules["sdeverify.train.training"]
    base = sys.modules["sdeverify.experiments.base"]
    real = {"simulate": sim_mod.simulate, "fit": fit_mod.fit, "run_many": base.run_many}
    batches: list[list[Item]] = []
    depth = [0]

    def describe(kind, a, k, seconds) -> Item:
        if kind == "simulate":
            kw = dict(zip(("problem", "optimizers", "x0"), a), **k)
            kw.pop("executor", None)
            p = D.simulate_point(kw.pop("problem"), kw.pop("optimizers"), kw.pop("x0"), **kw)
            return Item("simulate", seconds, p.total, p.work / p.total, config.BLOCK, p.work)
        kw = dict(zip(("model", "data", "optimizers"), a), **k)
        kw.pop("executor", None)
        if fit_mod._state_args(*(kw.get(n) for n in ("init_weights", "init_momentum", "start_step",
                                                      "resume", "record_weights", "init_buffers"))):
            return None             # continues a given state: it trains in the driver (driver time)
        p = D.fit_point(kw.pop("model"), kw.pop("data"), kw.pop("optimizers"), **kw)
        return Item("fit", seconds, p.total, p.work / p.total, 1, p.work)

    def timed(kind):
        fn = real[kind]

        @functools.wraps(fn)        # fit_point reads fit's signature through the patched name
        def call(*a, **k):
            if depth[0]:
                return fn(*a, **k)
            depth[0] += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                depth[0] -= 1
                item = describe(kind, a, k, time.perf_counter() - t)
                if item is not None:
                    batches.append([item])
        return call

    def run_many(items):
        out, batch = [], []
        for c in items:
            then = None if isinstance(c, Call) else c.get("then")
            kind = "call" if isinstance(c, Call) else c.get("kind", "simulate")
            if not isinstance(c, Call):
                c = {k: v for k, v in c.items() if k not in ("then", "kind")}
            depth[0] += 1
            t = time.perf_counter()
            try:
                r = c() if kind == "call" else real[kind](**c)
            finally:
                depth[0] -= 1
            dt = time.perf_counter() - t
            if then is not None:
                r = then(r)
            then_s = time.perf_counter() - t - dt
            out.append(r)
            item = (Item("call", dt, work=float("inf") if c.work is None else c.work)
                    if kind == "call" else describe(kind, (), c, dt))
            item.then_s = then_s
            batch.append(item)
        batches.append(batch)
        return out

    patched = {"simulate": timed("simulate"), "fit": timed("fit"), "run_many": run_many}
    mods = [sim_mod, fit_mod, base] + [importlib.import_module(f"sdeverify.experiments.{m.name}")
                                       for m in pkgutil.iter_modules(E.__path__)]
    saved = [(m, name, getattr(m, name)) for m in mods for name in patched if hasattr(m, name)]
    try:
        for m, name, _ in saved:
            setattr(m, name, patched[name])
        yield batches
    finally:
        for m, name, fn in saved:
            setattr(m, name, fn)


def makespan(durations: list[float], workers: int) -> float:
    """Longest-first list scheduling of task durations on ``workers`` (what a scheduler
    that hands the next task to the first free worker does with tasks sorted longest
    first): the finishing time of the last worker."""
    load = [0.0] * workers
    for d in sorted(durations, reverse=True):
        i = min(range(workers), key=load.__getitem__)
        load[i] += d
    return max(load) if durations else 0.0


def batch_tasks(b: list, workers: int, local_below: float) -> tuple[float, list[float]]:
    """A recorded batch on ``workers`` workers: (seconds of the items ``kept_here`` runs in
    the driver, the durations of the tasks sent — simulations cut by ``plan_shards``, a
    ``Call`` one task)."""
    here = D.kept_here([i.work for i in b], local_below, workers)
    durations = []
    for k, i in enumerate(b):
        if k in here:
            continue
        if i.kind == "call":
            durations.append(i.compute_s)
            continue
        for _, n in D.plan_shards(i.total, i.unit, workers, block=i.block):
            durations.append(i.compute_s * n / i.total)
    return sum(i.compute_s for k, i in enumerate(b) if k in here), durations


def project(batches: list[list[Item]], driver_s: float, latency_s: float, burst_s: float,
            workers=(1, 2, 8, 32, 64), local_below: float = D.LOCAL_WORK) -> dict:
    """The check's wall time on W workers, from its recorded batches (see the module
    docstring): per batch, the items ``kept_here`` (below ``local_below``, up to a fair
    share) run in the driver while the cluster runs the others (simulations cut by ``plan_shards`` for W, a ``Call`` one
    task), list-scheduled longest first; plus one task latency, and at least the
    scheduler's burst cost per task; plus the driver's serial time."""
    out = {"driver_s": driver_s, "compute_s": sum(i.compute_s for b in batches for i in b),
           "then_s": sum(i.then_s for b in batches for i in b),
           "batches": len(batches), "items": sum(len(b) for b in batches)}
    for w in workers:
        wall, tasks = driver_s, 0
        for b in batches:
            local, durations = batch_tasks(b, w, local_below)
            then = sum(i.then_s for i in b)                  # as each point comes in
            last = max((i.then_s for i in b), default=0.0)  # after the last one
            tasks += len(durations)
            if durations:
                wall += max(local + then, makespan(durations, w) + last,
                            len(durations) * burst_s) + latency_s
            else:
                wall += local + then
        out[w] = {"wall_s": wall, "tasks": tasks}
    for w in workers:
        out[w]["efficiency"] = out[workers[0]]["wall_s"] / (w * out[w]["wall_s"])
    return out


def project_side_by_side(checks: dict, workers: int, latency_s: float, burst_s: float,
                         local_below: float = D.LOCAL_WORK, order: list | None = None,
                         finish: dict | None = None, startup_s: float = 0.0,
                         per_task_s: float = 0.0) -> dict:
    """The whole job's wall time on ``workers`` workers with every check started at once
    (``check --workers N``), from ``checks`` = {name: (driver seconds, recorded batches)}
    started in ``order`` (default: as given) — see the module docstring — after
    ``startup_s`` of serial start (imports, canary, cluster), each check ending with
    ``finish[name]`` seconds on the driver (its figure), each finished task costing the
    driver ``per_task_s`` (receiving, merging, saving its point).  Returns ``{"wall_s", "tasks",
    "finished": {name: seconds}}``."""
    finish = finish or {}
    import heapq
    events, ready, n = [], [], [0]

    def push(heap, item):
        n[0] += 1
        heapq.heappush(heap, (item[0], n[0]) + item[1:])
    free = {"driver": float(startup_s), "scheduler": 0.0}

    def on_driver(t: float, seconds: float) -> float:
        if seconds <= 0:                        # nothing to do: no wait for the driver
            return t
        start = max(t, free["driver"])
        free["driver"] = start + seconds
        return start + seconds
    state = {c: {"k": -1, "left": 0, "local_end": 0.0, "last": 0.0} for c in checks}
    for c in order or list(checks):
        push(events, (on_driver(0.0, checks[c][0]), "next", c))
    idle, tasks, finished = workers, 0, {}
    while events:
        t, _, kind, c = heapq.heappop(events)
        st, batches = state[c], checks[c][1]
        if kind == "next":
            st["k"] += 1
            if st["k"] == len(batches):
                finished[c] = on_driver(t, finish.get(c, 0.0))
                continue
            b = batches[st["k"]]
            local, durations = batch_tasks(b, workers, local_below)
            tasks += len(durations)
            then = sum(i.then_s for i in b)
            st["last"] = max((i.then_s for i in b), default=0.0) if durations else 0.0
            st["local_end"] = on_driver(t, local + then - st["last"])
            st["left"] = len(durations)
            if not durations:
                push(events, (st["local_end"], "next", c))
            for d in sorted(durations, reverse=True):
                push(ready, (t, d, c))
        else:                                   # a task of check c finished
            idle += 1
            st["left"] -= 1
            received = on_driver(t, per_task_s) if per_task_s else t
            if st["left"] == 0:
                done = on_driver(received, st["last"])
                push(events, (max(done, st["local_end"]) + latency_s, "next", c))
        while idle and ready and ready[0][0] <= t:          # hand out released tasks
            _, _, d, cc = heapq.heappop(ready)
            start = max(t, free["scheduler"])
            free["scheduler"] = start + burst_s
            idle -= 1
            push(events, (start + burst_s + d, "done", cc))
    return {"wall_s": max(finished.values(), default=0.0), "tasks": tasks, "finished": finished}


def calibrated(rows: dict, measured: dict, finish: dict, startup_s: float, latency_s: float,
               burst_s: float, ws=(1, 2, 8, 32, 64), per_task_s: float = 0.0) -> dict:
    """The side-by-side projection corrected by what the model leaves out, as two bounds:
    each check's measured 1-worker time (``measured``: name → seconds, from a
    ``job_scaling.py`` run) exceeds its modelled one; ``"in_tasks"`` scales the check's item
    times by measured / modelled (the extra scales with W), ``"on_driver"`` adds the extra to
    the check's serial driver time (it does not); both add the figures (``finish``: name →
    seconds, drawn one at a time) and the job's serial start (``startup_s``); with
    ``per_task_s`` also ``"in_tasks_driver_per_task"``: in tasks, and every finished task
    costs the driver that long, one at a time (the driver CPU the model does not see)."""
    out = {}
    order = sorted(rows, key=lambda n: -rows[n]["serial_s"])
    for mode in ("in_tasks", "on_driver") + (("in_tasks_driver_per_task",) if per_task_s else ()):
        checks = {}
        for n, r in rows.items():
            ratio = measured.get(n, r[1]["wall_s"]) / r[1]["wall_s"] if r[1]["wall_s"] else 1.0
            extra = max(0.0, measured.get(n, r[1]["wall_s"]) - r[1]["wall_s"])
            scale = 1.0 if mode == "on_driver" else ratio
            batches = [[dataclasses.replace(Item(**i) if isinstance(i, dict) else i,
                                            compute_s=(i["compute_s"] if isinstance(i, dict) else i.compute_s) * scale)
                        for i in b] for b in r["recorded"]]
            checks[n] = (r["driver_s"] + (extra if mode == "on_driver" else 0.0), batches)
        t = {w: project_side_by_side(checks, w, latency_s, burst_s, order=order, finish=finish,
                                     startup_s=startup_s,
                                     per_task_s=per_task_s if mode.endswith("per_task") else 0.0)
             for w in ws}
        out[mode] = {w: {"wall_s": t[w]["wall_s"],
                         "efficiency": t[ws[0]]["wall_s"] / (w * t[w]["wall_s"])} for w in ws}
        print(f"whole job side by side, calibrated ({mode.replace('_', ' ')}): " + ", ".join(
            f"W={w} {t[w]['wall_s']:.1f} s eff {100 * out[mode][w]['efficiency']:.0f}%" for w in ws),
            flush=True)
    return out


def whole_job(rows: dict, latency_s: float, burst_s: float, ws=(1, 2, 8, 32, 64)) -> dict:
    """The whole job from per-check rows (``driver_s``, ``serial_s``, ``recorded`` and the
    one-after-the-other projections ``rows[name][W]``): checks one after the other and side
    by side (started longest first by their serial time), wall and efficiency per W."""
    checks = {n: (r["driver_s"], [[Item(**i) if isinstance(i, dict) else i for i in b]
                                  for b in r["recorded"]]) for n, r in rows.items()}
    order = sorted(rows, key=lambda n: -rows[n]["serial_s"])
    apart = {w: sum(r[w]["wall_s"] for r in rows.values()) for w in ws}
    together = {w: project_side_by_side(checks, w, latency_s, burst_s, order=order) for w in ws}
    out = {"one_after_the_other": {w: {"wall_s": apart[w], "efficiency": apart[ws[0]] / (w * apart[w])}
                                   for w in ws},
           "side_by_side": {w: {"wall_s": together[w]["wall_s"], "tasks": together[w]["tasks"],
                                "efficiency": together[ws[0]]["wall_s"] / (w * together[w]["wall_s"]),
                                "last": max(together[w]["finished"], key=together[w]["finished"].get)}
                            for w in ws}}
    for mode, v in out.items():
        print(f"whole job, checks {mode.replace('_', ' ')}: " + ", ".join(
            f"W={w} {v[w]['wall_s']:.1f} s eff {100 * v[w]['efficiency']:.0f}%" for w in ws), flush=True)
    return out


def recorded_run(name: str, size: str):
    """(wall, batches, driver seconds, result) of one serial run, recorded."""
    with recording() as batches:
        t = time.perf_counter()
        res = experiments.get(name).run(size=size, seed=0)
        wall = time.perf_counter() - t
    driver = wall - sum(i.compute_s + i.then_s for b in batches for i in b)
    return wall, batches, driver, res


def print_projection(name: str, wall: float, proj: dict) -> None:
    ws = [k for k in proj if isinstance(k, int)]
    print(f"{name}: serial {wall:.2f} s, driver {proj['driver_s']:.2f} s "
          f"({100 * proj['driver_s'] / wall:.1f}%), {proj['items']} items in {proj['batches']} "
          f"batches; model: " + ", ".join(f"W={w} {proj[w]['wall_s']:.2f} s "
                                          f"{proj[w]['tasks']} tasks eff {100 * proj[w]['efficiency']:.0f}%"
                                          for w in ws), flush=True)


def model_only(names: list[str], size: str, out: dict) -> None:
    """Per check: a serial recorded run (after a smoke warm-up) and its projection with the
    task costs measured on a 2-worker cluster; and the whole job's (checks one after the
    other, as ``check --workers N`` runs them)."""
    import numba as nb
    nb.set_num_threads(1)
    with D.Cluster(workers=2) as c:
        client = c.start()
        point = D.simulate_point(*_tiny_point_args(), steps=1000, paths=4096, sigma=1.0, workers=2)
        ov = overhead(client, point)
    out["overhead"] = ov
    print(f"task latency {1e3 * ov['latency_median_s']:.1f} ms, burst {1e3 * ov['burst_per_task_s']:.1f} ms/task",
          flush=True)
    rows = {}
    for n in names:
        experiments.get(n).run(size="smoke", seed=0)                 # compile / load kernels
        wall, batches, driver, _ = recorded_run(n, size)
        proj = project(batches, driver, ov["latency_median_s"], ov["burst_per_task_s"])
        print_projection(n, wall, proj)
        rows[n] = dict(proj, serial_s=wall, recorded=_batches_json(batches))
    out["checks"] = rows
    out["whole_job"] = whole_job(rows, ov["latency_median_s"], ov["burst_per_task_s"])
    out["job"] = out["whole_job"]["side_by_side"]


def from_json(path: str, measured: str | None = None, finish: str | None = None,
              startup_s: float | None = None, per_task_s: float = 0.0,
              scheduler_per_task_s: float | None = None) -> dict:
    """The whole job's projections recomputed from a saved ``--model-only`` recording; with
    ``measured`` (a ``job_scaling.py`` JSON: its 1-worker run's per-check times and its start
    outside the checks) and ``finish`` (name → seconds of its figure, JSON), also the
    :func:`calibrated` bounds (the job's serial start: ``startup_s``, else the measured run's
    wall minus its ``summary.json`` wall); ``scheduler_per_task_s`` replaces the recording's
    measured scheduler cost per dispatch (e.g. a scheduler's CPU per task measured apart,
    ``job_scaling.py --external``)."""
    d = json.loads(Path(path).read_text())
    rows = {n: {**{int(k) if k.isdigit() else k: v for k, v in r.items()}}
            for n, r in d["checks"].items()}
    ov = d["overhead"]
    if scheduler_per_task_s is not None:
        ov = dict(ov, burst_per_task_s=scheduler_per_task_s, burst_per_task_recorded_s=ov["burst_per_task_s"])
    out = {"source": path, "overhead": ov,
           "whole_job": whole_job(rows, ov["latency_median_s"], ov["burst_per_task_s"])}
    if measured:
        m = json.loads(Path(measured).read_text())
        one = next(r for r in m["runs"] if r["workers"] == 1)
        per = {n: v for n, v in one["checks_s"].items() if v}
        startup = startup_s if startup_s is not None else one["wall_s"] - one["job_wall_s"]
        fin = json.loads(Path(finish).read_text()) if finish else {}
        fin = {n: v["plot_s"] if isinstance(v, dict) else v for n, v in fin.items()}
        out["calibration"] = {"measured": measured, "finish": finish, "startup_s": startup,
                              "per_task_s": per_task_s}
        out["calibrated"] = calibrated(rows, per, fin, startup, ov["latency_median_s"],
                                       ov["burst_per_task_s"], per_task_s=per_task_s)
    return out


def _batches_json(batches: list[list[Item]]) -> list:
    """The recorded batches, for the JSON (the projection can be recomputed from them)."""
    return [[dataclasses.asdict(i) for i in b] for b in batches]


def _tiny_point_args():
    from sdeverify import SGD, SGDM
    from sdeverify.problems import Quadratic
    P = Quadratic(np.diag([1.0, 3.0]))
    return (P, [SGD(0.01), SGDM(0.01, 0.9)], np.array([1.0, -0.5]))


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", default="weak_approximation")
    ap.add_argument("--size", default="full", choices=("smoke", "quick", "full"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-repeats", type=int, default=None,
                    help="runs of the serial and local baselines (default: --repeats; the "
                         "efficiency uses only the Dask runs)")
    ap.add_argument("--warmup", default="full", choices=("smoke", "quick", "full"),
                    help="size of the untimed warm-up run (kernels compiled / loaded)")
    ap.add_argument("--no-local2", action="store_true",
                    help="skip the 2-thread local baseline (not needed for the efficiency)")
    ap.add_argument("--model-only", action="store_true",
                    help="only the scaling model of --checks (serial recorded runs)")
    ap.add_argument("--checks", default=None, help="comma-separated checks for --model-only "
                    "(default: every check)")
    ap.add_argument("--from-json", default=None, metavar="FILE",
                    help="recompute the whole job's projections from a saved --model-only "
                         "recording (runs nothing)")
    ap.add_argument("--measured", default=None, metavar="FILE",
                    help="with --from-json: a job_scaling.py JSON whose 1-worker run calibrates "
                         "the projection (what the model leaves out, as two bounds)")
    ap.add_argument("--figures", default=None, metavar="FILE",
                    help="with --measured: JSON name -> seconds to draw the check's figure")
    ap.add_argument("--startup", type=float, default=None, metavar="S",
                    help="with --measured: the job's serial start in seconds (default: the "
                         "measured run's wall minus its summary.json wall)")
    ap.add_argument("--driver-per-task", type=float, default=0.0, metavar="S",
                    help="with --measured: also a projection where each finished task costs the "
                         "driver S seconds, one at a time")
    ap.add_argument("--scheduler-per-task", type=float, default=None, metavar="S",
                    help="with --from-json: the scheduler's cost per dispatch in seconds, instead "
                         "of the recording's (e.g. measured apart: job_scaling.py --external)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.from_json:
        out = from_json(args.from_json, args.measured, args.figures, args.startup,
                        args.driver_per_task, args.scheduler_per_task)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        return 0
    cpu = platform.processor() or platform.machine()
    out = {"size": args.size, "machine": {"cpu": cpu, "cpus": os.cpu_count(),
                                          "python": platform.python_version(),
                                          "dask": __import__("dask").__version__,
                                          "numba": numba.__version__},
           "load_before": load(), "min_task_work": D.MIN_TASK_WORK,
           "local_work": D.LOCAL_WORK, "shards_per_worker": D.SHARDS_PER_WORKER}
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; dask {__import__('dask').__version__}",
          flush=True)
    print(f"load before: {out['load_before']}", flush=True)
    if args.model_only:
        names = args.checks.split(",") if args.checks else experiments.available()
        model_only(names, args.size, out)
        return _finish(out, args.json)
    out.update(check=args.check, repeats=args.repeats, warmup=args.warmup)
    tmp = Path(tempfile.mkdtemp(prefix="dask_scaling."))

    # serial baselines in this process (no Dask): 1 and 2 Numba threads; the first recorded
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    timed_run(args.check, args.warmup, None, None)                   # warm-up (compile)
    print(f"load at start: {load()}", flush=True)
    n_base = args.repeats if args.baseline_repeats is None else max(1, args.baseline_repeats)
    rec_wall, batches, driver, ref = recorded_run(args.check, args.size)
    serial = [timed_run(args.check, args.size, None, None) for _ in range(n_base - 1)]
    serial = [(rec_wall, None, ref, None, None)] + serial
    numba.set_num_threads(min(2, before))
    local2 = [timed_run(args.check, args.size, None, None)
              for _ in range(0 if args.no_local2 else n_base)] or [(float("nan"),)]
    numba.set_num_threads(before)

    rows = {1: [], 2: []}
    sessions = {}
    point = D.simulate_point(*_tiny_point_args(), steps=1000, paths=4096, sigma=1.0, workers=2)
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
                      f"{cpu_s:.1f} s, workers busy {100 * util:.0f}%, {s.computed} points + "
                      f"{s.calls} calls on the cluster, {s.local} here, {s.tasks} tasks", flush=True)
        ov = overhead(clients[2], point)
    warm = first_vs_second_task(point)
    proj = project(batches, driver, ov["latency_median_s"], ov["burst_per_task_s"])

    med = lambda xs: float(np.median([x[0] for x in xs]))
    t_serial, t_local2 = med(serial), med(local2)
    t1, t2 = med(rows[1]), med(rows[2])
    eff = t1 / (2 * t2)
    out.update({
        "serial_1thread_s": [x[0] for x in serial], "local_2threads_s": [x[0] for x in local2],
        "workers_1_cpu_s": [x[2] for x in rows[1]], "workers_2_cpu_s": [x[2] for x in rows[2]],
        "workers_1_busy": [x[3] for x in rows[1]], "workers_2_busy": [x[3] for x in rows[2]],
        "workers_1_s": [x[0] for x in rows[1]], "workers_2_s": [x[0] for x in rows[2]],
        "workers_1_others": [x[1] for x in rows[1]], "workers_2_others": [x[1] for x in rows[2]],
        "median_s": {"serial_1thread": t_serial, "local_2threads": t_local2, "workers_1": t1,
                     "workers_2": t2},
        "parallel_efficiency": eff, "dask_1worker_over_serial": t1 / t_serial,
        "tasks": {1: sessions[1].tasks, 2: sessions[2].tasks}, "overhead": ov,
        "first_task": warm, "projection": proj, "recorded": _batches_json(batches),
        "model_vs_measured": {1: proj[1]["wall_s"] / t1, 2: proj[2]["wall_s"] / t2,
                              "efficiency_2": proj[2]["efficiency"] / eff},
        "load_after": load()})
    print(f"serial (1 thread, no Dask)   {t_serial:8.2f} s")
    print(f"local (2 threads, no Dask)   {t_local2:8.2f} s")
    print(f"Dask, 1 worker               {t1:8.2f} s   ({t1 / t_serial:.3f}x the serial run)")
    print(f"Dask, 2 workers              {t2:8.2f} s")
    print(f"parallel efficiency T1/(2 T2) = {100 * eff:.1f}%")
    med_i = lambda xs, i: float(np.median([x[i] for x in xs]))
    print(f"CPU seconds (ours, driver + workers): 1 worker {med_i(rows[1], 2):.1f}, 2 workers "
          f"{med_i(rows[2], 2):.1f}; workers busy {100 * med_i(rows[1], 3):.0f}% (1) / "
          f"{100 * med_i(rows[2], 3):.0f}% (2) of their wall time")
    print(f"no-op task with a real spec: latency {1e3 * ov['latency_median_s']:.2f} ms "
          f"(p90 {1e3 * ov['latency_p90_s']:.2f}), {1e3 * ov['burst_per_task_s']:.2f} ms/task in a "
          f"burst of {ov['n_burst']}")
    print(f"fresh worker: first shard {warm['first_s']:.2f} s, second {warm['second_s']:.2f} s")
    print_projection(args.check, rec_wall, proj)
    print(f"model vs measured: 1 worker {proj[1]['wall_s']:.2f} s vs {t1:.2f} s, 2 workers "
          f"{proj[2]['wall_s']:.2f} s vs {t2:.2f} s; efficiency {100 * proj[2]['efficiency']:.1f}% "
          f"vs {100 * eff:.1f}%")
    return _finish(out, args.json)


def _finish(out: dict, path: str | None) -> int:
    out["load_after"] = load()
    print(f"load after: {out['load_after']}")
    if path:
        Path(path).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
