"""``report.html``: one self-contained page with every verdict and figure of a check run.

Written by ``sdeverify check`` at the end of a run and rebuilt from the saved results by
``sdeverify report DIR``.  The page has no external resources: figures are embedded as
base64 data (PNG, or SVG for ``--format svg``), styles inline.  A figure missing from the
folder is redrawn from the saved data by the check's own ``plot`` (into a temporary folder
when the run wrote PDF figures, which a page cannot show); one that cannot be drawn is
reported on the page.

The page: the outcome and the verdict count (:func:`tally`, the same rule as the
terminal's line), the verdict-machinery canary's outcome, a table of contents, then one
section per check — its verdicts (failing rows first) and its figure — failing checks first.
"""
from __future__ import annotations

import base64
import html
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .checkrun import CheckRun, load_check
from .files import atomic_write_text
from .result import versions
from .verdict import Verdict, describe

__all__ = ["Tally", "tally", "write_report", "render"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr.fail td { background: #fde0e0; }
td.pass, span.pass { color: #176b20; font-weight: bold; }
td.fail, span.fail, p.fail { color: #a00000; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; }
section { border-top: 1px solid #bbb; margin-top: 1.5em; }
.small { color: #555; font-size: 0.85em; }
"""

#: the figure formats a page can show, in the order they are looked for, with their MIME type
SHOWN = {"png": "image/png", "svg": "image/svg+xml"}


@dataclass(frozen=True)
class Tally:
    """Verdict counts of a check run: ``passed`` and ``failed``; ``total`` their sum."""
    passed: int
    failed: int

    @property
    def total(self) -> int:
        """Every verdict counted: ``passed + failed``."""
        return self.passed + self.failed


def tally(run: CheckRun) -> Tally:
    """The verdict count that ``sdeverify check`` prints and ``report.html`` shows (one rule
    for both): every verdict of every check, one failed verdict per check that crashed or
    has no trustworthy result, and the verdict-machinery canary as one verdict when the run
    has one (it is a row of the terminal's table)."""
    ok = [bool(v.passed) for r in run.results.values() for v in r.verdicts]
    ok += [False] * (len(run.errors) + len(run.problems))
    if "canary" in run.summary:
        ok.append(run.canary_passed)
    return Tally(sum(ok), len(ok) - sum(ok))


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _anchor(name: str) -> str:
    return "check-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _img(path: Path, name: str) -> str:
    mime = SHOWN[path.suffix.lstrip(".")]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{_e(name)} figure' src='data:{mime};base64,{data}'>"


def _figure(run: CheckRun, name: str) -> str:
    """The check's figure as an inline ``<img>``: the one ``summary.json`` names, else its
    PNG or SVG in the folder, else drawn from the saved data (into the folder as
    ``NAME.png``; into a temporary folder when the run's figure is a PDF, so the folder keeps
    only the format asked for)."""
    entry = next((c for c in run.summary.get("checks", []) if c.get("name") == name), {})
    named = [Path(str(entry["figure"])).name] if entry.get("figure") else []
    for file in named + [f"{name}.{ext}" for ext in SHOWN]:
        if Path(file).suffix.lstrip(".") in SHOWN and (run.folder / file).exists():
            return _img(run.folder / file, name)
    from . import experiments
    with tempfile.TemporaryDirectory() as tmp:
        into = Path(tmp) if (run.folder / f"{name}.pdf").exists() else run.folder
        try:
            path = experiments.get(name).plot(run.results[name], into / f"{name}.png")
        except Exception as exc:           # reported on the page, not hidden
            return (f"<p class='fail'>figure could not be drawn: {_e(type(exc).__name__)}: "
                    f"{_e(exc)}</p>")
        return _img(Path(path), name)


def _canary(summary: dict) -> str:
    """The verdict-machinery canary's section (:mod:`sdeverify.canary`), when the run has one."""
    c = summary.get("canary")
    if c is None:
        return ""
    if c.get("passed", False):
        body = ("<p><span class='pass'>PASS</span>: claims of known truth decided as known "
                "(known-true claims pass, known-false fail, a failing check fails the job).</p>")
    else:
        body = ("<p class='fail'>FAIL: " + _e("; ".join(c.get("problems", [])) or "no detail")
                + "</p><p>The verdict machinery itself is wrong: no verdict of this run can be "
                "trusted.</p>")
    return f"<section id='canary'><h2>Verdict-machinery canary</h2>{body}</section>"


HEAD = ("<tr><th>claim</th><th>paper</th><th>prediction</th><th>measured</th><th>rule</th>"
        "<th>verdict</th></tr>")


def _row(v: Verdict) -> str:
    cls = "pass" if v.passed else "fail"
    return (f"<tr class='{cls}'><td>{_e(v.claim)}</td><td>{_e(v.reference)}</td>"
            f"<td>{_e(v.prediction)}</td><td>{_e(describe(v))}</td><td>{_e(v.rule)}</td>"
            f"<td class='{cls}'>{'PASS' if v.passed else 'FAIL'}</td></tr>")


def _section(run: CheckRun, name: str) -> str:
    """One check: its heading (outcome, wall time), its verdicts (failing first), its figure;
    or why it has none."""
    if name in run.errors or name in run.problems:
        what = "the check crashed" if name in run.errors else "no trustworthy result"
        why = run.errors.get(name) or run.problems[name]
        return (f"<section id='{_anchor(name)}'><h2>{_e(name)}: <span class='fail'>FAIL</span>"
                f"</h2><p class='fail'>{_e(what)}: {_e(why)}</p></section>")
    res = run.results[name]
    wall = res.meta.get("wall_time")
    verdicts = sorted(res.verdicts, key=lambda v: bool(v.passed))      # stable: failing first
    state = "PASS" if res.passed else "FAIL"
    return "\n".join([
        f"<section id='{_anchor(name)}'>",
        f"<h2>{_e(name)}: <span class='{state.lower()}'>{state}</span>"
        + (f" <span class='small'>({float(wall):.1f} s)</span>" if wall is not None else "")
        + "</h2>",
        "<table>", HEAD, *(_row(v) for v in verdicts), "</table>",
        _figure(run, name),
        "<p class='small'><a href='#contents'>contents</a></p>",
        "</section>"])


def _order(run: CheckRun) -> list[str]:
    """The checks, failing ones first (crashed, no trustworthy result, a failed verdict),
    each group in the order the checks ran."""
    failing = list(run.errors) + list(run.problems) + [n for n, r in run.results.items()
                                                       if not r.passed]
    return failing + [n for n, r in run.results.items() if r.passed]


def _contents(run: CheckRun, names: list[str]) -> str:
    items = []
    if "canary" in run.summary:
        state = "PASS" if run.canary_passed else "FAIL"
        items.append(f"<li><a href='#canary'>verdict-machinery canary</a>: "
                     f"<span class='{state.lower()}'>{state}</span></li>")
    for n in names:
        if n in run.results:
            r = run.results[n]
            bad = sum(not v.passed for v in r.verdicts)
            state = "PASS" if r.passed else "FAIL"
            detail = f"{len(r.verdicts)} verdicts" + (f", {bad} failed" if bad else "")
        else:
            state, detail = "FAIL", ("crashed" if n in run.errors else "no trustworthy result")
        items.append(f"<li><a href='#{_anchor(n)}'>{_e(n)}</a>: "
                     f"<span class='{state.lower()}'>{state}</span> ({_e(detail)})</li>")
    return "<h2 id='contents'>Contents</h2><ul>" + "".join(items) + "</ul>"


def render(run: CheckRun) -> str:
    """The HTML text of the report for ``run``."""
    s = run.summary
    t = tally(run)
    n_bad = len(run.problems)
    status = ("PASS" if run.passed else "FAIL") + ("" if run.complete or not s else " (run incomplete)")
    names = _order(run)
    out = ["<!DOCTYPE html>", "<html lang='en'>", "<head>", "<meta charset='utf-8'>",
           f"<title>sdeverify check: {_e(status)}</title>", f"<style>{STYLE}</style>", "</head>",
           "<body>", f"<h1>sdeverify check: {_e(status)}</h1>",
           f"<p><b>{t.passed} passed, {t.failed} failed</b> ({t.total} verdicts"
           + (", the verdict-machinery canary counted as one" if "canary" in s else "")
           + f"; {len(run.results) + len(run.errors) + n_bad} checks, "
           f"{len(run.errors)} crashed"
           + (f"; <b>{n_bad} checks have no trustworthy result</b> (missing or altered files)"
              if n_bad else "")
           + f"). Size <b>{_e(s.get('size', '?'))}</b>, seed "
           f"<b>{_e(s.get('seed', '?'))}</b>"
           + (f", {float(s['wall_time']):.0f} s" if s.get("wall_time") is not None else "")
           + f". Folder <code>{_e(run.folder)}</code>.</p>",
           "<p class='small'>Measured: a confidence interval at the level shown, an error "
           "estimate (no confidence level), or a value compared with the threshold shown. "
           "The rule says how each verdict was decided. Failing checks and rows come first.</p>",
           _contents(run, names), _canary(s)]
    out += [_section(run, n) for n in names]
    out.append(f"<p class='small'>Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by sdeverify "
               f"{_e(versions().get('sdeverify', ''))}.</p>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Build ``report.html`` (or ``out``) from the results saved in ``folder``; atomic."""
    run = load_check(folder)
    path = Path(out) if out is not None else Path(folder) / "report.html"
    atomic_write_text(path, render(run))
    return path
