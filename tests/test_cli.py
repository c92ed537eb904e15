"""The command line: help, simulate, check (smoke size: the CI stand-in for --quick)."""
import json
import subprocess
import sys

import numpy as np

from sdeverify import experiments
from sdeverify.cli import main


def test_check_smoke_all(tmp_path):
    """`sdeverify check --smoke` runs every registered check; exit status 0 iff all pass.
    (First in this file: its subprocess compiles the checks' kernels into the disk cache,
    which the in-process tests below then load instead of compiling again.)"""
    r = subprocess.run([sys.executable, "-m", "sdeverify.cli", "check", "--smoke", "--out",
                        str(tmp_path), "--quiet"], capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"]
    names = [c["name"] for c in summary["checks"]]
    assert names == experiments.available()
    assert r.returncode == (0 if summary["passed"] else 1), r.stdout + r.stderr
    assert summary["passed"], r.stdout[-3000:]
    for c in summary["checks"]:
        assert (tmp_path / f"{c['name']}.json").exists() and (tmp_path / f"{c['name']}.png").exists()


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
    argv = ["check", "--smoke", "--only", "svag,batch_size", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    first = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "batch_size.json").unlink()                    # as if interrupted during it
    (tmp_path / "svag.png").unlink()
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "svag (smoke): reusing" in err and "batch_size (smoke) ..." in err
    assert (tmp_path / "svag.png").exists() and (tmp_path / "batch_size.json").exists()
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["complete"] and again["checks"][0]["verdicts"] == first["checks"][0]["verdicts"]
    assert main(argv[:-1] + ["--seed", "1", "--quiet", "--resume"]) == 0
    assert "reusing" not in capsys.readouterr().err
