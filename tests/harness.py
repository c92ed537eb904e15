"""Shared test harness for experiments: run at smoke size, every verdict passes, progress is
reported, results round-trip through save/load, the figure is drawn from the saved data."""
import json

from sdeverify.experiments import base, get


def check_experiment_smoke(name, tmp_path, **kw):
    mod = get(name)
    calls = []
    res = mod.run(size="smoke", seed=0, progress=lambda d, t: calls.append((d, t)), **kw)
    failed = [v for v in res.verdicts if not v.passed]
    assert not failed, failed
    assert calls and calls[-1][0] == calls[-1][1]
    res.save(tmp_path)
    back = base.ExperimentResult.load(tmp_path, name)
    assert back.verdicts == res.verdicts and set(back.data) == set(res.data)
    png = mod.plot(back, tmp_path / f"{name}.png")
    assert png.stat().st_size > 10_000
    doc = json.loads((tmp_path / f"{name}.json").read_text())
    assert doc["meta"]["seed"] == 0 and "numba" in doc["meta"]["versions"]
    return res
