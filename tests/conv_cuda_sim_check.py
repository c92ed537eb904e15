"""Run by tests/test_conv_cuda.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the simulator
must be chosen before Numba is imported): the numba.cuda ResNet trainer against the NumPy
reference trainer on a tiny ResNet-8, float64.  Prints one line per compared quantity; exits 1
on any mismatch.

Sizes: width 0.25 (4-8-16 channels), 8×8 images, batch 4 — the simulator's 4×4 / 8×8 GEMM
tiles then leave partial tiles, and the stage-3 BatchNorm reduces over 16 values per channel
with 4 threads per block.
"""
import sys

import numpy as np

import sdeverify as sv
from sdeverify.train import conv_cuda, conv_reference, fit
from sdeverify.train.augment import draw
from sdeverify.train.convnet import resnet
from sdeverify.train.images import conv_teacher

from sim_check_common import Tally, rel  # noqa: E402

sys.setswitchinterval(1e-5)   # the simulator's threads meet at barriers: switch quickly
TOL = 1e-10
tally = Tally(TOL)
report = tally.report

data = conv_teacher(n=32, size=6, classes=3, seed=2)

# the trainer directly: option-B shortcuts, one SVAG step (two slots) with augmentation
model = resnet(8, width=0.25, shortcut="B", classes=3, image_size=6, weight_decay=0.01)
J, R, B, S = 2, 1, 4, 1
rng = np.random.default_rng(5)
idx = [rng.integers(0, data.n_train, (S, R, B)) for _ in range(2)]
aug = [draw(3, np.arange(R), np.arange(S), i) for i in idx]
a = np.array([[1.0], [0.9]])
b = np.array([[1.0], [0.1]])
g = np.array([[0.1], [0.2]])
W0 = np.concatenate([model.init(1, R), model.init(1, R, replica_offset=3)])
Mom0 = 0.01 * rng.normal(size=W0.shape)
buf0 = model.init_buffers(J * R) + 0.1 * rng.random((J * R, model.n_buffers))
out = []
for T in (conv_reference.ConvTrainer, conv_cuda.ConvTrainer):
    tr = T(model, data.X_train, data.y_train, J, R, "float64")
    tr.set_state(W0, Mom0, buf0)
    launches0 = getattr(tr, "launches", 0)
    losses = tr.train(idx, a, b, g, [1.366, -0.366], aug)
    launches = getattr(tr, "launches", 0) - launches0
    state = tr.get_state()
    ev = tr.evaluate(data.X_test[:6], data.y_test[:6], chunk=4)
    G = tr.gradients(state[0][1:], data.X_train[:5], data.y_train[:5])
    out.append((losses, *state, *ev, G))
print(f"{model.describe()}, {J} optimizers x {R} replica, batch {B}, SVAG slots, augmented, "
      f"{S} step:")
for name, u, v in zip(("batch losses", "weights", "momentum", "BN running statistics",
                       "evaluate loss_sum"), out[1], out[0]):
    report(name, rel(u, v))
report("evaluate correct", float(np.sum(out[1][5] != out[0][5])), exact=True)
report("gradients", rel(out[1][6], out[0][6]))
# the launches of that SVAG step (two slots), counted, against the count of the plan
want = conv_cuda.launches_per_step(model, J * R, B, conv_cuda.CONV_SIM_TILES,
                                   conv_cuda.SIM_BIG_MIN, conv_cuda.SIM_SPLIT_SMS, slots=2)
report(f"launches per step ({launches}, planned {want})", float(launches != want), exact=True)

# BatchNorm over several blocks per (channel, model) (bn_split): stage 1's 4 channels x 2
# models take 2 chunks each (training and evaluation), the other stages 1; one slot
res = []
for T in (conv_reference.ConvTrainer, conv_cuda.ConvTrainer):
    tr = T(model, data.X_train, data.y_train, J, R, "float64")
    tr.bn_split = True
    tr.set_state(W0, Mom0, buf0)
    launches0 = getattr(tr, "launches", 0)
    losses = tr.train(idx[:1], a, b, g, [1.0], aug[:1])
    launches = getattr(tr, "launches", 0) - launches0
    res.append((losses, *tr.get_state(), tr.evaluate(data.X_test[:6], data.y_test[:6],
                                                     chunk=4)[0]))
print("bn_split=True, one slot:")
report("batch losses, weights, momentum, BN statistics",
       max(rel(u, v) for u, v in zip(res[1][:4], res[0][:4])))
report("evaluate loss_sum", rel(res[1][4], res[0][4]))
want = conv_cuda.launches_per_step(model, J * R, B, conv_cuda.CONV_SIM_TILES,
                                   conv_cuda.SIM_BIG_MIN, conv_cuda.SIM_SPLIT_SMS,
                                   bn_split=True, bn_threads=tr.tpb_bn)
report(f"launches per step ({launches}, planned {want})", float(launches != want), exact=True)

# bad input is named
errors = 0
for call, word in ((lambda: conv_cuda.ConvTrainer(model, data.X_train[:, :, :5, :5],
                                                  data.y_train, 1, 1, "float64"), "X must have"),
                   (lambda: conv_cuda.ConvTrainer(model, data.X_train, data.y_train, 1, 1,
                                                  "float16"), "dtype"),
                   (lambda: tr.train([np.zeros((1, R, 1), dtype=int)], a, b, g, [1.0]), "batch"),
                   (lambda: tr.train([np.zeros((1, R, 3), dtype=int)], a, b, g, [1.0], [aug[0]]),
                    "aug dy")):
    try:
        call()
    except ValueError as e:
        errors += word in str(e)
ok = errors == 4
tally.bad += not ok
print(f"bad input raises a ValueError naming it: {errors}/4 {'ok' if ok else 'MISSING'}")

# fit() end to end (option-A shortcuts): SGD + SGDM, weight decay, SVAG l=2, augmentation
model = resnet(8, width=0.25, classes=3, image_size=6, weight_decay=0.005)
kw = dict(batch_size=4, steps=1, replicas=1, seed=3, eval_every=1, svag=2, dtype="float64",
          augment=True, metrics=("train_loss", "train_acc", "test_loss", "test_acc"),
          eval_samples=4, keep_weights=True)
opts = [sv.SGD(0.1), sv.SGDM(0.1, 0.8)]
got = fit(model, data, opts, backend="cuda", **kw)
want = fit(model, data, opts, backend="numpy", **kw)
print(f"fit({model.describe()}, svag=2, augment=True, 2 optimizers):")
report("fit values", rel(got.values, want.values))
report("fit final weights", rel(got.weights, want.weights))
report("fit final BN running statistics", rel(got.buffers, want.buffers))
sys.exit(1 if tally.bad else 0)
