"""``benchmarks/reproduce_fig2.py`` and ``benchmarks/batch_size_sweep.py`` at their ``--tiny``
preset (seconds): the files and figures they write, resuming (a run killed in a unit, or a
unit deleted, retrains only the missing units and ends bitwise equal to an uninterrupted run),
reruns with other arguments refused, bad arguments ending with one line and exit status 2."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdeverify.files import read_json, write_hashed_json
from sdeverify.train import TrainResult
from sdeverify.train.blas_threads import single_threaded
from fake_data import write_fake_cifar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import batch_size_sweep  # noqa: E402
import cifar_protocol  # noqa: E402
import reproduce_fig2  # noqa: E402

TINY = ["--tiny", "--backend", "numpy", "--quiet"]


def fig2(out, *extra) -> int:
    return call(reproduce_fig2, [*TINY, "--out", str(out), *extra])


def call(script, argv) -> int:
    """``script.main(argv)`` with OpenBLAS on one thread: the NumPy reference's small
    products only contend with it on a shared machine (5x slower under ``-n 2``, measured)."""
    with single_threaded():
        return script.main(argv)


def units_written(text: str) -> tuple[list[str], list[str]]:
    """(trained, loaded) unit names from a script's output."""
    trained = [ln.split()[1].rstrip(":") for ln in text.splitlines()
               if ln.startswith("unit ") and (": trained" in ln or ": tuned" in ln)]
    loaded = [ln.split()[1].rstrip(":") for ln in text.splitlines()
              if ln.startswith("unit ") and ": on disk" in ln]
    return trained, loaded


def snapshot(folder: Path) -> dict:
    """Name -> bytes of every result file of a run (units' arrays, curves, summary, manifest;
    a unit's JSON holds its wall time, so its arrays file, named by their hash, stands for it)."""
    out = {}
    for f in sorted(folder.iterdir()):
        if f.suffix == ".npz" or f.name in ("curves.csv", "summary.json", "protocol.json") \
                or f.name.startswith("tune-"):
            out[f.name] = f.read_bytes()
    return out


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """One uninterrupted tiny run on generated images, and its output."""
    out = tmp_path_factory.mktemp("fig2") / "run"
    import io
    from contextlib import redirect_stdout
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert fig2(out) == 0
    return out, buf.getvalue()


def test_tiny_run_writes_units_curves_summary_and_figure(teacher_run):
    out, text = teacher_run
    assert units_written(text) == (["tune-sgdm", "svag1", "svag2"], [])
    tun = read_json(out / "tune-sgdm.json")
    assert tun["lr"] in tun["grid"] and len(tun["val_acc"]) == len(tun["grid"])
    summary = read_json(out / "summary.json")
    assert summary["lr"] == tun["lr"] and [r["ell"] for r in summary["rows"]] == [1, 2]
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 3 * 2              # ells x optimizers x (epochs + 1) x replicas
    for ell in (1, 2):
        res = TrainResult.load(out / f"svag{ell}")
        assert res.meta["svag"] == ell and res.meta["augment"] is True
        assert res.optimizers == ("SGD", "SGDM") and res.metrics == cifar_protocol.METRICS
        assert res.eval_steps.tolist() == [0, 4, 8]               # every epoch: 128 // 32 = 4 steps
        assert all(f"lr={tun['lr']!r}" in o for o in res.meta["optimizers"]), res.meta["optimizers"]
        # common random numbers: SGD and SGDM of a replica start from the same weights
        np.testing.assert_array_equal(res.values[0, 0], res.values[1, 0])
        assert not np.array_equal(res.values[0, -1], res.values[1, -1])
        # the curves file is the units' values, per optimizer, epoch and replica
        acc = {(r["optimizer"], int(r["epoch"]), int(r["replica"])): float(r["test_acc"])
               for r in rows if int(r["ell"]) == ell}
        for j, o in enumerate(res.optimizers):
            got = np.array([[acc[o, e, rr] for rr in range(2)] for e in range(3)])
            np.testing.assert_array_equal(got, res.values_of(o, "test_acc"))
        row = summary["rows"][ell - 1]
        d = res.values_of("SGDM", "test_acc")[-1] - res.values_of("SGD", "test_acc")[-1]
        assert row["gap"]["estimate"] == pytest.approx(d.mean(), abs=1e-15)
    assert (out / "fig2.png").stat().st_size > 10_000
    assert "final test accuracy" in text and "nan" not in text.lower()


