"""The trainer's own correctness, checked inside the Sec 6 checks (method verdicts).

The verdicts of ``train_batch_size`` and ``train_svag`` compare trained networks; they mean
something only if the trainer computes the right gradient, pairs the optimizers of a replica
on the same (augmented) minibatches, and implements SVAG's two-minibatch gradient (Def 6.1).
Each is checked here on a tiny BatchNorm ResNet (ResNet-8, 4-8-16 channels, 8×8 images, weight
decay, augmentation), on the backend the check trains on, against a reference that shares no
code with the trainer's backward pass or update:

* **gradient**: one plain SGD step with γ = 1 from weights w₀ on one minibatch gives the
  trainer's gradient g = w₀ − w₁ (BatchNorm in training mode, weight decay included); it is
  compared, along 5 random directions u, with central differences of the *forward* loss
  L(w) + ½λ|mask·w|² on the same rows (h = 1e-7, float64): the median relative error ≤ 1e-5
  (the median, because a step that happens to cross a ReLU kink spoils one direction's
  difference quotient — seen on 2 of 30 seeds with h = 1e-5 and the largest error — while a
  wrong gradient term spoils them all).
* **pairing**: two identical SGDM optimizers trained in one launch with augmentation end with
  bitwise equal weights after 6 steps (the common random numbers every paired difference of
  the checks rests on).
* **SVAG noise per unit time**: from one w₀ (all replicas), the spread of w after one un-SVAG'd
  step at ℓ = 4 (4 steps of η/4 with the gradient r₁g(B₁) + r₂g(B₂), r₁² + r₂² = 4) over the
  spread at ℓ = 1: tr Cov ratio ≈ 1 (Def 6.1 keeps the noise per unit time; a second minibatch
  that repeats the first would give 1/ℓ = 0.25).  Rule: the 99% bootstrap interval over 48
  replicas (paired by replica) inside [1/2, 2] — halfway, on the log scale, between 1/ℓ and 1,
  and symmetric around 1.
"""
from __future__ import annotations

import numpy as np

from ..optim import SGD, SGDM
from ..rng import substream
from ..stats import Interval
from ..train import conv_teacher, fit, minibatch_indices, resnet
from ..train import conv_reference
from .base import Verdict

GRAD_TOL = 1e-5
GRAD_STEP, GRAD_DIRECTIONS = 1e-7, 5
SVAG_ELL, SVAG_REPLICAS, SVAG_BAND = 4, 48, (0.5, 2.0)


def _tiny():
    data = conv_teacher(n=256, size=8, classes=4, seed=3)
    model = resnet(8, width=0.25, image_size=8, classes=4, weight_decay=5e-3)
    return data, model


def gradient_error(seed: int, backend: str) -> float:
    """Median relative error of the trainer's directional derivatives (see module doc)."""
    data, model = _tiny()
    w0 = model.init(seed, 1)[0]
    B = 32
    res = fit(model, data, SGD(1.0), batch_size=B, steps=1, replicas=1, seed=seed,
              init_weights=w0, keep_weights=True, backend=backend, dtype="float64",
              metrics=("train_loss",), eval_steps=[1], on_divergence="ignore")
    g = w0 - res.weights[0, 0]
    rows = minibatch_indices(data, B, 1, replicas=1, seed=seed)[0, 0, 0]
    X, y = data.X_train[rows][None], data.y_train[rows][None]
    mask = model.decay_mask() * model.weight_decay

    def L(w):
        loss = conv_reference.loss_and_grad(model, w[None], X, y, decay=False)[0][0]
        return loss + 0.5 * float(np.sum(mask * w * w))

    rs = np.random.default_rng(substream(seed, "train_method.gradient", 0) % 2**32)
    errors = []
    for _ in range(GRAD_DIRECTIONS):
        u = rs.normal(size=w0.size)
        u /= np.linalg.norm(u)
        fd = (L(w0 + GRAD_STEP * u) - L(w0 - GRAD_STEP * u)) / (2 * GRAD_STEP)
        errors.append(abs(fd - g @ u) / max(abs(fd), 1e-12))
    return float(np.median(errors))


