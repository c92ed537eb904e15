"""The numba.cuda engine: under the CUDA simulator it must agree with the CPU engine (CI has
no GPU; real-GPU checks are benchmarks/gpu_check.py, run on a lent device), and the kernels of
the problems that call vmath, math.sqrt or a problem's own helpers compile for a real GPU
(NVVM + ptxas, with the ``gpu-build`` extra; skipped with the reason without it)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sdeverify as sv
from sdeverify import vmath

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("gpu_static", HERE.parent / "benchmarks" / "gpu_static.py")
gs = sys.modules["gpu_static"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gs)
WHY = gs.unavailable()
needs_wheels = pytest.mark.skipif(WHY is not None, reason=f"cannot compile for a GPU here: {WHY}")


def test_cuda_engine_matches_the_reference_under_the_simulator():
    """The numba.cuda engine, run by the CUDA simulator, against the NumPy reference backend
    (bitwise the CPU engine: test_engine_contract.py, and the hb_equivalence check).  The
    reference, not the CPU engine, so that this subprocess compiles no CPU kernels."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(HERE.parent))
    r = subprocess.run([sys.executable, str(HERE / "cuda_sim_check.py")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    # 8 problem cases (Valley, DiagonalNet and the README's quartic among them), the divergence
    # report, paths beyond 2**32, the divergence bound
    assert r.stdout.count(" ok") == 11, r.stdout


def test_cuda_backend_without_gpu_says_so():
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU (or the simulator) is available here")
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        sv.simulate(sv.problems.Quadratic(np.eye(2)), [sv.SGD(0.1)], [0.0, 0.0], steps=2, paths=2,
                    sigma=1.0, backend="cuda")


@needs_wheels
def test_vmath_compiles_for_a_gpu():
    """Every vmath function, called from a CUDA kernel, compiles for sm_90 without spills
    (numba-cuda lowers no np.floor, np.copysign or np.abs and sees no numba.extending
    overloads: the building blocks avoid them)."""
    from numba import types as T

    def kernel(x, out):
        for i in range(x.shape[0]):
            out[i] = (vmath.sin(x[i]) + vmath.cos(x[i]) + vmath.exp(x[i]) + vmath.log(x[i])
                      + vmath.log1p(x[i]) + vmath.expm1(x[i]) + vmath.tanh(x[i]))

    arr = T.Array(T.float64, 1, "C")
    row = gs.measure(gs.Kernel("vmath", "float64", kernel, (arr, arr), 128), "sm_90")
    assert not row.error, row.error
    assert row.spill_stores == 0 and row.spill_loads == 0


@needs_wheels
def test_valley_and_diagonal_net_kernels_compile_for_a_gpu():
    """The engine's kernels of Valley and DiagonalNet (np.sqrt on a scalar, which numba-cuda
    0.30 does not lower, replaced by math.sqrt) compile for sm_80; Valley's without spills.
    (CosineWell's and the README quartic's are in tests/test_gpu_static.py.)"""
    rows = {k.name.split(" (")[0]: gs.measure(k, "sm_80") for k in gs.engine_kernels()
            if k.name.startswith(("engine valley", "engine diagonal_net"))}
    assert set(rows) == {"engine valley", "engine diagonal_net"}
    assert all(not r.error for r in rows.values()), [r.error for r in rows.values()]
    assert gs.problems([rows["engine valley"]]) == []
