"""Cold start: what a first run pays for compiling, measured from an empty cache.

Each repeat starts a fresh process with ``NUMBA_CACHE_DIR`` set to a new empty folder (so
every kernel compiles, as on a fresh clone, without touching this checkout's cache):

* ``kernels``: the first engine kernel of a process (it also compiles the generator and
  the shared observable fold) and then two more (a diagonal and a dense quadratic, d = 3):
  seconds per kernel, compile plus a 10-step run of 256 paths;
* ``nine``: ``sdeverify check --quick --only <NINE>`` (the nine simulation checks),
  wall-clock seconds of the command and the CPU-seconds of its processes.

Medians over ``--repeats`` and every value are printed; ``--json`` writes them.  Compare two
versions by running this script from each checkout, interleaved, on a quiet machine: the
2-vCPU VM this project uses varies by ±10% from run to run.

    python benchmarks/cold_start.py --repeats 3 [--only kernels|nine] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NINE = ("hb_equivalence,descent_lemma,variance_reduction,weak_approximation,sde_limit,slow_sde,"
        "label_noise,svag,batch_size")
ROOT = Path(__file__).resolve().parent.parent

KERNELS = r"""
import json, time, numpy as np, sdeverify as sv
from sdeverify.problems import CosineWell, Quadratic
def go(P):
    t = time.perf_counter()
    sv.simulate(P, [sv.SGD(0.05), sv.SGDM(0.05, beta=0.9)], x0=np.ones(P.dim), steps=10,
                paths=256, sigma=1.0, seed=0)
    return time.perf_counter() - t
print(json.dumps({"first (CosineWell(3))": go(CosineWell(3)),
                  "next (diagonal Quadratic, d=3)": go(Quadratic(np.diag([1.0, 2.0, 3.0]), noise_cov=np.eye(3))),
                  "next (dense Quadratic, d=3)": go(Quadratic(np.array([[2, .5, 0], [.5, 1, 0], [0, 0, 1.0]])))}))
"""


def _env(cache: str) -> dict:
    """This checkout's package (the processes also run in ROOT: ``-c`` and ``-m`` put the
    working directory first on sys.path) with an empty Numba cache."""
    return dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))


def kernels_once() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run([sys.executable, "-c", KERNELS], env=_env(cache), cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def nine_once() -> dict:
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "sdeverify.cli", "check", "--quick", "--only", NINE,
                            "--out", out, "--quiet"], env=_env(cache), cwd=ROOT, capture_output=True,
                           text=True)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"the nine checks failed (exit {r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"wall s": wall, "CPU s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("kernels", "nine"))
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    runs = {"kernels": kernels_once, "nine": nine_once}
    report = {}
    for name, fn in runs.items():
        if a.only and name != a.only:
            continue
        samples = [fn() for _ in range(a.repeats)]
        report[name] = {k: {"median": statistics.median(s[k] for s in samples), "all": [s[k] for s in samples]}
                        for k in samples[0]}
        for k, v in report[name].items():
            print(f"{name:8s} {k:34s} median {v['median']:7.2f}   all " + " ".join(f"{x:.2f}" for x in v["all"]))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
