"""The CUDA kernels compiled for real GPUs (NVVM + ptxas, no GPU needed) and the launch
configurations checked against the sm_80 / sm_90 limits (benchmarks/gpu_static.py,
sdeverify/cuda_arch.py).

The compile tests need the ``gpu-build`` extra and are skipped, with the reason, without it.
They compile a representative subset for both architectures (the engine on four problems —
quadratic, linear regression, SVAG on the cosine well, the README's quartic — the GEMM variants with the most
registers in each tile and dtype, the pointwise kernels): the full table of every kernel is
``python benchmarks/gpu_static.py`` (80-135 s on two cores).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from sdeverify import cuda_arch
from sdeverify.engine import cuda as engine_cuda
from sdeverify.train import cuda as tc

_spec = importlib.util.spec_from_file_location(
    "gpu_static", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_static.py")
gs = importlib.util.module_from_spec(_spec)
sys.modules["gpu_static"] = gs
_spec.loader.exec_module(gs)

WHY = gs.unavailable()
needs_wheels = pytest.mark.skipif(WHY is not None, reason=f"cannot compile for a GPU here: {WHY}")


@pytest.fixture(scope="module")
def subset_rows():
    engine = {k.name.split(" (")[0]: k for k in gs.engine_kernels()}
    ks = [engine[n] for n in ("engine quadratic", "engine linear_regression",
                              "engine cosine_well+svag4", "engine quartic")]
    ks += gs.trainer_kernels(("float32",), ("big",), ("forward relu", "input grad tanh"))
    ks += gs.trainer_kernels(("float64",), ("big",), ("forward relu",))
    ks += gs.trainer_kernels(("float64",), ("small",), ("weight grad",))
    return gs.table(ks, gs.ARCHS)


@needs_wheels
def test_kernels_compile_for_both_architectures_without_spills(subset_rows):
    """Every kernel of the subset compiles for sm_80 and sm_90 (or is a listed known failure),
    none spills, stack frames only where the allow-list says why, every launch fits."""
    assert gs.problems(subset_rows) == []
    compiled = [r for r in subset_rows if not r.error]
    assert {r.arch for r in compiled} == set(gs.ARCHS)
    # the trainer's kernels need no stack at all; the engine's keeps path state in local memory
    assert all(r.stack == 0 for r in compiled if not r.kernel.startswith("engine"))
    gemm = [r for r in compiled if r.kernel.startswith("gemm big") and r.dtype == "float32"]
    assert gemm and all(100 <= r.registers <= 255 and r.blocks_per_sm == 1 for r in gemm)


@needs_wheels
def test_planted_spill_fails_the_check():
    """A copy of the GEMM with its per-thread accumulator tile grown from 8x8 to 16x16 (256
    float32 values in a thread's local arrays, more than the 255 registers) spills; the check
    must say so.  So must the same kernel capped at 64 registers."""
    grown = tc.make_gemm(np.dtype(np.float32), (128, 128, 8, 16, 16), False, False,
                         tc.EPI_BIAS_ACT, tc.RELU)
    k = gs.Kernel("gemm planted 16x16 accumulators", "float32", grown.py_func,
                  gs.trainer_signature("gemm", grown.py_func, np.float32), grown.threads,
                  grown.shared_bytes)
    row = gs.measure(k, "sm_90")
    assert not row.error and row.spill_stores > 0
    bad = gs.problems([row])
    assert any("spills" in b for b in bad), bad
    big = gs.trainer_kernels(("float32",), ("big",), ("forward relu",))[0]
    big.max_registers = 64
    row = gs.measure(big, "sm_80")
    assert any("spills" in b for b in gs.problems([row]))


@needs_wheels
def test_a_stack_frame_outside_the_allow_list_is_reported(subset_rows):
    engine = [r for r in subset_rows if r.kernel.startswith("engine quadratic")]
    assert engine and engine[0].stack > 0
    assert gs.problems(engine) == []
    assert any("stack frame" in b for b in gs.problems(engine, allow={}))


# ---- launch configurations (no compiler needed) ----------------------------------------------
@pytest.mark.parametrize("arch", gs.ARCHS)
def test_gemm_launches_fit_at_the_limits(arch):
    """Every GEMM of a training step of a width-4096 MLP at batch 16384 with 64 models, and of
    the smallest shapes, fits the architecture whatever the compiler allocates (255 registers)."""
    widths, B, M = [4096, 4096, 4096, 10], 16384, 64
    shapes = []
    for l in range(len(widths) - 1):
        din, dout = widths[l], widths[l + 1]
        shapes += [(B, dout), (din + 1, dout), (B, din), (1, 1)]
    for nm, nn in shapes:
        size, tile, grid = tc.gemm_config(nm, nn, M, tc.GPU_TILES, tc.GPU_BIG_MIN, 132)
        k = tc.make_gemm(np.dtype(np.float64), tile, False, False, tc.EPI_NONE, tc.IDENTITY)
        occ = cuda_arch.check_launch(arch, k.threads, k.shared_bytes, None, grid)
        assert occ.blocks_per_sm >= 1


def test_evaluation_chunks_keep_the_gemm_grid_within_65535_rows_of_blocks():
    """A narrow model evaluated on many rows: the chunk must keep ⌈rows / BM⌉ ≤ 65535."""
    for M, n, width in ((1, 2 ** 24, 2), (1, 10 ** 7, 3), (64, 2 ** 22, 4096)):
        nb = tc.eval_chunk(M, n, width, tc.GPU_TILES)
        assert 1 <= nb <= n
        _, _, grid = tc.gemm_config(nb, width, M, tc.GPU_TILES, tc.GPU_BIG_MIN, 132)
        cuda_arch.check_launch("sm_80", 256, 0, None, grid)


def test_engine_launch_config_is_checked():
    blocks, tpb = engine_cuda.launch_config(2 ** 20, "sm_90")
    assert blocks * tpb >= 2 ** 20
    with pytest.raises(ValueError, match="grid dimension x must be in"):
        engine_cuda.launch_config(2 ** 40, "sm_90")


@pytest.mark.parametrize("kw, match", [
    (dict(threads=1025), r"threads per block must be in \[1, 1024\]"),
    (dict(threads=128, shared_bytes=48 * 1024 + 1), r"shared memory per block must be in \[0, 49152\]"),
    (dict(threads=1024, registers=255), r"registers per block must be at most 65536"),
    (dict(threads=32, registers=256), r"registers per thread must be in \[1, 255\]"),
    (dict(threads=32, grid=(1, 65536, 1)), r"grid dimension y must be in \[1, 65535\]"),
])
def test_check_launch_names_the_limit(kw, match):
    with pytest.raises(ValueError, match=match):
        cuda_arch.check_launch("sm_90", **kw)
    with pytest.raises(ValueError, match="arch must be one of"):
        cuda_arch.check_launch("sm_75", 32)


def test_occupancy_follows_the_calculator():
    """Hand-worked occupancy-calculator cases for sm_90 (65536 registers in 4 sub-partitions,
    allocated per warp in units of 256; 228 KiB of shared memory, 1 KiB reserved per block)."""
    # 160 regs: 5120 per warp, 3 warps per sub-partition = 12 warps: one 8-warp block
    assert cuda_arch.occupancy("sm_90", 256, 160, 8256).blocks_per_sm == 1
    # 96 regs: 3072 per warp, 5 per sub-partition = 20 warps: two 8-warp blocks
    assert cuda_arch.occupancy("sm_90", 256, 96, 8320).blocks_per_sm == 2
    # 32 regs and 128 threads: the 2048-thread limit gives 16 blocks (50% of 32 blocks)
    occ = cuda_arch.occupancy("sm_90", 128, 32, 0)
    assert (occ.blocks_per_sm, occ.occupancy, occ.limiter) == (16, 1.0, "threads")
    # shared memory: 100 KiB + 1 KiB reserve -> 2 blocks in 228 KiB on sm_90, 1 in 164 KiB on sm_80
    assert cuda_arch.occupancy("sm_90", 64, 16, 100 * 1024).blocks_per_sm == 2
    assert cuda_arch.occupancy("sm_80", 64, 16, 100 * 1024).blocks_per_sm == 1


def test_the_engine_performance_model_covers_every_built_in_problem():
    """gpu_check.engine_model_for: a bound for every problem gpu_static compiles; for the dense
    quadratic it is the model validated on the H200 (engine_model); a problem it does not know
    is an error, not a silent guess."""
    import numpy as np
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_check as gc
    from sdeverify.problems import NGOS, Quadratic
    for P in gs.engine_problems():
        m = gc.engine_model_for(P)
        assert m["rate"] > 0 and m["bound"] in ("FP64", "load/store", "INT32"), P.name
    dense = Quadratic(np.eye(8) + 0.1)
    assert gc.engine_model_for(dense)["rate"] == gc.engine_model(8, 8)["rate"]
    cosine = next(P for P in gs.engine_problems() if P.name == "cosine_well")
    assert gc.engine_model_for(cosine)["fp64"] > 5 * gc.engine_model_for(
        next(P for P in gs.engine_problems() if P.name == "sphere"))["fp64"]   # the sines count
    other = NGOS(dim=1, grad=cosine.grad, noise=cosine.noise, loss=cosine.loss, params=[1.0],
                 n_draws=1, name="mine")
    with pytest.raises(ValueError, match="no cost model"):
        gc.engine_model_for(other)


def test_the_conv_trainer_model_counts_the_networks_flops():
    """gpu_check.conv_trainer_model: its GEMM flops are the ResNet's flops_per_sample × batch ×
    models (an independent count in convnet.py), and more models never take less time."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_check as gc
    from sdeverify.train.convnet import resnet
    for depth, shortcut in ((8, "A"), (20, "B")):
        m = resnet(depth, image_size=32, shortcut=shortcut)
        one, many = gc.conv_trainer_model(m, 128, 1), gc.conv_trainer_model(m, 128, 8)
        assert many["flop"] == 8 * one["flop"] == 8 * 128 * m.flops_per_sample()
        assert many["t"] >= one["t"] > 0
