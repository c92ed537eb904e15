"""No silent garbage: divergence flagged long before overflow, non-finite and
raising observables reported, 64-bit path streams, saved results as one unit, merges that
refuse different simulations, user functions checked before they run.

All runs use d = 2 quadratics (the kernel the checks and the other tests compile anyway) or
the NumPy engine, so this file adds no kernel compilation to a cold CI run beyond the user
functions defined here.
"""
import dataclasses
import json
import math
import os
import warnings

import numba
import numpy as np
import pytest

import sdeverify as sv
from sdeverify import rng
from sdeverify.engine.spec import memory_estimate
from sdeverify.files import hashed_json
from sdeverify.observables import UserFunctionError
from sdeverify.problems import NGOS, Quadratic
from sdeverify.result import ResultFileError, SimulationResult

P = Quadratic(np.diag([0.5, 2.0]))
EYE = Quadratic(np.eye(2))


def _sim(problem=P, opts=(sv.SGD(0.1), sv.SGDM(0.1, 0.9)), x0=(1.0, -1.0), **kw):
    args = dict(steps=20, paths=300, sigma=1.0, seed=5)
    args.update(kw)
    return sv.simulate(problem, list(opts), list(x0), **args)


# ---- 1. divergence ---------------------------------------------------------------------------
def test_blow_up_is_flagged_long_before_overflow():
    """The issue's example: lr 3 on curvature 1 multiplies x by −2 each step.  The mean used
    to be 9.3e120 with nothing reported; now every path is flagged once some |x_i| > 1e8 ·
    max(1, |x0|∞), i.e. at step ≈ log2(1e8) ≈ 27 (noise shifts it by a step or two)."""
    with pytest.warns(sv.DivergenceWarning, match="SGD: 256 paths"):
        res = sv.simulate(EYE, sv.SGD(3.0), [1.0, 1.0], steps=200, paths=256, sigma=1.0)
    (d,) = res.divergence
    assert d.fraction == 1.0 and 22 <= d.first_step <= 30
    assert np.all((res.div_step[0] >= 22) & (res.div_step[0] <= 32))
    assert np.all(np.isnan(res.mean[0, -1])) and res.count[0, -1, 0] == 0
    assert "DIVERGED SGD" in res.summary() and "1e+08" in res.summary()
    with pytest.raises(sv.DivergenceError, match="diverged"):
        sv.simulate(EYE, sv.SGD(3.0), [1.0, 1.0], steps=200, paths=256, sigma=1.0,
                    on_divergence="raise")
    # a flagged path stops at its first iterate beyond the bound: |x| in (1e8, ~2.5e8]
    top = np.abs(res.x_final[0]).max(axis=1)
    assert np.all((top > 1e8) & (top < 2.5e8))
    # the bound is relative to the start: x0 = 1e3 moves it to 1e11, crossed as many steps later
    with pytest.warns(sv.DivergenceWarning):
        far = sv.simulate(EYE, sv.SGD(3.0), [1e3, 1e3], steps=200, paths=256, sigma=1.0)
    top = np.abs(far.x_final[0]).max(axis=1)
    assert np.all((top > 1e11) & (top < 2.5e11))
    assert abs(far.divergence[0].first_step - d.first_step) <= 3


def test_divergence_bound_is_a_parameter_and_matches_the_reference():
    kw = dict(steps=60, paths=40, sigma=0.5, record=[0, 10, 30, 60], on_divergence="ignore")
    a = _sim(EYE, [sv.SGD(2.2), sv.SGD(0.5)], divergence_bound=50.0, **kw)
    b = _sim(EYE, [sv.SGD(2.2), sv.SGD(0.5)], divergence_bound=50.0, backend="numpy", **kw)
    assert np.array_equal(a.div_step, b.div_step) and a.divergence == b.divergence
    assert a.divergence[0].optimizer == "SGD" and a.divergence[0].fraction == 1.0
    assert np.all(np.abs(a.x_final[1]) <= 50.0) and len(a.divergence) == 1
    # a diverged path is out from its step on: count + diverged = paths at every recorded step
    for r, s in enumerate(a.steps):
        gone = ((a.div_step >= 0) & (a.div_step <= s)).sum(axis=1)
        assert np.array_equal(a.count[:, r, 0] + gone, [40, 40])
    with pytest.raises(ValueError, match="divergence_bound"):
        _sim(divergence_bound=0.0)
    with pytest.raises(ValueError, match="divergence_bound"):
        _sim(divergence_bound=np.nan)


