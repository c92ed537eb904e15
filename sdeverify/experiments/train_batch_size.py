"""Batch size on a trained network: is SGDM ahead of SGD at large batch, and why (Sec 6, Fig 1).

The paper's Fig 1 (ResNet-50 on ImageNet, Goyal et al.'s protocol): SGD and SGDM (β = 0.9,
the EMA form, so that equal lrs mean equal effective lrs, Eq. 8) reach the same accuracy at
small batch, while at large batch SGDM is ahead.  The paper's explanation (Sec 6, Lemma 3.4):
at the large lr that a large batch calls for, SGD runs into its curvature-induced stability
edge (sharpness 2/η on a quadratic) while SGDM's edge, 2(1+β)/((1−β)η), is 19× larger
(docs/theory.md §11).

The protocol of :mod:`sdeverify.experiments.train_common`: each optimizer's lr tuned at each
batch size *and each budget* on a validation split, budgets of E and 2E epochs, paired
replicas, per-epoch curves.  Networks: the MLP on the generated teacher–student set at smoke
and quick size, a small CIFAR ResNet (ResNet-8, 4-8-16 channels, BatchNorm, augmentation) on
generated 8×8 images at full size; ``sdeverify check --data conv_teacher`` trains the ResNet
at any size, ``--data cifar10:FOLDER`` the ResNet on CIFAR-10.

Every claim is judged at the check's budget E; its outcome at 2E epochs is stated in the
claim's text ("short-budget effect" when a PASS at E does not hold at 2E), so that rerunning
with the budget doubled never flips a verdict silently (the 2E arm of a run is bitwise the
E arm of the run with the budget doubled: same seed, lrs re-tuned at each budget).

Verdicts (95% Student-t intervals of per-replica paired differences acc(SGDM) − acc(SGD); a
diverged replica scores chance and is reported):

* *small batch, comparable*: SGD at SGDM's tuned lr (the paper's Fig 1
  comparison, and what Thm 4.5 predicts: the same lr in the EMA form gives the same dynamics
  at small lr) — the interval inside ±margin (max of 0.5 points and the binomial standard
  error of one model's accuracy).  The gap with each optimizer at its own tuned lr is printed
  beside it: a factor-2 grid cannot resolve lrs finely enough for an equivalence test there;
* *large batch, SGDM ahead*, against SGD at *its own* tuned lr (the stronger claim: SGD
  cannot close the gap by lowering its lr; Fig 1's SGD at SGDM's lr is printed beside it):
  the interval above 0;
* (the gap at every B is saved and plotted; a separate "grows with B" rule, the difference of
  the two ends' gaps, was dropped: it failed 3 of 30 quick seeds, adding two gaps' noise to a
  statement the two claims above already make);
* *mechanism* (derived, docs/theory.md §11), at the largest B with SGDM's lr for both (Fig 1's
  comparison), budget E, at the end of the peak-lr phase (geometric mean over 6 replicas,
  Student-t interval on the logs: ratios are positive and heavy-tailed): SGD's sharpness
  reaches its edge (ratio S·η/2, interval above 1/2) while SGDM's stays below its own edge
  (ratio S·(1−β)η/(2(1+β)), interval below 1);
* negative controls: SGDM with β = 0 is not "ahead" at the largest B; SGD at 1/16 of SGDM's
  lr is not "comparable" at the smallest B;
* the trainer's method verdicts (:mod:`.train_method`): gradient, pairing, SVAG noise.
"""
from __future__ import annotations

import numpy as np

from . import train_common as tc
from . import train_method
from ..figstyle import figsize, legend_below, styled
from .base import (Call, ExperimentResult, Progress, Ticker, Verdict, experiment, run_longest_first,
                   save_figure, subplots)

NAME = "train_batch_size"
TITLE = "Sec 6 / Fig 1 on trained networks: batch size, tuned lrs, two budgets, SGD vs SGDM"

