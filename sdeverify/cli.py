"""Command line: ``sdeverify simulate | run NAME | check | report | list | train``.

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
import time
from pathlib import Path

import numpy as np

from . import config
from .files import writable_folder
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


def _check_simulate_args(args) -> None:
    """Every flag of ``simulate`` against its range, before anything is built or run."""
    from .engine.spec import _check_memory, memory_estimate
    from .validation import finite_float, positive_int
    for flag in ("dim", "paths", "steps", "record", "batch_size"):
        positive_int("--" + flag.replace("_", "-"), getattr(args, flag))
    _check_seed(args.seed)
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
        writable_folder("--out", args.out)


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
    from .runner import run_one, verdict_rows
    experiments.get(args.name)
    _check_seed(args.seed)
    out = writable_folder("--out", args.out) if args.out else None
    _check_backend(args.backend)
    _check_data(args.data)
    client = _start_cluster(args)
    res, fig = run_one(args.name, args.size, args.seed, out, args.quiet, backend=args.backend,
                       cluster=client, fmt=args.format, keep_points=args.keep_points,
                       data=args.data)
    _print_table(verdict_rows(res))
    print(f"{args.name}: {'PASS' if res.passed else 'FAIL'} in {res.meta.get('wall_time', 0):.1f} s")
    if out is not None:
        print(f"wrote {out / (args.name + '.json')}" + (f" and {fig}" if fig else ""))
    return 0 if res.passed else 1


def _jobs_of(args, n_checks: int, client) -> int:
    """Worker processes for ``check``: ``--jobs`` (>= 1; default one per core, at most 4);
    on a Dask cluster, how many checks run side by side there (default: all of them)."""
    from .check_jobs import default_jobs
    jobs = getattr(args, "jobs", None)
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be >= 1 (leave it out for one per core, at most 4), got {jobs}")
    if client is not None:
        return max(1, n_checks) if jobs is None else min(jobs, max(1, n_checks))
    return default_jobs(n_checks) if jobs is None else min(jobs, max(1, n_checks))


def cmd_check(args) -> int:
    from . import experiments
    from .runner import run_job
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
    out = writable_folder("--out", args.out)
    _check_backend(args.backend)
    _check_data(args.data)
    jobs = _jobs_of(args, len(names), getattr(args, "cluster", None))
    rows, summary = run_job(names, size=size, seed=args.seed, out=out, jobs=jobs,
                            backend=args.backend, resume=args.resume, quiet=args.quiet,
                            start_cluster=lambda: _start_cluster(args), fmt=args.format,
                            keep_points=args.keep_points, data=args.data,
                            # a local cluster (--workers) is not even started at smoke size;
                            # --scheduler still connects (a wrong address is an error)
                            cluster_wanted=getattr(args, "workers", None) is not None)
    _print_table(rows)
    report = _write_report(out)
    n_pass, n_fail = _tally(out, rows)
    print(f"\n{n_pass} passed, {n_fail} failed  ({len(names)} checks, {size}, "
          f"{summary['wall_time']:.0f} s; results in {out}/" + (f", report {report}" if report else "") + ")")
    return 0 if summary["passed"] else 1


def _tally(out: Path, rows: list[list[str]]) -> tuple[int, int]:
    """(passed, failed) verdicts of the run saved in ``out``, by the rule report.html uses
    (:func:`sdeverify.report.tally`: the canary counted as one verdict); from the table's
    rows only if the folder cannot be read back."""
    from .checkrun import load_check
    from .report import tally
    try:
        t = tally(load_check(out))
        return t.passed, t.failed
    except Exception:          # unreadable folder: already reported by _write_report
        n_pass = sum(r[-1] == "PASS" for r in rows)
        return n_pass, len(rows) - n_pass


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
    from .report import tally, write_report
    folder = Path(args.folder)
    path = write_report(folder, args.html)
    run = load_check(folder)
    t = tally(run)
    print(f"wrote {path} ({len(run.results)} checks, {t.passed} passed, {t.failed} failed, "
          f"{'PASS' if run.passed else 'FAIL'})")
    return 0 if run.passed else 1


def _start_cluster(args):
    """The Dask client of ``--workers N`` / ``--scheduler ADDR`` (started here, after every
    other flag was checked; closed by :func:`main`), or None without either flag."""
    cluster = getattr(args, "cluster", None)
    if cluster is None:
        return None
    client = cluster.start()
    print(f"sdeverify: running on {cluster.describe()}", file=sys.stderr, flush=True)
    return client


def _format_flag(p) -> None:
    """``--format`` of ``run`` / ``check``: the figures' file format."""
    from .figstyle import FORMATS
    p.add_argument("--format", choices=FORMATS, default="png",
                   help="figure format: png (embedded in report.html), pdf or svg (vector, "
                        "for a paper); default png")


