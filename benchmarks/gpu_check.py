"""Real-GPU check and timing of the numba.cuda engine and trainer (one short run on an NVIDIA GPU).

    PYTHONPATH=. python3 benchmarks/gpu_check.py            # the real run: ~2-3 minutes on an H200
    PYTHONPATH=. python3 benchmarks/gpu_check.py --tiny     # every path, tiny sizes, on Numba's
                                                             # CUDA simulator (no GPU needed)
    PYTHONPATH=. python3 benchmarks/gpu_check.py --ptx      # compile the trainer's kernels for
                                                             # sm_90 (needs NVVM, not a GPU)

Every timing is printed next to the roofline model's prediction for an H200 (``engine_model``,
``gemm_model``, ``trainer_model`` below; derivation in benchmarks/RESULTS.md, "Performance
model"), as measured/model.

1. engine: CUDA vs CPU engine on 4096 paths of every built-in problem type and the README's
   quartic (``gpu_static.engine_problems``; a problem whose kernel does not compile is reported
   and fails the run), then the reference workload (d = 8 diagonal quadratic, SGD + SGDM(0.9)
   coupled) on the GPU next to the CPU engine on this host's cores, in path·dim·steps/s and
   normals/s, and the engine's kernel alone;
2. trainer agreement: :class:`sdeverify.train.cuda.Trainer` vs a CPU trainer (the NumPy
   reference, or with ``--oracle cpu`` the Numba backend, whose cold compile costs ~30-60 s)
   after 50 steps in float64: batch losses, weights, momentum, evaluation, full-batch
   gradients (max relative deviation; the run fails above 1e-9);
3. trainer speed, float32: ``Trainer.train`` on MLP 1024-1024-1024-10 at batch 4096 (one
   model) and 64-256-256-10 at batch 256 × 64 replicas, as samples·models/s and GFLOP/s
   (``MLP.flops_per_sample``), against the card's FP32 peak (SM count × FP32 lanes per SM for
   its compute capability × 2 × SM clock, the derivation printed), next to torch CUDA (a Python
   loop over replicas, ``torch.optim.SGD(momentum=0.9)``, TF32 off) and CuPy's float32 matmul,
   each when importable;
4. GEMM tile sweep: the trainer's forward GEMM kernel alone, 4096×1024 by 1024×1024, for a few
   tile shapes (GFLOP/s, and its agreement with NumPy), to choose ``GPU_TILES``.

Exits 1 if an agreement check fails.  numba-cuda 0.30.4 compiles no kernel with numpy ≥ 2.5
(it overloads the removed ``np.row_stack``): on such an image, put
``import numpy; numpy.row_stack = numpy.vstack`` in a ``sitecustomize.py`` on PYTHONPATH.  With ``--tiny`` the sizes shrink so that every code path
that does not need a real GPU runs on the simulator in a few minutes on one core.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: FP32 lanes ("CUDA cores") per SM by compute capability (CUDA C Programming Guide,
#: arithmetic instruction throughput table); (major, None) covers the whole major version.
FP32_LANES = {(6, 0): 64, (7, None): 64, (8, 0): 64, (8, None): 128, (9, 0): 128,
              (10, None): 128, (12, None): 128, (5, None): 128, (6, None): 128}


# ---- performance model (benchmarks/RESULTS.md, "Performance model") -------------------------
#: NVIDIA H200 SXM (datasheet, nvidia.com/en-us/data-center/h200): FP32 67 TFLOP/s, FP64
#: 34 TFLOP/s (FMA = 2 FLOP), HBM3e 4.8 TB/s; 132 SMs (GH100 as in H100 SXM5: NVIDIA H100 Tensor
#: Core GPU Architecture whitepaper).  Per SM and clock (CUDA C Programming Guide, arithmetic
#: instruction throughput, cc 9.0): 128 FP32 lanes, 64 FP64 lanes, 64 INT32 lanes, 32 load/store
#: lanes; the clock implied by the FP32 figure is 67e12 / (132 x 128 x 2) = 1.98 GHz.
H200 = dict(name="H200 SXM (datasheet)", sms=132, fp32=67e12, fp64=34e12, bw=4.8e12,
            clock=67e12 / (132 * 128 * 2), fp64_lanes=64, int_lanes=64, ldst_lanes=32)


def engine_model(dim: int, n_draws: int, n_opt: int = 2, card=H200) -> dict:
    """Roofline bound on the engine's path·steps/s for the quadratic problem (dense ``H``, ``S``
    in the parameter vector), one thread per path (:func:`engine_model_for` gives the same
    for it and models every other built-in problem).  Per path·step and thread, counted from
    :func:`sdeverify.problems.quadratic.quad_grad`/``quad_noise`` and the kernel's update:
    FP64 instructions ``n_opt (2 d² + 4 d + 3 d) + 45 · draws`` (d² FMAs each for ∇L and S ξ;
    45 per normal: the log / sqrt / sin-cos polynomials of :func:`sdeverify.rng.normal_pair64_py`),
    loads ``n_opt (3 d² + d + 3)`` (the parameters, the same address in every thread: L1
    broadcasts, so these are load *instructions*, not DRAM bytes) and ~125 INT32 instructions per
    Philox call (10 rounds, 4 draws).  Global memory traffic is only the recorded observables
    (bytes/step ≪ 1), so the bound is the busiest of the FP64, load/store and INT32 pipes."""
    rows = 4 * ((n_draws + 3) // 4)
    f = n_opt * (2 * dim * dim + 7 * dim) + 45 * rows
    loads = n_opt * (3 * dim * dim + dim + 3)
    ints = 125 * rows // 4
    per_sm_clk = {"FP64": f / card["fp64_lanes"], "load/store": loads / card["ldst_lanes"],
                  "INT32": ints / card["int_lanes"]}
    bound = max(per_sm_clk, key=per_sm_clk.get)
    rate = card["sms"] * card["clock"] / per_sm_clk[bound]
    return dict(rate=rate, bound=bound, fp64=f, loads=loads, ints=ints)


#: FP64 instructions of one sdeverify.vmath call, counted in its sm_90 PTX (branch-free straight
#: line code, so the static count is the dynamic one): sin 65, cos 65, exp 33, log 36.
VMATH_FP64 = {"sin": 65, "cos": 65, "exp": 33, "log": 36}
#: FP64 instructions of one math.sqrt (the sm_90 sequence: rsqrt approximation + Newton steps)
SQRT_FP64 = 10
#: FP64 instructions per base draw by law (normal: the log / sqrt / sin-cos polynomials of the
#: Box-Muller pair; uniform: a scale; Rademacher: a select)
DRAW_FP64 = {"normal": 45, "uniform": 2, "rademacher": 1}


def oracle_costs(P) -> tuple[int, int]:
    """(FP64 instructions, parameter loads) of one gradient plus one noise evaluation of a
    built-in problem at one path, counted by hand from its ``grad``/``noise`` code (an FMA is one
    instruction; loads of ``p`` are L1 broadcasts); ``ValueError`` for a problem not modelled."""
    from sdeverify.problems import DiagonalNet, LinearRegression, Quadratic, Sphere, Valley
    from sdeverify.problems import CosineWell
    d = P.dim
    name = P.name.split("+")[0]
    if isinstance(P, Quadratic) and not getattr(P, "diagonal", False):
        return 2 * d * d + 2 * d, 3 * d * d + d              # H(x − c) + b, S ξ
    if isinstance(P, Quadratic):
        return 4 * d, 4 * d                                  # diagonal H and S
    if isinstance(P, CosineWell):                            # x − a sin x; sqrt(1 + sin²) ξ
        return d * (2 * VMATH_FP64["sin"] + 5 + SQRT_FP64), 1
    if isinstance(P, LinearRegression):                      # Q x − r; B rows: residual, Aᵀ r
        B = P.batch_size
        return d * d + d + B * (2 * d + 2), d * d + d + B * (2 * d + 1)
    if isinstance(P, Valley):                                # 3 polynomials of 8 coefficients
        return 3 * 2 * 8 + 3 * d + 2 * SQRT_FP64, 3 * 8
    if isinstance(P, Sphere):
        return 3 * d + 1, 1
    if isinstance(P, DiagonalNet):                           # residual over n rows, Aᵀ r, A ξ
        D, n = d // 2, P.n_draws
        return 4 * n * D + 8 * D + n * D + 4 * D + SQRT_FP64, 3 * n * D + n
    if name == "quartic":                                    # README: x³; sqrt(1 + x²) ξ
        return d * (5 + SQRT_FP64), 1
    raise ValueError(f"no cost model for problem {P.name!r}")


def engine_model_for(P, n_opt: int = 2, card=H200) -> dict:
    """Roofline bound on the engine's path·steps/s for problem ``P`` (one thread per path, SGD +
    SGDM): per path·step ``n_opt`` oracle evaluations (:func:`oracle_costs`; SVAG's ℓ > 1 makes
    two noise calls, counted as a second oracle evaluation), the update (5 FP64 per coordinate,
    3 coefficient loads), the draws (:data:`DRAW_FP64` each, ~31 INT32 per draw for Philox), against the
    FP64, load/store and INT32 pipes of the card; the busiest pipe is the bound."""
    f1, l1 = oracle_costs(P)
    calls = 2 if getattr(P, "svag_ell", 1.0) != 1.0 else 1
    rows = 4 * ((P.n_draws + 3) // 4) * calls
    f = n_opt * (calls * f1 + 5 * P.dim) + DRAW_FP64[P.noise_dist] * rows
    loads = n_opt * (calls * l1 + 3)
    ints = 125 * rows // 4
    per_sm_clk = {"FP64": f / card["fp64_lanes"], "load/store": loads / card["ldst_lanes"],
                  "INT32": ints / card["int_lanes"]}
    bound = max(per_sm_clk, key=per_sm_clk.get)
    return dict(rate=card["sms"] * card["clock"] / per_sm_clk[bound], bound=bound, fp64=f,
                loads=loads, ints=ints)


#: Resident blocks per SM of the float32 GEMM tiles on sm_90 (benchmarks/gpu_static.py's
#: ptxas table: big 156-160 registers × 256 threads, small 96 × 256, the conv trainer's narrow
#: n16 160-164 × 128 and n32 118-148 × 128; the most-register variant of each tile).
GEMM_BLOCKS_PER_SM = {"big": 1, "small": 2, "n16": 3, "n32": 3}


def gemm_model(nm: int, nn: int, nk: int, models: int, dtype_bytes: int = 4, card=H200,
               conv: bool = False) -> dict:
    """Roofline time of one batched GEMM launch of the trainer: the tile and grid the trainer
    picks (:func:`sdeverify.train.cuda.gemm_config`; ``conv``: the ResNet trainer's
    :func:`sdeverify.train.conv_cuda.conv_gemm_config`, narrow tiles included), resident
    blocks per SM from :data:`GEMM_BLOCKS_PER_SM`, whole waves of blocks at the SM's FP32
    peak (a block's whole tile, padding included), against the bytes of A, B and C once
    through HBM."""
    from sdeverify.train import conv_cuda as cc
    from sdeverify.train import cuda as tc
    if conv:
        size, tile, grid = cc.conv_gemm_config(nm, nn, models, cc.CONV_GPU_TILES, tc.GPU_BIG_MIN,
                                               card["sms"])
    else:
        size, tile, grid = tc.gemm_config(nm, nn, models, tc.GPU_TILES, tc.GPU_BIG_MIN,
                                          card["sms"])
    per_sm = GEMM_BLOCKS_PER_SM[size]
    blocks = grid[0] * grid[1] * grid[2]
    waves = -(-blocks // (card["sms"] * per_sm))
    t_flop = waves * per_sm * 2 * tile[0] * tile[1] * nk / (card["fp32"] / card["sms"])
    t_mem = dtype_bytes * models * (nm * nk + nk * nn + nm * nn) / card["bw"]
    return dict(t=max(t_flop, t_mem), bound="FP32 (waves)" if t_flop >= t_mem else "HBM",
                flop=2 * nm * nn * nk * models)


def trainer_model(widths, batch: int, models: int, t_launch: float = 0.0, card=H200) -> dict:
    """Roofline time of one SGD step of the CUDA trainer on an MLP (float32): per layer the
    forward, weight-gradient and (except the first layer) input-gradient GEMMs by
    :func:`gemm_model`, the pointwise kernels as HBM traffic (gather, loss, update: 5 words per
    parameter), plus ``t_launch`` per kernel launch (measured by :func:`launch_overhead`)."""
    L = len(widths) - 1
    t, flop, launches, bounds = 0.0, 0, 0, set()
    for l in range(L):
        din, dout = widths[l], widths[l + 1]
        shapes = [(batch, dout, din), (din + 1, dout, batch)] + ([(batch, din, dout)] if l else [])
        for nm, nn, nk in shapes:
            g = gemm_model(nm, nn, nk, models, 4, card)
            t, flop, launches = t + g["t"], flop + g["flop"], launches + 1
            bounds.add(g["bound"])
    P = sum(widths[l] * widths[l + 1] + widths[l + 1] for l in range(L))
    t += 4 * (5 * P * models + 2 * batch * widths[0] * models) / card["bw"]
    launches += 4                                   # gather, loss, reduce, update
    t_kernels = t
    t += launches * t_launch
    return dict(t=t, flop=flop, gflops=flop / t / 1e9, launches=launches,
                bound=("launch overhead" if launches * t_launch > t_kernels
                       else " + ".join(sorted(bounds))))


def conv_trainer_model(model, batch: int, models: int, t_launch: float = 0.0,
                       card=H200) -> dict:
    """Roofline time of one SGD step of the CUDA ResNet trainer (``conv_cuda``, float32), unit
    by unit of its plan (each conv + BatchNorm): the im2col product as three GEMMs by
    :func:`gemm_model` with the trainer's tiles (``conv=True``: 16/32-row tiles for narrow
    outputs) — forward ``c_out × (B·H·W) × (c_in·k²)``, weight gradient ``c_out × (c_in·k²)
    × (B·H·W)`` split over image groups as the trainer does
    (:func:`sdeverify.train.conv_cuda.weight_grad_splits`: all models' splits in one launch,
    the partial products written and summed), input gradient ``(c_in·k²) × (B·H·W) × c_out``
    (not for the stem) — plus, through HBM: the patch buffer written and read by the forward
    product, again by the weight gradient, the patch gradient written and read by col2im (6
    passes of ``c_in·k²·B·H·W`` words, 4 for the stem), col2im's output, BatchNorm forward
    (x read 3 times, x̂ and y written: 5 passes of ``c_out·B·H·W``, plus the shortcut read by a
    block's second unit) and backward (dy, x̂ read twice, dx written: 5 passes, plus the ReLU's
    output read); the linear head's three GEMMs; the update (5 words per parameter); and
    ``t_launch`` per launch (:func:`sdeverify.train.conv_cuda.launches_per_step`).  A model:
    nothing here is measured."""
    from sdeverify.train import conv_cuda as cc
    plan = cc._Plan(model)
    second = {id(b[2]) for b in plan.blocks}
    shortcut = {id(b[3]) for b in plan.blocks if b[3] is not None}    # no ReLU after its BN
    t, flop, bounds, words = 0.0, 0, set(), 0
    for u in plan.units:
        rows, kk = batch * u.h_out ** 2, u.c_in * u.k ** 2
        S = cc.weight_grad_splits(u.c_out, kk, models, batch, n_sm=card["sms"])
        stem = u is plan.stem
        shapes = [(u.c_out, rows, kk, models), (u.c_out, kk, rows // S, models * S)] + \
            ([] if stem else [(kk, rows, u.c_out, models)])
        for nm, nn, nk, mm in shapes:
            g = gemm_model(nm, nn, nk, mm, 4, card, conv=True)
            t, flop = t + g["t"], flop + g["flop"]
            bounds.add(g["bound"])
        act = u.c_out * rows
        col2im_out = 0 if stem else u.c_in * batch * u.h_in ** 2
        bn = 5 + (id(u) in second) + 5 + (id(u) not in shortcut)
        words += models * ((4 if stem else 6) * kk * rows + col2im_out + bn * act
                           + (2 * S * u.c_out * kk if S > 1 else 0))
    c, C = plan.c_last, model.n_classes                 # the linear head
    for nm, nn, nk in ((batch, C, c), (C, c, batch), (batch, c, C)):
        g = gemm_model(nm, nn, nk, models, 4, card, conv=True)
        t, flop = t + g["t"], flop + g["flop"]
    words += 5 * model.n_params * models
    t += 4 * words / card["bw"]
    t_kernels = t
    launches = cc.launches_per_step(model, models, batch, n_sm=card["sms"])
    t += launches * t_launch
    return dict(t=t, flop=flop, gflops=flop / t / 1e9, launches=launches, t_kernels=t_kernels,
                bound=("launch overhead" if launches * t_launch > t_kernels
                       else " + ".join(sorted(bounds)) + " + HBM (im2col, BN)"))


def launch_overhead(n: int = 300) -> float:
    """Seconds per launch of an empty numba.cuda kernel with the GEMM's 21 scalar arguments
    (the host-side cost every trainer kernel launch pays)."""
    from numba import cuda

    @cuda.jit
    def empty(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, c0):
        pass
    args = tuple(range(21))
    empty[1, 32](*args)
    cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        empty[1, 32](*args)
    cuda.synchronize()
    return (time.perf_counter() - t0) / n


def median_time(f, repeats=3):
    f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def rel(u, v) -> float:
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    return float(np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-300))


# ---- 1. engine ------------------------------------------------------------------------------
def engine_check(tiny: bool) -> tuple[float, list]:
    """CUDA vs CPU engine on every problem of ``benchmarks/gpu_static.py`` (all built-in types
    and the README's quartic); returns the worst deviation and the problems that failed."""
    import sdeverify as sv
    from gpu_static import engine_problems
    from sdeverify.problems import Quadratic
    worst, failed = 0.0, []
    n_paths, n_steps = (16, 8) if tiny else (4096, 200)
    for P in engine_problems():
        kw = dict(steps=n_steps, paths=n_paths, sigma=1.0, seed=1, observables=["loss", "sqnorm"])
        opts = [sv.SGD(0.02), sv.SGDM(0.02, 0.9)]
        try:
            g = sv.simulate(P, opts, np.full(P.dim, 0.5), backend="cuda", **kw)
        except Exception as e:   # e.g. a problem whose functions NVVM cannot compile
            failed.append(P.name)
            print(f"engine {P.name:28s} FAILED on the GPU: {type(e).__name__}: "
                  f"{str(e).strip().splitlines()[0][:160]}")
            continue
        c = sv.simulate(P, opts, np.full(P.dim, 0.5), backend="cpu", **kw)
        dev = float(np.max(np.abs(g.x_final - c.x_final) / (1 + np.abs(c.x_final))))
        worst = max(worst, dev)
        print(f"engine {P.name:28s} max rel. deviation GPU vs CPU: {dev:.3g}")
        m = engine_model_for(P, len(opts))
        kp, ks = (32, 8) if tiny else (2 ** 18, 256)
        tk = engine_kernel_time(P, opts, np.full(P.dim, 0.5), ks, kp)
        print(f"engine {P.name:28s} kernel alone: {kp * ks / tk / 1e9:.3g} G path*steps/s; "
              f"model (H200 roofline, {m['bound']}-bound): {m['rate'] / 1e9:.3g} G, "
              f"measured/model = {kp * ks / tk / m['rate']:.2f}")
    P = Quadratic(np.diag(np.linspace(1.0, 4.0, 8)))
    opts = [sv.SGD(0.01), sv.SGDM(0.01, 0.9)]
    paths, steps = (32, 8) if tiny else (2 ** 20, 1024)
    model = engine_model(8, 8)
    for backend, p in (("cuda", paths), ("cpu", min(paths, 2 ** 16))):
        t = median_time(lambda: sv.simulate(P, opts, np.ones(8), steps=steps, paths=p,
                                            sigma=1.0, backend=backend))
        pred = (f"; model (H200 roofline, {model['bound']}-bound): {model['rate'] * 8 / 1e6:.0f} M, "
                f"measured/model = {p * steps / t / model['rate']:.2f}" if backend == "cuda" else "")
        print(f"engine {backend}: {p} paths x {steps} steps x d=8: {t:.3f} s, "
              f"{p * 8 * steps / t / 1e6:.1f} M path*dim*steps/s, "
              f"{p * steps * 8 / t / 1e9:.3g} G normals/s{pred}")
    tk = engine_kernel_time(P, opts, np.ones(8), steps, paths)
    print(f"engine cuda kernel alone (no transfers, no host fold): {tk:.3f} s, "
          f"{paths * steps * 8 / tk / 1e9:.3g} G normals/s, measured/model = "
          f"{paths * steps / tk / model['rate']:.2f}")
    return worst, failed


def engine_kernel_time(P, opts, x0, steps: int, paths: int) -> float:
    """Seconds of the engine's kernel alone (arguments already on the device)."""
    from numba import cuda

    from sdeverify.engine import cuda as ec
    from sdeverify.engine.spec import make_spec
    spec = make_spec(P, opts, x0, steps=steps, paths=paths, sigma=1.0)
    kernel = ec.kernel_for(spec)
    blocks, tpb = ec.launch_config(paths)
    args = ec.launch_args(spec, cuda.to_device, lambda shape, dt: cuda.device_array(shape, dtype=dt))

    def run():
        kernel[blocks, tpb](*args)
        cuda.synchronize()
    return median_time(run)


# ---- 2. trainer agreement -------------------------------------------------------------------
def synthetic(n: int, d: int, C: int, seed: int = 0, dtype=np.float64):
    """Inputs and labels of a random linear teacher (learnable, so training makes progress)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(dtype)
    y = np.argmax(X @ rng.normal(size=(d, C)), axis=1).astype(np.int64)
    return X, y


def coefficients(steps: int):
    import sdeverify as sv
    co = [o.coefficients(steps, 1) for o in (sv.SGD(0.05), sv.SGDM(0.05, 0.9))]
    return tuple(np.stack([getattr(c, f) for c in co]) for f in ("a", "b", "gamma"))


def trainer_agreement(tiny: bool, oracle: str) -> float:
    from sdeverify.train import cuda as tc
    from sdeverify.train.batches import BatchSampler
    from sdeverify.train.models import MLP
    if oracle == "cpu":
        from sdeverify.train.cpu import Trainer as CPUTrainer
    else:
        from sdeverify.train.reference import Trainer as CPUTrainer
    oracle = {"cpu": "sdeverify.train.cpu", "numpy": "sdeverify.train.reference (NumPy)"}[oracle]
    if tiny:
        cases = [(MLP([5, 7, 6, 3], "relu", "cross_entropy", 1e-3), 1, [1.0]),
                 (MLP([5, 6, 7, 4], "tanh", "squared", 1e-3), 2, [1.366, -0.366])]
        n, B, R, S = 30, 9, 2, 4
    else:
        cases = [(MLP([20, 48, 40, 10], "relu", "cross_entropy", 1e-3), 1, [1.0]),
                 (MLP([20, 36, 52, 10], "tanh", "squared", 1e-3), 2, [1.366, -0.366])]
        n, B, R, S = 1024, 64, 3, 50
    a, b, g = coefficients(S)
    worst = 0.0
    for model, slots, r in cases:
        X, y = synthetic(n, model.n_inputs, model.n_classes)
        W0 = np.tile(model.init(1, R), (2, 1))
        Mom0 = np.zeros_like(W0)
        idx = BatchSampler(2, n, B, np.arange(R), "shuffle", slots).indices(0, S)
        res = []
        for T in (CPUTrainer, tc.Trainer):
            tr = T(model, X, y, 2, R, "float64")
            tr.set_state(W0, Mom0)
            L = tr.train(idx, a, b, g, r)
            W, Mom = tr.get_state()
            res.append((L, W, Mom, tr.evaluate(X, y)[0], tr.gradients(W, X[:200], y[:200])))
        devs = [rel(u, v) for u, v in zip(res[1], res[0])]
        worst = max(worst, max(devs))
        print(f"trainer {model.describe()}, 2 opt x {R} rep, batch {B}, {slots} slot(s), {S} steps: "
              f"max rel. deviation CUDA vs {oracle} (loss, W, mom, eval, grad) = "
              + ", ".join(f"{d:.2g}" for d in devs))
    return worst


# ---- 3. trainer speed -----------------------------------------------------------------------
def fp32_peak(tiny: bool):
    """(FLOP/s, derivation text) of the current device, or (None, reason)."""
    from numba import cuda
    if tiny:
        return None, "simulator: no peak"
    dev = cuda.get_current_device()
    cc = tuple(dev.compute_capability)
    lanes = FP32_LANES.get(cc, FP32_LANES.get((cc[0], None)))
    sms = dev.MULTIPROCESSOR_COUNT
    try:
        clock_hz = dev.CLOCK_RATE * 1e3                       # attribute in kHz
        src = "CU_DEVICE_ATTRIBUTE_CLOCK_RATE"
    except Exception:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=30).stdout
            clock_hz, src = float(out.split()[0]) * 1e6, "nvidia-smi clocks.max.sm"
        except Exception as e:
            return None, f"no SM clock ({e})"
    if lanes is None:
        return None, f"FP32 lanes per SM unknown for compute capability {cc}"
    peak = sms * lanes * 2 * clock_hz
    return peak, (f"{sms} SMs x {lanes} FP32 lanes/SM (cc {cc[0]}.{cc[1]}) x 2 FLOP/FMA x "
                  f"{clock_hz / 1e9:.3f} GHz ({src}) = {peak / 1e12:.1f} TFLOP/s")


def time_ours(model, B: int, R: int, S: int, X, y) -> float:
    from sdeverify.train import cuda as tc
    tr = tc.Trainer(model, X, y, 1, R, "float32")
    tr.set_state(model.init(0, R), np.zeros((R, model.n_params)))
    rng = np.random.default_rng(1)
    idx = [rng.integers(0, X.shape[0], (S, R, B))]
    a, b, g = (np.full((1, S), v) for v in (0.9, 1.0, 0.01))
    tr.train([idx[0][:1]], a[:, :1], b[:, :1], g[:, :1], [1.0])       # compile
    t = median_time(lambda: tr.train(idx, a, b, g, [1.0]))
    L = tr.train(idx, a, b, g, [1.0])
    if not np.all(np.isfinite(L)):
        print("  WARNING: non-finite batch losses in the timing run")
    return t


def time_torch(model, B: int, R: int, S: int, X, y, device: str) -> float:
    import torch
    import torch.nn.functional as F
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    w = model.widths

    def net():
        layers = []
        for l in range(len(w) - 1):
            layers.append(torch.nn.Linear(w[l], w[l + 1]))
            if l < len(w) - 2:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers).to(device)

    nets = [net() for _ in range(R)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in nets]
    Xt = torch.tensor(X, device=device)
    yt = torch.tensor(y, device=device)
    idx = torch.randint(0, X.shape[0], (S, R, B), device=device)

    def run():
        for s in range(S):
            for r in range(R):
                rows = idx[s, r]
                loss = F.cross_entropy(nets[r](Xt[rows]), yt[rows])
                opts[r].zero_grad(set_to_none=True)
                loss.backward()
                opts[r].step()
        if device == "cuda":
            torch.cuda.synchronize()
    return median_time(run)


def cupy_rate(tiny: bool) -> str:
    try:
        import cupy as cp
    except Exception as e:
        return f"CuPy not importable ({type(e).__name__})"
    out = []
    for shape_a, shape_b in (((4096, 1024), (1024, 1024)), ((64, 256, 256), (64, 256, 256))):
        a = cp.random.rand(*shape_a, dtype=cp.float32)
        b = cp.random.rand(*shape_b, dtype=cp.float32)
        flop = 2 * np.prod(shape_a) * shape_b[-1]
        cp.matmul(a, b)
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            cp.matmul(a, b)
        cp.cuda.Device().synchronize()
        out.append(f"{'x'.join(map(str, shape_a))} @ {'x'.join(map(str, shape_b))}: "
                   f"{20 * flop / (time.perf_counter() - t0) / 1e9:.0f} GFLOP/s")
    return "CuPy float32 matmul: " + "; ".join(out)


def trainer_speed(tiny: bool) -> None:
    from numba import cuda

    from sdeverify.train.models import MLP
    dev = cuda.get_current_device()
    name = getattr(dev, "name", "Numba CUDA simulator")
    name = name.decode() if isinstance(name, bytes) else name
    peak, how = fp32_peak(tiny)
    print(f"device: {name}; FP32 peak: {how}")
    if tiny:
        work = [(MLP([8, 8, 8, 3]), 8, 1, 2, 64), (MLP([4, 8, 8, 3]), 4, 4, 2, 32)]
    else:
        work = [(MLP([1024, 1024, 1024, 10]), 4096, 1, 20, 16384),
                (MLP([64, 256, 256, 10]), 256, 64, 20, 16384)]
    try:
        import torch
        torch_dev = "cuda" if torch.cuda.is_available() else ("cpu" if tiny else None)
    except Exception as e:
        torch_dev, why = None, f"torch not importable ({type(e).__name__})"
    else:
        why = "torch sees no GPU"
    t_launch = launch_overhead(20 if tiny else 300)
    print(f"numba.cuda launch overhead (empty kernel, 21 scalar args): {t_launch * 1e6:.1f} us")
    for model, B, R, S, n in work:
        X, y = synthetic(n, model.n_inputs, model.n_classes, dtype=np.float32)
        flop = model.flops_per_sample() * B * R * S
        t = time_ours(model, B, R, S, X, y)
        frac = f", {flop / t / peak:.1%} of FP32 peak" if peak else ""
        pm = trainer_model(model.widths, B, R, t_launch)
        print(f"trainer {model.describe()}, batch {B} x {R} replica(s), {S} steps, float32: "
              f"{t / S * 1e3:.3f} ms/step, {B * R * S / t:.4g} samples*models/s, "
              f"{flop / t / 1e9:.1f} GFLOP/s{frac}; model (H200 roofline + measured launches, "
              f"{pm['bound']}-bound): {pm['t'] * 1e3:.3f} ms/step, {pm['gflops']:.0f} GFLOP/s, "
              f"measured/model = {pm['t'] / (t / S):.2f}")
        if torch_dev is None:
            print(f"  torch: {why}")
        else:
            try:
                tt = time_torch(model, B, R, S, X, y, torch_dev)
            except Exception as e:   # report, and go on to the other measurements
                print(f"  torch failed: {type(e).__name__}: {e}")
                continue
            print(f"  torch ({torch_dev}, loop over {R} replica(s), SGD momentum 0.9, TF32 off): "
                  f"{tt / S * 1e3:.3f} ms/step, {B * R * S / tt:.4g} samples*models/s, "
                  f"{flop / tt / 1e9:.1f} GFLOP/s; ours is {tt / t:.2f}x torch")
    try:
        print(cupy_rate(tiny))
    except Exception as e:
        print(f"CuPy failed: {type(e).__name__}: {e}")


# ---- 4. GEMM tile sweep ---------------------------------------------------------------------
def gemm_sweep(tiny: bool) -> float:
    """Forward ``relu(A W + b)`` and weight-gradient ``[A, 1]ᵀ D`` products of the trainer's
    GEMM kernel alone, one model, for several tiles; returns the worst relative error."""
    from numba import cuda

    from sdeverify.train import cuda as tc
    if tiny:
        nb, nin, nout, reps = 9, 10, 7, 1
        tiles = [(tc.SIM_TILES["big"], 128), (tc.SIM_TILES["small"], None), ((8, 4, 4, 4, 2), None)]
    else:
        nb, nin, nout, reps = 4096, 1024, 1024, 10
        tiles = [(tc.GPU_TILES["big"], None), (tc.GPU_TILES["big"], 128), ((128, 128, 16, 8, 8), None),
                 (tc.GPU_TILES["small"], None), ((128, 64, 8, 8, 4), None), ((64, 64, 8, 4, 4), None)]
    rng = np.random.default_rng(3)
    A = rng.normal(size=(nb, nin)).astype(np.float32)
    D = rng.normal(size=(nb, nout)).astype(np.float32)
    W = rng.normal(size=(nin * nout + nout,)).astype(np.float32)
    A64 = A.astype(np.float64)
    ref_f = np.maximum(A64 @ W[:nin * nout].reshape(nin, nout) + W[nin * nout:], 0.0)
    ref_w = np.concatenate([A64, np.ones((nb, 1))], axis=1).T @ D
    dA, dD, dW = cuda.to_device(A.ravel()), cuda.to_device(D.ravel()), cuda.to_device(W)
    dC = cuda.device_array(max(nb * nout, (nin + 1) * nout), dtype=np.float32)
    # (label, transposes, epilogue, act, nm, nn, nk, args after the kernel's (a .. sez) head, ref)
    products = [("forward relu(A W + b)", False, False, tc.EPI_BIAS_ACT, tc.RELU, nb, nout, nin,
                 (dA, 0, 0, 1, nin, dW, 0, 0, nout, dC, 0, 0, nout, dW, nin * nout, 0), ref_f),
                ("weight gradient [A, 1]^T D", True, False, tc.EPI_NONE, tc.IDENTITY, nin + 1, nout, nb,
                 (dA, 0, 0, 1, nin, dD, 0, 0, nout, dC, 0, 0, nout, dC, 0, 0), ref_w)]
    worst = 0.0
    for label, ta, tb, epi, act, nm, nn, nk, head, ref in products:
        for tile, regs in tiles:
            k = tc.make_gemm(np.dtype(np.float32), tile, ta, tb, epi, act, regs)
            grid = ((nn + tile[1] - 1) // tile[1], (nm + tile[0] - 1) // tile[0], 1)
            ones = nin if ta else -1

            def launch():
                k[grid, k.threads, 0, k.shared_bytes](*head, nm, nn, nk, ones, 0)
            launch()
            cuda.synchronize()
            got = dC.copy_to_host()[:nm * nn].reshape(nm, nn)
            err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
            worst = max(worst, err)
            t0 = time.perf_counter()
            for _ in range(reps):
                launch()
            cuda.synchronize()
            t = (time.perf_counter() - t0) / reps
            pm = "" if tiny else (f"; model for the trainer's choice: "
                                  f"{2 * nm * nn * nk / gemm_model(nm, nn, nk, 1)['t'] / 1e9:.0f} GFLOP/s")
            print(f"gemm {label}, {nm}x{nn} (K={nk}), tile {tile} (BM, BN, BK, TM, TN), "
                  f"max_registers {regs}, {grid[0] * grid[1]} blocks: {2 * nm * nn * nk / t / 1e9:.1f} "
                  f"GFLOP/s, max rel. error vs float64 {err:.2g}{pm}")
    return worst


# ---- --ptx: compile without a GPU ------------------------------------------------------------
def ptx_report(cc=(9, 0)) -> int:
    """Compile every trainer kernel to PTX for compute capability ``cc`` (no GPU needed, only
    NVVM: e.g. pip packages nvidia-cuda-nvrtc, nvidia-nvvm, nvidia-cuda-nvcc with their lib
    folder on LD_LIBRARY_PATH) and, where ``ptxas`` is on PATH, print registers and spills."""
    import shutil
    import tempfile

    from numba import cuda
    from numba import types as T

    from sdeverify.train import cuda as tc
    ptxas = shutil.which("ptxas")
    I, F64 = T.int64, T.float64

    def arr(t):
        return T.Array(t, 1, "C")

    def report(name, kernel, sig, regs=None):
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
        line = f"{name}: PTX ok ({len(ptx.splitlines())} lines)"
        if ptxas:
            with tempfile.TemporaryDirectory() as d:
                src = Path(d) / "k.ptx"
                src.write_text(ptx)
                cmd = [ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", str(src), "-o", str(Path(d) / "k.cubin")]
                if regs:
                    cmd.insert(1, f"-maxrregcount={regs}")
                out = subprocess.run(cmd, capture_output=True, text=True).stderr
                line += "; " + " | ".join(l.split("info    : ")[-1].strip() for l in out.splitlines()
                                          if "registers" in l or "spill" in l)
        print(line)

    for dt in (np.dtype(np.float32), np.dtype(np.float64)):
        D = tc._numba_dtype(dt)
        A = arr(D)
        gemm_sig = (A, I, I, I, I, A, I, I, I, A, I, I, I, A, I, I, I, I, I, I, I)
        for size, tile in tc.GPU_TILES.items():
            regs = tc.GPU_MAX_REGISTERS[size] if dt == np.float32 else None
            for label, ta, tb, epi, act in (("forward relu", False, False, tc.EPI_BIAS_ACT, tc.RELU),
                                            ("forward tanh", False, False, tc.EPI_BIAS_ACT, tc.TANH),
                                            ("weight grad", True, False, tc.EPI_NONE, tc.IDENTITY),
                                            ("input grad", False, True, tc.EPI_DERIV, tc.TANH)):
                report(f"{dt.name} gemm {size} {tile} {label}",
                       tc.make_gemm(dt, tile, ta, tb, epi, act, regs), gemm_sig, regs)
        sigs = ((A, arr(I), arr(I), I, I, I, A, arr(I)),
                (A, I, arr(I), I, I, I, I, D, A, I, arr(F64), arr(F64)),
                (arr(F64), arr(F64), I, F64, arr(F64), I, arr(F64), I, I),
                (A, A, A, I, D, D, D, A, A, A, I, I, I, I, I))
        for name, k, sig in zip(("gather", "loss_grad", "reduce", "update"),
                                tc.make_pointwise(dt, 0, tc.GPU_TPB), sigs):
            report(f"{dt.name} {name}", k, sig)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true",
                   help="tiny sizes on Numba's CUDA simulator (sets NUMBA_ENABLE_CUDASIM=1)")
    p.add_argument("--skip-engine", action="store_true", help="skip part 1 (the SDE engine)")
    p.add_argument("--oracle", choices=("numpy", "cpu"), default="numpy",
                   help="CPU trainer the CUDA trainer is compared with: the NumPy reference "
                        "(default: no compile time) or the Numba CPU backend (~30-60 s to compile)")
    p.add_argument("--ptx", action="store_true",
                   help="only compile the trainer's kernels to PTX for sm_90 (no GPU needed)")
    args = p.parse_args()
    if args.ptx:
        return ptx_report()
    if args.tiny:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"   # before Numba is imported
        sys.setswitchinterval(1e-5)                # the simulator's threads meet at barriers
    os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")
    t0 = time.perf_counter()
    bad = []
    if not args.skip_engine:
        dev, failed = engine_check(args.tiny)
        if not dev < 1e-9:
            bad.append(f"engine deviation {dev:.3g}")
        if failed:
            bad.append("engine failed on " + ", ".join(failed))
    dev = trainer_agreement(args.tiny, args.oracle)
    if not dev < 1e-9:
        bad.append(f"trainer deviation {dev:.3g}")
    trainer_speed(args.tiny)
    err = gemm_sweep(args.tiny)
    if not err < 1e-4:
        bad.append(f"gemm error {err:.3g}")
    print(f"total {time.perf_counter() - t0:.1f} s; " + ("FAILED: " + "; ".join(bad) if bad else "all agreement checks passed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
