"""The verdict-machinery canary (sdeverify.canary) passes on the real code, fails under each
kind of machinery defect it is meant to catch, and fails the `check` job when it fails."""
import json

import pytest

from sdeverify import canary, cli, runner, stats
from sdeverify.canary import EXPECTED, canary_verdicts, machinery_problems
from sdeverify.experiments.base import ExperimentResult


def test_canary_passes_on_the_real_machinery():
    assert tuple(v.passed for v in canary_verdicts()) == EXPECTED
    assert machinery_problems(runner.entry, runner.job_passed) == []
    row, problems = runner.canary_row()
    assert problems == [] and row[-1] == "PASS"


def _contains_or(self, value):                       # a range test written with "or"
    return bool(self.low <= value or value <= self.high)


@pytest.mark.parametrize("defect", ["result_any", "contains_or", "at_least_estimate", "wide_ci",
                                    "job_first_only", "rows_always_pass", "save_drops_flag"])
def test_canary_catches_machinery_defects(monkeypatch, defect):
    entry, job = runner.entry, runner.job_passed
    if defect == "result_any":
        monkeypatch.setattr(ExperimentResult, "passed", property(lambda s: any(v.passed for v in s.verdicts)))
    elif defect == "contains_or":
        monkeypatch.setattr(stats.Interval, "contains", _contains_or)
    elif defect == "at_least_estimate":
        monkeypatch.setattr(canary, "consistent_with_order_at_least",
                            lambda fit, p: bool(fit.order.estimate >= p - 0.1))
    elif defect == "wide_ci":                          # intervals twice too wide
        real = stats.mean_interval
        monkeypatch.setattr(canary, "mean_interval", lambda m, s, level=0.95: real(m, 2 * s, level))
    elif defect == "job_first_only":
        job = lambda entries: all(e["passed"] for e in entries[:1])
    elif defect == "rows_always_pass":
        entry = lambda name, res, fig: dict(runner.entry(name, res, fig),
                                            rows=[r[:-1] + ["PASS"] for r in runner.entry(name, res, fig)["rows"]])
    elif defect == "save_drops_flag":
        real_dict = canary.Verdict.as_dict
        monkeypatch.setattr(canary.Verdict, "as_dict", lambda v: dict(real_dict(v), passed=True))
    assert machinery_problems(entry, job), defect


def test_failed_canary_fails_the_job(tmp_path, monkeypatch, capsys):
    """With a machinery defect planted, `check` exits 1 even though its checks pass, and says
    why; summary.json records the canary."""
    monkeypatch.setattr(runner, "job_passed", lambda entries: all(e["passed"] for e in entries[:1]))
    argv = ["check", "--smoke", "--only", "variance_reduction", "--quiet", "--jobs", "1"]
    assert cli.main(argv + ["--out", str(tmp_path / "bad")]) == 1
    assert "failed its canary" in capsys.readouterr().err
    doc = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert doc["canary"]["passed"] is False and not doc["passed"]
    assert all(c["passed"] for c in doc["checks"])
    from sdeverify.checkrun import load_check
    assert not load_check(tmp_path / "bad").passed              # read back: still a failed run
    page = (tmp_path / "bad" / "report.html").read_text()
    canary = page[page.index("<section id='canary'>"):]
    assert "<p class='fail'>FAIL" in canary[:canary.index("</section>")]
    monkeypatch.undo()
    assert cli.main(argv + ["--out", str(tmp_path / "good")]) == 0
    doc = json.loads((tmp_path / "good" / "summary.json").read_text())
    assert doc["canary"] == {"passed": True, "problems": []} and doc["passed"]
    assert load_check(tmp_path / "good").passed
    page = (tmp_path / "good" / "report.html").read_text()
    canary = page[page.index("<section id='canary'>"):]
    assert "<span class='pass'>PASS</span>" in canary[:canary.index("</section>")]
