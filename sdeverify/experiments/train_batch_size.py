"""Batch-size sweep on a trained network (Sec 6, Fig 1 analogue; Goyal et al. 2017 recipe).

The paper's Fig 1 (ResNet-50 on ImageNet): with linear lr scaling, SGD and SGDM (β = 0.9,
SGD at the same effective lr) reach the same accuracy at small batch, while at large batch
SGDM is ahead — the large lr puts SGD past its curvature-induced stability edge (2/η on a
quadratic, against 2(1+β)/((1−β)η) for EMA-form SGDM), which is where momentum's only
lasting benefit lies (Lemma 3.4's η² term).  Here: the set-up of
:mod:`sdeverify.experiments.train_common` (the generated default data; ``data="digits"`` or
``data=<CIFAR-10 folder>`` as an override trains on those instead, with the batch sizes
that fit — the rules were validated on the default data only), batch sizes over more than
two decades, the same
epochs at every B, the SGDM lr chosen per B on a validation split, replicas trained in one
launch with common initial weights and minibatches (paired differences).

Decision rules (95% Student-t intervals of per-replica paired differences in test accuracy,
SGDM − SGD; a diverged replica scores chance accuracy and is reported):

* *small batch, comparable* (equivalence): the interval at the smallest B lies inside
  ±margin, the margin being the binomial standard error of one model's accuracy on the
  test set, √(p(1−p)/n_test) with p the mean test accuracy of the two optimizers there
  (≈ 1.0 point on the 2048-sample test set of the quick and full sizes, ≈ 1.5 on the smoke
  size's 1024): a difference below what one evaluation of one model on this test set can
  resolve.  The paper's own comparisons (Table 1: e.g. 93.4 vs 93.3 on SST-2) are of this
  size.
* *largest batch, SGDM ahead*: the interval at the largest B lies above 0.
* *the gap grows with B*: the interval of gap(B_max) − gap(B_min), per replica, lies above 0.
* negative controls, which the rules must reject: SGDM with β = 0 (which is SGD) is not
  "ahead" at the largest B; SGD at 1/16 of the lr is not "comparable" at the smallest B.

Also recorded (no verdict; the prediction is this project's own, *derived*): the sharpness
(top Hessian eigenvalue) along training at the largest B against the stability edges.
"""
from __future__ import annotations

import numpy as np

from ..optim import SGD, SGDM
from . import train_common as tc
from .base import ExperimentResult, Progress, Verdict, experiment, save_figure, subplots, tick

NAME = "train_batch_size"
TITLE = "Sec 6 / Fig 1 on a trained MLP: batch-size sweep, linear lr scaling, SGD vs SGDM"

SIZES = {"smoke": dict(batches=(16, 128, 1024), epochs=6, replicas=16, select_replicas=1, n=4096, data="teacher_student"),
         "quick": dict(batches=(8, 32, 128, 512, 2048), epochs=10, replicas=32, select_replicas=3, n=8192, data="teacher_student"),
         "full": dict(batches=(8, 32, 128, 512, 2048), epochs=10, replicas=64, select_replicas=4, n=8192, data="teacher_student")}
CONTROL_LR_FACTOR = 16
SHARP_EVALS = 6


