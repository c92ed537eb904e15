"""SVAG on a trained network, and the mechanism against its alternative (Sec 6, Def 6.1, Fig 2).

The paper's Fig 2 (ResNet-32 on CIFAR-10, batch 512; App D.2): the SGDM lr is grid-searched,
then SGD and SGDM run at that same lr with SVAG ℓ ∈ {1, 2, 4, 8} — each gradient
r₁ g(B₁) + r₂ g(B₂) from two independent minibatches (r₁ + r₂ = 1, r₁² + r₂² = ℓ), lr η/ℓ and ℓ×
the steps.  SGDM beats SGD at ℓ = 1 and the gap closes as ℓ grows: SVAG keeps the noise per
unit time and the descent, and divides the curvature term of Lemma 3.4 by ℓ — the term that
only momentum tolerates at a large lr (stability edges 2/η for SGD, 2(1+β)/((1−β)η) for SGDM,
docs/theory.md §11).  The alternative explanation, momentum as *noise reduction*, is tested as
a control: SGD given a minibatch (1+β)/(1−β) times larger (the variance factor of Sec 4.1;
capped at the whole training set, i.e. full-batch GD, which removes all the noise) at the same
lr and number of steps has less noise than SGDM and no more stability than SGD.

The protocol of :mod:`sdeverify.experiments.train_common` at one large batch: SGDM's lr tuned
there on a validation split at each budget (E and 2E epochs), each ℓ run for the same epochs'
worth of lr·steps, paired replicas, per-epoch curves.  Networks as in ``train_batch_size``
(the MLP at smoke and quick size, the small ResNet on generated images at full size,
``--data`` to switch).  Every claim is judged at the check's budget E and its outcome at 2E is
stated in its text ("short-budget effect" when a PASS at E does not hold at 2E).

Verdicts (95% Student-t intervals across replicas of paired per-replica differences; gap =
acc(SGDM) − acc(SGD) at the same ℓ):

* *SGDM ahead without SVAG* (ℓ = 1): the interval above 0;
* *SVAG closes the gap*: the interval of gap(ℓ_max) − gap(1)/2 below 0 (at
  least half of the gap gone); the fitted order in 1/ℓ, or the ℓ where the mean gap reaches 0,
  is printed;
* *mechanism, stability*: SGD made stable by SVAG (ℓ_max) reaches SGDM's ℓ = 1 accuracy (the
  interval of acc(SGDM, ℓ = 1) − acc(SGD, ℓ_max) below the equivalence margin);
* *mechanism, not noise*: SGD with the (1+β)/(1−β)-times larger minibatch stays behind SGDM
  (the interval of acc(SGDM) − acc(SGD, large minibatch) above 0), budget E; and the
  control's premise measured through the trainer: one SGD step's spread across replicas from
  one w₀ at the control's minibatch, over (1−β)/(1+β) times the spread at B (SGDM's per-step
  noise), not above 1 (99% bootstrap over 32 replicas; 0 for full-batch GD without
  augmentation, above 0 with it — augmentation noise stays);
* negative control: SGDM with β = 0 (= SGD) is not "ahead" at ℓ = 1;
* the trainer's method verdicts (:mod:`.train_method`).
"""
from __future__ import annotations

import numpy as np

from ..rng import substream
from ..stats import fit_order, Interval
from . import train_common as tc
from . import train_method
from ..figstyle import figsize, legend_below, styled
from .base import (Call, ExperimentResult, Progress, Ticker, Verdict, experiment, run_longest_first,
                   save_figure, subplots)

NAME = "train_svag"
TITLE = "Sec 6 / Fig 2 on trained networks: SVAG closes the SGD-SGDM gap; stability, not noise"

_MLP = dict(tc.MLP_NET, lr_grid=(0.2, 0.4, 0.8, 1.6))
_RESNET = tc.RESNET_NET
#: each size's parameters for either network (see ``train_batch_size.NET_SIZES``)
NET_SIZES = {
    "mlp": {"smoke": dict(_MLP, n=4096, batch=1024, ells=(1, 4), epochs=4, replicas=8, tune_replicas=2),
            "quick": dict(_MLP, n=4096, batch=1024, ells=(1, 2, 4, 8), epochs=6, replicas=12, tune_replicas=2),
            "full": dict(_MLP, n=4096, batch=1024, ells=(1, 2, 4, 8, 16), epochs=6, replicas=32, tune_replicas=4)},
    "resnet": {"smoke": dict(_RESNET, n=1024, batch=128, ells=(1, 4), epochs=2, replicas=4, tune_replicas=1),
               "quick": dict(_RESNET, n=2048, batch=256, ells=(1, 4), epochs=4, replicas=4, tune_replicas=2),
               "full": dict(_RESNET, n=2048, batch=256, ells=(1, 2, 4, 8), epochs=8, replicas=8, tune_replicas=2)},
}
SIZES = {"smoke": NET_SIZES["mlp"]["smoke"], "quick": NET_SIZES["mlp"]["quick"],
         "full": NET_SIZES["resnet"]["full"]}
