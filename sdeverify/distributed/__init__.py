"""Run :func:`sdeverify.simulate` and :func:`sdeverify.train.fit` on a Dask cluster.

The engine's draws are a pure function of (seed, global path index, step) and its
statistics are merged in a fixed tree over global 256-path blocks (``config.BLOCK``); the
trainer keys each replica's weights and batches by (seed, global replica index).  A run can
therefore be cut into shards of paths (replicas), the shards run anywhere, and
:meth:`SimulationResult.merge <sdeverify.result.SimulationResult.merge>` /
:meth:`TrainResult.merge <sdeverify.train.result.TrainResult.merge>` give **bitwise** the
result of one local run.  This package does the cutting, the submitting and the merging, one
module per job: :mod:`~sdeverify.distributed.clusters` (the cluster's lifetime and thread
caps), :mod:`~sdeverify.distributed.session` (the active session of :func:`use`),
:mod:`~sdeverify.distributed.points` (a call validated and cut into shards),
:mod:`~sdeverify.distributed.keys` (result keys), :mod:`~sdeverify.distributed.shards` (run
and merge) and :mod:`~sdeverify.distributed.sweeps` (many points at once).  Entry points:

* ``simulate(..., executor=client)`` / ``fit(..., executor=client)``: one call ("point"),
  sharded over the workers of a ``distributed.Client`` (anything with ``submit`` whose
  futures have ``result()`` works, e.g. a ``concurrent.futures.ProcessPoolExecutor``);
* :func:`sweep`: many points submitted at once; a point whose task raises comes back as a
  :class:`PointError` (point and error named) and the other points still finish;
* :func:`run_many`: a check's whole sweep — ``simulate``/``fit`` calls and its per-point
  work (:class:`Call`: exact references, statistics, whole points with their simulations),
  each ``Call`` one task — so that ``--workers N`` runs the check's own computations too;
* :func:`use`: a context inside which *every* ``simulate``/``fit`` call is sent to the
  cluster, so that ``sdeverify check --workers N`` runs the checks' sweeps unchanged (each
  check in its own thread and its own session, ``use(..., this_thread=True)``, the checks
  side by side on one cluster); with
  ``points_dir`` each finished point is saved atomically under a hash of everything that
  determines it (:func:`point_key`), and with ``resume=True`` saved points are reused
  instead of recomputed; with ``local_below`` (the CLI: :data:`LOCAL_WORK`) a call too
  small to pay for the cluster runs in this process, and a :class:`SmallWorkWarning` says so.  The session is held by :mod:`sdeverify.dispatch`, which
  ``simulate``/``fit`` read, and this package registers there the functions that run a call
  on an executor: data flows down, nothing below imports this package;
* :class:`Cluster` / :func:`cluster`: a ``LocalCluster`` (``workers=N``, one thread each) or
  a connection to a running scheduler (``scheduler="tcp://HOST:PORT"``), what the CLI's
  ``--workers`` / ``--scheduler`` start.

**What travels.**  A task carries a spec — the problem, the optimizers and the call's
arguments — never a closure.  Problems pickle with their ``numba.njit`` functions: Numba
pickles a dispatcher *by value* (its Python function, via cloudpickle), so functions
defined in a script or a notebook reach the workers too.  What must be importable on the
workers is what those functions and the problem's class refer to *by reference*: the
``sdeverify`` package (same version: :func:`point_key` includes it) and every module a
user function imports or calls into (``import mylib`` inside ``grad`` needs ``mylib`` on the
workers).  A spec that does not pickle is a ``ValueError`` naming the point before anything
is submitted; a worker that cannot unpickle it (a missing module) fails the point like any
task error: a :class:`PointError` in :func:`sweep`, the shard's own exception (with a note
naming the point) from ``simulate``/``fit``.

**Lost workers.**  A worker process that dies mid-task is replaced by its nanny and Dask
reruns its shards elsewhere (up to ``distributed.scheduler.allowed-failures`` times per
task); the merged result is the same bitwise.

**Compilation.**  Each worker process compiles (or loads from Numba's on-disk cache) a
kernel once and keeps it for its lifetime (``engine.cpu.get_kernel`` memoises by the
problem's functions; the unpickled dispatchers of one function are the same object in a
process, by Numba's uuid memo), so only a worker's first task of a new problem pays for it.

Dask is optional: ``pip install 'sdeverify[dist]'``.
"""
from __future__ import annotations

from .. import dispatch
from ..dispatch import Call, active
from .clusters import CONNECT_TIMEOUT, MISSING_DASK, Cluster, cluster, n_workers, task_threads
from .keys import point_key, source_digest
from .points import (LOCAL_WORK, MIN_TASK_WORK, RECORD_WORK, SHARDS_PER_WORKER, Point, PointError,
                     SmallWorkWarning, call_point, fit_point, kept_here, plan_shards,
                     simulate_point)
from .session import Session, use
from .shards import run_shard
from .sweeps import fit, run_many, run_points, simulate, sweep

__all__ = ["MIN_TASK_WORK", "LOCAL_WORK", "RECORD_WORK", "SmallWorkWarning", "SHARDS_PER_WORKER", "MISSING_DASK", "CONNECT_TIMEOUT", "PointError",
           "Session", "active", "use", "n_workers", "plan_shards", "source_digest", "point_key",
           "Point", "simulate_point", "fit_point", "run_shard", "task_threads", "run_points",
           "simulate", "fit", "sweep", "Cluster", "cluster", "Call", "call_point", "run_many", "kept_here"]

dispatch.register("simulate", simulate)
dispatch.register("fit", fit)
