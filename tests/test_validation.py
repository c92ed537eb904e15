"""Every bad input raises a ValueError naming the parameter; divergence is reported."""
import warnings

import numpy as np
import pytest

import sdeverify as sv
from sdeverify.problems import SVAG, Quadratic

P = Quadratic(np.diag([1.0, 2.0]))
OK = dict(steps=10, paths=10, sigma=1.0)


@pytest.mark.parametrize("opt,match", [
    (sv.SGD(-0.1), "lr"),
    (sv.SGDM(0.1, 1.0), "beta"),
    (sv.SGDM(0.1, -0.1), "beta"),
    (sv.HeavyBall(0.1, 1.5), "momentum"),
    (sv.HeavyBall(0.1, 0.5, dampening=2.0), "dampening"),
    (sv.SGD(np.full(5, 0.1)), "lr schedule has 5 entries"),
    (sv.SGDM(0.1, np.full(3, 0.9)), "beta schedule"),
    (sv.SGD(np.nan), "lr"),
    (sv.SGDM(0.1, 0.9, m0=[1.0]), "m0"),
])
def test_bad_optimizer_parameters(opt, match):
    with pytest.raises(ValueError, match=match):
        sv.simulate(P, [opt], [0.0, 0.0], **OK)


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "steps"), (dict(paths=0), "paths"), (dict(paths=-3), "paths"),
    (dict(steps=2.5), "steps"), (dict(sigma=-1.0), "sigma"), (dict(sigma=np.inf), "sigma"),
    (dict(seed=-1), "seed"), (dict(record=[0, 11]), "record"), (dict(backend="gpu"), "backend"),
    (dict(observables=["nope"]), "observable"), (dict(observables=["x5"]), "coordinate"),
    (dict(on_divergence="shrug"), "on_divergence"),
])
def test_bad_simulate_arguments(kw, match):
    args = dict(OK)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        sv.simulate(P, [sv.SGD(0.1)], [0.0, 0.0], **args)


def test_bad_x0():
    with pytest.raises(ValueError, match="x0 has length 3"):
        sv.simulate(P, [sv.SGD(0.1)], [0.0, 0.0, 0.0], **OK)
    with pytest.raises(ValueError, match="x0 must be finite"):
        sv.simulate(P, [sv.SGD(0.1)], [np.nan, 0.0], **OK)


def test_bad_problems():
    with pytest.raises(ValueError, match="noise_cov must be positive semi-definite"):
        Quadratic(np.eye(2), noise_cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="hessian must be symmetric"):
        Quadratic([[1.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="noise_cov is 3x3"):
        Quadratic(np.eye(2), noise_cov=np.eye(3))
    with pytest.raises(ValueError, match="ell"):
        SVAG(P, 0.5)
    with pytest.raises(ValueError, match="problem must be"):
        sv.simulate("quadratic", [sv.SGD(0.1)], [0.0], **OK)


def test_divergence_is_reported_not_averaged():
    """SGD with ηh = 2.5 > 2 diverges on curvature 2; SGDM(β=0.9) is stable up to ηh = 38."""
    with pytest.warns(sv.DivergenceWarning, match="SGD: 50 paths"):
        res = sv.simulate(P, [sv.SGDM(1.25, 0.9), sv.SGD(1.25)], [1.0, 1.0], steps=3000,
                          paths=50, sigma=0.1)
    (d,) = res.divergence
    assert d.optimizer == "SGD" and d.fraction == 1.0 and d.first_step > 1
    assert np.all(np.isfinite(res.mean[0]))                # the stable optimizer is intact
    assert res.count[1, -1, 0] == 0 and np.isnan(res.mean[1, -1, 0])  # nothing silently averaged
    with pytest.raises(sv.DivergenceError):
        sv.simulate(P, [sv.SGD(1.25)], [1.0, 1.0], steps=3000, paths=5, sigma=0.1,
                    on_divergence="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sv.simulate(P, [sv.SGD(0.1)], [1.0, 1.0], steps=30, paths=5, sigma=0.1)


@pytest.mark.parametrize("check,good,bad,match", [
    ("seed", [0, 2 ** 64 - 1, np.uint64(7)], [-1, 2 ** 64, 1.0, True, "3", None],
     r"seed must be an integer in \[0, 2\*\*64\)"),
    ("on_divergence", ["warn", "raise", "ignore"], ["Warn", "", None, ["warn"]],
     "on_divergence must be 'warn', 'raise' or 'ignore'"),
    ("dtype", ["float64", "float32"], ["float16", np.float64, None, "f8"],
     "dtype must be 'float64' or 'float32'"),
])
def test_one_check_per_quantity(check, good, bad, match):
    """sdeverify.validation's seed / on_divergence / dtype checks: the values they accept come
    back as plain Python values; everything else is a ValueError naming the parameter and the
    allowed range."""
    from sdeverify import validation
    f = getattr(validation, check)
    for v in good:
        out = f(v)
        assert out == v and type(out) in (int, str)
    for v in bad:
        with pytest.raises(ValueError, match=match):
            f(v)


@pytest.mark.parametrize("seed", [-1, 2 ** 64, 2 ** 64 + 5, 1.5])
def test_seed_outside_the_generators_key_is_refused_everywhere(seed):
    """A seed is the generator's 64-bit key: ``simulate`` and ``coupled_slow_sde`` refuse one
    outside [0, 2**64) with the same message (``coupled_slow_sde`` used to take 2**64 + 5 and
    silently run seed 5)."""
    from sdeverify.problems.manifolds import Valley
    from sdeverify.slow_sde import coupled_slow_sde
    match = r"seed must be an integer in \[0, 2\*\*64\)"
    with pytest.raises(ValueError, match=match):
        sv.simulate(P, [sv.SGD(0.1)], [0.0, 0.0], seed=seed, **OK)
    with pytest.raises(ValueError, match=match):
        coupled_slow_sde(Valley(), [1.0, 0.0], eta=0.1, steps=2, paths=4, sigma=1.0, seed=seed)
