"""A validated, backend-independent description of one simulation call.

Besides validating every argument, :func:`make_spec` fixes the divergence bound (see
:func:`sdeverify.simulate`), refuses path ranges beyond the generator's 2**48 paths and runs
whose arrays would not fit in the machine's memory (with the estimate in the message), and
:meth:`RunSpec.fingerprint` names everything that defines the simulation, so that
:meth:`~sdeverify.result.SimulationResult.merge` refuses shards of different simulations.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from .. import config
from ..observables import parse
from ..optim import check_scheme, scheme_coefficients
from ..problems.base import NGOS
from ..rng import MAX_PATH, key_words
from ..validation import dtype as valid_dtype
from ..validation import finite_float, nonneg_int, positive_int, vector
from ..validation import seed as valid_seed
from .cache import fingerprint as function_fingerprint
from .output import EngineOutput


@dataclass
class RunSpec:
    problem: NGOS
    names: list
    x0: np.ndarray
    m0: np.ndarray          # (n_opt, d)
    a: np.ndarray           # (n_opt, steps) momentum coefficient a_k
    b: np.ndarray           # (n_opt, steps) gradient coefficient b_k
    gamma: np.ndarray       # (n_opt, steps) step size γ_k
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
    bound: float = np.inf   # a path diverges once some |x_i| > bound (clamped to the dtype's max)

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

    def allocate(self) -> EngineOutput:
        """The engine's output arrays for this spec (:meth:`EngineOutput.allocate`)."""
        return EngineOutput.allocate(self)

    def fingerprint(self, numerics: str) -> dict:
        """Everything that defines the simulation's numbers, one entry per field (short
        values as text, arrays and functions as content hashes); shards merge only when all
        fields agree (``paths`` and ``path_offset`` excepted).  ``numerics`` is the label of
        the backend's arithmetic (:attr:`sdeverify.engine.Backend.numerics`), given by the
        caller that chose the backend (the registry's package imports this module)."""
        from ..version import __version__
        p = self.problem
        fused = tuple(f for f in (getattr(p, "oracle", None), getattr(p, "oracle_lanes", None),
                                  getattr(p, "oracle_pair_lanes", None))
                      if f is not None)                # absent: the fingerprint as before
        funcs = ",".join(function_fingerprint(f) for f in (p.grad, p.noise, p.loss) + fused)
        return {
            "problem": f"{type(p).__name__} {p.name!r} d={p.dim} draws={p.n_draws} "
                       f"{p.noise_dist} ell={p.svag_ell!r} params={_digest(p.params)} "
                       f"functions={_digest(funcs.encode())}",
            "optimizers": f"{list(self.names)} coefficients="
                          f"{_digest(self.a, self.b, self.gamma, self.m0)}",
            "x0": f"{_digest(self.x0)}",
            "sigma": repr(float(self.sigma)),
            "steps": str(self.steps),
            "record": _digest(self.record),
            "observables": f"{list(self.obs_names)} "
                           f"{_digest(','.join(function_fingerprint(f) for f in self.user_funcs).encode())}",
            "dtype": self.dtype,
            "seed": str(self.seed),
            "divergence_bound": repr(float(self.bound)),
            "engine": numerics,
            "version": f"sdeverify {__version__}",
        }


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, bytes):
            h.update(a)
        else:
            a = np.ascontiguousarray(a)
            h.update(repr((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux, else physical)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2 ** 62


def memory_estimate(*, n_opt: int, steps: int, paths: int, dim: int, n_rec: int, n_obs: int,
                    store_states: bool, itemsize: int = 8) -> int:
    """Bytes :func:`simulate` allocates for these sizes (coefficients, per-block statistics,
    final states, stored states; the CUDA engine's per-path values are counted too)."""
    n_blocks = -(-paths // config.BLOCK)
    coef = 4 * n_opt * steps * 8                                   # a, b, γ, and one temporary
    blocks = n_blocks * n_opt * n_rec * n_obs * (3 + 3 + 2) * 8
    finals = n_opt * paths * (2 * dim * itemsize + 8)
    states = n_opt * n_rec * paths * dim * 8 if store_states else 0
    return coef + blocks + finals + states + n_opt * n_rec * n_obs * paths * 8


def _check_memory(need: int, what: str) -> None:
    have = available_memory()
    if need > have:
        raise ValueError(f"{what} needs about {need / 2**30:.3g} GiB of memory but only "
                         f"{have / 2**30:.3g} GiB are available: use fewer paths (run shards "
                         f"with path_offset), fewer recorded steps or store_states=False")


def make_spec(problem, optimizers, x0, *, steps, paths, sigma, seed=0, record=None,
              observables=None, store_states=False, path_offset=0, dtype="float64",
              divergence_bound=None) -> RunSpec:
    """Validate every argument of :func:`sdeverify.simulate` and build a :class:`RunSpec`."""
    if not isinstance(problem, NGOS):
        raise ValueError(f"problem must be an NGOS problem (sdeverify.problems), got {problem!r}")
    steps = positive_int("steps", steps)
    paths = positive_int("paths", paths)
    path_offset = nonneg_int("path_offset", path_offset)
    if path_offset % config.BLOCK:
        raise ValueError(f"path_offset must be a multiple of the block size {config.BLOCK} "
                         f"so that shards merge exactly, got {path_offset}")
    if path_offset + paths > MAX_PATH:
        raise ValueError(f"path_offset + paths must be <= 2**48 = {MAX_PATH} (the generator's "
                         f"path range), got {path_offset} + {paths}")
    seed = valid_seed(seed)
    dtype = valid_dtype(dtype)
    sigma = finite_float("sigma", sigma, low=0.0)
    x0 = vector("x0", x0, problem.dim)
    bound = default_bound(x0) if divergence_bound is None else \
        finite_float("divergence_bound", divergence_bound, low=0.0, low_open=True, allow_inf=True)
    if bound <= float(np.max(np.abs(x0))):
        raise ValueError(f"divergence_bound must exceed max_i |x0_i| = {np.max(np.abs(x0)):g} "
                         f"(the start would count as diverged), got {bound:g}")
    bound = min(bound, float(np.finfo(dtype).max))
    if not isinstance(optimizers, (list, tuple)):
        optimizers = [optimizers]
    if not optimizers:
        raise ValueError("optimizers must hold at least one optimizer")
    if record is not None:
        record = np.asarray(record)
        if record.dtype.kind not in "iu" and not (record.dtype.kind == "f" and record.size and
                                                  np.all(record == np.round(record))):
            raise ValueError(f"record must hold integer step indices in [0, steps={steps}]")
        if record.size == 0 or record.min() < 0 or record.max() > steps:
            raise ValueError(f"record must hold step indices in [0, steps={steps}]")
    n_rec = (config.DEFAULT_RECORDS + 1) if record is None else min(record.size, steps + 1)
    n_obs = 2 if observables is None else max(len(observables), 1)
    itemsize = np.dtype(dtype).itemsize
    _check_memory(memory_estimate(n_opt=len(optimizers), steps=steps, paths=paths,
                                  dim=problem.dim, n_rec=n_rec, n_obs=n_obs,
                                  store_states=bool(store_states), itemsize=itemsize),
                  f"simulate(paths={paths}, steps={steps}, {len(optimizers)} optimizers, "
                  f"{n_rec} recorded steps, {n_obs} observables"
                  f"{', store_states=True' if store_states else ''})")
    names, coefs = [], []
    for opt in optimizers:
        name = check_scheme(opt)
        base, i = name, 2
        while name in names:
            name, i = f"{base}#{i}", i + 1
        names.append(name)
        coefs.append(scheme_coefficients(opt, steps, problem.dim, f"optimizer {name!r}"))
    if record is None:
        record = np.unique(np.linspace(0, steps, config.DEFAULT_RECORDS + 1).round().astype(np.int64))
    else:
        record = np.unique(record.astype(np.int64).ravel())
    obs_names, codes, funcs = parse(observables, problem.dim)
    stack = lambda attr: np.ascontiguousarray(np.stack([getattr(c, attr) for c in coefs]))
    return RunSpec(problem, names, x0, stack("m0"), stack("a"), stack("b"), stack("gamma"),
                   sigma, steps, paths, path_offset, seed, record, obs_names, codes, funcs,
                   bool(store_states), dtype, bound)


def default_bound(x0: np.ndarray) -> float:
    """The default divergence bound ``config.DIVERGENCE_FACTOR · max(1, max_i |x0_i|)``."""
    return float(config.DIVERGENCE_FACTOR) * max(1.0, float(np.max(np.abs(x0))))
