"""Run every user-supplied function once, at x0, before a kernel is built.

The engines compile the problem's ``grad`` / ``noise`` / ``loss`` and the observables into
one kernel, where a typing error becomes a page of compiler output about the kernel, an
exception cannot leave a parallel loop, and a read or write past the end of an array is
undefined behaviour (reads have been seen to turn every path into NaN without a trace,
writes to corrupt the heap and abort the process later).  So first, for each function on
its own:

1. ``noise``, ``grad`` and ``loss`` run as plain Python (``py_func``) with a draw vector of
   exactly ``n_draws`` entries, the parameter vector of its exact length and ``out`` of
   length d, where indexing is bounds-checked: reading or writing past any of them is an
   error naming the function, before any compiled code has touched memory;
2. each is then called through its ``numba.njit`` dispatcher with the arguments the engine
   passes (x of the run's dtype, the parameter vector, the draws of path 0, step 0), every
   array a view of a larger buffer whose tail (guard space) is checked afterwards: a write
   beyond an array is an error, not heap corruption (also for code the plain-Python run
   could not judge).  A typing error or an exception becomes a
   :class:`~sdeverify.observables.UserFunctionError` that names the function and the
   expected signature;
3. return types: ``loss`` and an observable must return a real scalar, ``grad`` and
   ``noise`` nothing (a gradient *returned* instead of written into ``out`` would leave
   ``out`` untouched: silent garbage).

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
        what = ("reads or writes beyond its inputs (more than n_draws base draws, past the "
                "parameter vector or past out)") if role == "noise" else \
            "reads or writes beyond its inputs (past x, the parameter vector or out)"
        raise _fail(role, f, what, exc) from None
    except Exception:   # plain-Python quirks of code written for Numba are not ours to judge
        pass


GUARD = 64           # entries of guard space after each array handed to compiled user code


class _Guarded:
    """Arrays handed to a compiled user function as views of longer buffers whose tails
    hold a fixed pattern; :meth:`check` reports a function that wrote past an array."""

    def __init__(self):
        self.bufs: list[tuple[str, np.ndarray, int]] = []

    def array(self, name: str, values: np.ndarray) -> np.ndarray:
        n = values.shape[0]
        buf = np.empty(n + GUARD, dtype=values.dtype)
        buf[:n] = values
        buf.view(np.uint8)[n * buf.itemsize:] = 0xA5
        self.bufs.append((name, buf, n))
        return buf[:n]

    def check(self, role: str, f) -> None:
        for name, buf, n in self.bufs:
            if np.any(buf.view(np.uint8)[n * buf.itemsize:] != 0xA5):
                raise _fail(role, f, f"writes past the end of {name} (length {n})")


def _call_guarded(role: str, f, names: tuple, *arrays):
    """``f(*arrays)`` compiled, each array given with guard space (checked after the call)."""
    g = _Guarded()
    args = [g.array(n, a) if isinstance(a, np.ndarray) else a for n, a in zip(names, arrays)]
    v = _compiled(role, f, *args)
    g.check(role, f)
    return v


def _scalar(role: str, f, v) -> None:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.floating, np.integer)):
        raise _fail(role, f, f"returned {type(v).__name__}, not a float")


def _nothing(role: str, f, v) -> None:
    if v is not None:
        raise _fail(role, f, f"returned a {type(v).__name__} instead of writing into out and "
                             "returning nothing (out is what the engine reads)")


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
    x64 = np.asarray(x0, dtype=np.float64)
    _python("grad", problem.grad, x64.copy(), p.copy(), np.zeros(d))            # bounds-checked
    _python("noise", problem.noise, x64.copy(), p.copy(), xi.astype(np.float64), np.zeros(d))
    _python("loss", problem.loss, x64.copy(), p.copy())
    _nothing("grad", problem.grad,
             _call_guarded("grad", problem.grad, ("x", "p", "out"), x, p, out))
    _nothing("noise", problem.noise,
             _call_guarded("noise", problem.noise, ("x", "p", "xi", "out"), x, p, xi, out))
    _scalar("loss", problem.loss, _call_guarded("loss", problem.loss, ("x", "p"), x, p))
    for h in user_funcs:
        v = _call_guarded("observable", h, ("x",), x)
        if not isinstance(v, np.bool_):
            _scalar("observable", h, v)
