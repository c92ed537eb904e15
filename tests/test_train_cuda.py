"""The numba.cuda trainer: under the CUDA simulator it must agree with the NumPy reference
trainer (CI has no GPU; the real-GPU check and timings are benchmarks/gpu_check.py)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdeverify.train.models import MLP

HERE = Path(__file__).parent


def test_cuda_trainer_matches_reference_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(HERE.parent))
    r = subprocess.run([sys.executable, str(HERE / "train_cuda_sim_check.py")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" ok") == 16, r.stdout   # 2 cases x 6 quantities, bad input, ties, fit, eta scheme


def test_cuda_trainer_without_gpu_says_so():
    from numba import cuda

    from sdeverify.train.cuda import Trainer
    if cuda.is_available():
        pytest.skip("a GPU (or the simulator) is available here")
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        Trainer(MLP([2, 3, 2]), np.zeros((4, 2)), np.zeros(4, dtype=int), 1, 1)
