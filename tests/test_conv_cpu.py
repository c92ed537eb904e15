"""The Numba CPU conv layers (sdeverify.train.conv_cpu) one by one against the NumPy reference
(sdeverify.train.conv_reference), on shapes that reach every code path: stride-1 convs that
keep, shrink or grow the image (input gradient by the flipped kernel at pad 1, 2 or -1),
strided 3×3 and 1×1 convs (col2im), odd image sizes (clipped patches at every border),
channel counts that are not multiples of a vector (products in BLAS and in
:mod:`conv_gemm`'s tiles); BatchNorm in both modes; and the reused
output arrays (:class:`conv_cpu.Workspace`)."""
from __future__ import annotations

import numpy as np
import pytest

from sdeverify.train import conv_cpu as cc
from sdeverify.train import conv_reference as cr

RS = np.random.default_rng(4417)


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 1, 3, 4, 2))


def _close(got, want, rtol=1e-13):
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= rtol * np.max(np.abs(want))


@pytest.mark.parametrize("rows", [1, 100, 1024])
@pytest.mark.parametrize("k,stride,pad,H,W,C,O", [
    (3, 1, 1, 7, 5, 3, 4),        # stride 1: dx = conv(dy, flipped kernel)
    (3, 1, 1, 8, 8, 16, 16),      # stride 1, whole vectors of channels
    (3, 1, 0, 6, 7, 3, 2),        # stride 1, shrinking: the flipped kernel at pad 2
    (1, 1, 1, 4, 5, 3, 2),        # stride 1, growing: the flipped kernel at pad -1 (a crop)
    (3, 2, 1, 7, 6, 5, 6),        # strided: col2im
    (1, 2, 0, 6, 7, 4, 8),        # the 1x1 projection shortcut: col2im
    (3, 1, 1, 5, 6, 17, 40),      # stride 1, products in conv_gemm's two-vector tiles, edge columns
    (3, 2, 1, 7, 6, 9, 24),       # strided, patch gradients dy·W in conv_gemm (k·k·C = 81 columns)
    (3, 1, 1, 6, 5, 16, 24),      # stride 1 without im2col (IMPLICIT_WIDTH = 1 below)
])
def test_conv_forward_and_backward_match_the_reference(k, stride, pad, H, W, C, O, rows, monkeypatch):
    """float64, 2 models × 5 images: output, input gradient and weight gradient, with the
    images in one GEMM per image and several weight-gradient groups (``ROWS`` = 1), in
    chunks of 2 images that do not divide the batch, two groups (100), and all in one chunk (1024)."""
    monkeypatch.setattr(cc, "ROWS", rows)
    monkeypatch.setattr(cc, "IMPLICIT_WIDTH", 1 if C == 16 else cc.IMPLICIT_WIDTH)
    X = RS.normal(size=(2, 5, C, H, W))
    Wt = RS.normal(size=(2, O, C, k, k))
    want = cr.conv2d(X, Wt, stride, pad)
    got = cc.conv2d(_nhwc(X), Wt, stride, pad)
    _close(got, _nhwc(want))
    D = RS.normal(size=want.shape)
    dX, dW = cr.conv2d_backward(D, X, Wt, stride, pad)
    gdX, gdW = cc.conv2d_backward(_nhwc(D), _nhwc(X), Wt, stride, pad)
    _close(gdX, _nhwc(dX))
    _close(gdW, dW)
    none, gdW2 = cc.conv2d_backward(_nhwc(D), _nhwc(X), Wt, stride, pad, need_dx=False)
    assert none is None
    _close(gdW2, dW)                                   # patches of x, not of dy


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm_matches_the_reference(mode):
    """Output, batch statistics and the backward pass (x̂ recomputed from the cached input)."""
    x = RS.normal(size=(2, 3, 5, 4, 3)) * 3 + 1
    g, b = RS.normal(size=(2, 5)), RS.normal(size=(2, 5))
    rm, rv = RS.normal(size=(2, 5)), RS.uniform(0.5, 2, size=(2, 5))
    D = RS.normal(size=x.shape)
    if mode == "train":
        y, cache, mean, var = cr.batchnorm_train(x, g, b)
        gy, gcache, gmean, gvar = cc.batchnorm_train(_nhwc(x), g, b)
        _close(gmean, mean)
        _close(gvar, var)
    else:
        y, cache = cr.batchnorm_eval(x, g, b, rm, rv)
        gy, gcache = cc.batchnorm_eval(_nhwc(x), g, b, rm, rv)
    _close(gy, _nhwc(y))
    for got, want in zip(cc.batchnorm_backward(_nhwc(D), gcache), cr.batchnorm_backward(D, cache)):
        _close(got, _nhwc(want) if want.ndim == 5 else want, rtol=1e-12)