def test_killed_run_resumes_and_a_deleted_unit_alone_retrains_bitwise(teacher_run, tmp_path,
                                                                       monkeypatch, capsys):
    ref, _ = teacher_run
    out = tmp_path / "run"
    real = cifar_protocol.train_curves
    calls = []

    def killed_in_second_unit(*args, **kwargs):
        calls.append(kwargs["svag"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cifar_protocol, "train_curves", killed_in_second_unit)
    assert fig2(out) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert (out / "svag1.json").exists() and not (out / "svag2.json").exists()
    monkeypatch.setattr(cifar_protocol, "train_curves", real)

    assert fig2(out) == 0                                     # resumed
    assert units_written(capsys.readouterr().out) == (["svag2"], ["tune-sgdm", "svag1"])
    assert snapshot(out) == snapshot(ref)                     # bitwise the uninterrupted run

    stamps = {f.name: f.stat().st_mtime_ns for f in out.iterdir() if f.name.startswith(("svag", "tune"))}
    for f in out.glob("svag1.*"):                             # delete one unit
        f.unlink()
    assert fig2(out) == 0
    assert units_written(capsys.readouterr().out) == (["svag1"], ["tune-sgdm", "svag2"])
    for name, t in stamps.items():
        if not name.startswith("svag1"):
            assert (out / name).stat().st_mtime_ns == t, f"{name} was rewritten"
    assert snapshot(out) == snapshot(ref)


def test_a_unit_killed_between_segments_resumes_from_its_checkpoint(teacher_run, tmp_path,
                                                                     monkeypatch, capsys):
    """--tiny saves a unit's progress after every epoch: a run killed in svag1's second epoch
    resumes there (one fit call for svag1 instead of two) and ends bitwise as the
    uninterrupted run, with no checkpoint left behind."""
    ref, _ = teacher_run
    out = tmp_path / "run"
    real = cifar_protocol.fit
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("start_step", 0))
        if killed and len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cifar_protocol, "fit", counted)
    killed = True
    assert fig2(out) == 130
    assert calls == [0, 4] and (out / "svag1.partial.json").exists()
    assert not (out / "svag1.json").exists()
    partial = TrainResult.load(out / "svag1.partial")
    assert partial.eval_steps.tolist() == [0, 4] and partial.weights is not None
    killed, calls[:] = False, []
    capsys.readouterr()
    assert fig2(out) == 0
    text = capsys.readouterr().out
    assert "unit svag1.partial: on disk, resuming after step 4" in text
    assert calls == [4, 0, 4]                 # svag1's second epoch, then svag2's two
    assert not list(out.glob("*.partial*"))
    assert snapshot(out) == snapshot(ref)


