"""Analysis frames keep what matters: hyperparameter columns, one name for the observable
column of simulate and fit, paired frames with the paired sem and Student-t intervals, a
check's data labelled by its parameters, the README's column names; and identical runs
write identical data files (timings kept apart)."""
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

import sdeverify as sv
from sdeverify.checkrun import load_check
from sdeverify.experiments.base import ExperimentResult
from sdeverify.train.result import TrainResult

pd = pytest.importorskip("pandas")

README = Path(__file__).resolve().parents[1] / "README.md"
HYPER = ["scheme", "lr", "beta", "momentum", "dampening"]


@pytest.fixture(scope="module")
def sim():
    P = sv.problems.Quadratic(np.diag([1.0, 2.0]))
    return sv.simulate(P, [sv.SGD(0.1), sv.SGD(0.05), sv.SGDM(0.1, 0.5, name="SGDM b=.5"),
                           sv.HeavyBall(0.1, 0.5, 0.1)],
                       [1.0, 1.0], steps=20, paths=1024, sigma=0.5, seed=3, record=[0, 10, 20],
                       observables=["loss", "sqnorm"])


def _train_result(R=4):
    g = np.random.default_rng(0)
    base = g.standard_normal((1, 3, R, 2))
    vals = np.concatenate([base, base + 0.1 + 0.05 * g.standard_normal((1, 3, R, 2))])
    meta = {"optimizers": [repr(sv.SGD(0.1)), repr(sv.SGDM(0.2, 0.9))], "batch_size": 32,
            "svag": 1, "data": "digits", "model": {"kind": "mlp", "widths": [8]}, "seed": 5}
    return TrainResult(("SGD", "SGDM"), ("test_loss", "test_acc"), np.array([0, 10, 20]), vals,
                       np.zeros((2, R, 20)), np.full((2, R), -1), meta=meta)


def test_simulation_frame_has_the_hyperparameters(sim):
    df = sim.to_dataframe()
    assert list(df.columns[:6]) == ["optimizer", "step", "observable", "mean", "sem", "count"]
    last = df[(df.step == 20) & (df.observable == "loss")].set_index("optimizer")
    assert last.loc["SGD", "lr"] == 0.1 and last.loc["SGD#2", "lr"] == 0.05   # two SGDs, told apart
    assert last.loc["SGDM b=.5", "beta"] == 0.5 and np.isnan(last.loc["SGD", "beta"])
    assert last.loc["HeavyBall", "momentum"] == 0.5 and last.loc["HeavyBall", "dampening"] == 0.1
    assert list(last["scheme"]) == ["SGD", "SGD", "SGDM", "HeavyBall"]
    assert (last["sigma"] == 0.5).all() and (last["svag_ell"] == 1.0).all()
    assert (last["problem"] == "quadratic").all() and (last["problem_type"] == "Quadratic").all()
    assert (last["dim"] == 2).all() and (last["seed"] == 3).all() and (last["paths"] == 1024).all()
    # another Hessian, SVAG on, a per-step schedule: the columns say so
    P2 = sv.problems.SVAG(sv.problems.Quadratic(np.diag([1.0, 3.0])), 2.0)
    other = sv.simulate(P2, sv.SGD(np.linspace(0.1, 0.2, 20)), [1.0, 1.0], steps=20, paths=256,
                        sigma=0.5, record=[20]).to_dataframe()
    assert other["problem_params"].iloc[0] != df["problem_params"].iloc[0]
    from sdeverify.testing import replay                 # the problem itself, replayable
    assert repr(replay(other["problem_spec"].iloc[0])) == repr(P2)
    np.testing.assert_array_equal(replay(df["problem_spec"].iloc[0]).hessian, np.diag([1.0, 2.0]))
    assert other["svag_ell"].iloc[0] == 2.0
    assert other["lr"].iloc[0] == tuple(np.linspace(0.1, 0.2, 20).tolist())


