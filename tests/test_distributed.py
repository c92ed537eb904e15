"""Distributed runs on a real Dask ``LocalCluster`` (2 worker processes with nannies):
bitwise equality with local runs, saved points and resume, a killed worker, a failing point,
the CLI flags.  The workers run the d = 2 ``Quadratic`` with SGD/SGDM in float64 and default
observables, the kernel the rest of the suite (and the checks) already compile."""
import os
import signal
import threading
import time

import numba
import numpy as np
import pytest

pytest.importorskip("distributed")

import sdeverify as sv
from sdeverify import config
from sdeverify import distributed as D
from sdeverify.cli import main
from sdeverify.observables import UserFunctionError
from sdeverify.problems import NGOS, Quadratic
from sdeverify.result import SimulationResult
from sdeverify.train import MLP, fit, teacher_student

P = Quadratic(np.diag([0.5, 2.0]))
OPTS = [sv.SGD(0.05), sv.SGDM(0.05, 0.9)]
X0 = [1.0, -0.5]
SIM_ARRAYS = ("block_stats", "block_diff", "block_bad", "x_final", "m_final", "div_step",
              "mean", "sem", "count")


@pytest.fixture(scope="module")
def cluster():
    with D.Cluster(workers=2) as c:
        c.start()
        yield c


@pytest.fixture()
def client(cluster):
    return cluster.client


def _same_sim(a, b) -> None:
    for k in SIM_ARRAYS:
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert a.meta["fingerprint"] == b.meta["fingerprint"] and a.paths == b.paths


def test_simulate_on_workers_is_bitwise_local(client):
    kw = dict(steps=60, paths=5 * config.BLOCK + 17, sigma=1.0, seed=7)
    local = sv.simulate(P, OPTS, X0, **kw)
    far = D.simulate(P, OPTS, X0, executor=client, shard_paths=2 * config.BLOCK, **kw)
    _same_sim(far, local)
    assert D.plan_shards(kw["paths"], 1.0, 2, block=config.BLOCK, size=2 * config.BLOCK) == \
        [(0, 512), (512, 512), (1024, 273)]
    # path_offset, and sv.simulate(executor=...) with the default shard size
    off = sv.simulate(P, OPTS, X0, executor=client, **dict(kw, path_offset=config.BLOCK))
    _same_sim(off, sv.simulate(P, OPTS, X0, **dict(kw, path_offset=config.BLOCK)))
    # without final states: the same statistics, nothing per path but the divergence steps
    lean = D.simulate(P, OPTS, X0, executor=client, shard_paths=2 * config.BLOCK,
                      final_states=False, **kw)
    _same_sim(lean, sv.simulate(P, OPTS, X0, final_states=False, **kw))
    assert lean.x_final is None and lean.m_final is None
    assert np.array_equal(lean.block_stats, local.block_stats)
    assert D.simulate_point(P, OPTS, X0, final_states=False, **kw).key != \
        D.simulate_point(P, OPTS, X0, **kw).key
    with pytest.raises(ValueError, match="final_states must be True or False"):
        D.simulate(P, OPTS, X0, executor=client, final_states=1, **kw)


def test_fit_on_workers_is_bitwise_local(client):
    """Replica shards on the workers (the NumPy reference trainer: nothing to compile there
    on a cold cache; the CPU trainer's exact shard merge is tested in test_train)."""
    data = teacher_student(n=96, dim=5, classes=3, hidden=8, seed=3)
    kw = dict(batch_size=16, steps=24, seed=11, eval_every=8, replicas=5, backend="numpy",
              metrics=("train_loss", "test_acc"), lr_schedule=lambda n: np.linspace(1.0, 0.5, n))
    m = MLP([5, 8, 3])
    local = fit(m, data, OPTS, **kw)
    far = D.fit(m, data, OPTS, executor=client, shard_replicas=2, **kw)
    with D.use(client, shard_replicas=3):          # what the train checks do: data scattered once
        near = fit(m, data, OPTS, **kw)
    for res in (far, near):
        for k in ("values", "batch_loss", "div_step", "eval_steps"):
            assert np.array_equal(getattr(res, k), getattr(local, k)), k
        assert res.meta["fingerprint"] == local.meta["fingerprint"] and res.replicas == 5


