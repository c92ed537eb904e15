"""Run by tests/test_train_cuda.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the simulator
must be chosen before Numba is imported): the numba.cuda trainer against the NumPy reference
trainer on tiny networks, float64.  Prints one line per compared quantity; exits 1 on any
mismatch.

Sizes are chosen so that the simulator's small GEMM tiles (4×4 and 8×8) leave partial tiles in
every dimension and a launch spans several blocks and models; evaluation and full-batch
gradients are forced into several chunks (the last one partial).
"""
import sys

import numpy as np

import sdeverify as sv
from sdeverify.train import cuda as train_cuda
from sdeverify.train import reference
from sdeverify.train.batches import BatchSampler
from sdeverify.train.models import MLP

from sim_check_common import Tally, rel  # noqa: E402

sys.setswitchinterval(1e-5)   # the simulator's threads meet at barriers: switch quickly
TOL = 1e-12
tally = Tally(TOL)
report = tally.report

def case(model: MLP, slots: int, r, sampling: str, steps: int = 3) -> None:
    rng = np.random.default_rng(7)
    n, R, B = 24, 2, 9
    X = rng.normal(size=(n, model.n_inputs)) * 1.3
    y = rng.integers(0, model.n_classes, n)
    opts = [sv.SGD(0.1 * (1 + 0.2 * np.arange(steps))),                # time-varying schedules
            sv.SGDM(0.12, 0.9 - 0.1 * np.arange(steps))]
    co = [o.coefficients(steps, 1) for o in opts]
    a, b, g = (np.stack([getattr(c, f) for c in co]) for f in ("a", "b", "gamma"))
    J = len(opts)
    W0 = np.concatenate([model.init(3, R), model.init(3, R, replica_offset=5)])   # models differ
    Mom0 = 0.05 * rng.normal(size=W0.shape)
    idx = BatchSampler(11, n, B, np.arange(R), sampling=sampling, slots=slots).indices(0, steps)
    out = []
    for T in (reference.Trainer, train_cuda.Trainer):
        tr = T(model, X, y, J, R, "float64")
        tr.set_state(W0, Mom0)
        losses = tr.train(idx, a, b, g, r)
        W, Mom = tr.get_state()
        loss_sum, correct = tr.evaluate(X[:20], y[:20])
        G = tr.gradients(W[1:4], X[:17], y[:17])
        out.append((losses, W, Mom, loss_sum, correct, G))
    print(f"{model.describe()}, {J} optimizers x {R} replicas, batch {B}, {slots} slot(s) r={r}, "
          f"{steps} steps, {sampling}:")
    for name, u, v in zip(("batch losses", "weights", "momentum", "evaluate loss_sum"),
                          out[1], out[0]):
        report(name, rel(u, v))
    report("evaluate correct", float(np.sum(out[1][4] != out[0][4])), exact=True)
    report("gradients", rel(out[1][5], out[0][5]))


# evaluation/gradient chunks of 7 rows (20 and 17 rows: 3 chunks, the last partial)
train_cuda.EVAL_ELEMENTS = 4 * 7 * 7
case(MLP([5, 7, 6, 3], "relu", "cross_entropy", weight_decay=0.03), 2, [1.366, -0.366], "replacement")
train_cuda.EVAL_ELEMENTS = 4 * 6 * 7
case(MLP([5, 6, 7, 4], "tanh", "squared", weight_decay=0.02), 1, [1.0], "shuffle")

# bad input is named
model = MLP([3, 4, 2])
tr = train_cuda.Trainer(model, np.zeros((5, 3)), np.zeros(5, dtype=int), 1, 2, "float64")
tr.set_state(np.zeros((2, model.n_params)), np.zeros((2, model.n_params)))
errors = 0
for kwargs, word in ((dict(idx=[np.zeros((2, 3, 4), dtype=int)]), "replicas=2"),
                     (dict(idx=[np.full((2, 2, 4), 5)]), "row indices"),
                     (dict(a=np.zeros((1, 3))), "steps=2")):
    args = dict(idx=[np.zeros((2, 2, 4), dtype=int)], a=np.zeros((1, 2)), b=np.ones((1, 2)),
                gamma=np.ones((1, 2)), r=[1.0])
    args.update(kwargs)
    try:
        tr.train(**args)
    except ValueError as e:
        errors += word in str(e)
try:
    train_cuda.Trainer(model, np.zeros((5, 3)), np.full(5, 2), 1, 2, "float64")
except ValueError as e:
    errors += "labels in [0, 1]" in str(e)
ok = errors == 4
tally.bad += not ok
print(f"bad input raises a ValueError naming it: {errors}/4 {'ok' if ok else 'MISSING'}")

# tied logits (all-zero weights): the prediction is the first maximal class, as np.argmax
X, y = np.ones((5, 3)), np.array([0, 1, 1, 0, 1])
ref = reference.Trainer(model, X, y, 1, 2, "float64")
ref.set_state(np.zeros((2, model.n_params)), np.zeros((2, model.n_params)))
got, want = tr.evaluate(X, y), ref.evaluate(X, y)
ok = np.array_equal(got[1], want[1]) and rel(got[0], want[0]) <= TOL
tally.bad += not ok
print(f"tied logits: correct {got[1]} vs reference {want[1]} {'ok' if ok else 'MISMATCH'}")

# fit() end to end on the cuda backend (float64): the same evaluations as the NumPy reference
from sdeverify.train import fit, teacher_student  # noqa: E402
data = teacher_student(n=48, dim=4, classes=3, hidden=5, seed=1)
kw = dict(batch_size=6, steps=2, replicas=2, seed=3, eval_every=2, svag=2, dtype="float64",
          metrics=("train_loss", "train_acc", "test_loss", "test_acc", "grad_sqnorm", "noise_trace"),
          eval_samples=8)       # 2 evaluations (start, end): the gradient metrics are the simulator's slowest part
opts = [sv.SGD(0.1), sv.SGDM(0.1, 0.8)]
got = fit(MLP([4, 5, 3]), data, opts, backend="cuda", **kw)
want = fit(MLP([4, 5, 3]), data, opts, backend="numpy", **kw)
dev = rel(got.values, want.values)
ok = dev <= 1e-10 and np.array_equal(got.div_step, want.div_step)
tally.bad += not ok
print(f"fit(backend='cuda') vs numpy: max rel. deviation {dev:.3g} {'ok' if ok else 'MISMATCH'}")

# an optimizer scheme whose step size is a field called eta trains bitwise like SGD on cuda too
# (schedules and SVAG act on the coefficients, never on field names)
from dataclasses import dataclass  # noqa: E402

from sdeverify.optim import Coefficients  # noqa: E402


@dataclass(frozen=True)
class EtaSGD:
    eta: float
    name: str = "SGD"

    def coefficients(self, steps, dim):
        return Coefficients(np.zeros(steps), np.ones(steps), np.full(steps, self.eta), np.zeros(dim))


kw_eta = dict(kw, metrics=("train_loss",), keep_weights=True, lr_schedule=np.array([1.0, 0.5]))
a = fit(MLP([4, 5, 3]), data, [sv.SGD(0.1)], backend="cuda", **kw_eta)
b = fit(MLP([4, 5, 3]), data, [EtaSGD(0.1)], backend="cuda", **kw_eta)
ok = np.array_equal(a.weights, b.weights) and np.array_equal(a.batch_loss, b.batch_loss)
tally.bad += not ok
print(f"eta-named scheme == SGD on cuda (schedule, SVAG 2): {'ok' if ok else 'MISMATCH'}")
sys.exit(1 if tally.bad else 0)
