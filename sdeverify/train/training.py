"""``fit``: train replicas × optimizers of one network in one launch (Sec 6 experiments).

The entry point of heavy-batch training, in the style of :func:`sdeverify.simulate`:
every optimizer of a replica starts from the same weights and sees the same minibatches at
every step (common random numbers), so SGD-vs-SGDM differences are paired across replicas.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .. import rng
from ..optim import SGD
from ..result import versions
from ..schedules import svag_weights
from ..simulate import DivergenceError, DivergenceWarning
from . import backends
from .batches import BatchSampler
from . import augment
from .blas_threads import single_threaded
from .datasets import Dataset
from .convnet import ResNet
from .models import MLP, STREAM_PROBE
from .result import TrainResult
from .spec import DEFAULT_METRICS, NOISE_CHUNKS, TrainSpec

__all__ = ["DIVERGENCE_FACTOR", "fit", "run", "minibatch_indices", "report_divergence",
           "gradient_noise", "sharpness"]

#: a replica diverges at the first step whose minibatch loss, or evaluated train/test loss,
#: is non-finite or exceeds DIVERGENCE_FACTOR × max(1, its minibatch loss at step 0), at an
#: evaluation where any metric is non-finite, or at the end if its final weights are.
DIVERGENCE_FACTOR = 1e3


def _state_args(init_weights, init_momentum, start_step, resume, record_weights,
                init_buffers) -> bool:
    """Whether a call starts from a given state or records weights (not sharded yet)."""
    return any(x is not None for x in (init_weights, init_momentum, resume, record_weights,
                                       init_buffers)) or bool(start_step)


def minibatch_indices(data: Dataset, batch_size: int, steps: int, *, replicas: int = 1,
                      seed: int = 0, sampling: str = "shuffle", svag: int = 1,
                      replica_offset: int = 0, start_step: int = 0) -> np.ndarray:
    """The rows of the minibatches ``fit`` trains on, ``(steps·svag, slots, replicas, B)``
    int64 (``slots`` = 1, or 2 under SVAG: its two minibatches B₁, B₂ of Def. 6.1): step
    ``k`` of a run with these arguments (SVAG'd steps, from global step ``start_step``)
    draws rows ``[k, s, r]`` of ``data.X_train`` for replica ``r`` — the same for every
    optimizer and backend (:mod:`sdeverify.train.batches`)."""
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be an sdeverify.train.Dataset, got {type(data).__name__}")
    # any model that accepts the data: only the sampling matters
    if data.X_train.ndim == 4:
        c, h, _ = data.X_train.shape[1:]
        probe = ResNet(8, 1 / 16, "A", max(2, data.n_classes), c, h)
    else:
        probe = MLP([data.n_features, max(2, data.n_classes)])
    spec = TrainSpec.build(probe, data, SGD(0.0), batch_size=batch_size, steps=steps,
                           replicas=replicas, seed=seed, sampling=sampling, svag=svag,
                           replica_offset=replica_offset, start_step=start_step,
                           backend="numpy", metrics=("train_loss",))
    sampler = _sampler(spec)
    k0 = spec.start_step * spec.svag
    idx = sampler.indices(k0, k0 + spec.steps * spec.svag)
    return np.stack(idx, axis=1)


def _sampler(spec: TrainSpec) -> BatchSampler:
    return BatchSampler(spec.seed, spec.data.n_train, spec.batch_size, spec.replica_indices,
                        spec.sampling, 1 if spec.svag == 1 else 2)


def fit(model: Any, data: Dataset, optimizers: Sequence[Any] | Any, *, batch_size: int,
        steps: int | None = None, epochs: int | None = None, replicas: int = 1, seed: int = 0,
        lr_schedule: np.ndarray | Callable[[int], np.ndarray] | None = None, svag: int = 1,
        sampling: str = "shuffle", eval_every: int | None = None,
        eval_steps: ArrayLike | None = None,
        metrics: Sequence[str] = DEFAULT_METRICS, eval_samples: int = 2048,
        sharpness_samples: int = 1024, sharpness_iters: int = 20, backend: str = "cpu",
        dtype: str = "float64", replica_offset: int = 0, on_divergence: str = "warn",
        keep_weights: bool = False, progress: bool | Callable[[int, int], None] | None = None,
        executor: Any = None, record_weights: ArrayLike | None = None,
        init_weights: ArrayLike | None = None, init_momentum: ArrayLike | None = None,
        start_step: int = 0, resume: TrainResult | None = None, augment: bool = False,
        init_buffers: ArrayLike | None = None) -> TrainResult:
    """Train ``replicas`` independent runs of ``model`` on ``data`` with every optimizer.

    Parameters
    ----------
    model : a network description (:class:`~sdeverify.train.MLP`); its input must match the data.
    data : a :class:`~sdeverify.train.Dataset` (``teacher_student()``, ``digits()``,
        ``from_arrays(X, y)``, ``cifar10(folder)``).
    optimizers : optimizer schemes (or one) — ``SGD`` / ``SGDM`` / ``HeavyBall`` or any object
        with ``coefficients(steps, dim)`` (:class:`sdeverify.optim.OptimizerScheme`, exactly
        what :func:`sdeverify.simulate` accepts), applied to the flat parameter vector as
        ``m = a m + b g, w = w − γ m``; schedules and SVAG act on these coefficients.
    batch_size : minibatch size B (≤ the training set).
    steps, epochs : length of the run (one of them); ``epochs`` counts ``n_train // B``
        steps per epoch.
    replicas : independent runs (seeds of initial weights and batches), trained together.
    seed : 64-bit seed; replica r's weights and batches are keyed by (seed, replica_offset + r).
    lr_schedule : per-step multiplier of every optimizer's step size γ_k (e.g.
        :func:`sdeverify.train.goyal_multiplier`), or a function ``steps -> array``; with
        ``start_step`` it covers ``start_step + steps`` steps and the tail is used.
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
        minibatch loss, or evaluated train/test loss (the final evaluation included), is
        non-finite or exceeds ``DIVERGENCE_FACTOR`` (1e3) × max(1, its step-0 minibatch loss),
        at an evaluation where any metric is non-finite, or at the end if its final weights
        are non-finite; it is excluded from all statistics from then on.
    keep_weights : keep the final flat weights and momentum buffers ``(n_opt, replicas, P)``
        (``res.weights``, ``res.momentum``).
    progress : True for a progress bar over the evaluations (tqdm on stderr, only when it is a
        terminal), or a function called as ``progress(done, total)`` after each evaluation.
    executor : a ``distributed.Client`` or a Session (:class:`sdeverify.distributed.Session`;
        ``pip install 'sdeverify[dist]'``): the replicas are cut into shards that train on its workers and are merged exactly
        (:mod:`sdeverify.distributed`; ``progress`` is then not called).  Default None: train
        here, unless inside ``sdeverify.distributed.use(client)``, which sends every call that
        starts from scratch (a call given a state — init_weights, resume, … — trains here).
    record_weights : steps (in ``[0, steps]``, un-SVAG'd) after which to record every model's
        weights: ``res.weight_history`` ``(n_opt, len, replicas, P)`` at ``res.weight_steps``.
    init_weights, init_momentum : start from these weights — ``(P,)``, ``(replicas, P)`` or
        ``(n_opt, replicas, P)`` — and momentum buffers ``(n_opt, replicas, P)`` instead of the
        model's initialisation and the schemes' m₀.
    start_step : the global step this call starts at: optimizer schedules, ``lr_schedule``
        and minibatches continue from there (with ``init_*``, a run continued exactly).
    resume : a :class:`TrainResult` of the same run made with ``keep_weights=True``: continue
        it for ``steps`` more steps (= its final state and step as ``init_*``/``start_step``);
        the two parts together equal one longer run bitwise.
    augment : train on randomly cropped (4-pixel zero padding) and flipped images, the
        parameters keyed by (seed, replica, epoch, row) (:mod:`sdeverify.train.augment`): every
        backend and every optimizer of a replica sees the same images.  Image data only.
    init_buffers : a model's state besides its weights (BatchNorm running statistics),
        ``(n_opt, replicas, n_buffers)``; default the model's initial state.

    Returns
    -------
    TrainResult
        Per optimizer, evaluation step, replica and metric the evaluated values, the
        minibatch loss of every step, each replica's divergence step (−1: none), optionally
        the final weights and buffers, and ``meta`` (the arguments, the run's fingerprint, wall
        time, versions); statistics over replicas exclude diverged ones.  Evaluation and
        divergence steps are global (``start_step`` + the step of this call).
    """
    from .. import dispatch            # where the call runs: handed down by the caller
    stateful = _state_args(init_weights, init_momentum, start_step, resume, record_weights,
                           init_buffers)
    if executor is not None and stateful:
        raise ValueError("init_weights, init_momentum, start_step, resume and record_weights "
                         "train here only: pass executor=None (outside distributed.use)")
    if executor is None and not stateful:
        # a session's cluster (distributed.use) takes the plain calls; one that continues a
        # given state trains here, as it must (its state is not a cluster point)
        executor = dispatch.active()
    if executor is not None:
        return dispatch.run(
            "fit", executor, model, data, optimizers, batch_size=batch_size, steps=steps,
            epochs=epochs, replicas=replicas, seed=seed, lr_schedule=lr_schedule, svag=svag,
            sampling=sampling, eval_every=eval_every, eval_steps=eval_steps, metrics=metrics,
            eval_samples=eval_samples, sharpness_samples=sharpness_samples,
            sharpness_iters=sharpness_iters, backend=backend, dtype=dtype,
            replica_offset=replica_offset, on_divergence=on_divergence, keep_weights=keep_weights,
            augment=augment)
    t_start = time.perf_counter()
    spec = TrainSpec.build(
        model, data, optimizers, batch_size=batch_size, steps=steps, epochs=epochs,
        replicas=replicas, seed=seed, lr_schedule=lr_schedule, svag=svag, sampling=sampling,
        eval_every=eval_every, eval_steps=eval_steps, metrics=metrics, eval_samples=eval_samples,
        sharpness_samples=sharpness_samples, sharpness_iters=sharpness_iters, backend=backend,
        dtype=dtype, replica_offset=replica_offset, on_divergence=on_divergence,
        keep_weights=keep_weights, record_weights=record_weights, init_weights=init_weights,
        init_momentum=init_momentum, start_step=start_step, resume=resume, augment=augment,
        init_buffers=init_buffers)
    if progress is True:
        from ..progress import bar
        with bar(len(spec.eval_steps), "evaluations", unit="eval") as update:
            return run(spec, progress=update, t_start=t_start)
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be True, None or a function (done, total), "
                         f"got {progress!r}")
    return run(spec, progress=progress, t_start=t_start)


def run(spec: TrainSpec, *, progress: Callable[[int, int], None] | None = None,
        t_start: float | None = None) -> TrainResult:
    """Train a validated call (:class:`TrainSpec`) here, on its backend."""
    t_start = time.perf_counter() if t_start is None else t_start
    model, data, metrics = spec.model, spec.data, spec.metrics
    ell, K, ev = spec.svag, spec.steps, spec.eval_steps
    J, R, P, dtype = len(spec.optimizers), spec.replicas, int(model.n_params), spec.dtype
    total = K * ell
    coefs = spec.coefficients()
    a = np.stack([c.a for c in coefs])
    b = np.stack([c.b for c in coefs])
    gamma = np.stack([c.gamma for c in coefs])
    description = spec.describe(coefs)
    meta = dict(description, replicas=R, replica_offset=spec.replica_offset,
                start_step=spec.start_step, spec=description,
                fingerprint=TrainSpec.fingerprint_of(description))
    reps = spec.replica_indices
    if spec.init_weights is None:
        W = np.tile(model.init(spec.seed, R, spec.replica_offset, dtype), (J, 1))
    else:
        W = spec.init_weights.reshape(J * R, P).astype(dtype)
    if spec.init_momentum is None:
        Mom = np.concatenate([np.tile(c.m0, (R, 1)) for c in coefs]).astype(dtype)
    else:
        Mom = spec.init_momentum.reshape(J * R, P).astype(dtype)
    tr = backends.trainer_class(spec.backend, model)(model, data.X_train, data.y_train, J, R, dtype)
    if spec.init_buffers is None:
        tr.set_state(W, Mom)
    else:                                    # a model with state besides weights (BatchNorm)
        tr.set_state(W, Mom, spec.init_buffers.reshape(J * R, -1).astype(dtype))
    r = np.array(svag_weights(ell)[:1 if ell == 1 else 2])
    sampler = _sampler(spec)
    k_base = spec.start_step * ell           # the sampler's global (SVAG'd) step of local step 0
    n_e = min(spec.eval_samples, data.n_train)
    Xe, ye = data.X_train[:n_e], data.y_train[:n_e]
    values = np.full((J, len(ev), R, len(metrics)), np.nan)
    batch_loss = np.empty((J, R, total))
    rec = spec.record_steps
    history = None if rec is None else np.empty((J, len(rec), R, P), dtype=dtype)
    k = 0

    def train_until(k_end: int) -> int:
        kk = k
        while kk < k_end:                    # segments of bounded index memory
            k1 = min(k_end, kk + max(1, 2 ** 24 // (R * spec.batch_size * len(r))))
            idx = sampler.indices(k_base + kk, k_base + k1)
            if spec.augment:                 # crops and flips keyed by (seed, replica, epoch, row)
                epochs = (k_base + np.arange(kk, k1)) // sampler.steps_per_epoch
                aug = [augment.draw(spec.seed, reps, epochs, rows) for rows in idx]
                bl = tr.train(idx, a[:, kk:k1], b[:, kk:k1], gamma[:, kk:k1], r, aug=aug)
            else:
                bl = tr.train(idx, a[:, kk:k1], b[:, kk:k1], gamma[:, kk:k1], r)
            batch_loss[:, :, kk:k1] = bl.T.reshape(J, R, k1 - kk)
            kk = k1
        return kk

    stops = np.union1d(ev, rec) if rec is not None else ev
    for step in stops:
        k = train_until(int(step) * ell)
        if rec is not None and step in rec:
            history[:, int(np.searchsorted(rec, step))] = tr.get_state()[0].reshape(J, R, P)
        if step in ev:
            e = int(np.searchsorted(ev, step))
            values[:, e] = _evaluate(tr, model, data, metrics, Xe, ye, spec.seed, reps,
                                     spec.sharpness_samples, spec.sharpness_iters
                                     ).reshape(J, R, len(metrics))
            if progress is not None:
                progress(e + 1, len(ev))
    k = train_until(total)                   # the run always has all its steps
    state = tr.get_state()                   # (W, Mom) or, with BatchNorm, (W, Mom, buffers)
    div = _divergence(batch_loss, values, metrics, ev * ell,
                      final_weights=state[0].reshape(J, R, P))
    div = np.where(div >= 0, div + k_base, div)
    W_end, M_end = state[:2] if spec.keep_weights else (None, None)
    buffers = state[2].reshape(J, R, -1) if spec.keep_weights and len(state) > 2 else None
    meta.update(eval_steps=(ev + spec.start_step).tolist(),
                wall_time=time.perf_counter() - t_start, versions=versions())
    res = TrainResult(spec.names, tuple(metrics), ev + spec.start_step, values, batch_loss, div,
                      None if W_end is None else W_end.reshape(J, R, P), meta,
                      None if M_end is None else M_end.reshape(J, R, P),
                      None if rec is None else rec + spec.start_step, history, buffers)
    report_divergence(res, spec.on_divergence, stacklevel=4)
    return res


def report_divergence(res: TrainResult, on_divergence: str, stacklevel: int = 2) -> None:
    """Warn about (or raise for) diverged replicas of ``res``."""
    if res.divergence and on_divergence != "ignore":
        msg = "training diverged: " + "; ".join(map(str, res.divergence)) + \
              " (excluded from the statistics from then on)"
        if on_divergence == "raise":
            raise DivergenceError(msg)
        warnings.warn(msg, DivergenceWarning, stacklevel=stacklevel)


def _divergence(batch_loss, values, metrics, ev_total, final_weights=None) -> np.ndarray:
    """First (local, SVAG'd) step at which each replica diverged, ``(J, R)``, −1 if none.

    A replica diverges at the first step whose minibatch loss (``batch_loss (J, R, S)``,
    before the step) or evaluated ``train_loss``/``test_loss`` (``values (J, E, R, K)`` at
    steps ``ev_total``, the final evaluation included) is non-finite or exceeds
    ``DIVERGENCE_FACTOR`` × max(1, |its step-0 minibatch loss|), or at the first evaluation
    where any metric is non-finite, or — given its weights after the last step,
    ``final_weights (J, R, P)`` — at step S if they are non-finite."""
    J, R, S = batch_loss.shape
    div = np.full((J, R), -1, dtype=np.int64)
    thr = None
    if S:
        thr = DIVERGENCE_FACTOR * np.maximum(1.0, np.abs(batch_loss[:, :, 0]))     # (J, R)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(batch_loss) | (batch_loss > thr[:, :, None])
        first = np.where(bad.any(axis=2), bad.argmax(axis=2), -1)
        div = np.where(first >= 0, first, div)
    badv = ~np.isfinite(values).all(axis=-1)                                     # (J, E, R)
    loss_cols = [i for i, m in enumerate(metrics) if m in ("train_loss", "test_loss")]
    if loss_cols and thr is not None:
        with np.errstate(invalid="ignore"):
            badv |= (values[..., loss_cols] > thr[:, None, :, None]).any(axis=-1)

    def flag(j: int, rr: int, s: int) -> None:
        div[j, rr] = s if div[j, rr] < 0 else min(div[j, rr], s)

    for j, e, rr in zip(*np.nonzero(badv)):
        flag(j, rr, int(ev_total[e]))
    if final_weights is not None:
        for j, rr in zip(*np.nonzero(~np.isfinite(final_weights).all(axis=-1))):
            flag(j, rr, S)
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
    W = tr.get_state()[0]
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
    W = tr.get_state()[0].astype(np.float64)
    M, P = W.shape
    q = rng.draws_numpy(rng.NORMAL, seed, np.tile(reps, M // len(reps)), 0, STREAM_PROBE, P)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    if not isinstance(tr.model, MLP):        # no R-operator: differences of exact gradients
        with single_threaded():
            return _lanczos_top(difference_hvp(tr, W, X, y), q, iters)
    Xs = np.ascontiguousarray(np.broadcast_to(np.asarray(X, dtype=np.float64), (M,) + X.shape))
    ys = np.ascontiguousarray(np.broadcast_to(np.asarray(y, dtype=np.int64), (M, X.shape[0])))
    with single_threaded():      # many small products: OpenBLAS threads only contend
        return _lanczos_top(hvp_operator(tr.model, W, Xs, ys), q, iters)


def difference_hvp(tr: Any, W: np.ndarray, X: np.ndarray, y: np.ndarray, rel_step: float = 1e-4):
    """Hessian–vector products of the training objective by central differences of the
    trainer's exact gradients: H v ≈ (∇L(w + h v) − ∇L(w − h v)) / 2h for unit v, with
    h = ``rel_step`` · max(1, |w|) (error O(h²) relative, ~1e-8 in float64); for models whose
    backends have no R-operator (BatchNorm nets: the gradient is taken in training mode, batch
    statistics of ``X``)."""
    h = rel_step * np.maximum(1.0, np.linalg.norm(W, axis=1, keepdims=True))

    def apply(V: np.ndarray) -> np.ndarray:
        gp = tr.gradients(W + h * V, X, y).astype(np.float64)
        gm = tr.gradients(W - h * V, X, y).astype(np.float64)
        return (gp - gm) / (2.0 * h)
    return apply


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