@numba.njit
def _unit_lanes(X, p, Z, G, V):
    for i in range(X.shape[0]):
        for ln in range(X.shape[1]):
            G[i, ln] = X[i, ln]
            V[i, ln] = Z[i, ln]


@numba.njit
def _unit_loss(x, p):
    return 0.5 * (x * x).sum()


def _unit_with_lanes(d: int) -> NGOS:
    """½|x|² with v = ξ (``_g``, ``_noise_ok`` below), given as a lanes oracle too (the CPU
    engine's split step with it)."""
    return NGOS(dim=d, grad=_g, noise=_noise_ok, loss=_unit_loss, n_draws=d,
                oracle_lanes=_unit_lanes, name="unit_lanes")


@pytest.mark.parametrize("make", [lambda: Quadratic(np.eye(2)),            # fused step
                                  lambda: Quadratic(np.eye(10)),           # split step, d > 8
                                  lambda: _unit_with_lanes(3)],            # split, lanes oracle
                         ids=["fused", "split", "lanes"])
def test_with_no_bound_a_path_stops_at_its_first_infinite_coordinate_in_every_engine(make):
    """divergence_bound = inf: lr 3 multiplies x by about −2 a step until a coordinate
    overflows; every engine stops the path at that step — not a step earlier because the sum of
    finite coordinates overflowed (the CPU engine's old test), nor later because inf ≤ inf
    (the reference's and the CUDA engine's old test)."""
    P = make()
    kw = dict(steps=1100, paths=20, sigma=0.5, seed=3, divergence_bound=np.inf,
              on_divergence="ignore")
    x0 = np.ones(P.dim)
    a = sv.simulate(P, [sv.SGD(3.0), sv.SGD(0.1)], x0, **kw)
    b = sv.simulate(P, [sv.SGD(3.0), sv.SGD(0.1)], x0, backend="numpy", **kw)
    np.testing.assert_array_equal(a.div_step, b.div_step)
    np.testing.assert_array_equal(a.x_final, b.x_final)
    assert np.all(a.div_step[0] > 1000) and np.all(a.div_step[1] == -1)
    X = a.x_final[0]                              # frozen at the first infinite coordinate
    assert np.all(np.isinf(X).any(axis=1)) and not np.isnan(X).any()


@numba.njit
def _nan_first_grad(x, p, out):
    """x_0 turns NaN once it passes 1.5 (log of a negative number); the other coordinates stay
    finite — a NaN in the first coordinate followed by finite ones."""
    out[0] = x[0] + 0.0 * np.log(1.5 - x[0])
    for i in range(1, x.shape[0]):
        out[i] = x[i]


def _nan_first(d: int, lanes: bool) -> NGOS:
    return NGOS(dim=d, grad=_nan_first_grad, noise=_noise_ok, loss=_unit_loss, n_draws=d,
                oracle_lanes=_nan_first_lanes if lanes else None, name="nan_first")


@numba.njit
def _nan_first_lanes(X, p, Z, G, V):
    for ln in range(X.shape[1]):
        G[0, ln] = X[0, ln] + 0.0 * np.log(1.5 - X[0, ln])
        V[0, ln] = Z[0, ln]
    for i in range(1, X.shape[0]):
        for ln in range(X.shape[1]):
            G[i, ln] = X[i, ln]
            V[i, ln] = Z[i, ln]


@pytest.mark.parametrize("make", [lambda: _nan_first(3, False),             # fused step
                                  lambda: _nan_first(10, False),            # split step
                                  lambda: _nan_first(3, True)],             # split, lanes oracle
                         ids=["fused", "split", "lanes"])