_MLP = dict(tc.MLP_NET, lr_grid=(0.1, 0.2, 0.4, 0.8))
_RESNET = tc.RESNET_NET
#: each size's parameters for either network; ``SIZES`` takes the MLP at smoke and quick size
#: and the ResNet at full size, ``sdeverify check --data`` switches (:func:`tc.data_overrides`)
NET_SIZES = {
    "mlp": {"smoke": dict(_MLP, n=4096, batches=(16, 1024), epochs=4, replicas=12, tune_replicas=2),
            "quick": dict(_MLP, n=8192, batches=(8, 64, 512, 2048), epochs=10, replicas=16, tune_replicas=2),
            "full": dict(_MLP, n=8192, batches=(8, 32, 128, 512, 2048), epochs=10, replicas=32, tune_replicas=3)},
    "resnet": {"smoke": dict(_RESNET, n=1024, batches=(16, 128), epochs=2, replicas=4, tune_replicas=1),
               "quick": dict(_RESNET, n=2048, batches=(16, 256), epochs=4, replicas=4, tune_replicas=2),
               "full": dict(_RESNET, n=2048, batches=(16, 64, 256), epochs=8, replicas=8, tune_replicas=2)},
}
SIZES = {"smoke": NET_SIZES["mlp"]["smoke"], "quick": NET_SIZES["mlp"]["quick"],
         "full": NET_SIZES["resnet"]["full"]}
CONTROL_LR_FACTOR = 16
SHARP = dict(sharpness_samples=256, sharpness_iters=12)
SHARP_REPLICAS = 6
PEAK_POINTS = 3
EDGE_REACHED, EDGE_BELOW = 0.5, 1.0
OPTS = ("SGD (own lr)", "SGDM", "SGD at SGDM's lr")


