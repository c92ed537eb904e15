"""The trainer's own arithmetic, checked in the main job: deterministic verdicts
that a wrong kernel, SVAG combination, SVAG schedule or minibatch sampler cannot pass.

The trained-network checks (`train_batch_size`, `train_svag`) judge accuracies, which are
coarse: a trainer that scales a gradient wrongly or feeds SVAG the wrong minibatch can still
pass them (fresh planted bugs did, paper_checks.md).  So, before them:

1. **CPU trainer == NumPy reference trainer** (`docs/theory.md §11`): the same run of
   :func:`sdeverify.train.fit` on both backends, float64, at a batch of two 256-row blocks
   plus a remainder (the CPU kernel's row blocking), SVAG ℓ = 2 (two minibatches per step),
   weight decay, random per-step lr and β (SGDM) and heavy-ball momentum with dampening:
   minibatch losses and final weights agree to 1e-10 relative.
2. **SVAG's combination** (Def 6.1): the weights r₁, r₂ the trainer uses satisfy
   r₁ + r₂ = 1 and r₁² + r₂² = ℓ (mean kept, noise variance ×ℓ) for ℓ = 1 … 16.
3. **SVAG's schedule** (Def 6.1): the per-step learning rates and momenta the trainer runs
   equal the definition — step k's lr η_k·m_k (schedule multiplier m_k) becomes ℓ steps of
   η_k·m_k/ℓ and β_k is repeated ℓ times — transcribed here from the definition.
4. **The shuffle sampler** (`sdeverify.train.batches`): within an epoch no training index is
   drawn twice, every step draws ``slots·B`` indices in range, and every epoch and replica
   gets an order of its own, with one and two minibatches per step (SVAG).
5. **The reported metrics**: train loss, test loss and test accuracy as `fit` reports them
   equal the same quantities recomputed from the weights it returns (NumPy forward pass), on
   a set whose test part (500 rows) and evaluated training part (1500 rows) differ in size.
6. **The initialisation**: each layer's weights have the scale of He (ReLU) or Glorot (tanh)
   initialisation within 5% (a fan-in / fan-out mix-up is a factor 2 here), biases zero.
   (Statistical in form, but 7–18 sampling standard errors from its threshold.)
7. **Back-propagation = the derivative of the loss**, for every activation × loss the trainer
   offers (ReLU/tanh × cross-entropy/squared): the CPU trainer's full-batch gradient (with
   weight decay) against central differences of F(w) = loss_sum(w)/n + (wd/2)‖w‖², the loss
   from the trainer's own forward pass (``evaluate``) — no reference code involved, so a wrong
   derivative of an activation or a loss fails even where the NumPy reference shares it.
   Item 1 also runs a tanh / squared-loss network (a planted bug in tanh's derivative
   passed when only ReLU / cross-entropy was compared).
"""
from __future__ import annotations

import numpy as np

from ..optim import SGD, SGDM, HeavyBall
from ..rng import substream
from ..figstyle import figsize, styled
from .base import ExperimentResult, Progress, Value, Verdict, experiment, save_figure, subplots, tick

NAME = "train_engine"
TITLE = "Trainer arithmetic: CPU == NumPy reference, SVAG weights and schedule, sampler"

SIZES = {"smoke": dict(steps=6, n=2000), "quick": dict(steps=10, n=2000),
         "full": dict(steps=20, n=4000)}
TOL = 1e-10


def _rel_dev(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / (1.0 + np.abs(b))))


