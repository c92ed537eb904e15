"""Every theory reference in the repository resolves.

Code comments, docstrings, printed verdicts, benchmark results and ``paper_checks.md`` cite
the theory as "THEORY §n" (meaning ``docs/theory.md §n``).  These tests check that

* ``docs/theory.md`` has the sections ``## §1.`` … ``## §N.`` in order and says, in its first
  paragraph, what "THEORY §n" means;
* every "THEORY §n" / "docs/theory.md §n" citation (also "THEORY §6–7", "THEORY §7, §9" and
  the JSON-escaped "THEORY \\u00a79") names an existing section;
* no file refers to developer notes that are not in the repository (a "DESIGN" document, a
  "THEORY.md" file, ``../shared`` or ``/work/shared``);
* every ``sdeverify.module.name`` reference written in backticks in the package's docstrings,
  the README and the docs names something that exists.
* no code, comment or docstring in ``sdeverify/``, ``tests/`` or ``benchmarks/*.py`` refers to the
  project's history by number ("issue 15", "session 6", "fresh set #4"): that history is not in
  the repository, so such a reference says nothing to a reader; say what the thing is instead.

The parser itself is tested on planted inputs, so a regex that silently matches nothing
cannot make the real checks pass.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
CITING = ("sdeverify", "benchmarks", "tests", "README.md", "paper_checks.md")
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".hypothesis",
             ".mypy_cache", ".ruff_cache", "build", "dist", "out", "sdeverify-out", ".whl"}
BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".pdf", ".npz", ".npy", ".pyc", ".nbi",
                   ".nbc", ".so", ".whl", ".gz", ".zip"}

_NUM = r"\d+(?:\s*[–-]\s*\d+)?"
CITATION = re.compile(r"(?:THEORY|docs/theory\.md)[ \t]*((?:§[ \t]*)?" + _NUM
                      + r"(?:[ \t]*,[ \t]*§[ \t]*" + _NUM + r")*)")
HEADING = re.compile(r"^## §(\d+)\. \S", re.MULTILINE)
FORBIDDEN = {
    "a 'DESIGN' document (not in the repository)": re.compile(r"\bDESIGN\b"),
    "a 'THEORY.md' file (not in the repository; cite docs/theory.md)": re.compile(r"\bTHEORY\.md\b"),
    "the path ../shared": re.compile(r"\.\./shared\b"),
    "the path /work/shared": re.compile(r"/work/shared\b"),
}
#: a reference to the project's history by number: an issue, a numbered work session or review,
#: a numbered set of planted bugs
HISTORY = re.compile(r"\b(?:issues?|sessions?|reviews?|rounds?)[ \t]+#?\d+\b|\bfresh[ \t]+(?:bug[ \t]+)?sets?\b"
                     r"|\bset[ \t]+#\d+", re.IGNORECASE)
HISTORY_SCOPE = ("sdeverify", "tests", "benchmarks")
DOTTED = re.compile(r"`(?::\w+:`)?~?(sdeverify(?:\.[A-Za-z_]\w*)+)`")


# ---- helpers -------------------------------------------------------------------------------

def _files(paths):
    """Text files under ``paths`` (relative to the repository root), skipping build output,
    caches and binaries."""
    for rel in paths:
        p = ROOT / rel
        cands = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        for f in cands:
            parts = f.relative_to(ROOT).parts
            if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
                continue
            if f.suffix.lower() in BINARY_SUFFIXES or f.stat().st_size > 4_000_000:
                continue
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            yield f.relative_to(ROOT).as_posix(), text.replace("\\u00a7", "§")


def cited_sections(text: str) -> list[tuple[int, int, str]]:
    """(line, section, citation) for every theory citation in ``text``; ranges are expanded."""
    out = []
    for m in CITATION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        for item in re.findall(_NUM, m.group(1)):
            ends = [int(v) for v in re.split(r"\s*[–-]\s*", item)]
            for n in range(ends[0], ends[-1] + 1):
                out.append((line, n, m.group(0)))
    return out


def theory_sections(text: str) -> list[int]:
    return [int(n) for n in HEADING.findall(text)]


def forbidden_references(text: str) -> list[tuple[int, str, str]]:
    out = []
    for what, rx in FORBIDDEN.items():
        for m in rx.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((line, what, text.splitlines()[line - 1].strip()))
    return out


def history_references(text: str) -> list[tuple[int, str]]:
    """(line, match) for every reference to the project's history by number in ``text``."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(0)) for m in HISTORY.finditer(text)]


def resolves(dotted: str) -> bool:
    """Does ``a.b.c`` name an importable module or an attribute of one?"""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


# ---- the parser on planted inputs ----------------------------------------------------------

