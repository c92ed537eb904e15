"""Shared set-up of the checks on trained networks (``train_batch_size``, ``train_svag``).

The paper's Sec 6 experiments (ResNet-50 on ImageNet, ResNet-32 on CIFAR-10) scaled down to
what two CPU cores train in a minute: a generated teacher–student classification set
(:func:`sdeverify.train.teacher_student`: 8192 samples, 32 features, 10 classes, a random
tanh teacher, 10% label noise; 25% held out as the test set), an MLP 32-128-10 (ReLU,
softmax cross-entropy), the same number of epochs at every batch size, Goyal et al.'s
recipe (linear lr scaling η_B = η_base·B/128, linear warm-up over the first 10% of the
steps, ×0.1 at 50% and 75%), β = 0.9, and SGD with the *same* η (EMA form: the averaged lr of
a constant-β schedule is η, Eq. 8).  The SGDM lr at each B is chosen from a small grid by
mean accuracy on a validation split carved out of the training set (never the test set):
the smallest lr within 0.5 points of the best.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as _st

from ..optim import SGD, SGDM
from ..rng import substream
from ..stats import Interval
from ..train import MLP, cifar10, digits, fit, goyal_multiplier, teacher_student

BETA = 0.9
BASE_BATCH = 128
LR_GRID = (0.2, 0.8, 3.2)          # η_base; the lr at batch B is η_base·B/128
SELECT_TOL = 0.005                 # validation accuracies within 0.5 points count as tied
METRICS = ("train_loss", "test_loss", "test_acc")


def dataset(n: int = 8192, source: str = "teacher_student"):
    """The checks' data: ``"teacher_student"`` (default, n samples), ``"digits"``
    (scikit-learn's 8×8 digits, needs ``sdeverify[data]``) or the path of a CIFAR-10
    python-version folder (the official train/test split)."""
    if source == "teacher_student":
        return teacher_student(n=n, dim=32, classes=10, hidden=64, label_noise=0.1, seed=0)
    if source == "digits":
        return digits()
    return cifar10(source)


def model(data=None) -> MLP:
    """MLP (inputs)-128-(classes), ReLU, softmax cross-entropy (32-128-10 on the default data)."""
    d_in, k = (32, 10) if data is None else (data.n_features, data.n_classes)
    return MLP([d_in, 128, k], "relu", "cross_entropy")


def usable_batches(data, batches) -> tuple:
    """The batch sizes that fit twice into the training part of the validation split (the
    lr selection trains on it: at least two steps per epoch); the default data fits the
    whole default grid (2·2048 ≤ 4915)."""
    n = data.split_validation(0.2, seed=1).n_train
    keep = tuple(b for b in batches if 2 * b <= n)
    if len(keep) < 3:
        raise ValueError(f"data {data.name!r} ({n} training samples after the validation split) "
                         f"fits fewer than 3 of the batch sizes {tuple(batches)} (need 2·B <= {n})")
    return keep


def steps_for(data, batch: int, epochs: int) -> int:
    return epochs * (data.n_train // batch)


def schedule(steps: int) -> np.ndarray:
    return goyal_multiplier(steps, max(1, steps // 10), (0.5, 0.75), 0.1)


def pair(lr: float, beta: float = BETA) -> list:
    return [SGD(lr, name="SGD"), SGDM(lr, beta, name="SGDM")]


def train(data, batch, lr, epochs, replicas, seed, *, opts=None, svag=1, metrics=METRICS,
          eval_steps=None, backend="cpu", **kw):
    steps = steps_for(data, batch, epochs)
    return fit(model(data), data, opts if opts is not None else pair(lr), batch_size=batch,
               steps=steps, replicas=replicas, seed=seed, lr_schedule=schedule(steps), svag=svag,
               metrics=metrics, eval_steps=[steps] if eval_steps is None else eval_steps,
               on_divergence="ignore", backend=backend, **kw)


def select_lr(data, batch, epochs, replicas, seed, backend="cpu") -> tuple[float, np.ndarray]:
    """The SGDM lr of ``LR_GRID`` (scaled by B/128) by mean validation accuracy: the smallest
    lr within ``SELECT_TOL`` (0.5 points) of the best — near-ties go to the smaller, more
    stable lr, so selection noise between indistinguishable lrs does not decide the regime.
    Returns (lr, validation accuracies per grid point).  Diverged replicas count as chance."""
    val = data.split_validation(0.2, seed=1)
    accs = []
    for base in LR_GRID:
        lr = base * batch / BASE_BATCH
        r = train(val, batch, lr, epochs, replicas, substream(seed, "train.select_lr"),
                  opts=[SGDM(lr, BETA, name="SGDM")], metrics=("test_acc",), backend=backend)
        v = np.where(r.valid[0, -1], r.values[0, -1, :, 0], 1.0 / data.n_classes)
        accs.append(float(np.mean(v)))
    accs = np.array(accs)
    best = int(np.flatnonzero(accs >= accs.max() - SELECT_TOL)[0])
    return LR_GRID[best] * batch / BASE_BATCH, accs


def t_interval(samples, level: float = 0.95) -> Interval:
    """Student-t interval of the mean of i.i.d. per-replica samples (few replicas: t, not z).
    A non-finite sample (a diverged replica) makes the interval NaN — never averaged in."""
    x = np.asarray(samples, dtype=np.float64)
    n = x.size
    m = float(np.mean(x))
    if n < 2 or not np.all(np.isfinite(x)):
        return Interval(m, float("nan"), float("nan"), level)
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * np.std(x, ddof=1) / np.sqrt(n))
    return Interval(m, m - half, m + half, level)


def final_accuracy(res, optimizer, n_classes: int = 10) -> tuple[np.ndarray, int]:
    """Per-replica test accuracy at the last evaluation, and the number of replicas that
    diverged: a diverged network is scored at chance, 1/n_classes (counted and reported,
    never hidden in an average of NaNs)."""
    v = res.values_of(optimizer, "test_acc")[-1]
    bad = ~np.isfinite(v)
    return np.where(bad, 1.0 / n_classes, v), int(bad.sum())


def plot_accuracies(ax, xs, data: dict, beta: float) -> None:
    """Test accuracy (95% t-intervals) of SGD and SGDM against ``xs`` (B or ℓ)."""
    for key, lab, fmt in (("acc_sgd", "SGD", "s--"), ("acc_sgdm", f"SGDM b={beta}", "o-")):
        _errorbar(ax, xs, [t_interval(v) for v in data[key]], fmt=fmt, label=lab)
    ax.legend(fontsize=8)


def plot_gaps(ax, xs, data: dict) -> None:
    """The paired gap acc(SGDM) − acc(SGD) (95% t-intervals) against ``xs``."""
    _errorbar(ax, xs, [t_interval(data["acc_sgdm"][i] - data["acc_sgd"][i]) for i in range(len(xs))],
              fmt="o-")
    ax.axhline(0, color="k", lw=0.6)


def _errorbar(ax, xs, ivs, **kw) -> None:
    m = np.array([iv.estimate for iv in ivs])
    ax.errorbar(xs, m, yerr=[m - [iv.low for iv in ivs], [iv.high for iv in ivs] - m], capsize=2, **kw)
