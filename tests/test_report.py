"""Results where analysis happens (DataFrame / xarray), load_check, report.html, the verdict
types and the verdict table of the CLI."""
import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

import sdeverify as sv
from sdeverify.checkrun import read_summary
from sdeverify.cli import _print_table, main
from sdeverify.files import ResultFileError, hashed_json, write_hashed_json
from sdeverify.report import write_report
from sdeverify.stats import Interval
from sdeverify.verdict import Value, Verdict, describe

VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Collects the tags; fails on a closing tag that does not match the open one."""

    def __init__(self):
        super().__init__()
        self.stack, self.imgs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def check_run(tmp_path_factory):
    """A small check run: its folder and what `sdeverify check` printed on the terminal."""
    import contextlib
    import io
    out = tmp_path_factory.mktemp("check")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["check", "--smoke", "--only", "descent_lemma,variance_reduction", "--out",
                     str(out), "--quiet"]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def check_dir(check_run):
    return check_run[0]


def _parse(path):
    c = _Checker()
    c.feed(path.read_text())
    c.close()
    assert c.stack == [], c.stack
    return c


def test_check_writes_a_self_contained_report(check_dir):
    run = sv.load_check(check_dir)
    c = _parse(check_dir / "report.html")
    text = " ".join(" ".join(c.text).split())
    verdicts = [v for r in run.results.values() for v in r.verdicts]
    assert len(verdicts) >= 10
    for v in verdicts:                            # every verdict listed, with its measurement
        assert " ".join(v.claim.split()) in text and describe(v) in text
    assert len(c.imgs) == len(run.results) == 2   # every figure, inline
    for img in c.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in (check_dir / "report.html").read_text().replace("http-equiv", "")


def test_report_command_rebuilds_it_and_redraws_a_missing_figure(check_dir, capsys):
    (check_dir / "report.html").unlink()
    (check_dir / "descent_lemma.png").unlink()
    assert main(["report", str(check_dir)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (check_dir / "descent_lemma.png").exists()
    assert len(_parse(check_dir / "report.html").imgs) == 2
    assert main(["report", str(check_dir / "nowhere")]) == 2


def test_a_crashed_check_is_listed_as_failed(check_dir, tmp_path):
    import shutil
    d = tmp_path / "run"
    shutil.copytree(check_dir, d)
    doc = read_summary(d / "summary.json")
    doc["checks"].append({"name": "svag", "passed": False, "error": "RuntimeError: boom"})
    write_hashed_json(d / "summary.json", doc)
    run = sv.load_check(d)
    assert not run.passed and run.errors == {"svag": "RuntimeError: boom"}
    assert "RuntimeError: boom" in write_report(d).read_text()


def _copy(check_dir, tmp_path):
    import shutil
    d = tmp_path / "run"
    shutil.copytree(check_dir, d)
    return d


def _report_text(d):
    return " ".join(" ".join(_parse(write_report(d)).text).split())


def test_a_check_whose_result_was_deleted_is_listed_and_fails_the_run(check_dir, tmp_path, capsys):
    """summary.json names two checks; with one check's JSON gone the report says so and the
    run is a failure (it used to render the other as a complete PASS)."""
    d = _copy(check_dir, tmp_path)
    (d / "variance_reduction.json").unlink()
    run = sv.load_check(d)
    assert not run.passed and set(run.problems) == {"variance_reduction"}
    assert "missing" in run.problems["variance_reduction"]
    text = _report_text(d)
    assert "sdeverify check: FAIL" in text and "variance_reduction" in text and "missing" in text
    assert main(["report", str(d)]) == 1 and "FAIL" in capsys.readouterr().out   # as check: 1


def test_an_edited_verdict_is_not_rendered_as_the_truth(check_dir, tmp_path):
    d = _copy(check_dir, tmp_path)
    doc = json.loads((d / "descent_lemma.json").read_text())
    doc["verdicts"][0]["passed"] = not doc["verdicts"][0]["passed"]
    (d / "descent_lemma.json").write_text(json.dumps(doc))
    run = sv.load_check(d)
    assert not run.passed and "content hash" in run.problems["descent_lemma"]
    assert "descent_lemma" not in run.results and "altered" in _report_text(d)


def test_a_result_from_another_run_is_refused(check_dir, tmp_path):
    """A check's files replaced by those of another seed (each file intact on its own)."""
    d = _copy(check_dir, tmp_path)
    doc = json.loads((d / "descent_lemma.json").read_text())
    doc["meta"]["seed"] = 7
    (d / "descent_lemma.json").write_text(hashed_json(doc))
    run = sv.load_check(d)
    assert not run.passed and "another run" in run.problems["descent_lemma"]


@pytest.mark.parametrize("content,why", [
    ("[]", "expected a JSON object"), ("{", "not valid JSON"), ('{"size": "smoke"}', "cannot be verified"),
    (hashed_json({"size": "smoke"}), "'checks' must be a list"),
    (hashed_json({"checks": [{"passed": True}]}), "'checks' must be a list"),
])
def test_a_malformed_summary_is_one_clear_error_naming_the_file(check_dir, tmp_path, capsys,
                                                               content, why):
    d = _copy(check_dir, tmp_path)
    (d / "summary.json").write_text(content)
    with pytest.raises(ResultFileError, match=why):
        sv.load_check(d)
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "summary.json" in err and why in err


