"""The README's Python examples run as written — each saved as a script and run in its own
Python process, as a user runs it (a Dask example without a ``__main__`` guard fails that way,
and an ``exec`` in the test process would not notice)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)

#: appended to each block: run its test_ functions, then sanity-check its `res`
FOOTER = '''

if __name__ == "__main__":                         # not in worker processes that import it
    import numpy as _np
    _tests = [_f for _n, _f in list(globals().items()) if _n.startswith("test_") and callable(_f)]
    for _t in _tests:                              # a property-test example: run it
        _t()
    if "res" in globals():
        assert not res.divergence, res.divergence
        if hasattr(res, "paths"):                  # a SimulationResult
            assert res.paths > 0 and _np.all(_np.isfinite(res.mean))
        else:                                      # a TrainResult
            assert res.replicas > 0 and _np.all(_np.isfinite(res.values))
    else:
        assert _tests, "a README example must define `res` or a test_ function"
    print("README example ran")
'''


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_as_a_script(index, tmp_path):
    script = tmp_path / f"readme_example_{index}.py"
    script.write_text(BLOCKS[index] + FOOTER)
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "README example ran" in r.stdout, \
        f"README python block {index} failed as a script:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