def test_a_nan_coordinate_stops_its_path_whatever_follows_it(make):
    """A path whose first coordinate turns NaN while the others stay finite stops at that
    step in every engine (a max over coordinates that forgets a NaN would let it run on)."""
    P = make()
    kw = dict(steps=40, paths=30, sigma=3.0, seed=2, on_divergence="ignore")
    x0 = np.zeros(P.dim)
    a = sv.simulate(P, [sv.SGD(0.3), sv.SGDM(0.3, 0.5)], x0, **kw)
    b = sv.simulate(P, [sv.SGD(0.3), sv.SGDM(0.3, 0.5)], x0, backend="numpy", **kw)
    np.testing.assert_array_equal(a.div_step, b.div_step)
    assert (a.div_step >= 0).sum() >= 10                   # the NaNs happen, and are caught
    X = a.x_final[a.div_step >= 0]
    assert np.all(np.isnan(X[:, 0])) and np.all(np.isfinite(X[:, 1:]))


def test_healthy_runs_are_not_flagged():
    """Stable runs far from the bound (here ‖x‖ ~ 1 against 1e8) raise nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = _sim(steps=200, on_divergence="raise")
    assert not res.issues() and np.all(res.count == 300)


@numba.njit(error_model="numpy")
def log_x0(x):                      # NaN once x0 < 0, -inf at 0: a user observable gone bad
    return np.log(x[0]) if x[0] > 0 else np.nan


@numba.njit
def fussy(x):
    if x[1] > 5.0:
        raise ValueError("fussy: x1 too large")
    return x[1]


USER = ["x0", log_x0, fussy]        # one tuple of user functions: one kernel for both tests


def test_nonfinite_observables_are_counted_and_reported():
    kw = dict(steps=30, paths=300, sigma=1.0, observables=USER, record=[0, 10, 30])
    with pytest.warns(sv.DivergenceWarning, match="non-finite values of 'log_x0'"):
        a = _sim(**kw)
    b = _sim(backend="numpy", on_divergence="ignore", **kw)
    bad = a.nonfinite
    assert bad[:, 0].sum() == 0 and bad[:, -1, 1].min() > 0 and bad[:, :, [0, 2]].sum() == 0
    assert np.array_equal(bad, b.nonfinite) and np.array_equal(a.count, b.count)
    # excluded, not averaged: count + non-finite = paths, and the mean is that of the rest
    assert np.all(a.count + bad == 300) and np.all(np.isfinite(a.mean))
    (nf, *_) = a.nonfinite_observables
    assert nf.observable == "log_x0" and nf.first_step == 10
    assert "NON-FINITE" in a.summary()
    with pytest.raises(sv.DivergenceError, match="log_x0"):
        _sim(on_divergence="raise", **kw)


def test_a_raising_observable_is_an_error_naming_it():
    kw = dict(steps=30, paths=300, sigma=30.0, observables=USER, x0=(1.0, 4.5))
    with pytest.raises(UserFunctionError, match="observable 'fussy'.*test_reliability.fussy"):
        _sim(**kw)
    with pytest.raises(UserFunctionError, match="fussy: x1 too large"):
        _sim(backend="numpy", **dict(kw, paths=20))
    with pytest.raises(UserFunctionError, match="fussy.*raised at x0"):   # the probe, at x0
        _sim(**dict(kw, x0=(1.0, 6.0)))


@numba.njit
def _fussy_loss(x, p):
    if x[1] > 5.0:
        raise ValueError("fussy loss: x1 too large")
    return 0.5 * (x[0] ** 2 + x[1] ** 2)


def test_a_raising_user_loss_is_not_swallowed():
    """A user's loss that raises inside the kernel stops the run with the user's own
    exception and message (it is inlined into the kernel's try block, and Numba does not
    catch a raise from inlined code there; calling it non-inlined would catch it, but then a
    kernel cached for a loss defined in ``exec``'d code could not be loaded again — the
    README's example — so it stays inlined).  Never a count of NaNs averaged in.  Planted:
    ``run_ranges`` dropping a worker thread's exception makes this test fail."""
    from sdeverify.problems import NGOS
    P = NGOS(dim=2, grad=_g, noise=_noise_ok, loss=_fussy_loss, name="fussy")
    with pytest.raises(ValueError, match="fussy"):     # the user's error, or UserFunctionError naming it
        sv.simulate(P, [sv.SGD(0.05)], (1.0, 4.5), steps=30, paths=300, sigma=30.0, observables=["loss"])


def test_only_the_packages_own_losses_skip_the_try_block():
    """The kernel drops the try block (≈ 0.7 s of its compile) only for the package's own
    losses without user observables: they are plain arithmetic and cannot raise."""
    from sdeverify.engine.cpu import _needs_guard
    from sdeverify.observables import user_evaluator
    q = sv.problems.Quadratic(np.eye(2))
    assert not _needs_guard(q.loss, user_evaluator(()))
    assert not _needs_guard(sv.problems.CosineWell(2).loss, user_evaluator(()))
    assert _needs_guard(q.loss, user_evaluator((log_x0,)))
    assert _needs_guard(_fussy_loss, user_evaluator(()))


# ---- 5. user functions -----------------------------------------------------------------------
@numba.njit
def _g(x, p, out):
    for i in range(x.shape[0]):
        out[i] = x[i]


@numba.njit
def _noise_ok(x, p, xi, out):
    for i in range(x.shape[0]):
        out[i] = xi[i]


@numba.njit
def _noise_overread(x, p, xi, out):
    for i in range(x.shape[0]):
        out[i] = xi[i + 5]


@numba.njit
def _l(x, p):
    return 0.5 * np.sum(x * x)


@numba.njit
def two_args(x, p):
    return x[0]


@numba.njit
def returns_array(x):
    return x * 2.0


def test_noise_reading_beyond_n_draws_is_refused():
    """Used to lose every path silently (count 0, mean NaN, nothing reported)."""
    bad = NGOS(dim=2, grad=_g, noise=_noise_overread, loss=_l, n_draws=2, name="overread")
    with pytest.raises(UserFunctionError, match="noise function .*_noise_overread.*n_draws"):
        sv.simulate(bad, sv.SGD(0.1), [1.0, 1.0], steps=5, paths=10, sigma=1.0)
    short = NGOS(dim=2, grad=_g, noise=_noise_ok, loss=_l, n_draws=1, name="short")
    with pytest.raises(UserFunctionError, match="reads or writes beyond"):
        sv.simulate(short, sv.SGD(0.1), [1.0, 1.0], steps=5, paths=10, sigma=1.0)


def test_wrong_signatures_name_the_function_and_the_expected_signature():
    with pytest.raises(UserFunctionError, match=r"observable function .*two_args.*h\(x\) -> float"):
        _sim(observables=[two_args])
    with pytest.raises(UserFunctionError, match="returns_array.*not a float|returns_array.*h\\(x\\)"):
        _sim(observables=[returns_array])
    wrong = NGOS(dim=2, grad=two_args, noise=_noise_ok, loss=_l, name="wrong")
    with pytest.raises(UserFunctionError, match=r"grad function .*two_args.*grad\(x, p, out\)"):
        sv.simulate(wrong, sv.SGD(0.1), [1.0, 1.0], steps=5, paths=10, sigma=1.0)


@numba.njit
def _g_writes_past_out(x, p, out):
    for i in range(x.shape[0] + 40):
        out[i] = x[0]


@numba.njit
def _g_returns_gradient(x, p, out):
    return x * 1.0


@numba.njit
def _loss_vector(x, p):
    return x * 2.0


@numba.njit
def _loss_text(x, p):
    return "loss"


def test_a_grad_writing_past_out_is_refused_before_compiled_code_runs():
    """The compiled function used to run first (on a plain ``out`` of length d): the clean
    error came, then the process aborted later with ``free(): invalid next size``."""
    bad = NGOS(dim=2, grad=_g_writes_past_out, noise=_noise_ok, loss=_l, name="overwrite")
    with pytest.raises(UserFunctionError, match="grad function .*_g_writes_past_out.*writes beyond"):
        sv.simulate(bad, sv.SGD(0.1), [1.0, 1.0], steps=5, paths=10, sigma=1.0)


def test_compiled_user_code_gets_guard_space_and_a_write_into_it_is_reported():
    """For what the plain-Python run cannot judge: the compiled call writes into guard space,
    which is checked after the call."""
    from sdeverify.engine import probe
    x, p, out = np.ones(2), np.zeros(1), np.zeros(2)
    with pytest.raises(UserFunctionError, match="writes past the end of out .length 2."):
        probe._call_guarded("grad", _g_writes_past_out, ("x", "p", "out"), x, p, out)
    probe._call_guarded("grad", _g, ("x", "p", "out"), x, p, out)          # within bounds: fine


@pytest.mark.parametrize("role,kw,what", [
    ("loss", dict(loss=_loss_vector), "loss function .*_loss_vector returned ndarray, not a float"),
    ("loss", dict(loss=_loss_text), "loss function .*_loss_text returned str, not a float"),
    ("grad", dict(grad=_g_returns_gradient),
     "grad function .*_g_returns_gradient returned a ndarray instead of writing into out"),
])
def test_return_types_of_loss_and_grad_are_one_line_errors(role, kw, what):
    args = dict(dim=2, grad=_g, noise=_noise_ok, loss=_l, name="typed")
    with pytest.raises(UserFunctionError, match=what) as info:
        sv.simulate(NGOS(**dict(args, **kw)), sv.SGD(0.1), [1.0, 1.0], steps=5, paths=10, sigma=1.0)
    assert "\n" not in str(info.value)


def test_names_must_be_non_empty_strings():
    for make in (lambda: sv.SGD(0.1, name=""), lambda: sv.SGDM(0.1, 0.9, name=" "),
                 lambda: sv.HeavyBall(0.1, 0.9, name=3),
                 lambda: NGOS(dim=2, grad=_g, noise=_noise_ok, loss=_l, name="")):
        with pytest.raises(ValueError, match="non-empty string"):
            make()
    with pytest.raises(ValueError, match="observable names"):
        _sim(observables={"": "loss"})


def test_schedule_helpers_reject_bad_input():
    from sdeverify.schedules import averaged_lr
    for args, match in [(([], 0.9), "lr must not be empty"), (([0.1, np.nan], 0.9), "lr must be finite"),
                        (([0.1, -0.1], 0.9), "lr must be >= 0"), ((0.1, [np.inf]), "beta must be finite"),
                        ((0.1, -0.5), "beta must be >= 0"), (([0.1, 0.1], [0.5, 1.0]), "beta must be in")]:
        with pytest.raises(ValueError, match=match):
            averaged_lr(*args)
    for kw, match in [(dict(lr=[], momentum=0.9), "lr must not be empty"),
                      (dict(lr=0.1, momentum=np.nan), "momentum must be finite"),
                      (dict(lr=-0.1, momentum=0.9), "lr must be >= 0"),
                      (dict(lr=0.1, momentum=0.9, dampening=np.inf), "dampening"),
                      (dict(lr=0.1, momentum=0.9, c0=-1.0), "c0")]:
        with pytest.raises(ValueError, match=match):
            sv.heavy_ball_to_sgdm(steps=5, **kw)


def test_runs_too_large_for_memory_fail_up_front_with_the_estimate():
    with pytest.raises(ValueError, match=r"needs about .* GiB of memory"):
        _sim(paths=2 ** 47)
    with pytest.raises(ValueError, match=r"needs about .* GiB"):
        _sim(steps=10 ** 13)
    with pytest.raises(ValueError, match="record"):
        _sim(record=[0, 2 ** 40])
    est = memory_estimate(n_opt=2, steps=20, paths=300, dim=2, n_rec=17, n_obs=2, store_states=False)
    assert 0 < est < 2 ** 22


# ---- 2. streams ------------------------------------------------------------------------------
def test_path_indices_are_64_bit():
    """path_offset = 2**32 used to repeat path 0's draws bitwise."""
    kw = dict(steps=5, paths=256, store_states=True, record=[5])
    base = _sim(**kw)
    for off in (2 ** 32, 2 ** 33, 2 ** 40 + 2 ** 32, 2 ** 48 - 256):
        hi = _sim(path_offset=off, **kw)
        assert not np.any(hi.states == base.states), off
    a, b = _sim(path_offset=2 ** 32, **kw), _sim(path_offset=2 ** 32 + 256, **kw)
    assert not np.any(a.states == b.states)
    ref = _sim(path_offset=2 ** 32, backend="numpy", **dict(kw, paths=20))
    np.testing.assert_allclose(ref.states, a.states[:, :, :20], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="2\\*\\*48"):
        _sim(path_offset=2 ** 48, paths=1)


def test_streams_below_2_32_are_unchanged_and_the_layout_is_as_documented():
    """Word 3 of the counter is the stream itself below path 2**32 (every earlier stream is
    bitwise unchanged) and stream + 2**16 (path >> 32) above."""
    k0, k1 = rng.key_words(77)
    for path, stream in [(5, 1), (2 ** 32 - 1, 70000), (2 ** 32 + 5, 1), (3 * 2 ** 32 + 9, 0)]:
        got = rng.draws_numpy(rng.UNIFORM, 77, np.array([path]), 3, stream, 4)[0]
        c3 = (stream + ((path >> 32) << 16)) & 0xFFFFFFFF
        w = rng.philox4x32(np.uint64(0), np.uint64(3), np.uint64(path & 0xFFFFFFFF),
                           np.uint64(c3), k0, k1)
        assert np.array_equal(got, [(int(v) + 0.5) * 2.0 ** -32 for v in w])
    with pytest.raises(ValueError, match="stream < 2\\*\\*16"):
        rng.draws_numpy(rng.NORMAL, 0, np.array([2 ** 32]), 0, 2 ** 16, 4)
    with pytest.raises(ValueError, match="2\\*\\*48"):
        rng.draws_numpy(rng.NORMAL, 0, np.array([2 ** 48]), 0, 0, 4)


# ---- 3. files --------------------------------------------------------------------------------
def _pair_files(folder, stem="r"):
    return sorted(p.name for p in folder.iterdir())


def test_save_is_one_unit_and_load_checks_the_pairing(tmp_path):
    a = _sim(seed=1)
    path = a.save(tmp_path / "r")
    doc = json.loads(path.read_text())
    assert doc["npz"].startswith("r.") and (tmp_path / doc["npz"]).exists()
    assert _pair_files(tmp_path) == sorted(["r.json", doc["npz"]])
    back = SimulationResult.load(tmp_path / "r")
    assert np.array_equal(back.mean, a.mean) and back.meta["fingerprint"] == a.meta["fingerprint"]
    # a second save replaces the pair; nothing of the first is left
    b = _sim(seed=2, opts=[sv.SGDM(0.1, 0.5, name="other")], observables=["x0"])
    b.save(tmp_path / "r")
    assert len(_pair_files(tmp_path)) == 2
    assert SimulationResult.load(tmp_path / "r").optimizers == ("other",)
    # a .json next to another result's arrays: refused, saying why (the edited JSONs are
    # re-hashed, as a consistent but mispaired file would be, to reach the pairing checks)
    a.save(tmp_path / "s")
    s_doc = _unhashed(tmp_path / "s.json")
    r_doc = _unhashed(tmp_path / "r.json")
    (tmp_path / "s.json").write_text(hashed_json(dict(s_doc, npz=r_doc["npz"])))
    with pytest.raises(ResultFileError, match="hash"):
        SimulationResult.load(tmp_path / "s")
    (tmp_path / "s.json").write_text(hashed_json(dict(s_doc, npz=r_doc["npz"],
                                                      npz_sha256=r_doc["npz_sha256"])))
    with pytest.raises(ResultFileError, match="optimizers|steps|shape"):
        SimulationResult.load(tmp_path / "s")
    with pytest.raises(ResultFileError, match="no such result"):
        SimulationResult.load(tmp_path / "missing")


def _unhashed(path):
    doc = json.loads(path.read_text())
    doc.pop("content_sha256")
    return doc


def test_an_edited_json_is_refused_by_its_content_hash(tmp_path):
    """Any edit of a result's JSON (a statistic, the metadata) is caught on load."""
    _sim(seed=1).save(tmp_path / "r")
    doc = json.loads((tmp_path / "r.json").read_text())
    doc["meta"]["seed"] = 99
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(ResultFileError, match=r"r\.json.*content hash"):
        SimulationResult.load(tmp_path / "r")
    del doc["content_sha256"]
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(ResultFileError, match="cannot be verified"):
        SimulationResult.load(tmp_path / "r")


def test_the_earlier_unhashed_layout_is_refused(tmp_path):
    """A JSON edited back to the pre-hash layout (``NAME.json`` + ``NAME.npz``, no hashes)
    would let another run's arrays load under this run's labels: it is refused, saying so."""
    a = _sim(seed=1)
    a.save(tmp_path / "r")
    doc = _unhashed(tmp_path / "r.json")
    other = _sim(seed=2)                                  # same labels, other numbers
    other.save(tmp_path / "o")
    o_doc = json.loads((tmp_path / "o.json").read_text())
    os.replace(tmp_path / o_doc["npz"], tmp_path / "r.npz")
    doc.pop("npz"), doc.pop("npz_sha256")
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(ResultFileError, match="earlier, unverifiable layout"):
        SimulationResult.load(tmp_path / "r")


def test_consistently_edited_arrays_of_the_wrong_kind_are_refused(tmp_path):
    """A pair rewritten with both hashes recomputed (as a buggy writer would): the dtype
    check still refuses float divergence steps."""
    from sdeverify.files import load_pair, save_pair
    _sim(seed=1).save(tmp_path / "r")
    doc, arrays, _ = load_pair(tmp_path / "r")
    doc.pop("npz"), doc.pop("npz_sha256")
    arrays["div_step"] = arrays["div_step"].astype(np.float64)
    save_pair(tmp_path / "r", doc, arrays, labels=("optimizers", "observables", "steps"))
    with pytest.raises(ResultFileError, match="'div_step' has dtype float64"):
        SimulationResult.load(tmp_path / "r")


def test_an_invalid_lr_is_named_by_its_optimizer_and_text_is_refused():
    """It used to say "entry 0" without naming the optimizer, and SGD("0.1") ran as 0.1."""
    with pytest.raises(ValueError, match="optimizer 'slow': lr must be in .*entry 1 is -1"):
        _sim(opts=[sv.SGD(0.1, name="fast"), sv.SGD([0.1, -1.0] + [0.1] * 18, name="slow")])
    with pytest.raises(ValueError, match="optimizer 'text': lr must be a number"):
        _sim(opts=[sv.SGD("0.1", name="text")])
    with pytest.raises(ValueError, match="got the class SGDM; construct one"):
        _sim(opts=[sv.SGD(0.1), sv.SGDM])


def test_dotted_names_are_kept_whole(tmp_path):
    """``run_lr0.1`` and ``run_lr0.2`` are two results (the suffix is appended, never
    substituted for the last dotted part)."""
    a, b = _sim(seed=1), _sim(seed=2, opts=[sv.SGD(0.2, name="other")])
    assert a.save(tmp_path / "run_lr0.1").name == "run_lr0.1.json"
    b.save(tmp_path / "run_lr0.2")
    assert SimulationResult.load(tmp_path / "run_lr0.1").optimizers == a.optimizers
    assert SimulationResult.load(tmp_path / "run_lr0.2").optimizers == ("other",)
    assert SimulationResult.load(tmp_path / "run_lr0.1.json").optimizers == a.optimizers
    assert len(list(tmp_path.iterdir())) == 4


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_save_killed_at_any_moment_leaves_a_loadable_correct_pair(tmp_path, monkeypatch, kill_at):
    """Kill the save at its 1st rename (the .npz) or its 2nd (the .json, the commit point):
    the old pair loads, correctly paired; the next save cleans up and succeeds."""
    old, new = _sim(seed=1), _sim(seed=2, opts=[sv.SGD(0.2, name="new")])
    old.save(tmp_path / "r")
    real, calls = os.replace, []

    def dying(src, dst):
        calls.append(dst)
        if len(calls) == kill_at:
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dying)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "r")
    monkeypatch.setattr(os, "replace", real)
    back = SimulationResult.load(tmp_path / "r")
    assert back.optimizers == old.optimizers and np.array_equal(back.x_final, old.x_final)
    # a kill -9 leaves temporaries behind: simulate one, then the next save removes them
    (tmp_path / ".r.json.killed").write_text("partial")
    new.save(tmp_path / "r")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(_pair_files(tmp_path)) == 2
    assert SimulationResult.load(tmp_path / "r").optimizers == ("new",)


