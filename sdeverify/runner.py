"""The check runner: run the registered checks of the paper's claims, one after the other, in
worker processes, or side by side on a Dask cluster, and record what each found.

What ``sdeverify check`` and ``sdeverify run`` do once their flags are checked, and what a
``check --jobs N`` worker process runs (:func:`run_in_worker`):

* :func:`run_one` runs one check (on a Dask cluster when one is handed down: every
  ``simulate``/``fit`` call of the check goes there) and saves ``NAME.json``/``.npz``/``.png``;
* :func:`entry` is a finished check's line of ``summary.json`` (and its table rows);
* :func:`run_job` runs a list of checks — reusing finished ones with ``resume``, in worker
  processes with ``jobs > 1`` (:mod:`sdeverify.check_jobs`), or with each check's calls on a
  Dask cluster (not at :data:`LOCAL_SIZES`), up to ``jobs`` checks side by side there, one
  thread and one session each (:func:`sdeverify.check_jobs.side_by_side`) — after the verdict-machinery
  canary (:func:`canary_row`), rewriting ``summary.json`` after each check so that an
  interrupted run keeps what finished; :func:`job_passed` is the job's rule.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from . import experiments
from .canary import EXPECTED, machinery_problems
from .check_jobs import default_jobs, describe, run_checks, side_by_side
from . import distributed
from .distributed import use
from .experiments.base import ExperimentResult
from .progress import bar
from .files import write_hashed_json
from .result import versions
from .verdict import describe as describe_verdict

__all__ = ["run_one", "check_overrides", "save_check", "LOCAL_SIZES", "drop_points", "run_in_worker", "verdict_rows", "entry", "job_passed",
           "canary_row", "reusable", "write_summary", "run_job"]


def run_one(name: str, size: str, seed: int, out: Path | None, quiet: bool,
            overrides: dict | None = None, backend: str = "cpu", cluster: Any = None,
            resume: bool = False, fmt: str = "png",
            keep_points: bool = False, data: str | None = None,
            this_thread: bool = False) -> tuple[ExperimentResult, Path | None]:
    """Run check ``name`` at ``size`` (smoke / quick / full) with ``seed``; with ``out``, save
    its result and its figure (``NAME.<fmt>``, ``fmt`` one of png, pdf, svg) there.
    ``backend`` is where the trained-network checks train; ``cluster`` a Dask client that
    every ``simulate``/``fit`` call of the check is sent to, except calls too small to pay
    for it (:data:`sdeverify.distributed.LOCAL_WORK`: they run here, and a warning says so);
    its finished points are saved under ``out/points/NAME`` (reused with ``resume``) and
    deleted once the check's result is saved, unless ``keep_points``; what the check sent
    (tasks, points computed, calls, points kept here; :meth:`Session.counts
    <sdeverify.distributed.Session.counts>`) is in ``res.meta["cluster"]`` and the summary.
    ``data`` (e.g. ``"conv_teacher"``, ``"cifar10:FOLDER"``) is what the trained-network checks
    train on, with the network that data calls for (:func:`train_data_overrides`).
    ``this_thread``: the cluster session holds for this thread only (checks run side by side
    in threads of one process, each in its own session).
    Returns the result and the figure's path (None without ``out``)."""
    mod = experiments.get(name)
    overrides = check_overrides(mod, size, backend, data, overrides)
    on_cluster = contextlib.nullcontext()
    if cluster is not None:                  # every simulate/fit call of the check goes there
        on_cluster = use(cluster, points_dir=None if out is None else out / "points" / name,
                         resume=resume, local_below=distributed.LOCAL_WORK,
                         this_thread=this_thread, label=name)
    with bar(1, name, quiet=quiet) as update, on_cluster as session:
        res = mod.run(size=size, seed=seed, progress=update, **overrides)
    if session is not None:                  # how the check used the cluster (tasks, ...)
        res.meta["cluster"] = session.counts()
    fig = save_check(res, out, fmt)
    if out is not None and cluster is not None and not keep_points:
        drop_points(out, name)
    return res, fig


def check_overrides(mod: Any, size: str, backend: str = "cpu", data: str | None = None,
                    overrides: dict | None = None) -> dict:
    """The keyword overrides check module ``mod`` runs with: ``overrides``, the training
    data's (:func:`train_data_overrides`) and, for the trained-network checks, ``backend``."""
    overrides = dict(overrides or {})
    overrides.update(train_data_overrides(mod, size, data))
    if backend != "cpu" and "backend" in getattr(mod.run, "defaults", {}):
        overrides["backend"] = backend       # the trained-network checks train on the GPU
    return overrides


def save_check(res: ExperimentResult, out: Path | None, fmt: str = "png") -> Path | None:
    """Save a finished check's result and draw its figure ``NAME.<fmt>`` in ``out``; the
    figure's path (None without ``out``)."""
    if out is None:
        return None
    res.save(out)
    with _PLOTTING:                     # pyplot's state is one per process, not per thread
        return experiments.get(res.name).plot(res, out / f"{res.name}.{fmt}")


