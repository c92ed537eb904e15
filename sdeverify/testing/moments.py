"""The variance of an observable with its standard error, from moments the engine accumulates.

The engines fold each observable h into (count, mean, M2) per block: enough for E h and its
standard error, and for Var h, but not for the standard error of Var h, which needs the
fourth central moment μ₄:  Var(s²) = (μ₄ − σ⁴(n − 3)/(n − 1))/n.  Rather than widen every
accumulator (and slow every run), a test that asserts a variance asks for the moments it
needs: :func:`moment_observables` turns h into the four observables
z, z², z³, z⁴ of z = h − c (``c`` a fixed shift that keeps the raw moments well conditioned —
the expected mean, or any value near it; the variance does not depend on it), which any run
accumulates like every other observable (exactly, bitwise, across shards).
:func:`variance_series` combines their means into s² and its standard error (delta method)
and :func:`sdeverify.testing.assert_variance` compares them with a prediction.
"""
from __future__ import annotations

from typing import Any, Callable

import numba
import numpy as np

from ..observables import LOSS, SQNORM, parse
from ..result import index_pair

__all__ = ["moment_observables", "moment_names", "variance_series"]

ORDERS = (1, 2, 3, 4)


def moment_names(name: str) -> tuple[str, ...]:
    """The names under which :func:`moment_observables` records the moments of ``name``:
    ``"NAME:m1"`` … ``"NAME:m4"`` (the k-th power of NAME − c)."""
    return tuple(f"{name}:m{k}" for k in ORDERS)


def _base(obs: Any, problem: Any) -> tuple[str, Callable]:
    """(name, njit h(x)) for an observable given as in :func:`sdeverify.simulate`."""
    if isinstance(obs, str):
        dim = getattr(problem, "dim", None)
        if dim is None:
            raise ValueError("pass problem= to take the moments of a named observable "
                             f"({obs!r})")
        _, codes, _ = parse([obs], dim)
        code = int(codes[0])
        if code >= 0:
            @numba.njit
            def h(x):
                return x[code]
        elif code == SQNORM:
            @numba.njit
            def h(x):
                s = 0.0
                for v in x:
                    s += v * v
                return s
        else:
            assert code == LOSS
            loss, params = problem.loss, problem.params

            @numba.njit
            def h(x):
                return loss(x, params)
        return obs, h
    if hasattr(obs, "py_func"):
        return obs.__name__, obs
    raise ValueError(f"observable must be a name ('loss', 'sqnorm', 'x<i>') or a numba.njit "
                     f"function h(x) -> float, got {obs!r}")


def moment_observables(observable: Any, *, center: float = 0.0, problem: Any = None,
                       name: str | None = None) -> dict[str, Callable]:
    """Observables ``{"NAME:m1": z, …, "NAME:m4": z⁴}`` with z = h(x) − ``center``, to pass
    (merged with any others) as ``observables=`` of :func:`sdeverify.simulate`.

    ``observable`` is a name (``"loss"``, ``"sqnorm"``, ``"x<i>"``: then give ``problem``)
    or a ``numba.njit`` function ``h(x) -> float``; ``name`` overrides its name.  ``center``
    should be near E h (e.g. the predicted mean, or 0 for a centred quantity): the
    variance is computed from raw moments of z, whose rounding error grows with
    (E h − center)²/Var h.  Each moment is one more evaluation of h per path and recorded
    step — only runs that ask for it pay.
    """
    c = float(center)
    if not np.isfinite(c):
        raise ValueError(f"center must be finite, got {center!r}")
    label, h = _base(observable, problem)
    label = label if name is None else name

    def power(k: int) -> Callable:
        if k == 1:
            def f(x):
                return h(x) - c
        elif k == 2:
            def f(x):
                z = h(x) - c
                return z * z
        elif k == 3:
            def f(x):
                z = h(x) - c
                return z * z * z
        else:
            def f(x):
                z = h(x) - c
                z2 = z * z
                return z2 * z2
        f.__name__ = f"{label}_m{k}".replace(":", "_")
        return numba.njit(f)

    return {n: power(k) for n, k in zip(moment_names(label), ORDERS)}


def variance_series(result: Any, optimizer: str | int = 0, observable: str = "x0"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s², sem of s², count) per recorded step of the variance of ``observable`` over the
    paths of ``optimizer``, from the moments recorded by :func:`moment_observables`.

    s² is the unbiased sample variance of the n counted paths (the engine's Welford M2 of
    z, divisor n − 1); its standard error is sqrt((μ₄ − s⁴(n − 3)/(n − 1))/n) with
    μ₄ = m₄ − 4m₁m₃ + 6m₁²m₂ − 3m₁⁴ the fourth central moment (m_k the mean of z^k; delta
    method, normal for large n); 0 where every path had the same value.  NaN where fewer
    than 4 paths are counted.  ``ValueError`` if the run did not record the moments.
    """
    names = moment_names(observable)
    missing = [n for n in names if n not in result.observables]
    if missing:
        raise ValueError(f"the result has no moments of {observable!r} (observables "
                         f"{missing} missing): run it with observables="
                         f"moment_observables({observable!r}, ...)")
    cols = [index_pair(result.optimizers, result.observables, optimizer, n) for n in names]
    j = cols[0][0]
    m1, m2, m3, m4 = (result.mean[j, :, o] for _, o in cols)
    counts = np.stack([result.count[j, :, o] for _, o in cols])
    n = counts.min(axis=0)
    if np.any(counts.max(axis=0) != n):
        raise ValueError(f"the moments of {observable!r} were counted over different paths "
                         "(a non-finite power on some path): no consistent variance")
    s2 = result.var[j, :, cols[0][1]]          # Welford's, of z itself: NaN below 2 paths
    with np.errstate(invalid="ignore", divide="ignore"):
        mu4 = m4 - 4.0 * m1 * m3 + 6.0 * m1 * m1 * m2 - 3.0 * m1 ** 4
        v = (mu4 - s2 * s2 * (n - 3) / np.maximum(n - 1, 1)) / n
        sem = np.where(n > 3, np.sqrt(np.maximum(v, 0.0)), np.nan)
    return s2, np.where(s2 == 0.0, 0.0, sem), n               # every path equal: exact