def test_workspace_hands_out_only_arrays_nothing_else_references():
    ws = cc.Workspace()
    a = ws.empty((4, 3), np.float32)
    b = ws.empty((4, 3), np.float32)
    assert a is not b                                  # a is still held here
    view = a.reshape(3, 4)
    del a
    c = ws.empty((4, 3), np.float32)
    assert c is not view.base and c is not b           # a view keeps its array busy
    keep = (b,)
    del b, c
    d = ws.empty((4, 3), np.float32)
    assert d is not keep[0] and d is not view.base     # so does a tuple (a tape entry)
    del view
    e = ws.empty((4, 3), np.float32)
    assert e.base is None and e.dtype == np.float32 and e.shape == (4, 3)
    assert ws.empty((4, 3), np.float64).dtype == np.float64     # dtype is part of the key
    with cc.using(ws):
        assert cc._empty((4, 3), np.float32) is not keep[0]
    assert cc._empty((4, 3), np.float32) is not keep[0]


def test_training_with_the_workspace_equals_fresh_arrays():
    """Bitwise: a trainer whose steps reuse arrays (several train calls) against the same
    steps with fresh arrays everywhere."""
    from sdeverify.train.convnet import resnet
    from sdeverify.train.images import conv_teacher
    m = resnet(8, width=0.25, image_size=8, classes=3, weight_decay=0.01)
    d = conv_teacher(n=40, size=8, classes=3, seed=3)
    idx = [np.random.default_rng(1).integers(0, d.n_train, (4, 2, 6))]
    co = [np.full((1, 4), v) for v in (0.9, 0.1, 0.1)]
    out = []
    for fresh in (False, True):
        tr = cc.ConvTrainer(m, d.X_train, d.y_train, 1, 2, "float32")
        tr.set_state(m.init(2, 2), np.zeros((2, m.n_params)))
        if fresh:
            tr.workspace = None                         # using(None): np.empty everywhere
        losses = [tr.train([i[s:s + 1] for i in idx], *[c[:, s:s + 1] for c in co], np.array([1.0]))
                  for s in range(4)]
        out.append([np.concatenate(losses), *tr.get_state()])
    for x, y in zip(*out):
        np.testing.assert_array_equal(x, y)


def test_results_do_not_depend_on_how_the_items_are_split_over_threads(monkeypatch):
    """Bitwise: training and evaluation with every kernel's items in one range on the calling
    thread against 3 threads with one range each (the tests may run with one Numba thread,
    so the split is forced through run_ranges' own arguments)."""
    from sdeverify.threads import run_ranges
    from sdeverify.train import augment
    from sdeverify.train.convnet import resnet
    from sdeverify.train.images import conv_teacher
    m = resnet(8, width=0.25, shortcut="B", image_size=8, classes=3, weight_decay=0.01)
    d = conv_teacher(n=40, size=8, classes=3, seed=5)
    idx = [np.random.default_rng(2).integers(0, d.n_train, (2, 2, 5))]
    aug = [augment.draw(1, np.arange(2), np.zeros(2, dtype=np.int64), idx[0])]
    out = []
    for split in (dict(threads=1), dict(threads=3, per_thread=1)):
        monkeypatch.setattr(cc, "run_ranges", lambda kernel, n, *a, **_: run_ranges(kernel, n, *a, **split))
        tr = cc.ConvTrainer(m, d.X_train, d.y_train, 1, 2, "float32")
        tr.set_state(m.init(1, 2), np.zeros((2, m.n_params)))
        losses = tr.train(idx, np.full((1, 2), 0.9), np.full((1, 2), 0.1), np.full((1, 2), 0.1),
                          np.array([1.0]), aug=aug)
        out.append([losses, *tr.get_state(), *tr.evaluate(d.X_test, d.y_test)])
    for x, y in zip(*out):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("norm", [True, False])