def _sweep(etas, fail_after=None):
    """An experiment's sweep as the checks write it: plain sv.simulate calls."""
    out = []
    for i, eta in enumerate(etas):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("interrupted")
        out.append(sv.simulate(P, [sv.SGD(eta), sv.SGDM(eta, 0.9)], X0, steps=40, paths=600,
                               sigma=1.0, seed=1))
    return out


def test_points_saved_and_resumed(client, tmp_path):
    etas = [0.1, 0.05, 0.025, 0.0125]
    with pytest.raises(RuntimeError, match="interrupted"), \
            D.use(client, points_dir=tmp_path) as s:
        _sweep(etas, fail_after=3)
    assert s.computed == 3 and len(list(tmp_path.glob("simulate-*.json"))) == 3
    victim = sorted(tmp_path.glob("simulate-*.json"))[0]
    victim.unlink()                                    # a lost point
    with D.use(client, points_dir=tmp_path, resume=True) as s:
        resumed = _sweep(etas)
    assert (s.reused, s.computed) == (2, 2)
    for r, ref in zip(resumed, _sweep(etas)):          # the last call runs locally
        _same_sim(r, ref)
    with D.use(client, points_dir=tmp_path, resume=True) as s:
        _sweep(etas)
        sv.simulate(P, OPTS, X0, steps=40, paths=600, sigma=1.5, seed=1)   # a new point
    assert (s.reused, s.computed) == (4, 1)
    with D.use(client, points_dir=tmp_path, resume=False) as s:         # no --resume: recompute
        _sweep(etas[:1])
    assert (s.reused, s.computed) == (0, 1)


def test_point_key_covers_every_input():
    base = dict(problem=P, optimizers=OPTS, x0=X0, steps=40, paths=600, sigma=1.0, seed=1)
    key = D.simulate_point(**base).key
    assert D.simulate_point(**base).key == key
    variants = [dict(problem=Quadratic(np.diag([0.5, 2.0 + 1e-12]))),
                dict(problem=Quadratic(np.diag([0.5, 2.0]), noise_dist="rademacher")),
                dict(optimizers=[sv.SGD(0.05), sv.SGDM(0.05, 0.9000001)]),
                dict(optimizers=[sv.SGD(np.full(40, 0.05)), sv.SGDM(np.r_[np.full(39, 0.05), 0.04], 0.9)]),
                dict(x0=[1.0, -0.4]), dict(steps=41), dict(paths=601), dict(sigma=1.01),
                dict(seed=2), dict(record=[0, 40]), dict(observables=["loss"]),
                dict(dtype="float32"), dict(backend="numpy"), dict(path_offset=256),
                dict(store_states=True), dict(divergence_bound=1e6)]
    keys = {D.simulate_point(**dict(base, **v)).key for v in variants}
    assert key not in keys and len(keys) == len(variants)


@numba.njit
def _half(v):
    return 0.5 * v


@numba.njit
def _grad_via_helper(x, p, out):
    for i in range(x.shape[0]):
        out[i] = _half(p[0] * x[i])


def test_point_key_follows_helpers_and_source(monkeypatch):
    """An edit of a helper a problem function calls, or of sdeverify's own code, changes
    the key (a stale point is never reused)."""
    q = NGOS(dim=2, grad=_grad_via_helper, noise=_noise, loss=_loss, params=[1.0])
    kw = dict(optimizers=OPTS, x0=X0, steps=5, paths=10, sigma=1.0)
    key = D.simulate_point(q, **kw).key
    monkeypatch.setitem(_grad_via_helper.py_func.__globals__, "_half", numba.njit(lambda v: 0.25 * v))
    assert D.simulate_point(q, **kw).key != key
    monkeypatch.undo()
    assert D.simulate_point(q, **kw).key == key
    monkeypatch.setattr(D.keys, "source_digest", lambda: "edited")
    assert D.simulate_point(q, **kw).key != key


