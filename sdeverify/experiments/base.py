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

from ..result import atomic_write_npz, atomic_write_text, versions
from ..stats import Interval

SIZES = ("smoke", "quick", "full")
Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class Verdict:
    """One claim of the paper, checked: the prediction, the measurement and the rule."""
    claim: str
    reference: str
    prediction: str
    measured: Interval
    passed: bool
    rule: str

    def as_dict(self) -> dict:
        return {"claim": self.claim, "reference": self.reference, "prediction": self.prediction,
                "measured": self.measured.as_dict(), "passed": self.passed, "rule": self.rule}

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        return cls(d["claim"], d["reference"], d["prediction"], Interval(**d["measured"]),
                   bool(d["passed"]), d["rule"])


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
        """Write ``NAME.json`` and ``NAME.npz`` into ``folder`` atomically; returns the JSON path."""
        folder = Path(folder)
        arrays = {k: np.asarray(v) for k, v in self.data.items()}
        atomic_write_npz(folder / f"{self.name}.npz", arrays)
        doc = {"name": self.name, "params": self.params, "meta": self.meta,
               "verdicts": [v.as_dict() for v in self.verdicts], "passed": self.passed,
               "data_keys": sorted(arrays)}
        path = folder / f"{self.name}.json"
        atomic_write_text(path, json.dumps(doc, indent=1, default=_jsonable))
        return path

    @classmethod
    def load(cls, folder: str | Path, name: str) -> "ExperimentResult":
        folder = Path(folder)
        doc = json.loads((folder / f"{name}.json").read_text())
        with np.load(folder / f"{name}.npz", allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
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
