"""The trainer's surface: every registered backend against the NumPy reference (the contract of
``sdeverify.train.backends``), optimizer schemes as ``simulate`` takes them, a backend added by
following docs/extending.md literally, and runs started from a state, resumed, recorded."""
from __future__ import annotations

import dataclasses
import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import sdeverify as sv
from sdeverify.optim import Coefficients, check_scheme
from sdeverify.train import MLP, backends, fit, minibatch_indices, teacher_student
from sdeverify.train import functional as F
from sdeverify.train.lr import goyal_multiplier

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-12


@pytest.fixture(scope="module")
def data():
    return teacher_student(n=160, dim=5, classes=3, hidden=8, seed=3)


@dataclasses.dataclass(frozen=True)
class EtaSGD:
    """SGD whose step size is a field called ``eta``: nothing in the trainer may read field names."""
    eta: float
    name: str = "EtaSGD"

    def coefficients(self, steps: int, dim: int) -> Coefficients:
        return Coefficients(np.zeros(steps), np.ones(steps), np.full(steps, float(self.eta)),
                            np.zeros(dim))


class PlainSGDM:
    """A scheme that is a plain object (not a dataclass), as ``simulate`` accepts."""

    def __init__(self, lr: float, beta: float):
        self.lr, self.beta, self.name = lr, beta, "PlainSGDM"

    def coefficients(self, steps: int, dim: int) -> Coefficients:
        return Coefficients(np.full(steps, self.beta), np.full(steps, 1.0 - self.beta),
                            np.full(steps, self.lr), np.zeros(dim))


MODEL = MLP([5, 7, 3], weight_decay=0.01)
K = 9
OPTS = [sv.SGD(0.3), sv.SGDM(0.3, beta=np.linspace(0.5, 0.9, K)), EtaSGD(0.2, name="eta")]
RUN = dict(batch_size=16, steps=K, replicas=2, seed=5, svag=2, eval_steps=[0, 4, K],
           lr_schedule=goyal_multiplier(K, warmup_steps=2), metrics=("train_loss", "test_acc"),
           keep_weights=True, on_divergence="raise")


def _rel(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y)) / max(1e-300, np.max(np.abs(y))))


def check_trainer_contract(backend: str, data) -> None:
    """What every trainer backend must do (module docstring of sdeverify.train.backends):
    fit on it equals fit on the NumPy reference to 1e-12 relative in float64 (SVAG, weight
    decay, per-step β, an lr schedule, three schemes), and its Trainer's state, evaluation and
    gradients behave as the contract says."""
    ref = fit(MODEL, data, OPTS, backend="numpy", **RUN)
    got = fit(MODEL, data, OPTS, backend=backend, **RUN)
    assert _rel(got.batch_loss, ref.batch_loss) <= TOL
    assert _rel(got.weights, ref.weights) <= TOL
    assert _rel(got.momentum, ref.momentum) <= TOL
    assert np.allclose(got.values, ref.values, rtol=TOL, atol=0)
    J, R, P = len(OPTS), RUN["replicas"], MODEL.n_params
    tr = backends.trainer_class(backend, MODEL)(MODEL, data.X_train, data.y_train, J, R, "float64")
    W = np.random.default_rng(0).normal(size=(J * R, P))
    Mom = np.random.default_rng(1).normal(size=(J * R, P))
    tr.set_state(W, Mom)
    W1, M1 = tr.get_state()
    assert np.array_equal(W1, W) and np.array_equal(M1, Mom)
    W1[:] = 0.0                                           # copies, not views
    assert np.array_equal(tr.get_state()[0], W)
    loss_sum, correct = tr.evaluate(data.X_test, data.y_test)
    assert loss_sum.shape == correct.shape == (J * R,)
    n = data.X_test.shape[0]
    assert _rel(loss_sum / n, F.loss(MODEL, W, data.X_test, data.y_test)) <= TOL
    assert np.array_equal(correct, (F.predict(MODEL, W, data.X_test) == data.y_test).sum(axis=1))
    G = tr.gradients(W[:3], data.X_train[:11], data.y_train[:11])
    assert _rel(G, F.gradient(MODEL, W[:3], data.X_train[:11], data.y_train[:11])) <= TOL


