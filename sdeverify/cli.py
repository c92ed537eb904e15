"""Command line: ``sdeverify simulate | run NAME | check | list``.

The CLI is thin: every subcommand builds parameters, calls a library function and prints or
saves what it returns.  Errors a user can fix (a bad flag value, an unwritable ``--out``, no
GPU for ``--backend cuda``, a run too large for the memory) end with exit status 2 and one
line ``sdeverify: error: ...`` on stderr, before any work starts; a failed check exits 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import config
from .engine import backends, get_backend
from .experiments import EXPERIMENTS

PROBLEMS = ("quadratic", "cosine", "linreg", "constant")


def _problem(args):
    from . import problems as P
    d = args.dim
    if args.problem == "quadratic":
        return P.Quadratic(np.diag(np.linspace(1.0, args.curvature, d)), noise_dist=args.noise)
    if args.problem == "cosine":
        return P.CosineWell(d, noise_dist=args.noise)
    if args.problem == "linreg":
        return P.LinearRegression.generate(n=256, d=d, batch_size=args.batch_size, seed=args.seed)
    return P.ConstantGradient(np.ones(d), noise_dist=args.noise)


def _optimizers(args):
    from .optim import SGD, SGDM, HeavyBall
    out = []
    for name in args.optimizers.split(","):
        name = name.strip().lower()
        if name == "sgd":
            out.append(SGD(args.lr))
        elif name == "sgdm":
            out.append(SGDM(args.lr, args.beta))
        elif name in ("heavyball", "hb"):
            out.append(HeavyBall(args.lr * (1 - args.beta), args.beta, args.dampening))
        else:
            raise ValueError(f"--optimizers: unknown optimizer {name!r} (use sgd, sgdm, heavyball)")
    return out


def _writable_folder(flag: str, folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it writable (create and delete a file in it),
    so that a run never fails at the very end, after the work, on its output."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".sdeverify-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{flag} {str(folder)!r} is not a writable folder "
                         f"({exc.strerror or exc})") from None
    return path


def _check_simulate_args(args) -> None:
    """Every flag of ``simulate`` against its range, before anything is built or run."""
    from .engine.spec import _check_memory, memory_estimate
    from .validation import finite_float, nonneg_int, positive_int
    for flag in ("dim", "paths", "steps", "record", "batch_size"):
        positive_int("--" + flag.replace("_", "-"), getattr(args, flag))
    if nonneg_int("--seed", args.seed) >= 2 ** 64:
        raise ValueError(f"--seed must be in [0, 2**64), got {args.seed}")
    finite_float("--lr", args.lr, low=0.0)
    finite_float("--beta", args.beta, low=0.0, high=1.0, high_open=True)
    finite_float("--dampening", args.dampening, low=0.0, high=1.0)
    finite_float("--sigma", args.sigma, low=0.0)
    finite_float("--x0", args.x0)
    finite_float("--curvature", args.curvature, low=0.0)
    finite_float("--svag", args.svag, low=1.0)
    n_opt = len(_optimizers(args))
    _check_memory(memory_estimate(n_opt=n_opt, steps=args.steps, paths=args.paths,
                                  dim=args.dim, n_rec=min(args.record, args.steps) + 1, n_obs=4,
                                  store_states=False,
                                  itemsize=4 if args.dtype == "float32" else 8),
                  f"--paths {args.paths} --steps {args.steps} --record {args.record}")
    get_backend(args.backend).require()           # e.g. CudaUnavailable: one line, exit 2
    if args.out:
        _writable_folder("--out", args.out)


def cmd_simulate(args) -> int:
    from .progress import bar
    from .simulate import simulate
    _check_simulate_args(args)
    problem = _problem(args)
    if args.svag != 1.0:
        from .problems import SVAG
        problem = SVAG(problem, args.svag)
    opts = _optimizers(args)
    x0 = np.full(problem.dim, args.x0)
    # at most steps + 1 distinct recorded steps, whatever --record says
    n_rec = min(args.record, args.steps)
    record = np.unique(np.linspace(0, args.steps, n_rec + 1).round().astype(np.int64))
    shard = max(config.BLOCK, (args.paths // 20) // config.BLOCK * config.BLOCK)
    parts = []
    t0 = time.perf_counter()
    with bar(args.paths, "paths", quiet=args.quiet, unit="path") as update:
        for off in range(0, args.paths, shard):
            parts.append(simulate(problem, opts, x0, steps=args.steps, paths=min(shard, args.paths - off),
                                  sigma=args.sigma, seed=args.seed, record=record,
                                  backend=args.backend, path_offset=off, dtype=args.dtype,
                                  observables=["loss", "sqnorm"] + [f"x{i}" for i in range(min(problem.dim, 2))]))
            update(off + parts[-1].paths)
    res = parts[0].merge(*parts[1:]) if len(parts) > 1 else parts[0]
    print(f"{problem.name}, d={problem.dim}, sigma={args.sigma}, {args.steps} steps, "
          f"{args.paths} paths, seed {args.seed}, backend {args.backend}: {time.perf_counter() - t0:.2f} s")
    print(res.summary())
    if args.out:
        path = res.save(Path(args.out) / "simulation")
        print(f"wrote {path} and {path.parent / json.loads(path.read_text())['npz']}")
    return 0


def _run_one(name: str, size: str, seed: int, out: Path | None, quiet: bool, overrides=None,
             backend: str = "cpu", cluster=None, resume: bool = False):
    import contextlib
    from . import experiments
    from .progress import bar
    mod = experiments.get(name)
    overrides = dict(overrides or {})
    if backend != "cpu" and "backend" in getattr(mod.run, "defaults", {}):
        overrides["backend"] = backend       # the trained-network checks train on the GPU
    on_cluster = contextlib.nullcontext()
    if cluster is not None:                  # every simulate/fit call of the check goes there
        from .distributed import use
        on_cluster = use(cluster, points_dir=None if out is None else out / "points" / name,
                         resume=resume)
    with bar(1, name, quiet=quiet) as update, on_cluster:
        res = mod.run(size=size, seed=seed, progress=update, **(overrides or {}))
    fig = None
    if out is not None:
        res.save(out)
        fig = mod.plot(res, out / f"{name}.png")
    return res, fig


def _verdict_rows(res) -> list[list[str]]:
    from .verdict import describe
    return [[v.claim, v.reference, v.prediction, describe(v), "PASS" if v.passed else "FAIL"]
            for v in res.verdicts]


TABLE_HEAD = ["claim", "paper", "prediction", "measured", "verdict"]


def _column_widths(rows: list[list[str]], width: int) -> list[int]:
    """Column widths that fit ``width`` characters: the reference and the measurement get up
    to 24 and 44, the claim and the prediction share the rest (at least 16 each)."""
    natural = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    w = [natural[0], min(natural[1], 24), natural[2], min(natural[3], 44), natural[4]]
    room = width - 2 * (len(w) - 1) - w[1] - w[3] - w[4]
    if w[0] + w[2] > room:
        room = max(room, 32)
        w[2] = min(natural[2], max(16, int(room * natural[2] / (natural[0] + natural[2]))))
        w[0] = max(16, room - w[2])
    return w


def _print_table(rows: list[list[str]]) -> None:
    """The verdict table, every cell wrapped (never cut) to fit the terminal's width."""
    import shutil
    import textwrap
    rows = [TABLE_HEAD] + rows
    w = _column_widths(rows, shutil.get_terminal_size((160, 24)).columns)
    for i, r in enumerate(rows):
        cells = [textwrap.wrap(c, w[j]) or [""] for j, c in enumerate(r)]
        for k in range(max(len(c) for c in cells)):
            print("  ".join((c[k] if k < len(c) else "").ljust(w[j])
                            for j, c in enumerate(cells)).rstrip())
        if i == 0:
            print("  ".join("-" * x for x in w))


