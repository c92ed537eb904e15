"""Results where analysis happens: tidy pandas tables and labelled xarray datasets.

pandas and xarray are optional (``pip install 'sdeverify[analysis]'``); they are imported
only when a table is asked for, and a missing one is an :class:`ImportError` that says how
to install it.  The functions here back :meth:`SimulationResult.to_dataframe`,
:meth:`SimulationResult.to_xarray`, :meth:`TrainResult.to_dataframe`,
:meth:`TrainResult.to_xarray` and :class:`sdeverify.checkrun.CheckRun`.
"""
from __future__ import annotations

import importlib
import json
import re
import types
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # optional extras, imported lazily by the functions below; the result
    import pandas  # types only annotate (their modules import this one for to_dataframe)
    import xarray

    from .result import SimulationResult
    from .train.result import TrainResult

__all__ = ["optional", "t_half_width", "simulation_frame", "simulation_dataset", "train_frame",
           "train_dataset", "attrs_of", "simulation_paired_frame", "train_paired_frame",
           "simulation_columns", "train_columns"]


def optional(module: str) -> types.ModuleType:
    """Import an optional dependency, or raise an ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this needs the optional dependency {module!r}, which is not "
                          f"installed: pip install 'sdeverify[analysis]' (or pip install "
                          f"{module})") from exc


def attrs_of(meta: dict) -> dict:
    """Metadata as dataset attributes: scalars and strings kept, anything else as JSON text."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, (str, int, float, bool, np.integer, np.floating)):
            out[k] = v.item() if isinstance(v, np.generic) else v
        else:
            out[k] = json.dumps(v, default=str)
    return out


def _per_optimizer(specs: Any, names: tuple) -> list[dict]:
    """The scheme columns (:func:`sdeverify.hyperparameters.scheme_columns`) of each
    optimizer, from the reprs a result stored (NaN columns when it stored none)."""
    from .hyperparameters import SCHEME_COLUMNS, scheme_columns
    if isinstance(specs, list) and len(specs) == len(names):
        return [scheme_columns(t) for t in specs]
    return [dict.fromkeys(SCHEME_COLUMNS, np.nan) for _ in names]


def simulation_columns(res: SimulationResult) -> tuple[list[dict], dict]:
    """(per-optimizer columns, run columns) of a simulation's hyperparameters: each
    optimizer's ``scheme``, ``lr``, ``beta``, ``momentum``, ``dampening``; the run's
    ``sigma``, ``svag_ell`` (ℓ of SVAG, 1 when off), ``problem`` (its name),
    ``problem_type`` (its class), ``dim``, ``noise_dist`` and ``problem_params`` (a hash of
    the problem's parameter vector: two problems of one type with different H, Σ or centre
    differ here), ``problem_spec`` (the problem's replayable repr, its H, Σ and centre
    included: ``sdeverify.testing.replay`` rebuilds it), ``seed`` and ``paths``."""
    meta = res.meta
    fp = str(meta.get("fingerprint", {}).get("problem", ""))
    params = re.search(r"params=([0-9a-f]+)", fp)
    run = {"sigma": meta.get("sigma", np.nan), "svag_ell": meta.get("svag_ell", np.nan),
           "problem": meta.get("problem"), "problem_type": fp.split(" ")[0] if fp else None,
           "dim": meta.get("dim"), "noise_dist": meta.get("noise_dist"),
           "problem_params": params.group(1) if params else None,
           "problem_spec": meta.get("problem_spec"), "seed": meta.get("seed"),
           "paths": meta.get("paths", res.paths)}
    return _per_optimizer(meta.get("optimizer_specs"), res.optimizers), run


def _with_columns(frame: dict, j: np.ndarray, per_opt: list[dict], run: dict) -> dict:
    """``frame`` (column -> values) plus the hyperparameter columns, per row's optimizer
    index ``j``."""
    for key in per_opt[0] if per_opt else ():
        col = np.empty(len(per_opt), dtype=object)
        col[:] = [p[key] for p in per_opt]
        vals = col[j]
        if all(isinstance(v, float) for v in vals):
            vals = vals.astype(np.float64)
        frame[key] = vals
    for key, v in run.items():
        frame[key] = [v] * len(j)
    return frame


def simulation_frame(res: SimulationResult) -> "pandas.DataFrame":
    """Tidy table of a :class:`~sdeverify.result.SimulationResult`: one row per
    (optimizer, step, observable) with ``mean``, ``sem`` and ``count`` (non-diverged paths),
    then the hyperparameters of the row's optimizer and of the run
    (:func:`simulation_columns`: lr, β, momentum, dampening, σ, ℓ, the problem and a hash of
    its parameters, seed, paths)."""
    pd = optional("pandas")
    J, R, O = res.mean.shape
    idx = np.indices((J, R, O)).reshape(3, -1)
    frame = {
        "optimizer": np.asarray(res.optimizers, dtype=object)[idx[0]],
        "step": np.asarray(res.steps)[idx[1]],
        "observable": np.asarray(res.observables, dtype=object)[idx[2]],
        "mean": res.mean.reshape(-1), "sem": res.sem.reshape(-1),
        "count": res.count.reshape(-1).astype(np.int64)}
    return pd.DataFrame(_with_columns(frame, idx[0], *simulation_columns(res)))


