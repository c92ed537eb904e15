"""Run every user-supplied function once, at x0, before a kernel is built.

The engines compile the problem's ``grad`` / ``noise`` / ``loss`` and the observables into
one kernel, where a typing error becomes a page of compiler output about the kernel, an
exception cannot leave a parallel loop, and a read past the end of the draws is undefined
behaviour (it has been seen to turn every path into NaN without a trace).  So first, for
each function on its own:

1. it is called through its ``numba.njit`` dispatcher with the arguments the engine passes
   (x of the run's dtype, the parameter vector, the draws of path 0, step 0): a typing
   error or an exception becomes a :class:`~sdeverify.observables.UserFunctionError` that
   names the function and the expected signature;
2. ``noise``, ``grad`` and ``loss`` run once more as plain Python (``py_func``) with a draw
   vector of exactly ``n_draws`` entries and the parameter vector of its exact length, where
   indexing is bounds-checked: reading draw ``n_draws`` or beyond (or past the parameters) is
   an error, not garbage;
3. an observable must return a real scalar.

This checks the functions at x0 only; an observable that raises later is caught by the CPU
engine (counted, then reported by :func:`sdeverify.simulate`) and by the NumPy engine.
"""
from __future__ import annotations

import numbers

import numpy as np
from numba.core.errors import NumbaError

from .. import rng
from ..observables import UserFunctionError

SIGNATURES = {
    "grad": "grad(x, p, out) -> None, writing the gradient into out (x, out: float arrays of "
            "length d; p: the problem's float64 parameter vector)",
    "noise": "noise(x, p, xi, out) -> None, writing the noise vector into out (xi: the "
             "n_draws base draws of one oracle call)",
    "loss": "loss(x, p) -> float",
    "observable": "h(x) -> float (x: a float array of length d)",
}


def _label(f) -> str:
    py = getattr(f, "py_func", f)
    return f"{getattr(py, '__module__', '?')}.{getattr(py, '__qualname__', repr(f))}"


def _fail(role: str, f, what: str, exc: BaseException | None = None) -> UserFunctionError:
    first = "" if exc is None else f": {type(exc).__name__}: {_first_line(exc)}"
    return UserFunctionError(f"{role} function {_label(f)} {what}{first}; expected "
                             f"{SIGNATURES['observable' if role.startswith('observable') else role]}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("No implementation", "During:", "\x1b")):
            return line[:300]
    return text[:300]


def _compiled(role: str, f, *args):
    try:
        return f(*args)
    except NumbaError as exc:          # typing / lowering error of the function itself
        raise _fail(role, f, "does not compile for the engine's arguments", exc) from None
    except TypeError as exc:           # wrong number of arguments, etc.
        raise _fail(role, f, "cannot be called with the engine's arguments", exc) from None
    except Exception as exc:
        raise _fail(role, f, "raised at x0", exc) from exc


def _python(role: str, f, *args) -> None:
    py = getattr(f, "py_func", None)
    if py is None:
        return
    try:
        py(*args)
    except IndexError as exc:
        what = ("reads beyond its inputs (more than n_draws base draws, or past the "
                "parameter vector)") if role == "noise" else "reads beyond its inputs"
        raise _fail(role, f, what, exc) from None
    except Exception:   # plain-Python quirks of code written for Numba are not ours to judge
        pass


def probe(problem, user_funcs: tuple, x0: np.ndarray, dtype: str = "float64",
          seed: int = 0) -> None:
    """Raise :class:`UserFunctionError` if a function of ``problem`` or an observable cannot
    be called as the engine calls it (see the module docstring)."""
    ft = np.dtype(dtype)
    d = problem.dim
    x = np.ascontiguousarray(x0, dtype=ft)
    p = problem.params
    xi = np.ascontiguousarray(rng.draws_numpy(problem.draw_kind, seed, np.array([0]), 0, 0,
                                              problem.n_draws, dtype=ft)[0])
    out = np.zeros(d, dtype=ft)
    _compiled("grad", problem.grad, x.copy(), p, out)
    _compiled("noise", problem.noise, x.copy(), p, xi.copy(), out)
    _compiled("loss", problem.loss, x.copy(), p)
    x64 = np.asarray(x0, dtype=np.float64)
    _python("grad", problem.grad, x64.copy(), p.copy(), np.zeros(d))
    _python("noise", problem.noise, x64.copy(), p.copy(), xi.astype(np.float64), np.zeros(d))
    _python("loss", problem.loss, x64.copy(), p.copy())
    for h in user_funcs:
        v = _compiled("observable", h, x.copy())
        if not isinstance(v, (numbers.Real, np.bool_)):
            raise _fail("observable", h, f"returned {type(v).__name__}, not a float")