SHRINK = 0.5
NOISE_REPLICAS = 32


@experiment(NAME, SIZES, defaults=dict(backend="cpu"))
def run(cfg: dict, seed: int, progress: Progress) -> tuple:
    """Run the ℓ-sweep at two budgets and the controls; see the module docstring."""
    setup = tc.setup_for(cfg)
    ells = tuple(int(e) for e in cfg["ells"])
    if len(ells) < 2 or ells[0] != 1 or list(ells) != sorted(set(ells)):
        raise ValueError(f"ells must be increasing, start at 1 and hold at least 2 values, got {ells}")
    (B,) = tc.check_batches(setup, (cfg["batch"],), least=1)
    E, R = int(cfg["epochs"]), int(cfg["replicas"])
    budgets = (E, tc.BUDGET_FACTOR * E)
    chance = setup.chance
    n = len(ells)
    out = {"acc": np.empty((2, n, 2, R)), "diverged": np.zeros((2, n, 2), int), "lr": np.empty(2),
           "tuned_at_edge": np.zeros(2, bool)}
    step = Ticker(progress, n * 2 + 5)
    # first sweep: SGDM's lr tuned at each budget, and the method verdicts
    calls = [tc.tune_call(cfg, tc.sgdm, B, epochs, seed) for epochs in budgets]
    method = Call(train_method.verdicts, (seed, setup.backend), label="train_method.verdicts")
    *tuned, method_verdicts = run_longest_first([c for c, _ in calls] + [method],
                                                [w for _, w in calls] + [float("inf")])
    tunings = []
    for b, (epochs, t) in enumerate(zip(budgets, tuned)):
        tunings.append(f"{epochs} epochs: {t.describe()}")
        out["lr"][b], out["tuned_at_edge"][b] = t.lr, t.at_edge
        step()
    lr = float(out["lr"][0])
    big = min(setup.data.n_train, int(round(tc.noise_matched_batch(B))))
    spe = setup.data.n_train // B

    ticked = tc.ticking(step)
    # second sweep: every fit at the tuned lrs, the controls and the control's premise
    items, works = [], []
    for b, epochs in enumerate(budgets):
        for i, ell in enumerate(ells):
            items.append(dict(setup.fit_item([tc.sgd(out["lr"][b]), tc.sgdm(out["lr"][b])], B, epochs, R,
                                             seed, svag=ell),
                              then=tc.recorded(out, (b, i), f"curves_E{epochs}_l{ell}", chance, step)))
            works.append(setup.work(B, epochs, 2 * R, svag=ell))
    items.append(dict(kind="fit", model=setup.model, data=setup.data,
                      optimizers=[tc.sgd(lr, f"SGD B={big}")], batch_size=big, steps=E * spe,
                      replicas=R, seed=seed, lr_schedule=tc.schedule(E, spe), metrics=("test_acc",),
                      eval_steps=[E * spe], on_divergence="ignore", augment=setup.augment,
                      backend=setup.backend, dtype=setup.dtype, then=ticked))
    works.append(setup.work(big, 0, R, steps=E * spe))
    items.append(Call(control_noise_task, (cfg, B, big, lr, seed), label="train_svag noise ratio",
                      work=setup.work(big + B, 0, NOISE_REPLICAS, steps=1)))   # one step at each
    works.append(items[-1].work)
    items.append(dict(setup.fit_item([tc.sgdm(lr, "SGDM b=0", beta=0.0)], B, E, R, seed, per_epoch=False),
                      then=ticked))
    works.append(setup.work(B, E, R))
    *_, big_res, noise, ctrl = run_longest_first(items, works)
    step()
    out["control_big_batch"] = out["acc"][0, 0, 1] - tc.final_accuracy(big_res, 0, chance)[0]
    out["big_batch"] = big
    out["control_noise_ratio"] = np.array([noise.estimate, noise.low, noise.high])
    out["control_beta0"] = tc.final_accuracy(ctrl, 0, chance)[0] - out["acc"][0, 0, 0]
    p = float(out["acc"][0, 0, 1].mean())
    out["margin"] = tc.margin(p, setup.data.X_test.shape[0])
    out.update(ells=np.array(ells), tuning=np.array(tunings))
    verdicts = _verdicts(ells, budgets, B, out) + list(method_verdicts)
    params = dict(cfg, ells=list(ells), budgets=list(budgets), beta=tc.BETA, shrink=SHRINK,
                  lr_grid=list(cfg["lr_grid"]), margin_floor=tc.MARGIN_FLOOR,
                  model=setup.model.describe(), data_name=setup.data.name)
    return params, out, verdicts


