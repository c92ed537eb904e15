"""The README's Python examples run as written (documentation that cannot rot silently)."""
import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    ns: dict = {"__name__": f"readme_example_{index}"}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), ns)
    tests = [f for name, f in ns.items() if name.startswith("test_") and callable(f)]
    for test in tests:                             # a property-test example: run it
        test()
    if "res" not in ns:
        assert tests, "a README example must define `res` or a test_ function"
        return
    res = ns["res"]
    assert not res.divergence
    if hasattr(res, "paths"):                      # a SimulationResult
        assert res.paths > 0 and np.all(np.isfinite(res.mean))
    else:                                          # a TrainResult
        assert res.replicas > 0 and np.all(np.isfinite(res.values))
