"""Engines and the backend registry: the one place that lists the backends of
:func:`sdeverify.simulate`.

Built in: ``cpu`` (Numba, parallel, :mod:`.cpu`), ``numpy`` (the NumPy reference,
:mod:`.reference`) and ``cuda`` (numba.cuda, :mod:`.cuda`).  A backend is a module (or any
object) with

* ``run(spec) -> EngineOutput``: run a validated :class:`~sdeverify.engine.spec.RunSpec`,
  filling the arrays of ``EngineOutput.allocate(spec)`` (:mod:`.output` documents each);
* optionally ``require() -> None``: raise a clear error when the backend cannot run here
  (no GPU, a missing package) — called before any work, e.g. by the CLI.

:func:`register_backend` adds one; its module is imported only when first used, so an
optional dependency costs nothing until it is asked for.  The test every backend needs:
``tests/test_engine_contract.py`` runs each registered backend on small problems and checks
its output against the ``numpy`` reference (bitwise where ``numerics`` agree).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..validation import DTYPES
from .output import EngineContractError, EngineOutput
from .spec import RunSpec

__all__ = ["Backend", "EngineContractError", "EngineOutput", "backends", "get_backend", "register_backend"]


@dataclass(frozen=True)
class Backend:
    """One registered backend.

    Attributes
    ----------
    name : the ``backend=`` value of :func:`sdeverify.simulate` (and ``--backend``).
    factory : zero-argument callable returning the engine (an object with ``run(spec)``);
        called once, on first use.
    dtypes : state precisions it supports ("float64", "float32").
    numerics : a label of its arithmetic, recorded in every result's fingerprint: backends
        with the same label give bitwise the same numbers, and shards merge only when the
        labels agree.
    python_functions : it runs the problem's functions as plain Python (their exceptions
        surface as :class:`~sdeverify.observables.UserFunctionError`).
    description : one line for help texts.
    """
    name: str
    factory: Callable[[], Any] = field(repr=False)
    dtypes: tuple = ("float64",)
    numerics: str = ""
    python_functions: bool = False
    description: str = ""

    def engine(self) -> Any:
        """The engine object (the factory's result, built once)."""
        eng = _ENGINES.get(self.name)
        if eng is None:
            eng = _ENGINES[self.name] = self.factory()
        return eng

    def require(self) -> None:
        """Raise a clear error if this backend cannot run on this machine."""
        check = getattr(self.engine(), "require", None)
        if check is not None:
            check()

    def run(self, spec: RunSpec) -> EngineOutput:
        """Run ``spec``; the output is checked against the engine contract."""
        return self.engine().run(spec).check(spec, self.name)


_REGISTRY: dict = {}
_ENGINES: dict = {}


def register_backend(name: str, factory: Callable[[], Any], *,
                     dtypes: Sequence[str] = ("float64",),
                     numerics: str | None = None, python_functions: bool = False,
                     description: str = "", replace: bool = False) -> Backend:
    """Register the backend ``name``; ``factory()`` returns its engine (see the module doc).

    ``numerics`` defaults to the name (a new backend's numbers are its own).  Registering a
    name twice is a ``ValueError`` unless ``replace=True``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"backend name must be an identifier string, got {name!r}")
    if not callable(factory):
        raise ValueError(f"factory must be a zero-argument callable returning the engine, "
                         f"got {factory!r}")
    bad = [d for d in dtypes if d not in DTYPES]
    if not dtypes or bad:
        raise ValueError(f"dtypes must be a non-empty subset of ('float64', 'float32'), got {dtypes!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"backend {name!r} is already registered (pass replace=True)")
    _ENGINES.pop(name, None)
    b = _REGISTRY[name] = Backend(name, factory, tuple(dtypes), numerics or name,
                                  bool(python_functions), description)
    return b


def backends() -> tuple:
    """Names of the registered backends, in registration order."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The registered backend ``name``; ``ValueError`` listing the valid names otherwise."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"backend must be one of {backends()}, got {name!r}")
    return _REGISTRY[name]


def _module(name: str) -> Callable[[], Any]:
    return lambda: importlib.import_module(f"{__name__}.{name}")


register_backend("cpu", _module("cpu"), dtypes=("float64", "float32"),
                 numerics="cpu/numpy (bitwise twins)", description="Numba, parallel over paths")
register_backend("numpy", _module("reference"), numerics="cpu/numpy (bitwise twins)",
                 python_functions=True, description="NumPy reference, slow, for cross-checks")
register_backend("cuda", _module("cuda"), numerics="cuda (FMA-contracted)",
                 description="numba.cuda, one GPU thread per path")
