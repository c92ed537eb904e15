"""The trainer's backends: a registry, and the contract every backend's ``Trainer`` meets.

:func:`sdeverify.train.fit` picks its backend by name from this registry (``backend="cpu"``),
and the command line offers exactly the registered names, so a new backend is one module plus
one :func:`register` call (docs/extending.md, "A trainer backend").  The engine's backends
(:mod:`sdeverify.engine`) follow the same pattern.

The contract (:class:`TrainerBackend`), for ``M = n_opt × n_rep`` models stacked as model
``j·n_rep + r`` = optimizer ``j``, replica ``r``, each a flat parameter vector of length P:

* ``Trainer(model, X, y, n_opt, n_rep, dtype)`` — holds the training set ``(X, y)``;
* ``set_state(W, Mom)`` / ``get_state() -> (W, Mom)`` — weights and momentum buffers, ``(M, P)``
  arrays (``get_state`` returns copies, in the trainer's dtype);
* ``train(idx, a, b, gamma, r) -> losses`` — ``S`` steps.  ``idx`` is a list of one (plain) or two
  (SVAG) int64 arrays of shape ``(S, n_rep, B)``: the rows of each step's minibatches per replica
  (every optimizer of a replica sees the same rows); ``a, b, gamma`` are ``(n_opt, S)``
  coefficients; ``r`` the weights of the minibatches (``[1]`` or SVAG's ``(r₁, r₂)``).  Each step
  computes g = Σ_s r_s ∇L(w; B_s) + λ w (λ the model's weight decay), then
  m ← a m + b g, w ← w − γ m (:mod:`sdeverify.optim`).  Returns the mean loss of the first
  minibatch *before* each step, ``(S, M)``;
* ``evaluate(X, y) -> (loss_sum, correct)`` — summed data loss and number of correct predictions
  per model at the current weights, ``(M,)`` each;
* ``gradients(W, X, y) -> G`` — ∇ of the mean data loss + λ w at the given weights ``(M', P)`` on
  ``(X, y)``, ``(M', P)``.

A model with state besides its weights (BatchNorm's running statistics, ``n_buffers`` per
model) has trainers whose ``set_state(W, Mom, buffers=None)`` takes it too and whose
``get_state()`` returns ``(W, Mom, buffers)``; trainers of image models take
``train(..., aug=...)``: per minibatch slot, the crop offsets and flips
``(dy, dx, flip)`` of :func:`sdeverify.train.augment.draw` for its rows.

``tests/test_train_contract.py`` runs every registered backend through the same checks against
the NumPy reference (:mod:`sdeverify.train.reference`, the oracle).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

__all__ = ["Trainer", "TrainerBackend", "register", "unregister", "get", "names", "trainer_class"]


@runtime_checkable
class Trainer(Protocol):
    """What :func:`sdeverify.train.fit` needs from a backend's trainer (module docstring)."""

    def set_state(self, W: np.ndarray, Mom: np.ndarray) -> None:
        """Set the weights and momentum buffers, ``(M, P)`` each."""

    def get_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the weights and momentum buffers, ``(M, P)`` each."""

    def train(self, idx: list, a: np.ndarray, b: np.ndarray, gamma: np.ndarray,
              r: np.ndarray) -> np.ndarray:
        """Run ``S`` steps on the minibatch rows ``idx``; the first minibatch's mean loss
        before each step, ``(S, M)``."""

    def evaluate(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Summed data loss and count of correct predictions on ``(X, y)``, ``(M,)`` each."""

    def gradients(self, W: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """∇(mean data loss) + λ w at weights ``W (M', P)`` on ``(X, y)``, ``(M', P)``."""


@dataclass
class TrainerBackend:
    """A registered backend: its ``name``, a one-line ``description`` and, per kind of model
    (``"module:Class"`` of the model description), a ``load()`` returning the trainer class for
    it (imported only when used, so that e.g. numba-cuda stays optional)."""
    name: str
    description: str = ""
    trainers: dict = field(default_factory=dict)

    def trainer_for(self, model: Any) -> type:
        """The trainer class for ``model``'s kind (its class or a base class);
        ``ValueError`` naming the kinds this backend trains otherwise."""
        for cls in type(model).__mro__:
            key = _key(cls)
            if key in self.trainers:
                return self.trainers[key]()
        kinds = ", ".join(k.split(":")[-1] for k in self.trainers) or "none"
        raise ValueError(f"backend {self.name!r} cannot train {type(model).__name__} models "
                         f"(it trains: {kinds}); pick another backend")


_REGISTRY: dict[str, TrainerBackend] = {}


def _key(model: type | str) -> str:
    if isinstance(model, str):
        if ":" not in model:
            raise ValueError(f"model must be a class or 'module:Class', got {model!r}")
        return model
    if not isinstance(model, type):
        raise ValueError(f"model must be a class or 'module:Class', got {model!r}")
    return f"{model.__module__}:{model.__qualname__}"


def register(name: str, trainer: type | str | Callable[[], type], description: str = "",
             *, model: type | str = "sdeverify.train.models:MLP",
             replace: bool = False) -> TrainerBackend:
    """Register ``trainer`` as backend ``name``'s trainer for models of kind ``model``.

    ``trainer`` is the trainer class, a ``"module:Class"`` string imported on first use, or a
    function returning the class; ``model`` the model description's class (or
    ``"module:Class"``; default :class:`sdeverify.train.MLP`).  One backend name may hold a
    trainer per kind of model.  ``ValueError`` if that pair is taken (unless ``replace``)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"backend name must be an identifier string, got {name!r}")
    key = _key(model)
    backend = _REGISTRY.get(name)
    if backend is not None and key in backend.trainers and not replace:
        raise ValueError(f"trainer backend {name!r} is already registered for "
                         f"{key.split(':')[-1]} models (pass replace=True to replace it)")
    if isinstance(trainer, str):
        module, _, attr = trainer.partition(":")
        if not module or not attr:
            raise ValueError(f"trainer must be 'module:Class', got {trainer!r}")

        def load(module=module, attr=attr):
            return getattr(importlib.import_module(module), attr)
    elif isinstance(trainer, type):
        def load(cls=trainer):
            return cls
    elif callable(trainer):
        load = trainer
    else:
        raise ValueError(f"trainer must be a class, a 'module:Class' string or a function "
                         f"returning the class, got {trainer!r}")
    if backend is None:
        backend = _REGISTRY[name] = TrainerBackend(name, description)
    elif description and not backend.description:
        backend.description = description
    backend.trainers[key] = load
    return backend


def unregister(name: str) -> None:
    """Remove a registered backend, every kind of model (``ValueError`` naming the choices)."""
    get(name)
    del _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered backend names, in registration order (the CLI's choices)."""
    return tuple(_REGISTRY)


def get(name: Any) -> TrainerBackend:
    """The backend registered as ``name``; ``ValueError`` naming the registered ones."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"backend must be one of {names()}, got {name!r}")
    return _REGISTRY[name]


def trainer_class(name: str, model: Any) -> type:
    """The trainer class backend ``name`` uses for ``model`` (imported now)."""
    return get(name).trainer_for(model)


register("cpu", "sdeverify.train.cpu:Trainer", "Numba on the CPU, multi-threaded over models")
register("numpy", "sdeverify.train.reference:Trainer", "the NumPy reference (the oracle)")
register("cuda", "sdeverify.train.cuda:Trainer", "numba.cuda on an NVIDIA GPU (numba-cuda)")
register("numpy", "sdeverify.train.conv_reference:ConvTrainer", model="sdeverify.train.convnet:ResNet")
register("cpu", "sdeverify.train.conv_cpu:ConvTrainer", model="sdeverify.train.convnet:ResNet")
register("cuda", "sdeverify.train.conv_cuda:ConvTrainer", model="sdeverify.train.convnet:ResNet")
