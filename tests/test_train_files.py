"""No silent garbage on the trainer side: saved TrainResults checked on load (hashes, labels,
shapes, dtypes, consistency between arrays), kept whole under dotted names and cleaned up
after a killed save; the divergence rule on the last step and on non-finite weights; NaN
kept by the ReLU; data sets immutable and checked; optimizer lists checked by name.

Everything runs on the NumPy backend (no kernel to compile) except the CPU ReLU test, which
uses the CPU trainer's kernels that tests/test_train.py compiles anyway.
"""
import json
import os
import warnings

import numpy as np
import pytest

import sdeverify as sv
from sdeverify.files import ResultFileError, hashed_json, load_pair, save_pair
from sdeverify.train import MLP, TrainResult, fit, from_arrays, teacher_student
from sdeverify.train.datasets import Dataset
from sdeverify.train.training import _divergence

DATA = teacher_student(n=256, dim=4, classes=3)
MODEL = MLP([4, 8, 3])


@pytest.fixture(scope="module")
def res():
    return fit(MODEL, DATA, [sv.SGD(0.1), sv.SGDM(0.1, 0.9)], batch_size=16, steps=6,
               replicas=2, eval_steps=[0, 3, 6], backend="numpy", keep_weights=True)


# ---- files -----------------------------------------------------------------------------------
def test_round_trip_and_dotted_names_kept_whole(res, tmp_path):
    """``run_lr0.1`` and ``run_lr0.2`` used to be one file ``run_lr0.npz`` (the second save
    replaced the first)."""
    other = fit(MODEL, DATA, [sv.SGD(0.2), sv.SGDM(0.1, 0.9)], batch_size=16, steps=6,
                replicas=2, eval_steps=[0, 3, 6], backend="numpy")
    assert res.save(tmp_path / "run_lr0.1").name == "run_lr0.1.json"
    other.save(tmp_path / "run_lr0.2")
    a, b = TrainResult.load(tmp_path / "run_lr0.1"), TrainResult.load(tmp_path / "run_lr0.2.json")
    np.testing.assert_array_equal(a.values, res.values)
    np.testing.assert_array_equal(a.momentum, res.momentum)
    np.testing.assert_array_equal(b.values, other.values)
    assert a.meta == res.meta and len(list(tmp_path.iterdir())) == 4


def test_a_killed_save_leaves_the_old_pair_and_the_next_save_cleans_up(res, tmp_path, monkeypatch):
    res.save(tmp_path / "r")
    real, calls = os.replace, []

    def dying(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dying)
    new = fit(MODEL, DATA, [sv.SGD(0.3, name="new")], batch_size=16, steps=6, replicas=2,
              eval_steps=[0, 6], backend="numpy")
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "r")
    monkeypatch.setattr(os, "replace", real)
    assert TrainResult.load(tmp_path / "r").optimizers == res.optimizers
    # a kill -9 leaves the temporaries mkstemp made: the next save of this name removes them
    npz = json.loads((tmp_path / "r.json").read_text())["npz"]
    for tmp in (f".r.json.k1ll3d_x", f".{npz}.abc123.npz", ".r.0123456789abcdef.npz.zz_9.npz"):
        (tmp_path / tmp).write_bytes(b"x" * 100)
    (tmp_path / ".r.1.json.keepme").write_text("another result's temporary")  # name r.1: kept
    new.save(tmp_path / "r")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".r.1.json.keepme"]
    assert TrainResult.load(tmp_path / "r").optimizers == ("new",)


SAVER = """
import os, sys, time
import numpy as np
from sdeverify.train import TrainResult
g = np.random.default_rng(1)
J, E, R, S, P = 2, 3, 4, 6, 1000
new = TrainResult(("SGD", "SGDM"), ("train_loss",), np.array([0, 3, 6]), g.random((J, E, R, 1)),
                  g.random((J, R, S)), np.full((J, R), -1), g.random((J, R, P)), {"run": "new"})
stop_at, calls, real_fsync = int(sys.argv[2]), [], os.fsync

def fsync(fd):                         # the n-th fsync: a temporary is written, not yet renamed
    real_fsync(fd)
    calls.append(fd)
    if len(calls) == stop_at:
        print("inside", flush=True)
        time.sleep(60)

os.fsync = fsync
new.save(sys.argv[1])
"""


@pytest.mark.parametrize("stop_at", [1, 3])
def test_sigkill_during_a_save_leaves_the_old_pair_and_no_temporaries_after_the_next(
        res, tmp_path, stop_at):
    """A real ``kill -9`` while the arrays file (1st fsync) or the JSON (3rd fsync, after the
    folder's; the commit point) is written to its temporary: the old result loads,
    unchanged; the next save leaves no temporaries."""
    import signal
    import subprocess
    import sys
    res.save(tmp_path / "r")
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path / "r"), str(stop_at)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "inside"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".r.")]     # left by the kill
    assert TrainResult.load(tmp_path / "r").meta == res.meta
    res.save(tmp_path / "r")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("r.")) == []
    assert len(list(tmp_path.iterdir())) == 2 and TrainResult.load(tmp_path / "r").meta == res.meta


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate_json", "truncate_npz", "flip_json", "flip_npz",
                                    "drop_npz", "garbage_json"])
