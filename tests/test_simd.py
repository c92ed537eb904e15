"""sdeverify.simd: the vector-width policy, and the same bits at either width."""
import json
import os
import subprocess
import sys

import pytest

from sdeverify import simd

AVX512 = {"avx512f": True, "avx512vbmi2": True}
SKYLAKE_SP = {"avx512f": True, "avx512vbmi2": False}
AVX2 = {"avx2": True, "avx512f": False}


def test_the_policy():
    assert simd.decide("auto", AVX512, False, False) == "512"
    assert simd.decide(" AUTO ", AVX512, False, False) == "512"
    assert simd.decide("auto", SKYLAKE_SP, False, False) == "llvm"    # the clock penalty: LLVM's
    assert simd.decide("512", SKYLAKE_SP, False, False) == "512"
    assert simd.decide("512", AVX2, False, False) == "llvm"           # no 512-bit vectors at all
    assert simd.decide("auto", {}, False, False) == "llvm"            # LLVM could not tell
    assert simd.decide("llvm", AVX512, False, False) == "llvm"
    assert simd.decide("auto", AVX512, True, False) == "user"         # NUMBA_CPU_* win
    assert simd.decide("512", AVX512, False, True) == "late"          # Numba compiled already
    with pytest.raises(ValueError, match="SDEVERIFY_VECTOR_WIDTH must be one of auto, 512, llvm"):
        simd.decide("1024", AVX512, False, False)


_RUN = r"""
import json, numpy as np, numba, sdeverify as sv
from sdeverify import simd, vmath
from sdeverify.problems import CosineWell, Quadratic
out = {"state": simd.STATE, "features": numba.config.CPU_FEATURES or ""}
for name, P, x0 in (("cosine", CosineWell(8), np.ones(8)),
                    ("quadratic", Quadratic(np.diag(np.linspace(0.5, 2.0, 5))), np.ones(5))):
    r = sv.simulate(P, [sv.SGD(0.05), sv.SGDM(0.05, 0.8)], x0, steps=40, paths=300, seed=3,
                    sigma=1.7, record=[0, 10, 40])
    out[name] = [a.tobytes().hex() for a in (r.block_stats, r.x_final, r.div_step)]
x = np.random.default_rng(1).uniform(-50, 50, 4096)
out["sin"] = np.array([vmath.sin(v) for v in x[:64]]).tobytes().hex()
print("RESULT " + json.dumps(out))
"""


def _run(width: str) -> dict:
    env = dict(os.environ, SDEVERIFY_VECTOR_WIDTH=width)
    env.pop("NUMBA_CPU_NAME", None)
    env.pop("NUMBA_CPU_FEATURES", None)
    r = subprocess.run([sys.executable, "-c", _RUN], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.split("RESULT ", 1)[1])


@pytest.mark.slow
def test_the_engine_gives_the_same_bits_at_either_width():
    """A process compiling with 512-bit vectors preferred and one with LLVM's choice give the
    engine's statistics, final states and divergence steps bit for bit (lanes oracle and
    fused step), and vmath.sin's values."""
    wide, llvm = _run("512"), _run("llvm")
    assert llvm["state"] == "llvm" and "-prefer-256-bit" not in llvm["features"]
    if wide["state"] != "512":
        pytest.skip(f"this host gets no 512-bit preference ({wide['state']}): nothing to compare")
    assert wide["features"].endswith(",-prefer-256-bit")
    for key in ("cosine", "quadratic", "sin"):
        assert wide[key] == llvm[key], key