def control_noise_task(cfg: dict, B: int, big: int, lr: float, seed: int) -> Interval:
    """:func:`control_noise_ratio` for the check's configuration (one task of its sweep)."""
    return control_noise_ratio(tc.setup_for(cfg), B, big, lr, seed)


def control_noise_ratio(setup: tc.Setup, B: int, big: int, lr: float, seed: int) -> Interval:
    """What the noise control claims, measured through the trainer: from one w₀ (all
    :data:`NOISE_REPLICAS` replicas), the spread of one SGD step at the control's minibatch
    ``big`` over (1−β)/(1+β) times the spread of one step at ``B`` — the control's per-step
    gradient noise over SGDM's (the EMA's stationary variance, Sec 4.1), augmentation
    included.  ≤ 1 when the control has no more noise than SGDM (0 for full-batch GD without
    augmentation).  99% percentile bootstrap over replicas."""
    R = NOISE_REPLICAS
    w0 = np.repeat(setup.model.init(seed, 1), R, axis=0)
    steps = [tc.fit(setup.model, setup.data, [tc.sgd(lr)], batch_size=b, steps=1, replicas=R,
                    seed=seed, init_weights=w0, keep_weights=True, metrics=("train_loss",),
                    eval_steps=[1], on_divergence="ignore", augment=setup.augment,
                    backend=setup.backend, dtype="float64").weights[0] - w0[0] for b in (big, B)]
    return train_method.spread_ratio(steps[0], steps[1], substream(seed, "train_svag.noise", 0),
                                     scale=(1 - tc.BETA) / (1 + tc.BETA))


def gap_order(ells, gaps) -> Interval:
    """Fitted order of the mean gap in 1/ℓ (NaN interval unless every mean gap is positive)."""
    g = np.array([np.mean(x) for x in gaps])
    s = np.array([np.std(x, ddof=1) / np.sqrt(len(x)) for x in gaps])
    if np.all(g > 0) and len(g) >= 3:
        return fit_order(1.0 / np.asarray(ells, float), g, s).order
    return Interval(float("nan"), float("nan"), float("nan"))


def order_text(ells, gaps) -> str:
    """The fitted order in 1/ℓ, or where the gap has closed (never a printed NaN)."""
    order = gap_order(ells, gaps)
    closed = [str(ell) for ell, g in zip(ells, gaps) if not np.mean(g) > 0]
    if np.isfinite(order.estimate):
        return f"fitted order of the gap in 1/l: {order}"
    if closed:
        return "order in 1/l not fitted: mean gap <= 0 at l = " + ", ".join(closed)
    return "order in 1/l not fitted: fewer than 3 values of l"


