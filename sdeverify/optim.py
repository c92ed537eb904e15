"""Optimizers as per-step linear updates of a momentum buffer (Defs. 3.2, 3.3, A.1).

Every optimizer the engines run is the same two-line update with per-step coefficients

    m_{k+1} = a_k m_k + b_k g_k,      x_{k+1} = x_k − γ_k m_{k+1}

* SGD (Def. 3.2):                 a = 0,   b = 1,       γ = η_k
* SGDM, EMA form (Def. 3.3):      a = β_k, b = 1 − β_k, γ = η_k
* HeavyBall = torch.optim.SGD:    a = μ_k, b = 1 − τ (b_0 = 1 on an empty buffer), γ = γ_k

so no optimizer needs a kernel of its own.  :func:`heavy_ball_to_sgdm` converts HeavyBall
schedules to the EMA form exactly (docs/theory.md §2, Lemma A.2).

A new optimizer is any object satisfying :class:`OptimizerScheme`: a ``coefficients(steps,
dim)`` method returning :class:`Coefficients` (and, optionally, a ``name``).
:func:`check_scheme` is what :func:`sdeverify.simulate` runs on each one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

from .reprs import call_repr
from .validation import finite_array, finite_float, name_string, positive_int, schedule, vector

__all__ = ["Coefficients", "OptimizerScheme", "check_scheme", "scheme_coefficients", "SGD", "SGDM",
           "HeavyBall", "heavy_ball_to_sgdm"]


@dataclass(frozen=True)
class Coefficients:
    """Per-step coefficients of m_{k+1} = a_k m_k + b_k g_k, x_{k+1} = x_k − γ_k m_{k+1}:
    ``a``, ``b``, ``gamma`` of shape (steps,), and the initial buffer ``m0`` of shape (dim,)."""
    a: np.ndarray
    b: np.ndarray
    gamma: np.ndarray
    m0: np.ndarray

    def check(self, steps: int, dim: int, who: str = "optimizer") -> "Coefficients":
        """``ValueError`` naming ``who`` and the field unless a, b, γ are finite arrays of
        shape (steps,) and m0 a finite array of shape (dim,); returns self."""
        for field_name, shape in (("a", (steps,)), ("b", (steps,)), ("gamma", (steps,)),
                                  ("m0", (dim,))):
            v = getattr(self, field_name)
            if not isinstance(v, np.ndarray) or v.shape != shape or v.dtype.kind not in "iuf":
                got = f"shape {v.shape}, dtype {v.dtype}" if isinstance(v, np.ndarray) else repr(v)
                raise ValueError(f"{who}: coefficients({steps}, {dim}).{field_name} must be a real "
                                 f"array of shape {shape}, got {got}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{who}: coefficients({steps}, {dim}).{field_name} must be finite")
        return self


@runtime_checkable
class OptimizerScheme(Protocol):
    """What :func:`sdeverify.simulate` needs from an optimizer.

    ``coefficients(steps, dim) -> Coefficients``: the per-step (a_k, b_k, γ_k) of the update
    m_{k+1} = a_k m_k + b_k g_k, x_{k+1} = x_k − γ_k m_{k+1} for a run of ``steps`` steps in
    dimension ``dim``, and the initial buffer m_0 (validated by :meth:`Coefficients.check`).
    Optionally a ``name`` attribute (a non-empty string; default: the class name) that labels
    the optimizer in results.  :class:`SGD`, :class:`SGDM`, :class:`HeavyBall` and
    :class:`sdeverify.sde.Embedded` are schemes; so is any object with such a method.
    """

    def coefficients(self, steps: int, dim: int) -> Coefficients:
        """The per-step (a_k, b_k, γ_k), k < ``steps``, and the initial buffer m_0 ∈ R^``dim``."""
        ...


def check_scheme(opt: Any, what: str = "optimizers") -> str:
    """The label of ``opt`` (its ``name``, else its class name) if it is an
    :class:`OptimizerScheme` instance; ``ValueError`` naming what is missing otherwise (a
    class such as ``SGD`` itself, not an instance of it, is refused too)."""
    if isinstance(opt, type):
        raise ValueError(f"{what} must be optimizer instances, got the class {opt.__name__}; "
                         f"construct one, e.g. {opt.__name__}(lr=0.1)")
    if not isinstance(opt, OptimizerScheme) or not callable(getattr(opt, "coefficients", None)):
        raise ValueError(f"{what} must be optimizer schemes (SGD, SGDM, HeavyBall, or an object "
                         f"with a method coefficients(steps, dim) -> sdeverify.optim.Coefficients); "
                         f"{opt!r} has no coefficients method")
    return name_string("optimizer name", getattr(opt, "name", type(opt).__name__))


def scheme_coefficients(opt: OptimizerScheme, steps: int, dim: int, who: str) -> Coefficients:
    """``opt.coefficients(steps, dim)``, checked (:meth:`Coefficients.check`); ``who`` names
    the optimizer in the ``ValueError`` (also in one raised by ``opt.coefficients``, such as
    for an invalid lr)."""
    try:
        c = opt.coefficients(steps, dim)
    except ValueError as exc:
        if str(exc).startswith(f"{who}:"):
            raise
        raise ValueError(f"{who}: {exc}") from None
    if not isinstance(c, Coefficients):
        raise ValueError(f"{who}: coefficients({steps}, {dim}) must return "
                         f"sdeverify.optim.Coefficients, got {type(c).__name__}")
    return c.check(steps, dim, who)


def _equal_fields(self, other: Any) -> bool:
    """Equality of two optimizers of one type, field by field, arrays by value (a schedule
    given as a list equals the same schedule given as an array)."""
    if type(other) is not type(self):
        return NotImplemented
    for f in self.__dataclass_fields__:
        a, b = getattr(self, f), getattr(other, f)
        if (a is None) != (b is None):
            return False
        if a is not None and not np.array_equal(np.asarray(a), np.asarray(b)):
            return False
    return True


@dataclass(frozen=True)
class SGD:
    """SGD (Def. 3.2): x_{k+1} = x_k − η_k g_k.  ``lr`` is a float or a per-step array."""
    lr: Any
    name: str = "SGD"

    def __post_init__(self) -> None:
        name_string("name", self.name)

    def __repr__(self) -> str:
        """``SGD(lr=..., name=...)``, arrays as lists: ``eval`` of it rebuilds this one."""
        return call_repr("SGD", lr=self.lr, name=self.name)

    __eq__ = _equal_fields

    def coefficients(self, steps: int, dim: int) -> Coefficients:
        """a ≡ 0, b ≡ 1, γ_k = η_k, m_0 = 0 (Def. 3.2); ``ValueError`` for a negative,
        non-finite or wrongly sized ``lr``."""
        lr = schedule("lr", self.lr, steps, low=0.0)
        return Coefficients(np.zeros(steps), np.ones(steps), lr, np.zeros(dim))


@dataclass(frozen=True)
class SGDM:
    """SGD with momentum, the paper's EMA form (Def. 3.3).

        m_{k+1} = β_k m_k + (1 − β_k) g_k,   x_{k+1} = x_k − η_k m_{k+1}

    ``lr`` and ``beta`` are floats or per-step arrays, β ∈ [0, 1); ``m0`` the initial
    momentum (zero by default).
    """
    lr: Any
    beta: Any
    m0: Any = None
    name: str = "SGDM"

    def __post_init__(self) -> None:
        name_string("name", self.name)

    def __repr__(self) -> str:
        """``SGDM(lr=..., beta=..., m0=..., name=...)``, arrays as lists: ``eval`` of it
        rebuilds this one."""
        return call_repr("SGDM", lr=self.lr, beta=self.beta, m0=self.m0, name=self.name)

    __eq__ = _equal_fields

    def coefficients(self, steps: int, dim: int) -> Coefficients:
        """a_k = β_k, b_k = 1 − β_k, γ_k = η_k and m_0 (Def. 3.3); ``ValueError`` unless
        η_k ≥ 0 and β_k ∈ [0, 1) are finite with ``steps`` entries and m0 has ``dim``."""
        lr = schedule("lr", self.lr, steps, low=0.0)
        beta = schedule("beta", self.beta, steps, low=0.0, high=1.0, high_open=True)
        m0 = np.zeros(dim) if self.m0 is None else vector("m0", self.m0, dim)
        return Coefficients(beta, 1.0 - beta, lr, m0)


@dataclass(frozen=True)
class HeavyBall:
    """Heavy-ball momentum with exactly the semantics of ``torch.optim.SGD`` (Eq. 1, Def. A.1).

        u_1 = g_0 (empty buffer),  u_{k+1} = μ_k u_k + (1 − τ) g_k,  x_{k+1} = x_k − γ_k u_{k+1}

    ``lr`` (γ) and ``momentum`` (μ, in [0, 1)) are floats or per-step arrays; ``dampening``
    τ ∈ [0, 1].  ``buffer`` resumes from a non-empty buffer u_0 (then b_0 = 1 − τ too).
    torch leaves the buffer untouched on a step with μ = 0, which this linear form cannot
    express, so a per-step momentum must be > 0 everywhere or 0 everywhere.
    """
    lr: Any
    momentum: Any
    dampening: float = 0.0
    buffer: Any = None
    name: str = "HeavyBall"

    def __post_init__(self) -> None:
        name_string("name", self.name)

    def __repr__(self) -> str:
        """``HeavyBall(lr=..., momentum=..., dampening=..., buffer=..., name=...)``, arrays as
        lists: ``eval`` of it rebuilds this one."""
        return call_repr("HeavyBall", lr=self.lr, momentum=self.momentum,
                         dampening=self.dampening, buffer=self.buffer, name=self.name)

    __eq__ = _equal_fields

    def coefficients(self, steps: int, dim: int) -> Coefficients:
        """a_k = μ_k, b_k = 1 − τ (b_0 = 1 on an empty buffer), γ_k = lr_k and m_0 = u_0
        (Def. A.1); all-zero momentum is plain SGD (a ≡ 0, b ≡ 1), as in torch."""
        lr = schedule("lr", self.lr, steps, low=0.0)
        mu = schedule("momentum", self.momentum, steps, low=0.0, high=1.0, high_open=True)
        tau = finite_float("dampening", self.dampening, low=0.0, high=1.0)
        if np.any(mu == 0) and np.any(mu > 0):
            raise ValueError("momentum must be > 0 on every step or 0 on every step "
                             "(torch skips the buffer on steps with momentum 0)")
        if np.all(mu == 0):  # torch: plain SGD, dampening ignored
            return Coefficients(np.zeros(steps), np.ones(steps), lr, np.zeros(dim))
        b = np.full(steps, 1.0 - tau)
        if self.buffer is None:
            b[0] = 1.0
            u0 = np.zeros(dim)
        else:
            u0 = vector("buffer", self.buffer, dim)
        return Coefficients(mu, b, lr, u0)


def heavy_ball_to_sgdm(lr: ArrayLike, momentum: ArrayLike, dampening: float = 0.0, *, steps: int,
                       c0: float | None = None, buffer_empty: bool = True
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact conversion of a HeavyBall (torch) schedule to the EMA form (Lemma A.2,
    docs/theory.md §2).

    With m_k = c_k u_k:  c_{k+1} = c_k / (b_k c_k + μ_k),  β_k = μ_k c_{k+1}/c_k,
    η_k = γ_k / c_{k+1}.  ``c0=None`` picks the canonical choice: 1 − μ for τ = 0 and
    constant μ (β ≡ μ, η = γ/(1−μ)); μ(1−μ)/(μ−τ) for constant μ > τ > 0; otherwise ∞
    (β_0 = 0).  A resumed run starts from m_0 = c_0 u_0.  SGDM(eta, beta) then produces the
    same iterates as HeavyBall(lr, momentum, dampening) for the same gradients.

    Parameters
    ----------
    lr : HeavyBall learning rate γ, a float or a per-step array (≥ 0, finite).
    momentum : HeavyBall momentum μ, a float or a per-step array; μ_k ∈ (0, 1) on every step
        (the conversion divides by it).
    dampening : τ ∈ [0, 1].
    steps : number of steps (≥ 1).
    c0 : the scale c_0 > 0 of m_0 = c_0 u_0 (``np.inf`` allowed: β_0 = 0); None picks the
        canonical choice above.
    buffer_empty : True for torch's first step on an empty buffer (u_1 = g_0, b_0 = 1);
        False when resuming from a non-empty buffer (b_0 = 1 − τ).

    Returns
    -------
    eta : np.ndarray, shape (steps,)
        SGDM learning rates η_k = γ_k / c_{k+1}.
    beta : np.ndarray, shape (steps,)
        SGDM momenta β_k ∈ [0, 1).
    c : np.ndarray, shape (steps + 1,)
        The scales c_k with m_k = c_k u_k.
    """
    steps = positive_int("steps", steps)
    for name, v in (("lr", lr), ("momentum", momentum)):
        finite_array(name, v, low=0.0)            # not empty, finite, >= 0 (clear messages)
    dampening = finite_float("dampening", dampening, low=0.0, high=1.0)
    if c0 is not None:
        c0 = finite_float("c0", c0, low=0.0, low_open=True, allow_inf=True)
    hb = HeavyBall(lr, momentum, dampening, buffer=None if buffer_empty else np.zeros(1))
    coef = hb.coefficients(steps, 1)
    mu, b, gamma = coef.a, coef.b, coef.gamma
    if np.any(mu == 0):
        raise ValueError("the conversion needs momentum > 0 on every step (THEORY §2)")
    tau = float(dampening)
    if c0 is None:
        const = np.all(mu == mu[0])
        if const and tau == 0.0:
            c0 = 1.0 - mu[0]
        elif const and 0.0 < tau < mu[0]:
            c0 = mu[0] * (1.0 - mu[0]) / (mu[0] - tau)
        else:
            c0 = np.inf
    c = np.empty(steps + 1)
    c[0] = c0
    beta = np.empty(steps)
    for k in range(steps):
        if np.isinf(c[k]):
            c[k + 1] = 1.0 / b[k]
            beta[k] = 0.0
        else:
            c[k + 1] = c[k] / (b[k] * c[k] + mu[k])
            beta[k] = mu[k] * c[k + 1] / c[k]
    return gamma / c[1:], beta, c
