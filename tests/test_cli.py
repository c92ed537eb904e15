"""The command line: help, simulate, check (smoke size: the CI stand-in for --quick).  The
whole main job at smoke size is tests/test_smoke_job.py."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

import sdeverify as sv
from sdeverify.cli import main


def test_help_and_list(capsys):
    for argv in (["--help"], ["simulate", "--help"], ["check", "--help"], ["run", "--help"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0
    assert "usage" in capsys.readouterr().out
    assert main(["list"]) == 0


def test_simulate_writes_results(tmp_path, capsys):
    rc = main(["simulate", "--paths", "600", "--steps", "50", "--dim", "2", "--out", str(tmp_path),
               "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "SGDM" in out and "95% intervals" in out
    doc = json.loads((tmp_path / "simulation.json").read_text())
    assert doc["meta"]["paths"] == 600 and np.isfinite(doc["mean"][0][-1][0])


def test_bad_input_exits_2(capsys):
    assert main(["simulate", "--beta", "1.0", "--quiet"]) == 2
    assert "beta" in capsys.readouterr().err


def test_check_resume_reuses_finished_results(tmp_path, capsys):
    """`check --resume` reuses a finished check's result (same size/seed/versions) and reruns
    one whose files are missing or whose seed differs."""
    argv = ["check", "--smoke", "--only", "descent_lemma,variance_reduction", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    first = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "variance_reduction.json").unlink()            # as if interrupted during it
    (tmp_path / "descent_lemma.png").unlink()
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "descent_lemma (smoke): reusing" in err and "variance_reduction (smoke) ..." in err
    assert (tmp_path / "descent_lemma.png").exists() and (tmp_path / "variance_reduction.json").exists()
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["complete"] and again["checks"][0]["verdicts"] == first["checks"][0]["verdicts"]
    capsys.readouterr()
    one = ["check", "--smoke", "--only", "variance_reduction", "--out", str(tmp_path)]
    assert main(one + ["--seed", "1", "--resume"]) == 0          # another seed: not reused
    assert "reusing" not in capsys.readouterr().err


def test_check_jobs_gives_the_serial_verdicts(tmp_path, capsys):
    """`check --jobs 2` runs the checks in two worker processes: the same verdicts, bitwise,
    as one after the other in this process."""
    argv = ["check", "--smoke", "--only", "descent_lemma,variance_reduction", "--quiet"]
    assert main(argv + ["--jobs", "1", "--out", str(tmp_path / "serial")]) == 0
    assert main(argv + ["--jobs", "2", "--out", str(tmp_path / "par")]) == 0
    assert "2 worker processes" in capsys.readouterr().err
    s, p = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("serial", "par"))
    assert (s["jobs"], p["jobs"]) == (1, 2) and p["complete"]
    assert [c["name"] for c in p["checks"]] == ["descent_lemma", "variance_reduction"]
    assert [c["verdicts"] for c in p["checks"]] == [c["verdicts"] for c in s["checks"]]


def test_check_jobs_reports_a_check_that_fails_in_its_worker(tmp_path):
    from sdeverify.check_jobs import run_checks
    from sdeverify.runner import run_in_worker
    got = {}
    run_checks(["descent_lemma", "no_such_check"], "smoke", 0, tmp_path, 2, "cpu",
               lambda i, e: got.__setitem__(i, e), run_in_worker)
    assert got[0]["passed"] and got[0]["rows"]
    assert not got[1]["passed"] and "no_such_check" in got[1]["error"]


def _one_line_error(capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as exc:                # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return rc, lines, err


def test_every_bad_flag_exits_2_with_one_line_and_no_traceback(capsys, tmp_path):
    """`--paths 0` used to end in an IndexError traceback."""
    for flags, word in [(["--paths", "0"], "--paths"), (["--steps", "-1"], "--steps"),
                        (["--dim", "0"], "--dim"), (["--record", "0"], "--record"),
                        (["--lr", "nan"], "--lr"), (["--sigma", "-1"], "--sigma"),
                        (["--x0", "inf"], "--x0"), (["--seed", "-1"], "--seed"),
                        (["--svag", "0.5"], "--svag"), (["--dampening", "2"], "--dampening"),
                        (["--batch-size", "0"], "--batch-size"), (["--curvature", "nan"], "--curvature"),
                        (["--optimizers", "sgd,adam"], "adam"), (["--paths", "many"], "--paths"),
                        (["--problem", "rosenbrock"], "--problem"),
                        (["--paths", str(2 ** 50)], "GiB")]:
        rc, lines, err = _one_line_error(capsys, ["simulate", "--quiet", *flags])
        assert rc == 2 and len(lines) == 1 and word in lines[0], (flags, err)
        assert "Traceback" not in err
    for argv, word in [(["check", "--only", "nope"], "nope"), (["check", "--only", ""], "--only"),
                       (["check", "--seed", "-2"], "--seed"), (["run", "nope"], "nope"),
                       (["check", "--jobs", "-1", "--out", str(tmp_path)], "--jobs"),
                       (["check", "--jobs", "0", "--smoke", "--only", "descent_lemma",
                         "--quiet", "--out", str(tmp_path)], "--jobs"),
                       (["check", "--jobs", "0", "--workers", "2", "--out", str(tmp_path)], "--jobs")]:
        rc, lines, err = _one_line_error(capsys, argv)
        assert rc == 2 and len(lines) == 1 and word in lines[0], (argv, err)


def test_unwritable_out_fails_before_any_work(tmp_path, capsys, monkeypatch):
    """An unwritable --out used to fail with a traceback after the work ran."""
    import importlib
    from sdeverify import runner

    def no_work(*a, **k):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(importlib.import_module("sdeverify.simulate"), "simulate", no_work)
    monkeypatch.setattr(runner, "run_one", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for argv in (["simulate", "--quiet", "--out", str(blocker)],
                 ["simulate", "--quiet", "--out", str(blocker / "sub")],
                 ["check", "--smoke", "--only", "svag", "--quiet", "--out", str(blocker)],
                 ["run", "svag", "--size", "smoke", "--quiet", "--out", str(blocker)]):
        rc, lines, err = _one_line_error(capsys, argv)
        assert rc == 2 and len(lines) == 1 and "--out" in lines[0] and "writable" in lines[0], err


def test_missing_gpu_is_one_line(capsys):
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU (or the simulator) is available here")
    rc, lines, err = _one_line_error(capsys, ["simulate", "--quiet", "--backend", "cuda"])
    assert rc == 2 and len(lines) == 1 and "GPU" in lines[0], err


def test_simulate_out_names_the_hashed_arrays_file(tmp_path, capsys):
    assert main(["simulate", "--paths", "256", "--steps", "5", "--dim", "2", "--out", str(tmp_path),
                 "--quiet"]) == 0
    doc = json.loads((tmp_path / "simulation.json").read_text())
    assert doc["npz"] in capsys.readouterr().out and (tmp_path / doc["npz"]).exists()
    assert sv.SimulationResult.load(tmp_path / "simulation").paths == 256


def test_python_dash_m_works_like_the_script():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "sdeverify", "list"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "train_svag" in r.stdout, r.stdout + r.stderr


def _children(pid: int, marker: str) -> list[int]:
    """Live child processes of ``pid`` whose command line contains ``marker`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()      # state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z" and marker in cmd:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; its reaper may be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_sigkill_of_check_leaves_no_worker_alive(tmp_path):
    """SIGKILL of `sdeverify check --jobs 2` (the main process only): both worker processes
    exit within seconds (they used to block on their task pipe forever).  Measured on 2 loaded
    cores: within 0.1 s of the kill once running, within the time a worker takes to import
    the package (about 4 s) when killed while it starts; the deadline leaves room for a slow
    machine."""
    import signal
    import subprocess
    import sys
    import time
    argv = [sys.executable, "-m", "sdeverify", "check", "--smoke", "--quiet", "--jobs", "2",
            "--only", "descent_lemma,variance_reduction", "--out", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            workers = _children(proc.pid, "spawn_main")
            time.sleep(0.05)
        assert len(workers) == 2, "the check's two worker processes did not start"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "workers outlived their killed parent"
    finally:
        for pid in [proc.pid] + workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_run_and_check_offer_every_registered_trainer_backend(monkeypatch):
    """The trained-network checks' ``--backend`` choices are the trainer backend registry's
    (a backend registered by following docs/extending.md is offered with no CLI edit)."""
    from sdeverify.cli import build_parser
    from sdeverify.train import backends
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    backends.register("mytrainer", "sdeverify.train.reference:Trainer", "a user's backend")
    parser = build_parser()
    for argv in (["check", "--backend", "mytrainer"], ["run", "svag", "--backend", "mytrainer"]):
        assert parser.parse_args(argv).backend == "mytrainer"
    assert parser.parse_args(["check"]).backend == "cpu"


def test_simulate_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = capsys.readouterr().out
    assert "(default: 4096)" in out and "(default: quadratic)" in out and "(default: 1000)" in out
