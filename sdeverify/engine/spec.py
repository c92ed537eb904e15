"""A validated, backend-independent description of one simulation call."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import config
from ..observables import parse
from ..problems.base import NGOS
from ..rng import key_words
from ..validation import finite_float, nonneg_int, positive_int, vector


@dataclass
class RunSpec:
    problem: NGOS
    names: list
    x0: np.ndarray
    m0: np.ndarray          # (n_opt, d)
    A: np.ndarray           # (n_opt, steps) momentum coefficient a_k
    B: np.ndarray           # (n_opt, steps) gradient coefficient b_k
    G: np.ndarray           # (n_opt, steps) step size γ_k
    sigma: float
    steps: int
    paths: int
    path_offset: int
    seed: int
    record: np.ndarray      # sorted recorded step indices in [0, steps]
    obs_names: list
    codes: np.ndarray
    user_funcs: tuple
    store_states: bool
    dtype: str = "float64"  # "float64" or "float32": state and draw precision (CPU engine)

    @property
    def k0(self):
        return key_words(self.seed)[0]

    @property
    def k1(self):
        return key_words(self.seed)[1]

    @property
    def r1(self) -> float:
        return self.problem.svag_coefficients[0]

    @property
    def r2(self) -> float:
        return self.problem.svag_coefficients[1]

    @property
    def n_calls(self) -> int:
        return 1 if self.problem.svag_ell == 1.0 else 2

    @property
    def n_blocks(self) -> int:
        return (self.paths + config.BLOCK - 1) // config.BLOCK

    def allocate(self) -> dict:
        n_opt, d, n_rec = self.A.shape[0], self.x0.shape[0], self.record.shape[0]
        states = (np.full((n_opt, n_rec, self.paths, d), np.nan) if self.store_states
                  else np.zeros((0, 0, 0, 0)))
        return {
            "block_stats": np.zeros((self.n_blocks, n_opt, n_rec, self.codes.shape[0], 3)),
            # statistics of h(x_j) − h(x_0) per path (paired with optimizer 0, CRN)
            "block_diff": np.zeros((self.n_blocks, n_opt, n_rec, self.codes.shape[0], 3)),
            "x_final": np.empty((n_opt, self.paths, d), dtype=self.dtype),
            "m_final": np.empty((n_opt, self.paths, d), dtype=self.dtype),
            "div_step": np.empty((n_opt, self.paths), dtype=np.int64),
            "states": states,
        }


def make_spec(problem, optimizers, x0, *, steps, paths, sigma, seed=0, record=None,
              observables=None, store_states=False, path_offset=0, dtype="float64") -> RunSpec:
    """Validate every argument of :func:`sdeverify.simulate` and build a :class:`RunSpec`."""
    if not isinstance(problem, NGOS):
        raise ValueError(f"problem must be an NGOS problem (sdeverify.problems), got {problem!r}")
    steps = positive_int("steps", steps)
    paths = positive_int("paths", paths)
    path_offset = nonneg_int("path_offset", path_offset)
    if path_offset % config.BLOCK:
        raise ValueError(f"path_offset must be a multiple of the block size {config.BLOCK} "
                         f"so that shards merge exactly, got {path_offset}")
    seed = nonneg_int("seed", seed)
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    if seed >= 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    sigma = finite_float("sigma", sigma, low=0.0)
    x0 = vector("x0", x0, problem.dim)
    if not isinstance(optimizers, (list, tuple)):
        optimizers = [optimizers]
    if not optimizers:
        raise ValueError("optimizers must hold at least one optimizer")
    names, coefs = [], []
    for opt in optimizers:
        if not hasattr(opt, "coefficients"):
            raise ValueError(f"optimizers must be SGD, SGDM or HeavyBall instances, got {opt!r}")
        name = getattr(opt, "name", type(opt).__name__)
        base, i = name, 2
        while name in names:
            name, i = f"{base}#{i}", i + 1
        names.append(name)
        coefs.append(opt.coefficients(steps, problem.dim))
    if record is None:
        record = np.unique(np.linspace(0, steps, config.DEFAULT_RECORDS + 1).round().astype(np.int64))
    else:
        record = np.unique(np.asarray(record, dtype=np.int64).ravel())
        if record.size == 0 or record[0] < 0 or record[-1] > steps:
            raise ValueError(f"record must hold step indices in [0, steps={steps}]")
    obs_names, codes, funcs = parse(observables, problem.dim)
    stack = lambda attr: np.ascontiguousarray(np.stack([getattr(c, attr) for c in coefs]))
    return RunSpec(problem, names, x0, stack("m0"), stack("a"), stack("b"), stack("gamma"),
                   sigma, steps, paths, path_offset, seed, record, obs_names, codes, funcs,
                   bool(store_states), dtype)
