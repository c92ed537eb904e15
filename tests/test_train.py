"""The training engine (sdeverify.train): gradients, backends, batches, fit, results."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import sdeverify as sv
from sdeverify.train import MLP, TrainResult, fit, from_arrays, teacher_student
from sdeverify.train import cpu, reference
from sdeverify.train.batches import BatchSampler
from sdeverify.train.datasets import cifar10
from sdeverify.schedules import svag_weights
from fake_data import write_fake_cifar

SMALL = [(act, loss) for act in ("relu", "tanh") for loss in ("cross_entropy", "squared")]


@pytest.fixture(scope="module")
def data():
    return teacher_student(n=96, dim=5, classes=3, hidden=8, seed=3)


def _stack(model, R, J, seed=1):
    W0 = np.tile(model.init(seed, R), (J, 1))
    return W0, np.zeros_like(W0)


@pytest.mark.parametrize("act,loss", SMALL)
def test_gradient_matches_central_differences(act, loss, data):
    """Hand-written backward pass vs central differences of the mean loss (+ λ‖w‖²/2)."""
    m = MLP([5, 7, 6, 3], act, loss, weight_decay=0.03)
    W = m.init(7, 2) + 0.05          # nonzero biases
    X = np.broadcast_to(data.X_train[:11], (2, 11, 5))
    y = np.broadcast_to(data.y_train[:11], (2, 11))
    _, G = reference.loss_and_grad(m, W, X, y)

    def f(w):
        L, _ = reference.loss_and_grad(m, w, X, y)
        return L + 0.5 * m.weight_decay * np.sum(w * w, axis=1)

    h = 1e-6
    rs = np.random.default_rng(0)
    for p in rs.choice(m.n_params, 40, replace=False):
        e = np.zeros_like(W)
        e[:, p] = h
        fd = (f(W + e) - f(W - e)) / (2 * h)
        np.testing.assert_allclose(G[:, p], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("act,loss", SMALL)
def test_cpu_backend_matches_numpy_reference_after_100_steps(act, loss, data):
    """float64: every weight within 1e-12 relative after 100 steps (SGD, SGDM, heavy ball,
    per-step lr and β, weight decay, SVAG's two-batch gradient)."""
    m = MLP([5, 7, 6, 3], act, loss, weight_decay=0.01)
    J, R, S = 3, 2, 100
    W0, M0 = _stack(m, R, J)
    idx = BatchSampler(5, data.n_train, 9, np.arange(R), "shuffle", slots=2).indices(0, S)
    k = np.arange(S)
    a = np.stack([np.zeros(S), 0.9 - 0.3 * k / S, np.full(S, 0.8)])
    b = np.stack([np.ones(S), 0.1 + 0.3 * k / S, np.r_[1.0, np.full(S - 1, 0.7)]])
    g = np.stack([0.2 * np.ones(S), 0.1 + 0.1 * np.cos(k), np.full(S, 0.05)])
    r = np.array(svag_weights(3))
    outs = []
    for T in (reference.Trainer, cpu.Trainer):
        t = T(m, data.X_train, data.y_train, J, R)
        t.set_state(W0, M0)
        bl = t.train(idx, a, b, g, r)
        outs.append((t.get_state(), bl, t.evaluate(data.X_test, data.y_test),
                     t.gradients(t.W, data.X_train[:13], data.y_train[:13])))
    (w1, m1), bl1, ev1, g1 = outs[0]
    (w2, m2), bl2, ev2, g2 = outs[1]
    assert np.max(np.abs(w1 - w2) / (1 + np.abs(w1))) <= 1e-12
    assert np.max(np.abs(m1 - m2) / (1 + np.abs(m1))) <= 1e-12
    np.testing.assert_allclose(bl2, bl1, rtol=1e-12)
    np.testing.assert_allclose(ev2[0], ev1[0], rtol=1e-12)
    np.testing.assert_array_equal(ev2[1], ev1[1])
    np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-14)
    assert np.abs(w1 - W0).max() > 1e-2          # it did train


def test_update_is_the_optim_coefficients(data):
    """One SGDM step by hand: m = β m + (1 − β) g, w = w − η m, g from loss_and_grad."""
    m = MLP([5, 4, 3], "tanh", weight_decay=0.02)
    W0 = m.init(0, 1)
    idx = [np.arange(8)[None, None, :]]
    t = cpu.Trainer(m, data.X_train, data.y_train, 1, 1)
    t.set_state(W0, np.zeros_like(W0))
    c = sv.SGDM(0.3, 0.7).coefficients(1, m.n_params)
    t.train(idx, c.a[None], c.b[None], c.gamma[None], np.array([1.0]))
    _, G = reference.loss_and_grad(m, W0, data.X_train[None, :8], data.y_train[None, :8])
    np.testing.assert_allclose(t.W, W0 - 0.3 * (0.3 * G), rtol=1e-13)