def cmd_run(args) -> int:
    from . import experiments
    experiments.get(args.name)
    _check_seed(args.seed)
    out = _writable_folder("--out", args.out) if args.out else None
    _check_backend(args.backend)
    client = _start_cluster(args)
    res, fig = _run_one(args.name, args.size, args.seed, out, args.quiet, backend=args.backend,
                        cluster=client)
    _print_table(_verdict_rows(res))
    print(f"{args.name}: {'PASS' if res.passed else 'FAIL'} in {res.meta.get('wall_time', 0):.1f} s")
    if out is not None:
        print(f"wrote {out / (args.name + '.json')}" + (f" and {fig}" if fig else ""))
    return 0 if res.passed else 1


def _entry(name: str, res, fig) -> dict:
    """The summary entry (plus the table rows) of a finished check."""
    return {"name": name, "passed": res.passed, "wall_time": res.meta.get("wall_time"),
            "figure": str(fig) if fig else None, "verdicts": [v.as_dict() for v in res.verdicts],
            "rows": _verdict_rows(res)}


def job_passed(entries: list[dict]) -> bool:
    """The main job's rule: it passes iff every check passed (a crashed check has
    ``passed: False``) — tested on every run by :mod:`sdeverify.canary`."""
    return all(e["passed"] for e in entries)