def _verdicts(ells, budgets, B, out) -> list[Verdict]:
    """Each claim judged at the check's budget E, its outcome at 2E (lr re-tuned there) stated
    in the claim's text (see ``train_batch_size``)."""
    E, E2 = budgets
    lr, m, lmax = out["lr"], out["margin"], ells[-1]
    gaps = [[out["acc"][b, i, 1] - out["acc"][b, i, 0] for i in range(len(ells))] for b in range(2)]
    g1 = [tc.t_interval(gaps[b][0]) for b in range(2)]
    shrink = [tc.t_interval(gaps[b][-1] - SHRINK * gaps[b][0]) for b in range(2)]
    ahead = [tc.above(iv) for iv in g1]
    closes = [bool(iv.high < 0) for iv in shrink]
    stable = tc.t_interval(out["acc"][0, 0, 1] - out["acc"][0, -1, 0])
    noise = tc.t_interval(out["control_big_batch"])
    ctrl = tc.t_interval(out["control_beta0"])
    big = int(out["big_batch"])
    nr = Interval(*(float(v) for v in out["control_noise_ratio"]), 0.99)
    edge = "; tuned lr at the grid's edge" if out["tuned_at_edge"][0] else ""
    div = out["diverged"]
    div_note = f"; diverged replicas (budget, l, optimizer): {np.argwhere(div).tolist()}" if div.any() else ""
    return [
        Verdict(f"large batch (B={B}, {E} epochs, SGDM's tuned lr {lr[0]:.3g} for both), no SVAG "
                f"(l = 1): SGDM reaches higher test accuracy than SGD "
                f"[{tc.budget_text(ahead[0], ahead[1], 'SGDM ahead', E)}; at {E2} epochs (lr "
                f"{lr[1]:.3g}) {g1[1]}]", "Sec 6, Fig 2", "acc(SGDM) - acc(SGD) > 0 at l = 1", g1[0],
                ahead[0], "95% t-interval of the paired difference above 0" + edge + div_note),
        Verdict(f"SVAG (lr/l, l x steps, two-minibatch gradient) closes at least half of the gap by "
                f"l = {lmax} ({E} epochs) [{tc.budget_text(closes[0], closes[1], 'closing', E)}; "
                f"at {E2} epochs {shrink[1]}]", "Def 6.1, Sec 6, Fig 2",
                f"gap({lmax}) - {SHRINK} gap(1) < 0 ({order_text(ells, gaps[0])})", shrink[0], closes[0],
                f"95% t-interval of the per-replica gap({lmax}) - gap(1)/2 below 0"),
        Verdict(f"mechanism, stability: SGD made stable by SVAG (l = {lmax}) reaches SGDM's l = 1 "
                f"accuracy ({E} epochs)", "Sec 6; docs/theory.md §11",
                f"acc(SGDM, l=1) - acc(SGD, l={lmax}) < {m:.4f}", stable, bool(stable.high < m),
                "95% t-interval upper end below the equivalence margin (non-inferiority)", m),
        Verdict(f"mechanism, not noise: SGD with a minibatch (1+b)/(1-b) times larger (B={big}, same "
                f"lr and steps; less noise than SGDM) stays behind SGDM ({E} epochs)",
                "Sec 6, Sec 4.1; docs/theory.md §11", "acc(SGDM) - acc(SGD, large minibatch) > 0",
                noise, tc.above(noise), "95% t-interval of the paired difference above 0"),
        Verdict(f"mechanism, not noise: the control's minibatch (B={big}) gives SGD no more gradient "
                f"noise per step than SGDM has at B={B} (measured through the trainer)",
                "Sec 4.1; docs/theory.md §11", "tr Cov(one step at the control's B) / "
                "((1-b)/(1+b) tr Cov(one step at B)) <= 1", nr, bool(nr.low <= 1.0),
                f"99% bootstrap interval over {NOISE_REPLICAS} replicas from one w0: lower end <= 1",
                1.0),
        Verdict("negative control: SGDM with beta = 0 (= SGD) is not 'ahead' at l = 1",
                "control for the l = 1 rule", "the 'ahead' rule does not fire", ctrl,
                not tc.above(ctrl), "95% t-interval of the paired difference does not lie above 0"),
    ]


@styled
def plot(result: ExperimentResult, path):
    d, p = result.data, result.params
    ells, budgets = d["ells"], p["budgets"]
    fig, ax = subplots(3, figsize(3, aspect=1.05))
    for b, ep in enumerate(budgets):
        a = 1.0 if b else 0.55
        for k, (lab, fmt) in enumerate((("SGD", "s--"), (rf"SGDM $\beta={p['beta']}$", "o-"))):
            tc._errorbar(ax[0], ells, [tc.t_interval(d["acc"][b, i, k]) for i in range(len(ells))],
                         fmt=fmt, alpha=a, label=f"{lab}, {ep} epochs")
        tc.plot_gaps(ax[1], ells, [d["acc"][b, i, 1] - d["acc"][b, i, 0] for i in range(len(ells))],
                     alpha=a, label=f"{ep} epochs")
    ax[0].set(xscale="log", xlabel=r"SVAG $\ell$ (lr $\eta/\ell$, $\ell\times$ steps)", ylabel="test accuracy (95% CI)",
              title=f"B={p['batch']}, lr {float(d['lr'][0]):.3g}")
    legend_below(ax[0])
    ax[1].set(xscale="log", xlabel=r"SVAG $\ell$", ylabel="acc(SGDM) − acc(SGD)\n(paired, 95% CI)",
              title=r"the gap closes as $\ell$ grows")
    legend_below(ax[1])
    acc = tc.METRICS.index("test_acc")
    E2 = budgets[1]
    for i, ell in enumerate(ells):
        c = d[f"curves_E{E2}_l{ell}"]
        for k, lab in enumerate(("SGD", "SGDM")):
            ax[2].plot(np.arange(c.shape[2]), np.nanmean(c[k, acc], axis=-1), "--" if k == 0 else "-",
                       color=f"C{i}", label=rf"{lab}, $\ell={ell}$")
    ax[2].set(xlabel="epoch", ylabel="test accuracy\n(mean over replicas)", title=f"{E2} epochs")
    legend_below(ax[2])
    for a in ax[:2]:
        a.set_xticks([int(x) for x in ells], [str(int(x)) for x in ells])
        a.minorticks_off()
    return save_figure(fig, path)