@experiment(NAME, SIZES, defaults=dict(backend="cpu"))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Run the sweep; see the module docstring for the protocol and the rules.

    Two sweeps of tasks (:func:`~sdeverify.experiments.base.run_many`: on a cluster every
    item of a sweep goes out at once, longest first; here they run one after the other, with
    bitwise the same results): the lr tunings of every (budget, batch size, optimizer) and
    the method verdicts, then every fit that uses the tuned lrs — the comparisons at each
    (batch size, budget), the two negative controls and the sharpness runs."""
    setup = tc.setup_for(cfg)
    Bs = tc.check_batches(setup, cfg["batches"])
    E, R = int(cfg["epochs"]), int(cfg["replicas"])
    budgets = (E, tc.BUDGET_FACTOR * E)
    n, chance = len(Bs), setup.chance
    out = {"acc": np.empty((n, 2, 3, R)), "diverged": np.zeros((n, 2, 3), int),
           "lr": np.empty((n, 2, 2)), "tuned_at_edge": np.zeros((n, 2, 2), bool),
           "plateau": np.empty((n, 2, 2))}
    step = Ticker(progress, 6 * n + 3)
    keys = [(b, i, j) for b in range(2) for i in range(n) for j in range(2)]
    calls = [tc.tune_call(cfg, (tc.sgd, tc.sgdm)[j], Bs[i], budgets[b], seed) for b, i, j in keys]
    method = Call(train_method.verdicts, (seed, setup.backend), label="train_method.verdicts")
    *tuned, method_verdicts = run_longest_first([c for c, _ in calls] + [method],
                                                [w for _, w in calls] + [float("inf")])
    tunings = []
    for (b, i, j), t in zip(keys, tuned):
        tunings.append(f"B={Bs[i]}, {budgets[b]} epochs, {('SGD', 'SGDM')[j]}: {t.describe()}")
        out["lr"][i, b, j], out["tuned_at_edge"][i, b, j] = t.lr, t.at_edge
        step()
    lr_small, lr_big = out["lr"][0, 0, 1], out["lr"][-1, 0, 1]

    ticked = tc.ticking(step)
    items, works = [], []
    for b, epochs in enumerate(budgets):
        for i, B in enumerate(Bs):
            lr_s, lr_m = out["lr"][i, b]
            items.append(dict(setup.fit_item([tc.sgd(lr_s, OPTS[0]), tc.sgdm(lr_m), tc.sgd(lr_m, OPTS[2])],
                                             B, epochs, R, seed),
                              then=tc.recorded(out, (i, b), f"curves_B{B}_E{epochs}", chance, step,
                                               plateaus=True)))
            works.append(setup.work(B, epochs, 3 * R))
    items.append(dict(setup.fit_item([tc.sgd(lr_small / CONTROL_LR_FACTOR, "SGD lr/16")], Bs[0], E, R, seed,
                                     per_epoch=False), then=ticked))
    items.append(dict(setup.fit_item([tc.sgdm(lr_big, "SGDM b=0", beta=0.0)], Bs[-1], E, R, seed,
                                     per_epoch=False), then=ticked))
    works += [setup.work(Bs[0], E, R), setup.work(Bs[-1], E, R)]
    sharp = _sharpness_item(setup, Bs[-1], lr_big, E, seed)
    items.append(dict(sharp, then=ticked))
    works.append(setup.work(Bs[-1], E, 2 * SHARP_REPLICAS) * 2)     # + the sharpness iterations
    *_, lr16, beta0, sharp_res = run_longest_first(items, works)
    out["control_lr16"] = out["acc"][0, 0, 1] - tc.final_accuracy(lr16, 0, chance)[0]
    out["control_beta0"] = tc.final_accuracy(beta0, 0, chance)[0] - out["acc"][-1, 0, 2]
    out.update(_sharpness(sharp, sharp_res, lr_big))
    out["margin"] = np.array([tc.margin(float(out["acc"][0, b, 1:].mean()), setup.data.X_test.shape[0])
                              for b in range(2)])          # one per budget, from its own accuracies
    out["batches"] = np.array(Bs)
    out["tuning"] = np.array(tunings)
    verdicts = _verdicts(Bs, budgets, out) + list(method_verdicts)
    params = dict(cfg, batches=list(Bs), budgets=list(budgets), beta=tc.BETA,
                  lr_grid=list(cfg["lr_grid"]), base_batch=tc.BASE_BATCH, optimizers=list(OPTS),
                  margin_floor=tc.MARGIN_FLOOR, control_lr_factor=CONTROL_LR_FACTOR,
                  model=setup.model.describe(), data_name=setup.data.name)
    return params, out, verdicts


def _sharpness_item(setup: tc.Setup, B: int, lr: float, E: int, seed: int) -> dict:
    """The sharpness run of SGD and SGDM, both at SGDM's lr, over ``SHARP_REPLICAS``
    replicas (a :func:`run_many` item): evaluated at the start, at :data:`PEAK_POINTS`
    steps over the second half of the peak-lr phase (up to the first decay, for the figure)
    and at the end."""
    spe = setup.data.n_train // B
    steps_total = E * spe
    mult = tc.schedule(E, spe)
    warm_end = max(1, int(round(tc.WARMUP_FRACTION * E * spe)))
    first_decay = int(round(tc.DECAYS[0] * E)) * spe
    peak = np.unique(np.linspace((warm_end + first_decay) / 2, first_decay, PEAK_POINTS).round().astype(int))
    steps = np.unique(np.concatenate([[0], peak, [steps_total]]))
    return dict(kind="fit", model=setup.model, data=setup.data, optimizers=[tc.sgd(lr), tc.sgdm(lr)],
                batch_size=B, epochs=E, replicas=SHARP_REPLICAS, seed=seed, lr_schedule=mult,
                metrics=("sharpness",), eval_steps=steps, on_divergence="ignore",
                augment=setup.augment, backend=setup.backend, dtype=setup.dtype, **SHARP)


def _sharpness(item: dict, res, lr: float) -> dict:
    """``edge_ratio``: per optimizer and replica the sharpness / own stability edge at the
    end of the peak-lr phase (just before the first decay), the edge at the lr of the step
    before (the lr that shaped the weights); ``edge_ratio_all`` at every evaluation."""
    steps, mult = np.asarray(item["eval_steps"]), item["lr_schedule"]
    spe = item["data"].n_train // item["batch_size"]
    first_decay = int(round(tc.DECAYS[0] * item["epochs"])) * spe
    S = np.stack([res.values_of(j, "sharpness") for j in range(2)])     # (2, evals, replicas)
    lr_k = lr * mult[np.maximum(steps - 1, 0)]
    edges = np.stack([tc.stability_edge(lr_k), tc.stability_edge(lr_k, tc.BETA)])   # (2, evals)
    ratio = S / edges[:, :, None]
    end_of_peak = int(np.flatnonzero(steps == first_decay)[0])
    return {"sharp_steps": steps, "sharpness": S, "edges": edges, "edge_ratio_all": ratio,
            "edge_ratio": ratio[:, end_of_peak]}


def log_interval(ratios) -> "tc.Interval":
    """95% interval of the geometric mean of per-replica ratios (Student-t on the logs, mapped
    back): ratios are positive and heavy-tailed, so their logs are the scale to average on."""
    r = np.asarray(ratios, float)
    if not np.all(np.isfinite(r) & (r > 0)):
        return tc.Interval(float("nan"), float("nan"), float("nan"), 0.95)
    iv = tc.t_interval(np.log(r))
    return tc.Interval(float(np.exp(iv.estimate)), float(np.exp(iv.low)), float(np.exp(iv.high)), iv.level)


def _gap(out, i, b, sgd=0):
    """acc(SGDM) − acc(SGD) per replica: ``sgd=0`` SGD at its own tuned lr, ``sgd=2`` SGD at
    SGDM's tuned lr."""
    return out["acc"][i, b, 1] - out["acc"][i, b, sgd]


