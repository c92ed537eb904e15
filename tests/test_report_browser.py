"""report.html in a real browser: headless Chromium loads the page, every figure decodes,
every in-page link resolves, and a screenshot is saved.

The run is built from small saved results (no check is run): one failing check with a PNG
figure, one passing check with an SVG figure, and the canary.  A script appended to a copy
of the page records, after the page has loaded, each image's decoded size and each
``href="#..."`` without its target; ``chromium --headless --dump-dom`` prints the DOM with
that record.  The same probe on a page with a broken image and a dangling link must flag
both (the probe can fail).  Skipped, with the reason, where no Chromium/Chrome binary
exists (``.ci/run`` installs one when it can: ``apt-get install chromium``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import sdeverify as sv
from sdeverify.experiments.base import ExperimentResult, make_meta
from sdeverify.files import write_hashed_json
from sdeverify.report import write_report
from sdeverify.stats import Interval
from sdeverify.verdict import Value, Verdict

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _browser() -> str | None:
    explicit = os.environ.get("SDEVERIFY_BROWSER")
    if explicit:
        return shutil.which(explicit) or (explicit if os.path.exists(explicit) else None)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


BROWSER = _browser()
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium/Chrome binary on PATH (apt-get install chromium, or "
                            "set SDEVERIFY_BROWSER); the report's browser test needs one")

PROBE = """
<script>
window.addEventListener('load', () => {     // the load event waits for every image
  const imgs = Array.from(document.images);
  const rec = {
    images: imgs.map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                            height: i.naturalHeight})),
    links: Array.from(document.querySelectorAll('a[href^="#"]')).map(a => a.getAttribute('href')),
    dangling: Array.from(document.querySelectorAll('a[href^="#"]'))
      .map(a => a.getAttribute('href').slice(1))
      .filter(id => !document.getElementById(id)),
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  };
  const pre = document.createElement('pre');
  pre.id = 'sdeverify-probe';
  pre.textContent = JSON.stringify(rec);
  document.body.appendChild(pre);
});
</script>
"""


def _chromium(*args: str, tmp) -> subprocess.CompletedProcess:
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
           "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _probe(page, tmp) -> dict:
    """Load ``page`` (with :data:`PROBE` appended) in headless Chromium; the probe's record."""
    probed = page.with_name(page.stem + ".probe.html")
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    r = _chromium("--dump-dom", probed.as_uri(), tmp=tmp)
    m = re.search(r"<pre id=\"sdeverify-probe\">(.*?)</pre>", r.stdout, re.S)
    assert m, f"the probe did not run (exit {r.returncode}): {r.stderr[-2000:]}"
    import html
    return json.loads(html.unescape(m.group(1)))


def _figure(path, fmt: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(3.3, 2.4))
    ax.plot([1, 2, 3], [1, 4, 9], "o-", label=r"$\eta^2$")
    ax.legend()
    fig.savefig(path, format=fmt)
    plt.close(fig)


@pytest.fixture
def report(tmp_path):
    """A small saved run (a failing check with a PNG figure, a passing one with an SVG
    figure, the canary passed) and its report.html."""
    out = tmp_path / "run"
    out.mkdir()
    meta = make_meta(0, "smoke", 0.5)
    bad = ExperimentResult("descent_lemma", {}, {"x": np.arange(3.0)}, (
        Verdict("a claim that holds", "Lemma 3.4", "order > 2", Interval(2.9, 2.5, 3.3), True,
                "lower end > 2"),
        Verdict("a claim that fails", "Lemma 3.4", "ratio = 1", Interval(1.4, 1.2, 1.6), False,
                "interval contains 1")), meta)
    good = ExperimentResult("variance_reduction", {}, {"x": np.arange(3.0)}, (
        Verdict("variance ratio", "Thm 4.5", "< 1", Value(0.4), True, "value < 1"),),
        meta)
    entries = []
    for res, fmt in ((bad, "png"), (good, "svg")):
        res.save(out)
        _figure(out / f"{res.name}.{fmt}", fmt)
        entries.append({"name": res.name, "passed": res.passed, "wall_time": 0.5,
                        "verdicts": [v.as_dict() for v in res.verdicts]})
    write_hashed_json(out / "summary.json", {
        "size": "smoke", "seed": 0, "complete": True, "passed": False, "wall_time": 1.0,
        "jobs": 1, "canary": {"passed": True, "problems": []}, "checks": entries})
    return write_report(out)


def test_report_renders_in_headless_chromium(report, tmp_path):
    rec = _probe(report, tmp_path)
    assert len(rec["images"]) == 2, rec["images"]            # one figure per check
    for img in rec["images"]:                                # every figure decodes
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
    assert rec["dangling"] == [], rec["dangling"]            # every in-page link resolves
    assert {"#contents", "#canary", "#check-descent_lemma",
            "#check-variance_reduction"} <= set(rec["links"])
    ids = rec["ids"]                                         # the failing check comes first
    assert ids.index("check-descent_lemma") < ids.index("check-variance_reduction")
    shot = tmp_path / "report.png"
    r = _chromium(f"--screenshot={shot}", "--window-size=1280,2400", report.as_uri(),
                  tmp=tmp_path)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr[-2000:]
    assert shot.stat().st_size > 10_000                      # a page was drawn, not a blank


def test_the_probe_sees_a_broken_figure_and_a_dangling_link(report, tmp_path):
    """The control: the same probe on a page whose first figure's data is cut and with a
    link to an id that does not exist flags both (the test above can fail)."""
    text = report.read_text()
    i = text.index("base64,") + len("base64,")
    broken = text[:i] + "AAAA" + text[i + 4000:]
    broken = broken.replace("href='#canary'", "href='#no-such-section'")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    rec = _probe(page, tmp_path)
    assert [img["width"] for img in rec["images"]].count(0) == 1
    assert rec["dangling"] == ["no-such-section"]
    assert sv.load_check(report.parent).passed is False      # the failing verdict fails the run
