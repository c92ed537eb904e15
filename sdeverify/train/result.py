"""What :func:`sdeverify.train.fit` returns: per-replica evaluations, statistics across
replicas, paired differences, exact merges of replica shards, and atomic save/load.

A result saved as ``DIR/NAME`` is ``DIR/NAME.json`` (labels, metadata, final means, with the
hash of its own content and of the arrays file) and ``DIR/NAME.<hash>.npz`` (the arrays),
written and checked by the same code as a simulation result's (:mod:`sdeverify.files`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..files import ResultFileError, jsonable, load_pair, save_pair
from ..validation import position

if TYPE_CHECKING:  # optional extras, imported lazily by to_dataframe / to_xarray
    import pandas
    import xarray

__all__ = ["FORMAT", "METRICS", "TrainDivergence", "TrainResult", "check_arrays"]

FORMAT = "sdeverify.TrainResult/2"
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "grad_sqnorm", "noise_trace",
           "sharpness")
LABELS = ("optimizers", "metrics", "eval_steps")    # stored with the arrays too, checked on load
OPTIONAL_ARRAYS = ("weights", "momentum", "weight_steps", "weight_history", "buffers")


@dataclass(frozen=True)
class TrainDivergence:
    """Replicas of one optimizer whose training loss blew up (see :func:`fit`'s rule)."""
    optimizer: str
    first_step: int
    count: int
    replicas: int

    def __str__(self) -> str:
        return (f"{self.optimizer}: {self.count} of {self.replicas} replicas diverged, "
                f"first at step {self.first_step}")


@dataclass(frozen=True)
class TrainResult:
    """Training runs of ``replicas`` seeds × ``optimizers``.

    ``values[j, e, r, k]``: metric ``metrics[k]`` of optimizer ``j``, replica ``r`` at
    evaluation ``e`` (after ``eval_steps[e]`` steps, counted in un-SVAG'd steps);
    ``batch_loss[j, r, s]``: the minibatch loss before training step ``s``;
    ``div_step[j, r]``: the first step at which the replica diverged, −1 if it did not.
    A replica is excluded from every statistic from the evaluation at or after its
    divergence on (never averaged in).
    """
    optimizers: tuple
    metrics: tuple
    eval_steps: np.ndarray
    values: np.ndarray
    batch_loss: np.ndarray
    div_step: np.ndarray
    weights: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    #: final momentum buffers ``(n_opt, replicas, P)`` (with ``keep_weights``): with
    #: ``weights`` they let ``fit(..., resume=result)`` continue the run
    momentum: np.ndarray | None = None
    #: steps (un-SVAG'd, absolute) at which ``weight_history`` was recorded (``record_weights``)
    weight_steps: np.ndarray | None = None
    #: weights ``(n_opt, len(weight_steps), replicas, P)`` after each of ``weight_steps``
    weight_history: np.ndarray | None = None
    #: final BatchNorm running statistics ``(n_opt, replicas, n_buffers)`` (with
    #: ``keep_weights``, for models that have them): part of the state ``resume`` continues
    buffers: np.ndarray | None = None

    # ---- statistics --------------------------------------------------------------------
    @property
    def replicas(self) -> int:
        """Number of replicas (seeds) per optimizer."""
        return int(self.values.shape[2])

    def _idx(self, optimizer, metric) -> tuple[int, int]:
        return position("optimizer", self.optimizers, optimizer), position("metric", self.metrics, metric)

    @property
    def valid(self) -> np.ndarray:
        """``valid[j, e, r]``: replica r of optimizer j had not diverged at evaluation e."""
        d = self.div_step[:, None, :]
        return (d < 0) | (self.eval_steps_total[None, :, None] < d)

    @property
    def eval_steps_total(self) -> np.ndarray:
        """``eval_steps`` in engine steps (× ℓ for a SVAG run), (n_eval,)."""
        return self.eval_steps * int(self.meta.get("svag", 1))

    def values_of(self, optimizer: int | str, metric: int | str) -> np.ndarray:
        """Per-replica values ``(n_eval, replicas)``, NaN where the replica had diverged."""
        j, k = self._idx(optimizer, metric)
        return np.where(self.valid[j], self.values[j, :, :, k], np.nan)

    def to_dataframe(self, per_replica: bool = False) -> pandas.DataFrame:
        """Tidy :class:`pandas.DataFrame`: per (optimizer, step, observable) ``mean``,
        ``sem``, ``count`` across non-diverged replicas, or with ``per_replica=True`` one
        ``value`` per (optimizer, step, replica, observable) — the metric's column is named
        ``observable``, as in a simulation's table — then the hyperparameters of the row's
        optimizer and of the run (scheme, lr, beta, momentum, dampening, batch_size,
        svag_ell, data, model, seed, replicas: :func:`sdeverify.tables.train_columns`).
        Needs pandas (``sdeverify[analysis]``)."""
        from ..tables import train_frame
        return train_frame(self, per_replica)

    def paired_frame(self, baseline: int | str = 0, level: float = 0.95) -> pandas.DataFrame:
        """Replica-by-replica differences against ``baseline`` as a
        :class:`pandas.DataFrame`: per (optimizer, step, observable) the ``difference``, its
        paired ``sem`` (that of :meth:`paired`), ``count`` and the Student-t interval
        ``low``/``high`` at ``level`` (t with count − 1 degrees of freedom), with the
        hyperparameter columns of :meth:`to_dataframe`.  Needs pandas."""
        from ..tables import train_paired_frame
        return train_paired_frame(self, baseline, level)

    def to_xarray(self) -> xarray.Dataset:
        """:class:`xarray.Dataset`: ``value`` over optimizer × step × replica × observable
        and ``mean``/``sem``/``count`` over optimizer × step × observable (the metrics'
        dimension is named ``observable``, as in :meth:`to_dataframe` and in a simulation's
        dataset).  Needs xarray."""
        from ..tables import train_dataset
        return train_dataset(self)

    def series(self, optimizer: int | str, metric: int | str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sem) across non-diverged replicas, per evaluation, each (n_eval,)."""
        v = self.values_of(optimizer, metric)
        return _mean_sem(v)

    def paired(self, optimizer: int | str, metric: int | str,
               baseline: int | str = 0) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sem) per evaluation of the replica-by-replica difference optimizer −
        baseline (common initial weights and batches: a paired comparison); replicas where
        either diverged are excluded."""
        return _mean_sem(self.values_of(optimizer, metric) - self.values_of(baseline, metric))

    def count(self, optimizer: int | str, metric: int | str = 0) -> np.ndarray:
        """Non-diverged replicas (finite values of ``metric``) per evaluation, (n_eval,)."""
        return np.sum(np.isfinite(self.values_of(optimizer, metric)), axis=1)

    def noise_scale(self, optimizer: int | str) -> np.ndarray:
        """Gradient-noise scale tr Σ / |∇L|² per evaluation (ratio of the replica means of
        ``noise_trace`` and ``grad_sqnorm``; McCandlish et al. 2018's B_simple)."""
        return self.series(optimizer, "noise_trace")[0] / self.series(optimizer, "grad_sqnorm")[0]

    @property
    def divergence(self) -> list[TrainDivergence]:
        """One :class:`TrainDivergence` per optimizer with diverged replicas (empty if none)."""
        out = []
        for j, name in enumerate(self.optimizers):
            bad = self.div_step[j] >= 0
            if bad.any():
                out.append(TrainDivergence(name, int(self.div_step[j][bad].min()), int(bad.sum()),
                                           self.replicas))
        return out

    def summary(self) -> str:
        """Final mean ± the 95% Student-t half-width over the non-diverged replicas
        (t_{n−1}·sem: with a handful of replicas ±1.96·sem would cover far less than 95%) of
        each metric per optimizer, and divergences; "±  n/a" with fewer than 2 replicas."""
        from ..tables import t_half_width
        w = max(len(n) for n in self.optimizers)
        lines = [f"{'optimizer':<{w}}  " + "  ".join(f"{m:>22}" for m in self.metrics)]
        for j, name in enumerate(self.optimizers):
            cells = []
            for k in range(len(self.metrics)):
                mu, se = self.series(j, k)
                h = float(t_half_width(se[-1], self.count(j, k)[-1]))
                half = f"{h:<8.2g}" if np.isfinite(h) else f"{'n/a':<8}"
                cells.append(f"{mu[-1]:>11.5g} ± {half}")
            lines.append(f"{name:<{w}}  " + "  ".join(cells))
        lines.append(f"(after {int(self.eval_steps[-1])} steps, {self.replicas} replicas, "
                     f"95% Student-t intervals over replicas)")
        lines += [f"DIVERGED {d}" for d in self.divergence]
        return "\n".join(lines)

    # ---- shards ------------------------------------------------------------------------
    def merge(self, *others: "TrainResult") -> "TrainResult":
        """Concatenate replica shards of one run (same fingerprint, consecutive
        ``replica_offset``s) — exactly the result of one run over all replicas."""
        for r in others:
            if not isinstance(r, TrainResult):
                raise ValueError("merge takes shards that are TrainResults, got "
                                 f"{type(r).__name__} {r!r:.60}")
        parts = sorted((self,) + others, key=lambda r: r.meta.get("replica_offset", 0))
        pos = parts[0].meta["replica_offset"]
        for r in parts:
            if r.meta.get("fingerprint") != self.meta.get("fingerprint"):
                diff = [k for k in r.meta.get("spec", {}) if r.meta["spec"].get(k) != self.meta.get("spec", {}).get(k)]
                raise ValueError(f"only replica shards of the same run can be merged; they differ in: "
                                 f"{', '.join(diff) or 'fingerprint'}")
            if r.meta["replica_offset"] != pos:
                raise ValueError("shards must cover consecutive replica ranges "
                                 f"(expected replica_offset {pos}, got {r.meta['replica_offset']})")
            pos += r.replicas
        def joined(name: str, axis: int):
            arrs = [getattr(r, name) for r in parts]
            if all(a is None for a in arrs):
                return None
            if any(a is None for a in arrs):
                raise ValueError(f"cannot merge: some shards kept their {name} and others did "
                                 "not; the merged result would silently lose them")
            return np.concatenate(arrs, axis=axis)
        w = joined("weights", 1)
        meta = dict(parts[0].meta, replicas=pos - parts[0].meta["replica_offset"],
                    wall_time=sum(r.meta.get("wall_time", 0.0) for r in parts))
        return TrainResult(self.optimizers, self.metrics, self.eval_steps,
                           np.concatenate([r.values for r in parts], axis=2),
                           np.concatenate([r.batch_loss for r in parts], axis=1),
                           np.concatenate([r.div_step for r in parts], axis=1), w, meta,
                           joined("momentum", 1), self.weight_steps, joined("weight_history", 2),
                           joined("buffers", 1))

    # ---- persistence --------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path.json`` (metadata, labels, final means; content-hashed) and
        ``path.<hash>.npz`` (every array) as one unit, atomically
        (:func:`sdeverify.files.save_pair`: a crash at any moment leaves the old or the new
        pair, and the next save deletes what a killed one left).  ``path`` is kept as given
        (``run_lr0.1`` → ``run_lr0.1.json``); returns the JSON path."""
        arrays = dict(eval_steps=self.eval_steps, values=self.values, batch_loss=self.batch_loss,
                      div_step=self.div_step)
        for name in OPTIONAL_ARRAYS:
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        stats = {m: {o: [float(x) for x in self.series(o, m)[0]] for o in self.optimizers}
                 for m in self.metrics}
        doc = {"format": FORMAT, "optimizers": list(self.optimizers),
               "metrics": list(self.metrics), "eval_steps": self.eval_steps.tolist(),
               "meta": self.meta, "mean": stats,
               "divergence": [vars(d) for d in self.divergence]}
        return save_pair(path, json.loads(json.dumps(doc, default=jsonable)), arrays,
                         labels=LABELS)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainResult":
        """Read a result written by :meth:`save` (``path`` as given to it, or its ``.json``),
        checking that its two files belong together (hashes, labels) and that the arrays
        are consistent with the labels and with each other (:func:`check_arrays`);
        :class:`~sdeverify.files.ResultFileError` naming the file otherwise."""
        doc, a, where = load_pair(path, labels=LABELS)
        if doc.get("format") != FORMAT:
            raise ResultFileError(f"{where}: format {doc.get('format')!r}, expected {FORMAT!r} "
                                  "(not a TrainResult of this sdeverify)")
        meta = doc.get("meta")
        if not isinstance(meta, dict):
            raise ResultFileError(f"{where}: its meta is not a JSON object")
        check_arrays(where, doc["optimizers"], doc["metrics"], doc["eval_steps"], a, meta)
        return cls(tuple(doc["optimizers"]), tuple(doc["metrics"]), a["eval_steps"], a["values"],
                   a["batch_loss"], a["div_step"], a.get("weights"), meta,
                   a.get("momentum"), a.get("weight_steps"), a.get("weight_history"),
                   a.get("buffers"))


def check_arrays(where: str, optimizers: Any, metrics: Any, eval_steps: Any, a: dict,
                 meta: dict) -> None:
    """:class:`~sdeverify.files.ResultFileError` (naming ``where``) unless the arrays ``a``
    of a saved :class:`TrainResult` are what its labels imply: names, metric names from
    :data:`METRICS`, dtypes, shapes (``values (J, E, R, K)``, ``batch_loss (J, R, S)``,
    ``div_step (J, R)``, ``weights``/``momentum (J, R, P)``, ``weight_history``), evaluation
    steps increasing and within the run, divergence steps within the run, no non-finite
    value of a replica before it diverged, and ``meta``'s replica count."""
    def bad(msg: str) -> ResultFileError:
        return ResultFileError(f"{where}: {msg}")
    if not isinstance(optimizers, list) or not optimizers \
            or not all(isinstance(o, str) and o for o in optimizers):
        raise bad(f"optimizers must be a non-empty list of names, got {optimizers!r:.80}")
    if len(set(optimizers)) != len(optimizers):
        raise bad(f"optimizer names repeat: {optimizers}")
    if not isinstance(metrics, list) or not metrics or any(m not in METRICS for m in metrics) \
            or len(set(metrics)) != len(metrics):
        raise bad(f"metrics must be distinct names from {METRICS}, got {metrics!r:.120}")
    missing = [k for k in ("eval_steps", "values", "batch_loss", "div_step") if k not in a]
    if missing:
        raise bad(f"arrays {missing} are missing")
    kinds = {"eval_steps": "iu", "div_step": "iu", "weight_steps": "iu", "values": "f",
             "batch_loss": "f", "weights": "f", "momentum": "f", "weight_history": "f",
             "buffers": "f"}
    for k, kind in kinds.items():
        if k in a and a[k].dtype.kind not in kind:
            raise bad(f"array {k!r} has dtype {a[k].dtype}, expected "
                      f"{'an integer' if kind == 'iu' else 'a float'} dtype")
    J, K = len(optimizers), len(metrics)
    ev = a["eval_steps"]
    if ev.ndim != 1 or not np.array_equal(ev, np.asarray(eval_steps, dtype=np.int64)):
        raise bad(f"the evaluation steps of the arrays ({ev.tolist()!r:.80}) differ from the "
                  f"JSON's ({eval_steps!r:.80})")
    E = ev.shape[0]
    if E < 1 or np.any(np.diff(ev) <= 0) or ev[0] < 0:
        raise bad(f"eval_steps must be increasing steps >= 0, got {ev.tolist()!r:.80}")
    v = a["values"]
    if v.ndim != 4 or v.shape[0] != J or v.shape[1] != E or v.shape[3] != K or v.shape[2] < 1:
        raise bad(f"array 'values' has shape {v.shape}, but the labels ({J} optimizers, {E} "
                  f"evaluations, {K} metrics) imply ({J}, {E}, replicas, {K})")
    R = v.shape[2]
    bl = a["batch_loss"]
    if bl.ndim != 3 or bl.shape[:2] != (J, R):
        raise bad(f"array 'batch_loss' has shape {bl.shape}, but 'values' holds {J} optimizers "
                  f"x {R} replicas: expected ({J}, {R}, steps)")
    svag = meta.get("svag", 1)
    start = meta.get("start_step", 0)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (svag, start)) \
            or svag < 1 or start < 0:
        raise bad(f"meta's svag ({svag!r}) and start_step ({start!r}) must be integers >= 1 "
                  "and >= 0")
    first, S = start * svag, bl.shape[2]
    if ev[0] < start or ev[-1] * svag > first + S:
        raise bad(f"eval_steps {ev.tolist()!r:.80} lie outside the run's steps "
                  f"[{start}, {start + S // svag}]")
    d = a["div_step"]
    if d.shape != (J, R):
        raise bad(f"array 'div_step' has shape {d.shape}, expected ({J}, {R})")
    if np.any((d != -1) & ((d < first) | (d > first + S))):
        raise bad(f"div_step holds steps outside the run ([{first}, {first + S}], or -1)")
    for k in ("weights", "momentum", "buffers"):
        if k in a and (a[k].ndim != 3 or a[k].shape[:2] != (J, R)):
            raise bad(f"array {k!r} has shape {a[k].shape}, expected ({J}, {R}, parameters)")
    if ("weight_steps" in a) != ("weight_history" in a):
        raise bad("weight_steps and weight_history must be saved together")
    if "weight_history" in a:
        ws, wh = a["weight_steps"], a["weight_history"]
        if ws.ndim != 1 or wh.ndim != 4 or wh.shape[:3] != (J, ws.shape[0], R):
            raise bad(f"array 'weight_history' has shape {wh.shape}, expected ({J}, "
                      f"{ws.shape[0] if ws.ndim == 1 else '?'}, {R}, parameters)")
    alive = (d[:, None, :] < 0) | (ev[None, :, None] * svag < d[:, None, :])    # (J, E, R)
    if not np.all(np.isfinite(v[alive])):
        raise bad("'values' holds NaN or inf for a replica that had not diverged "
                  "(non-finite values are only allowed from a replica's divergence on)")
    steps_alive = (d[:, :, None] < 0) | (first + np.arange(S)[None, None, :] < d[:, :, None])
    if not np.all(np.isfinite(bl[steps_alive])):
        raise bad("'batch_loss' holds NaN or inf before the replica's divergence step")
    _check_meta(bad, optimizers, metrics, ev, R, S, svag, meta)