def test_an_edited_summary_is_refused(check_dir, tmp_path):
    d = _copy(check_dir, tmp_path)
    doc = json.loads((d / "summary.json").read_text())
    doc["passed"] = not doc["passed"]
    (d / "summary.json").write_text(json.dumps(doc))
    with pytest.raises(ResultFileError, match="summary.json.*content hash"):
        sv.load_check(d)


def test_a_check_result_missing_a_key_is_listed_not_a_traceback(check_dir, tmp_path):
    d = _copy(check_dir, tmp_path)
    doc = json.loads((d / "descent_lemma.json").read_text())
    del doc["verdicts"]
    (d / "descent_lemma.json").write_text(hashed_json(doc))
    run = sv.load_check(d)
    assert not run.passed and "unreadable" in run.problems["descent_lemma"]


def test_load_check_tables(check_dir):
    run = sv.load_check(check_dir)
    df = run.to_dataframe()
    assert len(df) == sum(len(r.verdicts) for r in run.results.values())
    assert set(df["check"]) == {"descent_lemma", "variance_reduction"} and df["passed"].all()
    ci = df[df["kind"] == "confidence interval"]
    assert len(ci) and (ci["low"] <= ci["estimate"]).all() and (ci["estimate"] <= ci["high"]).all()
    assert list(run.checks_frame()["check"]) == ["descent_lemma", "variance_reduction"]
    ds = run.to_xarray("variance_reduction")
    res = run.results["variance_reduction"]
    for k, v in res.data.items():
        np.testing.assert_array_equal(ds[k].values, v)
    with pytest.raises(KeyError, match="available"):
        run.to_xarray("nope")


def test_simulation_result_as_dataframe_and_dataset():
    P = sv.problems.Quadratic(np.diag([1.0, 2.0]))
    res = sv.simulate(P, [sv.SGD(0.1), sv.SGDM(0.1, 0.5)], [1.0, 1.0], steps=20, paths=512,
                      sigma=0.5, record=[0, 10, 20], observables=["loss", "sqnorm"])
    df = res.to_dataframe()
    assert list(df.columns[:6]) == ["optimizer", "step", "observable", "mean", "sem", "count"]
    assert len(df) == 2 * 3 * 2
    row = df[(df.optimizer == "SGDM") & (df.step == 10) & (df.observable == "sqnorm")]
    m, s = res.series("SGDM", "sqnorm")
    assert row["mean"].item() == m[1] and row["sem"].item() == s[1] and row["count"].item() == 512
    ds = res.to_xarray()
    np.testing.assert_array_equal(ds["mean"].sel(optimizer="SGD", observable="loss").values,
                                  res.series("SGD", "loss")[0])
    assert ds.attrs["paths"] == 512


def test_train_result_as_dataframe_and_dataset():
    from sdeverify.train.result import TrainResult
    g = np.random.default_rng(0)
    vals = g.standard_normal((2, 3, 4, 2))
    div = np.array([[-1, -1, -1, -1], [-1, 15, -1, -1]])          # replica 1 of SGDM diverged at 15
    res = TrainResult(("SGD", "SGDM"), ("test_loss", "test_acc"), np.array([0, 10, 20]), vals,
                      np.zeros((2, 4, 20)), div)
    df = res.to_dataframe()
    last = df[(df.optimizer == "SGDM") & (df.step == 20) & (df.observable == "test_acc")]
    assert last["count"].item() == 3
    np.testing.assert_allclose(last["mean"].item(), np.delete(vals[1, 2, :, 1], 1).mean())
    per = res.to_dataframe(per_replica=True)
    assert len(per) == vals.size
    assert np.isnan(per[(per.optimizer == "SGDM") & (per.step == 20) & (per.replica == 1)]["value"]).all()
    ds = res.to_xarray()
    assert ds["value"].dims == ("optimizer", "step", "replica", "observable")
    assert set(ds["mean"].dims) <= set(df.columns) and set(ds["value"].dims) <= set(per.columns)
    assert list(ds["observable"].values) == ["test_loss", "test_acc"]
    np.testing.assert_array_equal(ds["count"].sel(optimizer="SGDM").values[:, 0], [4, 4, 3])


def test_missing_pandas_is_a_clear_error(monkeypatch):
    import sdeverify.tables as t
    real = t.importlib.import_module

    def fake(name, *a):
        if name in ("pandas", "xarray"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a)

    monkeypatch.setattr(t.importlib, "import_module", fake)
    res = sv.simulate(sv.problems.Quadratic(np.eye(1)), sv.SGD(0.1), [1.0], steps=2, paths=256, sigma=1.0)
    with pytest.raises(ImportError, match=r"pip install 'sdeverify\[analysis\]'"):
        res.to_dataframe()
    with pytest.raises(ImportError, match="xarray"):
        res.to_xarray()