def backend_verdict(cfg: dict, seed: int) -> tuple[Verdict, float]:
    """1. CPU trainer == NumPy reference trainer (module docstring)."""
    from ..train import MLP, fit, teacher_student
    K = cfg["steps"]
    g = np.random.default_rng(seed)
    data = teacher_student(n=cfg["n"], dim=12, classes=3, seed=seed)
    model = MLP([12, 24, 3], weight_decay=1e-3)
    opts = [SGDM(g.uniform(0.05, 0.2, K), g.uniform(0.5, 0.95, K), name="SGDM"),
            HeavyBall(g.uniform(0.01, 0.05, K), g.uniform(0.5, 0.9, K), 0.3, name="HeavyBall")]
    kw = dict(batch_size=600, steps=K, replicas=2, seed=seed, svag=2, eval_steps=[0, K],
              metrics=("train_loss",), keep_weights=True, dtype="float64")
    dev = 0.0
    for m in (model, MLP([12, 10, 3], "tanh", "squared", weight_decay=2e-3)):
        a = fit(m, data, opts, backend="cpu", **kw)
        b = fit(m, data, opts, backend="numpy", **kw)
        dev = max(dev, _rel_dev(a.batch_loss, b.batch_loss), _rel_dev(a.weights, b.weights))
    # one model on two threads: the per-step path that splits a batch's two halves over the
    # threads (train.cpu._train_parts), taken whatever this process's thread count
    from ..train import cpu as train_cpu
    kw1 = dict(kw, replicas=1)
    saved = train_cpu.Trainer.threads
    train_cpu.Trainer.threads = 2
    try:
        a1 = fit(model, data, opts[:1], backend="cpu", **kw1)
    finally:
        train_cpu.Trainer.threads = saved
    b1 = fit(model, data, opts[:1], backend="numpy", **kw1)
    dev = max(dev, _rel_dev(a1.batch_loss, b1.batch_loss), _rel_dev(a1.weights, b1.weights))
    return Verdict("CPU trainer == NumPy reference trainer (B = 600: two 256-row blocks + rest; "
                   "relu/cross-entropy and tanh/squared nets; "
                   "SVAG l = 2; weight decay; random per-step lr, beta; heavy ball tau = 0.3; "
                   "also one model with its batch halves on two threads)",
                   "docs/theory.md §11 (engine)", f"identical training (max rel. dev <= {TOL:g})",
                   Value(dev), dev <= TOL,
                   f"{K} steps x 2 minibatches, 2 replicas (and 1 replica, per-step parts path): "
                   "minibatch losses and final weights", TOL), dev


def svag_weight_verdict() -> tuple[Verdict, float]:
    """2. r₁ + r₂ = 1, r₁² + r₂² = ℓ (Def 6.1)."""
    from ..schedules import svag_weights
    dev = 0.0
    for ell in range(1, 17):
        r1, r2 = svag_weights(ell)
        dev = max(dev, abs(r1 + r2 - 1.0), abs(r1 * r1 + r2 * r2 - ell) / ell)
    return Verdict("trainer's SVAG weights: r1 + r2 = 1, r1^2 + r2^2 = l (l = 1..16)", "Def 6.1",
                   "mean kept, noise variance x l (max deviation <= 1e-12)", Value(dev),
                   dev <= 1e-12, "the weights fit() uses, against the two identities", 1e-12), dev


def svag_schedule_verdict(seed: int) -> tuple[Verdict, float]:
    """3. SVAG's per-step lr and β against the definition (module docstring)."""
    from ..train.spec import svag_coefficients
    g = np.random.default_rng(substream(seed, "train_engine.svag_schedule"))
    K, dev = 7, 0.0
    for ell in (2, 3, 8):
        lr, beta, mult = g.uniform(0.01, 0.2, K), g.uniform(0.5, 0.95, K), g.uniform(0.1, 1.0, K)
        run = svag_coefficients(SGDM(lr, beta).coefficients(K, 1), ell, mult)
        want_lr = np.array([lr[k] * mult[k] / ell for k in range(K) for _ in range(ell)])
        want_beta = np.array([beta[k] for k in range(K) for _ in range(ell)])
        dev = max(dev, _rel_dev(run.gamma, want_lr), _rel_dev(run.a, want_beta))
        sgd = svag_coefficients(SGD(0.1).coefficients(K, 1), ell, mult)
        dev = max(dev, _rel_dev(sgd.gamma, [0.1 * mult[k] / ell for k in range(K) for _ in range(ell)]))
    return Verdict("trainer's SVAG schedule: step k's lr becomes l steps of lr_k m_k / l, beta_k "
                   "repeated l times (l = 2, 3, 8; random lr_k, beta_k, multipliers m_k)",
                   "Def 6.1", "identical to the definition (max rel. dev <= 1e-14)", Value(dev),
                   dev <= 1e-14, "per-step coefficients fit() runs vs a transcription of Def 6.1",
                   1e-14), dev


