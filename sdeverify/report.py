"""``report.html``: one self-contained page with every verdict and figure of a check run.

Written by ``sdeverify check`` at the end of a run and rebuilt from the saved results by
``sdeverify report DIR``.  The page has no external resources: figures are embedded as
base64 PNG data, styles inline.  A figure missing from the folder is redrawn from the saved
data by the check's own ``plot``; one that cannot be drawn is reported on the page.
"""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from .checkrun import CheckRun, load_check
from .files import atomic_write_text
from .result import versions
from .verdict import describe

__all__ = ["write_report", "render"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr.fail td { background: #fde0e0; }
td.pass { color: #176b20; font-weight: bold; }
td.fail { color: #a00000; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; }
.small { color: #555; font-size: 0.85em; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _figure(run: CheckRun, name: str) -> str:
    path = run.folder / f"{name}.png"
    if not path.exists():
        try:
            from . import experiments
            experiments.get(name).plot(run.results[name], path)
        except Exception as exc:           # reported on the page, not hidden
            return f"<p class='fail'>figure could not be drawn: {_e(type(exc).__name__)}: {_e(exc)}</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{_e(name)} figure' src='data:image/png;base64,{data}'>"


def _canary_line(summary: dict) -> str:
    """The verdict-machinery canary's outcome (:mod:`sdeverify.canary`), when the run has one."""
    c = summary.get("canary")
    if c is None:
        return ""
    if c.get("passed", False):
        return "<p class='small'>Verdict machinery canary: PASS (claims of known truth decided as known).</p>"
    return ("<p class='fail'>Verdict machinery canary: FAIL — "
            + _e("; ".join(c.get("problems", [])) or "no detail") + "</p>")


def render(run: CheckRun) -> str:
    """The HTML text of the report for ``run``."""
    s = run.summary
    n_v = sum(len(r.verdicts) for r in run.results.values())
    n_fail = sum(not v.passed for r in run.results.values() for v in r.verdicts) + len(run.errors)
    n_bad = len(run.problems)
    status = ("PASS" if run.passed else "FAIL") + ("" if run.complete or not s else " (run incomplete)")
    out = ["<!DOCTYPE html>", "<html lang='en'>", "<head>", "<meta charset='utf-8'>",
           f"<title>sdeverify check: {_e(status)}</title>", f"<style>{STYLE}</style>", "</head>",
           "<body>", f"<h1>sdeverify check: {_e(status)}</h1>",
           f"<p>{n_v - (n_fail - len(run.errors))} of {n_v} verdicts passed; "
           f"{len(run.errors)} checks crashed"
           + (f"; <b>{n_bad} checks have no trustworthy result</b> (missing or altered files)"
              if n_bad else "")
           + f". Size <b>{_e(s.get('size', '?'))}</b>, seed "
           f"<b>{_e(s.get('seed', '?'))}</b>"
           + (f", {float(s['wall_time']):.0f} s" if s.get("wall_time") is not None else "")
           + f". Folder <code>{_e(run.folder)}</code>.</p>",
           _canary_line(s),
           "<p class='small'>Measured: a confidence interval at the level shown, an error "
           "estimate (no confidence level), or a value compared with the threshold shown. "
           "The rule says how each verdict was decided.</p>",
           "<h2>Verdicts</h2>", "<table>",
           "<tr><th>check</th><th>claim</th><th>paper</th><th>prediction</th><th>measured</th>"
           "<th>rule</th><th>verdict</th></tr>"]
    for name, res in run.results.items():
        for v in res.verdicts:
            cls = "pass" if v.passed else "fail"
            out.append(f"<tr class='{cls}'><td><a href='#{_e(name)}'>{_e(name)}</a></td>"
                       f"<td>{_e(v.claim)}</td><td>{_e(v.reference)}</td><td>{_e(v.prediction)}</td>"
                       f"<td>{_e(describe(v))}</td><td>{_e(v.rule)}</td>"
                       f"<td class='{cls}'>{'PASS' if v.passed else 'FAIL'}</td></tr>")
    for name, err in run.errors.items():
        out.append(f"<tr class='fail'><td>{_e(name)}</td><td>(the check crashed)</td><td></td>"
                   f"<td></td><td>{_e(err)}</td><td></td><td class='fail'>FAIL</td></tr>")
    for name, why in run.problems.items():
        out.append(f"<tr class='fail'><td>{_e(name)}</td><td>(no trustworthy result)</td><td></td>"
                   f"<td></td><td>{_e(why)}</td><td></td><td class='fail'>FAIL</td></tr>")
    out.append("</table>")
    out.append("<h2>Figures</h2>")
    for name, res in run.results.items():
        wall = res.meta.get("wall_time")
        out.append(f"<h3 id='{_e(name)}'>{_e(name)}: {'PASS' if res.passed else 'FAIL'}"
                   + (f" <span class='small'>({float(wall):.1f} s)</span>" if wall is not None else "")
                   + "</h3>")
        out.append(_figure(run, name))
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