def test_results_do_not_depend_on_how_the_models_are_grouped_over_threads(monkeypatch, norm):
    """Bitwise: a small network's SVAG training steps with augmentation (replicas grouped on 3
    threads), its evaluation and its gradients (models grouped) against one group; with and
    without BatchNorm (no running statistics to split)."""
    from sdeverify.train import augment
    from sdeverify.train.convnet import resnet
    from sdeverify.train.images import conv_teacher
    m = resnet(8, width=0.25, image_size=8, classes=3, weight_decay=0.01, norm=norm)
    d = conv_teacher(n=40, size=8, classes=3, seed=6)
    J, R = 2, 4
    g = np.random.default_rng(3)
    idx = [g.integers(0, d.n_train, (3, R, 5)) for _ in range(2)]
    aug = [augment.draw(2, np.arange(R), np.zeros(3, dtype=np.int64), i) for i in idx]
    co = [np.full((J, 3), v) for v in (0.9, 0.1, 0.1)]
    W0 = m.init(4, J * R)
    out = []
    for threads in (1, 3):
        monkeypatch.setattr(cc.ConvTrainer, "_threads", lambda self: threads)
        tr = cc.ConvTrainer(m, d.X_train, d.y_train, J, R, "float64")
        assert len(tr._parts(R, 5 * J * R)) == threads
        tr.set_state(W0, np.zeros_like(W0))
        losses = tr.train(idx, *co, np.array([1.5, -0.5]), aug=aug)
        out.append([losses, *tr.get_state(), *tr.evaluate(d.X_test, d.y_test, chunk=2),
                    tr.gradients(W0[:5], d.X_test[:6], d.y_test[:6])])
    for x, y in zip(*out):
        np.testing.assert_array_equal(x, y)


def test_blas_controllers_are_rescanned_only_after_an_import(monkeypatch):
    """The trainers enter blas_threads.at_most at every call: the scan of the loaded
    libraries is cached, and redone once a module (which may load a library) is imported."""
    import sys
    import types
    from sdeverify.train import blas_threads
    scans = []
    monkeypatch.setattr(blas_threads, "_scan", lambda: scans.append(1) or ["ctl"])
    monkeypatch.setattr(blas_threads, "_SCANNED", [-1, []])
    assert blas_threads._controllers() == ["ctl"] and blas_threads._controllers() == ["ctl"]
    assert len(scans) == 1
    monkeypatch.setitem(sys.modules, "_sdeverify_test_new_module", types.ModuleType("m"))
    blas_threads._controllers()
    assert len(scans) == 2


@pytest.mark.parametrize("implicit_width", [1, 10 ** 6])
def test_conv_products_do_not_depend_on_models_per_launch_or_threads(monkeypatch, implicit_width):
    """Bitwise, float32, 16 channels (products in conv_gemm's tiles), with and without im2col:
    3 models in one call against each model alone, and every kernel's items on one thread
    against 3 threads with one range each."""
    from sdeverify.threads import run_ranges
    monkeypatch.setattr(cc, "IMPLICIT_WIDTH", implicit_width)
    X = RS.normal(size=(3, 4, 9, 8, 16)).astype(np.float32)
    Wt = RS.normal(size=(3, 16, 16, 3, 3)).astype(np.float32)
    D = RS.normal(size=(3, 4, 9, 8, 16)).astype(np.float32)

    def layer(x, w, d):
        return [cc.conv2d(x, w, 1, 1), *cc.conv2d_backward(d, x, w, 1, 1)]
    out = []
    for split in (dict(threads=1), dict(threads=3, per_thread=1)):
        monkeypatch.setattr(cc, "run_ranges", lambda kernel, n, *a, **_: run_ranges(kernel, n, *a, **split))
        out.append([a.copy() for a in layer(X, Wt, D)])
    for x, y in zip(*out):
        np.testing.assert_array_equal(x, y)
    for m in range(3):
        alone = layer(X[m:m + 1], Wt[m:m + 1], D[m:m + 1])
        for x, y in zip(out[0], alone):
            np.testing.assert_array_equal(x[m:m + 1], y)