def sampler_verdict(seed: int) -> tuple[Verdict, float]:
    """4. Shuffled epochs draw every index at most once (module docstring)."""
    from ..train.batches import BatchSampler
    n, B, bad = 1000, 64, 0
    for slots in (1, 2):
        s = BatchSampler(seed, n, B, np.arange(3), "shuffle", slots)
        per = s.steps_per_epoch
        idx = s.indices(0, 3 * per)                     # three epochs
        seen = []
        for r in range(3):
            for e in range(3):
                got = np.concatenate([np.asarray(idx[j])[e * per:(e + 1) * per, r].ravel()
                                      for j in range(slots)])
                bad += int(got.size != per * slots * B or np.unique(got).size != got.size
                           or got.min() < 0 or got.max() >= n)
                # a fresh permutation per epoch and per replica: no order may repeat
                bad += sum(int(np.array_equal(got, old)) for old in seen)
                seen.append(got)
    return Verdict("shuffle sampler: no index twice within an epoch, a new order every epoch and "
                   "replica (1 and 2 minibatches per step, 3 replicas x 3 epochs)",
                   "docs/theory.md §11 (sampling)",
                   "0 epochs with a repeated or out-of-range index or a repeated order",
                   Value(float(bad)), bad == 0,
                   "slots x B indices per step, all distinct within each epoch; the 9 epoch "
                   "orders of each slot count pairwise different", 0.0), float(bad)


def metrics_verdict(seed: int) -> tuple[Verdict, float]:
    """5. The metrics fit() reports equal the same metrics recomputed here from the weights it
    returns, by the NumPy reference forward pass: test loss and accuracy on the whole test set
    (500 rows, while 1500 training rows are evaluated), train loss on the evaluated rows."""
    from ..train import MLP, fit, teacher_student
    from ..train.reference import forward, loss_terms
    data = teacher_student(n=2000, dim=8, classes=3, seed=seed)
    model = MLP([8, 16, 3])
    res = fit(model, data, [SGD(0.1), SGDM(0.1, 0.9)], batch_size=64, steps=20, replicas=2,
              seed=seed, eval_steps=[20], metrics=("train_loss", "test_loss", "test_acc"),
              keep_weights=True, dtype="float64")
    W = np.asarray(res.weights).reshape(-1, model.n_params)
    n_e = min(2048, data.n_train)
    dev = 0.0
    for k, (X, y) in {"train_loss": (data.X_train[:n_e], data.y_train[:n_e]),
                      "test": (data.X_test, data.y_test)}.items():
        Z = forward(model, W, np.broadcast_to(X, (W.shape[0],) + X.shape))[-1]
        losses, correct, _ = loss_terms(model, Z, np.broadcast_to(y, (W.shape[0], y.size)))
        want = {"train_loss": [("train_loss", losses.mean(axis=1))],
                "test": [("test_loss", losses.mean(axis=1)), ("test_acc", correct.mean(axis=1))]}[k]
        for metric, ref in want:
            got = res.values[:, 0, :, res.metrics.index(metric)].reshape(-1)
            dev = max(dev, _rel_dev(got, ref))
    return Verdict("fit's reported train loss, test loss and test accuracy == recomputed from its "
                   "returned weights (NumPy forward pass)", "docs/theory.md §11 (metrics)",
                   f"identical (max rel. dev <= {TOL:g})", Value(dev), dev <= TOL,
                   "2 optimizers x 2 replicas after 20 steps; 1500 training rows evaluated, "
                   "500 test rows", TOL), dev


#: the initialisation verdict's tolerance on a layer's weight scale (its sampling error is
#: 0.3–0.7% of the scale at these sizes; a fan-in/fan-out or He/Glorot mix-up is ≥ 40%)
INIT_TOL = 0.05


def init_verdict(seed: int) -> tuple[Verdict, float]:
    """6. MLP.init: weights N(0, 2/fan_in) (He, ReLU) or N(0, 2/(fan_in + fan_out)) (Glorot,
    tanh), biases zero, each layer's empirical scale within :data:`INIT_TOL` of the rule."""
    from ..train import MLP
    dev = 0.0
    for act in ("relu", "tanh"):
        model = MLP([64, 256, 10], act)
        P = model.init(seed, 4)
        sizes, w_off, b_off = model.layout()
        for l in range(model.n_layers):
            i, o = int(sizes[l]), int(sizes[l + 1])
            w = P[:, w_off[l]:w_off[l] + i * o]
            want = np.sqrt(2.0 / i) if act == "relu" else np.sqrt(2.0 / (i + o))
            dev = max(dev, abs(np.sqrt(np.mean(w * w)) / want - 1.0),
                      float(np.abs(P[:, b_off[l]:b_off[l] + o]).max()))
    return Verdict("MLP initialisation: He N(0, 2/fan_in) (relu), Glorot N(0, 2/(fan_in+fan_out)) "
                   "(tanh), zero biases", "docs/theory.md §11 (models)",
                   f"each layer's rms within {INIT_TOL:.0%} of the rule", Value(dev), dev <= INIT_TOL,
                   "MLP 64-256-10, 4 replicas, both activations: max |rms/std - 1| and max |bias|",
                   INIT_TOL), dev


