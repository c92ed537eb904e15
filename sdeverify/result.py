"""Immutable simulation results, their statistics, merging of shards, and atomic save/load."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .observables import merge_blocks


@dataclass(frozen=True)
class Divergence:
    """Paths of one optimizer whose iterates became non-finite."""
    optimizer: str
    first_step: int
    fraction: float
    count: int

    def __str__(self) -> str:
        return (f"{self.optimizer}: {self.count} paths ({100 * self.fraction:.3g}%) diverged, "
                f"first at step {self.first_step}")


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`sdeverify.simulate` returns.

    ``mean[j, r, o]`` / ``sem[j, r, o]`` / ``count[j, r, o]``: mean, standard error and number
    of (non-diverged) paths of observable ``o`` for optimizer ``j`` at recorded step
    ``steps[r]``.  ``block_stats`` keeps the per-block (count, mean, M2) so that shards merge
    exactly (:meth:`merge`).  ``x_final``/``m_final``: (n_opt, paths, d) final states.
    """
    optimizers: tuple
    observables: tuple
    steps: np.ndarray
    block_stats: np.ndarray
    block_diff: np.ndarray
    x_final: np.ndarray
    m_final: np.ndarray
    div_step: np.ndarray
    states: np.ndarray | None
    meta: dict = field(default_factory=dict)

    # ---- statistics ----------------------------------------------------------------------
    @property
    def _merged(self) -> np.ndarray:
        cache = self.__dict__.get("_merged_cache")
        if cache is None:
            cache = merge_blocks(self.block_stats)
            object.__setattr__(self, "_merged_cache", cache)
        return cache

    def paired(self, optimizer: str | int, observable: str | int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sem) over recorded steps of h(x_j) − h(x_0), paired path by path with the
        first optimizer (common random numbers); paths where either diverged are excluded."""
        j, o = self._index(optimizer, observable)
        cache = self.__dict__.get("_diff_cache")
        if cache is None:
            cache = merge_blocks(self.block_diff)
            object.__setattr__(self, "_diff_cache", cache)
        n, mean, m2 = cache[j, :, o, 0], cache[j, :, o, 1], cache[j, :, o, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            sem = np.sqrt(np.where(n > 1, m2 / np.maximum(n - 1, 1), np.nan) / n)
        return mean, sem

    @property
    def count(self) -> np.ndarray:
        return self._merged[..., 0]

    @property
    def mean(self) -> np.ndarray:
        """Mean over non-diverged paths; NaN where no path is left (never a silent 0)."""
        return np.where(self.count > 0, self._merged[..., 1], np.nan)

    @property
    def var(self) -> np.ndarray:
        n = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 1, self._merged[..., 2] / np.maximum(n - 1, 1), np.nan)

    @property
    def sem(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.var / self.count)

    def _index(self, optimizer: str | int, observable: str | int) -> tuple[int, int]:
        j = optimizer if isinstance(optimizer, int) else self.optimizers.index(optimizer)
        o = observable if isinstance(observable, int) else self.observables.index(observable)
        return j, o

    def series(self, optimizer: str | int, observable: str | int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sem) over the recorded steps for one optimizer and observable."""
        j, o = self._index(optimizer, observable)
        return self.mean[j, :, o], self.sem[j, :, o]

    @property
    def paths(self) -> int:
        return int(self.x_final.shape[1])

    @property
    def divergence(self) -> list[Divergence]:
        """One entry per optimizer that had diverging paths (empty when none did)."""
        out = []
        for j, name in enumerate(self.optimizers):
            bad = self.div_step[j] >= 0
            if bad.any():
                out.append(Divergence(name, int(self.div_step[j][bad].min()),
                                      float(bad.mean()), int(bad.sum())))
        return out

    def summary(self) -> str:
        """A plain-text table: final mean ± 1.96·sem of each observable per optimizer."""
        w = max(len(n) for n in self.optimizers)
        lines = [f"{'optimizer':<{w}}  " + "  ".join(f"{o:>24}" for o in self.observables)]
        for j, name in enumerate(self.optimizers):
            cells = [f"{self.mean[j, -1, o]:>12.6g} ± {1.96 * self.sem[j, -1, o]:<9.3g}"
                     for o in range(len(self.observables))]
            lines.append(f"{name:<{w}}  " + "  ".join(cells))
        lines.append(f"(at step {int(self.steps[-1])}, {self.paths} paths, 95% intervals)")
        for d in self.divergence:
            lines.append(f"DIVERGED {d}")
        return "\n".join(lines)

    # ---- shards ---------------------------------------------------------------------------
    def merge(self, *others: "SimulationResult") -> "SimulationResult":
        """Merge shards (runs with the same spec and consecutive ``path_offset``s) exactly."""
        parts = sorted((self,) + others, key=lambda r: r.meta.get("path_offset", 0))
        pos = parts[0].meta.get("path_offset", 0)
        for r in parts:
            if r.optimizers != self.optimizers or r.observables != self.observables \
                    or not np.array_equal(r.steps, self.steps) or r.meta.get("seed") != self.meta.get("seed"):
                raise ValueError("only shards of the same simulation (optimizers, observables, "
                                 "record, seed) can be merged")
            if r.meta.get("path_offset", 0) != pos:
                raise ValueError("shards must cover consecutive path ranges")
            pos += r.paths
        states = None
        if all(r.states is not None for r in parts):
            states = np.concatenate([r.states for r in parts], axis=2)
        meta = dict(parts[0].meta, paths=pos - parts[0].meta.get("path_offset", 0),
                    wall_time=sum(r.meta.get("wall_time", 0.0) for r in parts))
        return SimulationResult(self.optimizers, self.observables, self.steps,
                                np.concatenate([r.block_stats for r in parts]),
                                np.concatenate([r.block_diff for r in parts]),
                                np.concatenate([r.x_final for r in parts], axis=1),
                                np.concatenate([r.m_final for r in parts], axis=1),
                                np.concatenate([r.div_step for r in parts], axis=1), states, meta)

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.json`` (metadata and statistics) and ``path.npz`` (arrays), atomically."""
        path = Path(path)
        arrays = {"steps": self.steps, "block_stats": self.block_stats,
                  "block_diff": self.block_diff, "x_final": self.x_final,
                  "m_final": self.m_final, "div_step": self.div_step}
        if self.states is not None:
            arrays["states"] = self.states
        atomic_write_npz(path.with_suffix(".npz"), arrays)
        doc = {"optimizers": list(self.optimizers), "observables": list(self.observables),
               "steps": self.steps.tolist(), "mean": self.mean.tolist(), "sem": self.sem.tolist(),
               "count": self.count.tolist(), "divergence": [vars(d) for d in self.divergence],
               "meta": self.meta}
        atomic_write_text(path.with_suffix(".json"), json.dumps(doc, indent=1, default=_jsonable))
        return path.with_suffix(".json")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SimulationResult":
        path = Path(path)
        doc = json.loads(path.with_suffix(".json").read_text())
        with np.load(path.with_suffix(".npz")) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(tuple(doc["optimizers"]), tuple(doc["observables"]), arrays["steps"],
                   arrays["block_stats"], arrays["block_diff"], arrays["x_final"], arrays["m_final"],
                   arrays["div_step"], arrays.get("states"), doc["meta"])


def _jsonable(o: Any):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _atomic_write(path: Path, write, mode: str, suffix: str = "") -> None:
    """Write via a temporary file in the same folder, fsync, ``os.replace``: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_npz(path: Path, arrays: dict) -> None:
    _atomic_write(path, lambda f: np.savez(f, **arrays), "wb", suffix=".npz")


def versions() -> dict:
    import numba
    import scipy
    from . import __version__
    return {"sdeverify": __version__, "numpy": np.__version__, "numba": numba.__version__,
            "scipy": scipy.__version__, "python": platform.python_version()}
