"""Hypothesis strategies for valid problems, optimizers and run sizes.

Every value drawn is valid input for :func:`sdeverify.simulate` (PSD Hessians and noise
covariances, β in [0, 1), paths a multiple of the block size), so a property test spends its
examples on the claim, not on argument errors.  Random matrices are built from a drawn
integer seed, so Hypothesis shrinks them to small seeds and replays them exactly.

Compile cost: the engine compiles one kernel per problem *type* (e.g. every
:class:`~sdeverify.problems.Quadratic`, whatever its dimension or matrices, shares one), so
examples of one strategy reuse a kernel after the first.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

try:
    from hypothesis import strategies as st
except ImportError as exc:        # pragma: no cover - exercised by the missing-extra test
    raise ImportError("sdeverify.testing strategies need Hypothesis: "
                      "pip install 'sdeverify[test]' (or pip install hypothesis)") from exc

from .. import config
from ..optim import SGD, SGDM, HeavyBall
from ..problems import CosineWell, Quadratic

__all__ = ["psd_matrices", "quadratics", "cosine_wells", "problems", "optimizers", "run_sizes"]

_SEEDS = st.integers(0, 2 ** 32 - 1)


def _range(name: str, r: tuple[float, float], low: float = 0.0) -> tuple[float, float]:
    a, b = float(r[0]), float(r[1])
    if not (low <= a <= b and np.isfinite(b)):
        raise ValueError(f"{name} must be a range (low, high) with {low} <= low <= high < inf, got {r}")
    return a, b


@st.composite
def psd_matrices(draw, dim: int, eigenvalues: tuple[float, float] = (0.1, 4.0)) -> np.ndarray:
    """Symmetric positive semi-definite ``dim × dim`` matrices Q diag(λ) Qᵀ with eigenvalues
    λ drawn in ``eigenvalues`` and Q a random rotation."""
    lo, hi = _range("eigenvalues", eigenvalues)
    lam = np.array(draw(st.lists(st.floats(lo, hi), min_size=dim, max_size=dim)))
    g = np.random.default_rng(draw(_SEEDS))
    q, r = np.linalg.qr(g.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))
    m = (q * lam) @ q.T
    return 0.5 * (m + m.T)


@st.composite
def quadratics(draw, dims: st.SearchStrategy[int] = st.integers(1, 4),
               hessian_eigenvalues: tuple[float, float] = (0.1, 4.0),
               noise_eigenvalues: tuple[float, float] = (0.1, 2.0),
               noise_dists: Sequence[str] = ("normal", "rademacher")) -> Quadratic:
    """:class:`~sdeverify.problems.Quadratic` problems with random PSD Hessian, noise
    covariance and minimiser (exact moments: :func:`sdeverify.theory.quadratic_moments`)."""
    d = draw(dims)
    H = draw(psd_matrices(d, hessian_eigenvalues))
    S = draw(psd_matrices(d, noise_eigenvalues))
    c = np.array(draw(st.lists(st.floats(-2.0, 2.0), min_size=d, max_size=d)))
    return Quadratic(H, noise_cov=S, center=c, noise_dist=draw(st.sampled_from(list(noise_dists))))


@st.composite
def cosine_wells(draw, dims: st.SearchStrategy[int] = st.integers(1, 4),
                 amplitudes: tuple[float, float] = (0.5, 3.0)) -> CosineWell:
    """Non-convex :class:`~sdeverify.problems.CosineWell` problems."""
    lo, hi = _range("amplitudes", amplitudes)
    return CosineWell(draw(dims), draw(st.floats(lo, hi)))


def problems(*custom) -> st.SearchStrategy:
    """Any of :func:`quadratics`, :func:`cosine_wells` and the user's own ``NGOS`` problems
    (or strategies of them) passed as ``custom``."""
    parts = [quadratics(), cosine_wells()]
    for c in custom:
        parts.append(c if isinstance(c, st.SearchStrategy) else st.just(c))
    return st.one_of(*parts)


@st.composite
def optimizers(draw, kinds: Sequence[str] = ("SGD", "SGDM", "HeavyBall"),
               lr: tuple[float, float] = (1e-3, 0.2), beta: tuple[float, float] = (0.0, 0.99),
               steps: int | None = None):
    """An ``SGD``, ``SGDM`` (EMA form) or ``HeavyBall`` (torch semantics, random dampening).

    ``lr`` and ``beta`` are ranges; with ``steps`` given, lr and β are per-step schedules
    (a random piecewise-constant schedule of length ``steps``; heavy ball's momentum stays
    > 0), which exercises how the optimizers use β_{k+1} and η_k (Def. 4.1)."""
    lo, hi = _range("lr", lr)
    blo, bhi = _range("beta", beta)
    if bhi >= 1.0:
        raise ValueError(f"beta must lie in [0, 1), got the range {beta}")
    kind = draw(st.sampled_from(list(kinds)))
    if kind not in ("SGD", "SGDM", "HeavyBall"):
        raise ValueError(f"kinds must be among SGD, SGDM, HeavyBall, got {kind!r}")

    def sched(a: float, b: float):
        if steps is None:
            return draw(st.floats(a, b))
        cuts = sorted(draw(st.lists(st.integers(1, max(steps - 1, 1)), max_size=3, unique=True)))
        vals = draw(st.lists(st.floats(a, b), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
        out = np.empty(steps)
        for v, s0, s1 in zip(vals, [0] + cuts, cuts + [steps]):
            out[s0:s1] = v
        return out

    if kind == "SGD":
        return SGD(sched(lo, hi))
    if kind == "SGDM":
        return SGDM(sched(lo, hi), sched(blo, bhi))
    return HeavyBall(sched(lo, hi), sched(max(blo, 0.01), bhi), draw(st.floats(0.0, 0.9)))


@st.composite
def run_sizes(draw, steps: tuple[int, int] = (1, 200), paths: tuple[int, int] = (1024, 8192)) -> dict:
    """``dict(steps=..., paths=...)`` with paths a multiple of the block size
    (``config.BLOCK``, so the same draws shard and merge exactly)."""
    s0, s1 = int(steps[0]), int(steps[1])
    p0, p1 = -(-int(paths[0]) // config.BLOCK), int(paths[1]) // config.BLOCK
    if not (1 <= s0 <= s1 and 1 <= p0 <= p1):
        raise ValueError(f"need 1 <= steps[0] <= steps[1] and a multiple of {config.BLOCK} "
                         f"within paths, got steps={steps}, paths={paths}")
    return {"steps": draw(st.integers(s0, s1)), "paths": config.BLOCK * draw(st.integers(p0, p1))}
