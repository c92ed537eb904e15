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
    # 7 quantities of the trainer, its launches per step, 3 with bn_split, bad input, 3 of fit
    assert r.stdout.count(" ok") == 15, r.stdout


def test_launches_per_step_are_pinned():
    """Kernel launches of one training step (``launches_per_step``; the simulator check above
    counts the trainer's real launches against it): ResNet-20 at batch 512 takes 179 for 1
    and for 16 models, 160 on a GPU of 8 SMs where no weight gradient is split (no
    ``sum_splits``) — 216 and 501 before BatchNorm absorbed the ReLU, residual and
    shortcut-adjoint kernels and split-K went to one launch for all models; the simulator's
    tiny ResNet-8 with an SVAG step (two slots) takes 172.  A new launch in the step changes
    these numbers."""
    from sdeverify.train import conv_cuda as cc
    r20 = resnet(20, classes=10, image_size=32)
    assert cc.launches_per_step(r20, 1, 512) == 179
    assert cc.launches_per_step(r20, 16, 512) == 179
    assert cc.launches_per_step(r20, 16, 512, n_sm=8) == 160          # no split needed
    # BatchNorm chunked (bn_split): one more launch per pass of each chunked unit
    assert cc.launches_per_step(r20, 1, 512, bn_split=True) == 179 + 2 * 19
    assert cc.launches_per_step(r20, 16, 512, bn_split=True) == 179 + 2 * 7
    assert [cc.bn_chunks(c, 1, 512 * h * h, 132, 512) for c, h in ((16, 32), (64, 8))] == [32, 8]
    r8 = resnet(8, width=0.25, shortcut="B", classes=3, image_size=6)
    assert cc.launches_per_step(r8, 2, 4, cc.CONV_SIM_TILES, cc.SIM_BIG_MIN,
                                cc.SIM_SPLIT_SMS, slots=2) == 172


def test_conv_gemm_tiles_fit_the_output_channels():
    """A conv product with ≤ 16 (≤ 32) output rows takes the 16-row (32-row) tile, wider ones
    the MLP trainer's rule; split-K gives every model's splits together at least
    SPLIT_WAVES × SMs blocks."""
    from sdeverify.train import conv_cuda as cc
    assert cc.conv_gemm_config(16, 512 * 1024, 1)[:2] == ("n16", cc.NARROW_TILES["n16"])
    assert cc.conv_gemm_config(17, 512 * 1024, 1)[0] == "n32"
    assert cc.conv_gemm_config(32, 512 * 256, 1)[2] == (1024, 1, 1)
    assert cc.conv_gemm_config(64, 512 * 64, 1)[0] == "small"
    assert cc.conv_gemm_config(576, 512 * 64, 16)[0] == "big"
    for O, K, M in ((16, 144, 1), (64, 576, 16), (32, 288, 4)):
        S = cc.weight_grad_splits(O, K, M, 512)
        tile = cc.conv_gemm_config(O, K, M)[1]
        blocks = M * -(-O // tile[0]) * -(-K // tile[1])
        assert 512 % S == 0 and S <= -(-cc.SPLIT_WAVES * 132 // blocks) < 2 * S


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
    """Every conv kernel (gather, im2col, col2im + shortcut adjoint, BatchNorm + shortcut +
    ReLU, BatchNorm backward + ReLU adjoint, pool, split-K sum, update; float32 and float64)
    and the GEMM variants the MLP trainer does not launch (big tile; the narrow 16- and
    32-row tiles; split-K; float32) compile through NVVM and ptxas for sm_80 and sm_90 with
    the launch code's signatures: no spills, no stack frame, every launch fits
    (benchmarks/gpu_static.py's machinery)."""
    gs = _gpu_static()
    why = gs.unavailable()
    if why:
        pytest.skip(f"cannot compile for a GPU here: {why}")
    ks = gs.conv_kernels(("float32", "float64"), tiles=(), pointwise=True)
    ks += gs.conv_kernels(("float32",), tiles=("big", "n16", "n32"), pointwise=False)
    names = {k.name for k in ks}
    assert {"conv bn_forward", "conv bn_backward", "conv col2im", "conv gather"} <= names
    assert sum(k.name.startswith("gemm big") for k in ks) == 4
    assert sum(k.name.startswith(("gemm n16", "gemm n32")) for k in ks) == 10
    rows = gs.table(ks, gs.ARCHS)
    assert gs.problems(rows) == []
    assert all(not r.error and r.stack == 0 for r in rows)
    assert {r.arch for r in rows} == set(gs.ARCHS)
