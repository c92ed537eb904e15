"""What every experiment returns: data, verdicts on the paper's claims, metadata.

An experiment module exposes

    NAME: str
    TITLE: str
    SIZES: dict                              # size -> configuration

    @experiment(NAME, SIZES, defaults={...})  # the harness below: overrides, timing, metadata
    def run(cfg, seed, progress) -> (params, data, verdicts)

    def plot(result, path) -> Path           # draws from the saved data only (save_figure)

so that callers see ``run(*, size="quick", seed=0, progress=None, **overrides) ->
ExperimentResult`` and the module holds only its measurement and its judgement.

``size`` is "smoke" (seconds, used by CI), "quick" (part of ``sdeverify check --quick``,
about a minute) or "full" (paper quality).  ``progress(done, total)`` is called as sub-runs
finish.  Results are immutable, carry their parameters, seed, versions and timings, and
save atomically as JSON (+ NPZ for arrays).
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..dispatch import Call
from ..result import jsonable, load_pair, save_pair, versions
from ..stats import Interval  # noqa: F401  (re-exported: experiments import it from here)
from ..verdict import Value, Verdict  # noqa: F401

# Interval, Value, Verdict and Call are imported from here by the experiments but defined
# elsewhere (sdeverify.stats, sdeverify.verdict, sdeverify.dispatch): they are not part of
# this module's API.
__all__ = ["SIZES", "Progress", "Measure", "ExperimentResult", "check_size", "size_config",
           "experiment", "Timer", "make_meta", "subplots", "save_figure", "simulate", "simulate_many",
           "run_many", "run_longest_first", "Ticker", "tick"]

SIZES = ("smoke", "quick", "full")
Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class ExperimentResult:
    """What an experiment's ``run`` returns: the check's ``name``, its ``params`` (the
    configuration it ran with), its ``data`` (arrays and numbers the figure is drawn from),
    its ``verdicts`` (:class:`~sdeverify.verdict.Verdict`, one per claim of the paper checked)
    and ``meta`` (seed, size, wall time, versions)."""
    name: str
    params: dict
    data: dict               # name -> np.ndarray / float / list
    verdicts: tuple
    meta: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every verdict passed."""
        return all(v.passed for v in self.verdicts)

    def save(self, folder: str | Path) -> Path:
        """Write ``NAME.json`` and ``NAME.<content hash>.npz`` into ``folder`` as one unit
        (:func:`sdeverify.result.save_pair`: a crash at any moment leaves the old or the new
        pair, never a mix); returns the JSON path."""
        arrays = {k: np.asarray(v) for k, v in self.data.items()}
        doc = {"name": self.name, "params": self.params, "meta": self.meta,
               "verdicts": [v.as_dict() for v in self.verdicts], "passed": self.passed,
               "data_keys": sorted(arrays)}
        path = save_pair(Path(folder) / self.name, json.loads(json.dumps(doc, default=jsonable)),
                         arrays, labels=("name", "data_keys"))
        stale = Path(folder) / f"{self.name}.npz"          # the earlier, unhashed layout
        if stale.exists():
            stale.unlink()
        return path

    @classmethod
    def load(cls, folder: str | Path, name: str) -> "ExperimentResult":
        """Load a saved result, checking that its ``.json`` and ``.npz`` belong together
        (:func:`sdeverify.files.load_pair`: both hashes and the labels; earlier unhashed
        layouts are refused)."""
        doc, data, _ = load_pair(Path(folder) / name, labels=("name", "data_keys"))
        return cls(doc["name"], doc["params"], data,
                   tuple(Verdict.from_dict(v) for v in doc["verdicts"]), doc["meta"])


def check_size(size: str) -> str:
    """``size`` if it is one of :data:`SIZES` ("smoke", "quick", "full"), else a
    ``ValueError`` listing them."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return size


def size_config(sizes: dict, size: str, overrides: dict, defaults: dict | None = None) -> dict:
    """The configuration of ``size`` (``defaults`` first, then ``sizes[size]``) with
    ``overrides`` applied; an unknown override key is an error naming the valid ones (a typo
    must not be silently ignored)."""
    size = check_size(size)
    base = dict(defaults or {}, **sizes[size])
    unknown = set(overrides) - set(base)
    if unknown:
        raise ValueError(f"unknown overrides {sorted(unknown)}; valid: {sorted(base)}")
    return dict(base, **overrides)


Measure = Callable[..., tuple]


def experiment(name: str, sizes: dict, defaults: dict | None = None) -> Callable[[Measure], Callable]:
    """The one experiment harness: turns a check's measurement-and-judgement function

        measure(cfg, seed, progress) -> (params, data, verdicts)

    into the module's ``run(*, size="quick", seed=0, progress=None, **overrides)``, which
    builds ``cfg`` from ``defaults`` and ``sizes[size]`` (an unknown override is an error
    naming the valid keys), times the measurement, and returns the
    :class:`ExperimentResult` with its metadata (seed, size, wall time, versions).
    ``progress(done, total)`` is passed through for the measurement's :func:`tick` calls.
    ``run.defaults`` / ``run.sizes`` expose the configuration (the CLI reads them).
    """
    defaults = dict(defaults or {})

    def wrap(measure: Measure) -> Callable:
        @functools.wraps(measure)
        def run(*, size: str = "quick", seed: int = 0, progress: Progress = None,
                **overrides) -> ExperimentResult:
            cfg = size_config(sizes, size, overrides, defaults)
            with Timer() as t:
                params, data, verdicts = measure(cfg, seed, progress)
            return ExperimentResult(name, params, data, tuple(verdicts),
                                    make_meta(seed, size, t.seconds))
        run.measure, run.defaults, run.sizes = measure, defaults, sizes
        return run
    return wrap


class Timer:
    """``with Timer() as t:`` — wall-clock seconds of the block in ``t.seconds``
    (``time.perf_counter``)."""

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


def make_meta(seed: int, size: str, seconds: float) -> dict:
    """An experiment's metadata: ``seed``, ``size``, ``wall_time`` (s) and ``versions``
    (:func:`sdeverify.result.versions`)."""
    return {"seed": seed, "size": size, "wall_time": seconds, "versions": versions()}


def subplots(ncols: int, figsize: tuple[float, float] | None = None, nrows: int = 1,
             **kwargs: Any) -> tuple[Any, Any]:
    """A headless (Agg) matplotlib figure with ``nrows × ncols`` panels: ``(fig, axes)``, a
    ``matplotlib.figure.Figure`` and its axes (``plt.subplots``; ``kwargs`` passed on).
    ``figsize`` defaults to the paper's two-column width (:func:`sdeverify.figstyle.figsize`).
    Typed ``Any`` so that importing this module does not import matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..figstyle import figsize as paper_size
    kwargs.setdefault("layout", "constrained")     # room for titles, labels and legends
    return plt.subplots(nrows, ncols, figsize=figsize or paper_size(ncols, nrows), **kwargs)