def _cluster_flags(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run every simulation and training on a local Dask cluster of N worker "
                        "processes, 1 thread each (pip install 'sdeverify[dist]'); calls too "
                        "small to pay for it run here (a warning says so); finished points are "
                        "saved under OUT/points/ until the check's result is")
    g.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="run on the Dask cluster whose scheduler is at ADDR (tcp://HOST:PORT)")
    p.add_argument("--keep-points", action="store_true",
                   help="with --workers/--scheduler: keep each check's finished points "
                        "(OUT/points/NAME/) after its result is saved (default: deleted then)")


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


def _train_backend_flag(p, cuda_note: str = "") -> None:
    """``--backend`` of ``run`` / ``check``: where the trained-network checks train, one of
    the registered trainer backends (:func:`sdeverify.train.backends.names`)."""
    from .train import backends as trainers
    names = trainers.names()
    p.add_argument("--backend", choices=names, default="cpu",
                   help="where the trained-network checks (train_*) train: one of "
                        f"{', '.join(names)} (default cpu; cuda: numba.cuda, needs a GPU"
                        f"{cuda_note}); the other checks always run on the CPU")


def _train_data_flag(p) -> None:
    """``--data`` of ``run`` / ``check``: what the trained-network checks train on."""
    p.add_argument("--data", default=None, metavar="DATA",
                   help="what the trained-network checks (train_batch_size, train_svag) train "
                        "on: teacher_student or digits (the MLP), conv_teacher or "
                        "cifar10:FOLDER (the CIFAR ResNet, FOLDER the extracted "
                        "cifar-10-batches-py); default: each size's own (the MLP at smoke and "
                        "quick size, the ResNet on conv_teacher at full size)")


def _check_data(data: str | None) -> None:
    """``--data``: a known source, and a CIFAR-10 folder that exists — before any work."""
    if data is None:
        return
    from .experiments.train_common import DATA_SOURCES
    if data in DATA_SOURCES[:-1]:
        return
    if data.startswith("cifar10:") and data[len("cifar10:"):]:
        folder = data[len("cifar10:"):]
        if not os.path.isdir(folder):
            raise ValueError(f"--data {data}: no such folder {folder!r} (the extracted "
                             f"cifar-10-batches-py directory)")
        return
    raise ValueError(f"--data must be one of {', '.join(DATA_SOURCES)}, got {data!r}")


def _check_backend(backend: str) -> None:
    """``--backend cuda`` needs a usable GPU (or the CUDA simulator): say so before any work.
    The device check is the engine's backend of the same name, where there is one (the
    trainer's and the engine's cuda backends need the same device)."""
    if backend in backends():
        get_backend(backend).require()


def _check_seed(seed: int) -> None:
    from .validation import seed as valid_seed
    valid_seed(seed, "--seed")


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
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Simulate ensembles of optimizers sharing the oracle noise "
                                   "(common random numbers) and print mean ± 95% intervals.")
    s.add_argument("--problem", choices=PROBLEMS, default="quadratic", help="NGOS problem")
    s.add_argument("--dim", type=int, default=8, help="dimension d")
    s.add_argument("--curvature", type=float, default=4.0, help="quadratic: largest Hessian eigenvalue")
    s.add_argument("--noise", choices=("normal", "rademacher"), default="normal", help="noise law")
    s.add_argument("--batch-size", type=int, default=8, help="linreg: minibatch size B")
    s.add_argument("--svag", type=float, default=1.0, help="SVAG parameter ell >= 1 (Def 6.1; 1 = off)")
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
    _train_backend_flag(r)
    _train_data_flag(r)
    _format_flag(r)
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
                        "per core, at most 4; 1: one after the other in this process); with "
                        "--workers/--scheduler: N checks side by side on the cluster (default: "
                        "all; 1: one after the other)")
    c.add_argument("--out", default="sdeverify-out", help="output folder (default sdeverify-out)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random streams (default 0)")
    c.add_argument("--resume", action="store_true",
                   help="reuse results already in --out from the same size, seed and package "
                        "versions (continue an interrupted run; with --workers/--scheduler also "
                        "the finished points of an interrupted check, OUT/points/)")
    c.add_argument("--quiet", action="store_true")
    _train_backend_flag(c, " (e.g. with --full)")
    _train_data_flag(c)
    _format_flag(c)
    _cluster_flags(c)
    c.set_defaults(func=cmd_check)

    rp = sub.add_parser("report", help="rebuild DIR/report.html from a check's saved results",
                        description="Write one self-contained HTML page (verdict table with "
                                    "intervals, every figure inline) from the results that "
                                    "`sdeverify check --out DIR` saved; exit 1 if the run "
                                    "reads as failed (a failed verdict or canary, a missing or "
                                    "altered check result).")
    rp.add_argument("folder", help="the --out folder of a check run")
    rp.add_argument("--html", default=None, help="output file (default DIR/report.html)")
    rp.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="list the registered checks")
    ls.set_defaults(func=cmd_list)

    from .train_command import add_parser as add_train_parser
    add_train_parser(sub)
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