def _canary_row() -> tuple[list[str], list[str]]:
    """Run the verdict-machinery canary (:mod:`sdeverify.canary`): its table row and the
    problems it found (empty when the machinery decided every known claim as known)."""
    from .canary import EXPECTED, machinery_problems
    try:
        problems = machinery_problems(_entry, job_passed)
    except Exception as exc:  # the canary itself crashing is a machinery fault too
        problems = [f"canary raised {type(exc).__name__}: {exc}"]
    n = len(EXPECTED)
    measured = "; ".join(problems) if problems else f"{n}/{n} decided as known"
    return (["verdict machinery canary: known-true claims pass, known-false fail, a failing "
             "check fails the job", "(method)", f"{n} claims of known truth", measured,
             "FAIL" if problems else "PASS"], problems)


def _jobs_of(args, n_checks: int, client) -> int:
    """Worker processes for ``check``: ``--jobs`` (0 = one per core), 1 on a Dask cluster."""
    from .check_jobs import default_jobs
    jobs = getattr(args, "jobs", None)
    if jobs is not None and jobs < 0:
        raise ValueError(f"--jobs must be >= 0 (0: one per core), got {jobs}")
    if client is not None:
        if jobs not in (None, 0, 1):
            raise ValueError("--jobs runs checks in local processes; with --workers/--scheduler "
                             "the cluster runs them: leave --jobs out")
        return 1
    return default_jobs(n_checks) if not jobs else min(jobs, max(1, n_checks))


