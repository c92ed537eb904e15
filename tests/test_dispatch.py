"""Data flows down: ``simulate``/``fit`` hand their call to the executor the caller gave them
(``executor=``, or a ``distributed.use`` session held by :mod:`sdeverify.dispatch`) through the
runner the distributed layer registered — every argument of the call, so that a distributed run
is the run that was asked for.  No Dask needed: the runners are replaced by recorders."""
import inspect

import numpy as np
import pytest

import sdeverify as sv
from sdeverify import dispatch
from sdeverify.problems import Quadratic
from sdeverify.train import MLP, teacher_student, training


class Marker:
    """Stands for an executor: never used, only handed on."""


def _recorder(calls: list):
    def run(*args, executor, **kwargs):
        calls.append((args, kwargs, executor))
        return "ran elsewhere"
    return run


def test_simulate_hands_every_argument_to_the_executor(monkeypatch):
    calls: list = []
    monkeypatch.setitem(dispatch._RUNNERS, "simulate", _recorder(calls))
    params = inspect.signature(sv.simulate).parameters
    given = {"steps": 7, "paths": 300, "sigma": 0.5, "seed": 11, "record": [0, 7],
             "observables": ["loss"], "backend": "numpy", "store_states": True,
             "path_offset": 256, "on_divergence": "ignore", "dtype": "float64",
             "divergence_bound": 5.0, "final_states": False}
    # every keyword of simulate is given a value of its own here (a new one must be added;
    # progress is a bar on this machine, not sent)
    assert set(given) == set(params) - {"problem", "optimizers", "x0", "executor", "progress"}
    p, opts, x0, ex = Quadratic(np.eye(2)), [sv.SGD(0.1)], [1.0, 2.0], Marker()
    assert sv.simulate(p, opts, x0, executor=ex, **given) == "ran elsewhere"
    (args, kwargs, executor), = calls
    assert args == (p, opts, x0) and executor is ex and kwargs == given


def test_fit_hands_every_argument_to_the_executor(monkeypatch):
    calls: list = []
    monkeypatch.setitem(dispatch._RUNNERS, "fit", _recorder(calls))
    params = inspect.signature(training.fit).parameters
    local_only = set(inspect.signature(training._state_args).parameters)   # refused with executor
    sent = set(params) - {"model", "data", "optimizers", "executor", "progress"} - local_only
    model, data, opts, ex = MLP([4, 3]), teacher_student(n=64, dim=4, classes=3), [sv.SGD(0.1)], Marker()
    given = {k: params[k].default for k in sent if params[k].default is not inspect.Parameter.empty}
    given.update(batch_size=8, steps=3, replicas=2, seed=5)
    assert training.fit(model, data, opts, executor=ex, **given) == "ran elsewhere"
    (args, kwargs, executor), = calls
    assert args == (model, data, opts) and executor is ex
    assert set(kwargs) == sent, f"not handed on: {sorted(sent - set(kwargs))}"
    assert all(kwargs[k] is given[k] or kwargs[k] == given[k] for k in given)


def test_a_session_is_seen_by_every_call_and_never_inside_a_shard():
    session = Marker()
    assert dispatch.active() is None
    with dispatch.entered(session):
        assert dispatch.active() is session
        with dispatch.in_task():
            assert dispatch.active() is None      # a shard never re-dispatches itself
        assert dispatch.active() is session
    assert dispatch.active() is None


def test_an_unregistered_kind_says_what_is_missing(monkeypatch):
    monkeypatch.delitem(dispatch._RUNNERS, "simulate")
    with pytest.raises(ValueError, match="sdeverify.distributed"):
        dispatch.run("simulate", Marker())


def test_a_threads_own_session_is_seen_by_it_alone():
    """``entered(s, this_thread=True)``: checks run side by side in threads, each in its own
    session — a thread sees its own (over a module-wide one), the others never see it."""
    import threading
    shared, seen = Marker(), {}
    barrier = threading.Barrier(3, timeout=20)

    def check(k):
        own = Marker()
        with dispatch.entered(own, this_thread=True):
            barrier.wait()                    # all three inside their sessions at once
            seen[k] = dispatch.active() is own
            with dispatch.in_task():
                seen[k] &= dispatch.active() is None
            barrier.wait()
        seen[k] &= dispatch.active() is shared        # back to the module-wide one

    with dispatch.entered(shared):
        threads = [threading.Thread(target=check, args=(k,), daemon=True) for k in range(2)]
        for t in threads:
            t.start()
        barrier.wait()
        main_saw = dispatch.active()                  # not the threads' sessions
        barrier.wait()
        for t in threads:
            t.join()
    assert main_saw is shared
    assert seen == {0: True, 1: True} and dispatch.active() is None