def test_verdict_kinds_round_trip_and_print_for_what_they_are():
    ci = Verdict("c", "Thm 4.5", "p", Interval(1.0, 0.9, 1.1, 0.999), True, "r")
    err = Verdict("c", "Thm 4.5", "p", Interval(1.0, 0.9, 1.1, 0.0), True, "r")
    val = Verdict("c", "Lemma A.2", "p", Value(3e-16), True, "r", threshold=1e-12)
    fr = Verdict("c", "Sec 6", "p", Value((0.0, 1.0)), True, "r")
    assert describe(ci) == "1 [0.9, 1.1] 99.9% CI" and ci.kind == "confidence interval"
    assert describe(err).endswith("error estimate") and err.kind == "error estimate"
    assert describe(val) == "3e-16 (threshold 1e-12)" and val.kind == "value"
    assert describe(fr) == "(0, 1)"
    for v in (ci, err, val, fr):
        assert Verdict.from_dict(json.loads(json.dumps(v.as_dict()))) == v
    old = {"claim": "c", "reference": "r", "prediction": "p", "passed": True, "rule": "r",
           "measured": {"estimate": 1.0, "low": 0.5, "high": 1.5, "level": 0.95}}
    assert Verdict.from_dict(old).measured == Interval(1.0, 0.5, 1.5, 0.95)   # earlier saves


def test_table_wraps_to_the_terminal_and_never_cuts(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    claim = ("SGDM with index alpha = 0 is a weak approximation of the first-order SDE over "
             "O(1/eta) steps, checked on the quadratic and the cosine well")
    _print_table([[claim, "Thm 4.5", "order >= 1 (two-sided)", "1.02 [0.95, 1.09] 95% CI", "PASS"]])
    out = capsys.readouterr().out
    assert max(len(ln) for ln in out.splitlines()) <= 100
    assert " ".join(out.split()).count("cosine well") == 1
    for word in claim.split():
        assert word in out


def test_numpy_outcomes_become_plain_json():
    """A rule that returns a NumPy bool (or a NumPy threshold) used to crash the check's
    summary.json write (`TypeError: Object of type bool is not JSON serializable`)."""
    v = Verdict("c", "r", "p", Value(np.float64(1e-16)), np.float64(1e-16) <= 1e-12, "r",
                threshold=np.float64(1e-12))
    assert type(v.passed) is bool and type(v.threshold) is float
    json.dumps(v.as_dict())


def test_a_level_close_to_one_never_prints_as_100_percent():
    from sdeverify.verdict import percent
    assert [percent(v) for v in (0.95, 0.999, 0.99997, 0.9999999)] == \
        ["95", "99.9", "99.997", "99.99999"]


def test_a_check_run_prints_in_one_line(check_dir):
    run = sv.load_check(check_dir)
    text = repr(run)
    assert "\n" not in text and len(text) < 300 and "PASS" in text and "checks" in text


def test_the_terminal_and_the_report_count_the_same_verdicts(check_run, tmp_path):
    """One rule (report.tally: every verdict, the canary as one) for the terminal's last line
    and the report's; a failed verdict is counted as failed in both."""
    import re
    from sdeverify.report import tally
    out, printed = check_run
    said = re.search(r"(\d+) passed, (\d+) failed", printed.strip().splitlines()[-1])
    shown = re.search(r"(\d+) passed, (\d+) failed \((\d+) verdicts",
                      " ".join(" ".join(_parse(out / "report.html").text).split()))
    run = sv.load_check(out)
    n = sum(len(r.verdicts) for r in run.results.values()) + 1          # + the canary
    assert said.groups() == shown.groups()[:2] == (str(n), "0") and shown[3] == str(n)
    d = _copy(out, tmp_path)                                             # a failed canary
    doc = read_summary(d / "summary.json")
    doc["canary"] = {"passed": False, "problems": ["planted"]}
    write_hashed_json(d / "summary.json", doc)
    t = tally(sv.load_check(d))
    assert (t.passed, t.failed) == (n - 1, 1)
    text = _report_text(d)
    assert f"{n - 1} passed, 1 failed" in text and "planted" in text


def test_the_report_shows_the_figure_the_run_wrote(check_dir, tmp_path):
    """A folder rerun with --format svg keeps an older NAME.png: the page shows the figure
    summary.json names (the run's own), not the stale PNG."""
    from sdeverify import experiments
    d = _copy(check_dir, tmp_path)
    res = sv.load_check(d).results["descent_lemma"]
    experiments.get("descent_lemma").plot(res, d / "descent_lemma.svg")
    doc = read_summary(d / "summary.json")
    for c in doc["checks"]:
        if c["name"] == "descent_lemma":
            c["figure"] = str(d / "descent_lemma.svg")
    write_hashed_json(d / "summary.json", doc)
    srcs = [img["src"][:26] for img in _parse(write_report(d)).imgs]
    assert srcs.count("data:image/svg+xml;base64,") == 1 and len(srcs) == 2