def test_batches_shuffle_epochs_and_shards():
    s = BatchSampler(9, 50, 8, np.arange(3), "shuffle")
    idx = s.indices(0, 6)[0]                      # one epoch = 50 // 8 = 6 steps
    for r in range(3):
        seen = idx[:, r].ravel()
        assert len(np.unique(seen)) == 48         # without replacement within the epoch
    assert not np.array_equal(idx[:, 0], idx[:, 1])
    shard = BatchSampler(9, 50, 8, np.arange(1, 3), "shuffle").indices(0, 6)[0]
    np.testing.assert_array_equal(shard, idx[:, 1:])
    later = s.indices(6, 7)[0]
    assert not np.array_equal(later[0], idx[0])   # a new permutation each epoch
    rep = BatchSampler(9, 50, 8, np.arange(2), "replacement", slots=2).indices(3, 5)
    assert rep[0].shape == (2, 2, 8) and not np.array_equal(rep[0], rep[1])
    assert rep[0].min() >= 0 and rep[0].max() < 50


def test_replacement_sampling_is_uniform():
    """Counts of 20 000 with-replacement draws over 10 rows: chi-square at level 1e-4."""
    from scipy import stats
    idx = BatchSampler(2, 10, 100, np.arange(20), "replacement").indices(0, 10)[0]
    counts = np.bincount(idx.ravel(), minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_init_scale_and_keys():
    m = MLP([200, 300, 10], "relu")
    W = m.init(4, 2)
    (W0, b0), (W1, _) = m.unflatten(W[0])
    # sample std of 60 000 normals: relative sem ≈ 0.3%; 5-sigma band
    assert abs(W0.std() / np.sqrt(2 / 200) - 1) < 0.015
    assert abs(W1.std() / np.sqrt(2 / 300) - 1) < 0.05
    assert not b0.any()
    np.testing.assert_array_equal(m.init(4, 1, replica_offset=1)[0], W[1])
    g = MLP([200, 300, 10], "tanh").init(4, 1)
    assert abs(MLP([200, 300, 10], "tanh").unflatten(g[0])[0][0].std() / np.sqrt(2 / 500) - 1) < 0.015


def test_fit_common_random_numbers_and_shards(data):
    """SGDM with β = 0 is SGD: same initial weights and batches give bitwise equal runs;
    two replica shards merge into the one-run result bitwise."""
    m = MLP([5, 8, 3])
    opts = [sv.SGD(0.3), sv.SGDM(0.3, 0.0, name="SGDM0"), sv.SGDM(0.3, 0.9)]
    kw = dict(batch_size=16, steps=24, seed=11, eval_every=8, metrics=("train_loss", "test_acc", "grad_sqnorm"))
    full = fit(m, data, opts, replicas=4, **kw)
    np.testing.assert_array_equal(full.values[0], full.values[1])
    assert not np.array_equal(full.values[0], full.values[2])
    a = fit(m, data, opts, replicas=1, replica_offset=0, **kw)
    b = fit(m, data, opts, replicas=3, replica_offset=1, **kw)
    merged = b.merge(a)
    np.testing.assert_array_equal(merged.values, full.values)
    np.testing.assert_array_equal(merged.batch_loss, full.batch_loss)
    c = fit(m, data, opts, replicas=3, replica_offset=1, **dict(kw, seed=12))
    with pytest.raises(ValueError, match="seed"):
        a.merge(c)
    with pytest.raises(ValueError, match="consecutive"):
        a.merge(fit(m, data, opts, replicas=1, replica_offset=2, **kw))
    d, s = full.paired("SGDM", "train_loss")
    v = full.values[2, :, :, 0] - full.values[0, :, :, 0]
    np.testing.assert_allclose(d, v.mean(axis=1))
    np.testing.assert_allclose(s, v.std(axis=1, ddof=1) / 2)


def test_fit_backends_agree_and_float32(data):
    m = MLP([5, 8, 3], "tanh")
    kw = dict(batch_size=16, steps=20, seed=2, replicas=2, eval_every=10,
              metrics=("train_loss", "test_loss", "sharpness"), sharpness_iters=5)
    opts = [sv.SGD(0.2), sv.SGDM(0.2, 0.9)]
    r64 = fit(m, data, opts, backend="cpu", **kw)
    rnp = fit(m, data, opts, backend="numpy", **kw)
    np.testing.assert_allclose(r64.values, rnp.values, rtol=1e-9)
    r32 = fit(m, data, opts, backend="cpu", dtype="float32", **kw)
    np.testing.assert_allclose(r32.values[..., :2], r64.values[..., :2], rtol=1e-4)
    np.testing.assert_allclose(r32.values[..., 2], r64.values[..., 2], rtol=0.05)


def test_sharpness_of_a_linear_squared_model_is_exact():
    """A 1-layer squared-loss model is linear least squares: its Hessian per output is
    XᵀX/n (+ λ), so the power iteration must find the top eigenvalue of that matrix."""
    rs = np.random.default_rng(1)
    X = rs.normal(size=(64, 4)) * np.array([3.0, 1.0, 0.5, 0.2])
    y = rs.integers(0, 2, 64)
    d = from_arrays(X, y, standardize=False, test_fraction=0.25)
    m = MLP([4, 2], loss="squared", weight_decay=0.1)
    res = fit(m, d, sv.SGD(0.01), batch_size=8, steps=1, metrics=("sharpness",),
              sharpness_samples=48, sharpness_iters=60, eval_steps=[0])
    Xa = np.c_[d.X_train[:48], np.ones(48)]
    exact = np.linalg.eigvalsh(Xa.T @ Xa / 48).max() + 0.1
    np.testing.assert_allclose(res.values[0, 0, 0, 0], exact, rtol=1e-5)


def test_gradient_noise_estimates_are_unbiased_on_a_known_model():
    """Squared loss on a 1-layer model at w = 0: per-sample gradients are known exactly, so
    tr Σ and |∇L|² estimated from 8 chunks must match the population values on average."""
    from sdeverify.train.training import gradient_noise
    rs = np.random.default_rng(5)
    X = rs.normal(size=(4096, 3)) + 1.0
    y = rs.integers(0, 2, 4096)
    m = MLP([3, 2], loss="squared")
    t = reference.Trainer(m, X, y, 1, 1)
    t.set_state(np.zeros((1, m.n_params)), np.zeros((1, m.n_params)))
    per = []
    for i in range(4096):                                   # exact per-sample gradients
        e = np.zeros(2)
        e[y[i]] = 1.0
        per.append(np.concatenate([np.outer(X[i], -e).ravel(), -e]))
    per = np.array(per)
    est = np.array([gradient_noise(t, X[i * 256:(i + 1) * 256], y[i * 256:(i + 1) * 256]) for i in range(16)])
    tr_true = np.trace(np.cov(per.T))
    g2_true = np.sum(per.mean(axis=0) ** 2)
    for k, true in ((1, tr_true), (0, g2_true)):
        mu, se = est[:, k, 0].mean(), est[:, k, 0].std(ddof=1) / 4
        assert abs(mu - true) < 4 * se + 0.02 * true, (k, mu, se, true)


def test_svag_step_is_the_def_6_1_combination(data):
    """ℓ = 1 SVAG is plain training; ℓ = 4 runs 4× the steps at lr/4 with r₁, r₂."""
    r = np.array(svag_weights(4))
    assert np.isclose(r.sum(), 1) and np.isclose((r ** 2).sum(), 4)
    m = MLP([5, 6, 3])
    kw = dict(batch_size=8, steps=6, seed=1, replicas=2, eval_every=3, metrics=("train_loss",))
    plain = fit(m, data, [sv.SGD(0.1)], **kw)
    one = fit(m, data, [sv.SGD(0.1)], svag=1, **kw)
    np.testing.assert_array_equal(plain.values, one.values)
    four = fit(m, data, [sv.SGD(0.1), sv.SGDM(0.1, 0.9)], svag=4, **kw)
    assert four.batch_loss.shape[-1] == 24 and list(four.eval_steps) == [0, 3, 6]


def test_save_load_roundtrip(tmp_path, data):
    res = fit(MLP([5, 4, 3]), data, [sv.SGD(0.1), sv.SGDM(0.1, 0.9)], batch_size=8, steps=4,
              replicas=2, keep_weights=True)
    p = res.save(tmp_path / "run")
    back = TrainResult.load(p)
    np.testing.assert_array_equal(back.values, res.values)
    np.testing.assert_array_equal(back.weights, res.weights)
    assert back.optimizers == res.optimizers and back.meta["fingerprint"] == res.meta["fingerprint"]
    assert (tmp_path / "run.json").exists() and not list(tmp_path.glob(".*"))


def test_divergence_is_reported_and_excluded(data):
    m = MLP([5, 8, 3])
    opts = [sv.SGD(0.1), sv.SGD(300.0, name="huge")]
    with pytest.warns(sv.DivergenceWarning, match="huge"):
        res = fit(m, data, opts, batch_size=16, steps=30, replicas=3, eval_every=10)
    assert [d.optimizer for d in res.divergence] == ["huge"]
    mean, _ = res.series("huge", "train_loss")
    assert np.isnan(mean[-1]) and np.isfinite(res.series("SGD", "train_loss")[0]).all()
    assert "DIVERGED huge" in res.summary()
    with pytest.raises(sv.DivergenceError):
        fit(m, data, opts, batch_size=16, steps=30, on_divergence="raise")


def test_bad_input_is_a_clear_error(data):
    m = MLP([5, 4, 3])
    ok = dict(batch_size=8, steps=2)
    with pytest.raises(ValueError, match="activation"):
        MLP([5, 4, 3], activation="gelu")
    with pytest.raises(ValueError, match="widths"):
        MLP([5])
    with pytest.raises(ValueError, match="widths\\[1\\]"):
        MLP([5, 0, 3])
    with pytest.raises(ValueError, match="features"):
        fit(MLP([6, 4, 3]), data, sv.SGD(0.1), **ok)
    with pytest.raises(ValueError, match="batch_size"):
        fit(m, data, sv.SGD(0.1), batch_size=10 ** 6, steps=2)
    with pytest.raises(ValueError, match="exactly one of steps and epochs"):
        fit(m, data, sv.SGD(0.1), batch_size=8)
    with pytest.raises(ValueError, match="backend"):
        fit(m, data, sv.SGD(0.1), backend="tpu", **ok)
    with pytest.raises(ValueError, match="unique"):
        fit(m, data, [sv.SGD(0.1), sv.SGD(0.2)], **ok)
    with pytest.raises(ValueError, match="metrics"):
        fit(m, data, sv.SGD(0.1), metrics=("accuracy",), **ok)
    X = np.ones((10, 5))
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        from_arrays(X, np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="y_train must be in"):
        type(data)(data.X_train, data.y_train + 5, data.X_test, data.y_test, 3)
    with pytest.raises(ValueError, match="one label per row"):
        from_arrays(np.ones((10, 5)), np.zeros(9, dtype=int))


def test_cifar10_loader_on_a_fake_archive(tmp_path):
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    d = cifar10(tmp_path / "cifar-10-batches-py")
    assert d.X_train.shape == (30, 3072) and d.X_test.shape == (6, 3072) and d.n_classes == 10
    np.testing.assert_allclose(d.X_train.mean(axis=0), 0, atol=1e-12)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert d.y_train[:6].tolist() == list(raw[b"labels"])
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(ValueError, match="test_batch"):
        cifar10(tmp_path / "cifar-10-batches-py")


def test_digits_needs_the_extra_or_loads():
    from sdeverify.train import digits
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="sdeverify\\[data\\]"):
            digits()
        return
    d = digits()
    assert d.n_features == 64 and d.n_classes == 10 and d.n_train + d.X_test.shape[0] == 1797


