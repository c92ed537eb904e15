"""The noisy gradient oracle (NGOS, Def. 3.1) as the engines see it.

A problem is three ``numba.njit`` functions over a flat float64 parameter vector ``p``:

* ``grad(x, p, out)``      writes ∇L(x) into ``out``;
* ``noise(x, p, xi, out)`` writes one noise vector ``v`` (E v = 0, Cov v = Σ(x)) computed
  from the ``n_draws`` base draws ``xi`` (standard normal, Rademacher or uniform(0, 1));
* ``loss(x, p)``           returns L(x).

and, optionally, two faster forms of the same oracle call that the engines use when present:

* ``oracle(x, p, xi, g, v)`` writes ``grad(x, p, g)`` and ``noise(x, p, xi, v)`` in one
  function, so that what they share (a sine, ∇L inside a minibatch deviation, a residual)
  is computed once per call;
* ``oracle_lanes(X, p, Z, G, V)`` does the same for a block of paths at once, lanes last:
  ``X``, ``G``, ``V`` are (d, L) and ``Z`` is (≥ n_draws, L), column ``l`` being one path's
  call; written with the lane loop innermost, it lets the CPU engine vectorise over paths
  where a per-path oracle runs path by path (d > ``config.FUSE_MAX_DIM``) or leaves the
  lane loop scalar (a large body, e.g. eight sines); the CPU engine uses it for every d in
  float64 runs;
* ``oracle_pair_lanes(X, p, Z1, Z2, G, V, W)``: SVAG's two oracle calls at the same x
  (Def. 6.1) for a block of paths, ``G`` the gradient, ``V`` the noise of the draws ``Z1``,
  ``W`` that of ``Z2``, so that what the two calls share (a sine, a noise scale) is computed
  once; used with ``oracle_lanes``, by SVAG runs of the CPU engine (float64), in place of two
  ``oracle_lanes`` calls.

All must give, per path, exactly what ``grad`` and ``noise`` give (the engines' results
are then unchanged, bit for bit, when the arithmetic is the same); ``grad`` and ``noise``
stay the definition (the SDE solvers, the theory and the tests use them).

The oracle then returns ``g = ∇L(x) + σ v`` (σ the noise scale).  Engines are generic over
these functions: a new problem never means a new kernel, only a new (cached) specialisation.
Because the draws are produced by the engine, every optimizer in one call sees the same
``xi`` at the same (path, step): common random numbers.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.typing import ArrayLike

from .. import rng
from ..reprs import call_repr
from ..schedules import svag_weights
from ..validation import name_string, positive_int

__all__ = ["NGOS", "pack"]


class NGOS:
    """A noisy gradient oracle (Def. 3.1), the user-facing route for custom problems.

    See docs/theory.md §1 for the oracle's definition.

    Parameters
    ----------
    dim : dimension ``d`` of x.
    grad, noise, loss : ``numba.njit`` functions with the signatures above.
    oracle, oracle_lanes : optional ``numba.njit`` functions (above), the same oracle call
        computed once for gradient and noise (per path, or per block of lanes).
    oracle_pair_lanes : optional ``numba.njit`` function (above), SVAG's two calls for a
        block of lanes in one; needs ``oracle_lanes``.
    params : flat float64 parameter vector passed as ``p`` to the three functions.
    n_draws : number of base draws one oracle call consumes.
    noise_dist : "normal", "rademacher" or "uniform": the law of the base draws.
    name : label used in results and plots.
    """

    def __init__(self, *, dim: int, grad: Callable, noise: Callable, loss: Callable,
                 params: ArrayLike | None = None, n_draws: int | None = None, noise_dist: str = "normal",
                 name: str = "custom", oracle: Callable | None = None,
                 oracle_lanes: Callable | None = None,
                 oracle_pair_lanes: Callable | None = None) -> None:
        self.dim = positive_int("dim", dim)
        for fname, f in (("grad", grad), ("noise", noise), ("loss", loss), ("oracle", oracle),
                         ("oracle_lanes", oracle_lanes), ("oracle_pair_lanes", oracle_pair_lanes)):
            if not hasattr(f, "py_func") and not (f is None and fname.startswith("oracle")):
                raise ValueError(f"{fname} must be a numba.njit function, got {f!r}")
        if oracle_pair_lanes is not None and oracle_lanes is None:
            raise ValueError("oracle_pair_lanes needs oracle_lanes (the engine uses the pair in "
                             "place of two oracle_lanes calls), got oracle_lanes=None")
        self.grad, self.noise, self.loss = grad, noise, loss
        self.oracle, self.oracle_lanes = oracle, oracle_lanes
        self.oracle_pair_lanes = oracle_pair_lanes
        p = np.zeros(1) if params is None else np.asarray(params, dtype=np.float64).ravel()
        if p.size == 0:
            p = np.zeros(1)
        self.params = np.ascontiguousarray(p)
        self.n_draws = positive_int("n_draws", self.dim if n_draws is None else n_draws)
        if noise_dist not in rng.DRAW_KINDS:
            raise ValueError(f"noise_dist must be one of {sorted(rng.DRAW_KINDS)}, got {noise_dist!r}")
        self.noise_dist = noise_dist
        self.draw_kind = rng.DRAW_KINDS[noise_dist]
        self.name = name_string("name", name)
        # SVAG (Def. 6.1): g = r1 g1 + r2 g2 from two independent oracle calls; ell = 1 is off.
        self.svag_ell = 1.0

    @property
    def svag_coefficients(self) -> tuple[float, float]:
        """(r1, r2) of Def. 6.1 for this problem's ℓ; (1, 0) when SVAG is off."""
        return svag_weights(self.svag_ell)

    # NumPy conveniences (used by tests, theory and the reference backend)
    def gradient(self, x: ArrayLike) -> np.ndarray:
        """∇L(x), (d,), from the problem's ``grad`` function (no noise)."""
        out = np.empty(self.dim)
        self.grad(np.asarray(x, dtype=np.float64), self.params, out)
        return out

    def value(self, x: ArrayLike) -> float:
        """L(x), from the problem's ``loss`` function."""
        return float(self.loss(np.asarray(x, dtype=np.float64), self.params))

    def __repr__(self) -> str:
        """The call that builds this problem, arrays written out as lists, wrapped in
        ``SVAG(..., ell=...)`` when SVAG is on: ``eval`` of it (with the package's names in
        scope, :func:`sdeverify.testing.replay`) rebuilds an equal problem.  A subclass
        that does not define ``_call_repr`` prints as the plain ``NGOS`` with its functions
        (by name) and parameters: the same oracle."""
        text = self._call_repr()
        if self.svag_ell != 1.0:
            text = f"SVAG({text}, ell={self.svag_ell!r})"
        return text

    @property
    def _own_name(self) -> str:
        """The name given at construction (before :func:`~sdeverify.problems.SVAG` renamed it)."""
        return getattr(self, "_name_before_svag", self.name)

    def _call_repr(self) -> str:
        """The constructor call of this problem without SVAG (subclasses give their own)."""
        fused = {k: f for k, f in (("oracle", self.oracle), ("oracle_lanes", self.oracle_lanes),
                                   ("oracle_pair_lanes", getattr(self, "oracle_pair_lanes", None)))
                 if f is not None}
        return call_repr("NGOS", dim=self.dim, grad=self.grad, noise=self.noise, loss=self.loss,
                         params=self.params, n_draws=self.n_draws, noise_dist=self.noise_dist,
                         name=self._own_name, **fused)


def pack(*arrays: ArrayLike) -> np.ndarray:
    """Concatenate scalars/arrays into one flat float64 parameter vector."""
    return np.ascontiguousarray(np.concatenate([np.atleast_1d(np.asarray(a, dtype=np.float64)).ravel()
                                                for a in arrays]))