def test_worker_killed_mid_sweep_loses_nothing(client, tmp_path):
    calls = [dict(problem=P, optimizers=[sv.SGD(eta), sv.SGDM(eta, 0.9)], x0=X0, steps=2500,
                  paths=8 * config.BLOCK, sigma=1.0, seed=5, shard_paths=4 * config.BLOCK)
             for eta in (0.1, 0.08, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01)]
    address, victim = max(client.run(os.getpid).items(), key=lambda kv: kv[1])
    killed = {}

    def running_there() -> int:
        return client.run_on_scheduler(
            lambda dask_scheduler: len(dask_scheduler.workers[address].processing))

    def kill_after_first_point():
        while not list(tmp_path.glob("simulate-*.json")):
            time.sleep(0.005)
        # kill while the worker holds a task (right after a point it may be between tasks:
        # a kill then would test nothing); give up, and fail below, once every point is saved
        while (n := running_there()) == 0 and len(list(tmp_path.glob("simulate-*.json"))) < len(calls):
            time.sleep(0.005)
        killed["points_done"] = len(list(tmp_path.glob("simulate-*.json")))
        killed["running_there"] = n
        os.kill(victim, signal.SIGKILL)

    t = threading.Thread(target=kill_after_first_point, daemon=True)
    t.start()
    with D.use(client, points_dir=tmp_path) as s:
        out = D.sweep(calls, s, raise_errors=True)
    t.join(5)
    assert killed and killed["points_done"] < len(calls) and killed["running_there"] > 0
    assert victim not in client.run(os.getpid).values()        # it was killed, and replaced
    for c, r in zip(calls, out):
        c = {k: v for k, v in c.items() if k != "shard_paths"}
        _same_sim(r, sv.simulate(**c))


@numba.njit
def _grad_raising(x, p, out):
    if p[0] < 0.0:
        raise ValueError("negative curvature parameter")
    for i in range(x.shape[0]):
        out[i] = p[0] * x[i]


@numba.njit
def _noise(x, p, xi, out):
    for i in range(x.shape[0]):
        out[i] = xi[i]


@numba.njit
def _loss(x, p):
    return 0.5 * p[0] * np.sum(x * x)


def test_failing_point_is_reported_and_others_finish(client):
    """A user problem defined here (not importable on the workers: Numba pickles its
    functions by value) whose gradient raises for one parameter value."""
    bad = NGOS(dim=2, grad=_grad_raising, noise=_noise, loss=_loss, params=[-1.0], name="c=-1.0")
    calls = [dict(problem=p, optimizers=OPTS, x0=X0, steps=20, paths=300, sigma=1.0)
             for p in (P, bad, P)]
    out = D.sweep(calls, client)
    assert isinstance(out[1], D.PointError)
    assert "c=-1.0" in str(out[1]) and "negative curvature parameter" in str(out[1])
    for i in (0, 2):
        _same_sim(out[i], sv.simulate(**calls[i]))
    with pytest.raises(UserFunctionError, match="negative curvature parameter"):   # as locally
        sv.simulate(executor=client, **calls[1])


def test_unpicklable_spec_is_a_clear_error(client):
    q = Quadratic(np.eye(2))
    q.lock = threading.Lock()
    with pytest.raises(ValueError, match="cannot be sent to workers"):
        D.simulate(q, OPTS, X0, executor=client, steps=5, paths=10, sigma=1.0)