def test_teacher_student_is_learnable_and_deterministic():
    d1 = teacher_student(n=512, dim=8, classes=4, seed=1, label_noise=0.0)
    d2 = teacher_student(n=512, dim=8, classes=4, seed=1, label_noise=0.0)
    np.testing.assert_array_equal(d1.X_train, d2.X_train)
    assert len(np.unique(d1.y_train)) == 4
    res = fit(MLP([8, 32, 4]), d1, sv.SGDM(0.5, 0.9), batch_size=32, epochs=8, replicas=2,
              metrics=("test_acc",))
    acc0, acc1 = res.series(0, "test_acc")[0][[0, -1]]
    assert acc1 > acc0 + 0.3 and acc1 > 0.7


def test_results_do_not_depend_on_the_thread_count(data):
    import numba
    m = MLP([5, 8, 3])
    kw = dict(batch_size=16, steps=10, replicas=3, seed=4, metrics=("train_loss", "test_acc"))
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fit(m, data, [sv.SGD(0.2), sv.SGDM(0.2, 0.9)], **kw)
    finally:
        numba.set_num_threads(n)
    many = fit(m, data, [sv.SGD(0.2), sv.SGDM(0.2, 0.9)], **kw)
    np.testing.assert_array_equal(one.values, many.values)
    np.testing.assert_array_equal(one.batch_loss, many.batch_loss)