_PLOTTING = threading.Lock()


#: sizes at which ``check --workers/--scheduler`` runs its checks in local processes, as
#: without a cluster (with a one-line note): a smoke check's calls are far below
#: :data:`sdeverify.distributed.LOCAL_WORK`, so on the cluster they would run one after the
#: other in this process, while ``check``'s local processes run the checks side by side.
LOCAL_SIZES: tuple[str, ...] = ("smoke",)


def drop_points(out: Path, name: str) -> None:
    """Delete the points a check saved on a cluster (``out/points/NAME``, and ``out/points``
    once empty): the check's own result, saved, makes them redundant (``check --resume``
    reuses the result)."""
    import shutil
    shutil.rmtree(out / "points" / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        (out / "points").rmdir()


def verdict_rows(res: ExperimentResult) -> list[list[str]]:
    """The verdict table's rows of a check: claim, paper, prediction, measured, verdict."""
    return [[v.claim, v.reference, v.prediction, describe_verdict(v), "PASS" if v.passed else "FAIL"]
            for v in res.verdicts]


def entry(name: str, res: ExperimentResult, fig: Path | None) -> dict:
    """The summary entry (plus the table rows) of a finished check."""
    return {"name": name, "passed": res.passed, "wall_time": res.meta.get("wall_time"),
            "cluster": res.meta.get("cluster"), "figure": str(fig) if fig else None,
            "verdicts": [v.as_dict() for v in res.verdicts], "rows": verdict_rows(res)}


def train_data_overrides(mod: Any, size: str, data: str | None) -> dict:
    """The overrides that make check module ``mod`` train on ``data`` at ``size``: none for
    checks that train no network (no ``NET_SIZES``) or when ``data`` is None."""
    if data is None or not hasattr(mod, "NET_SIZES"):
        return {}
    from .experiments.train_common import data_overrides
    return data_overrides(mod.NET_SIZES, size, data)


def run_in_worker(name: str, size: str, seed: int, out: str, backend: str,
                  fmt: str = "png", data: str | None = None) -> dict:
    """Run one check in a ``check --jobs`` worker process; its :func:`entry`."""
    res, fig = run_one(name, size, seed, Path(out), True, backend=backend, fmt=fmt, data=data)
    return entry(name, res, fig)


def job_passed(entries: list[dict]) -> bool:
    """The main job's rule: it passes iff every check passed (a crashed check has
    ``passed: False``) — tested on every run by :mod:`sdeverify.canary`."""
    return all(e["passed"] for e in entries)


def canary_row() -> tuple[list[str], list[str]]:
    """Run the verdict-machinery canary (:mod:`sdeverify.canary`): its table row and the
    problems it found (empty when the machinery decided every known claim as known)."""
    try:
        problems = machinery_problems(entry, job_passed)
    except Exception as exc:  # the canary itself crashing is a machinery fault too
        problems = [f"canary raised {type(exc).__name__}: {exc}"]
    n = len(EXPECTED)
    measured = "; ".join(problems) if problems else f"{n}/{n} decided as known"
    return (["verdict machinery canary: known-true claims pass, known-false fail, a failing "
             "check fails the job", "(method)", f"{n} claims of known truth", measured,
             "FAIL" if problems else "PASS"], problems)


def reusable(name: str, size: str, seed: int, out: Path,
             data: str | None = None) -> ExperimentResult | None:
    """A finished result of this check in ``out`` from the same size, seed, package versions
    and training data (``check --resume``), or None.  ``NAME.json`` is written after
    ``NAME.npz``, both atomically, so a JSON file on disk means a complete result."""
    if not (out / f"{name}.json").exists():
        return None
    try:
        res = ExperimentResult.load(out, name)
    except Exception:   # unreadable or from an incompatible layout: run it again
        return None
    meta = res.meta
    if meta.get("size") != size or meta.get("seed") != seed or meta.get("versions") != versions():
        return None
    want = train_data_overrides(experiments.get(name), size, data).get("data")
    if want is None and hasattr(experiments.get(name), "NET_SIZES"):
        want = experiments.get(name).SIZES[size]["data"]
    if want is not None and res.params.get("data") != want:
        return None                     # trained on other data: not this run's result
    return res


def write_summary(out: Path, doc: dict) -> None:
    """Write ``out/summary.json`` (atomically, with its content hash: :mod:`sdeverify.files`)."""
    write_hashed_json(out / "summary.json", doc)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_job(names: list[str], *, size: str, seed: int, out: Path, jobs: int = 1,
            backend: str = "cpu", resume: bool = False, quiet: bool = False,
            start_cluster: Callable[[], Any] = lambda: None,
            log: Callable[[str], None] = _log, fmt: str = "png",
            keep_points: bool = False, data: str | None = None,
            cluster_wanted: bool = False) -> tuple[list[list[str]], dict]:
    """Run the checks ``names`` into ``out``: the canary first, then each check (reused from
    ``out`` with ``resume``; in ``jobs`` worker processes when ``jobs > 1``, else here, on
    the cluster ``start_cluster()`` returns, if any — except at a size of
    :data:`LOCAL_SIZES`, which runs as without a cluster, on the default number of local
    processes, with a note; ``cluster_wanted`` says a local cluster was asked for, so that at
    those sizes it is not even started); figures are written as ``NAME.<fmt>``.
    A check that raises is a failed check with its error.  ``summary.json`` is rewritten
    after each check and completed at the end.

    Returns
    -------
    (rows, summary)
        The verdict table's rows (the canary's first, then each check's, or an ERROR row)
        and the content of the final ``summary.json`` (``passed``: the job's verdict).
    """
    canary, canary_problems = canary_row()
    if canary_problems:
        log("sdeverify: the verdict machinery failed its canary: " + "; ".join(canary_problems))
    local = size in LOCAL_SIZES
    client = None if (local and cluster_wanted) else start_cluster()
    if local and (client is not None or cluster_wanted):
        jobs = default_jobs(len(names))
        log(f"sdeverify: {size} checks are too small to pay for the cluster: they run here, "
            f"on {describe(jobs)}, as without one")
        client = None
    entries: dict[int, dict] = {}
    t0 = time.perf_counter()

    def record(i: int, e: dict) -> None:
        entries[i] = e
        # the summary is rewritten after each check: an interrupted run keeps what finished
        write_summary(out, {"size": size, "seed": seed, "complete": False,
                            "checks": [{k: v for k, v in entries[j].items() if k != "rows"}
                                       for j in sorted(entries)]})

    todo = []
    for i, name in enumerate(names):
        res = reusable(name, size, seed, out, data) if resume else None
        if res is None:
            todo.append(i)
            continue
        log(f"[{i + 1}/{len(names)}] {name} ({size}): reusing {out / name}.json")
        fig = out / f"{name}.{fmt}"
        if not fig.exists():
            with _PLOTTING:
                fig = experiments.get(name).plot(res, fig)
        record(i, entry(name, res, fig))
    def done(k: int, e: dict) -> None:
        i = todo[k]
        state = "ERROR" if e.get("error") else ("PASS" if e["passed"] else "FAIL")
        took = f" in {e['wall_time']:.1f} s" if e.get("wall_time") else ""
        log(f"[{len(entries) + 1}/{len(names)}] {names[i]} ({size}): {state}{took}")
        record(i, e)

    if client is not None and jobs > 1 and len(todo) > 1:
        jobs = min(jobs, len(todo))
        log(f"running {len(todo)} checks ({size}) side by side on the cluster, "
            f"{jobs} at a time")

        def on_cluster(name: str) -> dict:
            res, fig = run_one(name, size, seed, out, True, backend=backend, cluster=client,
                               resume=resume, fmt=fmt, keep_points=keep_points, data=data,
                               this_thread=True)
            return entry(name, res, fig)
        side_by_side([names[i] for i in todo], size, jobs, done, on_cluster)
    elif jobs > 1 and len(todo) > 1:
        jobs = min(jobs, len(todo))
        log(f"running {len(todo)} checks ({size}) on {describe(jobs)}")
        run_checks([names[i] for i in todo], size, seed, out, jobs, backend, done,
                   functools.partial(run_in_worker, fmt=fmt, data=data))
    else:
        for i in todo:
            name = names[i]
            log(f"[{i + 1}/{len(names)}] {name} ({size}) ...")
            try:
                res, fig = run_one(name, size, seed, out, quiet, backend=backend,
                                   cluster=client, resume=resume, fmt=fmt,
                                   keep_points=keep_points, data=data)
            except Exception as exc:  # a crashing check is a failed check, reported, not hidden
                record(i, {"name": name, "passed": False, "error": f"{type(exc).__name__}: {exc}"})
                continue
            record(i, entry(name, res, fig))
    wall = time.perf_counter() - t0
    summary = [entries[i] for i in sorted(entries)]
    rows = [canary]
    for e in summary:
        rows += e.get("rows") or [[e["name"], "-", "-", f"ERROR: {e['error']}", "FAIL"]]
    passed = job_passed(summary) and not canary_problems
    doc = {"size": size, "seed": seed, "complete": True, "passed": passed, "wall_time": wall,
           "jobs": jobs, "canary": {"passed": not canary_problems, "problems": canary_problems},
           "checks": [{k: v for k, v in e.items() if k != "rows"} for e in summary]}
    write_summary(out, doc)
    return rows, doc
