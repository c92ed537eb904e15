"""The trainer's instruments against independent references (what the Sec 6 verdicts rest on):
sharpness against known curvature and against the eigenvalues of a full finite-difference
Hessian, every metric against a recomputation when the evaluation subsamples the data, and the
minibatch samplers' distributions."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

import sdeverify as sv
from sdeverify.train import MLP, fit, minibatch_indices, teacher_student
from sdeverify.train import functional as F


@pytest.fixture(scope="module")
def data():
    return teacher_student(n=300, dim=4, classes=3, hidden=8, seed=7)


def test_sharpness_equals_the_known_curvature_of_a_linear_least_squares_model(data):
    """A linear model with squared loss ½|Wᵀx + b − e_y|²: the Hessian is I_C ⊗ (1/n) Σ x̃ x̃ᵀ
    (x̃ = (x, 1)) plus λ I, so its top eigenvalue is λmax((1/n) Σ x̃ x̃ᵀ) + λ, whatever W is."""
    lam = 0.03
    model = MLP([4, 3], loss="squared", weight_decay=lam)
    n = 200
    res = fit(model, data, [sv.SGD(0.05)], batch_size=20, steps=3, replicas=2,
              metrics=("sharpness",), sharpness_samples=n, sharpness_iters=20, backend="numpy")
    Xt = np.hstack([data.X_train[:n], np.ones((n, 1))])
    want = np.linalg.eigvalsh(Xt.T @ Xt / n).max() + lam
    got = res.values[0, :, :, 0]
    assert np.allclose(got, want, rtol=1e-9, atol=0), (got, want)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_sharpness_equals_the_top_eigenvalue_of_the_full_hessian(activation, data):
    """A tiny network (26 parameters): fit's Lanczos sharpness against numpy.linalg.eigvalsh of
    the Hessian assembled column by column from central differences of exact gradients."""
    model = MLP([4, 4, 3], activation=activation, weight_decay=0.01)
    n = 64
    res = fit(model, data, [sv.SGDM(0.3, 0.9)], batch_size=32, steps=40, replicas=1, seed=3,
              metrics=("sharpness",), sharpness_samples=n, sharpness_iters=26,
              keep_weights=True, eval_steps=[40], backend="numpy")
    w = res.weights[0, 0]
    X, y = data.X_train[:n], data.y_train[:n]
    P, h = w.size, 1e-5
    H = np.empty((P, P))
    for i in range(P):
        e = np.zeros(P)
        e[i] = h
        H[:, i] = (F.gradient(model, w + e, X, y) - F.gradient(model, w - e, X, y)) / (2 * h)
    want = np.linalg.eigvalsh((H + H.T) / 2).max()
    got = res.values[0, 0, 0, 0]
    assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (got, want)


def test_every_metric_against_a_recomputation_with_subsampled_evaluation(data):
    """eval_samples < n_train: train metrics on the first eval_samples rows, test metrics on the
    whole test set, the gradient-noise estimates from 8 chunks — recomputed from the recorded
    weights with sdeverify.train.functional (an independent path: no trainer code)."""
    model = MLP([4, 6, 3], weight_decay=0.0)
    ne = 40
    metrics = ("train_loss", "train_acc", "test_loss", "test_acc", "grad_sqnorm", "noise_trace")
    res = fit(model, data, [sv.SGD(0.2), sv.SGDM(0.2, 0.8)], batch_size=16, steps=12,
              replicas=2, seed=1, eval_steps=[0, 5, 12], record_weights=[0, 5, 12],
              metrics=metrics, eval_samples=ne, backend="cpu")
    Xe, ye = data.X_train[:ne], data.y_train[:ne]
    for j in range(2):
        for e in range(3):
            W = res.weight_history[j, e]                          # (R, P)
            want = {
                "train_loss": F.loss(model, W, Xe, ye),
                "train_acc": (F.predict(model, W, Xe) == ye).mean(axis=1),
                "test_loss": F.loss(model, W, data.X_test, data.y_test),
                "test_acc": (F.predict(model, W, data.X_test) == data.y_test).mean(axis=1)}
            c = ne // 8
            g = np.stack([F.gradient(model, W, Xe[i * c:(i + 1) * c], ye[i * c:(i + 1) * c])
                          for i in range(8)])                     # (8, R, P)
            tr_sigma = c * ((g - g.mean(0)) ** 2).sum(axis=(0, 2)) / 7
            want["noise_trace"] = tr_sigma
            want["grad_sqnorm"] = (g.mean(0) ** 2).sum(axis=1) - tr_sigma / (8 * c)
            for k, m in enumerate(metrics):
                assert np.allclose(res.values[j, e, :, k], want[m], rtol=1e-10, atol=1e-12), m


def test_sampling_with_replacement_is_uniform_chi_square_with_stated_power(data):
    """Row frequencies over 400 steps x 3 replicas x B = 32 (38 400 draws of 225 rows): Pearson's
    χ² against uniform, at level 1e-3.  Power: a sampler that over-draws 10% of the rows by a
    factor 1.5 gives a noncentrality of n·Σ(p−q)²/q ≈ 133, detected with probability > 0.999 —
    computed below from the noncentral χ², and shown by planting exactly that bias."""
    n, B, S, R = data.n_train, 32, 400, 3
    idx = minibatch_indices(data, B, S, replicas=R, seed=11, sampling="replacement")
    counts = np.bincount(idx.ravel(), minlength=n)
    N = counts.sum()
    p_value = sps.chisquare(counts).pvalue
    assert p_value > 1e-3, p_value
    q = np.full(n, 1.0 / n)
    p = q.copy()
    p[: n // 10] *= 1.5
    p /= p.sum()
    nc = N * np.sum((p - q) ** 2 / q)
    crit = sps.chi2.ppf(1 - 1e-3, n - 1)
    power = sps.ncx2.sf(crit, n - 1, nc)
    assert power > 0.999, power
    biased = np.random.default_rng(0).multinomial(N, p)            # the planted bias
    assert sps.chisquare(biased).pvalue < 1e-3


def test_shuffle_sampling_is_a_permutation_per_epoch_and_replica(data):
    n, B = data.n_train, 16
    spe = n // B
    idx = minibatch_indices(data, B, 3 * spe, replicas=2, seed=5, sampling="shuffle")[:, 0]
    for r in range(2):
        epochs = idx[:, r].reshape(3, spe * B)
        for e in range(3):
            assert len(np.unique(epochs[e])) == spe * B               # no row twice in an epoch
        assert not np.array_equal(epochs[0], epochs[1])              # a new permutation per epoch
    assert not np.array_equal(idx[:, 0], idx[:, 1])                  # replicas differ
    steps = (n // (2 * B)) // 2                  # SVAG'd steps (2 of each) within one epoch
    svag = minibatch_indices(data, B, steps, replicas=1, seed=5, svag=2)
    rows = svag[:, :, 0].reshape(-1)
    assert rows.size == 4 * steps * B and len(np.unique(rows)) == rows.size   # B1, B2 disjoint


def test_the_printed_95_percent_interval_covers_95_percent_at_4_replicas():
    """TrainResult.summary's "±" over 4 replicas: coverage of the true mean in 2000 simulated
    repeats (normal replica values) is ≥ 94% (the t quantile 3.18; 1.96 covers ~86%)."""
    import re
    from sdeverify.train import TrainResult
    g = np.random.default_rng(0)
    n_rep, hits, trials = 4, 0, 2000
    for _ in range(trials):
        v = g.normal(0.5, 0.1, size=(1, 1, n_rep, 1))
        res = TrainResult(("SGD",), ("test_acc",), np.array([0]), v, np.zeros((1, n_rep, 0)),
                          np.full((1, n_rep), -1))
        mu, half = map(float, re.findall(r"([-\d.e]+) ± ([-\d.e]+)", res.summary())[0])
        hits += abs(mu - 0.5) <= half
    cover = hits / trials
    assert 0.94 <= cover <= 0.97, cover