def pairing_difference(seed: int, backend: str) -> float:
    """Largest |w(opt a) − w(opt b)| of two identical SGDM optimizers of one launch."""
    data, model = _tiny()
    res = fit(model, data, [SGDM(0.2, 0.9, name="a"), SGDM(0.2, 0.9, name="b")], batch_size=32,
              steps=6, replicas=2, seed=seed, augment=True, keep_weights=True, backend=backend,
              dtype="float64", metrics=("train_loss",), eval_steps=[6], on_divergence="ignore")
    return float(np.max(np.abs(res.weights[0] - res.weights[1])))


def svag_noise_ratio(seed: int, backend: str) -> Interval:
    """tr Cov(w after one unit of time, ℓ = 4) / tr Cov(ℓ = 1) across replicas from one w₀,
    with a 99% percentile bootstrap interval (resampling replicas, paired)."""
    data, model = _tiny()
    R = SVAG_REPLICAS
    w0 = np.repeat(model.init(seed, 1), R, axis=0)
    kw = dict(batch_size=16, steps=1, replicas=R, seed=seed, init_weights=w0, keep_weights=True,
              backend=backend, dtype="float64", metrics=("train_loss",), eval_steps=[1],
              on_divergence="ignore")
    ends = [fit(model, data, SGD(0.01), svag=ell, **kw).weights[0] - w0[0] for ell in (1, SVAG_ELL)]
    return spread_ratio(ends[1], ends[0], substream(seed, "train_method.svag", 0))


def spread_ratio(a: np.ndarray, b: np.ndarray, stream: int, scale: float = 1.0) -> Interval:
    """tr Cov(a) / (scale · tr Cov(b)) of two ``(replicas, n)`` stacks of displacements paired
    by replica (row), with a 99% percentile bootstrap interval (400 resamples of the replicas,
    drawn from ``stream``)."""
    R = a.shape[0]

    def ratio(rows):
        return float(np.sum(np.var(a[rows], axis=0, ddof=1))
                     / (scale * np.sum(np.var(b[rows], axis=0, ddof=1))))

    rs = np.random.default_rng(stream % 2**32)
    boot = np.array([ratio(rs.integers(0, R, R)) for _ in range(400)])
    lo, hi = np.quantile(boot, [0.005, 0.995])
    return Interval(ratio(np.arange(R)), float(lo), float(hi), 0.99)


def verdicts(seed: int, backend: str) -> list[Verdict]:
    """The three method verdicts (see the module docstring)."""
    from ..verdict import Value
    err = gradient_error(seed, backend)
    diff = pairing_difference(seed, backend)
    ratio = svag_noise_ratio(seed, backend)
    lo, hi = SVAG_BAND
    return [
        Verdict("(method) the trainer's gradient of a BatchNorm ResNet with weight decay equals "
                "central differences of its forward loss", "(method)",
                f"relative error <= {GRAD_TOL:g}", Value(err), err <= GRAD_TOL,
                f"median relative error over {GRAD_DIRECTIONS} random directions (h = {GRAD_STEP:g}, "
                "float64)", GRAD_TOL),
        Verdict("(method) the optimizers of a replica train on the same augmented minibatches",
                "(method; common random numbers)", "two identical SGDM runs end bitwise equal",
                Value(diff), diff == 0.0, "max |w_a - w_b| after 6 steps with augmentation == 0", 0.0),
        Verdict(f"(method) SVAG keeps the gradient noise per unit time (l = {SVAG_ELL})",
                "Def 6.1", f"tr Cov ratio (l = {SVAG_ELL} over l = 1) = 1; a reused minibatch "
                f"gives 1/l = {1 / SVAG_ELL:g}", ratio, lo <= ratio.low and ratio.high <= hi,
                f"99% bootstrap interval over {SVAG_REPLICAS} replicas inside [{lo:g}, {hi:g}]"),
    ]
