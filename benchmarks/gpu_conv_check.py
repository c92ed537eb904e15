"""Real-GPU check and timing of the ResNet trainer on numba.cuda (sdeverify/train/conv_cuda.py).

    PYTHONPATH=. python3 benchmarks/gpu_conv_check.py                # on a GPU (prints its time)
    PYTHONPATH=. python3 benchmarks/gpu_conv_check.py --oracle cpu   # agreement vs the Numba
                                                                     # CPU backend (cold compile)
    NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=. python3 benchmarks/gpu_conv_check.py --tiny
                                                                     # every path, simulator

1. agreement, float64: the CUDA trainer against a CPU trainer (the NumPy reference, or with
   ``--oracle cpu`` the Numba backend) on a ResNet-8 (width 0.5, 16×16 images): SGD + SGDM
   with weight decay, 2 replicas, SVAG's two slots with augmentation, 3 steps — batch losses,
   weights, momentum, BN running statistics, evaluation and full-batch gradients (max
   relative deviation; the run fails above 1e-9); float32 against the float64 reference
   (reported; fails above 1e-3 relative on the weights);
2. speed, float32: ``ConvTrainer.train`` on ResNet-20 (32×32, 10 classes) at batch 512 × 16
   models (SGDM + weight decay) and × 1 model, as images·models/s and GFLOP/s
   (``ResNet.flops_per_sample``) against the card's FP32 peak, next to torch CUDA (a Python
   loop over the models, ``torch.optim.SGD(momentum, weight_decay)``, TF32 off, cuDNN) when
   importable; the kernel launches per step the trainer counted (and the number its plan
   gives, ``conv_cuda.launches_per_step``), numba-cuda's cost per launch measured here
   (``gpu_check.launch_overhead``) and the roofline model's time
   (``gpu_check.conv_trainer_model``, with that launch cost) next to the measured one; the
   time per kernel kind of one step (a synchronisation around every launch); then the same
   with ``bn_split`` (BatchNorm chunked over several blocks per (channel, model), off by
   default until this measures it) and its BatchNorm kernels' times.

The whole run, compilation included, takes under 4 minutes on an H200 (it prints its wall
time at the end).

numba-cuda 0.30.4 compiles no kernel with numpy ≥ 2.5 (it overloads the removed
``np.row_stack``); this script sets ``numpy.row_stack = numpy.vstack`` first when it is
missing (the workaround of benchmarks/gpu_check.py).  Exits 1 if an agreement check fails.
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

if not hasattr(np, "row_stack"):   # numba-cuda 0.30.4 with numpy >= 2.5
    np.row_stack = np.vstack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdeverify.train import conv_cuda, conv_reference  # noqa: E402
from sdeverify.train.augment import draw  # noqa: E402
from sdeverify.train.convnet import resnet  # noqa: E402
from sdeverify.train.images import conv_teacher  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_resnet import torch_loop  # noqa: E402
from gpu_check import conv_trainer_model, launch_overhead  # noqa: E402

#: numba-cuda's cost per kernel launch measured on an H200 (gpu_check.launch_overhead): the
#: model's launch cost under the simulator, where nothing is measured
LAUNCH_S = 78.8e-6

#: FP32 lanes per SM and clock of compute capability 8.0 / 9.0 (CUDA C Programming Guide,
#: arithmetic instruction throughput); other architectures: not predicted.
FP32_LANES = {(8, 0): 64, (9, 0): 128}


def rel(u, v) -> float:
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    return float(np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-300))


def device_line() -> tuple[str, float | None]:
    from numba import cuda
    import numba
    if numba.config.ENABLE_CUDASIM:
        return "Numba CUDA simulator", None
    d = cuda.get_current_device()
    cc = d.compute_capability
    sms, clock = d.MULTIPROCESSOR_COUNT, d.CLOCK_RATE * 1e3       # Hz
    lanes = FP32_LANES.get(tuple(cc))
    peak = None if lanes is None else sms * lanes * 2 * clock
    name = d.name.decode() if isinstance(d.name, bytes) else d.name
    return (f"{name}, compute capability {cc[0]}.{cc[1]}, {sms} SMs at {clock / 1e6:.0f} MHz"
            + ("" if peak is None else f", FP32 peak {sms} x {lanes} x 2 x clock = "
               f"{peak / 1e12:.1f} TFLOP/s")), peak


def agreement(tiny: bool, oracle: str) -> int:
    """CUDA vs CPU trainer, float64 (and float32 against the float64 reference)."""
    size, width, n, B, S = (6, 0.25, 32, 4, 1) if tiny else (16, 0.5, 256, 32, 3)
    data = conv_teacher(n=n, size=size, classes=10, seed=1)
    model = resnet(8, width=width, classes=10, image_size=size, weight_decay=5e-4)
    J, R = 2, 1 if tiny else 2
    rng = np.random.default_rng(0)
    idx = [rng.integers(0, data.n_train, (S, R, B)) for _ in range(2)]
    aug = [draw(0, np.arange(R), np.arange(S), i) for i in idx]
    a = np.stack([np.ones(S), np.full(S, 0.9)])
    b = np.stack([np.ones(S), np.full(S, 0.1)])
    g = np.stack([np.full(S, 0.05), np.full(S, 0.5)])
    W0 = np.concatenate([model.init(0, R)] * J)
    Ref = conv_reference.ConvTrainer
    if oracle == "cpu":             # imported here: its import compiles the Numba kernels
        from sdeverify.train import conv_cpu
        Ref = conv_cpu.ConvTrainer
    out = {}
    for key, T, dt in (("ref", Ref, "float64"), ("cuda", conv_cuda.ConvTrainer, "float64"),
                       ("cuda32", conv_cuda.ConvTrainer, "float32")):
        if tiny and key == "cuda32":
            continue
        t0 = time.perf_counter()
        tr = T(model, data.X_train, data.y_train, J, R, dt)
        tr.set_state(W0, np.zeros_like(W0))
        losses = tr.train(idx, a, b, g, [1.366, -0.366], aug)
        W, Mom, buf = tr.get_state()
        ev = tr.evaluate(data.X_test, data.y_test, chunk=64)
        G = tr.gradients(W[:2], data.X_train[:48], data.y_train[:48])
        out[key] = (losses, W, Mom, buf, ev[0], ev[1], G)
        print(f"  {key:6s} ({T.__module__.split('.')[-1]}, {dt}): {time.perf_counter() - t0:.1f} s "
              "(compile included)", flush=True)
    names = ("batch losses", "weights", "momentum", "BN running statistics", "evaluate loss_sum",
             "evaluate correct", "gradients")
    bad = 0
    print(f"{model.describe()}, {J} optimizers x {R} replicas, batch {B}, SVAG slots, augmented, "
          f"{S} steps: CUDA vs {oracle}, max rel. deviation")
    for i, name in enumerate(names):
        d64 = rel(out["cuda"][i], out["ref"][i])
        ok = d64 <= 1e-9
        bad += not ok
        d32 = ("" if "cuda32" not in out
               else f"   float32: {rel(out['cuda32'][i], out['ref'][i]):.2e}")
        print(f"  {name:24s} float64: {d64:.2e} {'ok' if ok else 'FAIL'}{d32}")
    if "cuda32" in out and not rel(out["cuda32"][1], out["ref"][1]) <= 1e-3:
        print("  float32 weights deviate more than 1e-3: FAIL")
        bad += 1
    return bad


def kernel_label(kernel) -> str:
    """A launch's kernel kind: the conv kernel's name, or the GEMM's tile and variant."""
    variant = getattr(kernel, "variant", None)
    if variant is None:
        return getattr(kernel, "__name__", None) or kernel.py_func.__name__
    ta, tb, epi, _, split = variant
    return (f"gemm {'T' if ta else 'N'}{'T' if tb else 'N'}{' bias' if epi else ''}"
            f"{' split-K' if split else ''} {kernel.tile[0]}x{kernel.tile[1]}")