def cmd_check(args) -> int:
    from . import experiments
    from .result import atomic_write_text, jsonable
    size = "full" if args.full else ("smoke" if args.smoke else "quick")
    names = experiments.available()
    _check_seed(args.seed)
    if args.only is not None:
        wanted = [n.strip() for n in args.only.split(",")]
        if not any(wanted):
            raise ValueError("--only must name at least one check (see `sdeverify list`)")
        for n in wanted:
            experiments.get(n)
        names = [n for n in names if n in wanted]
    out = _writable_folder("--out", args.out)
    _check_backend(args.backend)
    jobs = _jobs_of(args, len(names), getattr(args, "cluster", None))
    canary_row, canary_problems = _canary_row()
    if canary_problems:
        print("sdeverify: the verdict machinery failed its canary: " + "; ".join(canary_problems),
              file=sys.stderr, flush=True)
    client = _start_cluster(args)
    entries: dict[int, dict] = {}
    t0 = time.perf_counter()

    def record(i: int, entry: dict) -> None:
        entries[i] = entry
        # the summary is rewritten after each check: an interrupted run keeps what finished
        atomic_write_text(out / "summary.json", json.dumps(
            {"size": size, "seed": args.seed, "complete": False,
             "checks": [{k: v for k, v in entries[j].items() if k != "rows"} for j in sorted(entries)]},
            indent=1, default=jsonable))

    todo = []
    for i, name in enumerate(names):
        res = _reusable(name, size, args.seed, out) if args.resume else None
        if res is None:
            todo.append(i)
            continue
        print(f"[{i + 1}/{len(names)}] {name} ({size}): reusing {out / name}.json", file=sys.stderr,
              flush=True)
        fig = out / f"{name}.png"
        if not fig.exists():
            fig = experiments.get(name).plot(res, fig)
        record(i, _entry(name, res, fig))
    if jobs > 1 and len(todo) > 1:
        from .check_jobs import describe, run_checks
        jobs = min(jobs, len(todo))
        print(f"running {len(todo)} checks ({size}) on {describe(jobs)}", file=sys.stderr, flush=True)

        def done(k: int, entry: dict) -> None:
            i = todo[k]
            state = "ERROR" if entry.get("error") else ("PASS" if entry["passed"] else "FAIL")
            took = f" in {entry['wall_time']:.1f} s" if entry.get("wall_time") else ""
            print(f"[{len(entries) + 1}/{len(names)}] {names[i]} ({size}): {state}{took}",
                  file=sys.stderr, flush=True)
            record(i, entry)
        run_checks([names[i] for i in todo], size, args.seed, out, jobs, args.backend, done)
    else:
        for i in todo:
            name = names[i]
            print(f"[{i + 1}/{len(names)}] {name} ({size}) ...", file=sys.stderr, flush=True)
            try:
                res, fig = _run_one(name, size, args.seed, out, args.quiet, backend=args.backend,
                                    cluster=client, resume=args.resume)
            except Exception as exc:  # a crashing check is a failed check, reported, not hidden
                record(i, {"name": name, "passed": False, "error": f"{type(exc).__name__}: {exc}"})
                continue
            record(i, _entry(name, res, fig))
    wall = time.perf_counter() - t0
    summary = [entries[i] for i in sorted(entries)]
    rows = [canary_row]
    for e in summary:
        rows += e.get("rows") or [[e["name"], "-", "-", f"ERROR: {e['error']}", "FAIL"]]
    passed = job_passed(summary) and not canary_problems
    atomic_write_text(out / "summary.json", json.dumps(
        {"size": size, "seed": args.seed, "complete": True, "passed": passed, "wall_time": wall,
         "jobs": jobs, "canary": {"passed": not canary_problems, "problems": canary_problems},
         "checks": [{k: v for k, v in e.items() if k != "rows"} for e in summary]},
        indent=1, default=jsonable))
    _print_table(rows)
    n_pass = sum(r[-1] == "PASS" for r in rows)
    report = _write_report(out)
    print(f"\n{n_pass} passed, {len(rows) - n_pass} failed  ({len(names)} checks, {size}, "
          f"{wall:.0f} s; results in {out}/" + (f", report {report}" if report else "") + ")")
    return 0 if passed else 1


def _write_report(out: Path) -> Path | None:
    """report.html of a check run; a failure to write it is reported, not fatal (the
    results are saved; `sdeverify report DIR` rebuilds it)."""
    from .report import write_report
    try:
        return write_report(out)
    except Exception as exc:
        print(f"sdeverify: warning: report.html not written: {type(exc).__name__}: {_one_line(exc)}",
              file=sys.stderr)
        return None


def cmd_report(args) -> int:
    from .checkrun import load_check
    from .report import write_report
    folder = Path(args.folder)
    path = write_report(folder, args.html)
    run = load_check(folder)
    n = sum(len(r.verdicts) for r in run.results.values())
    print(f"wrote {path} ({len(run.results)} checks, {n} verdicts, "
          f"{'PASS' if run.passed else 'FAIL'})")
    return 0