def test_checkpoint_segments_do_not_change_the_numbers(teacher_run, tmp_path):
    ref, _ = teacher_run
    out = tmp_path / "run"
    assert fig2(out, "--checkpoint-epochs", "0") == 0         # each unit in one fit call
    for ell in (1, 2):
        a, b = TrainResult.load(ref / f"svag{ell}"), TrainResult.load(out / f"svag{ell}")
        assert len(a.meta["segments"]) == 2 and "segments" not in b.meta
        for name in ("eval_steps", "values", "batch_loss", "div_step", "weights", "momentum",
                     "buffers"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_rerun_with_other_arguments_is_refused(teacher_run, tmp_path, capsys):
    ref, _ = teacher_run
    out = tmp_path / "run"
    for f in ref.iterdir():
        (out / f.name).parent.mkdir(exist_ok=True)
        (out / f.name).write_bytes(f.read_bytes())
    before = snapshot(out)
    assert fig2(out, "--epochs", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other arguments" in err[0] and "epochs: 2 there, 3 now" in err[0], err
    assert fig2(out, "--lr", "0.1") == 2                      # no tuning: another run
    assert "lr_grid" in capsys.readouterr().err
    assert snapshot(out) == before
    # a tuning that now picks another lr: the runs trained at the old lr are not reused
    tun = read_json(out / "tune-sgdm.json")
    write_hashed_json(out / "tune-sgdm.json", dict(tun, lr=2 * tun["lr"]))
    assert fig2(out) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and "svag1.json was trained with {'lr': " in err[0] \
        and "delete it to retrain it" in err[0], err
    write_hashed_json(out / "tune-sgdm.json", tun)
    # a unit of another run planted among this run's units is refused, not mixed in
    other = tmp_path / "other"
    assert fig2(other, "--lr", "0.1", "--ells", "1") == 0
    for f in out.glob("svag1.*"):
        f.unlink()
    for f in other.glob("svag1.*"):
        (out / f.name).write_bytes(f.read_bytes())
    capsys.readouterr()
    assert fig2(out) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and "svag1.json belongs to another run" in err[0], err


def test_tiny_run_on_the_cifar10_archive(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(folder, n_per=8)                         # 40 training, 8 test images
    out = tmp_path / "run"
    assert fig2(out, "--data", f"cifar10:{folder}", "--lr", "0.1", "--ells", "1",
                "--epochs", "1", "--n-train", "32", "--batch", "16") == 0
    res = TrainResult.load(out / "svag1")
    assert res.eval_steps.tolist() == [0, 2]                  # 32 // 16 = 2 steps per epoch
    assert np.all(np.isfinite(res.values))
    manifest = read_json(out / "protocol.json")["config"]
    assert manifest["data"]["kind"] == "cifar10" and manifest["data"]["shape"] == [3, 32, 32]
    assert manifest["data"]["n_train"] == 32 and manifest["data"]["n_test"] == 8
    assert str(folder) not in json.dumps(manifest)           # the archive may move
    assert not (out / "tune-sgdm.json").exists() and (out / "fig2.png").exists()
    assert units_written(capsys.readouterr().out) == (["svag1"], [])


def test_batch_size_sweep_tiny(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [*TINY, "--out", str(out), "--batches", "32"]
    assert call(batch_size_sweep, argv) == 0
    trained, loaded = units_written(capsys.readouterr().out)
    assert trained == ["tune-B32-E1-sgdm", "tune-B32-E1-sgd", "run-B32-E1",
                       "tune-B32-E2-sgdm", "tune-B32-E2-sgd", "run-B32-E2"] and loaded == []
    summary = read_json(out / "summary.json")
    assert summary["budgets"] == [1, 2] and [r["epochs"] for r in summary["rows"]] == [1, 2]
    for row in summary["rows"]:
        res = TrainResult.load(out / f"run-B32-E{row['epochs']}")
        lr_m, lr_s = row["tuning"]["SGDM"]["lr"], row["tuning"]["SGD"]["lr"]
        assert res.optimizers[:2] == ("SGDM", "SGD@SGDM-lr")
        assert f"lr={lr_m!r}" in res.meta["optimizers"][1]   # SGD at momentum's tuned lr
        assert (len(res.optimizers) == 3) == (lr_s != lr_m)   # and at its own, when different
        assert res.eval_steps[-1] == row["epochs"] * (128 // 32)
    with open(out / "curves.csv") as f:
        epochs = {(r["epochs"], r["epoch"]) for r in csv.DictReader(f)}
    assert epochs == {("1", "0"), ("1", "1"), ("2", "0"), ("2", "1"), ("2", "2")}
    assert (out / "batch_sweep.png").stat().st_size > 10_000
    before = snapshot(out)
    assert call(batch_size_sweep, argv) == 0                  # rerun: everything on disk
    trained, loaded = units_written(capsys.readouterr().out)
    assert trained == [] and len(loaded) == 6 and snapshot(out) == before


@pytest.mark.parametrize("script, argv, flag", [
    (reproduce_fig2, ["--ells", "0"], "--ells"),
    (reproduce_fig2, ["--ells", "1,x"], "--ells"),
    (reproduce_fig2, ["--depth", "9"], "--depth"),
    (reproduce_fig2, ["--lr", "-1"], "--lr"),
    (reproduce_fig2, ["--lr-grid", "0.1,0.1"], "--lr-grid"),
    (reproduce_fig2, ["--lr", "0.1", "--lr-grid", "0.1,0.2"], "--lr-grid"),
    (reproduce_fig2, ["--batch", "100000"], "--batch"),
    (reproduce_fig2, ["--batch", "120"], "--batch"),         # > the validation split's 102
    (reproduce_fig2, ["--n-train", "0"], "--n-train"),
    (reproduce_fig2, ["--data", "imagenet"], "--data"),
    (reproduce_fig2, ["--warmup-epochs", "5"], "--warmup-epochs"),
    (reproduce_fig2, ["--replicas", "0"], "--replicas"),
    (reproduce_fig2, ["--data", "cifar10:/nonexistent"], "folder"),
    (batch_size_sweep, ["--batches", "0,32"], "--batches"),
    (batch_size_sweep, ["--batches", "128"], "--batches"),   # > the validation split's 102
    (batch_size_sweep, ["--lr-factors", "-1"], "--lr-factors"),
    (batch_size_sweep, ["--epochs", "0"], "--epochs"),
])
def test_bad_arguments_exit_2_with_one_line(script, argv, flag, tmp_path, capsys):
    out = tmp_path / "out"
    try:
        rc = call(script, [*TINY, "--out", str(out), *argv])
    except SystemExit as exc:                                 # argparse's own errors
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{script.PROG}: error:") and flag in err[0], err
    assert not out.exists() or not any(out.glob("*.json"))   # refused before any work


def test_unwritable_out_and_the_command_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reproduce_fig2.py"), *TINY,
                        "--out", str(blocker / "sub")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and "not a writable folder" in lines[0], r.stderr
