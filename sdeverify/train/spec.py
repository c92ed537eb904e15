"""``TrainSpec``: one :func:`sdeverify.train.fit` call, validated once and passed down.

Every argument of ``fit`` is checked here, at the API boundary, with a message naming the
parameter and its allowed range; the rest of the trainer uses only the validated values.  The
optimizers are :class:`sdeverify.optim.OptimizerScheme` objects — exactly what
:func:`sdeverify.simulate` accepts — and the trainer sees them only through their per-step
coefficients (a_k, b_k, γ_k) and initial buffer m₀, never through their field names: an lr
schedule multiplies γ_k, SVAG (Def. 6.1) replaces each step by ℓ steps of γ_k/ℓ
(:func:`svag_coefficients`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..optim import Coefficients, check_scheme, scheme_coefficients
from .. import validation
from ..validation import nonneg_int, positive_int
from . import backends
from .batches import SAMPLING
from .datasets import Dataset
from .result import METRICS, TrainResult

__all__ = ["TrainSpec", "svag_coefficients", "DEFAULT_METRICS", "NOISE_CHUNKS"]

DEFAULT_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")
#: chunks of the evaluation rows behind the gradient-noise estimate (``grad_sqnorm``, ``noise_trace``)
NOISE_CHUNKS = 8


def svag_coefficients(c: Coefficients, ell: int, multiplier: np.ndarray | None = None) -> Coefficients:
    """The coefficients of a run under an lr multiplier and SVAG's schedule (Def. 6.1).

    Step k's update (a_k, b_k, γ_k) becomes ℓ consecutive updates (a_k, b_k, γ_k·μ_k/ℓ), μ_k the
    ``multiplier`` (1 if None): the run is ℓ× longer at lr η_k/ℓ with the same per-step momentum.
    For ``SGD``/``SGDM`` this is SVAG of Def. 6.1 exactly.  (A ``HeavyBall`` with dampening
    τ > 0 on an empty buffer has b₀ = 1 ≠ 1 − τ; its first ℓ sub-steps then all carry b₀.)"""
    gamma = c.gamma if multiplier is None else c.gamma * multiplier
    gamma = gamma / ell
    return Coefficients(np.repeat(c.a, ell), np.repeat(c.b, ell), np.repeat(gamma, ell), c.m0)


def _scheme_label(opt: Any) -> str:
    """What identifies a scheme in a run's fingerprint besides its coefficients: its repr,
    unless that is the default ``<... at 0x...>`` one (which differs between processes)."""
    if type(opt).__repr__ is object.__repr__:
        return f"{type(opt).__module__}.{type(opt).__qualname__}(name={getattr(opt, 'name', None)!r})"
    return repr(opt)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for x in arrays:
        h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _steps_list(name: str, value: ArrayLike, steps: int) -> np.ndarray:
    e = np.asarray(value)
    if e.dtype.kind not in "iu" and not (e.dtype.kind == "f" and np.all(np.isfinite(e))
                                          and np.all(e == np.round(e))):
        raise ValueError(f"{name} must be integer step indices in [0, {steps}], got {value!r}")
    e = np.unique(e.astype(np.int64).ravel())
    if e.size == 0 or e[0] < 0 or e[-1] > steps:
        raise ValueError(f"{name} must be step indices in [0, {steps}], got {value!r}")
    return e


def eval_steps_of(steps: int, eval_every: int | None, eval_steps: ArrayLike | None) -> np.ndarray:
    """The evaluation steps: ``eval_steps`` as given, every ``eval_every`` steps (end included),
    or 11 evenly spaced (start and end included)."""
    if eval_steps is not None:
        return _steps_list("eval_steps", eval_steps, steps)
    if eval_every is not None:
        every = positive_int("eval_every", eval_every)
        return np.unique(np.append(np.arange(0, steps + 1, every), steps))
    return np.unique(np.linspace(0, steps, 11).round().astype(np.int64))


def check_model(model: Any, data: Dataset) -> None:
    """``ValueError`` unless ``model`` is a network description ``fit`` can train on ``data``."""
    need = ("n_params", "n_classes", "init", "describe")
    missing = [a for a in need if not hasattr(model, a)]
    if missing:
        raise ValueError(f"model must be a network description such as sdeverify.train.MLP "
                         f"(with {', '.join(need)}), got {type(model).__name__} lacking "
                         f"{', '.join(missing)}")
    if hasattr(model, "check_data"):
        model.check_data(data)
    if model.n_classes < data.n_classes:
        raise ValueError(f"model has {model.n_classes} outputs but the data has "
                         f"{data.n_classes} classes")


@dataclass(frozen=True)
class TrainSpec:
    """A validated :func:`sdeverify.train.fit` call (build it with :meth:`build`).

    ``steps`` is the length of this call's run in un-SVAG'd steps, starting at global step
    ``start_step`` (0 unless the run continues another); ``eval_steps`` and ``record_steps``
    are relative to the start, in ``[0, steps]``.  ``init_weights`` / ``init_momentum`` are
    ``(n_opt, replicas, P)`` or None (fresh weights from the model's ``init``, the schemes' m₀).
    """
    model: Any
    data: Dataset
    optimizers: tuple
    names: tuple
    batch_size: int
    steps: int
    replicas: int
    seed: int
    svag: int
    sampling: str
    metrics: tuple
    eval_samples: int
    sharpness_samples: int
    sharpness_iters: int
    backend: str
    dtype: str
    replica_offset: int
    on_divergence: str
    eval_steps: np.ndarray
    lr_multiplier: np.ndarray | None = None
    start_step: int = 0
    init_weights: np.ndarray | None = None
    init_momentum: np.ndarray | None = None
    record_steps: np.ndarray | None = None
    keep_weights: bool = False
    augment: bool = False
    init_buffers: np.ndarray | None = None

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def build(cls, model: Any, data: Dataset, optimizers: Sequence[Any] | Any, *,
              batch_size: int, steps: int | None = None, epochs: int | None = None,
              replicas: int = 1, seed: int = 0,
              lr_schedule: np.ndarray | Callable[[int], np.ndarray] | None = None,
              svag: int = 1, sampling: str = "shuffle", eval_every: int | None = None,
              eval_steps: ArrayLike | None = None, metrics: Sequence[str] = DEFAULT_METRICS,
              eval_samples: int = 2048, sharpness_samples: int = 1024,
              sharpness_iters: int = 20, backend: str = "cpu", dtype: str = "float64",
              replica_offset: int = 0, on_divergence: str = "warn",
              keep_weights: bool = False, record_weights: ArrayLike | None = None,
              init_weights: ArrayLike | None = None, init_momentum: ArrayLike | None = None,
              start_step: int = 0, resume: TrainResult | None = None,
              augment: bool = False, init_buffers: ArrayLike | None = None) -> "TrainSpec":
        """Validate ``fit``'s arguments (see :func:`sdeverify.train.fit`)."""
        if not isinstance(data, Dataset):
            raise ValueError(f"data must be an sdeverify.train.Dataset (teacher_student(), digits(), "
                             f"from_arrays(X, y), cifar10(folder)), got {type(data).__name__}")
        check_model(model, data)
        opts = tuple(optimizers) if isinstance(optimizers, (list, tuple)) else (optimizers,)
        if not opts:
            raise ValueError("optimizers must hold at least one optimizer scheme "
                             "(SGD, SGDM, HeavyBall or an object with coefficients(steps, dim))")
        names = tuple(check_scheme(o, f"optimizers[{i}]") for i, o in enumerate(opts))
        if len(set(names)) != len(names):
            raise ValueError(f"optimizer names must be unique (pass name=...), got {list(names)}")
        B = positive_int("batch_size", batch_size)
        if B > data.n_train:
            raise ValueError(f"batch_size must be <= the training set size {data.n_train}, got {B}")
        if (steps is None) == (epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        ell = positive_int("svag", svag)
        K = positive_int("steps", steps) if steps is not None \
            else positive_int("epochs", epochs) * (data.n_train // B)
        R = positive_int("replicas", replicas)
        seed = validation.seed(seed)
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        if ell > 1 and 2 * B > data.n_train:
            raise ValueError(f"svag > 1 draws two minibatches per step: 2*batch_size={2 * B} "
                             f"exceeds the training set ({data.n_train})")
        metrics = tuple(metrics) if not isinstance(metrics, str) else (metrics,)
        bad = [m for m in metrics if m not in METRICS]
        if bad or not metrics or len(set(metrics)) != len(metrics):
            raise ValueError(f"metrics must be distinct names from {METRICS}, got {list(metrics)}")
        n_e = positive_int("eval_samples", eval_samples)
        if ("grad_sqnorm" in metrics or "noise_trace" in metrics) \
                and min(n_e, data.n_train) < NOISE_CHUNKS:
            raise ValueError(f"eval_samples must be >= {NOISE_CHUNKS} for the gradient-noise metrics")
        n_sharp = positive_int("sharpness_samples", sharpness_samples)
        iters = positive_int("sharpness_iters", sharpness_iters)
        backends.get(backend).trainer_for(model)      # ValueError naming what is registered
        dtype = validation.dtype(dtype)
        off = nonneg_int("replica_offset", replica_offset)
        if off + R > 2 ** 32:
            raise ValueError(f"replica_offset + replicas must be <= 2**32, got {off + R}")
        on_divergence = validation.on_divergence(on_divergence)
        validation.flag("keep_weights", keep_weights)
        J, P = len(opts), int(model.n_params)
        k0 = nonneg_int("start_step", start_step)
        if resume is not None:
            if init_weights is not None or init_momentum is not None or k0:
                raise ValueError("give resume= or init_weights/init_momentum/start_step, not both")
            if init_buffers is not None:
                raise ValueError("give resume= or init_buffers, not both")
            init_weights, init_momentum, k0 = _resume_state(resume, model, data, names, R, off,
                                                            seed, B, sampling, ell, dtype)
            init_buffers = resume.buffers
        W0 = None if init_weights is None else _state("init_weights", init_weights, J, R, P, True)
        M0 = None if init_momentum is None else _state("init_momentum", init_momentum, J, R, P, False)
        n_buf = int(getattr(model, "n_buffers", 0))
        if init_buffers is not None and not n_buf:
            raise ValueError(f"init_buffers: {model.describe()} has no state besides its weights")
        B0 = None if init_buffers is None else _state("init_buffers", init_buffers, J, R, n_buf, False)
        validation.flag("augment", augment)
        if augment and data.X_train.ndim != 4:
            raise ValueError(f"augment=True crops and flips images: the data must be "
                             f"(n, C, H, W) images, got X_train of shape {data.X_train.shape}")
        mult = None
        if lr_schedule is not None:
            mult = lr_schedule(k0 + K) if callable(lr_schedule) else lr_schedule
            mult = np.asarray(mult, dtype=np.float64)
            if mult.shape != (k0 + K,) or not np.all(np.isfinite(mult)) or np.any(mult < 0):
                raise ValueError(f"lr_schedule must give {k0 + K} finite non-negative multipliers "
                                 f"(start_step + steps), got shape {mult.shape}")
            mult = mult[k0:]
        ev = eval_steps_of(K, eval_every, eval_steps)
        rec = None if record_weights is None else _steps_list("record_weights", record_weights, K)
        return cls(model, data, opts, names, B, K, R, seed, ell, sampling, metrics, n_e, n_sharp,
                   iters, backend, dtype, off, on_divergence, ev, mult, k0, W0, M0, rec,
                   bool(keep_weights), bool(augment), B0)

    # ---- what the run follows ------------------------------------------------------------
    def coefficients(self) -> list[Coefficients]:
        """Per optimizer, the coefficients of this run's ``steps·svag`` steps: the scheme's
        coefficients for steps ``start_step … start_step + steps − 1`` of its schedule, under the
        lr multiplier and SVAG (:func:`svag_coefficients`); m₀ the scheme's initial buffer."""
        P, k0, K = int(self.model.n_params), self.start_step, self.steps
        out = []
        for opt, name in zip(self.optimizers, self.names):
            c = scheme_coefficients(opt, k0 + K, P, who=name)
            c = Coefficients(c.a[k0:], c.b[k0:], c.gamma[k0:], c.m0)
            out.append(svag_coefficients(c, self.svag, self.lr_multiplier))
        return out

    def describe(self, coefs: Sequence[Coefficients] | None = None) -> dict:
        """Everything that determines the numbers, JSON-able (the fingerprint's input): the
        per-step coefficients exactly (not only the schemes' reprs) and the evaluation steps."""
        coefs = self.coefficients() if coefs is None else coefs
        d = dict(model=self.model.describe(), data=self.data.name,
                 data_fingerprint=self.data.fingerprint(),
                 optimizers=[_scheme_label(o) for o in self.optimizers], batch_size=self.batch_size,
                 steps=self.steps, seed=self.seed, svag=self.svag, sampling=self.sampling,
                 metrics=list(self.metrics), eval_samples=self.eval_samples,
                 sharpness=[self.sharpness_samples, self.sharpness_iters], backend=self.backend,
                 dtype=self.dtype,
                 coefficients=_digest(*[c.a for c in coefs], *[c.b for c in coefs],
                                      *[c.gamma for c in coefs], *[c.m0 for c in coefs]),
                 lr_schedule=None if self.lr_multiplier is None else _digest(self.lr_multiplier),
                 eval_steps=self.eval_steps.tolist())
        if self.augment:
            d.update(augment=True)
        starts = [x for x in (self.init_weights, self.init_momentum, self.init_buffers)
                  if x is not None]
        if self.start_step or starts:
            d.update(start_step=self.start_step, init_state=_digest(*starts))
        return d

    @staticmethod
    def fingerprint_of(description: dict) -> str:
        """SHA-256 (16 hex digits) of a description: replica shards merge only when it agrees
        (:meth:`sdeverify.train.TrainResult.merge`)."""
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def replica_indices(self) -> np.ndarray:
        """The global replica indices ``replica_offset + r`` (keys of weights and batches)."""
        return np.arange(self.replicas, dtype=np.int64) + self.replica_offset


def _state(name: str, value: ArrayLike, J: int, R: int, P: int, allow_shared: bool) -> np.ndarray:
    """A starting state as ``(J, R, P)`` float64: given per optimizer and replica, or (weights
    only) per replica ``(R, P)`` or one vector ``(P,)`` shared by every optimizer/replica."""
    a = np.asarray(value, dtype=np.float64) if not isinstance(value, str) else None
    shapes = [(J, R, P)] + ([(R, P), (P,)] if allow_shared else [])
    if a is None or a.shape not in shapes:
        got = "a string" if a is None else f"shape {a.shape}"
        raise ValueError(f"{name} must have shape {' or '.join(map(str, shapes))} "
                         f"(optimizers, replicas, parameters), got {got}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return np.ascontiguousarray(np.broadcast_to(a, (J, R, P)))


def _resume_state(res: Any, model, data, names, R, off, seed, B, sampling, ell, dtype):
    """(weights, momentum, start step) of a finished run ``res`` that this call continues;
    ``ValueError`` naming what differs when it is not the same run."""
    if not isinstance(res, TrainResult):
        raise ValueError(f"resume must be a TrainResult, got {type(res).__name__}")
    if res.weights is None or res.momentum is None:
        raise ValueError("resume needs the final weights and momentum: run the first part "
                         "with keep_weights=True")
    spec = res.meta.get("spec", {})
    want = dict(model=model.describe(), data_fingerprint=data.fingerprint(), batch_size=B,
                seed=seed, sampling=sampling, svag=ell, dtype=dtype)
    differ = [k for k, v in want.items() if spec.get(k) != v]
    if tuple(res.optimizers) != tuple(names):
        differ.append("optimizers")
    if res.replicas != R or res.meta.get("replica_offset") != off:
        differ.append("replicas")
    if differ:
        raise ValueError(f"resume: this call differs from the run it continues in: "
                         f"{', '.join(differ)}")
    start = int(res.meta.get("start_step", 0)) + int(spec["steps"])
    return res.weights, res.momentum, start
