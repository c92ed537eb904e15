"""docs/extending.md's "A check of the paper", followed literally in a fresh editable install.

What a new user does, as a script: take a copy of the repository (its tracked files), install
it editable into a new virtual environment (``pip install -e``, as extending.md says), then
add a check exactly as extending.md shows — every ``python`` block of that section whose
first line is ``# PATH`` saved as ``PATH``, the registry line added to
``sdeverify/experiments/__init__.py::EXPERIMENTS`` — and run it through the *installed*
command: ``sdeverify list``, ``sdeverify run my_claim --size smoke`` and
``sdeverify check --only my_claim --smoke``, then the section's own test file with pytest.
The check is added after the install, so an install that does not see source changes (a
non-editable ``pip install .``) fails here with "unknown experiment".

Fast and without network: the new environment is ``python -m venv --without-pip`` on the
running interpreter, and a ``.pth`` file puts the running environment's site-packages
*after* its own, so numpy, numba, pip and the build backend come from there (a ``.pth`` path
line does not run that environment's own ``.pth`` files, so its install of sdeverify stays
invisible; the test asserts that ``sdeverify`` imports from the copy).
``pip install -e . --no-deps --no-build-isolation`` then takes seconds.
"""
from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTENDING = ROOT / "docs" / "extending.md"
SECTION = "## A check of the paper"
NAME = "my_claim"


def section_blocks(text: str, heading: str) -> list[str]:
    """The ``python`` code blocks of the section of ``text`` that starts at ``heading``
    (up to the next ``## `` heading)."""
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return re.findall(r"```python\n(.*?)```", text[start:end if end >= 0 else None], flags=re.S)


def files_and_registry(blocks: list[str]) -> tuple[dict[str, str], list[str]]:
    """({path: content} of the blocks whose first line is ``# PATH`` with PATH a ``.py``
    file, registry lines ``"name": "module",`` of the block headed ``# in ...EXPERIMENTS``)."""
    files, registry = {}, []
    for b in blocks:
        first = b.splitlines()[0].strip()
        if re.fullmatch(r"#\s*[\w/.-]+\.py", first):
            files[first.lstrip("#").strip()] = b
        elif "EXPERIMENTS" in first:
            registry += [ln.strip() for ln in b.splitlines()[1:] if ln.strip()]
    return files, registry


def add_to_registry(init: Path, lines: list[str]) -> None:
    """Append ``lines`` to the ``EXPERIMENTS`` dict literal of ``init`` (before its ``}``)."""
    text = init.read_text()
    at = text.index("EXPERIMENTS: dict[str, str] = {")
    close = text.index("\n}", at)
    init.write_text(text[:close] + "".join(f"\n    {ln}" for ln in lines) + text[close:])


def test_the_section_parses():
    """The parser on the real document: the check module, its test and one registry line."""
    files, registry = files_and_registry(section_blocks(EXTENDING.read_text(), SECTION))
    assert set(files) == {f"sdeverify/experiments/{NAME}.py", f"tests/test_{NAME}.py"}, files
    assert registry == [f'"{NAME}": "sdeverify.experiments.{NAME}",'], registry


def _tracked_files() -> list[str]:
    r = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout:
        pytest.skip(f"not a git checkout ({r.stderr.strip()[:200]}): nothing to copy")
    return [p for p in r.stdout.split("\0") if p and (ROOT / p).is_file()]


def _copy_kernel_cache(repo: Path) -> None:
    """Numba's on-disk kernels of this checkout (``__pycache__/*.nbi|*.nbc`` beside the
    sources, when a run has written them) copied beside the copy's sources: the sources were
    copied with their modification times, so Numba's stamps match and the copy loads the
    kernels instead of compiling them again (10+ s on a busy 2-core machine).  Only a saving:
    with no or a stale cache the kernels compile."""
    for f in (ROOT / "sdeverify").rglob("__pycache__/*.nb[ic]"):
        dst = repo / f.relative_to(ROOT)
        if dst.parent.parent.is_dir():
            dst.parent.mkdir(exist_ok=True)
            try:
                shutil.copy2(f, dst)
            except OSError:          # written or removed by a concurrent run: compile instead
                pass


def _host_site_packages() -> list[str]:
    paths = site.getsitepackages() + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(p for p in paths if Path(p).is_dir()))


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return r


def test_extension_walkthrough_in_a_fresh_editable_install(tmp_path):
    pytest.importorskip("flit_core", reason="the build backend (pyproject's build-system) is "
                        "needed for pip install --no-build-isolation (in the test extra: pip install -e '.[test]')")
    repo = tmp_path / "repo"
    for rel in _tracked_files():
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst)
    _copy_kernel_cache(repo)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "zz_host_site_packages.pth").write_text("\n".join(_host_site_packages()) + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
               NUMBA_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1",
               MPLBACKEND="Agg")
    r = _run([str(py), "-m", "pip", "install", "-q", "-e", ".", "--no-deps", "--no-build-isolation"],
             repo, env)
    assert r.returncode == 0, f"pip install -e of the copy failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    r = _run([str(py), "-c", "import sdeverify; print(sdeverify.__file__)"], tmp_path, env)
    assert r.returncode == 0 and Path(r.stdout.strip()).is_relative_to(repo), \
        f"sdeverify does not import from the editable copy: {r.stdout} {r.stderr[-1000:]}"

    # the extension, exactly as docs/extending.md shows it (after the install, as a user adds it)
    files, registry = files_and_registry(section_blocks((repo / "docs" / "extending.md").read_text(), SECTION))
    for rel, content in files.items():
        (repo / rel).write_text(content)
    add_to_registry(repo / "sdeverify" / "experiments" / "__init__.py", registry)

    sdv = str(venv / "bin" / "sdeverify")
    r = _run([sdv, "list"], tmp_path, env)
    assert r.returncode == 0 and NAME in r.stdout, f"`sdeverify list` misses {NAME}:\n{r.stdout}\n{r.stderr[-2000:]}"
    r = _run([sdv, "run", NAME, "--size", "smoke", "--quiet", "--out", str(tmp_path / "run")], tmp_path, env)
    assert r.returncode == 0 and f"{NAME}: PASS" in r.stdout, \
        f"`sdeverify run {NAME} --size smoke` failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert (tmp_path / "run" / f"{NAME}.json").is_file() and (tmp_path / "run" / f"{NAME}.png").is_file()
    r = _run([sdv, "check", "--only", NAME, "--smoke", "--quiet", "--jobs", "1", "--out",
              str(tmp_path / "check")], tmp_path, env)
    assert r.returncode == 0 and " 0 failed" in r.stdout, \
        f"`sdeverify check --only {NAME}` failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert (tmp_path / "check" / "report.html").is_file()

    # the section's own test file (a planted bug must make the verdict fail)
    r = _run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/test_{NAME}.py"], repo, env)
    assert r.returncode == 0 and "passed" in r.stdout, \
        f"the test file of docs/extending.md failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