def t_half_width(sem: Any, count: Any, level: float = 0.95) -> np.ndarray:
    """Half-width t_{n−1}·sem of the two-sided ``level`` interval for a mean of ``count``
    independent units (replicas, shards, paths) with standard error ``sem``, elementwise:
    Student's t quantile with count − 1 degrees of freedom — what a handful of units needs
    (±1.96·sem covers 86% at 4), and the normal quantile in the limit of many.  NaN where
    count < 2.  :func:`sdeverify.stats.t_interval` is the same interval from the samples;
    this form serves results that keep only (mean, sem, count) per cell."""
    from scipy.stats import t as student_t
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        q = np.where(n >= 2, student_t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)), np.nan)
    return q * np.asarray(sem, dtype=np.float64)


def _t_interval_columns(diff: np.ndarray, sem: np.ndarray, count: np.ndarray,
                        level: float) -> dict:
    """``low``/``high``: diff ∓ t_{n−1}·sem (:func:`t_half_width`) for the ``count`` paired
    units; NaN with fewer than 2 units."""
    half = t_half_width(sem, count, level)
    return {"low": diff - half, "high": diff + half, "level": np.full(diff.shape, float(level))}


def simulation_paired_frame(res: SimulationResult, level: float = 0.95) -> "pandas.DataFrame":
    """Paired (common-random-numbers) differences of a simulation: one row per (optimizer,
    step, observable) for every optimizer but the first, the ``baseline``, with
    ``difference`` = mean of h(x_j) − h(x_baseline) path by path, its paired ``sem``,
    ``count`` (paths where neither diverged), and the Student-t interval ``low``/``high``
    at ``level``, then the hyperparameter columns of the row's optimizer and of the run.
    The engine pairs every path with the first optimizer's, so it is the baseline."""
    pd = optional("pandas")
    J, R, O = res.mean.shape
    if J < 2:
        raise ValueError("a paired frame needs at least two optimizers (the first is the baseline)")
    diff = np.empty((J - 1, R, O))
    sem = np.empty((J - 1, R, O))
    count = np.empty((J - 1, R, O), dtype=np.int64)
    for j in range(1, J):
        for o in range(O):
            diff[j - 1, :, o], sem[j - 1, :, o] = res.paired(j, o)
            count[j - 1, :, o] = res.paired_count(j, o)
    idx = np.indices((J - 1, R, O)).reshape(3, -1)
    frame = {"optimizer": np.asarray(res.optimizers[1:], dtype=object)[idx[0]],
             "baseline": [res.optimizers[0]] * idx.shape[1],
             "step": np.asarray(res.steps)[idx[1]],
             "observable": np.asarray(res.observables, dtype=object)[idx[2]],
             "difference": diff.reshape(-1), "sem": sem.reshape(-1), "count": count.reshape(-1)}
    frame.update(_t_interval_columns(frame["difference"], frame["sem"], frame["count"], level))
    per_opt, run = simulation_columns(res)
    return pd.DataFrame(_with_columns(frame, idx[0] + 1, per_opt, run))


def simulation_dataset(res: SimulationResult) -> "xarray.Dataset":
    """:class:`xarray.Dataset` with variables ``mean``, ``sem``, ``count`` over the dims
    optimizer × step × observable, and the run's metadata as attributes."""
    xr = optional("xarray")
    coords = {"optimizer": list(res.optimizers), "step": np.asarray(res.steps),
              "observable": list(res.observables)}
    dims = ("optimizer", "step", "observable")
    return xr.Dataset({"mean": (dims, res.mean), "sem": (dims, res.sem),
                       "count": (dims, res.count.astype(np.int64))},
                      coords=coords, attrs=attrs_of(res.meta))


def train_frame(res: TrainResult, per_replica: bool = False) -> "pandas.DataFrame":
    """Tidy table of a :class:`~sdeverify.train.TrainResult`.

    ``per_replica=False``: one row per (optimizer, step, observable) with ``mean``, ``sem``
    and ``count`` across non-diverged replicas.  ``per_replica=True``: one row per (optimizer,
    step, replica, observable) with ``value`` (NaN from a replica's divergence on).  The
    metric's column is ``observable``, as in a simulation's table, so the two concatenate;
    then the hyperparameter columns (:func:`train_columns`)."""
    pd = optional("pandas")
    J, E, Rp, K = res.values.shape
    steps = np.asarray(res.eval_steps)
    names = np.asarray(res.optimizers, dtype=object)
    metrics = np.asarray(res.metrics, dtype=object)
    if per_replica:
        vals = np.stack([np.stack([res.values_of(j, k) for k in range(K)], axis=-1)
                         for j in range(J)])                       # (J, E, R, K)
        idx = np.indices((J, E, Rp, K)).reshape(4, -1)
        frame = {"optimizer": names[idx[0]], "step": steps[idx[1]], "replica": idx[2],
                 "observable": metrics[idx[3]], "value": vals.reshape(-1)}
        return pd.DataFrame(_with_columns(frame, idx[0], *train_columns(res)))
    mean, sem, count = _train_stats(res)
    idx = np.indices((J, E, K)).reshape(3, -1)
    frame = {"optimizer": names[idx[0]], "step": steps[idx[1]],
             "observable": metrics[idx[2]], "mean": mean.reshape(-1),
             "sem": sem.reshape(-1), "count": count.reshape(-1)}
    return pd.DataFrame(_with_columns(frame, idx[0], *train_columns(res)))


