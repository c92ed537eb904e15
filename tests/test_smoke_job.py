"""The main job at smoke size (`sdeverify check --smoke`, the CI stand-in for `--quick`), run
once in a subprocess; every check's saved result is then examined.

This is the suite's one run of every check at smoke size: every verdict passes, the exit
status says so, each result round-trips through its files and its figure is redrawn from the
saved data.  (The checks used to be run a second time, in process, by one test each; every
check is seeded, so a worker process and the test process compute the same results —
``test_cli.test_check_jobs_gives_the_serial_verdicts`` shows it bitwise for two checks — and
that doubled the work.)  It is one test, not one per check, so that one
xdist worker runs the job (pytest-xdist's ``loadgroup`` does not work with pytest 9), and
``conftest.py`` schedules it first: it is the suite's longest test.

Measured false-failure rates of the verdicts at smoke size (seeds other than the job's
seed 0; ``benchmarks/false_failures.py`` and paper_checks.md): instruments, hb_equivalence,
descent_lemma, train_engine, variance_reduction 0/20 seeds each, weak_approximation 0/30 (at
quick size 0/6 each); with the calibrated false-failure budget: instruments 0/20, variance_reduction (σ = 1.5) 0/100,
descent_lemma (σ = 1.3) 1/100 (seed 43, a pre-existing verdict); batch_size 0/100 (quick
0/20); svag 0/100 (quick 0/20); slow_sde 1/30 with both problems (seed 25: the sphere's KS
test, p = 8e-4; the valley 0/30), label_noise 0/40 (quick: slow_sde 0/32, label_noise 0/32);
train_svag 0/30 (quick 0/30); train_batch_size 2/30 (the mechanism's SGD edge ratio where the
tuning picks SGDM's lr a factor 2 lower; quick 1/30).
"""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from sdeverify import experiments
from sdeverify.experiments import base

NAMES = experiments.available()


def _round_trip_problems(name, out, entry, tmp_path) -> list:
    """What is wrong with check ``name``'s saved result (empty if nothing): a failed verdict,
    verdicts read back that differ from the job's summary entry, metadata without the seed,
    size or versions, no data, a verdict that prints NaN, or a figure (the job's, or one drawn again from the loaded
    data) that is not a real PNG."""
    back = base.ExperimentResult.load(out, name)
    bad = [f"failed: {v.claim}" for v in back.verdicts if not v.passed]
    if not entry["passed"] or [v.as_dict() for v in back.verdicts] != entry["verdicts"]:
        bad.append("the verdicts read back differ from summary.json's")
    if back.meta.get("seed") != 0 or back.meta.get("size") != "smoke" or "numba" not in back.meta["versions"]:
        bad.append(f"metadata {back.meta}")
    if not back.data:
        bad.append("no data saved")
    if re.search(r"(?i)\bnan\b|\binfinity\b", json.dumps(entry["verdicts"])):
        bad.append("a verdict prints NaN or infinity (an unfitted value shown as a number)")
    png = experiments.get(name).plot(back, tmp_path / f"{name}.png")
    for fig in (out / f"{name}.png", png):
        if fig.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n" or fig.stat().st_size < 10_000:
            bad.append(f"{fig} is not a drawn PNG")
    return bad


@pytest.mark.first
def test_main_job_at_smoke_size(tmp_path):
    """`sdeverify check --smoke` runs every registered check (after its canary); exit status 0
    iff all pass, and they do; each check's result round-trips (:func:`_round_trip_problems`);
    plus two properties of the data that the verdicts do not read."""
    out = tmp_path / "job"
    r = subprocess.run([sys.executable, "-m", "sdeverify.cli", "check", "--smoke", "--out",
                        str(out), "--quiet"], capture_output=True, text=True, timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"]
    assert [c["name"] for c in summary["checks"]] == NAMES
    assert r.returncode == (0 if summary["passed"] else 1), r.stdout + r.stderr
    assert summary["canary"] == {"passed": True, "problems": []}
    assert (out / "report.html").stat().st_size > 10_000
    problems = {name: _round_trip_problems(name, out, entry, tmp_path)
                for name, entry in zip(NAMES, summary["checks"])}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
    assert summary["passed"], r.stdout[-3000:]

    # batch_size, linear scaling: the same time horizon for every B; SGDM's loss flat in B (5%)
    from sdeverify.experiments import batch_size as BS
    d = base.ExperimentResult.load(out, "batch_size").data
    np.testing.assert_allclose(d["etas"] * d["steps"], BS.HORIZON, rtol=0.02)
    assert np.ptp(d["loss"][:, 1]) < 0.05 * d["loss"][:, 1].mean()
    # svag: the exact quadratic gap is what the Monte Carlo estimates (independent of the
    # verdict code), and it shrinks with l
    d = base.ExperimentResult.load(out, "svag").data
    assert np.all(np.abs(d["quadratic.gap"] - d["quadratic.gap_exact"]) <= 5 * d["quadratic.gap_sem"])
    assert d["quadratic.gap_exact"][0] > 10 * d["quadratic.gap_exact"][-1] > 0
