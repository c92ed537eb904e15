"""Fuzzing: random valid and invalid specs through ``simulate`` and the CLI.

Every call must either return finite, consistent statistics — checked against the stored
states, path by path — or raise a documented error (``ValueError`` and its subclasses
``UserFunctionError`` / ``ResultFileError``, or ``DivergenceError`` when asked to), and the
CLI must exit 0, or 2 with one line on stderr.  Never garbage, never a traceback.

Hypothesis runs derandomised (the "ci" profile of conftest.py), so CI sees the same examples
every time; ``SDEVERIFY_HYPOTHESIS=explore`` draws fresh ones.  Only d = 2 quadratics are
used: their kernels (float64 and float32) are compiled by the other tests anyway.
"""
import contextlib
import io
import math
import warnings

import numpy as np
from hypothesis import HealthCheck, event, given, settings, strategies as st

import sdeverify as sv
from sdeverify.cli import main
from sdeverify.problems import Quadratic

BAD_FLOATS = [math.nan, math.inf, -math.inf, -1.0, "x", None]
DOCUMENTED = (ValueError, sv.DivergenceError)


@st.composite
def problems(draw):
    lam = draw(st.lists(st.floats(0.0, 5.0), min_size=2, max_size=2))
    th = draw(st.floats(0.0, math.pi))
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    cov = np.diag(draw(st.lists(st.floats(0.0, 3.0), min_size=2, max_size=2)))
    dist = draw(st.sampled_from(["normal", "rademacher"]))
    return Quadratic(R @ np.diag(lam) @ R.T, cov, center=draw(st.lists(st.floats(-3, 3), min_size=2, max_size=2)),
                     noise_dist=dist)


def _pick(draw, good, bad, is_bad):
    return draw(st.sampled_from(bad)) if is_bad else draw(good)


@st.composite
def optimizers(draw, bad_field=None):
    out = []
    n = draw(st.integers(1, 3))
    wrong = draw(st.integers(0, n - 1))             # which optimizer gets the bad value
    for i in range(n):
        kinds = ["sgdm", "hb"] if bad_field == "beta" and i == wrong else ["sgd", "sgdm", "hb"]
        kind = draw(st.sampled_from(kinds))
        lr = _pick(draw, st.floats(0.0, 3.0), BAD_FLOATS, bad_field == "lr" and i == wrong)
        if kind == "sgd":
            out.append(sv.SGD(lr, name=f"o{i}"))
        elif kind == "sgdm":
            beta = _pick(draw, st.floats(0.0, 0.99), BAD_FLOATS + [1.0],
                         bad_field == "beta" and i == wrong)
            out.append(sv.SGDM(lr, beta, name=f"o{i}"))
        else:
            tau = _pick(draw, st.floats(0.0, 1.0), [2.0, math.nan], bad_field == "beta" and i == wrong)
            out.append(sv.HeavyBall(lr, draw(st.floats(0.01, 0.95)), tau, name=f"o{i}"))
    return out


FIELDS = ["lr", "beta", "x0", "steps", "paths", "sigma", "seed", "path_offset", "record",
          "dtype", "divergence_bound", "on_divergence"]


@st.composite
def specs(draw):
    """A valid spec (half the time), else one with exactly one invalid field."""
    bad = draw(st.one_of(st.none(), st.sampled_from(FIELDS)))
    pick = lambda field, good, wrong: _pick(draw, good, wrong, bad == field)
    steps = pick("steps", st.integers(1, 40), [0, -3, 2.5, None])
    s = steps if isinstance(steps, int) and steps > 0 else 10
    x0 = pick("x0", st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=2),
              [[0.0], [math.nan, 0.0], [0.0, 0.0, 0.0], "x"])
    scale = max([1.0] + [abs(v) for v in x0]) if bad != "x0" else 1.0
    return dict(
        bad=bad, problem=draw(problems()), optimizers=draw(optimizers(bad)), x0=x0,
        steps=steps, paths=pick("paths", st.integers(1, 600), [0, -1, 3.0, None]),
        sigma=pick("sigma", st.floats(0.0, 5.0), BAD_FLOATS),
        seed=pick("seed", st.integers(0, 2 ** 64 - 1), [-1, 2 ** 64, 1.5]),
        path_offset=pick("path_offset", st.sampled_from([0, 256, 2 ** 32, 2 ** 48 - 1024]),
                         [3, -256, 2 ** 48]),
        record=pick("record", st.one_of(st.none(), st.lists(st.integers(0, s), min_size=1, max_size=6)),
                    [[], [-1], [s + 1], [0.5]]),
        observables=draw(st.lists(st.sampled_from(["loss", "sqnorm", "x0", "x1"]), min_size=1,
                                  max_size=4, unique=True)),
        dtype=pick("dtype", st.sampled_from(["float64", "float32"]), ["float16", None]),
        divergence_bound=pick("divergence_bound",
                              st.one_of(st.none(), st.floats(1.01, 1e10).map(lambda f: f * scale),
                                        st.just(math.inf)),
                              [0.0, -1.0, math.nan, scale]),     # scale: not above |x0|
        on_divergence=pick("on_divergence", st.sampled_from(["warn", "ignore", "raise"]), ["shrug"]),
    )


