"""The trainer's own arithmetic, checked in the main job (issue 15): deterministic verdicts
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
   drawn twice, every step draws ``slots·B`` indices in range, with one and two minibatches
   per step (SVAG), on several replicas and epochs.
"""
from __future__ import annotations

import numpy as np

from ..optim import SGD, SGDM, HeavyBall
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
    a = fit(model, data, opts, backend="cpu", **kw)
    b = fit(model, data, opts, backend="numpy", **kw)
    dev = max(_rel_dev(a.batch_loss, b.batch_loss), _rel_dev(a.weights, b.weights))
    return Verdict("CPU trainer == NumPy reference trainer (B = 600: two 256-row blocks + rest; "
                   "SVAG l = 2; weight decay; random per-step lr, beta; heavy ball tau = 0.3)",
                   "docs/theory.md §11 (engine)", f"identical training (max rel. dev <= {TOL:g})",
                   Value(dev), dev <= TOL,
                   f"{K} steps x 2 minibatches, 2 replicas: minibatch losses and final weights",
                   TOL), dev


def svag_weight_verdict() -> tuple[Verdict, float]:
    """2. r₁ + r₂ = 1, r₁² + r₂² = ℓ (Def 6.1)."""
    from ..train.fit import svag_weights
    dev = 0.0
    for ell in range(1, 17):
        r1, r2 = svag_weights(ell)
        dev = max(dev, abs(r1 + r2 - 1.0), abs(r1 * r1 + r2 * r2 - ell) / ell)
    return Verdict("trainer's SVAG weights: r1 + r2 = 1, r1^2 + r2^2 = l (l = 1..16)", "Def 6.1",
                   "mean kept, noise variance x l (max deviation <= 1e-12)", Value(dev),
                   dev <= 1e-12, "the weights fit() uses, against the two identities", 1e-12), dev


def svag_schedule_verdict(seed: int) -> tuple[Verdict, float]:
    """3. SVAG's per-step lr and β against the definition (module docstring)."""
    from ..train.fit import _svag_optimizer
    g = np.random.default_rng(seed + 1)
    K, dev = 7, 0.0
    for ell in (2, 3, 8):
        lr, beta, mult = g.uniform(0.01, 0.2, K), g.uniform(0.5, 0.95, K), g.uniform(0.1, 1.0, K)
        run = _svag_optimizer(SGDM(lr, beta), ell, mult, K).coefficients(ell * K, 1)
        want_lr = np.array([lr[k] * mult[k] / ell for k in range(K) for _ in range(ell)])
        want_beta = np.array([beta[k] for k in range(K) for _ in range(ell)])
        dev = max(dev, _rel_dev(run.gamma, want_lr), _rel_dev(run.a, want_beta))
        sgd = _svag_optimizer(SGD(0.1), ell, mult, K).coefficients(ell * K, 1)
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
        for r in range(3):
            for e in range(3):
                got = np.concatenate([np.asarray(idx[j])[e * per:(e + 1) * per, r].ravel()
                                      for j in range(slots)])
                bad += int(got.size != per * slots * B or np.unique(got).size != got.size
                           or got.min() < 0 or got.max() >= n)
    return Verdict("shuffle sampler: no index twice within an epoch (1 and 2 minibatches per step, "
                   "3 replicas x 3 epochs)", "docs/theory.md §11 (sampling)",
                   "0 epochs with a repeated or out-of-range index", Value(float(bad)), bad == 0,
                   "slots x B indices per step, all distinct within each epoch", 0.0), float(bad)


@experiment(NAME, SIZES)
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """The four deterministic trainer verdicts of the module docstring."""
    verdicts, devs = [], []
    for i, make in enumerate((lambda: backend_verdict(cfg, seed), svag_weight_verdict,
                              lambda: svag_schedule_verdict(seed), lambda: sampler_verdict(seed))):
        v, d = make()
        verdicts.append(v)
        devs.append(d)
        tick(progress, i + 1, 4)
    data = {"deviations": np.array(devs), "claims": np.array([v.claim for v in verdicts])}
    return dict(cfg, tol=TOL), data, verdicts


def plot(result: ExperimentResult, path):
    """Each verdict's deviation against its threshold (log scale)."""
    d = result.data
    fig, ax = subplots(1, (8, 3.2))
    dev = np.maximum(d["deviations"], 1e-17)
    ax.barh(np.arange(dev.size), dev, color=["C2" if v.passed else "C3" for v in result.verdicts])
    ax.set_yticks(np.arange(dev.size), ["CPU == reference", "SVAG weights", "SVAG schedule",
                                        "sampler (bad epochs)"][:dev.size], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("max deviation (0 shown at 1e-17)")
    ax.set_title("trainer arithmetic (deterministic)")
    return save_figure(fig, path)