def _check_meta(bad, optimizers, metrics, ev, R, S, svag, meta) -> None:
    """The labels and array sizes agree with what ``meta`` recorded of the run (where it
    records it): replicas, metrics, evaluation steps, steps, and the optimizers' order."""
    expect = {"replicas": R, "metrics": list(metrics), "eval_steps": ev.tolist()}
    for key, value in expect.items():
        if key in meta and meta[key] != value:
            raise bad(f"meta records {key} {meta[key]!r:.80}, the result holds {value!r:.80}")
    if isinstance(meta.get("steps"), int) and meta["steps"] * svag != S:
        raise bad(f"meta records {meta['steps']} steps (x svag {svag}), 'batch_loss' holds {S}")
    reprs = meta.get("optimizers")
    if isinstance(reprs, list) and len(reprs) == len(optimizers):
        for name, rep in zip(optimizers, reprs):
            if isinstance(rep, str) and "name=" in rep and f"name={name!r}" not in rep:
                raise bad(f"optimizer {name!r} is not the one meta records at its position "
                          f"({rep}): the optimizers were reordered or renamed")


def _mean_sem(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.sum(np.isfinite(v), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(v, axis=1) / np.maximum(n, 1), np.nan)
        dev = np.where(np.isfinite(v), v - mean[:, None], 0.0)
        var = np.where(n > 1, np.sum(dev * dev, axis=1) / np.maximum(n - 1, 1), np.nan)
        return mean, np.sqrt(var / n)


