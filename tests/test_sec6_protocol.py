"""The Sec 6 protocol of the trained-network checks (train_common, train_batch_size,
train_svag): budgets, margins, data switching, and the rule that doubling the budget never
flips a verdict silently."""
import numpy as np
import pytest

from sdeverify.experiments import train_batch_size as tbs
from sdeverify.experiments import train_common as tc
from sdeverify.experiments import train_svag as tsv
from sdeverify.stats import Interval


def test_the_equivalence_margin_never_collapses():
    """At 0% or 100% accuracy the binomial SE is 0: the floor keeps 'comparable' from passing
    on a [0, 0] interval with a zero margin."""
    assert tc.margin(1.0, 2048) == tc.MARGIN_FLOOR == tc.margin(0.0, 2048)
    assert tc.margin(0.5, 100) == pytest.approx(0.05)
    assert not tc.inside(Interval(0.0, -0.006, 0.006), tc.margin(1.0, 10_000))


def test_budget_texts_name_every_outcome():
    assert "short-budget effect" in tc.budget_text(True, False, "SGDM ahead", 10)
    assert "long-budget effect" in tc.budget_text(False, True, "SGDM ahead", 10)
    assert "both budgets (10 and 20 epochs)" in tc.budget_text(True, True, "SGDM ahead", 10)
    assert "not SGDM ahead at either" in tc.budget_text(False, False, "SGDM ahead", 10)


def test_the_data_picks_the_network():
    assert tc.net_for("conv_teacher") == "resnet" == tc.net_for("cifar10:/some/folder")
    assert tc.net_for("teacher_student") == "mlp" == tc.net_for("digits")
    o = tc.data_overrides(tbs.NET_SIZES, "quick", "conv_teacher")
    assert o["net"] == "resnet" and o["data"] == "conv_teacher" and o == dict(
        tbs.NET_SIZES["resnet"]["quick"], net="resnet", data="conv_teacher")
    with pytest.raises(ValueError, match="data"):
        tc.build(dict(tbs.SIZES["smoke"], data="conv_teacher", backend="cpu"))   # MLP keys, image data
    with pytest.raises(ValueError, match="net"):
        tc.build(dict(tbs.SIZES["smoke"], net="vgg", backend="cpu"))


@pytest.mark.parametrize("mod", [tbs, tsv])
def test_the_checks_validate_overrides(mod):
    with pytest.raises(ValueError, match="unknown overrides"):
        mod.run(size="smoke", replica=3)
    for size in ("smoke", "quick", "full"):          # every size's batches fit its own data
        for net, sizes in mod.NET_SIZES.items():
            cfg = dict(sizes[size], backend="cpu")
            setup = tc.build(cfg)
            tc.check_batches(setup, cfg["batches"] if "batches" in cfg else (cfg["batch"],),
                             least=1)


def test_bad_batches_and_ells_are_refused():
    with pytest.raises(ValueError, match="batches"):
        tbs.run(size="smoke", batches=(64, 16))
    with pytest.raises(ValueError, match="batches"):
        tbs.run(size="smoke", batches=(16, 4000))
    with pytest.raises(ValueError, match="ells"):
        tsv.run(size="smoke", ells=(2, 4))


def _ahead_only_at_e():
    rs = np.random.default_rng(0)
    R = 6
    acc = np.empty((2, 2, 3, R))
    acc[...] = 0.6 + 0.001 * rs.normal(size=acc.shape)
    acc[1, 0, 1] += 0.05                        # large batch, budget E: SGDM ahead
    out = {"acc": acc, "margin": np.array([0.01, 0.01]), "edge_ratio": np.ones((2, 4)) * [[1.0], [0.3]],
           "control_beta0": np.zeros(R), "control_lr16": 0.1 + 0.001 * rs.normal(size=R),
           "lr": np.ones((2, 2, 2)), "tuned_at_edge": np.zeros((2, 2, 2), bool),
           "diverged": np.zeros((2, 2, 3), int)}
    return out


def test_a_gap_that_vanishes_at_twice_the_budget_is_named_a_short_budget_effect():
    vs = tbs._verdicts((16, 1024), (5, 10), _ahead_only_at_e())
    big = vs[1]
    assert big.passed and "short-budget effect" in big.claim, big.claim
    out = _ahead_only_at_e()
    out["acc"][1, 1, 1] += 0.05                 # now ahead at 2E as well
    assert "both budgets" in tbs._verdicts((16, 1024), (5, 10), out)[1].claim


def test_train_svag_never_prints_an_unfitted_order_as_nan():
    rs = np.random.default_rng(0)
    ells = [1, 2, 4, 8]
    for means, expect in (([0.2, 0.1, 0.05, -0.01], "mean gap <= 0 at l = 8"),
                          ([0.2, 0.1, 0.05, 0.025], "fitted order of the gap in 1/l: ")):
        gaps = [m + 0.001 * rs.normal(size=6) for m in means]
        text = tsv.order_text(ells, gaps)
        assert expect in text and "nan" not in text.lower(), text


TINY = dict(n=1024, batches=(16, 128), replicas=3, tune_replicas=1)


def test_doubling_the_budget_never_flips_a_verdict_silently():
    """run(E)'s 2E arm is bitwise run(2E)'s E arm (same seed, lrs re-tuned per budget), and a
    claim that passes at E but fails when the check is rerun at 2E says so in its text."""
    a = tbs.run(size="smoke", epochs=1, **TINY)
    b = tbs.run(size="smoke", epochs=2, **TINY)
    np.testing.assert_array_equal(a.data["acc"][:, 1], b.data["acc"][:, 0])
    np.testing.assert_array_equal(a.data["lr"][:, 1], b.data["lr"][:, 0])
    for va, vb in zip(a.verdicts[:2], b.verdicts[:2]):
        expect = {(True, True): "both budgets", (True, False): "short-budget effect",
                  (False, True): "long-budget effect", (False, False): "at either budget"}
        assert expect[va.passed, vb.passed] in va.claim, (va.claim, vb.passed)