def _consistent(res, spec):
    """Finite statistics that agree with the stored states, path by path."""
    n_opt, n_rec, paths = len(res.optimizers), len(res.steps), res.paths
    assert res.block_stats.shape[1:4] == (n_opt, n_rec, len(res.observables))
    assert res.states.shape == (n_opt, n_rec, paths, 2)
    bound = res.meta["divergence_bound"]
    tol = 1e-5 if spec["dtype"] == "float32" else 1e-9
    P = spec["problem"]
    for j in range(n_opt):
        for r, s in enumerate(res.steps):
            alive = ~((res.div_step[j] >= 0) & (res.div_step[j] <= s))
            X = res.states[j, r, alive]
            assert np.all(np.isfinite(X)) and np.all(np.abs(X) <= bound)
            for o, name in enumerate(res.observables):
                n = res.count[j, r, o]
                assert n + res.nonfinite[j, r, o] == alive.sum()
                if n == 0:
                    assert np.isnan(res.mean[j, r, o])
                    continue
                assert np.isfinite(res.mean[j, r, o])
                assert n == 1 or (np.isfinite(res.sem[j, r, o]) and res.sem[j, r, o] >= 0)
                if name == "loss":
                    v = np.array([P.value(x) for x in X])
                elif name == "sqnorm":
                    v = (X * X).sum(axis=1)
                else:
                    v = X[:, int(name[1:])]
                v = v[np.isfinite(v)]
                scale = np.abs(v).max() if v.size else 1.0
                assert abs(res.mean[j, r, o] - v.mean()) <= tol * max(scale, 1e-300) + 1e-300
    if spec["on_divergence"] == "raise":
        assert not res.issues()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=specs())
def test_simulate_returns_consistent_statistics_or_a_documented_error(spec):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sv.DivergenceWarning)
            res = sv.simulate(spec["problem"], spec["optimizers"], spec["x0"], steps=spec["steps"],
                              paths=spec["paths"], sigma=spec["sigma"], seed=spec["seed"],
                              path_offset=spec["path_offset"], record=spec["record"],
                              observables=spec["observables"], dtype=spec["dtype"],
                              divergence_bound=spec["divergence_bound"],
                              on_divergence=spec["on_divergence"], store_states=True)
    except DOCUMENTED as exc:
        assert str(exc).strip()
        event(f"error: {type(exc).__name__}")
        # a valid spec may only fail by divergence, and only when asked to raise
        assert spec["bad"] is not None or (isinstance(exc, sv.DivergenceError)
                                           and spec["on_divergence"] == "raise"), exc
        return
    assert spec["bad"] is None, f"invalid {spec['bad']} accepted"
    event("ran" + (" with issues" if res.issues() else ""))
    _consistent(res, spec)


FLAGS = {
    "--problem": st.sampled_from(["quadratic", "constant", "nope"]),
    "--dim": st.sampled_from(["2", "2", "0", "-1", "x"]),
    "--curvature": st.sampled_from(["4", "0.5", "nan", "-2", "inf"]),
    "--noise": st.sampled_from(["normal", "rademacher", "cauchy"]),
    "--optimizers": st.sampled_from(["sgd", "sgd,sgdm", "heavyball", "sgd,foo", ""]),
    "--lr": st.sampled_from(["0.05", "3", "-0.1", "nan", "1e400"]),
    "--beta": st.sampled_from(["0.9", "0", "1", "-0.5"]),
    "--dampening": st.sampled_from(["0", "0.5", "2"]),
    "--sigma": st.sampled_from(["1", "0", "-1", "inf"]),
    "--x0": st.sampled_from(["1", "-3", "nan"]),
    "--paths": st.sampled_from(["1", "300", "0", "-5", "1e3"]),
    "--steps": st.sampled_from(["1", "20", "0", "-2"]),
    "--record": st.sampled_from(["1", "4", "1000000000000", "0"]),
    "--seed": st.sampled_from(["0", "7", "-1", "18446744073709551616"]),
    "--svag": st.sampled_from(["1", "0.5", "nan"]),
    "--backend": st.sampled_from(["cpu", "cpu", "numpy", "gpu"]),
    "--dtype": st.sampled_from(["float64", "float32", "float16"]),
    "--out": st.sampled_from(["TMP", "/proc/sdeverify-not-writable"]),
}


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(chosen=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.just(None), max_size=4),
       data=st.data())
def test_cli_simulate_exits_0_or_2_with_one_line(chosen, data, tmp_path_factory):
    argv = ["simulate", "--quiet", "--dim", "2", "--paths", "256", "--steps", "10"]
    for flag in chosen:
        value = data.draw(FLAGS[flag], label=flag)
        if value == "TMP":
            value = str(tmp_path_factory.mktemp("out"))
        argv += [flag, value]
    if "--backend" in chosen and argv[argv.index("--backend") + 1] == "numpy":
        argv += ["--paths", "16"]                   # the reference engine is plain Python
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore", sv.DivergenceWarning)
        try:
            rc = main(argv)
        except SystemExit as exc:                   # argparse: bad choice / bad type
            rc = exc.code
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert rc in (0, 2), (argv, rc, err.getvalue())
    event(f"exit {rc}")
    if rc == 2:
        assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err.getvalue(), argv
    else:
        assert "95% intervals" in out.getvalue() and "Traceback" not in err.getvalue()
