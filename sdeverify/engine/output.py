"""What every engine returns: :class:`EngineOutput`, a frozen record of arrays.

An engine (:mod:`sdeverify.engine`) receives a validated
:class:`~sdeverify.engine.spec.RunSpec`, gets an output from :meth:`EngineOutput.allocate`
(arrays sized for the spec, accumulators at zero), fills its arrays in place and returns it;
:func:`sdeverify.simulate` checks it with :meth:`EngineOutput.check` and turns it into a
:class:`~sdeverify.result.SimulationResult`.  The record is frozen (its fields cannot be
rebound), its arrays are not (the engines write into them).

Shapes use ``n_blocks = ceil(paths / config.BLOCK)``, ``n_opt`` optimizers, ``n_rec``
recorded steps, ``n_obs`` observables and the dimension ``d``.  Statistics are per block of
``config.BLOCK`` consecutive paths, folded in path order (the canonical reduction that makes
results identical for any thread count and any split into shards, :mod:`sdeverify.config`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # for annotations only: spec.py imports this module
    from .spec import RunSpec


class EngineContractError(TypeError):
    """A backend returned arrays of the wrong shape or dtype (:meth:`EngineOutput.check`)."""


@dataclass(frozen=True)
class EngineOutput:
    """The arrays one engine call fills.

    Attributes
    ----------
    block_stats : (n_blocks, n_opt, n_rec, n_obs, 3) float64
        Welford accumulators (count, mean, M2) of the observable h(x_j) over the paths of
        each block that have not diverged and whose value is finite.
    block_diff : (n_blocks, n_opt, n_rec, n_obs, 3) float64
        The same for h(x_j) − h(x_0), paired path by path with optimizer 0 (common random
        numbers); a path counts only where both values are there.
    block_bad : (n_blocks, n_opt, n_rec, n_obs, 2) float64
        Per block, observable values left out: not finite (``[..., 0]``) or raised
        (``[..., 1]``; the CPU engine catches and counts them, ``simulate`` reports them).
    x_final, m_final : (n_opt, paths, d), the spec's dtype
        Iterate and momentum buffer after the last step (frozen at the step a path diverged).
    div_step : (n_opt, paths) int64
        The step at which a path diverged (``simulate``'s divergence rule), −1 if it did not.
    states : (n_opt, n_rec, paths, d) float64 when ``store_states``, else shape (0, 0, 0, 0)
        x at every recorded step; NaN once a path has diverged.
    """
    block_stats: np.ndarray
    block_diff: np.ndarray
    block_bad: np.ndarray
    x_final: np.ndarray
    m_final: np.ndarray
    div_step: np.ndarray
    states: np.ndarray

    @classmethod
    def allocate(cls, spec: "RunSpec") -> "EngineOutput":
        """Arrays for ``spec``: accumulators at zero, states NaN, the rest uninitialised
        (every engine writes every entry of ``x_final``, ``m_final`` and ``div_step``)."""
        return cls(**{name: np.zeros(shape) if name.startswith("block_") else
                      np.full(shape, np.nan) if name == "states" else np.empty(shape, dtype=dt)
                      for name, (shape, dt) in cls.layout(spec).items()})

    @staticmethod
    def layout(spec: "RunSpec") -> dict:
        """``{field: (shape, dtype)}`` of the output for ``spec``."""
        n_opt, d, n_rec = spec.a.shape[0], spec.x0.shape[0], spec.record.shape[0]
        n_obs, nb, paths = spec.codes.shape[0], spec.n_blocks, spec.paths
        f64 = np.dtype(np.float64)
        return {
            "block_stats": ((nb, n_opt, n_rec, n_obs, 3), f64),
            "block_diff": ((nb, n_opt, n_rec, n_obs, 3), f64),
            "block_bad": ((nb, n_opt, n_rec, n_obs, 2), f64),
            "x_final": ((n_opt, paths, d), np.dtype(spec.dtype)),
            "m_final": ((n_opt, paths, d), np.dtype(spec.dtype)),
            "div_step": ((n_opt, paths), np.dtype(np.int64)),
            "states": ((n_opt, n_rec, paths, d) if spec.store_states else (0, 0, 0, 0), f64),
        }

    def check(self, spec: "RunSpec", backend: str = "?") -> "EngineOutput":
        """Raise :class:`EngineContractError` unless every field has the shape and dtype :meth:`layout`
        gives for ``spec`` (a backend that breaks the contract is named); returns self."""
        for name, (shape, dt) in self.layout(spec).items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dt:
                got = (f"{a.dtype}{list(a.shape)}" if isinstance(a, np.ndarray)
                       else type(a).__name__)
                raise EngineContractError(f"backend {backend!r} returned {name} as {got}; the engine "
                                f"contract (sdeverify.engine.output) expects {dt}{list(shape)}")
        return self