def test_sharpness_finds_the_top_eigenvalue_not_the_largest_magnitude():
    """tanh network at a random point: the Lanczos estimate agrees with the top eigenvalue
    of the Hessian assembled column by column from exact-gradient differences."""
    d = teacher_student(n=64, dim=3, classes=2, hidden=4, seed=1)
    m = MLP([3, 4, 2], "tanh", "squared")
    res = fit(m, d, sv.SGD(0.0), batch_size=8, steps=1, metrics=("sharpness",), eval_steps=[0],
              sharpness_samples=40, sharpness_iters=m.n_params, seed=2)
    W = m.init(2, 1)
    X, y = np.broadcast_to(d.X_train[:40], (1, 40, 3)), np.broadcast_to(d.y_train[:40], (1, 40))
    H = np.empty((m.n_params, m.n_params))
    for p in range(m.n_params):
        e = np.zeros_like(W)
        e[0, p] = 1e-5
        H[p] = (reference.loss_and_grad(m, W + e, X, y)[1] - reference.loss_and_grad(m, W - e, X, y)[1])[0] / 2e-5
    ev = np.linalg.eigvalsh((H + H.T) / 2)
    np.testing.assert_allclose(res.values[0, 0, 0, 0], ev.max(), rtol=1e-4)


@pytest.mark.parametrize("act,loss", SMALL)
def test_exact_hvp_matches_differences_of_gradients(act, loss, data):
    """The R-operator HVP against central differences of the hand-written gradient (away
    from ReLU kinks: a random direction and a small step)."""
    m = MLP([5, 7, 6, 3], act, loss, weight_decay=0.02)
    W = m.init(3, 2) + 0.03
    X = np.broadcast_to(data.X_train[:17], (2, 17, 5))
    y = np.broadcast_to(data.y_train[:17], (2, 17))
    V = np.random.default_rng(1).normal(size=W.shape)
    h = 1e-6
    fd = (reference.loss_and_grad(m, W + h * V, X, y)[1] - reference.loss_and_grad(m, W - h * V, X, y)[1]) / (2 * h)
    np.testing.assert_allclose(reference.hvp(m, W, X, y, V), fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_cpu_backend_large_batch_matches_the_reference(act):
    """A large batch (GEMMs past the small-matrix paths of BLAS) agrees as well."""
    d = teacher_student(n=1600, dim=5, classes=3, hidden=6, seed=4)
    m = MLP([5, 9, 7, 3], act, weight_decay=0.01)
    B = 549
    W0, M0 = _stack(m, 2, 1)
    idx = BatchSampler(2, d.n_train, B, np.arange(2), "replacement").indices(0, 5)
    c = sv.SGDM(0.1, 0.9).coefficients(5, m.n_params)
    outs = []
    for T in (reference.Trainer, cpu.Trainer):
        t = T(m, d.X_train, d.y_train, 1, 2)
        t.set_state(W0, M0)
        outs.append((t.train(idx, c.a[None], c.b[None], c.gamma[None], np.array([1.0])), t.W))
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-12)
    assert np.max(np.abs(outs[1][1] - outs[0][1]) / (1 + np.abs(outs[0][1]))) <= 1e-12


def test_shards_with_different_schedules_do_not_merge():
    """The run fingerprint covers the lr schedule and the evaluation steps (a shard trained
    with another schedule must not merge silently)."""
    import sdeverify as sv
    from sdeverify.train import MLP, fit, teacher_student
    data = teacher_student(n=256, dim=4, classes=2, seed=1)
    kw = dict(batch_size=16, steps=6, replicas=1, seed=0, backend="numpy", metrics=("train_loss",))
    m = MLP([4, 8, 2])
    a = fit(m, data, sv.SGD(0.1), **kw)
    b = fit(m, data, sv.SGD(0.1), replica_offset=1, **kw)
    c = fit(m, data, sv.SGD(0.1), replica_offset=1, lr_schedule=np.linspace(1, 0.5, 6), **kw)
    d = fit(m, data, sv.SGD(0.1), replica_offset=1, eval_steps=[0, 6], **kw)
    assert a.merge(b).replicas == 2
    for other in (c, d):
        with pytest.raises(ValueError, match="lr_schedule|eval_steps"):
            a.merge(other)
