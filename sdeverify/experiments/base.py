"""What every experiment returns: data, verdicts on the paper's claims, metadata.

An experiment module exposes

    NAME: str
    TITLE: str
    def run(*, size="quick", seed=0, progress=None, **overrides) -> ExperimentResult
    def plot(result, path) -> Path          # draws from the saved data only

``size`` is "smoke" (seconds, used by CI), "quick" (part of ``sdeverify check --quick``,
about a minute) or "full" (paper quality).  ``progress(done, total)`` is called as sub-runs
finish.  Results are immutable, carry their parameters, seed, versions and timings, and
save atomically as JSON (+ NPZ for arrays).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..result import load_pair, save_pair, versions
from ..stats import Interval  # noqa: F401  (re-exported: experiments import it from here)
from ..verdict import Value, Verdict  # noqa: F401

SIZES = ("smoke", "quick", "full")
Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class ExperimentResult:
    name: str
    params: dict
    data: dict               # name -> np.ndarray / float / list
    verdicts: tuple
    meta: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def save(self, folder: str | Path) -> Path:
        """Write ``NAME.json`` and ``NAME.<content hash>.npz`` into ``folder`` as one unit
        (:func:`sdeverify.result.save_pair`: a crash at any moment leaves the old or the new
        pair, never a mix); returns the JSON path."""
        arrays = {k: np.asarray(v) for k, v in self.data.items()}
        doc = {"name": self.name, "params": self.params, "meta": self.meta,
               "verdicts": [v.as_dict() for v in self.verdicts], "passed": self.passed,
               "data_keys": sorted(arrays)}
        path = save_pair(Path(folder) / self.name, json.loads(json.dumps(doc, default=_jsonable)),
                         arrays, labels=("name", "data_keys"))
        stale = Path(folder) / f"{self.name}.npz"          # the earlier, unhashed layout
        if stale.exists():
            stale.unlink()
        return path

    @classmethod
    def load(cls, folder: str | Path, name: str) -> "ExperimentResult":
        """Load a saved result, checking that its ``.json`` and ``.npz`` belong together
        (also reads the earlier ``NAME.json`` + ``NAME.npz`` layout)."""
        doc, data, _ = load_pair(Path(folder) / name, labels=("name", "data_keys"))
        return cls(doc["name"], doc["params"], data,
                   tuple(Verdict.from_dict(v) for v in doc["verdicts"]), doc["meta"])


def _jsonable(o: Any):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return str(o)


def check_size(size: str) -> str:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return size


def size_config(sizes: dict, size: str, overrides: dict) -> dict:
    """The configuration of ``size`` with ``overrides`` applied; an unknown override key is
    an error naming the valid ones (a typo must not be silently ignored)."""
    size = check_size(size)
    unknown = set(overrides) - set(sizes[size])
    if unknown:
        raise ValueError(f"unknown overrides {sorted(unknown)}; valid: {sorted(sizes[size])}")
    return dict(sizes[size], **overrides)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def make_meta(seed: int, size: str, seconds: float) -> dict:
    return {"seed": seed, "size": size, "wall_time": seconds, "versions": versions()}


def subplots(ncols: int, figsize: tuple[float, float]):
    """A headless (Agg) matplotlib figure with ``ncols`` panels: (fig, axes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(1, ncols, figsize=figsize)


def save_figure(fig, path) -> Path:
    """Lay out, write (PNG, 110 dpi) and close ``fig``; returns the path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def tick(progress: Progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