def test_citation_parser_on_planted_text():
    text = ("see THEORY §8).\nref THEORY §6–7: x\n(THEORY §7, §9) and THEORY 2,\n"
            "THEORY \u00a79 (derived) docs/theory.md §11 THEORY §5, derived; THEORY does not say")
    got = sorted({(ln, n) for ln, n, _ in cited_sections(text)})
    assert got == [(1, 8), (2, 6), (2, 7), (3, 2), (3, 7), (3, 9), (4, 5), (4, 9), (4, 11)]
    assert theory_sections("## §1. A\ntext\n## §2. B\n### §3. not a section\n## §4 no dot\n") == [1, 2]
    bad = forbidden_references("a (DESIGN principle 4)\nsee ../shared/x and /work/shared/THEORY.md\n"
                               "design notes, DESIGNS, docs/theory.md")
    assert sorted((ln, w.split()[1]) for ln, w, _ in bad) == [(1, "'DESIGN'"), (2, "'THEORY.md'"),
                                                            (2, "path"), (2, "path")]
    hist = history_references("fixed in Issue 15\nsince session 6 (fresh set)\nsessions 5, set #4\n"
                              "a fresh bug set; review 2\nthe issue 3x, 15 sessions, a set of 4, "
                              "issue: 5, reset #4")
    assert [(ln, m.lower()) for ln, m in hist] == [(1, "issue 15"), (2, "session 6"),
                                                   (2, "fresh set"), (3, "sessions 5"),
                                                   (3, "set #4"), (4, "fresh bug set"),
                                                   (4, "review 2")]
    assert resolves("sdeverify.schedules.svag_schedule")
    assert not resolves("sdeverify.optim.svag_schedule")
    assert not resolves("sdeverify.no_such_module")


# ---- the repository --------------------------------------------------------------------------

def test_theory_document_has_numbered_sections():
    text = THEORY.read_text(encoding="utf-8")
    secs = theory_sections(text)
    assert len(secs) >= 10 and secs == list(range(1, len(secs) + 1)), \
        f"docs/theory.md sections must be ## §1. … ## §N. in order, got {secs}"
    first = text.split("\n\n")[1] if text.startswith("#") else text.split("\n\n")[0]
    assert '"THEORY §n"' in first and "docs/theory.md §n" in first, \
        "the first paragraph of docs/theory.md must say that THEORY §n means docs/theory.md §n"


def test_every_theory_citation_resolves():
    sections = set(theory_sections(THEORY.read_text(encoding="utf-8")))
    found, missing = 0, []
    for path, text in _files(CITING):
        if path == "tests/test_docs.py":
            continue
        for line, n, cite in cited_sections(text):
            found += 1
            if n not in sections:
                missing.append(f"{path}:{line}: {cite!r} -> no '## §{n}.' in docs/theory.md")
    assert found >= 30, f"only {found} theory citations found: is the citation pattern broken?"
    assert not missing, "unresolved theory citations:\n" + "\n".join(missing)


def test_no_reference_to_notes_outside_the_repository():
    bad = []
    for path, text in _files(["."]):
        if path == "tests/test_docs.py":
            continue
        bad += [f"{path}:{line}: refers to {what}: {src[:100]}" for line, what, src in forbidden_references(text)]
    assert not bad, "references to documents that are not in the repository:\n" + "\n".join(bad)


def test_no_reference_to_the_projects_history_by_number():
    """Comments and docstrings say what a bug or a behaviour is, not which numbered issue,
    session or set of planted bugs it came from (history the repository does not define)."""
    bad, scanned = [], 0
    for path, text in _files(HISTORY_SCOPE):
        if path == "tests/test_docs.py" or (path.startswith("benchmarks/") and not path.endswith(".py")):
            continue        # benchmarks/RESULTS.md is the project's dated record
        scanned += 1
        bad += [f"{path}:{line}: {m!r}" for line, m in history_references(text)]
    assert scanned >= 100, f"only {scanned} files scanned: is the scope wrong?"
    assert not bad, ("references to the project's history by number (say what the thing is, "
                     "or move it to paper_checks.md / benchmarks/RESULTS.md):\n" + "\n".join(bad))


@pytest.mark.parametrize("scope", ["sdeverify", "README.md", "docs"])
def test_dotted_references_resolve(scope):
    refs = {}
    for path, text in _files([scope]):
        for m in DOTTED.finditer(text):
            refs.setdefault(m.group(1), f"{path}:{text.count(chr(10), 0, m.start()) + 1}")
    broken = [f"{where}: `{name}` does not exist" for name, where in sorted(refs.items())
              if not resolves(name)]
    assert not broken, "dangling sdeverify.* references:\n" + "\n".join(broken)


def test_ci_runs_the_readme_test_command():
    """``.ci/run`` runs exactly the test command README.md shows (the line after "Run the
    tests"), so the time README quotes is the time CI pays."""
    readme = (ROOT / "README.md").read_text().splitlines()
    at = next(i for i, line in enumerate(readme) if line.startswith("**Run the tests**"))
    command = next(line.strip() for line in readme[at + 1:] if line.strip())
    assert command.startswith("python3 -m venv .venv") and "pytest" in command
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci, f".ci/run does not run README's test command {command!r}"