def test_a_kill_after_the_commit_leaves_the_new_pair(tmp_path, monkeypatch):
    old, new = _sim(seed=1), _sim(seed=2, opts=[sv.SGD(0.2, name="new")])
    old.save(tmp_path / "r")
    monkeypatch.setattr("pathlib.Path.unlink", lambda self, *a, **k: (_ for _ in ()).throw(OSError("killed")))
    new.save(tmp_path / "r")                     # removing the old .npz fails: harmless
    monkeypatch.undo()
    assert SimulationResult.load(tmp_path / "r").optimizers == ("new",)


# ---- 4. merges -------------------------------------------------------------------------------
@pytest.mark.parametrize("change,field", [
    (dict(sigma=0.5), "sigma"), (dict(opts=[sv.SGD(0.2), sv.SGDM(0.1, 0.9)]), "optimizers"),
    (dict(opts=[sv.SGD(0.1), sv.SGDM(0.1, 0.8)]), "optimizers"),
    (dict(problem=Quadratic(np.diag([0.5, 2.1]))), "problem"), (dict(x0=(1.0, -0.5)), "x0"),
    (dict(steps=21, record=[0, 20]), "steps"), (dict(dtype="float32"), "dtype"),
    (dict(divergence_bound=1e3), "divergence_bound"),
])
def test_merge_refuses_shards_of_different_simulations(change, field):
    kw = dict(paths=256, record=[0, 20])
    a = _sim(**kw)
    b = _sim(path_offset=256, **dict(kw, **change))
    with pytest.raises(ValueError, match=f"differ in (.*; )?{field} "):
        a.merge(b)
    same = _sim(path_offset=256, **kw)
    merged = a.merge(same)
    assert merged.paths == 512 and merged.meta["fingerprint"] == a.meta["fingerprint"]