def kernel_breakdown(tr, call) -> tuple[dict, float]:
    """Seconds and launches per kernel kind over ``call()`` (one training step), with a device
    synchronisation before and after every launch: each launch's time is then its host-side
    launch cost plus its GPU time, in order.  Returns ``({kind: [seconds, launches]}, total
    seconds)``."""
    from numba import cuda
    out: dict = {}
    launch = tr._launch

    def timed(kernel, *a, **kw):
        cfg = launch(kernel, *a, **kw)
        row = out.setdefault(kernel_label(kernel), [0.0, 0])

        def run(*args):
            cuda.synchronize()
            t0 = time.perf_counter()
            cfg(*args)
            cuda.synchronize()
            row[0] += time.perf_counter() - t0
            row[1] += 1
        return run
    tr._launch = timed
    try:
        t0 = time.perf_counter()
        call()
        total = time.perf_counter() - t0
    finally:
        del tr._launch
    return out, total


def print_breakdown(rows: dict, total: float, t_launch: float) -> None:
    print(f"     per kernel kind (one step, synchronised after each launch: {total * 1e3:.1f} ms; "
          f"minus {t_launch * 1e6:.0f} us per launch = GPU time estimate):", flush=True)
    for name, (sec, n) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        print(f"       {name:28s} {n:4d} launches {sec * 1e3:8.2f} ms "
              f"(~{max(sec - n * t_launch, 0.0) * 1e3:7.2f} ms on the GPU)", flush=True)