def test_train_frame_uses_the_same_observable_column_and_has_hyperparameters():
    res = _train_result()
    df = res.to_dataframe()
    assert "metric" not in df.columns
    assert list(df.columns[:6]) == ["optimizer", "step", "observable", "mean", "sem", "count"]
    row = df[(df.optimizer == "SGDM") & (df.step == 20) & (df.observable == "test_acc")]
    assert row["lr"].item() == 0.2 and row["beta"].item() == 0.9 and row["batch_size"].item() == 32
    assert row["svag_ell"].item() == 1 and row["data"].item() == "digits" and row["replicas"].item() == 4
    assert '"widths": [8]' in row["model"].item()
    per = res.to_dataframe(per_replica=True)
    assert "observable" in per.columns and "metric" not in per.columns and "lr" in per.columns
    # simulate and fit frames stack into one table
    both = pd.concat([df, sv.simulate(sv.problems.Quadratic(np.eye(1)), sv.SGD(0.1), [1.0],
                                      steps=2, paths=256, sigma=1.0).to_dataframe()])
    assert set(both["observable"]) == {"test_loss", "test_acc", "loss", "sqnorm"}


def test_simulation_paired_frame_is_the_paired_difference(sim):
    pf = sim.paired_frame()
    assert set(pf["baseline"]) == {"SGD"} and "SGD" not in set(pf["optimizer"])
    assert len(pf) == 3 * 3 * 2
    for name in ("SGD#2", "SGDM b=.5"):
        rows = pf[(pf.optimizer == name) & (pf.observable == "loss")]
        d, s = sim.paired(name, "loss")
        np.testing.assert_array_equal(rows["difference"], d)
        np.testing.assert_array_equal(rows["sem"], s)
        assert (rows["count"] == 1024).all()
        q = st.t.ppf(0.975, 1023)
        np.testing.assert_allclose(rows["high"] - rows["difference"], q * s, rtol=1e-12)
    # the point of pairing: the unpaired sem (from the two means' sems) is far larger
    df = sim.to_dataframe().set_index(["optimizer", "step", "observable"])
    unpaired = np.hypot(df.loc[("SGD#2", 20, "loss"), "sem"], df.loc[("SGD", 20, "loss"), "sem"])
    paired = pf[(pf.optimizer == "SGD#2") & (pf.step == 20) & (pf.observable == "loss")]["sem"].item()
    assert paired < unpaired / 1.5                   # 1.8x here
    assert pf[pf.optimizer == "SGDM b=.5"]["beta"].eq(0.5).all()
    assert sim.paired_frame(level=0.5)["level"].eq(0.5).all()
    with pytest.raises(ValueError, match="level"):
        sim.paired_frame(level=1.5)


def test_train_paired_frame_uses_student_t_over_replicas():
    res = _train_result(R=4)
    pf = res.paired_frame()
    rows = pf[(pf.optimizer == "SGDM") & (pf.observable == "test_acc")]
    d, s = res.paired("SGDM", "test_acc", "SGD")
    np.testing.assert_array_equal(rows["difference"], d)
    np.testing.assert_array_equal(rows["sem"], s)
    np.testing.assert_allclose(rows["high"] - rows["difference"], st.t.ppf(0.975, 3) * s)
    assert (rows["count"] == 4).all() and (rows["lr"] == 0.2).all()
    back = res.paired_frame(baseline="SGDM")
    assert set(back["optimizer"]) == {"SGD"}
    np.testing.assert_allclose(back[back.observable == "test_acc"]["difference"], -d)


def _check_folder(tmp_path):
    etas, times = np.array([0.04, 0.02, 0.01]), np.linspace(0.0, 1.0, 5)
    g = np.random.default_rng(0)
    data = {"etas": etas, "times": times, "S_mean": g.random((2, 3, 5)),
            "decrease": g.random((2, 3, 2)), "pair": g.random((4, 6)), "off0": np.float64(1.0)}
    params = {"etas": etas.tolist(), "optimizers": ["SGD", "SGDM"],
              "bracket": [0.9, 1.1, 1.2, 1.3], "x0": [1.0, 2.0, 3.0, 4.0], "paths": 10}
    ExperimentResult("demo", params, data, (), {"seed": 0, "size": "smoke"}).save(tmp_path)
    return load_check(tmp_path)