#: back-propagation vs central differences: step and tolerance (a correct pair agrees to
#: ≈ 1e-9 relative at h = 1e-5; a wrong activation derivative is off by ≥ 1e-2)
FD_STEP, FD_TOL = 1e-5, 1e-6


def backprop_verdict(seed: int) -> tuple[Verdict, float]:
    """7. The CPU trainer's gradient against central differences of its own loss, for every
    activation × loss (module docstring)."""
    from ..train import MLP
    from ..train.cpu import Trainer
    from ..train.models import ACTIVATIONS, LOSSES
    g = np.random.default_rng(substream(seed, "train_engine.backprop"))
    dev = 0.0
    for act in ACTIVATIONS:
        for loss in LOSSES:
            model = MLP([4, 5, 3], act, loss, weight_decay=0.03)
            n, P = 11, model.n_params
            X, y = g.normal(size=(n, 4)) * 1.2, g.integers(0, 3, n)
            X.flags.writeable = False          # as a Dataset's: the kernels fit() compiled
            w = model.init(seed, 1)[0] + 0.1 * g.normal(size=P)   # biases off zero too
            G = Trainer(model, X, y, 1, 1, "float64").gradients(w[None, :], X, y)[0]
            Wpm = np.concatenate([w + FD_STEP * np.eye(P), w - FD_STEP * np.eye(P)])
            tr = Trainer(model, X, y, 1, 2 * P, "float64")        # every perturbation a model
            tr.set_state(Wpm, np.zeros_like(Wpm))
            F = tr.evaluate(X, y)[0] / n + 0.5 * model.weight_decay * np.sum(Wpm * Wpm, axis=1)
            fd = (F[:P] - F[P:]) / (2 * FD_STEP)
            dev = max(dev, float(np.max(np.abs(G - fd)) / max(np.max(np.abs(fd)), 1e-12)))
    return Verdict("CPU trainer's back-propagation = derivative of its loss (relu, tanh x "
                   "cross-entropy, squared; weight decay)", "docs/theory.md §11 (engine)",
                   f"gradient = central differences (max rel. dev <= {FD_TOL:g})", Value(dev),
                   dev <= FD_TOL, f"MLP 4-5-3, 11 rows, random weights; h = {FD_STEP:g}; "
                   "F = loss_sum/n + wd/2 |w|^2 from the trainer's own forward pass", FD_TOL), dev


@experiment(NAME, SIZES)
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """The seven trainer verdicts of the module docstring."""
    verdicts, devs = [], []
    parts = (lambda: backend_verdict(cfg, seed), svag_weight_verdict,
             lambda: svag_schedule_verdict(seed), lambda: sampler_verdict(seed),
             lambda: metrics_verdict(seed), lambda: init_verdict(seed),
             lambda: backprop_verdict(seed))
    for i, make in enumerate(parts):
        v, d = make()
        verdicts.append(v)
        devs.append(d)
        tick(progress, i + 1, len(parts))
    data = {"deviations": np.array(devs), "claims": np.array([v.claim for v in verdicts])}
    return dict(cfg, tol=TOL), data, verdicts


@styled
def plot(result: ExperimentResult, path):
    """Each verdict's deviation against its threshold (log scale)."""
    d = result.data
    fig, ax = subplots(1, figsize(1, width="two", aspect=0.4))
    dev = np.maximum(d["deviations"], 1e-17)
    ax.barh(np.arange(dev.size), dev, color=["C2" if v.passed else "C3" for v in result.verdicts])
    labels = ["CPU == reference", "SVAG weights", "SVAG schedule", "sampler (bad epochs)",
              "reported metrics", "init scale |rms/std - 1|", "backprop vs differences"]
    ax.set_yticks(np.arange(dev.size), (labels + [f"verdict {i + 1}" for i in range(dev.size)])[:dev.size])
    ax.set_xscale("log")
    ax.set_xlabel(r"max deviation (0 shown at $10^{-17}$)")
    ax.set_title("trainer arithmetic (deterministic)")
    return save_figure(fig, path)
