"""Smoke-size runs of the Sec 4 experiments: every verdict passes, results round-trip,
figures are written."""
import json

import numpy as np
import pytest

from sdeverify.experiments import base, get


@pytest.mark.parametrize("name", ["hb_equivalence", "descent_lemma", "variance_reduction",
                                  "weak_approximation"])
def test_experiment_smoke(name, tmp_path):
    mod = get(name)
    calls = []
    res = mod.run(size="smoke", seed=0, progress=lambda d, t: calls.append((d, t)))
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


def test_bad_size():
    with pytest.raises(ValueError, match="size"):
        get("descent_lemma").run(size="huge")
    with pytest.raises(ValueError, match="unknown experiment"):
        get("nope")