def test_merge_refuses_shards_without_fingerprint():
    a, b = _sim(paths=256), _sim(paths=256, path_offset=256)
    b.meta.pop("fingerprint")
    with pytest.raises(ValueError, match="no fingerprint"):
        a.merge(b)


def test_merge_refuses_what_is_not_a_shard_and_shards_that_would_lose_states():
    a = _sim(paths=256, record=[0, 20])
    with pytest.raises(ValueError, match="merge takes shards that are SimulationResults, got int"):
        a.merge(5)
    b = _sim(path_offset=256, paths=256, record=[0, 20])
    with_states = dataclasses.replace(b, states=np.zeros((len(b.optimizers), 2, 256, 2)))
    with pytest.raises(ValueError, match="states"):
        a.merge(with_states)


# ---- final states left out -------------------------------------------------------------------
def test_final_states_left_out_change_nothing_else_and_merge_save_load(tmp_path):
    full = _sim(paths=600, record=[0, 10, 20])
    lean = _sim(paths=600, record=[0, 10, 20], final_states=False)
    assert lean.x_final is None and lean.m_final is None and lean.paths == 600
    for k in ("block_stats", "block_diff", "div_step", "block_bad"):
        assert np.array_equal(getattr(lean, k), getattr(full, k)), k
    # shards without final states merge into the one-call result, and save / load
    parts = [_sim(paths=n, path_offset=o, record=[0, 10, 20], final_states=False)
             for o, n in ((0, 256), (256, 256), (512, 88))]
    merged = parts[0].merge(*parts[1:])
    assert merged.x_final is None and merged.paths == 600
    assert np.array_equal(merged.block_stats, lean.block_stats)
    assert np.array_equal(merged.div_step, lean.div_step)
    lean.save(tmp_path / "lean")
    back = SimulationResult.load(tmp_path / "lean")
    assert back.x_final is None and back.paths == 600 and np.array_equal(back.mean, lean.mean)
    with np.load(next(tmp_path.glob("lean.*.npz"))) as z:
        assert "x_final" not in z.files and "m_final" not in z.files
    # the states a run stores are kept without the final states
    kept = _sim(paths=256, record=[0, 20], final_states=False, store_states=True)
    assert kept.states.shape == (2, 2, 256, 2) and kept.x_final is None
    kept.save(tmp_path / "kept")
    assert SimulationResult.load(tmp_path / "kept").states.shape == (2, 2, 256, 2)


def test_shards_with_and_without_final_states_are_not_merged_and_a_bad_flag_is_named():
    a = _sim(paths=256, record=[0, 20])
    b = _sim(paths=256, path_offset=256, record=[0, 20], final_states=False)
    with pytest.raises(ValueError, match="final states"):
        a.merge(b)
    with pytest.raises(ValueError, match="final states"):
        b.merge(a)
    with pytest.raises(ValueError, match="final_states must be True or False, got 'no'"):
        _sim(final_states="no")


def test_a_saved_result_with_only_one_of_the_final_arrays_is_refused(tmp_path):
    r = _sim(paths=256, record=[0, 20])
    dataclasses.replace(r, m_final=None).save(tmp_path / "half")
    with pytest.raises(ResultFileError, match="m_final"):
        SimulationResult.load(tmp_path / "half")
