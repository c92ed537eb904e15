"""The numba.cuda ResNet trainer (sdeverify/train/conv_cuda.py): under the CUDA simulator it
must agree with the NumPy reference trainer (CI has no GPU; the real-GPU check and timing are
benchmarks/gpu_conv_check.py); its kernels compile for sm_80 and sm_90 (NVVM + ptxas, no GPU)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdeverify.train.convnet import resnet

HERE = Path(__file__).parent


def test_conv_cuda_trainer_matches_reference_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(HERE.parent))
    r = subprocess.run([sys.executable, str(HERE / "conv_cuda_sim_check.py")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    # 7 quantities of the trainer, bad input, 3 of fit
    assert r.stdout.count(" ok") == 11, r.stdout


def test_conv_cuda_trainer_without_gpu_says_so():
    from numba import cuda

    from sdeverify.train.conv_cuda import ConvTrainer
    if cuda.is_available():
        pytest.skip("a GPU (or the simulator) is available here")
    m = resnet(8, width=0.25, classes=3, image_size=6)
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        ConvTrainer(m, np.zeros((4, 3, 6, 6)), np.zeros(4, dtype=int), 1, 1)


def _gpu_static():
    spec = importlib.util.spec_from_file_location(
        "gpu_static", HERE.parent / "benchmarks" / "gpu_static.py")
    gs = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_static", gs)
    spec.loader.exec_module(gs)
    return gs


def test_conv_kernels_compile_for_sm80_and_sm90_without_spills():
    """Every conv kernel (gather, im2col, col2im, BatchNorm, residual, pool, update; float32 and
    float64) and the GEMM variants the MLP trainer does not launch (big tile, float32)
    compile through NVVM and ptxas for sm_80 and sm_90 with the launch code's signatures: no
    spills, no stack frame, every launch fits (benchmarks/gpu_static.py's machinery)."""
    gs = _gpu_static()
    why = gs.unavailable()
    if why:
        pytest.skip(f"cannot compile for a GPU here: {why}")
    ks = gs.conv_kernels(("float32", "float64"), tiles=(), pointwise=True)
    ks += gs.conv_kernels(("float32",), tiles=("big",), pointwise=False)
    names = {k.name for k in ks}
    assert {"conv bn_forward", "conv bn_backward", "conv col2im", "conv gather"} <= names
    assert sum(k.name.startswith("gemm big") for k in ks) == 3
    rows = gs.table(ks, gs.ARCHS)
    assert gs.problems(rows) == []
    assert all(not r.error and r.stack == 0 for r in rows)
    assert {r.arch for r in rows} == set(gs.ARCHS)
