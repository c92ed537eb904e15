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
   ``out`` untouched: silent garbage);
4. a problem's optional ``oracle``, ``oracle_lanes`` and ``oracle_pair_lanes`` (the same
   call, fused; SVAG's two calls — probed in SVAG runs only, the only ones that call it, so
   that no other run compiles it) run the same way, and must give what ``grad`` and
   ``noise`` give at x0 (to 1e-12 relative, float64): the engines use them in place of the
   separate functions.

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
    "oracle": "oracle(x, p, xi, g, v) -> None, writing grad(x, p, g) and noise(x, p, xi, v)",
    "oracle_lanes": "oracle_lanes(X, p, Z, G, V) -> None, writing oracle(X[:, l], p, Z[:, l], "
                    "G[:, l], V[:, l]) for every column l (X, G, V: (d, L); Z: (rows >= "
                    "n_draws, L))",
    "oracle_pair_lanes": "oracle_pair_lanes(X, p, Z1, Z2, G, V, W) -> None, writing "
                         "oracle_lanes(X, p, Z1, G, V) and the noise of a second call with "
                         "the draws Z2 into W",
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
                "parameter vector or past out)") if role in ("noise", "oracle", "oracle_lanes",
                                                         "oracle_pair_lanes") else \
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
    oracle = getattr(problem, "oracle", None)
    lanes = getattr(problem, "oracle_lanes", None)
    svag = getattr(problem, "svag_ell", 1.0) != 1.0
    pair = getattr(problem, "oracle_pair_lanes", None) if svag else None
    if oracle is not None or lanes is not None or pair is not None:
        _probe_fused(problem, oracle, lanes, pair, x64, p, xi.astype(np.float64))
    for h in user_funcs:
        v = _call_guarded("observable", h, ("x",), x)
        if not isinstance(v, np.bool_):
            _scalar("observable", h, v)


def _agrees(role: str, f, got: np.ndarray, want: np.ndarray, what: str) -> None:
    if not np.allclose(got, want, rtol=1e-12, atol=1e-300, equal_nan=True):
        i = int(np.argmax(np.abs(got - want)))
        raise _fail(role, f, f"disagrees with {what} at x0 (entry {i}: {got.flat[i]!r} "
                             f"against {want.flat[i]!r})")


def _probe_fused(problem, oracle, lanes, pair, x: np.ndarray, p: np.ndarray,
                 xi: np.ndarray) -> None:
    """The fused oracle functions at x0 (float64): as plain Python (bounds-checked), then
    compiled, each compared with ``grad`` and ``noise`` (``oracle_lanes`` and
    ``oracle_pair_lanes`` on three lanes: x0 and two scaled copies, with different draws)."""
    d = problem.dim
    g_ref, v_ref = np.zeros(d), np.zeros(d)
    problem.grad(x, p, g_ref)
    problem.noise(x, p, xi, v_ref)
    if oracle is not None:
        _python("oracle", oracle, x.copy(), p.copy(), xi.copy(), np.zeros(d), np.zeros(d))
        g, v = np.zeros(d), np.zeros(d)
        _nothing("oracle", oracle, _call_guarded("oracle", oracle, ("x", "p", "xi", "g", "v"),
                                                  x, p, xi, g, v))
        oracle(x, p, xi, g, v)            # (the guarded call wrote into copies)
        _agrees("oracle", oracle, g, g_ref, "grad")
        _agrees("oracle", oracle, v, v_ref, "noise")
    X = np.ascontiguousarray(np.stack([x, 0.5 * x, -1.5 * x], axis=1))
    rows = problem.n_draws
    Z = np.ascontiguousarray(np.stack([xi, -xi, xi[::-1]], axis=1))
    if lanes is not None:
        _python("oracle_lanes", lanes, X.copy(), p.copy(), Z.copy(), np.zeros_like(X), np.zeros_like(X))
        G, V = np.zeros_like(X), np.zeros_like(X)
        _nothing("oracle_lanes", lanes, _compiled("oracle_lanes", lanes, X, p, Z, G, V))
        for ln in range(X.shape[1]):
            problem.grad(np.ascontiguousarray(X[:, ln]), p, g_ref)
            problem.noise(np.ascontiguousarray(X[:, ln]), p, np.ascontiguousarray(Z[:rows, ln]), v_ref)
            _agrees("oracle_lanes", lanes, G[:, ln], g_ref, f"grad (lane {ln})")
            _agrees("oracle_lanes", lanes, V[:, ln], v_ref, f"noise (lane {ln})")
    if pair is not None:
        Z2 = np.ascontiguousarray(np.stack([xi[::-1], xi, -xi], axis=1))
        _python("oracle_pair_lanes", pair, X.copy(), p.copy(), Z.copy(), Z2.copy(),
                np.zeros_like(X), np.zeros_like(X), np.zeros_like(X))
        G, V, W = np.zeros_like(X), np.zeros_like(X), np.zeros_like(X)
        _nothing("oracle_pair_lanes", pair, _compiled("oracle_pair_lanes", pair, X, p, Z, Z2, G, V, W))
        w_ref = np.zeros(problem.dim)
        for ln in range(X.shape[1]):
            xl = np.ascontiguousarray(X[:, ln])
            problem.grad(xl, p, g_ref)
            problem.noise(xl, p, np.ascontiguousarray(Z[:rows, ln]), v_ref)
            problem.noise(xl, p, np.ascontiguousarray(Z2[:rows, ln]), w_ref)
            _agrees("oracle_pair_lanes", pair, G[:, ln], g_ref, f"grad (lane {ln})")
            _agrees("oracle_pair_lanes", pair, V[:, ln], v_ref, f"noise (lane {ln}, draws Z1)")
            _agrees("oracle_pair_lanes", pair, W[:, ln], w_ref, f"noise (lane {ln}, draws Z2)")