def speed(tiny: bool, peak: float | None) -> None:
    """float32 training steps of ResNet-20 at batch 512 (× 16 models and × 1)."""
    t_launch = LAUNCH_S if tiny else launch_overhead()
    print(f"numba-cuda launch overhead (empty kernel, 21 scalar arguments): "
          f"{t_launch * 1e6:.1f} us"
          f"{' (the H200 value; not measured on the simulator)' if tiny else ''}", flush=True)
    size, B, n, steps = (6, 4, 32, 1) if tiny else (32, 512, 4096, 3)
    model = resnet(8 if tiny else 20, width=0.25 if tiny else 1.0, classes=10, image_size=size,
                   weight_decay=5e-4)
    data = conv_teacher(n=n, size=size, classes=10, seed=1)
    try:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        if not torch.cuda.is_available() or tiny:
            torch = None
    except Exception:
        torch = None
    flops = model.flops_per_sample()
    print(f"{model.describe()}, float32, SGDM + weight decay, batch {B}, {steps} steps per call "
          f"({flops / 1e6:.1f} MFLOP per image, forward + backward)")
    for M in ((2, 1) if tiny else (16, 1)):
        tr = conv_cuda.ConvTrainer(model, data.X_train, data.y_train, 1, M, "float32")
        W = model.init(0, M, dtype="float32")
        rng = np.random.default_rng(0)
        idx = [rng.integers(0, data.n_train, (steps, M, B))]
        a, b, g = np.full((1, steps), 0.9), np.ones((1, steps)), np.full((1, steps), 0.05)
        tr.set_state(W, np.zeros_like(W))
        t0 = time.perf_counter()
        tr.train([i[:1] for i in idx], a[:, :1], b[:, :1], g[:, :1], [1.0])   # compile, warm up
        warm = time.perf_counter() - t0
        n0 = tr.launches
        t0 = time.perf_counter()
        losses = tr.train(idx, a, b, g, [1.0])
        t = (time.perf_counter() - t0) / steps
        launches = (tr.launches - n0) / steps
        rate = B * M / t
        line = (f"  {M:2d} model(s): {t * 1e3:8.1f} ms/step, {rate:9.0f} images·models/s, "
                f"{rate * flops / 1e9:8.1f} GFLOP/s")
        if peak:
            line += f" ({rate * flops / peak:.1%} of FP32 peak)"
        line += f"; first call {warm:.1f} s; losses finite: {bool(np.all(np.isfinite(losses)))}"
        print(line, flush=True)
        rows, total = kernel_breakdown(tr, partial(tr.train, [i[:1] for i in idx], a[:, :1],
                                                   b[:, :1], g[:, :1], [1.0]))
        planned = conv_cuda.launches_per_step(model, M, B, tr.tiles, tr.big_min, tr.split_sms)
        print(f"     launches per step: {launches:.0f} counted ({planned} planned"
              f"{'' if launches == planned else ': MISMATCH'})", flush=True)
        mod = conv_trainer_model(model, B, M, t_launch=t_launch)
        print(f"     model (H200 roofline, {mod['bound']}): {mod['t'] * 1e3:8.1f} ms/step "
              f"({mod['t_kernels'] * 1e3:.1f} ms kernels + {mod['launches']} launches x "
              f"{t_launch * 1e6:.1f} us); measured/model rate = {mod['t'] / t:.2f}", flush=True)
        print_breakdown(rows, total, t_launch)
        # the same step with BatchNorm chunked over several blocks per (channel, model)
        tr.bn_split = True
        tr.train([i[:1] for i in idx], a[:, :1], b[:, :1], g[:, :1], [1.0])    # compile
        n0 = tr.launches
        t0 = time.perf_counter()
        tr.train(idx, a, b, g, [1.0])
        ts = (time.perf_counter() - t0) / steps
        print(f"     bn_split=True: {ts * 1e3:8.1f} ms/step ({(tr.launches - n0) / steps:.0f} "
              f"launches per step; {t / ts:.2f}x the default)", flush=True)
        rows, total = kernel_breakdown(tr, partial(tr.train, [i[:1] for i in idx], a[:, :1],
                                                   b[:, :1], g[:, :1], [1.0]))
        print_breakdown({k: v for k, v in rows.items() if k.startswith("bn")}, total, t_launch)
        tr.bn_split = False
        if torch is not None:
            run = torch_loop(torch, model, data.X_train, data.y_train, B, M, steps, device="cuda")
            run()
            t0 = time.perf_counter()
            run()
            tt = (time.perf_counter() - t0) / steps
            print(f"     torch CUDA loop over {M}: {tt * 1e3:8.1f} ms/step, "
                  f"{B * M / tt:9.0f} images·models/s; ours is {tt / t:.2f}x torch", flush=True)
        del tr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the simulator)")
    p.add_argument("--oracle", choices=("numpy", "cpu"), default="numpy")
    p.add_argument("--no-speed", action="store_true")
    args = p.parse_args(argv)
    line, peak = device_line()
    print(f"device: {line}", flush=True)
    t0 = time.perf_counter()
    bad = agreement(args.tiny, args.oracle)
    print(f"agreement: {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.no_speed:
        speed(args.tiny, peak)
    print(f"total: {time.perf_counter() - t0:.1f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