def _reusable(name: str, size: str, seed: int, out: Path):
    """A finished result of this check in ``out`` from the same size, seed and package
    versions (``check --resume``), or None.  ``NAME.json`` is written after ``NAME.npz``, both
    atomically, so a JSON file on disk means a complete result."""
    from .experiments.base import ExperimentResult
    from .result import versions
    if not (out / f"{name}.json").exists():
        return None
    try:
        res = ExperimentResult.load(out, name)
    except Exception:   # unreadable or from an incompatible layout: run it again
        return None
    meta = res.meta
    if meta.get("size") != size or meta.get("seed") != seed or meta.get("versions") != versions():
        return None
    return res


def _start_cluster(args):
    """The Dask client of ``--workers N`` / ``--scheduler ADDR`` (started here, after every
    other flag was checked; closed by :func:`main`), or None without either flag."""
    cluster = getattr(args, "cluster", None)
    if cluster is None:
        return None
    client = cluster.start()
    print(f"sdeverify: running on {cluster.describe()}", file=sys.stderr, flush=True)
    return client


def _cluster_flags(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run every simulation and training on a local Dask cluster of N worker "
                        "processes, 1 thread each (pip install 'sdeverify[dist]'); finished "
                        "points are saved under OUT/points/")
    g.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="run on the Dask cluster whose scheduler is at ADDR (tcp://HOST:PORT)")


def _cluster_of(args):
    """A :class:`sdeverify.distributed.Cluster` for the flags (checked now, started later by
    :func:`_start_cluster`), or a null context; stored as ``args.cluster``."""
    import contextlib
    workers, scheduler = getattr(args, "workers", None), getattr(args, "scheduler", None)
    if workers is None and scheduler is None:
        args.cluster = None
        return contextlib.nullcontext()
    from .distributed import Cluster
    args.cluster = Cluster(workers=workers, scheduler=scheduler)
    return args.cluster


def _check_backend(backend: str) -> None:
    """``--backend cuda`` needs a usable GPU (or the CUDA simulator): say so before any work."""
    get_backend(backend).require()


def _check_seed(seed: int) -> None:
    from .validation import nonneg_int
    if nonneg_int("--seed", seed) >= 2 ** 64:
        raise ValueError(f"--seed must be in [0, 2**64), got {seed}")


