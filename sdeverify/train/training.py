"""``fit``: train replicas × optimizers of one network in one launch (Sec 6 experiments).

The entry point of heavy-batch training, in the style of :func:`sdeverify.simulate`:
every optimizer of a replica starts from the same weights and sees the same minibatches at
every step (common random numbers), so SGD-vs-SGDM differences are paired across replicas.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .. import rng
from ..result import versions
from ..simulate import DivergenceError, DivergenceWarning
from ..validation import nonneg_int, positive_int
from .batches import SAMPLING, BatchSampler
from .blas_threads import single_threaded
from .datasets import Dataset
from .models import MLP, STREAM_PROBE
from .result import METRICS, TrainResult

__all__ = ["BACKENDS", "DEFAULT_METRICS", "DIVERGENCE_FACTOR", "NOISE_CHUNKS", "fit",
           "svag_weights", "report_divergence", "gradient_noise", "sharpness"]

BACKENDS = ("cpu", "numpy", "cuda")
DEFAULT_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")
#: a replica diverges at the first step whose minibatch loss is non-finite or exceeds
#: DIVERGENCE_FACTOR × max(1, its loss at step 0), or whose evaluated loss is non-finite.
DIVERGENCE_FACTOR = 1e3
NOISE_CHUNKS = 8


def _backend(name: str):
    if name == "cpu":
        from . import cpu as mod
    elif name == "numpy":
        from . import reference as mod
    else:
        from . import cuda as mod
    return mod.Trainer


def svag_weights(ell: int) -> np.ndarray:
    """SVAG's (r₁, r₂) of Def. 6.1: r₁ + r₂ = 1, r₁² + r₂² = ℓ."""
    s = np.sqrt(2.0 * ell - 1.0)
    return np.array([(1.0 + s) / 2.0, (1.0 - s) / 2.0])


def _svag_optimizer(opt, ell: int, multiplier: np.ndarray | None, steps: int):
    """``opt`` with its lr multiplied by ``multiplier`` and, for ℓ > 1, SVAG's schedule: each
    step's lr η_k becomes ℓ steps of η_k/ℓ, and each per-step β/momentum is repeated ℓ times."""
    changes = {}
    for f in dataclasses.fields(opt):
        if f.name not in ("lr", "beta", "momentum"):
            continue
        v = getattr(opt, f.name)
        arr = np.asarray(v, dtype=np.float64)
        arr = np.full(steps, float(arr)) if arr.ndim == 0 else arr[:steps]
        if arr.shape[0] < steps:
            raise ValueError(f"{opt.name}: {f.name} has {arr.shape[0]} entries, fewer than steps={steps}")
        if f.name == "lr":
            if multiplier is not None:
                arr = arr * multiplier
            arr = arr / ell
        changes[f.name] = np.repeat(arr, ell)
    return dataclasses.replace(opt, **changes)


def _eval_steps(steps: int, eval_every, eval_steps) -> np.ndarray:
    if eval_steps is not None:
        e = np.unique(np.asarray(eval_steps, dtype=np.int64))
        if e.size == 0 or e[0] < 0 or e[-1] > steps:
            raise ValueError(f"eval_steps must be step indices in [0, {steps}], got {eval_steps!r}")
        return e
    if eval_every is not None:
        every = positive_int("eval_every", eval_every)
        return np.unique(np.append(np.arange(0, steps + 1, every), steps))
    return np.unique(np.linspace(0, steps, 11).round().astype(np.int64))


