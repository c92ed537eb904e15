"""What :func:`sdeverify.train.fit` returns: per-replica evaluations, statistics across
replicas, paired differences, exact merges of replica shards, and atomic save/load."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..result import atomic_write_npz, atomic_write_text

if TYPE_CHECKING:  # optional extras, imported lazily by to_dataframe / to_xarray
    import pandas
    import xarray

__all__ = ["METRICS", "TrainDivergence", "TrainResult"]

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "grad_sqnorm", "noise_trace",
           "sharpness")


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

    # ---- statistics --------------------------------------------------------------------
    @property
    def replicas(self) -> int:
        """Number of replicas (seeds) per optimizer."""
        return int(self.values.shape[2])

    def _idx(self, optimizer, metric) -> tuple[int, int]:
        j = optimizer if isinstance(optimizer, (int, np.integer)) else self.optimizers.index(optimizer)
        k = metric if isinstance(metric, (int, np.integer)) else self.metrics.index(metric)
        return int(j), int(k)

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
        """Tidy :class:`pandas.DataFrame`: per (optimizer, step, metric) ``mean``, ``sem``,
        ``count`` across non-diverged replicas, or with ``per_replica=True`` one ``value``
        per (optimizer, step, replica, metric).  Needs pandas (``sdeverify[analysis]``)."""
        from ..tables import train_frame
        return train_frame(self, per_replica)

    def to_xarray(self) -> xarray.Dataset:
        """:class:`xarray.Dataset`: ``value`` over optimizer × step × replica × metric and
        ``mean``/``sem``/``count`` over optimizer × step × metric.  Needs xarray."""
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
        """Final mean ± 1.96·sem of each metric per optimizer, and divergences."""
        w = max(len(n) for n in self.optimizers)
        lines = [f"{'optimizer':<{w}}  " + "  ".join(f"{m:>22}" for m in self.metrics)]
        for j, name in enumerate(self.optimizers):
            cells = []
            for k in range(len(self.metrics)):
                mu, se = self.series(j, k)
                cells.append(f"{mu[-1]:>11.5g} ± {1.96 * se[-1]:<8.2g}")
            lines.append(f"{name:<{w}}  " + "  ".join(cells))
        lines.append(f"(after {int(self.eval_steps[-1])} steps, {self.replicas} replicas, 95% intervals)")
        lines += [f"DIVERGED {d}" for d in self.divergence]
        return "\n".join(lines)

    # ---- shards ------------------------------------------------------------------------
    def merge(self, *others: "TrainResult") -> "TrainResult":
        """Concatenate replica shards of one run (same fingerprint, consecutive
        ``replica_offset``s) — exactly the result of one run over all replicas."""
        parts = sorted((self,) + others, key=lambda r: r.meta["replica_offset"])
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
            return None if any(a is None for a in arrs) else np.concatenate(arrs, axis=axis)
        w = joined("weights", 1)
        meta = dict(parts[0].meta, replicas=pos - parts[0].meta["replica_offset"],
                    wall_time=sum(r.meta.get("wall_time", 0.0) for r in parts))
        return TrainResult(self.optimizers, self.metrics, self.eval_steps,
                           np.concatenate([r.values for r in parts], axis=2),
                           np.concatenate([r.batch_loss for r in parts], axis=1),
                           np.concatenate([r.div_step for r in parts], axis=1), w, meta,
                           joined("momentum", 1), self.weight_steps, joined("weight_history", 2))

    # ---- persistence --------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write everything to ``path.npz`` in one atomic replace (arrays and metadata in one
        file, so nothing can be mispaired), plus a readable ``path.json`` summary."""
        path = Path(path)
        doc = {"optimizers": list(self.optimizers), "metrics": list(self.metrics), "meta": self.meta}
        arrays = dict(eval_steps=self.eval_steps, values=self.values, batch_loss=self.batch_loss,
                      div_step=self.div_step, doc=np.array(json.dumps(doc, default=_jsonable)))
        for name in ("weights", "momentum", "weight_steps", "weight_history"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        atomic_write_npz(path.with_suffix(".npz"), arrays)
        stats = {m: {o: [float(x) for x in self.series(o, m)[0]] for o in self.optimizers} for m in self.metrics}
        atomic_write_text(path.with_suffix(".json"), json.dumps(
            dict(doc, eval_steps=self.eval_steps.tolist(), mean=stats,
                 divergence=[vars(d) for d in self.divergence]), indent=1, default=_jsonable))
        return path.with_suffix(".npz")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainResult":
        """Read a result written by :meth:`save` (``path.npz``; the suffix may be omitted)."""
        path = Path(path).with_suffix(".npz")
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        doc = json.loads(str(a["doc"]))
        return cls(tuple(doc["optimizers"]), tuple(doc["metrics"]), a["eval_steps"], a["values"],
                   a["batch_loss"], a["div_step"], a.get("weights"), doc["meta"],
                   a.get("momentum"), a.get("weight_steps"), a.get("weight_history"))


def _mean_sem(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.sum(np.isfinite(v), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(v, axis=1) / np.maximum(n, 1), np.nan)
        dev = np.where(np.isfinite(v), v - mean[:, None], 0.0)
        var = np.where(n > 1, np.sum(dev * dev, axis=1) / np.maximum(n - 1, 1), np.nan)
        return mean, np.sqrt(var / n)


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
