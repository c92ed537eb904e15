"""The public API is documented and typed, so that it renders in an IDE.

For every module in :data:`MODULES` the public names are those of its ``__all__`` (every
module listed must have one: without it, imported helpers such as ``dataclass`` leak into
``from module import *`` and into IDE completion).  For each public function, class, and
public method or property of a public class (including those inherited from a base class
defined in the package), the checks require

* a docstring of its own (not inherited; for a dataclass, not the generated signature);
* an annotation on every parameter except ``self``/``cls``/``*args``/``**kwargs``, and on
  the return except for classes and ``__init__``;
* annotations that resolve (``typing.get_type_hints``), so that an IDE can follow them —
  with the names a module imports under ``if TYPE_CHECKING:`` (as a type checker and an IDE
  see them; the package imports its own types that way where a run-time import would be an
  import cycle, ``tests/test_imports.py``); names of optional extras that are imported only
  for type checking (pandas, xarray) are allowed to be missing at run time.

The checker is itself tested on planted inputs, so that it cannot pass by finding nothing.
Nothing here compiles a Numba function: the modules are only imported and inspected.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import types
import typing

import pytest

#: Modules whose public API is checked.  Extend this tuple to cover more of the package.
MODULES = (
    "sdeverify.stats",
    "sdeverify.theory",
    "sdeverify.sde",
    "sdeverify.schedules",
    "sdeverify.problems",
    "sdeverify.problems.base",
    "sdeverify.problems.quadratic",
    "sdeverify.problems.nonconvex",
    "sdeverify.problems.finite_sum",
    "sdeverify.problems.svag",
    "sdeverify.problems.manifolds",
    "sdeverify.problems.diagonal_net",
    "sdeverify.train",
    "sdeverify.train.datasets",
    "sdeverify.train.models",
    "sdeverify.train.result",
    "sdeverify.train.lr",
    "sdeverify.train.training",
    "sdeverify.train.spec",
    "sdeverify.train.functional",
    "sdeverify.files",
    "sdeverify.train.backends",
    "sdeverify",
    "sdeverify.simulate",
    "sdeverify.optim",
    "sdeverify.result",
    "sdeverify.testing",
    "sdeverify.testing.assertions",
    "sdeverify.testing.strategies",
    "sdeverify.testing.moments",
    "sdeverify.testing.replay",
    "sdeverify.testing.pytest_plugin",
    "sdeverify.reprs",
    "sdeverify.hyperparameters",
    "sdeverify.verdict",
    "sdeverify.checkrun",
    "sdeverify.report",
    "sdeverify.figstyle",
    "sdeverify.tables",
    "sdeverify.distributed",
    "sdeverify.experiments.base",
    "sdeverify.engine",
)

#: Known gaps, by qualified name, each with the reason it is still open.  An entry that no
#: longer has a gap fails :func:`test_known_gaps_are_still_open`: remove it then.
KNOWN_GAPS: dict = {}

#: Optional extras that a module may import only under ``typing.TYPE_CHECKING``.
OPTIONAL_TYPE_MODULES = ("pandas", "xarray")

_SKIP_PARAMS = {"self", "cls"}


# ---- the checker -----------------------------------------------------------------------------

def public_names(module: types.ModuleType) -> list[str]:
    """``__all__`` of the module; without one (a failure of its own, see
    :func:`test_module_declares_its_public_api`), the functions and classes it defines whose
    names do not start with ``_``."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, v in vars(module).items() if not n.startswith("_")
            and (inspect.isfunction(v) or isinstance(v, type))
            and v.__module__ == module.__name__]


def _own_doc(obj) -> str:
    """The object's own docstring (``inspect.getdoc`` would inherit a base class's)."""
    doc = obj.__doc__ if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if isinstance(obj, type) and dataclasses.is_dataclass(obj) and doc:
        try:
            auto = obj.__name__ + str(inspect.signature(obj)).replace(" -> None", "")
        except (TypeError, ValueError):
            auto = None
        if doc == auto:        # the signature dataclasses write when there is no docstring
            return ""
    return (doc or "").strip()