def test_damaged_files_are_one_clear_error_naming_the_file(res, tmp_path, damage):
    jp = res.save(tmp_path / "r")
    npz = tmp_path / json.loads(jp.read_text())["npz"]
    if damage == "truncate_json":
        jp.write_bytes(jp.read_bytes()[:200])
    elif damage == "truncate_npz":
        npz.write_bytes(npz.read_bytes()[:300])
    elif damage == "flip_json":
        text = jp.read_text()
        _flip(jp, text.index('"steps"') + 10)
    elif damage == "flip_npz":
        _flip(npz, npz.stat().st_size // 2)
    elif damage == "drop_npz":
        npz.unlink()
    else:
        jp.write_text("[1, 2")
    with pytest.raises(ResultFileError, match=r"r(\.[0-9a-f]{16}\.npz|\.json)") as info:
        TrainResult.load(tmp_path / "r")
    assert "\n" not in str(info.value)


def _edit(tmp_path, change):
    """Apply ``change(doc, arrays)`` and write the pair back *consistently* (both hashes
    recomputed), as a buggy writer would: only the content checks can catch it."""
    doc, arrays, _ = load_pair(tmp_path / "r")
    for k in ("npz", "npz_sha256"):
        doc.pop(k)
    change(doc, arrays)
    save_pair(tmp_path / "r", doc, arrays, labels=("optimizers", "metrics", "eval_steps"))


def _cut_values(doc, a):
    a["values"] = a["values"][:, :, :1]


def _nan_value(doc, a):
    a["values"][0, 1, 0, 0] = np.nan


def _div_shape(doc, a):
    a["div_step"] = a["div_step"][:, :1]


def _div_dtype(doc, a):
    a["div_step"] = a["div_step"].astype(np.float64)


def _short_eval(doc, a):
    a["eval_steps"] = a["eval_steps"][:-1]
    doc["eval_steps"] = doc["eval_steps"][:-1]


def _reorder(doc, a):
    doc["optimizers"] = doc["optimizers"][::-1]


def _rename_metric(doc, a):
    doc["metrics"] = ["test_loss"] + doc["metrics"][1:]


def _div_outside(doc, a):
    a["div_step"][0, 0] = 10 ** 6


def _weights_shape(doc, a):
    a["weights"] = a["weights"][:1]


def _nan_batch_loss(doc, a):
    a["batch_loss"][1, 1, 2] = np.inf


def _unknown_metric(doc, a):
    doc["metrics"] = ["train_loss", "accuracy"] + doc["metrics"][2:]


EDITS = {"values cut to 1 replica": (_cut_values, "'batch_loss' has shape"),
         "NaN value of a live replica": (_nan_value, "NaN or inf for a replica"),
         "div_step shape": (_div_shape, "'div_step' has shape"),
         "div_step dtype": (_div_dtype, "'div_step' has dtype float64"),
         "eval_steps shortened": (_short_eval, "'values' has shape"),
         "optimizers reordered": (_reorder, "reordered"),
         "metric renamed": (_rename_metric, "metrics must be distinct|meta records metrics"),
         "metric unknown": (_unknown_metric, "metrics must be distinct names"),
         "div_step outside the run": (_div_outside, "div_step holds steps outside"),
         "weights shape": (_weights_shape, "'weights' has shape"),
         "inf minibatch loss before divergence": (_nan_batch_loss, "'batch_loss' holds NaN")}


@pytest.mark.parametrize("kind", list(EDITS))
def test_edited_content_is_refused_naming_the_file(res, tmp_path, kind):
    change, why = EDITS[kind]
    res.save(tmp_path / "r")
    raw = json.loads((tmp_path / "r.json").read_text())
    _edit(tmp_path, change)
    with pytest.raises(ResultFileError, match=f"r\\.json: .*({why})"):
        TrainResult.load(tmp_path / "r")
    # the same edit without re-hashing is caught by the hashes already
    if kind in ("optimizers reordered", "metric renamed"):
        change(raw, {})
        (tmp_path / "r.json").write_text(json.dumps(raw))
        with pytest.raises(ResultFileError, match="content hash|cannot be verified"):
            TrainResult.load(tmp_path / "r")


def test_an_unhashed_layout_is_refused(res, tmp_path):
    res.save(tmp_path / "r")
    doc = json.loads((tmp_path / "r.json").read_text())
    for k in ("npz", "npz_sha256", "content_sha256"):
        doc.pop(k)
    (tmp_path / "r.json").write_text(hashed_json(doc))
    with pytest.raises(ResultFileError, match="earlier, unverifiable layout"):
        TrainResult.load(tmp_path / "r")


def test_merge_refuses_non_results_and_shards_that_would_lose_arrays(res):
    with pytest.raises(ValueError, match="merge takes shards that are TrainResults, got int"):
        res.merge(5)
    shard = fit(MODEL, DATA, [sv.SGD(0.1), sv.SGDM(0.1, 0.9)], batch_size=16, steps=6,
                replicas=2, eval_steps=[0, 3, 6], backend="numpy", replica_offset=2)
    with pytest.raises(ValueError, match="weights"):
        res.merge(shard)


# ---- divergence ------------------------------------------------------------------------------
def test_a_blow_up_in_the_last_step_is_flagged():
    """One step of lr 1e4 on a 4-8-3 MLP took the train loss to 6.7e6, reported as
    healthy (the minibatch losses are all before the step)."""
    with pytest.warns(sv.DivergenceWarning, match="2 of 2 replicas diverged, first at step 1"):
        r = fit(MODEL, DATA, [sv.SGD(1e4)], batch_size=32, steps=1, replicas=2, backend="numpy")
    assert (r.div_step == 1).all() and np.isnan(r.series("SGD", "train_loss")[0][-1])


def test_divergence_rule_on_evaluations_and_final_weights():
    bl = np.ones((1, 3, 4))
    vals = np.ones((1, 2, 3, 2))                           # metrics: train_acc, test_loss
    ev = np.array([0, 4])
    assert (_divergence(bl, vals, ("train_acc", "test_loss"), ev) == -1).all()
    vals[0, 1, 0, 1] = 2e3                                 # > 1000 x max(1, step-0 loss)
    vals[0, 1, 1, 0] = np.nan                              # any non-finite metric
    w = np.ones((1, 3, 5))
    w[0, 2, 3] = np.inf                                    # non-finite final weights
    div = _divergence(bl, vals, ("train_acc", "test_loss"), ev, w)
    assert div.tolist() == [[4, 4, 4]]


def test_cpu_relu_keeps_nan():
    """The CPU trainer's ReLU mapped NaN to 0: a NaN weight gave a plausible loss."""
    from sdeverify.train import cpu
    m = MLP([4, 8, 3])
    t = cpu.Trainer(m, DATA.X_train, DATA.y_train, 1, 1)
    W = m.init(0, 1, 0, "float64")
    W[0, 0] = np.nan                                       # one first-layer weight
    t.set_state(W, np.zeros_like(W))
    loss, _ = t.evaluate(DATA.X_train[:32], DATA.y_train[:32])
    assert np.isnan(loss).all()


# ---- data and optimizers -----------------------------------------------------------------------
def test_dataset_arrays_are_read_only_and_checked():
    with pytest.raises(ValueError, match="read-only"):
        DATA.X_train[0, 0] = np.nan
    X, y = np.ones((10, 2)), np.arange(10) % 2
    d = Dataset(X[:8], y[:8], X[8:], y[8:], 2)
    X[0, 0] = np.nan                                       # the caller's array: not the data set's
    assert np.isfinite(d.X_train).all() and not d.X_train.flags.writeable
    for bad in (3.5, True, 1, "3"):
        with pytest.raises(ValueError, match="n_classes must be an integer >= 2"):
            Dataset(X[1:8], y[1:8], X[8:], y[8:], bad)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        from_arrays(np.ones((10, 2)), y, seed=-1)


def test_from_arrays_standardises_huge_finite_columns():
    g = np.random.default_rng(0)
    X = g.standard_normal((40, 2))
    X[:, 0] = np.where(np.arange(40) % 2, 1e308, -1e308)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = from_arrays(X, np.arange(40) % 2)
    assert np.isfinite(d.X_train).all() and np.allclose(np.abs(d.X_train[:, 0]), 1.0)
    X[:, 0] = g.standard_normal(40)                     # the other column: bitwise as before
    np.testing.assert_array_equal(from_arrays(X, np.arange(40) % 2).X_train[:, 1], d.X_train[:, 1])


@pytest.mark.parametrize("opts,why", [
    ([sv.SGD], "got the class SGD; construct one"),
    ([sv.SGD(0.1), sv.SGD("0.1", name="text")], "text.*lr must be a number"),
    ([sv.SGD(0.1), sv.SGD([0.1, -1.0, 0.1], name="neg")], "neg.*lr must be in .*entry 1 is -1"),
])
def test_fit_checks_optimizers_by_name(opts, why):
    with pytest.raises(ValueError, match=why):
        fit(MODEL, DATA, opts, batch_size=16, steps=3, backend="numpy")