@experiment(NAME, SIZES, defaults=dict(backend='cpu'))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Run the sweep; see the module docstring for the set-up and the rules."""
    backend = cfg["backend"]
    Bs = tuple(int(b) for b in cfg["batches"])
    if len(Bs) < 3 or list(Bs) != sorted(set(Bs)):
        raise ValueError(f"batches must be at least 3 increasing sizes, got {Bs}")
    data = tc.dataset(cfg["n"], cfg["data"])
    Bs = tc.usable_batches(data, Bs)
    E, R = cfg["epochs"], cfg["replicas"]
    n = len(Bs)
    out = {k: np.empty((n, R)) for k in ("acc_sgd", "acc_sgdm")}
    out.update(lr=np.empty(n), val_acc=np.empty((n, len(tc.LR_GRID))), diverged=np.zeros((n, 2), int))
    total = 2 * n + 1
    for i, B in enumerate(Bs):
        lr, val = tc.select_lr(data, B, E, cfg["select_replicas"], seed, backend)
        out["lr"][i], out["val_acc"][i] = lr, val
        tick(progress, 2 * i + 1, total)
        big = i == n - 1
        steps = tc.steps_for(data, B, E)
        ev = np.unique(np.linspace(0, steps, SHARP_EVALS).round().astype(int)) if big else None
        res = tc.train(data, B, lr, E, R, seed, backend=backend, eval_steps=ev,
                       metrics=tc.METRICS + (("sharpness",) if big else ()),
                       sharpness_samples=512, sharpness_iters=12)
        for j, key in enumerate(("acc_sgd", "acc_sgdm")):
            out[key][i], out["diverged"][i, j] = tc.final_accuracy(res, j)
        if big:
            mult = tc.schedule(steps)
            out["sharp_steps"] = res.eval_steps
            out["sharp_lr"] = lr * mult[np.minimum(res.eval_steps, steps - 1)]
            out["sharpness"] = np.stack([res.series(j, "sharpness")[0] for j in range(2)])
            out["sharpness_sem"] = np.stack([res.series(j, "sharpness")[1] for j in range(2)])
        tick(progress, 2 * i + 2, total)
    # negative controls: beta = 0 at the largest batch, lr/16 SGD at the smallest
    c_big = tc.train(data, Bs[-1], out["lr"][-1], E, R, seed, backend=backend,
                     opts=[SGD(out["lr"][-1], name="SGD"), SGDM(out["lr"][-1], 0.0, name="SGDM b=0")])
    c_small = tc.train(data, Bs[0], out["lr"][0], E, R, seed, backend=backend,
                       opts=[SGD(out["lr"][0] / CONTROL_LR_FACTOR, name="SGD lr/16"),
                             SGDM(out["lr"][0], tc.BETA, name="SGDM")])
    out["control_beta0"] = tc.final_accuracy(c_big, 1)[0] - tc.final_accuracy(c_big, 0)[0]
    out["control_lr16"] = tc.final_accuracy(c_small, 1)[0] - tc.final_accuracy(c_small, 0)[0]
    p = 0.5 * (out["acc_sgd"][0].mean() + out["acc_sgdm"][0].mean())
    out["margin"] = float(np.sqrt(p * (1.0 - p) / data.X_test.shape[0]))
    tick(progress, total, total)
    verdicts = _verdicts(Bs, out)
    out["batches"] = np.array(Bs)
    params = dict(cfg, batches=list(Bs), beta=tc.BETA, lr_grid=list(tc.LR_GRID),
                  base_batch=tc.BASE_BATCH, select_tol=tc.SELECT_TOL,
                  control_lr_factor=CONTROL_LR_FACTOR, backend=backend,
                  model=tc.model(data).describe(), data_name=data.name)
    return params, out, verdicts


def _gap(out, i):
    return out["acc_sgdm"][i] - out["acc_sgd"][i]


def _verdicts(Bs, out) -> list[Verdict]:
    small, big = tc.t_interval(_gap(out, 0)), tc.t_interval(_gap(out, -1))
    grow = tc.t_interval(_gap(out, -1) - _gap(out, 0))
    c_beta0, c_lr = tc.t_interval(out["control_beta0"]), tc.t_interval(out["control_lr16"])
    margin = out["margin"]
    inside = lambda iv: bool(-margin <= iv.low and iv.high <= margin)
    above = lambda iv: bool(iv.low > 0)
    div = out["diverged"]
    note = f"; diverged replicas (SGD, SGDM) at B={Bs[-1]}: {div[-1].tolist()}" if div.any() else ""
    return [
        Verdict(f"small batch (B={Bs[0]}, lr {out['lr'][0]:.3g}): SGD and SGDM reach the same test accuracy",
                "Sec 6, Fig 1; Table 1", f"acc(SGDM) - acc(SGD) within +-{margin:.4f}", small, inside(small),
                f"95% t-interval of the paired difference inside +-margin = the binomial standard "
                f"error of one model's test accuracy ({margin:.4f}; equivalence)"),
        Verdict(f"large batch (B={Bs[-1]}, lr {out['lr'][-1]:.3g}): SGDM reaches higher test accuracy than SGD",
                "Sec 6, Fig 1", "acc(SGDM) - acc(SGD) > 0", big, above(big),
                "95% t-interval of the paired difference above 0" + note),
        Verdict(f"the SGDM advantage grows with the batch size (B={Bs[0]} -> {Bs[-1]})",
                "Sec 6, Fig 1", "gap(B_max) - gap(B_min) > 0", grow, above(grow),
                "95% t-interval of the per-replica gap difference above 0"),
        Verdict(f"negative control: SGDM with beta = 0 (= SGD) is not 'ahead' at B={Bs[-1]}",
                "control for the large-batch rule", "the 'ahead' rule does not fire", c_beta0,
                not above(c_beta0), "95% t-interval of the paired difference does not lie above 0"),
        Verdict(f"negative control: SGD at lr/{CONTROL_LR_FACTOR} is not 'comparable' to SGDM at B={Bs[0]}",
                "control for the equivalence rule", "the equivalence rule does not fire", c_lr,
                not inside(c_lr), f"95% t-interval not inside +-{margin:.4f}"),
    ]


def plot(result: ExperimentResult, path):
    d = result.data
    Bs = d["batches"]
    fig, ax = subplots(3, (15, 4.2))
    tc.plot_accuracies(ax[0], Bs, d, result.params["beta"])
    ax[0].set(xscale="log", xlabel="batch size B (lr scaled linearly)", ylabel="test accuracy (95% CI)",
              title=f"{result.params['epochs']} epochs at every B")
    tc.plot_gaps(ax[1], Bs, d)
    ax[1].axhspan(-float(d["margin"]), float(d["margin"]), color="0.9", label="equivalence margin")
    ax[1].set(xscale="log", xlabel="batch size B", ylabel="acc(SGDM) - acc(SGD), paired (95% CI)",
              title="SGDM ahead at large batch only")
    ax[1].legend(fontsize=8)
    if "sharpness" in d:
        lr = d["sharp_lr"]
        beta = result.params["beta"]
        for j, (lab, edge) in enumerate((("SGD", 2 / lr), (f"SGDM b={beta}", 2 * (1 + beta) / ((1 - beta) * lr)))):
            ax[2].plot(d["sharp_steps"], d["sharpness"][j], "s--" if j == 0 else "o-", label=f"{lab} sharpness")
            ax[2].plot(d["sharp_steps"], edge, ":", color=f"C{j}", label=f"{lab} edge")
        ax[2].set(yscale="log", xlabel="step", ylabel="top Hessian eigenvalue",
                  title=f"B={Bs[-1]}: sharpness vs stability edges")
        ax[2].legend(fontsize=7)
    return save_figure(fig, path)