def save_figure(fig: Any, path: str | Path, dpi: int | None = None) -> Path:
    """Lay out, write and close ``fig`` (a ``matplotlib.figure.Figure``) in the format of the
    path's suffix (one of :data:`sdeverify.figstyle.FORMATS`; PNG at ``dpi``, default
    :data:`sdeverify.figstyle.DPI`); returns the path."""
    import matplotlib.pyplot as plt
    from ..figstyle import DPI, check_format
    path = Path(path)
    check_format(path.suffix.lstrip("."), "figure path's suffix")
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi or DPI)
    plt.close(fig)
    return Path(path)


def simulate(*args: Any, **kw: Any) -> Any:
    """:func:`sdeverify.simulate` as a check calls it: without the paths' final states
    (``final_states=False`` unless the call says otherwise).  A check reads statistics only;
    on a cluster the final states would travel from the workers, be merged and be saved with
    every point for nothing (``svag --full``: about a gigabyte)."""
    from ..simulate import simulate as simulate_here
    kw.setdefault("final_states", False)
    return simulate_here(*args, **kw)


def _statistics_only(item: Any) -> Any:
    """A sweep item as a check runs it: a ``simulate`` keyword dict without final states
    (:func:`simulate`); a ``fit`` dict or a :class:`~sdeverify.dispatch.Call` as given."""
    if isinstance(item, Call) or item.get("kind", "simulate") != "simulate":
        return item
    return dict(item, final_states=item.get("final_states", False))


def simulate_many(calls: list[dict]) -> list:
    """Run a check's sweep points — independent :func:`sdeverify.simulate` calls given as
    keyword dicts — and return their results in order.  Inside a distributed session
    (``sdeverify check --workers N`` / ``--scheduler``, :func:`sdeverify.distributed.use`)
    all points are submitted to the cluster together, each cut into shards, and each saved as
    it completes; otherwise they run here one after the other.  Either way the results are
    bitwise the same (every call carries its own seed)."""
    return run_many(calls)


def run_many(items: list) -> list:
    """Run a check's sweep — :func:`sdeverify.simulate` calls given as keyword dicts and its
    per-point work given as :class:`~sdeverify.dispatch.Call` (exact references,
    statistics, bootstraps; a ``Call`` may make ``simulate`` calls of its own; a dict with
    ``kind="fit"`` is a :func:`sdeverify.train.fit` call) — and return
    their results in order.  Inside a distributed session (``sdeverify check --workers N``
    / ``--scheduler``, :func:`sdeverify.distributed.use`) every item is a task submitted
    with all the others (:func:`sdeverify.distributed.run_many`: the simulations cut into
    shards, each ``Call`` one task, a ``simulate`` call inside it run on its worker), so the
    cluster runs the whole check, not only its simulations; otherwise they run here one
    after the other.  Either way the results are bitwise the same (every call carries its
    own seed; a ``Call`` computes the same arithmetic wherever it runs).  A keyword dict
    may carry ``then``, a function of its result (the point's statistics): its value is
    returned instead, computed as soon as the point is in (on a cluster, while the workers
    run the other items).  A ``simulate`` call leaves out the final states unless it says
    otherwise (:func:`simulate`)."""
    from .. import distributed
    items = [_statistics_only(c) for c in items]
    session = distributed.active()
    if session is not None:
        return distributed.run_many(items, session, raise_errors=True)
    from ..train import fit
    out = []
    for c in items:
        if isinstance(c, Call):
            out.append(c())
            continue
        c = dict(c)
        then = c.pop("then", None)
        r = fit(**c) if c.pop("kind", "simulate") == "fit" else simulate(**c)
        out.append(r if then is None else then(r))
    return out


def run_longest_first(items: list, works: list) -> list:
    """:func:`run_many` with the items handed out in decreasing order of ``works`` (their
    estimated cost) — the classic rule for balancing a few workers, so that a cluster does
    not end on one long item alone — and the results returned in the order of ``items``
    (bitwise those of :func:`run_many`: every item carries its own seed)."""
    order = sorted(range(len(items)), key=lambda i: -works[i])
    out: list = [None] * len(items)
    for i, r in zip(order, run_many([items[i] for i in order])):
        out[i] = r
    return out


class Ticker:
    """``step()`` reports one more finished sub-run of ``total`` to ``progress``."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self) -> None:
        self.done += 1
        tick(self.progress, self.done, self.total)


def tick(progress: Progress, done: int, total: int) -> None:
    """Call ``progress(done, total)`` unless ``progress`` is None."""
    if progress is not None:
        progress(done, total)
