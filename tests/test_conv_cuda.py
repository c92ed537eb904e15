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