def test_cli_check_on_a_running_cluster_matches_local(client, tmp_path, capsys, monkeypatch):
    """The same numbers with every call on the cluster (points kept with --keep-points,
    deleted without once the check's result is saved), with the per-call fallback (every
    call of this check is too small for the cluster: run here, said so), and with the CLI's
    default at smoke size (the checks run as without a cluster, said so)."""
    from sdeverify import runner
    from sdeverify.experiments.base import ExperimentResult
    args = ["check", "--smoke", "--only", "descent_lemma", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    far = ["--scheduler", client.scheduler.address]
    with monkeypatch.context() as m:
        m.setattr(runner, "LOCAL_SIZES", ())                   # smoke calls to the cluster
        with monkeypatch.context() as m2:
            m2.setattr(D, "LOCAL_WORK", 0)                     # every call to the cluster
            assert main(args + ["--out", str(tmp_path / "kept"), "--keep-points"] + far) == 0
            assert main(args + ["--out", str(tmp_path / "dropped")] + far) == 0
        assert "running on the Dask scheduler at" in capsys.readouterr().err
        with pytest.warns(D.SmallWorkWarning, match="^descent_lemma: .*ran in this process"):
            assert main(args + ["--out", str(tmp_path / "here")] + far) == 0
    assert main(args + ["--out", str(tmp_path / "smoke")] + far) == 0
    assert "too small to pay for the cluster" in capsys.readouterr().err
    a = ExperimentResult.load(tmp_path / "local", "descent_lemma")
    for run in ("kept", "dropped", "here", "smoke"):
        b = ExperimentResult.load(tmp_path / run, "descent_lemma")
        assert sorted(a.data) == sorted(b.data)
        for k in a.data:
            assert np.array_equal(np.asarray(a.data[k]), np.asarray(b.data[k]), equal_nan=True), k
    kept = sorted((tmp_path / "kept" / "points" / "descent_lemma").glob("simulate-*.json"))
    assert kept
    for f in kept:                  # a check's points carry statistics, not final states
        point = SimulationResult.load(f.with_suffix(""))
        assert point.x_final is None and point.m_final is None and point.paths > 0
    assert not (tmp_path / "dropped" / "points").exists()
    assert not (tmp_path / "here" / "points").exists()
    assert not (tmp_path / "smoke" / "points").exists()


def test_cli_checks_side_by_side_on_a_cluster_match_one_at_a_time(client, tmp_path, capsys,
                                                                  monkeypatch):
    """``check --workers/--scheduler`` runs its checks side by side, one thread and one
    session each: every check's points are saved under its own folder (the same files as
    one check at a time, ``--jobs 1``: no call went through another check's session), the
    data are bitwise equal, and a check that raises in its thread is an ERROR row while the
    others finish."""
    from sdeverify import experiments, runner
    from sdeverify.experiments.base import ExperimentResult
    names = ["descent_lemma", "sgdm_descent_lemma", "coupled_trajectory"]
    args = ["check", "--smoke", "--only", ",".join(names), "--quiet", "--keep-points",
            "--scheduler", client.scheduler.address]
    monkeypatch.setattr(runner, "LOCAL_SIZES", ())                 # smoke calls to the cluster
    monkeypatch.setattr(D, "LOCAL_WORK", 0)                        # every call to the cluster
    assert main(args + ["--out", str(tmp_path / "apart"), "--jobs", "1"]) == 0
    assert "side by side" not in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "together")]) == 0
    assert "running 3 checks (smoke) side by side on the cluster, 3 at a time" in capsys.readouterr().err
    for name in names:
        files = [sorted(p.name for p in (tmp_path / run / "points" / name).iterdir())
                 for run in ("apart", "together")]
        assert files[0] and files[0] == files[1], name
        a = ExperimentResult.load(tmp_path / "apart", name)
        b = ExperimentResult.load(tmp_path / "together", name)
        assert sorted(a.data) == sorted(b.data)
        for k in a.data:
            assert np.array_equal(np.asarray(a.data[k]), np.asarray(b.data[k]), equal_nan=True), k
        # what each check sent is counted in its own session: the same either way, one task
        # per point file's shard at least, nothing kept here (LOCAL_WORK patched to 0)
        assert a.meta["cluster"] == b.meta["cluster"], name
        points = sum(1 for f in files[0] if f.endswith(".json"))
        assert a.meta["cluster"]["computed"] == points and a.meta["cluster"]["tasks"] >= points
        assert a.meta["cluster"]["local"] == 0
    from sdeverify.checkrun import read_summary
    summary = {e["name"]: e for e in read_summary(tmp_path / "together" / "summary.json")["checks"]}
    assert {n: summary[n]["cluster"] for n in names} == \
        {n: ExperimentResult.load(tmp_path / "together", n).meta["cluster"] for n in names}

    def boom(**kwargs):
        raise SystemExit("planted")          # not an Exception: the run must not hang
    monkeypatch.setattr(experiments.get("sgdm_descent_lemma"), "run", boom)
    assert main(args + ["--out", str(tmp_path / "broken")]) == 1
    assert "sgdm_descent_lemma (smoke): ERROR" in capsys.readouterr().err
    done = {e["name"]: e for e in read_summary(tmp_path / "broken" / "summary.json")["checks"]}
    assert done["sgdm_descent_lemma"]["error"] == "SystemExit: planted"
    assert done["descent_lemma"]["passed"] and done["coupled_trajectory"]["passed"]


