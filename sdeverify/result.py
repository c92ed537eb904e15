"""Immutable simulation results, their statistics, merging of shards, and atomic save/load.

**File format** (:meth:`SimulationResult.save`, written by :func:`sdeverify.files.save_pair`).
A result saved as ``DIR/NAME`` is two files that form one unit:

* ``DIR/NAME.<h>.npz`` — the arrays (``steps``, ``block_stats``, ``block_diff``,
  ``block_bad``, ``div_step``, ``x_final`` and ``m_final`` unless the run left them out,
  optionally ``states``) and a
  ``__labels__`` entry (JSON text: optimizers, observables, recorded steps); ``<h>`` is the first
  16 hex digits of the SHA-256 of the file's bytes;
* ``DIR/NAME.json`` — readable metadata and final statistics, ``"format"``, ``"npz"`` (the
  file name above), ``"npz_sha256"`` (its full hash) and ``"content_sha256"`` (the hash of
  the JSON's own content).

``NAME`` is kept as given (``sgd_lr0.1`` → ``sgd_lr0.1.json``).  Save writes the ``.npz``
under its content name (a new name: the old pair is untouched), then replaces ``NAME.json``
atomically — the commit point — and only then deletes the previous ``NAME.*.npz``;
temporaries left by a killed save are deleted by the next save.  A crash at any moment
therefore leaves the old pair or the new pair.  :meth:`load` checks both hashes, that the
labels stored with the arrays equal the JSON's and that every array has the shape and kind
the labels imply, and raises :class:`ResultFileError` (a ``ValueError``) saying what does
not match.  Files of the earlier layouts (without these hashes) cannot be verified and are
refused, with that said.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import config
from .files import (ResultFileError, atomic_write_npz, atomic_write_text, jsonable,  # noqa: F401
                    load_pair, save_pair)
from .observables import merge_blocks

if TYPE_CHECKING:  # optional extras, imported lazily by to_dataframe / to_xarray
    import pandas
    import xarray

__all__ = ["FORMAT", "Divergence", "NonFinite", "SimulationResult", "index_pair", "versions"]

FORMAT = "sdeverify.SimulationResult/3"
# ResultFileError, save_pair, load_pair, jsonable and the atomic writers live in
# sdeverify.files (one save/load for every result file); they stay importable from here.


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
class NonFinite:
    """Values of one observable of one optimizer that were NaN or ±inf (never averaged in)."""
    optimizer: str
    observable: str
    count: int
    first_step: int

    def __str__(self) -> str:
        return (f"{self.optimizer}: {self.count} non-finite values of {self.observable!r}, "
                f"first at step {self.first_step}")


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`sdeverify.simulate` returns.

    ``mean[j, r, o]`` / ``sem[j, r, o]`` / ``count[j, r, o]``: mean, standard error and number
    of (non-diverged) paths of observable ``o`` for optimizer ``j`` at recorded step
    ``steps[r]``.  ``block_stats`` keeps the per-block (count, mean, M2) so that shards merge
    exactly (:meth:`merge`).  ``x_final``/``m_final``: (n_opt, paths, d) final states and
    momenta, or None for a run with ``final_states=False``.  ``div_step``: (n_opt, paths),
    each path's divergence step (−1: none).
    ``block_bad[..., 0]`` / ``[..., 1]``: per block, observable values that were not finite /
    whose function raised (neither is in the statistics; see :attr:`nonfinite`).
    """
    optimizers: tuple
    observables: tuple
    steps: np.ndarray
    block_stats: np.ndarray
    block_diff: np.ndarray
    x_final: np.ndarray | None
    m_final: np.ndarray | None
    div_step: np.ndarray
    states: np.ndarray | None
    meta: dict = field(default_factory=dict)
    block_bad: np.ndarray | None = None

    # ---- statistics ----------------------------------------------------------------------
    @property
    def _merged(self) -> np.ndarray:
        cache = self.__dict__.get("_merged_cache")
        if cache is None:
            cache = merge_blocks(self.block_stats)
            object.__setattr__(self, "_merged_cache", cache)
        return cache

    @property
    def _merged_diff(self) -> np.ndarray:
        cache = self.__dict__.get("_diff_cache")
        if cache is None:
            cache = merge_blocks(self.block_diff)
            object.__setattr__(self, "_diff_cache", cache)
        return cache

    def paired(self, optimizer: str | int, observable: str | int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sem) over recorded steps of h(x_j) − h(x_0), paired path by path with the
        first optimizer (common random numbers); paths where either diverged are excluded."""
        j, o = self._index(optimizer, observable)
        cache = self._merged_diff
        n, mean, m2 = cache[j, :, o, 0], cache[j, :, o, 1], cache[j, :, o, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            sem = np.sqrt(np.where(n > 1, m2 / np.maximum(n - 1, 1), np.nan) / n)
        return mean, sem

    def paired_count(self, optimizer: str | int, observable: str | int) -> np.ndarray:
        """Paths in :meth:`paired`'s difference per recorded step (neither optimizer
        diverged, both values finite), ``(n_rec,)`` integers."""
        j, o = self._index(optimizer, observable)
        return self._merged_diff[j, :, o, 0].astype(np.int64)

    def paired_frame(self, level: float = 0.95) -> "pandas.DataFrame":
        """Paired (common-random-numbers) differences against the first optimizer as a
        :class:`pandas.DataFrame`: per (optimizer, step, observable) the ``difference``, its
        paired ``sem`` (that of :meth:`paired`: the per-path difference's spread, far below
        what the two means' sems would give), ``count`` and the Student-t interval
        ``low``/``high`` at ``level``, with the hyperparameter columns of
        :meth:`to_dataframe`.  Needs pandas (``pip install 'sdeverify[analysis]'``)."""
        from .tables import simulation_paired_frame
        return simulation_paired_frame(self, level)

    @property
    def count(self) -> np.ndarray:
        """Number of non-diverged paths with a finite value, ``(n_opt, n_rec, n_obs)``."""
        return self._merged[..., 0]

    @property
    def mean(self) -> np.ndarray:
        """Mean over non-diverged paths; NaN where no path is left (never a silent 0)."""
        return np.where(self.count > 0, self._merged[..., 1], np.nan)

    @property
    def var(self) -> np.ndarray:
        """Unbiased sample variance over the counted paths (divisor n − 1); NaN where fewer
        than two paths are left."""
        n = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 1, self._merged[..., 2] / np.maximum(n - 1, 1), np.nan)

    @property
    def sem(self) -> np.ndarray:
        """Standard error of :attr:`mean`, sqrt(var / count); NaN where it is undefined."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.var / self.count)

    def _index(self, optimizer: str | int, observable: str | int) -> tuple[int, int]:
        return index_pair(self.optimizers, self.observables, optimizer, observable)

    def series(self, optimizer: str | int, observable: str | int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sem) over the recorded steps for one optimizer and observable."""
        j, o = self._index(optimizer, observable)
        return self.mean[j, :, o], self.sem[j, :, o]

    def to_dataframe(self) -> "pandas.DataFrame":
        """Tidy :class:`pandas.DataFrame`: one row per (optimizer, step, observable) with
        ``mean``, ``sem`` and ``count`` (non-diverged paths), then the hyperparameters of
        the row's optimizer and of the run (scheme, lr, beta, momentum, dampening, sigma,
        svag_ell, problem, problem_type, dim, noise_dist, problem_params, seed, paths:
        :func:`sdeverify.tables.simulation_columns`).  Needs pandas
        (``pip install 'sdeverify[analysis]'``)."""
        from .tables import simulation_frame
        return simulation_frame(self)

    def to_xarray(self) -> "xarray.Dataset":
        """:class:`xarray.Dataset` with ``mean``, ``sem``, ``count`` over optimizer × step ×
        observable, metadata as attributes.  Needs xarray (``pip install 'sdeverify[analysis]'``)."""
        from .tables import simulation_dataset
        return simulation_dataset(self)

    @property
    def paths(self) -> int:
        """Number of paths this result covers (all of them, diverged ones included)."""
        return int(self.div_step.shape[1])

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

    @property
    def nonfinite(self) -> np.ndarray:
        """(n_opt, n_rec, n_obs) counts of observable values that were NaN or ±inf at a
        recorded step on a non-diverged path (excluded from ``mean``/``count``)."""
        if self.block_bad is None:
            return np.zeros(self.block_stats.shape[1:4], dtype=np.int64)
        return self.block_bad[..., 0].sum(axis=0).astype(np.int64)

    @property
    def nonfinite_observables(self) -> list[NonFinite]:
        """One entry per (optimizer, observable) with non-finite values (empty when none)."""
        bad = self.nonfinite
        out = []
        for j, name in enumerate(self.optimizers):
            for o, obs in enumerate(self.observables):
                per_step = bad[j, :, o]
                if per_step.any():
                    out.append(NonFinite(name, obs, int(per_step.sum()),
                                         int(self.steps[int(np.argmax(per_step > 0))])))
        return out

    def issues(self) -> list[str]:
        """Every divergence and non-finite observable, one line each (empty: a clean run)."""
        bound = self.meta.get("divergence_bound")
        rule = "" if bound is None else f" (|x_i| > {bound:.3g} or not finite)"
        return ([f"diverged{rule}: {d}" for d in self.divergence]
                + [f"non-finite observable: {n}" for n in self.nonfinite_observables])

    def summary(self) -> str:
        """A plain-text table: final mean ± the 95% half-width of each observable per
        optimizer, Student's t over its counted paths (:func:`sdeverify.tables.t_half_width`:
        t_{n−1}·sem, the normal 1.96·sem at the usual thousands of paths, and still 95% with a
        handful); "n/a" with fewer than 2 paths."""
        from .tables import t_half_width
        half = t_half_width(self.sem[:, -1], self.count[:, -1])
        w = max(len(n) for n in self.optimizers)
        lines = [f"{'optimizer':<{w}}  " + "  ".join(f"{o:>24}" for o in self.observables)]
        for j, name in enumerate(self.optimizers):
            cells = [f"{self.mean[j, -1, o]:>12.6g} ± "
                     + (f"{half[j, o]:<9.3g}" if np.isfinite(half[j, o]) else f"{'n/a':<9}")
                     for o in range(len(self.observables))]
            lines.append(f"{name:<{w}}  " + "  ".join(cells))
        lines.append(f"(at step {int(self.steps[-1])}, {self.paths} paths, 95% intervals)")
        for d in self.divergence:
            lines.append(f"DIVERGED {d}")
        for n in self.nonfinite_observables:
            lines.append(f"NON-FINITE {n}")
        if self.divergence:
            bound = self.meta.get("divergence_bound")
            lines.append("(a path diverges when some |x_i| exceeds "
                         + (f"{bound:.3g}" if bound is not None else "the divergence bound")
                         + " or is not finite; diverged paths are excluded)")
        return "\n".join(lines)

    # ---- shards ---------------------------------------------------------------------------
    def merge(self, *others: "SimulationResult") -> "SimulationResult":
        """Merge shards (runs with the same spec and consecutive ``path_offset``s) exactly.

        Every shard carries ``meta["fingerprint"]`` (problem and its parameters and
        functions, optimizers with their schedules, x0, σ, steps, record, observables, dtype,
        seed, divergence bound, engine, version); any difference is refused, naming the field.
        """
        for r in others:
            if not isinstance(r, SimulationResult):
                raise ValueError("merge takes shards that are SimulationResults, got "
                                 f"{type(r).__name__} {r!r:.60}")
        parts = sorted((self,) + others, key=lambda r: r.meta.get("path_offset", 0))
        _same_simulation(parts)
        kept = [r.states is not None for r in parts]
        if any(kept) and not all(kept):
            raise ValueError("cannot merge: some shards stored their states and others did not "
                             f"(path_offsets {[r.meta.get('path_offset', 0) for r in parts]}: "
                             f"states stored {kept}); the merged result would silently lose them")
        finals = [r.x_final is not None for r in parts]
        if any(finals) and not all(finals):
            raise ValueError("cannot merge: some shards kept their final states and others did "
                             f"not (path_offsets {[r.meta.get('path_offset', 0) for r in parts]}: "
                             f"final states kept {finals}); the merged result would silently "
                             "lose them")
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
        bad = None
        if all(r.block_bad is not None for r in parts):
            bad = np.concatenate([r.block_bad for r in parts])
        return SimulationResult(self.optimizers, self.observables, self.steps,
                                np.concatenate([r.block_stats for r in parts]),
                                np.concatenate([r.block_diff for r in parts]),
                                _joined([r.x_final for r in parts]),
                                _joined([r.m_final for r in parts]),
                                np.concatenate([r.div_step for r in parts], axis=1), states, meta,
                                bad)

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.json`` and ``path.<hash>.npz`` as one unit (module docstring: a
        crash at any moment leaves the old or the new pair); returns the JSON path."""
        arrays = {"steps": self.steps, "block_stats": self.block_stats,
                  "block_diff": self.block_diff, "div_step": self.div_step}
        for k in ("x_final", "m_final"):          # both, or neither (final_states=False)
            if getattr(self, k) is not None:
                arrays[k] = getattr(self, k)
        if self.block_bad is not None:
            arrays["block_bad"] = self.block_bad
        if self.states is not None:
            arrays["states"] = self.states
        doc = {"format": FORMAT, "optimizers": list(self.optimizers),
               "observables": list(self.observables), "steps": self.steps.tolist(),
               "mean": self.mean.tolist(), "sem": self.sem.tolist(),
               "count": self.count.tolist(), "divergence": [vars(d) for d in self.divergence],
               "nonfinite": [vars(n) for n in self.nonfinite_observables], "meta": self.meta}
        return save_pair(path, doc, arrays, labels=("optimizers", "observables", "steps"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SimulationResult":
        """Load a result written by :meth:`save`, verifying that its two files belong
        together and that every array has the shape its labels imply
        (:class:`ResultFileError` otherwise)."""
        doc, arrays, where = load_pair(path, labels=("optimizers", "observables", "steps"))
        if doc.get("format") != FORMAT:
            raise ResultFileError(f"{where}: format {doc.get('format')!r}, expected {FORMAT!r} "
                                  "(not a SimulationResult of this sdeverify)")
        need = ("steps", "block_stats", "block_diff", "div_step")
        missing = [k for k in need if k not in arrays]
        if ("x_final" in arrays) != ("m_final" in arrays):
            missing += [k for k in ("x_final", "m_final") if k not in arrays]
        if missing:
            raise ResultFileError(f"{where}: arrays {missing} are missing")
        kinds = {"steps": "iu", "div_step": "iu", "block_stats": "f", "block_diff": "f",
                 "block_bad": "iuf", "x_final": "f", "m_final": "f", "states": "f"}
        for k, kind in kinds.items():
            if k in arrays and arrays[k].dtype.kind not in kind:
                raise ResultFileError(f"{where}: array {k!r} has dtype {arrays[k].dtype}, "
                                      f"expected {'an integer' if kind == 'iu' else 'a float'} "
                                      "dtype")
        n_opt, n_obs = len(doc["optimizers"]), len(doc["observables"])
        n_rec = len(doc["steps"])
        if not np.array_equal(arrays["steps"], np.asarray(doc["steps"], dtype=arrays["steps"].dtype)):
            raise ResultFileError(f"{where}: the recorded steps of the .npz differ from the .json's")
        meta = doc.get("meta", {})
        paths = arrays["div_step"].shape[1] if arrays["div_step"].ndim == 2 else -1
        n_blocks = -(-paths // config.BLOCK) if paths > 0 else -1
        d = meta.get("dim", -1)
        if "x_final" in arrays and arrays["x_final"].ndim == 3:
            d = arrays["x_final"].shape[2]
        expect = {"block_stats": (n_blocks, n_opt, n_rec, n_obs, 3),
                  "block_diff": (n_blocks, n_opt, n_rec, n_obs, 3),
                  "block_bad": (n_blocks, n_opt, n_rec, n_obs, 2),
                  "x_final": (n_opt, paths, d), "m_final": (n_opt, paths, d),
                  "div_step": (n_opt, paths), "states": (n_opt, n_rec, paths, d)}
        for k, shape in expect.items():
            if k in arrays and arrays[k].shape != shape:
                raise ResultFileError(f"{where}: array {k!r} has shape {arrays[k].shape}, but "
                                      f"the labels ({n_opt} optimizers, {n_rec} recorded steps, "
                                      f"{n_obs} observables, {paths} paths) imply {shape}")
        if "paths" in meta and meta["paths"] != paths:
            raise ResultFileError(f"{where}: the .json says {meta['paths']} paths, the .npz "
                                  f"holds {paths}")
        res = cls(tuple(doc["optimizers"]), tuple(doc["observables"]), arrays["steps"],
                  arrays["block_stats"], arrays["block_diff"], arrays.get("x_final"),
                  arrays.get("m_final"), arrays["div_step"], arrays.get("states"), meta,
                  arrays.get("block_bad"))
        if "count" in doc and not np.array_equal(res.count, np.asarray(doc["count"], dtype=float)):
            raise ResultFileError(f"{where}: the counts in the .json do not match the .npz's "
                                  "statistics (files from different results)")
        return res


def _joined(finals: list) -> np.ndarray | None:
    """The shards' final states (or momenta) side by side along the paths; None when the
    shards left them out (:meth:`SimulationResult.merge` has checked that all or none did)."""
    return None if finals[0] is None else np.concatenate(finals, axis=1)


def _same_simulation(parts) -> None:
    """ValueError naming the first field in which two shards' fingerprints differ."""
    ref = parts[0]
    for r in parts:
        if r.optimizers != ref.optimizers or r.observables != ref.observables \
                or not np.array_equal(r.steps, ref.steps) or r.meta.get("seed") != ref.meta.get("seed"):
            raise ValueError("only shards of the same simulation (optimizers, observables, "
                             "record, seed) can be merged")
    fps = [r.meta.get("fingerprint") for r in parts]
    if any(fp is None for fp in fps):
        raise ValueError("cannot merge: a shard has no fingerprint (made by an older sdeverify "
                         "or by hand), so it cannot be checked to be the same simulation")
    for i, fp in enumerate(fps[1:], 1):
        keys = list(fps[0]) + [k for k in fp if k not in fps[0]]
        diff = [k for k in keys if fps[0].get(k) != fp.get(k)]
        if diff:
            where = (f"path_offset {parts[0].meta.get('path_offset')} vs "
                     f"{parts[i].meta.get('path_offset')}")
            raise ValueError("cannot merge shards of different simulations: they differ in "
                             + "; ".join(f"{k} ({fps[0].get(k)!r} vs {fp.get(k)!r})" for k in diff)
                             + f" ({where})")


def index_pair(optimizers: Sequence[str], observables: Sequence[str], optimizer: str | int,
               observable: str | int) -> tuple[int, int]:
    """(j, o): the positions of ``optimizer`` and ``observable``, each given by name or by
    position, in the name tuples of a result; ``ValueError`` listing the names otherwise."""
    return _position("optimizer", optimizers, optimizer), _position("observable", observables, observable)


def _position(what: str, names, key) -> int:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key)
    if key not in names:
        raise ValueError(f"{what} must be one of {tuple(names)} or a position, got {key!r}")
    return names.index(key)


def versions() -> dict:
    """Versions of sdeverify, NumPy, Numba, SciPy and Python, as stored in every result's
    metadata."""
    import numba
    import scipy
    from .version import __version__
    return {"sdeverify": __version__, "numpy": np.__version__, "numba": numba.__version__,
            "scipy": scipy.__version__, "python": platform.python_version()}