def test_check_to_xarray_has_real_coordinates(tmp_path):
    pytest.importorskip("xarray")
    run = _check_folder(tmp_path)
    ds = run.to_xarray("demo")
    assert ds["S_mean"].dims == ("optimizer", "eta", "time")
    assert list(ds["optimizer"].values) == ["SGD", "SGDM"]
    np.testing.assert_array_equal(ds["eta"].values, [0.04, 0.02, 0.01])
    np.testing.assert_array_equal(ds["S_mean"].sel(optimizer="SGDM", eta=0.02).values,
                                  run.results["demo"].data["S_mean"][1, 1])
    # a length two lists share (bracket, x0): axes of it stay unnamed, never guessed
    assert ds["pair"].dims == ("pair_dim0", "pair_dim1")
    assert ds["decrease"].dims == ("optimizer", "eta", "decrease_dim2")
    assert ds["etas"].dims == ("eta",) and ds["off0"].dims == ()
    for k, v in run.results["demo"].data.items():                     # every array, by its name
        np.testing.assert_array_equal(ds[k].values, v)
    given = run.to_xarray("demo", dims={"decrease": ("optimizer", "eta", "bound")})
    assert given["decrease"].dims == ("optimizer", "eta", "bound")
    with pytest.raises(ValueError, match="3 dimensions"):
        run.to_xarray("demo", dims={"decrease": ("a", "b")})


def test_readme_names_the_verdict_frame_columns(tmp_path):
    """The README lists the columns of run.to_dataframe(); they must be the frame's."""
    text = " ".join(README.read_text().split())
    m = re.search(r"`run\.to_dataframe\(\)` \(one row per verdict: ([^)]*)\)", text)
    assert m, "README no longer lists run.to_dataframe()'s columns"
    listed = [c.strip(" `") for c in m.group(1).split(",")]
    assert listed == list(_check_folder(tmp_path).to_dataframe().columns)


def test_identical_runs_write_identical_data_files(tmp_path):
    """Two identical runs of a check, saved as `sdeverify run` saves them: byte-identical
    .npz under the same name (label_noise stores per-eta wall times with its data: they go
    into the JSON's timings, and read back with the data).  (`sdeverify run` itself adds
    seconds of plotting per run; it saves through the same ExperimentResult.save.)"""
    from sdeverify.experiments import label_noise
    names = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        label_noise.run(size="smoke", seed=0).save(out)
        names.append(sorted(f.name for f in out.glob("*.npz")))
    assert names[0] == names[1] and len(names[0]) == 1
    a, b = (tmp_path / f"run{i}" / names[0][0] for i in range(2))
    assert a.read_bytes() == b.read_bytes()
    res = load_check(tmp_path / "run0").results["label_noise"]
    assert res.data["wall"].shape == res.data["etas"].shape and np.all(res.data["wall"] > 0)


def test_sde_limit_keeps_its_timings_out_of_the_hashed_data():
    """sde_limit times its two halves: the arrays are named as timings (``files.TIMING``), so
    two identical runs have identical data (they were ``*.seconds``, hashed with the data:
    found by comparing a whole job on 1 and 2 Dask workers, benchmarks/job_scaling.py)."""
    from sdeverify.experiments import sde_limit
    from sdeverify.files import TIMING
    a, b = (sde_limit.run(size="smoke", seed=0).data for _ in range(2))
    timings = sorted(k for k in a if TIMING.fullmatch(k))
    assert timings == ["cosine_well.wall", "quadratic.wall"]
    for k in a:
        if not TIMING.fullmatch(k):
            x, y = np.asarray(a[k]), np.asarray(b[k])
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), k