def cmd_list(args) -> int:
    from . import experiments
    for name in experiments.available():
        mod = experiments.get(name)
        print(f"{name:20s} {getattr(mod, 'TITLE', '')}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``sdeverify simulate: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sdeverify", description=(
        "Numerical checks of 'The Marginal Value of Momentum for Small Learning Rate SGD' "
        "(ICLR 2024): ensembles of SGD/SGDM on noisy-gradient problems, weak errors, SDE limits."))
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("simulate", help="simulate coupled SGD/SGDM ensembles and summarise",
                       description="Simulate ensembles of optimizers sharing the oracle noise "
                                   "(common random numbers) and print mean ± 95% intervals.")
    s.add_argument("--problem", choices=PROBLEMS, default="quadratic", help="NGOS problem (default quadratic)")
    s.add_argument("--dim", type=int, default=8, help="dimension d (default 8)")
    s.add_argument("--curvature", type=float, default=4.0, help="quadratic: largest Hessian eigenvalue (default 4)")
    s.add_argument("--noise", choices=("normal", "rademacher"), default="normal", help="noise law")
    s.add_argument("--batch-size", type=int, default=8, help="linreg: minibatch size B")
    s.add_argument("--svag", type=float, default=1.0, help="SVAG parameter ell >= 1 (Def 6.1; default off)")
    s.add_argument("--optimizers", default="sgd,sgdm", help="comma list of sgd, sgdm, heavyball")
    s.add_argument("--lr", type=float, default=0.05, help="learning rate eta (heavyball uses eta*(1-beta))")
    s.add_argument("--beta", type=float, default=0.9, help="momentum beta in [0,1)")
    s.add_argument("--dampening", type=float, default=0.0, help="heavyball dampening in [0,1]")
    s.add_argument("--sigma", type=float, default=1.0, help="noise scale sigma >= 0")
    s.add_argument("--x0", type=float, default=1.0, help="initial value of every coordinate")
    s.add_argument("--paths", type=int, default=4096, help="number of paths")
    s.add_argument("--steps", type=int, default=1000, help="number of steps")
    s.add_argument("--record", type=int, default=config.DEFAULT_RECORDS, help="number of recorded steps (at most --steps)")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--backend", choices=backends(), default="cpu")
    s.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="state/draw precision (float32: cpu backend only; see simulate's docstring)")
    s.add_argument("--out", default=None, help="folder for simulation.json / simulation.npz")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_simulate)

    r = sub.add_parser("run", help="run one experiment (see `sdeverify list`)",
                       description="Run one registered experiment, print its verdict table and "
                                   "write NAME.json/.npz/.png; exit 1 if a verdict fails.")
    r.add_argument("name", help="experiment name, one of: " + ", ".join(EXPERIMENTS))
    r.add_argument("--size", choices=("smoke", "quick", "full"), default="quick",
                   help="smoke: seconds (CI); quick: part of `check --quick` (default); "
                        "full: paper quality")
    r.add_argument("--seed", type=int, default=0, help="seed of the random streams (default 0)")
    r.add_argument("--out", default="sdeverify-out", help="folder for NAME.json/.npz/.png")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                   help="where the trained-network checks (train_*) train: cpu (default) or cuda "
                        "(numba.cuda, needs a GPU); the other checks always run on the CPU")
    _cluster_flags(r)
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check", help="run every registered check of the paper's claims",
                       description="Run the registered checks, print claim / prediction / "
                                   "measured interval / verdict, write per-check JSON+PNG and "
                                   "summary.json; exit 1 if any check fails.")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="about 2 minutes on 2 cores from a cold cache (default)")
    g.add_argument("--full", action="store_true", help="paper-quality sizes")
    g.add_argument("--smoke", action="store_true", help="seconds per check (CI)")
    c.add_argument("--only", default=None, help="comma list of check names")
    c.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="run the checks in N worker processes on this machine (default: one "
                        "per core, at most 4; 1: one after the other in this process)")
    c.add_argument("--out", default="sdeverify-out", help="output folder (default sdeverify-out)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random streams (default 0)")
    c.add_argument("--resume", action="store_true",
                   help="reuse results already in --out from the same size, seed and package "
                        "versions (continue an interrupted run; with --workers/--scheduler also "
                        "the finished points of an interrupted check, OUT/points/)")
    c.add_argument("--quiet", action="store_true")
    c.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                   help="where the trained-network checks (train_*) train: cpu (default) or cuda "
                        "(numba.cuda, needs a GPU, e.g. with --full); the other checks run on the CPU")
    _cluster_flags(c)
    c.set_defaults(func=cmd_check)

    rp = sub.add_parser("report", help="rebuild DIR/report.html from a check's saved results",
                        description="Write one self-contained HTML page (verdict table with "
                                    "intervals, every figure inline) from the results that "
                                    "`sdeverify check --out DIR` saved.")
    rp.add_argument("folder", help="the --out folder of a check run")
    rp.add_argument("--html", default=None, help="output file (default DIR/report.html)")
    rp.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="list the registered checks")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _cluster_of(args):
            return args.func(args)
    except (ValueError, RuntimeError) as exc:   # UserFunctionError, ResultFileError are ValueErrors
        if isinstance(exc, RuntimeError) and type(exc).__name__ != "CudaUnavailable":
            raise
        print(f"sdeverify: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:                           # e.g. the disk filled up while saving
        print(f"sdeverify: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdeverify: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