def _verdicts(Bs, budgets, out) -> list[Verdict]:
    """Each claim judged at the check's budget E; its outcome at 2E (lrs re-tuned there) is
    stated in the claim's text, so that doubling the budget never flips a verdict silently."""
    E, E2 = budgets
    margins = np.asarray(out["margin"], float)
    m = float(margins[0])
    small = [tc.t_interval(_gap(out, 0, b, sgd=2)) for b in range(2)]
    small_tuned = tc.t_interval(_gap(out, 0, 0))
    big = [tc.t_interval(_gap(out, -1, b)) for b in range(2)]
    big_paper = tc.t_interval(_gap(out, -1, 0, sgd=2))
    ratio = out["edge_ratio"]
    sgd_edge, sgdm_edge = log_interval(ratio[0]), log_interval(ratio[1])
    c_beta0, c_lr = tc.t_interval(out["control_beta0"]), tc.t_interval(out["control_lr16"])
    lr = out["lr"]
    edges = np.argwhere(out["tuned_at_edge"][:, 0])
    edge_note = "" if not edges.size else \
        "; tuned lr at the grid's edge for (B index, optimizer) " + str(edges.tolist())
    div = out["diverged"]
    div_note = f"; diverged replicas (B, budget, optimizer): {np.argwhere(div).tolist()}" if div.any() else ""
    small_ok = [tc.inside(iv, mb) for iv, mb in zip(small, margins)]
    big_ok = [tc.above(iv) for iv in big]
    return [
        Verdict(f"small batch (B={Bs[0]}, {E} epochs): SGD at SGDM's tuned lr {lr[0, 0, 1]:.3g} reaches "
                f"SGDM's test accuracy [{tc.budget_text(small_ok[0], small_ok[1], 'comparable', E)}; "
                f"at {E2} epochs {small[1]}]", "Sec 6, Fig 1; Thm 4.5",
                f"acc(SGDM) - acc(SGD) within +-{m:.4f}", small[0], small_ok[0],
                f"95% t-interval of the paired difference inside +-margin (max of {tc.MARGIN_FLOOR} and the "
                f"binomial SE of one model's accuracy); with SGD at its own tuned lr {lr[0, 0, 0]:.3g}: "
                f"{small_tuned}" + edge_note, m),
        Verdict(f"large batch (B={Bs[-1]}, {E} epochs, each optimizer at its tuned lr: SGD "
                f"{lr[-1, 0, 0]:.3g}, SGDM {lr[-1, 0, 1]:.3g}): SGDM reaches higher test accuracy than SGD "
                f"[{tc.budget_text(big_ok[0], big_ok[1], 'SGDM ahead', E)}; at {E2} epochs {big[1]}]",
                "Sec 6, Fig 1", "acc(SGDM) - acc(SGD) > 0", big[0], big_ok[0],
                f"95% t-interval of the paired difference above 0; with SGD at SGDM's lr (Fig 1's "
                f"comparison): {big_paper}" + edge_note + div_note),
        Verdict(f"mechanism (derived): at B={Bs[-1]} and SGDM's lr {lr_big(out):.3g}, SGD's sharpness "
                f"reaches or exceeds its stability edge 2/lr by the end of the peak-lr phase (this lr "
                f"is in SGD's unstable range)",
                "docs/theory.md §11; Lemma 3.4", f"sharpness / (2/lr) >= {EDGE_REACHED}", sgd_edge,
                bool(sgd_edge.low >= EDGE_REACHED),
                f"95% interval (Student-t on the logs) of the geometric mean of the ratio over "
                f"{SHARP_REPLICAS} replicas at the end of the peak-lr phase, lower end >= {EDGE_REACHED}"),
        Verdict("mechanism (derived): with the same lr, SGDM's sharpness stays below its own edge "
                "2(1+b)/((1-b) lr)", "docs/theory.md §11; Lemma 3.4",
                f"sharpness / edge < {EDGE_BELOW}", sgdm_edge, bool(sgdm_edge.high < EDGE_BELOW),
                f"95% interval of the geometric mean of the ratio there, upper end < {EDGE_BELOW}"),
        Verdict(f"negative control: SGDM with beta = 0 (= SGD) is not 'ahead' at B={Bs[-1]}",
                "control for the large-batch rule", "the 'ahead' rule does not fire", c_beta0,
                not tc.above(c_beta0), "95% t-interval of the paired difference does not lie above 0"),
        Verdict(f"negative control: SGD at lr/{CONTROL_LR_FACTOR} is not 'comparable' to SGDM at B={Bs[0]}",
                "control for the equivalence rule", "the equivalence rule does not fire", c_lr,
                not tc.inside(c_lr, m), f"95% t-interval not inside +-{m:.4f}", m),
    ]