@pytest.mark.parametrize("backend", [b for b in backends.names() if b != "cuda"])
def test_every_registered_backend_meets_the_contract(backend, data):
    """(cuda: the same comparison runs under the CUDA simulator in tests/test_train_cuda.py.)"""
    check_trainer_contract(backend, data)


def test_the_contract_check_fails_on_a_wrong_backend(data):
    """Planted: a backend that forgets the weight-decay term fails the contract."""
    from sdeverify.train import reference

    class NoDecay(reference.Trainer):
        def train(self, idx, a, b, gamma, r):
            wd = self.model.weight_decay
            object.__setattr__(self.model, "weight_decay", 0.0)
            try:
                return super().train(idx, a, b, gamma, r)
            finally:
                object.__setattr__(self.model, "weight_decay", wd)

    backends.register("nodecay", NoDecay)
    try:
        with pytest.raises(AssertionError):
            check_trainer_contract("nodecay", data)
    finally:
        backends.unregister("nodecay")


def _doc_block(heading: str) -> str:
    text = (ROOT / "docs" / "extending.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"docs/extending.md '{heading}' has no python block"
    return blocks[0]


def test_a_backend_written_from_extending_md_meets_the_contract(data, tmp_path, monkeypatch):
    """docs/extending.md "A trainer backend", followed literally: its module, saved as a file
    and imported, registers a backend that fit uses and that passes the contract — no other
    file touched."""
    (tmp_path / "loop_backend.py").write_text(_doc_block("A trainer backend"))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("loop_backend")
    try:
        assert "loop" in backends.names()
        check_trainer_contract("loop", data)
    finally:
        backends.unregister("loop")
        sys.modules.pop("loop_backend", None)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_a_scheme_named_eta_trains_exactly_like_sgd(backend, data):
    """Schedules and SVAG act on the coefficients, never on a field called ``lr``: a scheme
    whose step size is ``eta`` gives SGD's bits under an lr schedule and SVAG ℓ = 2."""
    kw = dict(RUN, backend=backend)
    a = fit(MODEL, data, [sv.SGD(0.2)], **kw)
    b = fit(MODEL, data, [EtaSGD(0.2)], **kw)
    assert np.array_equal(a.batch_loss, b.batch_loss)
    assert np.array_equal(a.weights, b.weights)
    c = fit(MODEL, data, [EtaSGD(0.2)], **dict(kw, lr_schedule=None))    # the schedule acts
    assert not np.array_equal(c.weights, b.weights)


def test_a_plain_object_scheme_is_accepted_as_simulate_accepts_it(data):
    opt = PlainSGDM(0.2, 0.8)
    assert check_scheme(opt) == "PlainSGDM"                 # what simulate() runs on each one
    got = fit(MODEL, data, [opt], backend="numpy", **dict(RUN, svag=1))
    want = fit(MODEL, data, [sv.SGDM(0.2, 0.8, name="PlainSGDM")], backend="numpy",
               **dict(RUN, svag=1))
    assert np.array_equal(got.weights, want.weights)
    assert got.meta["fingerprint"] == fit(MODEL, data, [PlainSGDM(0.2, 0.8)], backend="numpy",
                                          **dict(RUN, svag=1)).meta["fingerprint"]
    with pytest.raises(ValueError, match="optimizers"):
        fit(MODEL, data, [object()], batch_size=8, steps=2)


@pytest.mark.parametrize("svag", [1, 2])
def test_a_resumed_run_equals_one_run(svag, data):
    """Two parts (keep_weights, then resume=) give the bits of one run: per-step β, an lr
    schedule and the shuffle sampler's epochs all continue where the first part stopped."""
    N = 14                                                  # > one epoch of 160 // 16 steps
    mult = goyal_multiplier(N, warmup_steps=3)
    opts = [sv.SGD(0.3), sv.SGDM(0.3, beta=np.linspace(0.5, 0.9, N))]
    kw = dict(batch_size=16, replicas=2, seed=9, svag=svag, metrics=("train_loss",),
              keep_weights=True, backend="cpu")
    whole = fit(MODEL, data, opts, steps=N, lr_schedule=mult, eval_steps=[0, 6, N], **kw)
    first = fit(MODEL, data, opts, steps=6, lr_schedule=mult[:6], eval_steps=[0, 6], **kw)
    second = fit(MODEL, data, opts, steps=N - 6, lr_schedule=mult, eval_steps=[0, N - 6],
                 resume=first, **kw)
    assert np.array_equal(second.weights, whole.weights)
    assert np.array_equal(second.momentum, whole.momentum)
    assert np.array_equal(np.concatenate([first.batch_loss, second.batch_loss], axis=2),
                          whole.batch_loss)
    assert second.eval_steps.tolist() == [6, N]
    assert np.array_equal(second.values[:, 1], whole.values[:, 2])
    with pytest.raises(ValueError, match="seed"):
        fit(MODEL, data, opts, steps=3, resume=first, **dict(kw, seed=10))
    with pytest.raises(ValueError, match="keep_weights"):
        fit(MODEL, data, opts, steps=3, resume=dataclasses.replace(first, momentum=None), **kw)


def test_init_weights_and_recorded_weights(data):
    """record_weights gives the weights of shorter runs; init_weights starts from them."""
    kw = dict(batch_size=16, replicas=2, seed=2, metrics=("train_loss",), backend="numpy")
    opts = [sv.SGD(0.2), sv.SGDM(0.2, 0.9)]
    rec = fit(MODEL, data, opts, steps=8, record_weights=[0, 3, 8], keep_weights=True, **kw)
    short = fit(MODEL, data, opts, steps=3, keep_weights=True, **kw)
    assert rec.weight_steps.tolist() == [0, 3, 8]
    assert np.array_equal(rec.weight_history[:, 1], short.weights)
    assert np.array_equal(rec.weight_history[:, 2], rec.weights)
    assert np.array_equal(rec.weight_history[:, 0, :, :],
                          np.broadcast_to(MODEL.init(2, 2), (2, 2, MODEL.n_params)))
    again = fit(MODEL, data, opts, steps=5, init_weights=short.weights,
                init_momentum=short.momentum, start_step=3, keep_weights=True, **kw)
    assert np.array_equal(again.weights, rec.weights)
    with pytest.raises(ValueError, match="init_weights must have shape"):
        fit(MODEL, data, opts, steps=2, init_weights=np.zeros(3), **kw)
    with pytest.raises(ValueError, match="init_momentum must be finite"):
        fit(MODEL, data, opts, steps=2, init_momentum=np.full((2, 2, MODEL.n_params), np.nan), **kw)


def test_minibatch_indices_are_the_rows_fit_trains_on(data):
    """A recording backend sees exactly minibatch_indices (SVAG's two slots, replica offset)."""
    from sdeverify.train import reference
    seen = []

    class Recording(reference.Trainer):
        def train(self, idx, a, b, gamma, r):
            seen.append(np.stack(idx, axis=1))
            return super().train(idx, a, b, gamma, r)

    backends.register("recording", Recording)
    try:
        fit(MODEL, data, [sv.SGD(0.1)], batch_size=8, steps=12, replicas=3, seed=4, svag=2,
            replica_offset=5, backend="recording", sampling="shuffle", metrics=("train_loss",))
    finally:
        backends.unregister("recording")
    got = np.concatenate(seen, axis=0)
    want = minibatch_indices(data, 8, 12, replicas=3, seed=4, svag=2, replica_offset=5)
    assert want.shape == (24, 2, 3, 8)
    assert np.array_equal(got, want)
    assert np.array_equal(minibatch_indices(data, 8, 5, replicas=3, seed=4, svag=2,
                                            replica_offset=5, start_step=7), want[14:])


def test_functional_api_against_finite_differences(data):
    """gradient = central differences of loss (+ λ w), logits/predict consistent, bad input named."""
    w = MODEL.init(0, 1)[0]
    X, y = data.X_train[:20], data.y_train[:20]
    g = F.gradient(MODEL, w, X, y)
    e = np.random.default_rng(0).normal(size=w.shape)
    h = 1e-5
    fd = (F.loss(MODEL, w + h * e, X, y) - F.loss(MODEL, w - h * e, X, y)) / (2 * h)
    fd += MODEL.weight_decay * w @ e
    assert abs(g @ e - fd) <= 1e-7 * max(1.0, abs(fd))
    assert np.array_equal(F.predict(MODEL, w, X), np.argmax(F.logits(MODEL, w, X), axis=1))
    with pytest.raises(ValueError, match="weights must have shape"):
        F.loss(MODEL, w[:-1], X, y)
    with pytest.raises(ValueError, match="y must be"):
        F.loss(MODEL, w, X, y + 5)


def test_backend_registry_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.get("tpu")
    with pytest.raises(ValueError, match="already registered"):
        backends.register("cpu", object)
    with pytest.raises(ValueError, match="backend must be one of"):
        fit(MODEL, teacher_student(n=64, dim=5, classes=3), [sv.SGD(0.1)], batch_size=8,
            steps=1, backend="tpu")


def test_a_dataset_written_from_extending_md_trains_on_two_backends(tmp_path, monkeypatch):
    """docs/extending.md "A dataset", followed literally: the function's data set through fit
    on the CPU and NumPy backends (equal to 1e-12), and its fingerprint names its parameters."""
    namespace: dict = {}
    exec(compile(_doc_block("A dataset"), "extending.md", "exec"), namespace)
    data = namespace["two_spirals"](n=200, noise=0.2, seed=1)
    assert data.n_features == 2 and data.n_classes == 2
    assert data.fingerprint() != namespace["two_spirals"](n=200, noise=0.3, seed=1).fingerprint()
    model = MLP([2, 16, 2])
    kw = dict(batch_size=20, steps=15, replicas=2, seed=0, keep_weights=True)
    a = fit(model, data, [sv.SGDM(0.5, 0.9)], backend="cpu", **kw)
    b = fit(model, data, [sv.SGDM(0.5, 0.9)], backend="numpy", **kw)
    assert _rel(a.weights, b.weights) <= TOL


def test_a_resnet_trains_through_fit_and_a_resumed_run_equals_one_run():
    """The conv net through fit's registry (numpy backend): augmentation, SVAG, BatchNorm
    state; two parts (keep_weights, resume=) equal one run bitwise, running statistics too."""
    from sdeverify.train.convnet import resnet
    from sdeverify.train.images import conv_teacher
    data = conv_teacher(n=64, size=8, classes=3, seed=0)
    model = resnet(depth=8, width=0.25, classes=3, image_size=8, weight_decay=5e-4)
    opts = [sv.SGD(0.1), sv.SGDM(0.1, 0.9)]
    kw = dict(batch_size=8, replicas=2, seed=1, backend="numpy", augment=True, svag=2,
              keep_weights=True, metrics=("train_loss", "test_acc"))
    whole = fit(model, data, opts, steps=7, eval_steps=[0, 3, 7], **kw)
    first = fit(model, data, opts, steps=3, eval_steps=[0, 3], **kw)
    second = fit(model, data, opts, steps=4, eval_steps=[0, 4], resume=first, **kw)
    assert whole.buffers.shape == (2, 2, model.n_buffers)
    assert np.array_equal(second.weights, whole.weights)
    assert np.array_equal(second.buffers, whole.buffers)
    assert np.array_equal(second.values[:, -1], whole.values[:, -1])
    plain = fit(model, data, opts, steps=7, eval_steps=[0, 3, 7], **dict(kw, augment=False))
    assert not np.array_equal(plain.weights, whole.weights)          # augmentation acts
    with pytest.raises(ValueError, match="augment=True crops and flips images"):
        fit(MODEL, teacher_student(n=64, dim=5, classes=3), opts, batch_size=8, steps=1,
            augment=True)
    backends.register("mlp_only", reference_trainer())
    try:
        with pytest.raises(ValueError, match="backend 'mlp_only' cannot train ResNet"):
            fit(model, data, opts, batch_size=8, steps=1, backend="mlp_only")
    finally:
        backends.unregister("mlp_only")


def reference_trainer():
    from sdeverify.train import reference
    return reference.Trainer


def test_difference_hvp_equals_the_exact_hessian_vector_product(data):
    """The sharpness of models without an R-operator (BatchNorm nets) uses central differences
    of exact gradients: on an MLP they equal Pearlmutter's exact products to ~1e-7."""
    from sdeverify.train import reference
    from sdeverify.train.training import difference_hvp
    M = 3
    W = MODEL.init(0, M) + 0.1
    tr = reference.Trainer(MODEL, data.X_train, data.y_train, 1, M)
    X, y = data.X_train[:40], data.y_train[:40]
    V = np.random.default_rng(0).normal(size=W.shape)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    exact = reference.hvp_operator(MODEL, W, np.stack([X] * M), np.stack([y] * M))(V)
    approx = difference_hvp(tr, W, X, y)(V)
    assert _rel(approx, exact) <= 1e-6
    assert _rel(difference_hvp(tr, W, X, y, rel_step=0.3)(V), exact) > 1e-6   # the check can fail


def test_every_resnet_backend_equals_the_reference_through_fit():
    """fit on each backend registered for ResNets (augmentation, SVAG, SGDM + weight decay,
    BatchNorm state) equals the NumPy reference to 1e-12 relative in float64."""
    from sdeverify.train.convnet import ResNet, resnet
    from sdeverify.train.images import conv_teacher
    data = conv_teacher(n=48, size=8, classes=3, seed=2)
    model = resnet(depth=8, width=0.25, shortcut="B", classes=3, image_size=8, weight_decay=5e-4)
    kw = dict(batch_size=6, steps=5, replicas=2, seed=3, augment=True, svag=2,
              keep_weights=True, metrics=("train_loss", "test_loss"), eval_steps=[0, 5])
    opts = [sv.SGD(0.1), sv.SGDM(0.1, 0.9)]
    ref = fit(model, data, opts, backend="numpy", **kw)
    names = [b for b in backends.names() if b not in ("numpy", "cuda")
             and ResNet.__qualname__ in str(list(backends.get(b).trainers))]
    assert names, "no compiled backend registered for ResNets"
    for name in names:
        got = fit(model, data, opts, backend=name, **kw)
        assert _rel(got.weights, ref.weights) <= TOL, name
        assert _rel(got.buffers, ref.buffers) <= TOL, name
        assert _rel(got.batch_loss, ref.batch_loss) <= TOL, name
        assert np.allclose(got.values, ref.values, rtol=TOL, atol=0), name


def test_a_cluster_point_is_validated_by_trainspec_and_refuses_state_arguments(data):
    """distributed's fit points validate as the local call does (TrainSpec.build: an eta-named
    scheme, a callable schedule evaluated to the validated array) and refuse arguments that
    train here only."""
    from sdeverify.distributed.points import fit_point
    pt = fit_point(MODEL, data, [EtaSGD(0.1, name="eta")], batch_size=8, steps=6, replicas=2,
                   lr_schedule=lambda k: np.linspace(1.0, 0.5, k))
    assert "eta" in pt.label and np.allclose(pt.args["lr_schedule"], np.linspace(1.0, 0.5, 6))
    with pytest.raises(ValueError, match="train here only"):
        fit_point(MODEL, data, [sv.SGD(0.1)], batch_size=8, steps=6, record_weights=[3])
    with pytest.raises(ValueError, match="lr_schedule must give 6"):
        fit_point(MODEL, data, [sv.SGD(0.1)], batch_size=8, steps=6, lr_schedule=np.ones(5))


def test_a_dataset_prints_in_one_line(data):
    text = repr(data)
    assert "\n" not in text and len(text) < 200 and data.name in text and "(120, 5)" in text


def test_progress_true_gives_the_same_bits(data):
    """progress=True (a bar) changes nothing: simulate runs exact shards and merges them; fit
    only reports its evaluations."""
    import numpy as np
    from sdeverify.problems import Quadratic
    P = Quadratic(np.diag([0.5, 2.0]))
    kw = dict(steps=30, paths=3000, sigma=1.1, seed=4, store_states=True)
    a = sv.simulate(P, [sv.SGD(0.05), sv.SGDM(0.05, 0.8)], [1.0, -1.0], **kw)
    b = sv.simulate(P, [sv.SGD(0.05), sv.SGDM(0.05, 0.8)], [1.0, -1.0], progress=True, **kw)
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.x_final, b.x_final)
    assert b.paths == 3000
    f1 = fit(MODEL, data, [sv.SGD(0.1)], batch_size=8, steps=4, backend="numpy")
    f2 = fit(MODEL, data, [sv.SGD(0.1)], batch_size=8, steps=4, backend="numpy", progress=True)
    assert np.array_equal(f1.values, f2.values)
    with pytest.raises(ValueError, match="progress must be"):
        fit(MODEL, data, [sv.SGD(0.1)], batch_size=8, steps=4, progress="yes")
    with pytest.raises(ValueError, match="progress must be True or False"):
        sv.simulate(P, sv.SGD(0.1), [1.0, 1.0], steps=2, paths=256, sigma=1.0, progress="yes")
