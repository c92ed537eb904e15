"""Input validation at the API boundary: one helper per kind of parameter.

Every error names the parameter and the allowed range, so a user sees at once what to fix.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def positive_int(name: str, value: Any) -> int:
    """An integer ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")
    return int(value)


def nonneg_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


#: seeds are the 64-bit key of the Philox generator (sdeverify.rng.key_words): [0, 2**64)
SEED_LIMIT = 2 ** 64
#: what to do when paths or replicas diverge (simulate, fit)
ON_DIVERGENCE = ("warn", "raise", "ignore")
#: floating-point precisions of the engines' and the trainer's state
DTYPES = ("float64", "float32")


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool; ValueError naming ``name`` unless it is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def seed(value: Any, name: str = "seed") -> int:
    """A seed of the counter-based generator: an integer in [0, 2**64) (its 64-bit key)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 0 <= int(value) < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}")
    return int(value)


def on_divergence(value: Any, name: str = "on_divergence") -> str:
    """The divergence policy: "warn", "raise" or "ignore"."""
    if not isinstance(value, str) or value not in ON_DIVERGENCE:
        raise ValueError(f"{name} must be 'warn', 'raise' or 'ignore', got {value!r}")
    return value


def dtype(value: Any, name: str = "dtype", allowed: tuple[str, ...] = DTYPES) -> str:
    """A state precision: one of ``allowed`` ("float64" or "float32" by default), as a string."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be {' or '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def finite_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, allow_inf: bool = False) -> float:
    """A finite float in the given (closed unless *_open) range (``allow_inf``: ±inf too)."""
    if isinstance(value, (str, bytes)) or (isinstance(value, np.ndarray) and value.ndim > 0):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    rng = _range_text(low, high, low_open, high_open)
    if np.isnan(v) or (np.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number{rng}, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be in {rng.strip()}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be in {rng.strip()}, got {v}")
    return v


def name_string(what: str, value: Any) -> str:
    """A non-empty label (optimizer, problem or observable name)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def finite_array(name: str, value: Any, *, low: float | None = None) -> np.ndarray:
    """A non-empty, finite 1-D float64 array (a scalar becomes length 1), entries >= low."""
    arr = np.atleast_1d(_real_array(name, value))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a number or a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; entry {int(np.argmin(np.isfinite(arr)))} is "
                         f"{arr[np.argmin(np.isfinite(arr))]}")
    if low is not None and np.any(arr < low):
        k = int(np.argmax(arr < low))
        raise ValueError(f"{name} must be >= {low:g}; entry {k} is {arr[k]}")
    return arr


def _real_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a float64 array if it holds real numbers (Python or NumPy ints and
    floats); text, booleans and other objects are a ``ValueError`` naming ``name``."""
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError):
        raw = None
    if raw is None or raw.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a number or a 1-D array of numbers, got "
                         f"{value!r:.80}")
    return raw.astype(np.float64)


def _range_text(low, high, low_open, high_open) -> str:
    if low is None and high is None:
        return ""
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f" {'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"


def schedule(name: str, value: Any, steps: int, *, low: float, high: float | None = None,
             high_open: bool = False) -> np.ndarray:
    """A float or a per-step array, returned as a float64 array of length ``steps``.

    An array longer than ``steps`` is truncated; a shorter one is an error.  Text (``"0.1"``)
    and booleans are refused, not converted.
    """
    arr = _real_array(name, value)
    if arr.ndim == 0:
        arr = np.full(steps, float(arr))
    elif arr.ndim != 1:
        raise ValueError(f"{name} must be a float or a 1-D per-step array, got shape {arr.shape}")
    elif arr.shape[0] < steps:
        raise ValueError(f"{name} schedule has {arr.shape[0]} entries but steps={steps}; "
                         f"it must have at least {steps}")
    arr = arr[:steps]
    rng = _range_text(low, high, False, high_open)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite{rng}; got a non-finite entry")
    bad = arr < low
    if high is not None:
        bad |= (arr >= high) if high_open else (arr > high)
    if np.any(bad):
        k = int(np.argmax(bad))
        raise ValueError(f"{name} must be in{rng}; entry {k} is {arr[k]}")
    return np.ascontiguousarray(arr)


def vector(name: str, value: Any, dim: int | None = None) -> np.ndarray:
    """A finite 1-D float64 vector, of length ``dim`` when given."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"{name} has length {arr.shape[0]} but the problem dimension is {dim}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got non-finite entries")
    return np.ascontiguousarray(arr)


def square_matrix(name: str, value: Any, dim: int | None = None, *, symmetric: bool = True,
                  psd: bool = False) -> np.ndarray:
    """A finite square float64 matrix; optionally symmetric and positive semi-definite."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"{name} is {arr.shape[0]}x{arr.shape[0]} but the dimension is {dim}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    scale = max(1.0, float(np.max(np.abs(arr)))) if arr.size else 1.0
    if symmetric and not np.allclose(arr, arr.T, atol=1e-12 * scale, rtol=0):
        raise ValueError(f"{name} must be symmetric")
    if psd and arr.size:
        lam_min = float(np.linalg.eigvalsh(0.5 * (arr + arr.T)).min())
        if lam_min < -1e-10 * scale:
            raise ValueError(f"{name} must be positive semi-definite; smallest eigenvalue {lam_min:.3g}")
    return np.ascontiguousarray(arr)


def psd_sqrt(name: str, cov: np.ndarray) -> np.ndarray:
    """Symmetric square root S of a PSD matrix (S S^T = cov), computed once by eigh."""
    cov = square_matrix(name, cov, psd=True)
    lam, vec = np.linalg.eigh(0.5 * (cov + cov.T))
    lam = np.clip(lam, 0.0, None)
    return np.ascontiguousarray((vec * np.sqrt(lam)) @ vec.T)


def position(what: str, names: Sequence[str], key: Any) -> int:
    """The position of ``key`` in ``names``: ``key`` is a name or a position in
    ``[-len(names), len(names))``; ``ValueError`` naming ``what`` and the names otherwise."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        if not -len(names) <= key < len(names):
            raise ValueError(f"{what} position must be in [{-len(names)}, {len(names)}), got {key}")
        return int(key) % len(names)
    if not isinstance(key, str) or key not in names:
        raise ValueError(f"{what} must be one of {tuple(names)} or a position, got {key!r}")
    return list(names).index(key)