def _type_checking_names(module: types.ModuleType) -> dict:
    """The names ``module`` imports under a top-level ``if TYPE_CHECKING:``, imported now
    (optional extras that are not installed are left out)."""
    import ast
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return {}
    out = {}
    for node in tree.body:
        if not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            continue
        for imp in node.body:
            try:
                if isinstance(imp, ast.ImportFrom):
                    pkg = module.__name__ if hasattr(module, "__path__") else module.__package__
                    src = importlib.import_module("." * imp.level + (imp.module or ""), pkg)
                    for a in imp.names:
                        out[a.asname or a.name] = getattr(src, a.name)
                elif isinstance(imp, ast.Import):
                    for a in imp.names:
                        out[a.asname or a.name.partition(".")[0]] = importlib.import_module(
                            a.name if a.asname else a.name.partition(".")[0])
            except ImportError:
                continue
    return out


def _type_hint_error(fn) -> str | None:
    """None if the annotations of ``fn`` resolve, else the error (optional extras excepted).

    Names are looked up in the module that ``fn.__module__`` names: decorators such as
    Hypothesis's ``st.composite`` return a wrapper whose own globals are not that module's."""
    localns = {}
    for name in OPTIONAL_TYPE_MODULES:
        if name in sys.modules:
            localns[name] = sys.modules[name]
    home = sys.modules.get(getattr(fn, "__module__", None) or "")
    globalns = dict(vars(home), **_type_checking_names(home)) if home is not None else None
    try:
        typing.get_type_hints(fn, globalns=globalns, localns=localns)
    except NameError as e:
        if getattr(e, "name", None) in OPTIONAL_TYPE_MODULES:
            return None
        return f"annotation does not resolve: {e}"
    except Exception as e:  # noqa: BLE001 - any failure to evaluate is a broken annotation
        return f"annotation does not resolve: {type(e).__name__}: {e}"
    return None


def function_problems(fn, *, is_init: bool = False) -> list[str]:
    """Missing docstring / parameter or return annotations / unresolvable annotations."""
    out = []
    if not is_init and not _own_doc(fn):
        out.append("no docstring")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return out + ["no signature"]
    for p in sig.parameters.values():
        if p.name in _SKIP_PARAMS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.annotation is p.empty:
            out.append(f"parameter {p.name!r} not annotated")
    if not is_init and sig.return_annotation is sig.empty:
        out.append("return not annotated")
    err = _type_hint_error(fn)
    if err:
        out.append(err)
    return out


def _package_classes(cls: type, package: str) -> list[type]:
    return [k for k in cls.__mro__ if (k.__module__ or "").split(".")[0] == package]


def class_problems(cls: type, package: str = "sdeverify") -> dict[str, list[str]]:
    """Problems of a class and of its public methods and properties, keyed by qualified name
    (``module.Class.method``, the class that defines it)."""
    out = {}
    if not _own_doc(cls):
        out[f"{cls.__module__}.{cls.__qualname__}"] = ["no docstring"]
    for klass in _package_classes(cls, package):
        for name, attr in vars(klass).items():
            if name.startswith("_") and name != "__init__":
                continue
            key = f"{klass.__module__}.{klass.__qualname__}.{name}"
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if isinstance(attr, property):
                probs = []
                if attr.fget is None or not _own_doc(attr.fget):
                    probs.append("property without docstring")
                if attr.fget is not None:
                    if "return" not in getattr(attr.fget, "__annotations__", {}):
                        probs.append("property return not annotated")
                    err = _type_hint_error(attr.fget)
                    if err:
                        probs.append(err)
            elif inspect.isfunction(attr):
                probs = function_problems(attr, is_init=(name == "__init__"))
            else:
                continue
            if probs:
                out[key] = probs
    return out


def module_problems(module: types.ModuleType, package: str = "sdeverify") -> dict[str, list[str]]:
    """Problems of every public function and class of ``module``, keyed by qualified name."""
    out: dict[str, list[str]] = {}
    for name in public_names(module):
        obj = getattr(module, name)
        if isinstance(obj, type):
            out.update(class_problems(obj, package))
        elif inspect.isfunction(obj):
            probs = function_problems(obj)
            if probs:
                out[f"{obj.__module__}.{obj.__name__}"] = probs
    return out


# ---- the checker on planted inputs -----------------------------------------------------------

