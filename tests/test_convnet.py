"""The CIFAR ResNet of the conv trainer: layer gradients against finite differences, the
initialisation, BatchNorm's running statistics, the Philox augmentation, the image data sets,
the ConvTrainer's state and SVAG rule, bad input, and (when torch is installed) parity with
torch.nn on 20 steps of torch.optim.SGD."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from sdeverify import rng
from sdeverify.optim import HeavyBall
from sdeverify.train import augment
from sdeverify.train import conv_reference as cr
from sdeverify.train.convnet import ResNet, resnet
from sdeverify.train.images import cifar10_images, conv_teacher, teacher_logits
from fake_data import write_fake_cifar

RS = np.random.default_rng(20240)


def _fd_check(f, x, grad, h=1e-5, rtol=1e-6, atol=1e-8):
    """Every entry of ``grad`` against central differences of the scalar ``f`` at ``x``."""
    fd = np.empty(x.size)
    flat = x.reshape(-1)
    for i in range(x.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        fd[i] = (fp - fm) / (2 * h)
    np.testing.assert_allclose(grad.reshape(-1), fd, rtol=rtol, atol=atol)


# ---- layers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 2, 0)])
def test_conv2d_backward_matches_central_differences(k, stride, pad):
    """dX (every entry, border pixels included: odd 5×5 images, zero padding) and dW."""
    X = RS.normal(size=(2, 2, 3, 5, 5))
    Wt = RS.normal(size=(2, 4, 3, k, k))
    out = cr.conv2d(X, Wt, stride, pad)
    assert out.shape == (2, 2, 4, 3 if stride == 2 else 5, 3 if stride == 2 else 5)
    D = RS.normal(size=out.shape)
    dX, dW = cr.conv2d_backward(D, X, Wt, stride, pad)
    f = lambda: np.sum(cr.conv2d(X, Wt, stride, pad) * D)
    _fd_check(f, X, dX)
    _fd_check(f, Wt, dW)


def test_conv2d_forward_is_the_textbook_sum():
    """One output entry written out as the sum over the zero-padded window."""
    X = RS.normal(size=(1, 1, 2, 5, 5))
    Wt = RS.normal(size=(1, 3, 2, 3, 3))
    out = cr.conv2d(X, Wt, 2, 1)
    Xp = np.pad(X[0, 0], ((0, 0), (1, 1), (1, 1)))
    for o, ho, wo in [(0, 0, 0), (2, 2, 1), (1, 1, 2)]:
        want = np.sum(Wt[0, o] * Xp[:, 2 * ho:2 * ho + 3, 2 * wo:2 * wo + 3])
        assert out[0, 0, o, ho, wo] == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm_backward_matches_central_differences(mode):
    x = RS.normal(size=(2, 3, 4, 3, 3)) * 2 + 1
    g, b = RS.normal(size=(2, 4)), RS.normal(size=(2, 4))
    rm, rv = RS.normal(size=(2, 4)), RS.uniform(0.5, 2, size=(2, 4))
    D = RS.normal(size=x.shape)

    def fwd():
        if mode == "train":
            return cr.batchnorm_train(x, g, b)[0], cr.batchnorm_train(x, g, b)[1]
        return cr.batchnorm_eval(x, g, b, rm, rv)

    y, cache = fwd()
    dx, dg, db = cr.batchnorm_backward(D, cache)
    f = lambda: np.sum(fwd()[0] * D)
    _fd_check(f, x, dx)
    _fd_check(f, g, dg)
    _fd_check(f, b, db)


def test_batchnorm_training_statistics_and_running_update():
    """Batch mean and *biased* variance normalise; the running variance takes the *unbiased*
    one (torch's rule, momentum 0.1)."""
    m = resnet(8, width=0.25, image_size=8)
    W = m.init(3, 2)
    X = RS.normal(size=(2, 3, 3, 8, 8))
    buf = m.init_buffers(2) + RS.uniform(0, 1, size=(2, m.n_buffers))
    _, _, new = cr.loss_and_grad(m, W, X, np.zeros((2, 3), dtype=np.int64), buf)
    c = cr.conv2d(X, m.unflatten(W)["conv1.weight"], 1, 1)
    mean, var = c.mean(axis=(1, 3, 4)), c.var(axis=(1, 3, 4), ddof=1)
    old, got = m.unflatten_buffers(buf), m.unflatten_buffers(new)
    np.testing.assert_allclose(got["bn1.running_mean"], 0.9 * old["bn1.running_mean"] + 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(got["bn1.running_var"], 0.9 * old["bn1.running_var"] + 0.1 * var, rtol=1e-12)
    y = cr.batchnorm_train(c, np.ones((2, 4)), np.zeros((2, 4)))[0]
    np.testing.assert_allclose(y.mean(axis=(1, 3, 4)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(1, 3, 4)), c.var(axis=(1, 3, 4)) / (c.var(axis=(1, 3, 4)) + 1e-5),
                               rtol=1e-12)


def test_shortcut_a_is_subsample_and_centred_zero_pad():
    x = RS.normal(size=(1, 2, 4, 5, 5))
    s = cr.shortcut_a(x, 8)
    assert s.shape == (1, 2, 8, 3, 3)
    np.testing.assert_array_equal(s[:, :, 2:6], x[:, :, :, ::2, ::2])
    assert not s[:, :, :2].any() and not s[:, :, 6:].any()
    d = RS.normal(size=s.shape)            # adjoint: <A x, d> = <x, A* d>
    assert np.sum(s * d) == pytest.approx(np.sum(x * cr.shortcut_a_backward(d, x.shape)), rel=1e-13)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("train,norm", [(True, True), (False, True), (True, False)])
def test_resnet8_gradient_matches_central_differences(shortcut, train, norm):
    """The whole ResNet-8 (2 models, 2 images of 3×8×8, width 0.25) on a random direction,
    weight decay on the conv/linear weights only; BN in training or evaluation mode, or no BN
    (``norm=False``)."""
    m = resnet(8, width=0.25, shortcut=shortcut, image_size=8, weight_decay=0.05, norm=norm)
    W = m.init(1, 2) + 0.01 * RS.normal(size=(2, m.n_params))
    X = RS.normal(size=(2, 2, 3, 8, 8))
    y = np.array([[1, 7], [3, 3]])
    buf = m.init_buffers(2) + 0.2 * RS.uniform(size=(2, m.n_buffers))
    _, G, _ = cr.loss_and_grad(m, W, X, y, buf, train=train)
    mask = m.decay_mask()
    assert not mask.all() and mask.any()

    def f(w):
        L = cr.loss_and_grad(m, w, X, y, buf, train=train, decay=False)[0]
        return L + 0.5 * m.weight_decay * np.sum(mask * w * w, axis=1)

    errs = []
    for k in range(3 if norm else 5):
        V = RS.normal(size=W.shape)
        h = 1e-6
        fd = (f(W + h * V) - f(W - h * V)) / (2 * h)
        if norm:
            np.testing.assert_allclose(np.sum(G * V, axis=1), fd, rtol=2e-6, atol=1e-8)
        # assert_allclose's rule |d| <= atol + rtol·|fd| as a ratio: |d| / (atol/rtol + |fd|) <= rtol
        errs.append(np.max(np.abs(np.sum(G * V, axis=1) - fd) / (1e-8 / 2e-6 + np.abs(fd))))
    # without BN the pre-activations are not centred and a difference step can cross a ReLU
    # kink (one of 5 directions here, 7e-4; the others 1e-10): the median over directions
    # is the statistic (a wrong gradient term spoils every direction)
    assert np.median(errs) <= 2e-6, errs


# ---- the model description ------------------------------------------------------------------
def test_layout_counts_and_names():
    m = resnet(20)
    assert m.blocks_per_stage == 3 and m.channels == (16, 32, 64)
    # stem 3·16·9 + 32; stage 1: 3·(2·16·16·9 + 64); stage 2: 16·32·9 + 32·32·9 + 128 +
    # 2·(2·32·32·9 + 128); stage 3: 32·64·9 + 64·64·9 + 256 + 2·(2·64·64·9 + 256); head 650
    assert m.n_params == 269722          # He et al.'s "0.27M" for ResNet-20 (option A)
    names = [t.name for t in m.layout()]
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert names[-2:] == ["linear.weight", "linear.bias"] and len(set(names)) == len(names)
    assert m.n_buffers == 2 * sum(c for _, c in m.bn_layers()) and len(m.bn_layers()) == 19
    assert resnet(20, shortcut="B").n_params == 269722 + 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    W = m.init(0, 1)
    assert np.shares_memory(m.unflatten(W)["layer2.0.conv1.weight"], W)


def test_init_is_independent_of_replica_count_and_offset_and_he_scaled():
    m = resnet(20, shortcut="B")
    W4 = m.init(5, 4)
    np.testing.assert_array_equal(m.init(5, 1, replica_offset=2)[0], W4[2])
    np.testing.assert_array_equal(m.init(5, 2, replica_offset=2), W4[2:])
    assert not np.array_equal(W4[0], W4[1])
    v = m.unflatten(W4)
    for t in m.layout():
        if t.kind == "bn_weight":
            assert np.all(v[t.name] == 1.0)
        elif t.kind in ("bn_bias", "linear_bias"):
            assert np.all(v[t.name] == 0.0)
        elif t.size >= 2000:
            # sample std of n normal draws: relative standard error 1/sqrt(2n); 5 of them
            w = v[t.name].reshape(-1)
            sigma = np.sqrt(2.0 / (t.size // t.shape[0]))
            assert abs(w.std() / sigma - 1) < 5 / np.sqrt(2 * w.size), t.name
            assert abs(w.mean()) < 5 * sigma / np.sqrt(w.size), t.name
    B = m.init_buffers(2)
    bv = m.unflatten_buffers(B)
    assert all(np.all(bv[t.name] == (1.0 if t.kind == "running_var" else 0.0)) for t in m.buffer_layout())


def test_decay_mask_and_flops():
    m = resnet(8, decay_bn=False)
    mask = m.decay_mask()
    for t in m.layout():
        assert mask[t.offset:t.offset + t.size].all() == (t.kind in ("conv", "linear_weight"))
    assert resnet(8, decay_bn=True).decay_mask().all()
    # ResNet-20 forward: ~41 M multiply-adds per 32×32 image (He et al. report 41 M)
    assert 3 * 2 * 40e6 < resnet(20).flops_per_sample() < 3 * 2 * 42e6


@pytest.mark.parametrize("kwargs,name", [(dict(depth=9), "depth"), (dict(depth=2), "depth"),
                                         (dict(width=0), "width"), (dict(width=-1.0), "width"),
                                         (dict(width=0.01), "width"), (dict(shortcut="C"), "shortcut"),
                                         (dict(classes=1), "classes"), (dict(image_size=2), "image_size"),
                                         (dict(weight_decay=-1.0), "weight_decay"),
                                         (dict(norm="no"), "norm")])
def test_unbuildable_models_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=name):
        resnet(**kwargs)


# ---- augmentation ---------------------------------------------------------------------------
def test_augmentation_is_keyed_by_sample_not_batch_position():
    reps = np.array([0, 3])
    idx = np.array([[[5, 9, 2, 7], [1, 2, 3, 4]]])                 # (S=1, R=2, B=4)
    dy, dx, fl = augment.draw(7, reps, 2, idx)
    perm = np.array([2, 0, 3, 1])
    dy2, dx2, fl2 = augment.draw(7, reps, 2, idx[..., perm])
    np.testing.assert_array_equal(dy2, dy[..., perm])
    np.testing.assert_array_equal(dx2, dx[..., perm])
    np.testing.assert_array_equal(fl2, fl[..., perm])
    one = augment.draw(7, reps[1:], np.array([2]), idx[:, 1:, 2:3])   # a single image alone
    assert (one[0].item(), one[1].item(), one[2].item()) == (dy[0, 1, 2], dx[0, 1, 2], fl[0, 1, 2])
    # the documented words: block 'sample' of draws_numpy(path=replica, step=epoch, STREAM_AUG)
    u = rng.draws_numpy(rng.UNIFORM, 7, reps, 2, augment.STREAM_AUG, 4 * 10)
    w = (u * 2.0 ** 32 - 0.5).astype(np.uint64).reshape(2, 10, 4)
    for r in range(2):
        wr = w[r, idx[0, r]]
        np.testing.assert_array_equal(dy[0, r], (wr[:, 0] * 9 >> np.uint64(32)).astype(np.int64) - 4)
        np.testing.assert_array_equal(dx[0, r], (wr[:, 1] * 9 >> np.uint64(32)).astype(np.int64) - 4)
        np.testing.assert_array_equal(fl[0, r], wr[:, 2] >= 2 ** 31)
    other = augment.draw(7, reps, 3, idx)
    assert not np.array_equal(np.stack(other[:2]), np.stack((dy, dx)))


def test_augmentation_frequencies():
    """Flip probability 1/2 and the 9 crop offsets equally likely (fixed seed; 5-sigma bands)."""
    n = 40000
    dy, dx, fl = augment.draw(11, np.arange(4), 0, np.arange(n).reshape(1, 4, n // 4))
    assert abs(fl.mean() - 0.5) < 5 * 0.5 / np.sqrt(n)
    for d in (dy, dx):
        assert d.min() == -4 and d.max() == 4
        freq = np.bincount(d.reshape(-1) + 4, minlength=9) / n
        assert np.all(np.abs(freq - 1 / 9) < 5 * np.sqrt((1 / 9) * (8 / 9) / n))


def test_crop_and_flip_on_a_hand_made_image():
    X = np.arange(1, 17, dtype=np.float64).reshape(1, 1, 4, 4)     # rows 1-4, 5-8, 9-12, 13-16
    out = augment.apply(X, np.array([1]), np.array([-2]), np.array([False]))
    np.testing.assert_array_equal(out[0, 0], [[0, 0, 5, 6], [0, 0, 9, 10], [0, 0, 13, 14], [0, 0, 0, 0]])
    out = augment.apply(X, np.array([1]), np.array([-2]), np.array([True]))
    np.testing.assert_array_equal(out[0, 0], [[6, 5, 0, 0], [10, 9, 0, 0], [14, 13, 0, 0], [0, 0, 0, 0]])
    # against "pad by 4, slice at (4 + dy, 4 + dx), reverse the columns" on random images
    Y = RS.normal(size=(3, 5, 2, 6, 7))
    dy, dx, fl = RS.integers(-4, 5, (3, 5)), RS.integers(-4, 5, (3, 5)), RS.integers(0, 2, (3, 5)) == 1
    got = augment.apply(Y, dy, dx, fl)
    for a in range(3):
        for b in range(5):
            P = np.pad(Y[a, b], ((0, 0), (4, 4), (4, 4)))
            crop = P[:, 4 + dy[a, b]:4 + dy[a, b] + 6, 4 + dx[a, b]:4 + dx[a, b] + 7]
            np.testing.assert_array_equal(got[a, b], crop[:, :, ::-1] if fl[a, b] else crop)


# ---- data -----------------------------------------------------------------------------------
def test_conv_teacher_images():
    d = conv_teacher(n=600, size=8, classes=5, label_noise=0.0, seed=4)
    assert d.X_train.shape == (450, 3, 8, 8) and d.X_test.shape == (150, 3, 8, 8)
    np.testing.assert_allclose(d.X_train.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(d.X_train.std(axis=(0, 2, 3)), 1, rtol=1e-12)
    counts = np.bincount(np.r_[d.y_train, d.y_test], minlength=5)
    assert counts.min() > 0.9 * 600 / 5, counts                   # balanced classes
    # the teacher is flip invariant, so the flip augmentation preserves labels
    X = RS.normal(size=(20, 3, 8, 8))
    np.testing.assert_allclose(teacher_logits(X[..., ::-1], 4, 5), teacher_logits(X, 4, 5), rtol=1e-12)
    # smooth: neighbouring pixels are strongly correlated (white noise would give ~0)
    assert np.corrcoef(d.X_train[:, :, :, :-1].ravel(), d.X_train[:, :, :, 1:].ravel())[0, 1] > 0.5
    again = conv_teacher(n=600, size=8, classes=5, label_noise=0.0, seed=4)
    assert d.fingerprint() == again.fingerprint()
    noisy = conv_teacher(n=600, size=8, classes=5, label_noise=0.5, seed=4)
    changed = np.mean(np.r_[noisy.y_train, noisy.y_test] != np.r_[d.y_train, d.y_test])
    assert 0.3 < changed < 0.5                                     # 0.5 · 4/5 = 0.4 expected
    with pytest.raises(ValueError, match="label_noise"):
        conv_teacher(n=100, label_noise=1.5)


def test_cifar10_images_on_a_fake_archive(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(folder)
    d = cifar10_images(folder)
    assert d.X_train.shape == (30, 3, 32, 32) and d.X_test.shape == (6, 3, 32, 32) and d.n_classes == 10
    np.testing.assert_allclose(d.X_train.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(d.X_train.std(axis=(0, 2, 3)), 1, rtol=1e-12)
    raw = []
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            raw.append(pickle.load(f, encoding="bytes"))
    imgs = np.concatenate([r[b"data"] for r in raw]).reshape(30, 3, 32, 32).astype(np.float64)
    mu, sd = imgs.mean(axis=(0, 2, 3))[:, None, None], imgs.std(axis=(0, 2, 3))[:, None, None]
    np.testing.assert_allclose(d.X_train[7], (imgs[7] - mu) / sd, rtol=1e-12, atol=1e-12)
    raw = raw[0]
    assert d.y_train[:6].tolist() == list(raw[b"labels"])
    assert cifar10_images(folder, n_train=7, n_test=2).X_train.shape == (7, 3, 32, 32)
    (folder / "test_batch").unlink()
    with pytest.raises(ValueError, match="test_batch"):
        cifar10_images(folder)


# ---- the trainer ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    m = resnet(8, width=0.25, image_size=8, classes=4, weight_decay=0.01)
    d = conv_teacher(n=64, size=8, classes=4, seed=1)
    return m, d


def _run(m, d, J, R, S, B, slots=1, r=(1.0,), aug=True, lr=0.05):
    tr = cr.ConvTrainer(m, d.X_train, d.y_train, J, R)
    W0 = np.tile(m.init(3, R), (J, 1))
    tr.set_state(W0, np.zeros_like(W0))
    rs = np.random.default_rng(9)
    idx = [rs.integers(0, d.n_train, (S, R, B)) for _ in range(slots)]
    au = [augment.draw(3, np.arange(R), np.arange(S) // 2, i) for i in idx] if aug else None
    a, b, g = np.full((J, S), 0.9), np.full((J, S), 0.1), np.full((J, S), lr)
    out = tr.train(idx, a, b, g, np.asarray(r), aug=au)
    return tr, out


def test_trainer_state_svag_rule_and_common_augmentation(tiny):
    m, d = tiny
    tr, out = _run(m, d, J=2, R=2, S=3, B=6)
    W, Mom, buf = tr.get_state()
    assert out.shape == (3, 4) and np.all(np.isfinite(out))
    np.testing.assert_array_equal(W[:2], W[2:])       # same optimizer twice: same images, same result
    assert not np.array_equal(W[0], W[1]) and not np.array_equal(buf, m.init_buffers(4))
    # SVAG with r = (1, 0) is bitwise the plain step, running statistics included
    tr2, out2 = _run(m, d, J=2, R=2, S=3, B=6, slots=2, r=(1.0, 0.0))
    for x, y in zip(tr.get_state(), tr2.get_state()):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(out, out2)
    # SVAG's running statistics come from slot 0's batch only
    tr3, _ = _run(m, d, J=1, R=1, S=1, B=6, slots=2, r=(2.0, -1.0))
    rs = np.random.default_rng(9)
    rows = rs.integers(0, d.n_train, (1, 1, 6))[0]
    dy, dx, fl = augment.draw(3, np.arange(1), np.zeros(1, dtype=np.int64), rows[None])
    X0 = augment.apply(d.X_train[rows], dy[0], dx[0], fl[0])
    _, _, want = cr.loss_and_grad(m, m.init(3, 1), X0, d.y_train[rows], m.init_buffers(1))
    np.testing.assert_array_equal(tr3.get_state()[2], want)
    # set_state carries the buffers; evaluation uses them
    tr.set_state(W, Mom, m.init_buffers(4))
    ls_init, _ = tr.evaluate(d.X_test, d.y_test)
    tr.set_state(W, Mom, buf)
    ls, corr = tr.evaluate(d.X_test, d.y_test)
    assert not np.allclose(ls, ls_init) and np.all(corr <= d.X_test.shape[0])
    Z = cr.forward(m, W, np.stack([d.X_test] * 4), buf, train=False)
    want = np.array([np.sum(np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), d.y_test]) for z in Z])
    np.testing.assert_allclose(ls, want, rtol=1e-12)


def test_training_lowers_the_loss(tiny):
    m, d = tiny
    tr, out = _run(m, d, J=1, R=1, S=30, B=16, aug=False, lr=0.3)
    assert out[-5:].mean() < 0.8 * out[:5].mean()


def test_bad_input(tiny):
    m, d = tiny
    with pytest.raises(ValueError, match="X"):
        cr.ConvTrainer(m, d.X_train[:, :, :6, :6], d.y_train, 1, 1)
    with pytest.raises(ValueError, match="X"):
        cr.ConvTrainer(m, d.X_train.reshape(d.n_train, -1), d.y_train, 1, 1)
    with pytest.raises(ValueError, match="y"):
        cr.ConvTrainer(m, d.X_train, d.y_train + 4, 1, 1)
    bad = d.X_train.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cr.ConvTrainer(m, bad, d.y_train, 1, 1)
    with pytest.raises(ValueError, match="X"):
        cr.loss_and_grad(m, m.init(0, 1), np.zeros((1, 2, 3, 8, 7)), np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="batch"):
        _run(m, d, J=1, R=1, S=1, B=1)
    with pytest.raises(ValueError, match="batch"):
        cr.batchnorm_train(np.zeros((1, 1, 2, 1, 1)), np.ones((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="buffers"):
        cr.forward(m, m.init(0, 1), np.zeros((1, 2, 3, 8, 8)), train=False)
    with pytest.raises(ValueError, match="sample_idx"):
        augment.draw(0, np.arange(2), 0, np.zeros((1, 3, 4), dtype=np.int64))


# ---- torch parity (optional) ----------------------------------------------------------------
def _torch_resnet(torch, m: ResNet):
    nn, F = torch.nn, torch.nn.functional

    class PadA(nn.Module):
        def __init__(self, c_in, c_out):
            super().__init__()
            self.front, self.back = (c_out - c_in) // 2, c_out - c_in - (c_out - c_in) // 2

        def forward(self, x):
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.front, self.back))

    class Block(nn.Module):
        def __init__(self, blk):
            super().__init__()
            self.conv1 = nn.Conv2d(blk.c_in, blk.c_out, 3, blk.stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(blk.c_out)
            self.conv2 = nn.Conv2d(blk.c_out, blk.c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(blk.c_out)
            if blk.shortcut == "B":
                self.shortcut = nn.Sequential(nn.Conv2d(blk.c_in, blk.c_out, 1, blk.stride, bias=False),
                                              nn.BatchNorm2d(blk.c_out))
            elif blk.shortcut == "A":
                self.shortcut = PadA(blk.c_in, blk.c_out)
            else:
                self.shortcut = nn.Sequential()

        def forward(self, x):
            h = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(m.in_channels, m.channels[0], 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(m.channels[0])
            blocks = m.blocks()
            for s in range(3):
                setattr(self, f"layer{s + 1}", nn.Sequential(
                    *[Block(b) for b in blocks if b.prefix.startswith(f"layer{s + 1}.")]))
            self.linear = nn.Linear(m.channels[2], m.classes)

        def forward(self, x):
            h = F.relu(self.bn1(self.conv1(x)))
            h = self.layer3(self.layer2(self.layer1(h)))
            return self.linear(h.mean(dim=(2, 3)))

    return Net().double()


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_torch_parity_20_steps_of_sgd_with_momentum(shortcut):
    """Same ResNet-8 from the same flat weights, same augmented batches, 20 steps of
    torch.optim.SGD(momentum, dampening, weight_decay on conv/linear weights only) against
    the ConvTrainer with HeavyBall's coefficients: parameters, BN running statistics, losses
    and evaluation-mode logits within 1e-10 (float64)."""
    torch = pytest.importorskip("torch")
    m = resnet(8, width=0.25, shortcut=shortcut, image_size=8, classes=4, weight_decay=5e-3)
    d = conv_teacher(n=96, size=8, classes=4, seed=2)
    S, B, lr, mu, tau = 20, 16, 0.05, 0.9, 0.1
    rs = np.random.default_rng(1)
    idx = rs.integers(0, d.n_train, (S, 1, B))
    aug = augment.draw(4, np.arange(1), np.arange(S) // 5, idx)
    W0 = m.init(4, 1)

    net = _torch_resnet(torch, m)
    views = m.unflatten(W0)
    assert [n for n, _ in net.named_parameters()] == [t.name for t in m.layout()]
    with torch.no_grad():
        for n, p in net.named_parameters():
            p.copy_(torch.from_numpy(views[n][0]))
    mask = {t.name: t.kind in ("conv", "linear_weight") for t in m.layout()}
    opt = torch.optim.SGD([{"params": [p for n, p in net.named_parameters() if mask[n]],
                            "weight_decay": m.weight_decay},
                           {"params": [p for n, p in net.named_parameters() if not mask[n]],
                            "weight_decay": 0.0}], lr=lr, momentum=mu, dampening=tau)
    net.train()
    torch_losses = []
    for s in range(S):
        x = augment.apply(d.X_train[idx[s, 0]], aug[0][s, 0], aug[1][s, 0], aug[2][s, 0])
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)),
                                                 torch.from_numpy(d.y_train[idx[s, 0]]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())

    co = HeavyBall(lr, mu, tau).coefficients(S, m.n_params)
    tr = cr.ConvTrainer(m, d.X_train, d.y_train, 1, 1)
    tr.set_state(W0, np.zeros_like(W0))
    out = tr.train([idx], co.a[None], co.b[None], co.gamma[None], np.array([1.0]),
                   aug=[tuple(a[:, :, :] for a in aug)])
    W, _, buf = tr.get_state()
    tw = np.concatenate([p.detach().numpy().reshape(-1) for _, p in net.named_parameters()])
    assert np.max(np.abs(W[0] - tw)) <= 1e-10 * np.max(np.abs(tw))
    np.testing.assert_allclose(out[:, 0], torch_losses, rtol=1e-10)
    bv = m.unflatten_buffers(buf)
    for n, t in net.named_buffers():
        if n.endswith("running_mean") or n.endswith("running_var"):
            np.testing.assert_allclose(bv[n][0], t.numpy(), rtol=1e-10, atol=1e-12)
    net.eval()
    with torch.no_grad():
        tz = net(torch.from_numpy(d.X_test.copy())).numpy()
    z = cr.forward(m, W, d.X_test[None], buf, train=False)[0]
    np.testing.assert_allclose(z, tz, rtol=1e-10, atol=1e-10)


# ---- the Numba CPU backend ------------------------------------------------------------------
@pytest.mark.parametrize("shortcut,norm", [("A", True), ("B", True), ("B", False)])
def test_cpu_backend_matches_numpy_reference_after_20_steps(shortcut, norm):
    """float64, ResNet-8 (3×8×8, width 0.25), 2 optimizers × 2 replicas, SGDM-type
    coefficients, weight decay, augmentation, SVAG's two minibatches: weights, momentum, BN
    running statistics and losses within 1e-12 relative; then evaluation and gradients (also
    without BatchNorm)."""
    from sdeverify.train import conv_cpu
    m = resnet(8, width=0.25, shortcut=shortcut, image_size=8, classes=4, weight_decay=0.01, norm=norm)
    d = conv_teacher(n=64, size=8, classes=4, seed=1)
    S, R, B = 20, 2, 6
    rs = np.random.default_rng(5)
    idx = [rs.integers(0, d.n_train, (S, R, B)) for _ in range(2)]
    aug = [augment.draw(3, np.arange(R), np.arange(S) // 4, i) for i in idx]
    a = np.array([[0.9] * S, [0.0] * S])
    b = np.array([[0.1] * S, [1.0] * S])
    g = np.full((2, S), 0.1)
    W0 = np.tile(m.init(3, R), (2, 1))
    res = []
    for T in (cr.ConvTrainer, conv_cpu.ConvTrainer):
        tr = T(m, d.X_train, d.y_train, 2, R)
        tr.set_state(W0, np.zeros_like(W0))
        out = tr.train(idx, a, b, g, np.array([1.5, -0.5]), aug=aug)
        res.append((out, *tr.get_state(), *tr.evaluate(d.X_test, d.y_test),
                    tr.gradients(W0, d.X_test[:8], d.y_test[:8])))
    for x, y in zip(*res):
        assert x.shape == y.shape
        if x.size:                              # no BN running statistics when norm=False
            assert np.max(np.abs(x - y)) <= 1e-12 * np.max(np.abs(x))
    assert not np.array_equal(res[0][1], W0)


def test_cpu_backend_float32_and_dtype_check():
    from sdeverify.train import conv_cpu
    m = resnet(8, width=0.25, image_size=8, classes=4)
    d = conv_teacher(n=64, size=8, classes=4, seed=1)
    idx = [np.random.default_rng(0).integers(0, d.n_train, (3, 1, 8))]
    states = []
    for dt in ("float32", "float64"):
        tr = conv_cpu.ConvTrainer(m, d.X_train, d.y_train, 1, 1, dt)
        tr.set_state(m.init(0, 1), np.zeros((1, m.n_params)))
        tr.train(idx, np.full((1, 3), 0.9), np.full((1, 3), 0.1), np.full((1, 3), 0.1), np.array([1.0]))
        states.append(tr.get_state())
    assert states[0][0].dtype == np.float32
    for x, y in zip(*states):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="dtype"):
        conv_cpu.ConvTrainer(m, d.X_train, d.y_train, 1, 1, "float16")


def test_cpu_backend_replica_results_do_not_depend_on_how_many_models_run():
    """Replica 0 of optimizer 0 is bitwise the same trained alone or among 2 × 2 models
    (float32, augmentation), evaluation included."""
    from sdeverify.train import conv_cpu
    m = resnet(8, width=0.25, image_size=8, classes=4, weight_decay=0.01)
    d = conv_teacher(n=64, size=8, classes=4, seed=1)
    out = []
    for J, R in ((1, 1), (2, 2)):
        idx = [np.random.default_rng(3).integers(0, d.n_train, (3, 2, 8))[:, :R]]
        aug = [augment.draw(0, np.arange(R), np.zeros(3, dtype=np.int64), idx[0])]
        tr = conv_cpu.ConvTrainer(m, d.X_train, d.y_train, J, R, "float32")
        W0 = np.tile(m.init(0, R), (J, 1))
        tr.set_state(W0, np.zeros_like(W0))
        tr.train(idx, np.full((J, 3), 0.9), np.full((J, 3), 0.1), np.full((J, 3), 0.1), np.array([1.0]), aug=aug)
        out.append([s[0] for s in tr.get_state()] + [e[0] for e in tr.evaluate(d.X_test, d.y_test)])
    for x, y in zip(*out):
        np.testing.assert_array_equal(x, y)


def test_a_resnet_without_batchnorm_has_no_bn_parameters_or_state():
    """``norm=False``: the BN γ/β and running statistics are gone, the convs and the head
    are the BN net's (same names, shapes and initial values), and the label says so."""
    a, b = resnet(8, width=0.25, image_size=8, classes=4), resnet(8, width=0.25, image_size=8, classes=4, norm=False)
    assert b.n_buffers == 0 and not b.bn_layers() and "norm=False" in b.describe()
    kept = {t.name: t.shape for t in a.layout() if not t.kind.startswith("bn_")}
    assert {t.name: t.shape for t in b.layout()} == kept
    Wa, Wb = a.unflatten(a.init(0, 1)), b.unflatten(b.init(0, 1))
    assert all(Wb[n].shape == Wa[n].shape for n in kept)


def test_the_cuda_backend_refuses_a_resnet_without_batchnorm():
    pytest.importorskip("numba.cuda")
    from sdeverify.train import conv_cuda
    m = resnet(8, width=0.25, image_size=8, classes=4, norm=False)
    d = conv_teacher(n=64, size=8, classes=4, seed=1)
    with pytest.raises(ValueError, match="norm=False"):
        conv_cuda.ConvTrainer(m, d.X_train, d.y_train, 1, 1)