def test_calls_too_small_for_the_cluster_run_here_and_are_reported(client, tmp_path):
    """local_below: a sweep of tiny calls runs in this process (no task, no point file),
    bitwise the local results, and a SmallWorkWarning says so; without it the calls go to
    the cluster and the warning says they were too small for it."""
    etas = [0.1, 0.05, 0.025]
    with pytest.warns(D.SmallWorkWarning, match="3 of 3 calls had less work.*ran in this process"), \
            D.use(client, points_dir=tmp_path, local_below=D.LOCAL_WORK) as s:
        here = _sweep(etas)
    assert (s.local, s.computed, s.tasks) == (3, 0, 0) and not list(tmp_path.iterdir())
    for r, ref in zip(here, _sweep(etas)):
        _same_sim(r, ref)
    point = D.simulate_point(P, OPTS, X0, steps=40, paths=600, sigma=1.0, record=[0, 20, 40],
                             observables=["loss"])     # steps, and the statistics recorded
    assert point.work == 600 * (40 * 2 * 2 + D.RECORD_WORK * 3 * 1 * 2)
    with pytest.warns(D.SmallWorkWarning, match="3 of 3 calls sent to the cluster"), \
            D.use(client) as s:
        _sweep(etas)
    assert (s.local, s.computed, s.small) == (0, 3, 3)
    import operator                   # small calls beyond the driver's fair share are sent
    calls = [D.Call(operator.add, (i, 1), work=0.6 * D.LOCAL_WORK) for i in range(3)]
    with pytest.warns(D.SmallWorkWarning, match="2 of 3 calls sent.*one worker's share"), \
            D.use(client, local_below=D.LOCAL_WORK) as s:
        assert D.run_many(calls, s) == [1, 2, 3]
    assert (s.local, s.small) == (1, 2)
    with pytest.raises(ValueError, match="local_below must be >= 0"), D.use(client, local_below=-1):
        pass


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers must be"),
    (["--scheduler", "not an address"], "--scheduler must be an address"),
    (["--scheduler", "tcp://127.0.0.1:9"], "--scheduler tcp://127.0.0.1:9: cannot connect"),
])
def test_cli_bad_cluster_flags_exit_2(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(D.clusters, "CONNECT_TIMEOUT", 1.0)
    assert main(["check", "--smoke", "--only", "descent_lemma", "--out", str(tmp_path)] + flags) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_missing_dask_says_how_to_install(monkeypatch, tmp_path, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'sdeverify\[dist\]'"):
        D.clusters.dask()
    assert main(["run", "descent_lemma", "--size", "smoke", "--out", str(tmp_path), "--workers", "2"]) == 2
    assert "pip install 'sdeverify[dist]'" in capsys.readouterr().err


def _threads_a_shard_uses() -> tuple[int, int]:
    from sdeverify.threads import n_threads
    with D.shards.running_shard():
        inside = n_threads()
    return inside, D.task_threads()


def test_a_one_thread_worker_runs_its_shards_on_one_thread(client):
    """LocalCluster workers are started with NUMBA_NUM_THREADS=1, but the worker process has
    imported Numba (pool size fixed) before its nanny's environment applies: a shard must
    still run on one thread (without the cap a '1-thread' worker used every core)."""
    got = client.run(_threads_a_shard_uses)
    assert got and all(v == (1, 1) for v in got.values()), got


def _data_equal(a, b) -> None:
    assert sorted(a.data) == sorted(b.data)
    for k in a.data:
        assert np.array_equal(np.asarray(a.data[k]), np.asarray(b.data[k]), equal_nan=True), k


def test_a_checks_exact_references_run_in_its_tasks(client, monkeypatch):
    """Per-point work (dispatch.Call) runs on the workers: weak_approximation's exact moment
    recursions are never computed in the driver under a session (instrumented: the driver's
    quadratic_moments raises), and the result is bitwise the local run's."""
    from sdeverify import theory
    from sdeverify.experiments import weak_approximation as W
    local = W.run(size="smoke", seed=0)

    def not_here(*a, **k):
        raise AssertionError("the exact recursion ran in the driver")
    monkeypatch.setattr(theory, "quadratic_moments", not_here)
    with D.use(client, local_below=D.LOCAL_WORK) as s:   # the CLI's rule: tiny simulations here
        far = W.run(size="smoke", seed=0)
    n_alpha = len(W.SIZES["smoke"]["alphas"])
    assert s.calls == n_alpha + 1 + len(W.LR_SHAPES) + 1        # exact rows, schedules, references
    _data_equal(far, local)
    assert [v.as_dict() for v in far.verdicts] == [v.as_dict() for v in local.verdicts]


def test_calls_run_as_tasks_small_ones_here_failures_named(client):
    """A Call of known small work runs in this process under local_below; one of unknown
    work is a task; a failing one is a PointError naming it; bad work is a ValueError."""
    import operator
    calls = [D.Call(operator.add, (1, 2), work=10), D.Call(operator.mul, (3, 4)),
             D.Call(operator.truediv, (1, 0), label="one over zero")]
    with pytest.warns(D.SmallWorkWarning, match=r"1 of \d calls had less work"), \
            D.use(client, local_below=D.LOCAL_WORK) as s:
        out = D.run_many(calls, s, raise_errors=False)
    assert out[:2] == [3, 12] and (s.local, s.calls, s.tasks) == (1, 1, 2)
    assert isinstance(out[2], D.PointError) and "one over zero" in str(out[2])
    assert "ZeroDivisionError" in str(out[2])
    with pytest.raises(ValueError, match="Call.work must be >= 0"):
        D.call_point(D.Call(operator.add, (1, 2), work=-1))


def test_smoke_checks_run_locally_with_a_note(client, tmp_path, monkeypatch):
    """At a size of LOCAL_SIZES, check --workers runs its checks as without a cluster (local
    processes side by side: its calls are too small for the cluster) and says so in one
    line; no session is entered (instrumented), and the results are the local run's."""
    from sdeverify import runner
    from sdeverify.check_jobs import default_jobs
    names = ["descent_lemma"]          # one check: one process (the default for one check)
    local, _ = runner.run_job(names, size="smoke", seed=0, out=tmp_path / "local", jobs=1,
                              log=lambda s: None)

    def no_session(*a, **k):
        raise AssertionError("a smoke check's calls went to the cluster")
    monkeypatch.setattr(runner, "use", no_session)
    lines = []
    rows, summary = runner.run_job(names, size="smoke", seed=0, out=tmp_path / "far", jobs=1,
                                   start_cluster=lambda: client, log=lines.append)
    notes = [line for line in lines if "too small to pay for the cluster" in line]
    assert summary["passed"] and len(notes) == 1, lines
    assert rows == local and summary["jobs"] == default_jobs(len(names))
    for n in names:
        _data_equal(runner.ExperimentResult.load(tmp_path / "far", n),
                    runner.ExperimentResult.load(tmp_path / "local", n))

    def never_started():
        raise AssertionError("the cluster was started for a smoke job")
    lines = []                          # the CLI says a cluster is wanted: it is not started
    rows, summary = runner.run_job(names, size="smoke", seed=0, out=tmp_path / "unstarted", jobs=1,
                                   start_cluster=never_started, cluster_wanted=True,
                                   log=lines.append)
    assert rows == local and sum("too small to pay for the cluster" in x for x in lines) == 1


def test_small_calls_kept_here_up_to_a_fair_share_of_their_sweep():
    """The driver keeps the small calls of a sweep (smallest first) only up to one worker's
    share of the sweep's other work (at least local_below): on a large cluster the rest go
    to the workers instead of queueing here."""
    works = [4.0] * 10 + [200.0, float("inf")]          # inf: a Call of unknown work
    assert D.kept_here(works, 10, workers=1) == set(range(10))       # 40 <= 200 / 1
    assert D.kept_here(works, 10, workers=100) == {0, 1}             # 8 <= max(10, 2)
    assert D.kept_here([4.0] * 3, 10, workers=8) == {0, 1}           # all small: up to 10
    assert D.kept_here(works, 0, workers=1) == set()                  # 0: no fallback


def _mean_loss(res) -> float:
    return float(res.series(0, "loss")[0][-1])


def _raises(res):
    raise KeyError("statistics failed")


def test_a_points_statistics_are_applied_as_it_comes_in(client):
    """``then`` in a sweep's keyword dict: its value replaces the point's result, the same
    on a cluster as here; an exception it raises propagates, as in the local loop."""
    from sdeverify.experiments.base import run_many
    calls = [dict(problem=P, optimizers=OPTS, x0=X0, steps=40, paths=600, sigma=1.0, seed=s,
                  then=_mean_loss) for s in (1, 2)]
    here = run_many(calls)
    with D.use(client) as s:
        far = run_many(calls)
    assert far == here and all(isinstance(v, float) for v in far) and s.computed == 2
    with pytest.raises(KeyError, match="statistics failed"), D.use(client):
        run_many([dict(calls[0], then=_raises), calls[1]])


def _data_equal_but_timings(a, b) -> None:
    """_data_equal over the arrays that are not wall-clock timings (files.TIMING: what a
    saved result keeps out of its hashed data)."""
    from sdeverify.files import TIMING
    keys = sorted(k for k in a.data if not TIMING.fullmatch(k))
    assert keys == sorted(k for k in b.data if not TIMING.fullmatch(k))
    for k in keys:
        x, y = np.asarray(a.data[k]), np.asarray(b.data[k])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"), k


def test_slow_sde_points_run_in_their_tasks(client, monkeypatch):
    """slow_sde's per-(problem, η) work — the simulation and the coupled slow-SDE reference,
    one task per path shard, then the point's statistics and bootstraps, one task per point —
    runs on the workers, and its general-formula part is one more task: under a session the
    driver's coupled_slow_sde, bootstrap_interval and solve_slow_sde raise (instrumented), and
    the result is bitwise the local run's."""
    from sdeverify.experiments import slow_sde as SS
    local = SS.run(size="smoke", seed=0)
    monkeypatch.setattr(SS, "SHARD_WORK", 2 ** 21)             # cut the small-η points

    def not_here(*a, **k):
        raise AssertionError("a slow_sde point's work ran in the driver")
    monkeypatch.setattr(SS, "coupled_slow_sde", not_here)
    monkeypatch.setattr(SS, "bootstrap_interval", not_here)
    monkeypatch.setattr(SS, "solve_slow_sde", not_here)     # the general-formula part: a task too
    with D.use(client) as s:
        far = SS.run(size="smoke", seed=0)
    cfg = dict(SS.run.defaults, **SS.SIZES["smoke"])
    n_shards = len(SS.PROBLEMS) * sum(len(SS.path_shards(cfg, i)) for i in range(len(cfg["etas"])))
    assert n_shards > len(SS.PROBLEMS) * len(cfg["etas"])          # some points are cut
    assert s.calls == n_shards + len(SS.PROBLEMS) * len(cfg["etas"]) + 1
    _data_equal_but_timings(far, local)
    assert [v.as_dict() for v in far.verdicts] == [v.as_dict() for v in local.verdicts]


@pytest.mark.filterwarnings("ignore::sdeverify.distributed.points.SmallWorkWarning")  # smoke size
@pytest.mark.parametrize("name, calls", [("slow_sde_alpha", 5), ("label_noise", 5),
                                         ("frozen_momentum", 5), ("hb_equivalence", 5),
                                         ("variance_reduction", 2)])
def test_a_checks_points_are_tasks_bitwise_local(client, name, calls):
    """slow_sde_alpha, label_noise, frozen_momentum, hb_equivalence and variance_reduction
    hand their per-point work (a point's simulation and statistics, the exact references; the
    stored states reduced to variances and path lengths where they were made) to the cluster
    as Calls of one sweep: the session counts them, and the result is bitwise the local run's."""
    import importlib
    mod = importlib.import_module(f"sdeverify.experiments.{name}")
    local = mod.run(size="smoke", seed=0)
    with D.use(client) as s:
        far = mod.run(size="smoke", seed=0)
    assert s.calls == calls
    _data_equal_but_timings(far, local)
    assert [v.as_dict() for v in far.verdicts] == [v.as_dict() for v in local.verdicts]


def test_fit_work_counts_training_flops_not_parameters():
    """A ``fit`` point's work: an MLP's per sample-step stays near its former n_params/64 (its
    training FLOPs ≈ 6 n_params; 5% below here: biases and the first layer's input gradient
    are not counted), a conv net's counts the reuse of its weights over the image
    (counted as an MLP's before, a full-size ResNet fit looked like a 0.1 s call and stayed in
    the driver of a distributed run)."""
    from sdeverify.train import conv_teacher, resnet
    kw = dict(batch_size=16, steps=10, replicas=4, seed=0, backend="numpy")
    mlp = MLP([5, 64, 64, 3])
    p = D.fit_point(mlp, teacher_student(n=96, dim=5, classes=3, hidden=8, seed=3), OPTS, **kw)
    per = p.work / (4 * 10 * 16 * len(OPTS))
    assert per == pytest.approx(mlp.n_params / 64, rel=0.1)
    net = resnet(8, width=0.25, classes=4, in_channels=3, image_size=8)
    q = D.fit_point(net, conv_teacher(n=64, size=8, channels=3, classes=4, seed=1), OPTS, **kw)
    per = q.work / (4 * 10 * 16 * len(OPTS))
    assert per == pytest.approx(net.flops_per_sample() / 384)
    assert per > 5 * net.n_params / 64


@pytest.mark.filterwarnings("ignore::sdeverify.distributed.points.SmallWorkWarning")  # smoke size
@pytest.mark.parametrize("name, calls, fits", [("train_batch_size", 2 * 2 * 2 + 1, 2 * 2 + 3),
                                               ("train_svag", 2 + 1 + 1, 2 * 2 + 2)])
def test_sec6_tunings_and_fits_are_tasks_bitwise_local(client, monkeypatch, name, calls, fits):
    """The trained-network checks hand out their work in two sweeps of tasks: every lr tuning
    (each (budget, batch size, optimizer)) and the method verdicts, then every fit at the
    tuned lrs with the controls, the sharpness run and the noise premise; nothing trains in
    the driver (instrumented: its tune_lr, fit and method verdicts raise), and the result is
    bitwise the local run's."""
    import importlib
    from sdeverify.experiments import train_common as tc, train_method
    mod = importlib.import_module(f"sdeverify.experiments.{name}")
    local = mod.run(size="smoke", seed=0)

    def not_here(*a, **k):
        raise AssertionError("a Sec 6 check trained in the driver")
    for target, attr in ((tc, "tune_lr"), (tc, "fit"), (train_method, "gradient_error")):
        monkeypatch.setattr(target, attr, not_here)
    with D.use(client) as s:
        far = mod.run(size="smoke", seed=0)
    assert (s.calls, s.computed) == (calls, fits)
    _data_equal_but_timings(far, local)
    assert [v.as_dict() for v in far.verdicts] == [v.as_dict() for v in local.verdicts]
