"""benchmarks/oracle_floor.py's plumbing (not its timings): the bound it reports follows from
its own measurements, with the oracle counted once per optimizer and call."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
F = pytest.importorskip("oracle_floor")


@pytest.mark.parametrize("svag", [False, True])
def test_the_floor_counts_each_optimizers_calls(svag):
    from sdeverify.problems import SVAG, CosineWell
    P = CosineWell(4)                                  # d ≥ 4: its lanes oracle
    P = SVAG(P, 4.0) if svag else P
    r = F.floor_of(P, np.ones(4), reps=20, repeats=1, numpy_steps=2)
    calls = 2 if svag else 1
    assert r["calls"] == calls and r["lanes_oracle"] and r["d"] == 4
    assert r["pair_oracle"] == svag                    # SVAG's two calls timed as one pair call
    assert r["oracle_ns"] > 0 and r["rng_ns"] > 0 and r["numpy_ns"] > 0
    assert r["oracle_share_ns"] == pytest.approx(F.N_OPT * calls * r["oracle_ns"])
    t_run = r["rng_ns"] + r["oracle_share_ns"]
    assert r["f_max"] == pytest.approx(r["rng_ns"] / t_run)
    assert r["max_vs_numpy"] == pytest.approx(r["numpy_ns"] / t_run)


def test_a_problem_without_a_lanes_oracle_runs_its_per_path_oracle():
    from sdeverify.problems import Sphere
    r = F.floor_of(Sphere(3), np.array([1.0, 0.0, 0.0]), reps=20, repeats=1)
    assert not r["lanes_oracle"] and r["calls"] == 1 and 0 < r["f_max"] < 1
    assert "numpy_ns" not in r