@pytest.mark.parametrize("data, words", [("nope", "--data must be"),
                                         ("cifar10:/no/such/folder", "no such folder")])
def test_check_data_flag_refuses_bad_values_with_one_line(data, words):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "sdeverify", "check", "--smoke", "--only",
                        "train_svag", "--data", data], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_data_reaches_only_the_checks_that_train():
    from sdeverify import experiments
    from sdeverify.runner import train_data_overrides
    assert train_data_overrides(experiments.get("svag"), "quick", "conv_teacher") == {}
    assert train_data_overrides(tsv, "quick", None) == {}
    assert train_data_overrides(tsv, "quick", "conv_teacher")["net"] == "resnet"


def test_a_fit_given_a_state_trains_here_inside_a_cluster_session(monkeypatch):
    """Inside distributed.use(...) plain fit calls go to the session; a call that continues a
    given state (the Sec 6 method verdicts start from given weights) trains here instead of
    failing the check, while an explicit executor with state is still refused."""
    from sdeverify import dispatch
    from sdeverify.optim import SGD
    from sdeverify.train import MLP, fit, teacher_student

    class Refuse:                       # a session that must not be asked
        pass

    called = []
    monkeypatch.setitem(dispatch._RUNNERS, "fit", lambda *a, **k: called.append(k) or "sent")
    data = teacher_student(n=256, dim=4, classes=2, seed=1)
    m = MLP([4, 8, 2])
    w0 = m.init(0, 1)
    kw = dict(batch_size=16, steps=3, replicas=1, seed=0, metrics=("train_loss",))
    with dispatch.entered(Refuse()):
        res = fit(m, data, SGD(0.1), init_weights=w0, **kw)
        assert res.replicas == 1 and not called
        assert fit(m, data, SGD(0.1), **kw) == "sent" and called
    with pytest.raises(ValueError, match="train here only"):
        fit(m, data, SGD(0.1), init_weights=w0, executor=Refuse(), **kw)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("lr", [0.05, 0.7])
def test_the_stability_edge_is_where_the_iterates_stop_contracting(beta, lr):
    """The mechanism verdicts divide sharpness by ``stability_edge``; its formula is checked
    against the optimizers' own iterates (the engine's SGD/SGDM, no noise) on L = λx²/2: 3%
    below the edge they contract, 3% above they blow up."""
    import sdeverify as sv
    opt = sv.SGD(lr) if beta == 0.0 else sv.SGDM(lr, beta)
    edge = float(tc.stability_edge(lr, beta))
    runs = {f: sv.simulate(sv.problems.Quadratic([[f * edge]]), [opt], [1.0], steps=4000, paths=1,
                           sigma=0.0, record=[4000], on_divergence="ignore") for f in (0.97, 1.03)}
    below, above = runs[0.97], runs[1.03]
    assert not below.divergence and below.mean[0, 0, 1] < 1e-6      # |x|² contracted
    assert above.divergence and above.divergence[0].first_step < 4000


def test_the_noise_matched_batch_equals_the_ema_variance_reduction():
    """Sec 4.1's factor used by the noise control: the EMA m_k = (1−β)Σ_j β^j g_{k−j} of
    independent minibatch gradients has stationary variance (1−β)/(1+β) of one minibatch's,
    i.e. that of a minibatch ``noise_matched_batch(B)`` (the series summed directly)."""
    for beta in (0.0, 0.5, 0.9, 0.99):
        j = np.arange(20000)
        var_ratio = ((1 - beta) ** 2 * beta ** (2 * j)).sum()
        assert tc.noise_matched_batch(64, beta) == pytest.approx(64 / var_ratio, rel=1e-12)


def _record(i, log):
    log.append(i)
    return 10 * i


def test_run_longest_first_hands_out_by_work_and_returns_in_order():
    """Items run in decreasing order of their work and come back in the order given (the
    Sec 6 checks' sweeps rely on both)."""
    from sdeverify.experiments.base import Call, run_longest_first
    log = []
    works = [3.0, 7.0, 1.0, float("inf"), 5.0]
    out = run_longest_first([Call(_record, (i, log)) for i in range(5)], works)
    assert out == [0, 10, 20, 30, 40]
    assert log == [3, 1, 4, 0, 2]


def test_a_cached_setup_is_not_changed_by_a_run():
    """setup_for shares one network and data set between a process's runs: a whole check
    (augmentation, tunings, fits) leaves its arrays bitwise as a fresh build makes them (they
    are read-only: an in-place write raises, seen with one planted in ``fit_item``)."""
    cfg = dict(tbs.NET_SIZES["resnet"]["smoke"], backend="cpu")
    tc._setup.cache_clear()
    tsv.run(size="smoke", seed=1, **tc.data_overrides(tsv.NET_SIZES, "smoke", "conv_teacher"))
    misses = tc._setup.cache_info().misses
    cached, fresh = tc.setup_for(cfg).data, tc.build(cfg).data
    assert tc._setup.cache_info().misses == misses        # the run's own setup, reused
    for name in ("X_train", "y_train", "X_test", "y_test"):
        assert np.array_equal(getattr(cached, name), getattr(fresh, name)), name