def _planted_module() -> types.ModuleType:
    src = '''
from __future__ import annotations
from dataclasses import dataclass

__all__ = ["good", "no_doc", "bare_param", "no_return", "bad_hint", "Good", "Bad", "Auto",
           "Child", "CONSTANT"]
CONSTANT = 3

def good(x: int, *args, y: float = 1.0, **kw) -> float:
    """Documented and typed."""
    return x * y

def no_doc(x: int) -> int:
    return x

def bare_param(x, y: int) -> int:
    """y is typed, x is not."""
    return y

def no_return(x: int):
    """No return annotation."""
    return x

def bad_hint(x: NoSuchName) -> int:
    """An annotation that does not resolve."""
    return 0

class Good:
    """A documented class."""
    def __init__(self, a: int) -> None:
        self.a = a
    @property
    def twice(self) -> int:
        """2a."""
        return 2 * self.a
    @classmethod
    def make(cls, a: int) -> "Good":
        """Construct."""
        return cls(a)
    def _private(self, z):
        return z

class Bad:
    def __init__(self, a):
        self.a = a
    @property
    def twice(self):
        return 2 * self.a
    @staticmethod
    def helper(q) -> int:
        """Untyped q."""
        return q

@dataclass
class Auto:
    a: int

class Child(Good):
    """Inherits Good's methods; overrides one without a docstring."""
    def make(cls, a: int) -> "Child":
        return cls(a)
'''
    mod = types.ModuleType("sdeverify_planted_api")
    sys.modules[mod.__name__] = mod
    try:
        exec(compile(src, "<planted>", "exec"), mod.__dict__)
    finally:
        del sys.modules[mod.__name__]
    return mod


def test_checker_on_planted_module():
    mod = _planted_module()
    got = {k.split(".", 1)[1]: v for k, v in module_problems(mod, package="sdeverify_planted_api").items()}
    assert "good" not in got and "Good" not in got and "Good.twice" not in got
    assert "Good.make" not in got and "Good.__init__" not in got and "Good._private" not in got
    assert got["no_doc"] == ["no docstring"]
    assert got["bare_param"] == ["parameter 'x' not annotated"]
    assert got["no_return"] == ["return not annotated"]
    assert len(got["bad_hint"]) == 1 and "does not resolve" in got["bad_hint"][0]
    assert got["Bad"] == ["no docstring"]
    assert got["Bad.__init__"] == ["parameter 'a' not annotated"]
    assert got["Bad.twice"] == ["property without docstring", "property return not annotated"]
    assert got["Bad.helper"] == ["parameter 'q' not annotated"]
    assert got["Auto"] == ["no docstring"]          # the signature dataclasses generate
    assert got["Child.make"] == ["no docstring"]    # an override needs its own docstring
    assert set(got) == {"no_doc", "bare_param", "no_return", "bad_hint", "Bad", "Bad.__init__",
                        "Bad.twice", "Bad.helper", "Auto", "Child.make"}
    del mod.__all__        # without __all__: the functions and classes the module defines
    assert public_names(mod) == ["good", "no_doc", "bare_param", "no_return", "bad_hint", "Good",
                                 "Bad", "Auto", "Child"]


# ---- the package -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODULES)
def test_module_declares_its_public_api(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"
    assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ has duplicates"
    if not hasattr(module, "__path__"):     # a plain module exports only what it defines
        foreign = [n for n in module.__all__
                   if (inspect.isfunction(getattr(module, n)) or isinstance(getattr(module, n), type))
                   and getattr(module, n).__module__ != name]
        assert not foreign, f"{name}.__all__ re-exports names defined elsewhere: {foreign}"


@pytest.mark.parametrize("name", MODULES)
def test_public_api_is_documented_and_typed(name):
    problems = {k: v for k, v in module_problems(importlib.import_module(name)).items()
                if k not in KNOWN_GAPS}
    assert not problems, f"{name}: undocumented or untyped public API:\n" + "\n".join(
        f"  {k}: {', '.join(v)}" for k, v in sorted(problems.items()))


def test_known_gaps_are_still_open():
    found = {}
    for name in MODULES:
        found.update(module_problems(importlib.import_module(name)))
    closed = [k for k in KNOWN_GAPS if k not in found]
    assert not closed, f"these KNOWN_GAPS are fixed; remove them from the list: {closed}"
