"""The scaling model of benchmarks/dask_scaling.py on cases whose answer is known by hand:
checks side by side share the workers, a check's batches follow one another, the driver is
one resource."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
S = pytest.importorskip("dask_scaling")


def call(seconds: float) -> "S.Item":
    return S.Item(kind="call", compute_s=seconds)          # one task, never kept here


def test_side_by_side_shares_the_workers_and_keeps_each_checks_order():
    one = {"a": (0.0, [[call(10.0)]]), "b": (0.0, [[call(10.0)]])}
    assert S.project_side_by_side(one, 1, 0.0, 0.0)["wall_s"] == 20.0
    assert S.project_side_by_side(one, 2, 0.0, 0.0)["wall_s"] == 10.0
    # a: two batches of 5 s one after the other; b: one 10 s task — 10 s on 2 workers
    chain = {"a": (0.0, [[call(5.0)], [call(5.0)]]), "b": (0.0, [[call(10.0)]])}
    assert S.project_side_by_side(chain, 2, 0.0, 0.0)["wall_s"] == 10.0
    assert S.project_side_by_side(chain, 1, 0.0, 0.0)["wall_s"] == 20.0
    # a batch waits for its slowest task: 3 tasks of 4 s then 1 of 4 s on 2 workers
    wide = {"a": (0.0, [[call(4.0)] * 3, [call(4.0)]])}
    assert S.project_side_by_side(wide, 2, 0.0, 0.0)["wall_s"] == 12.0


def test_the_driver_is_one_resource_and_costs_are_added():
    two = {"a": (3.0, [[call(1.0)]]), "b": (3.0, [[call(1.0)]])}
    # serial driver time 3 + 3 before b's task can go out, then 1 s
    assert S.project_side_by_side(two, 8, 0.0, 0.0)["wall_s"] == 7.0
    r = S.project_side_by_side(two, 8, 0.5, 0.25, finish={"a": 2.0, "b": 2.0}, startup_s=1.0,
                               per_task_s=0.1)
    # the driver, one thing at a time: start 1, a's 3 (to 4), b's 3 (to 7); a's task goes
    # out at 4 (dispatch 0.25, runs 1: back at 5.25), received 7–7.1, latency, a's figure
    # 7.6–9.6; b's task out at 7, back at 8.25, received 9.6–9.7, latency, figure 10.2–12.2
    assert r["wall_s"] == pytest.approx(12.2)
    assert r["tasks"] == 2


def test_one_check_alone_matches_the_per_check_model():
    batches = [[call(3.0), call(2.0), call(2.0)], [call(1.0)]]
    for w in (1, 2, 3):
        alone = S.project_side_by_side({"a": (0.5, batches)}, w, 0.0, 0.0)["wall_s"]
        assert alone == pytest.approx(S.project(batches, 0.5, 0.0, 0.0, workers=(w,))[w]["wall_s"])


def test_a_recording_recomputed_with_the_schedulers_cost_measured_apart(tmp_path):
    """``from_json(..., scheduler_per_task_s=S)`` replaces the recording's dispatch cost: with
    one 1-s task per check on 8 workers and no latency, the scheduler hands the two tasks out
    one after the other (at S and at 2 S), so the job takes 2 S + 1."""
    import json
    rows = {n: {"driver_s": 0.0, "serial_s": 1.0, "recorded": [[{"kind": "call", "compute_s": 1.0}]],
                **{str(w): {"wall_s": 1.0} for w in (1, 2, 8, 32, 64)}} for n in ("a", "b")}
    path = tmp_path / "rec.json"
    path.write_text(json.dumps({"checks": rows, "overhead": {"latency_median_s": 0.0,
                                                             "burst_per_task_s": 0.0}}))
    flat = S.from_json(str(path))
    assert flat["whole_job"]["side_by_side"][8]["wall_s"] == pytest.approx(1.0)
    slow = S.from_json(str(path), scheduler_per_task_s=0.25)
    assert slow["overhead"]["burst_per_task_s"] == 0.25
    assert slow["overhead"]["burst_per_task_recorded_s"] == 0.0
    assert slow["whole_job"]["side_by_side"][8]["wall_s"] == pytest.approx(2 * 0.25 + 1.0)