def train_columns(res: TrainResult) -> tuple[list[dict], dict]:
    """(per-optimizer columns, run columns) of a training run's hyperparameters: each
    optimizer's ``scheme``, ``lr``, ``beta``, ``momentum``, ``dampening``; the run's
    ``batch_size``, ``svag_ell`` (ℓ, 1 when off), ``data``, ``model`` (its description as
    text), ``seed`` and ``replicas``."""
    meta = res.meta
    model = meta.get("model")
    run = {"batch_size": meta.get("batch_size"), "svag_ell": meta.get("svag", 1),
           "data": meta.get("data"),
           "model": model if model is None or isinstance(model, str)
           else json.dumps(model, sort_keys=True, default=str),
           "seed": meta.get("seed"), "replicas": res.replicas}
    return _per_optimizer(meta.get("optimizers"), res.optimizers), run


def train_paired_frame(res: TrainResult, baseline: int | str = 0,
                       level: float = 0.95) -> "pandas.DataFrame":
    """Paired differences of a training run: one row per (optimizer, step, observable) for
    every optimizer but ``baseline`` (name or position), with ``difference`` = mean over
    replicas of value(optimizer) − value(baseline) replica by replica (common initial
    weights and batches), its paired ``sem``, ``count`` (replicas where neither diverged)
    and the Student-t interval ``low``/``high`` at ``level`` (t with count − 1 degrees of
    freedom: ±1.96·sem would cover far less with a handful of replicas), then the
    hyperparameter columns of the row's optimizer and of the run."""
    pd = optional("pandas")
    from .validation import position
    J, E, _, K = res.values.shape
    b = position("optimizer", res.optimizers, baseline)
    others = [j for j in range(J) if j != b]
    if not others:
        raise ValueError("a paired frame needs at least two optimizers")
    diff = np.empty((len(others), E, K))
    sem = np.empty((len(others), E, K))
    count = np.empty((len(others), E, K), dtype=np.int64)
    for i, j in enumerate(others):
        for k in range(K):
            diff[i, :, k], sem[i, :, k] = res.paired(j, k, b)
            d = res.values_of(j, k) - res.values_of(b, k)
            count[i, :, k] = np.sum(np.isfinite(d), axis=1)
    idx = np.indices((len(others), E, K)).reshape(3, -1)
    opt_index = np.asarray(others)[idx[0]]
    frame = {"optimizer": np.asarray(res.optimizers, dtype=object)[opt_index],
             "baseline": [res.optimizers[b]] * idx.shape[1],
             "step": np.asarray(res.eval_steps)[idx[1]],
             "observable": np.asarray(res.metrics, dtype=object)[idx[2]],
             "difference": diff.reshape(-1), "sem": sem.reshape(-1), "count": count.reshape(-1)}
    frame.update(_t_interval_columns(frame["difference"], frame["sem"], frame["count"], level))
    per_opt, run = train_columns(res)
    return pd.DataFrame(_with_columns(frame, opt_index, per_opt, run))


def _train_stats(res: TrainResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    J, E, _, K = res.values.shape
    mean, sem, count = np.empty((J, E, K)), np.empty((J, E, K)), np.empty((J, E, K), np.int64)
    for j in range(J):
        valid = res.valid[j]                                       # (E, R)
        count[j] = valid.sum(axis=1)[:, None]
        for k in range(K):
            mean[j, :, k], sem[j, :, k] = res.series(j, k)
    return mean, sem, count


def train_dataset(res: TrainResult) -> "xarray.Dataset":
    """:class:`xarray.Dataset` of a TrainResult: ``value`` over optimizer × step × replica ×
    observable (NaN from a replica's divergence on) and ``mean``/``sem``/``count`` over
    optimizer × step × observable.  The metrics' dimension is ``observable``, as in a
    simulation's dataset and in both results' frames."""
    xr = optional("xarray")
    J, E, Rp, K = res.values.shape
    vals = np.stack([np.stack([res.values_of(j, k) for k in range(K)], axis=-1) for j in range(J)])
    mean, sem, count = _train_stats(res)
    coords = {"optimizer": list(res.optimizers), "step": np.asarray(res.eval_steps),
              "replica": np.arange(Rp), "observable": list(res.metrics)}
    d3 = ("optimizer", "step", "observable")
    return xr.Dataset({"value": (("optimizer", "step", "replica", "observable"), vals),
                       "mean": (d3, mean), "sem": (d3, sem), "count": (d3, count)},
                      coords=coords, attrs=attrs_of(res.meta))
