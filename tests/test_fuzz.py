"""Fuzzing: random valid and invalid specs through ``simulate``, ``fit`` and the CLI
(``simulate``, ``train``, ``report``), and damaged result files and check folders.

Every call must either return finite, consistent statistics — checked against the stored
states, path by path — or raise a documented error (``ValueError`` and its subclasses
``UserFunctionError`` / ``ResultFileError``, or ``DivergenceError`` when asked to), and the
CLI must exit 0, or 2 with one line on stderr.  Never garbage, never a traceback.

Hypothesis runs derandomised (the "ci" profile of conftest.py), so CI sees the same examples
every time; ``SDEVERIFY_HYPOTHESIS=explore`` draws fresh ones.  Only d = 2 quadratics are
used: their kernels (float64 and float32) are compiled by the other tests anyway; the
trainer runs on its NumPy backend (nothing to compile).
"""
import contextlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

import sdeverify as sv
from sdeverify.cli import main
from sdeverify.problems import Quadratic
from sdeverify.train import teacher_student

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

def _run_cli(argv: list) -> tuple:
    """``main(argv)`` with stdout/stderr captured: (exit status, stdout, stderr); an argparse
    exit (bad choice / bad type) is its status."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore", sv.DivergenceWarning)
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, out, err

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
    rc, out, err = _run_cli(argv)
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert rc in (0, 2), (argv, rc, err.getvalue())
    event(f"exit {rc}")
    if rc == 2:
        assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err.getvalue(), argv
    else:
        assert "95% intervals" in out.getvalue() and "Traceback" not in err.getvalue()


# ---- the trainer -------------------------------------------------------------------------------
FIT_DATA = teacher_student(n=96, dim=3, classes=3)


FIT_FIELDS = ["lr", "optimizers", "batch_size", "steps", "replicas", "seed", "svag", "metrics",
              "eval_steps", "dtype", "on_divergence", "lr_schedule"]


@st.composite
def fit_specs(draw):
    """A valid ``fit`` call (half the time), else one with exactly one invalid argument.
    Learning rates reach 1e4 so that runs blow up, at any step."""
    bad = draw(st.one_of(st.none(), st.sampled_from(FIT_FIELDS)))
    pick = lambda field, good, wrong: _pick(draw, good, wrong, bad == field)
    steps = pick("steps", st.integers(1, 12), [0, -1, 2.5, None])
    s = steps if isinstance(steps, int) and steps > 0 else 6
    lr = pick("lr", st.sampled_from([0.0, 0.05, 0.5, 5.0, 1e4]), BAD_FLOATS + ["0.1", [0.1]])
    opts = [sv.SGD(lr, name="a"), sv.SGDM(draw(st.sampled_from([0.1, 1e3])), 0.9, name="b")]
    if bad == "optimizers":
        opts = draw(st.sampled_from([[sv.SGD], [], [sv.SGD(0.1), sv.SGD(0.2)], [3]]))
    metrics = pick("metrics", st.sampled_from([("train_loss", "test_acc"),
                                              ("train_acc",), ("test_loss", "grad_sqnorm")]),
                   [(), ("loss",), ("train_loss", "train_loss")])
    return dict(
        bad=bad, optimizers=opts, steps=steps, metrics=metrics,
        batch_size=pick("batch_size", st.integers(1, 36), [0, -2, 10 ** 6, 3.0]),   # 2B <= 72 rows
        replicas=pick("replicas", st.integers(1, 3), [0, -1, 1.5]),
        seed=pick("seed", st.integers(0, 2 ** 64 - 1), [-1, 2 ** 64, "0"]),
        svag=pick("svag", st.integers(1, 3), [0, 1.5]),
        eval_steps=pick("eval_steps", st.one_of(st.none(), st.lists(st.integers(0, s), min_size=1,
                                                                    max_size=4)),
                        [[-1], [s + 1], []]),
        dtype=pick("dtype", st.sampled_from(["float64", "float32"]), ["float16"]),
        on_divergence=pick("on_divergence", st.sampled_from(["warn", "ignore", "raise"]), ["shrug"]),
        lr_schedule=pick("lr_schedule", st.one_of(st.none(), st.just("ones")),
                         ["short", "nan"]),
    )


def _schedule(kind, steps):
    n = steps if isinstance(steps, int) and steps > 0 else 1
    return {None: None, "ones": np.ones(n), "short": np.ones(max(n - 1, 0)),
            "nan": np.full(n, np.nan)}[kind]


def _fit_consistent(res, spec, tmp_path):
    """Non-diverged replicas have finite values and losses within the divergence rule; the
    result reads back from its files exactly."""
    from sdeverify.train import TrainResult
    from sdeverify.train.training import DIVERGENCE_FACTOR
    J, E, R, K = res.values.shape
    assert (J, R) == res.div_step.shape and E == len(res.eval_steps)
    alive = res.valid                                                    # (J, E, R)
    assert np.all(np.isfinite(res.values[alive]))
    thr = DIVERGENCE_FACTOR * np.maximum(1.0, np.abs(res.batch_loss[:, :, 0]))
    for k, m in enumerate(res.metrics):
        if m in ("train_loss", "test_loss"):
            v = res.values[..., k]
            assert np.all(v[alive] <= np.broadcast_to(thr[:, None, :], v.shape)[alive])
    for j in range(J):
        for r in range(R):
            d = res.div_step[j, r]
            head = res.batch_loss[j, r, :d] if d >= 0 else res.batch_loss[j, r]
            assert np.all(np.isfinite(head)) and np.all(head <= thr[j, r])
    if spec["on_divergence"] == "raise":
        assert not res.divergence
    back = TrainResult.load(res.save(tmp_path / "fit.lr0.1"))
    for name in ("values", "batch_loss", "div_step", "eval_steps"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert back.optimizers == res.optimizers and back.meta == res.meta


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=fit_specs())
def test_fit_returns_consistent_results_or_a_documented_error(spec, tmp_path_factory):
    from sdeverify.train import MLP, fit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sv.DivergenceWarning)
            res = fit(MLP([3, 5, 3]), FIT_DATA, spec["optimizers"], batch_size=spec["batch_size"],
                      steps=spec["steps"], replicas=spec["replicas"], seed=spec["seed"],
                      svag=spec["svag"], metrics=spec["metrics"], eval_steps=spec["eval_steps"],
                      dtype=spec["dtype"], on_divergence=spec["on_divergence"],
                      lr_schedule=_schedule(spec["lr_schedule"], spec["steps"]),
                      eval_samples=16, backend="numpy")
    except DOCUMENTED as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()
        event(f"error: {type(exc).__name__}")
        assert spec["bad"] is not None or (isinstance(exc, sv.DivergenceError)
                                           and spec["on_divergence"] == "raise"), exc
        return
    assert spec["bad"] is None, f"invalid {spec['bad']} accepted"
    event("ran" + (" and diverged" if res.divergence else ""))
    _fit_consistent(res, spec, tmp_path_factory.mktemp("fit"))


# ---- saved files: truncation, bit flips -------------------------------------------------------
@pytest.fixture(scope="module")
def train_result():
    from sdeverify.train import MLP, fit
    return fit(MLP([3, 4, 3]), FIT_DATA, [sv.SGD(0.1), sv.SGDM(0.1, 0.9)], batch_size=8,
               steps=4, replicas=2, eval_steps=[0, 2, 4], backend="numpy", keep_weights=True)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.sampled_from(["json", "npz"]), how=st.sampled_from(["truncate", "flip"]),
       where=st.floats(0.0, 1.0), mask=st.integers(1, 255))
def test_damaged_train_result_files_are_refused_or_read_back_intact(train_result, tmp_path_factory,
                                                                   which, how, where, mask):
    from sdeverify.files import ResultFileError
    from sdeverify.train import TrainResult
    folder = tmp_path_factory.mktemp("damaged")
    jp = train_result.save(folder / "r.v1")
    path = jp if which == "json" else folder / json.loads(jp.read_text())["npz"]
    original = path.read_bytes()
    data = bytearray(original)
    at = min(int(where * len(data)), len(data) - 1)
    if how == "truncate":
        data = data[:at]
    else:
        data[at] ^= mask
    path.write_bytes(bytes(data))
    try:
        back = TrainResult.load(folder / "r.v1")
    except ResultFileError as exc:
        msg = str(exc)
        assert "\n" not in msg and "r.v1" in msg, msg
        event("refused: " + msg.replace(str(folder), "")[:50])
        return
    event("read back")
    # only an edit that changes nothing the JSON says (whitespace) may read back
    assert which == "json" and _same_json(bytes(data), original), "altered file accepted"
    for name in ("values", "batch_loss", "div_step", "eval_steps", "weights", "momentum"):
        np.testing.assert_array_equal(getattr(back, name), getattr(train_result, name))
    assert back.meta == train_result.meta and back.optimizers == train_result.optimizers


def _same_json(a: bytes, b: bytes) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


# ---- report of a check run: missing, altered, malformed files ------------------------------------
@pytest.fixture(scope="module")
def check_folder(tmp_path_factory):
    """A check folder as ``sdeverify check`` leaves it (two results, their figures, a
    content-hashed summary.json), made directly: no check needs to run for its files."""
    from sdeverify.experiments.base import ExperimentResult
    from sdeverify.files import write_hashed_json
    from sdeverify.verdict import Value, Verdict
    out = tmp_path_factory.mktemp("check")
    for name in ("alpha", "beta"):
        v = Verdict(f"{name} holds", "Thm 4.5", "value below 2", Value(1.0), True, "value < 2",
                    threshold=2.0)
        ExperimentResult(name, {"n": 3}, {"x": np.arange(3.0)}, (v,),
                         {"seed": 0, "size": "smoke"}).save(out)
        (out / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    write_hashed_json(out / "summary.json", {
        "size": "smoke", "seed": 0, "complete": True, "passed": True,
        "checks": [{"name": n, "passed": True} for n in ("alpha", "beta")]})
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(target=st.sampled_from(["summary.json", "beta.json", "npz"]),
       how=st.sampled_from(["delete", "truncate", "flip", "empty_list", "drop_key"]),
       where=st.floats(0.0, 1.0), mask=st.integers(1, 255))
def test_report_never_trusts_a_damaged_folder(check_folder, tmp_path_factory, target, how, where,
                                              mask):
    """``load_check``/``report``: a damaged folder is one clear error naming the file (exit
    2) or a run that reads as failed with the damage listed — or, for an edit that changes
    nothing of the content, the same passing run."""
    import shutil
    from sdeverify.checkrun import load_check
    from sdeverify.files import ResultFileError
    d = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(check_folder, d)
    path = d / target if target != "npz" else next(d.glob("beta.*.npz"))
    original = path.read_bytes()
    data = bytearray(original)
    at = min(int(where * len(data)), len(data) - 1)
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(bytes(data[:at]))
    elif how == "flip":
        data[at] ^= mask
        path.write_bytes(bytes(data))
    elif how == "empty_list":
        path.write_text("[]")
    else:
        try:
            doc = json.loads(data)
            doc.pop(sorted(doc)[int(where * (len(doc) - 1))])
            path.write_text(json.dumps(doc))
        except (ValueError, AttributeError):
            path.write_bytes(b"")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["report", str(d)])
    assert rc in (0, 1, 2) and "Traceback" not in err.getvalue()
    try:
        run = load_check(d)
    except (ResultFileError, FileNotFoundError) as exc:
        assert rc == 2 and len(err.getvalue().strip().splitlines()) == 1
        assert "summary.json" in str(exc) or "holds no" in str(exc), exc
        event("refused")
        return
    assert rc == (0 if run.passed else 1)
    if run.passed:
        event("intact")
        # only a change of nothing the JSON says, or a folder without a summary (whose
        # results then stand on their own, each verified)
        unchanged = path.exists() and path.suffix == ".json" and _same_json(path.read_bytes(),
                                                                            original)
        assert unchanged or (target == "summary.json" and how == "delete"), "damage accepted"
        assert set(run.results) == {"alpha", "beta"} and not run.problems
    else:
        event("failed run")
        assert run.problems or run.errors
        assert "FAIL" in (d / "report.html").read_text()


# ---- the CLI's train and report subcommands ------------------------------------------------------
TRAIN_FLAGS = {
    "--lr": st.sampled_from(["0.1", "1e4", "-1", "nan", "x", "0.1,0.2"]),
    "--svag": st.sampled_from(["1", "2", "0", "1.5"]),
    "--epochs": st.sampled_from(["1", "0", "-1"]),
    "--batch-size": st.sampled_from(["16", "0", "100000"]),
    "--replicas": st.sampled_from(["1", "2", "0"]),
    "--seed": st.sampled_from(["0", "-1", "18446744073709551616"]),
    "--optimizers": st.sampled_from(["sgd", "sgd,sgdm", "adam", "", "sgd,sgd"]),
    "--hidden": st.sampled_from(["4", "0", "x", "4,3"]),
    "--decay-epochs": st.sampled_from(["", "1", "-1", "x"]),
    "--data": st.sampled_from(["teacher", "images", "cifar10:/nonexistent", "nope"]),
    "--out": st.sampled_from(["TMP", "/proc/sdeverify-not-writable"]),
}


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(chosen=st.dictionaries(st.sampled_from(sorted(TRAIN_FLAGS)), st.just(None), max_size=3),
       data=st.data())
def test_cli_train_exits_0_or_2_with_one_line(chosen, data, tmp_path_factory):
    argv = ["train", "--quiet", "--model", "mlp", "--hidden", "4", "--data", "teacher",
            "--n-train", "64", "--epochs", "1", "--batch-size", "16", "--replicas", "1",
            "--backend", "numpy", "--dtype", "float64", "--out", str(tmp_path_factory.mktemp("t"))]
    for flag in chosen:
        value = data.draw(TRAIN_FLAGS[flag], label=flag)
        if value == "TMP":
            value = str(tmp_path_factory.mktemp("out"))
        argv += [flag, value]
    rc, out, err = _run_cli(argv)
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert rc in (0, 2), (argv, rc, err.getvalue())
    assert "Traceback" not in err.getvalue()
    event(f"exit {rc}")
    if rc == 2:
        assert len(lines) == 1 and "error" in lines[0], argv
    else:
        from sdeverify.train import TrainResult
        folder = Path(argv[len(argv) - 1 - argv[::-1].index("--out") + 1])
        saved = sorted(folder.glob("train-*.json"))
        assert saved and all(TrainResult.load(p).replicas >= 1 for p in saved)