def fit(model: MLP, data: Dataset, optimizers: Sequence[Any] | Any, *, batch_size: int,
        steps: int | None = None, epochs: int | None = None, replicas: int = 1, seed: int = 0,
        lr_schedule: np.ndarray | Callable[[int], np.ndarray] | None = None, svag: int = 1,
        sampling: str = "shuffle", eval_every: int | None = None,
        eval_steps: ArrayLike | None = None,
        metrics: Sequence[str] = DEFAULT_METRICS, eval_samples: int = 2048,
        sharpness_samples: int = 1024, sharpness_iters: int = 20, backend: str = "cpu",
        dtype: str = "float64", replica_offset: int = 0, on_divergence: str = "warn",
        keep_weights: bool = False, progress: Callable[[int, int], None] | None = None,
        executor: Any = None) -> TrainResult:
    """Train ``replicas`` independent runs of ``model`` on ``data`` with every optimizer.

    Parameters
    ----------
    model : an :class:`~sdeverify.train.MLP`; its input width must match the data.
    data : a :class:`~sdeverify.train.Dataset` (``teacher_student()``, ``digits()``,
        ``from_arrays(X, y)``, ``cifar10(folder)``).
    optimizers : ``SGD`` / ``SGDM`` / ``HeavyBall`` instances (or one), applied to the flat
        parameter vector exactly as in :mod:`sdeverify.optim` (``m = a m + b g,
        w = w − γ m``); lr and β may be per-step arrays.
    batch_size : minibatch size B (≤ the training set).
    steps, epochs : length of the run (one of them); ``epochs`` counts ``n_train // B``
        steps per epoch.
    replicas : independent runs (seeds of initial weights and batches), trained together.
    seed : 64-bit seed; replica r's weights and batches are keyed by (seed, replica_offset + r).
    lr_schedule : per-step multiplier of every optimizer's lr (e.g.
        :func:`sdeverify.train.goyal_multiplier`), or a function ``steps -> array``.
    svag : SVAG's ℓ (Def. 6.1): the gradient is r₁ g(B₁) + r₂ g(B₂) on two independent
        minibatches, the lr η/ℓ and the run ℓ× longer; evaluations stay at the same times
        (``eval_steps`` count un-SVAG'd steps).  ℓ = 1 is plain training.
    sampling : "shuffle" (epochs without replacement, default) or "replacement".
    eval_every, eval_steps : when to evaluate (default 11 evenly spaced, start and end included).
    metrics : any of ``train_loss``, ``train_acc`` (on the first ``eval_samples`` training
        rows), ``test_loss``, ``test_acc`` (whole test set), ``grad_sqnorm`` and
        ``noise_trace`` (|∇L|² and tr Σ of the per-sample gradient covariance, estimated from
        8 chunks of the ``eval_samples`` rows; their ratio is the gradient-noise scale) and
        ``sharpness`` (top Hessian eigenvalue by ``sharpness_iters`` Lanczos steps on exact
        Hessian–vector products on the first ``sharpness_samples`` rows;
        compare with the stability edges 2/η of SGD and 2(1+β)/((1−β)η) of EMA SGDM).
    backend : "cpu" (Numba), "numpy" (reference) or "cuda" (numba.cuda).
    dtype : "float64" or "float32".
    replica_offset : first global replica index of this shard (shards merge exactly).
    on_divergence : "warn", "raise" or "ignore".  A replica diverges at the first step whose
        minibatch loss is non-finite or exceeds ``DIVERGENCE_FACTOR`` (1e3) × max(1, its
        step-0 loss), or at an evaluation whose loss is non-finite; it is excluded from all
        statistics from then on.
    keep_weights : keep the final flat weights ``(n_opt, replicas, P)``.
    progress : called as ``progress(done, total)`` after each evaluation.
    executor : a ``distributed.Client`` or a Session (:class:`sdeverify.distributed.Session`;
        ``pip install 'sdeverify[dist]'``): the replicas are cut into shards that train on its workers and are merged exactly
        (:mod:`sdeverify.distributed`; ``progress`` is then not called).  Default None: train
        here, unless inside ``sdeverify.distributed.use(client)``, which sends every call.

    Returns
    -------
    TrainResult
        Per optimizer, evaluation step, replica and metric the evaluated values, the
        minibatch loss of every step, each replica's divergence step (−1: none), optionally
        the final weights, and ``meta`` (the arguments, the run's fingerprint, wall time,
        versions); statistics over replicas exclude diverged ones.
    """
    if executor is None:
        from ..distributed import active
        executor = active()
    if executor is not None:
        from .. import distributed
        return distributed.fit(
            model, data, optimizers, executor=executor, batch_size=batch_size, steps=steps,
            epochs=epochs, replicas=replicas, seed=seed, lr_schedule=lr_schedule, svag=svag,
            sampling=sampling, eval_every=eval_every, eval_steps=eval_steps, metrics=metrics,
            eval_samples=eval_samples, sharpness_samples=sharpness_samples,
            sharpness_iters=sharpness_iters, backend=backend, dtype=dtype,
            replica_offset=replica_offset, on_divergence=on_divergence, keep_weights=keep_weights)
    t_start = time.perf_counter()
    spec = _validate(model, data, optimizers, batch_size, steps, epochs, replicas, seed, svag,
                     sampling, metrics, eval_samples, sharpness_samples, sharpness_iters, backend,
                     dtype, replica_offset, on_divergence)
    opts, steps, ell = spec["optimizers"], spec["steps"], spec["svag"]
    mult = None
    if lr_schedule is not None:
        mult = lr_schedule(steps) if callable(lr_schedule) else lr_schedule
        mult = np.asarray(mult, dtype=np.float64)
        if mult.shape != (steps,) or not np.all(np.isfinite(mult)) or np.any(mult < 0):
            raise ValueError(f"lr_schedule must give {steps} finite non-negative multipliers, "
                             f"got shape {mult.shape}")
    total = steps * ell
    ev = _eval_steps(steps, eval_every, eval_steps)
    run_opts = [_svag_optimizer(o, ell, mult, steps) for o in opts]
    P = model.n_params
    coefs = [o.coefficients(total, P) for o in run_opts]
    a = np.stack([c.a for c in coefs])
    b = np.stack([c.b for c in coefs])
    gamma = np.stack([c.gamma for c in coefs])
    # everything that determines the numbers: the per-step coefficients (lr, beta, schedule,
    # SVAG) exactly, not only the optimizers' reprs, and the evaluation steps
    run_spec = dict(spec["spec"], coefficients=_digest(a, b, gamma, *[c.m0 for c in coefs]),
                    lr_schedule=None if mult is None else _digest(mult), eval_steps=ev.tolist())
    spec["meta"].update(spec=run_spec, fingerprint=_fingerprint(run_spec))
    J, R = len(opts), replicas
    reps = np.arange(R, dtype=np.int64) + replica_offset
    W0 = model.init(seed, R, replica_offset, dtype)
    W = np.tile(W0, (J, 1))
    Mom = np.concatenate([np.tile(c.m0, (R, 1)) for c in coefs]).astype(dtype)
    Trainer = _backend(backend)
    tr = Trainer(model, data.X_train, data.y_train, J, R, dtype)
    tr.set_state(W, Mom)
    slots = 1 if ell == 1 else 2
    r = np.array([1.0]) if ell == 1 else svag_weights(ell)
    sampler = BatchSampler(seed, data.n_train, batch_size, reps, sampling, slots)
    n_e = min(eval_samples, data.n_train)
    Xe, ye = data.X_train[:n_e], data.y_train[:n_e]
    values = np.full((J, len(ev), R, len(metrics)), np.nan)
    batch_loss = np.empty((J, R, total))
    k = 0

    def train_until(k_end: int) -> int:
        kk = k
        while kk < k_end:                    # segments of bounded index memory
            k1 = min(k_end, kk + max(1, 2 ** 24 // (R * batch_size * slots)))
            idx = sampler.indices(kk, k1)
            bl = tr.train(idx, a[:, kk:k1], b[:, kk:k1], gamma[:, kk:k1], r)
            batch_loss[:, :, kk:k1] = bl.T.reshape(J, R, k1 - kk)
            kk = k1
        return kk

    for e, step in enumerate(ev):
        k = train_until(int(step) * ell)
        values[:, e] = _evaluate(tr, model, data, metrics, Xe, ye, seed, reps, sharpness_samples,
                                 sharpness_iters).reshape(J, R, len(metrics))
        if progress is not None:
            progress(e + 1, len(ev))
    k = train_until(total)                   # the run always has all its steps
    div = _divergence(batch_loss, values, metrics, ev * ell)
    weights = tr.get_state()[0].reshape(J, R, P) if keep_weights else None
    meta = dict(spec["meta"], eval_steps=ev.tolist(), wall_time=time.perf_counter() - t_start,
                versions=versions())
    res = TrainResult(tuple(o.name for o in opts), tuple(metrics), ev, values, batch_loss, div,
                      weights, meta)
    report_divergence(res, on_divergence, stacklevel=3)
    return res


def report_divergence(res: TrainResult, on_divergence: str, stacklevel: int = 2) -> None:
    """Warn about (or raise for) diverged replicas of ``res``."""
    if res.divergence and on_divergence != "ignore":
        msg = "training diverged: " + "; ".join(map(str, res.divergence)) + \
              " (excluded from the statistics from then on)"
        if on_divergence == "raise":
            raise DivergenceError(msg)
        warnings.warn(msg, DivergenceWarning, stacklevel=stacklevel)


def _divergence(batch_loss, values, metrics, ev_total) -> np.ndarray:
    J, R, S = batch_loss.shape
    div = np.full((J, R), -1, dtype=np.int64)
    if S:
        thr = DIVERGENCE_FACTOR * np.maximum(1.0, np.abs(batch_loss[:, :, :1]))
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(batch_loss) | (batch_loss > thr)
        first = np.where(bad.any(axis=2), bad.argmax(axis=2), -1)
        div = np.where(first >= 0, first, div)
    loss_cols = [i for i, m in enumerate(metrics) if m in ("train_loss", "test_loss")]
    if loss_cols:
        badv = ~np.isfinite(values[..., loss_cols]).all(axis=-1)          # (J, E, R)
        for j in range(J):
            for rr in range(R):
                hit = np.nonzero(badv[j, :, rr])[0]
                if hit.size:
                    s = int(ev_total[hit[0]])
                    div[j, rr] = s if div[j, rr] < 0 else min(div[j, rr], s)
    return div


def _evaluate(tr, model, data, metrics, Xe, ye, seed, reps, n_sharp, iters) -> np.ndarray:
    """Metrics of every model, ``(M, n_metrics)``."""
    M = tr.J * tr.R
    out = np.full((M, len(metrics)), np.nan)
    col = {m: i for i, m in enumerate(metrics)}
    with np.errstate(all="ignore"):
        if "train_loss" in col or "train_acc" in col:
            ls, cr = tr.evaluate(Xe, ye)
            if "train_loss" in col:
                out[:, col["train_loss"]] = ls / len(ye)
            if "train_acc" in col:
                out[:, col["train_acc"]] = cr / len(ye)
        if "test_loss" in col or "test_acc" in col:
            ls, cr = tr.evaluate(data.X_test, data.y_test)
            if "test_loss" in col:
                out[:, col["test_loss"]] = ls / data.X_test.shape[0]
            if "test_acc" in col:
                out[:, col["test_acc"]] = cr / data.X_test.shape[0]
        if "grad_sqnorm" in col or "noise_trace" in col:
            g2, tr_sigma = gradient_noise(tr, Xe, ye)
            if "grad_sqnorm" in col:
                out[:, col["grad_sqnorm"]] = g2
            if "noise_trace" in col:
                out[:, col["noise_trace"]] = tr_sigma
        if "sharpness" in col:
            n = min(n_sharp, data.n_train)
            out[:, col["sharpness"]] = sharpness(tr, data.X_train[:n], data.y_train[:n], seed,
                                                 reps, iters)
    return out


def gradient_noise(tr: Any, X: np.ndarray, y: np.ndarray,
                   chunks: int = NOISE_CHUNKS) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased estimates of |∇L|² and tr Σ (covariance of one sample's gradient) from the
    gradients ``g_i`` of ``chunks`` equal chunks of ``(X, y)`` (size c each, n = chunks·c):
    tr Σ ≈ c · Σ|g_i − ḡ|²/(chunks − 1),  |∇L|² ≈ |ḡ|² − tr Σ / n.  ``tr`` is a trainer of
    one backend (``sdeverify.train.reference.Trainer`` or its Numba / CUDA counterparts),
    evaluated at its current weights; returns both estimates per model, shape (models,)."""
    W, _ = tr.get_state()
    c = X.shape[0] // chunks
    if c < 1:
        raise ValueError(f"the gradient-noise estimate needs at least {chunks} evaluation samples")
    gs = np.stack([tr.gradients(W, X[i * c:(i + 1) * c], y[i * c:(i + 1) * c]).astype(np.float64)
                   for i in range(chunks)])
    gbar = gs.mean(axis=0)
    tr_sigma = c * np.sum((gs - gbar) ** 2, axis=(0, 2)) / (chunks - 1)
    return np.sum(gbar ** 2, axis=1) - tr_sigma / (chunks * c), tr_sigma


def sharpness(tr: Any, X: np.ndarray, y: np.ndarray, seed: int, reps: np.ndarray,
              iters: int) -> np.ndarray:
    """Top (largest algebraic) Hessian eigenvalue of the training objective on ``(X, y)``
    per model, by ``iters`` Lanczos steps on exact Hessian–vector products
    (:func:`sdeverify.train.reference.hvp_operator`, Pearlmutter's R-operator, float64 on the host
    whatever the backend), started from a Philox vector keyed by the replica; returns the
    largest Ritz value per model, shape (models,).  ``tr`` is a trainer as for
    :func:`gradient_noise`; ``reps`` the global replica indices of its replicas.  (Plain
    Lanczos, no reorthogonalisation: memory O(models × params); lost orthogonality only
    duplicates converged Ritz values, it does not bias the largest.)"""
    from .reference import hvp_operator
    W, _ = tr.get_state()
    W = W.astype(np.float64)
    M, P = W.shape
    q = rng.draws_numpy(rng.NORMAL, seed, np.tile(reps, M // len(reps)), 0, STREAM_PROBE, P)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    Xs = np.ascontiguousarray(np.broadcast_to(np.asarray(X, dtype=np.float64), (M,) + X.shape))
    ys = np.ascontiguousarray(np.broadcast_to(np.asarray(y, dtype=np.int64), (M, X.shape[0])))
    with single_threaded():      # many small products: OpenBLAS threads only contend
        return _lanczos_top(hvp_operator(tr.model, W, Xs, ys), q, iters)


def _lanczos_top(hvp_of, q: np.ndarray, iters: int) -> np.ndarray:
    """Largest Ritz value per row of ``iters`` plain Lanczos steps from unit vectors ``q``."""
    M = q.shape[0]
    alpha, beta = np.zeros((M, iters)), np.zeros((M, iters))
    q_prev = np.zeros_like(q)
    b_prev = np.zeros(M)
    alive = np.ones(M, dtype=bool)
    steps = np.zeros(M, dtype=np.int64)
    for k in range(iters):
        hv = hvp_of(q)
        a = np.sum(q * hv, axis=1)
        r = hv - a[:, None] * q - b_prev[:, None] * q_prev
        b = np.linalg.norm(r, axis=1)
        alpha[alive, k] = a[alive]
        beta[alive, k] = b[alive]
        steps[alive] += 1
        alive &= np.isfinite(b) & (b > 1e-10 * np.maximum(1.0, np.abs(a)))
        q_prev, b_prev = q, b
        q = r / np.where(b > 0, b, 1.0)[:, None]
    lam = np.full(M, np.nan)
    for m in range(M):
        n = steps[m]
        T = np.diag(alpha[m, :n]) + np.diag(beta[m, :n - 1], 1) + np.diag(beta[m, :n - 1], -1)
        if n and np.all(np.isfinite(T)):
            lam[m] = np.linalg.eigvalsh(T).max()
    return lam


def _validate(model, data, optimizers, batch_size, steps, epochs, replicas, seed, svag,
              sampling, metrics, eval_samples, sharpness_samples, sharpness_iters, backend,
              dtype, replica_offset, on_divergence) -> dict:
    if not isinstance(model, MLP):
        raise ValueError(f"model must be an sdeverify.train.MLP, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be an sdeverify.train.Dataset (teacher_student(), digits(), "
                         f"from_arrays(X, y), cifar10(folder)), got {type(data).__name__}")
    if model.n_inputs != data.n_features:
        raise ValueError(f"model input width widths[0]={model.n_inputs} does not match the "
                         f"data's {data.n_features} features")
    if model.n_classes < data.n_classes:
        raise ValueError(f"model has {model.n_classes} outputs but the data has "
                         f"{data.n_classes} classes")
    opts = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
    if not opts:
        raise ValueError("optimizers must hold at least one SGD/SGDM/HeavyBall instance")
    for o in opts:
        if not hasattr(o, "coefficients") or not dataclasses.is_dataclass(o):
            raise ValueError(f"optimizers must be SGD/SGDM/HeavyBall instances, got {o!r}")
        if not isinstance(o.name, str) or not o.name:
            raise ValueError(f"optimizer names must be non-empty strings, got {o.name!r}")
    names = [o.name for o in opts]
    if len(set(names)) != len(names):
        raise ValueError(f"optimizer names must be unique (pass name=...), got {names}")
    B = positive_int("batch_size", batch_size)
    if B > data.n_train:
        raise ValueError(f"batch_size must be <= the training set size {data.n_train}, got {B}")
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    steps = positive_int("steps", steps) if steps is not None \
        else positive_int("epochs", epochs) * (data.n_train // B)
    R = positive_int("replicas", replicas)
    seed = nonneg_int("seed", seed)
    if seed >= 2 ** 64:
        raise ValueError(f"seed must be < 2**64, got {seed}")
    ell = positive_int("svag", svag)
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    if ell > 1 and 2 * B > data.n_train:
        raise ValueError(f"svag > 1 draws two minibatches per step: 2*batch_size={2 * B} exceeds "
                         f"the training set ({data.n_train})")
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must be distinct names from {METRICS}, got {list(metrics)}")
    n_e = positive_int("eval_samples", eval_samples)
    if ("grad_sqnorm" in metrics or "noise_trace" in metrics) and min(n_e, data.n_train) < NOISE_CHUNKS:
        raise ValueError(f"eval_samples must be >= {NOISE_CHUNKS} for the gradient-noise metrics")
    positive_int("sharpness_samples", sharpness_samples)
    positive_int("sharpness_iters", sharpness_iters)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    off = nonneg_int("replica_offset", replica_offset)
    if off + R > 2 ** 32:
        raise ValueError(f"replica_offset + replicas must be <= 2**32, got {off + R}")
    if on_divergence not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_divergence must be 'warn', 'raise' or 'ignore', got {on_divergence!r}")
    spec = dict(model=model.describe(), data=data.name, data_fingerprint=data.fingerprint(),
                optimizers=[repr(o) for o in opts], batch_size=B, steps=steps, seed=seed,
                svag=ell, sampling=sampling, metrics=list(metrics), eval_samples=n_e,
                sharpness=[sharpness_samples, sharpness_iters], backend=backend, dtype=dtype)
    meta = dict(spec, replicas=R, replica_offset=off)
    return dict(optimizers=opts, steps=steps, svag=ell, meta=meta, spec=spec)


def _fingerprint(spec: dict) -> str:
    """SHA-256 (16 hex digits) of a run's specification: replica shards merge only when it
    agrees (:meth:`TrainResult.merge`)."""
    import hashlib
    import json
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _digest(*arrays: np.ndarray) -> str:
    import hashlib
    h = hashlib.sha256()
    for x in arrays:
        h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]