def lr_big(out) -> float:
    """SGDM's tuned lr at the largest batch and budget E (the sharpness runs' lr)."""
    return float(out["lr"][-1, 0, 1])


@styled
def plot(result: ExperimentResult, path):
    d, p = result.data, result.params
    Bs, (E, E2) = d["batches"], p["budgets"]
    fig, ax = subplots(2, figsize(2, 2, aspect=0.75), nrows=2)
    ax = ax.ravel()
    for b, ep in enumerate((E, E2)):
        for k, (lab, fmt) in enumerate((("SGD", "s--"), (rf"SGDM $\beta={p['beta']}$", "o-"))):
            tc._errorbar(ax[0], Bs, [tc.t_interval(d["acc"][i, b, k]) for i in range(len(Bs))],
                         fmt=fmt, alpha=1.0 if b else 0.55, label=f"{lab}, {ep} epochs")
        tc.plot_gaps(ax[1], Bs, [d["acc"][i, b, 1] - d["acc"][i, b, 0] for i in range(len(Bs))],
                     label=f"{ep} epochs", alpha=1.0 if b else 0.55)
    ax[0].set(xscale="log", xlabel="batch size B (lrs tuned per B)", ylabel="test accuracy (95% CI)")
    legend_below(ax[0])
    m = float(np.asarray(d["margin"]).ravel()[0])
    ax[1].axhspan(-m, m, color="0.9", label="equivalence margin")
    ax[1].set(xscale="log", xlabel="batch size B", ylabel="acc(SGDM) − acc(SGD)\n(paired, 95% CI)")
    legend_below(ax[1])
    big = int(Bs[-1])
    for b, ep in enumerate((E, E2)):
        c = d[f"curves_B{big}_E{ep}"]                    # (optimizers, metrics, evals, replicas)
        acc = tc.METRICS.index("test_acc")
        for k, lab in enumerate(("SGD", "SGDM")):
            ax[2].plot(np.arange(c.shape[2]), np.nanmean(c[k, acc], axis=-1), "--" if k == 0 else "-",
                       color=f"C{k}", alpha=1.0 if b else 0.55, label=f"{lab}, {ep} epochs")
    ax[2].set(xlabel="epoch", ylabel="test accuracy\n(mean over replicas)", title=f"B={big}")
    legend_below(ax[2])
    for k, lab in enumerate(("SGD", "SGDM")):
        r = d["edge_ratio_all"][k]                              # (evals, replicas)
        ax[3].plot(d["sharp_steps"], r, "-", color=f"C{k}", lw=0.4, alpha=0.5)
        ax[3].plot(d["sharp_steps"], np.exp(np.log(r).mean(axis=1)), "s--" if k == 0 else "o-",
                   color=f"C{k}", label=f"{lab} (geometric mean; thin: replicas)")
    ax[3].axhline(1, color="k", lw=0.6)
    ax[3].set(yscale="log", xlabel="step", ylabel="sharpness / own stability edge",
              title=f"B={big}, both at SGDM's lr")
    legend_below(ax[3])
    for a in ax[:2]:
        a.set_xticks([int(x) for x in Bs], [str(int(x)) for x in Bs])
        a.minorticks_off()
    return save_figure(fig, path)
