"""The numba.cuda engine: under the CUDA simulator it must agree with the CPU engine (CI has
no GPU; real-GPU checks are benchmarks/gpu_check.py, run on a lent device)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sdeverify as sv

HERE = Path(__file__).parent


def test_cuda_engine_matches_the_reference_under_the_simulator():
    """The numba.cuda engine, run by the CUDA simulator, against the NumPy reference backend
    (bitwise the CPU engine: test_engine_contract.py, and the hb_equivalence check).  The
    reference, not the CPU engine, so that this subprocess compiles no CPU kernels."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(HERE.parent))
    r = subprocess.run([sys.executable, str(HERE / "cuda_sim_check.py")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    # 5 problem cases, the divergence report, paths beyond 2**32, the divergence bound
    assert r.stdout.count(" ok") == 8, r.stdout


def test_cuda_backend_without_gpu_says_so():
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU (or the simulator) is available here")
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        sv.simulate(sv.problems.Quadratic(np.eye(2)), [sv.SGD(0.1)], [0.0, 0.0], steps=2, paths=2,
                    sigma=1.0, backend="cuda")
