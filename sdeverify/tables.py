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
import types
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # optional extras, imported lazily by the functions below; the result
    import pandas  # types only annotate (their modules import this one for to_dataframe)
    import xarray

    from .result import SimulationResult
    from .train.result import TrainResult

__all__ = ["optional", "simulation_frame", "simulation_dataset", "train_frame",
           "train_dataset", "attrs_of"]


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


def simulation_frame(res: SimulationResult) -> "pandas.DataFrame":
    """Tidy table of a :class:`~sdeverify.result.SimulationResult`: one row per
    (optimizer, step, observable) with ``mean``, ``sem`` and ``count`` (non-diverged paths)."""
    pd = optional("pandas")
    J, R, O = res.mean.shape
    idx = np.indices((J, R, O)).reshape(3, -1)
    return pd.DataFrame({
        "optimizer": np.asarray(res.optimizers, dtype=object)[idx[0]],
        "step": np.asarray(res.steps)[idx[1]],
        "observable": np.asarray(res.observables, dtype=object)[idx[2]],
        "mean": res.mean.reshape(-1), "sem": res.sem.reshape(-1),
        "count": res.count.reshape(-1).astype(np.int64)})


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

    ``per_replica=False``: one row per (optimizer, step, metric) with ``mean``, ``sem`` and
    ``count`` across non-diverged replicas.  ``per_replica=True``: one row per (optimizer,
    step, replica, metric) with ``value`` (NaN from a replica's divergence on)."""
    pd = optional("pandas")
    J, E, Rp, K = res.values.shape
    steps = np.asarray(res.eval_steps)
    names = np.asarray(res.optimizers, dtype=object)
    metrics = np.asarray(res.metrics, dtype=object)
    if per_replica:
        vals = np.stack([np.stack([res.values_of(j, k) for k in range(K)], axis=-1)
                         for j in range(J)])                       # (J, E, R, K)
        idx = np.indices((J, E, Rp, K)).reshape(4, -1)
        return pd.DataFrame({"optimizer": names[idx[0]], "step": steps[idx[1]],
                             "replica": idx[2], "metric": metrics[idx[3]],
                             "value": vals.reshape(-1)})
    mean, sem, count = _train_stats(res)
    idx = np.indices((J, E, K)).reshape(3, -1)
    return pd.DataFrame({"optimizer": names[idx[0]], "step": steps[idx[1]],
                         "metric": metrics[idx[2]], "mean": mean.reshape(-1),
                         "sem": sem.reshape(-1), "count": count.reshape(-1)})


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
    metric (NaN from a replica's divergence on) and ``mean``/``sem``/``count`` over
    optimizer × step × metric."""
    xr = optional("xarray")
    J, E, Rp, K = res.values.shape
    vals = np.stack([np.stack([res.values_of(j, k) for k in range(K)], axis=-1) for j in range(J)])
    mean, sem, count = _train_stats(res)
    coords = {"optimizer": list(res.optimizers), "step": np.asarray(res.eval_steps),
              "replica": np.arange(Rp), "metric": list(res.metrics)}
    d3 = ("optimizer", "step", "metric")
    return xr.Dataset({"value": (("optimizer", "step", "replica", "metric"), vals),
                       "mean": (d3, mean), "sem": (d3, sem), "count": (d3, count)},
                      coords=coords, attrs=attrs_of(res.meta))
