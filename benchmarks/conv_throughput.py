"""Training throughput of the CIFAR ResNet (sdeverify.train.convnet) against torch CPU.

    python benchmarks/conv_throughput.py [--depths 8,20] [--batches 128] [--models 1,8]
                                         [--backends numpy,cpu] [--repeats 3] [--threads N]
                                         [--json out.json]
    python benchmarks/conv_throughput.py --small-fit 4,8 [--repeats 3] [--threads N]
    python benchmarks/conv_throughput.py --cold-compile

For each workload (ResNet depth, batch B, models M; float32; SGDM β = 0.9 with weight decay;
forward + backward + update of every model on its own minibatch, BatchNorm in training mode,
no augmentation) prints images·models/s and the achieved GFLOP/s (``ResNet.flops_per_sample()``)
of

* each sdeverify backend registered for ResNets (``numpy``: the reference, batched over models;
  ``cpu``: the Numba backend when it is registered);
* ``torch loop`` — torch CPU (``torch.nn.Conv2d``/``BatchNorm2d``, ``torch.optim.SGD``), a Python
  loop over the M models — only when torch is importable (it is never a dependency; run this
  script with an interpreter that has it, e.g. ``PYTHONPATH=. /path/to/torch-venv/bin/python``).

``--small-fit R1,R2,...`` times instead the quick-size conv net of the Sec 6 checks end to end:
``fit`` of ResNet-8 at width 0.25 (4-8-16 channels) on ``conv_teacher(n=2048, size=8, classes=4)``,
SGDM + SGD × R replicas, batch 16, one epoch with the default 11 evaluations, ``cpu``, float32
(small per-image products and many small kernel calls: overhead, not flops, decides it).

``--cold-compile`` times instead what a first run pays for compiling the CPU conv trainer: a
fresh process with an empty ``NUMBA_CACHE_DIR`` trains one step of ResNet-8 (width 0.5,
option-B shortcuts, 32×32 images: every conv path, im2col and not) and evaluates it, in
float32 and then float64.

Medians of ``--repeats`` timed runs after one warm-up run; the ratio to torch is printed in the
same run, with the median CPU time per step (user + system, all threads: on a machine shared
with other jobs the wall-clock times swing with the load, and the 1-minute load average is
printed per workload).  Record results in benchmarks/RESULTS.md with the machine, the load and
the command.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdeverify.train import backends  # noqa: E402
from sdeverify.train.convnet import resnet  # noqa: E402
from sdeverify.train.images import conv_teacher  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from torch_resnet import torch_loop  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU (user + system) seconds of ``fn()`` after one warm-up call."""
    fn()                                                   # warm-up (compilation, caches)
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = os.times(), time.perf_counter()
        fn()
        c1 = os.times()
        times.append(time.perf_counter() - t0)
        cpu.append(c1.user + c1.system - c0.user - c0.system)
    return float(np.median(times)), float(np.median(cpu))


def ours(backend: str, model, data, B: int, M: int, steps: int):
    """One timed call: ``steps`` SGDM steps of M models (1 optimizer × M replicas)."""
    Trainer = backends.trainer_class(backend, model)
    tr = Trainer(model, data.X_train, data.y_train, 1, M, "float32")
    W = model.init(0, M, 0, "float32")
    g = np.random.default_rng(0)
    idx = [g.integers(0, data.n_train, size=(steps, M, B))]
    a = np.full((1, steps), 0.9)
    b = np.full((1, steps), 0.1)
    gamma = np.full((1, steps), 0.05)
    r = np.array([1.0])

    def run():
        tr.set_state(W, np.zeros_like(W))
        tr.train(idx, a, b, gamma, r)
    return run


def small_fit(replicas: list[int], repeats: int) -> list[dict]:
    """Time ``fit`` of the Sec 6 checks' quick-size conv net (module docstring) per replica
    count: median wall and CPU seconds."""
    import numba

    from sdeverify.optim import SGD, SGDM
    from sdeverify.train import fit
    model = resnet(8, width=0.25, image_size=8, classes=4, weight_decay=5e-4)
    data = conv_teacher(n=2048, size=8, classes=4, seed=0)
    rows = []
    for R in replicas:
        load = os.getloadavg()[0]
        t, cpu = _median_time(lambda: fit(model, data, [SGDM(lr=0.2, beta=0.9), SGD(lr=0.2)],
                                          batch_size=16, epochs=1, replicas=R, seed=0,
                                          backend="cpu", dtype="float32"), repeats)
        load = (load, os.getloadavg()[0])
        rows.append(dict(net="resnet8-w0.25-8x8", batch=16, models=2 * R, seconds=t, cpu_seconds=cpu,
                         threads=numba.get_num_threads(), load_average=load))
        print(f"quick conv net, 2 x {R} replicas, 1 epoch at B=16: {t:7.3f} s ({cpu:6.3f} CPU-s), "
              f"{numba.get_num_threads()} threads  [load {load[0]:.1f} -> {load[1]:.1f}]")
    return rows


_COLD = """
import os, time
t0, c0 = time.perf_counter(), os.times()
import numpy as np
from sdeverify.train import conv_cpu
from sdeverify.train.convnet import resnet
from sdeverify.train.images import conv_teacher
for dt in ("float32", "float64"):
    m = resnet(8, width=0.5, image_size=32, weight_decay=5e-4, shortcut="B")
    d = conv_teacher(n=64, size=32, seed=0)
    tr = conv_cpu.ConvTrainer(m, d.X_train, d.y_train, 1, 1, dt)
    W = m.init(0, 1, 0, dt)
    tr.set_state(W, np.zeros_like(W))
    tr.train([np.zeros((1, 1, 4), dtype=np.int64)], *[np.full((1, 1), v) for v in (0.9, 0.1, 0.05)],
             np.array([1.0]))
    tr.evaluate(d.X_test[:8], d.y_test[:8])
c1 = os.times()
print(f"cold compile of the CPU conv trainer, float32 + float64: {time.perf_counter() - t0:.1f} s "
      f"({c1.user + c1.system - c0.user - c0.system:.1f} CPU-s)")
"""


def cold_compile() -> None:
    """Run :data:`_COLD` in a fresh process with an empty Numba cache (module docstring)."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        load = os.getloadavg()[0]
        subprocess.run([sys.executable, "-c", _COLD], env=env, check=True)
        print(f"[load {load:.1f} -> {os.getloadavg()[0]:.1f}]")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="8,20")
    p.add_argument("--batches", default="128")
    p.add_argument("--models", default="1,8")
    p.add_argument("--backends", default=None, help="default: every backend registered for ResNets")
    p.add_argument("--steps", type=int, default=2, help="training steps per timed call")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="threads of both sides (Numba's and torch's; default: every core)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--small-fit", default=None, metavar="R1,R2,...",
                   help="instead: time fit() of the Sec 6 checks' quick-size conv net with these "
                        "replica counts (module docstring)")
    p.add_argument("--cold-compile", action="store_true",
                   help="instead: time the conv trainer's compilation from an empty cache")
    args = p.parse_args()
    if args.cold_compile:
        cold_compile()
        return 0
    depths = [int(v) for v in args.depths.split(",")]
    batches = [int(v) for v in args.batches.split(",")]
    models = [int(v) for v in args.models.split(",")]
    data = conv_teacher(n=max(batches) * 4, size=args.image_size, seed=0)
    probe = resnet(8, image_size=args.image_size)
    names = args.backends.split(",") if args.backends else [
        b for b in backends.names() if _trains(b, probe)]
    threads = args.threads or os.cpu_count() or 1
    import numba
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if args.small_fit:
        rows = small_fit([int(v) for v in args.small_fit.split(",")], args.repeats)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            print("torch not installed: no torch rows (it is never a dependency)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{threads} threads; "
          f"float32, {args.image_size}x{args.image_size} images, medians of {args.repeats}")
    importlib.import_module("scipy.linalg")              # loads the BLAS of the compiled kernels
    print(f"OpenBLAS kernels: {_openblas_cores()}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    rows = []
    for depth in depths:
        model = resnet(depth, image_size=args.image_size, weight_decay=5e-4)
        flops = model.flops_per_sample()
        for B in batches:
            for M in models:
                res = {}
                load = os.getloadavg()[0]
                for name in names:
                    res[name] = _median_time(ours(name, model, data, B, M, args.steps), args.repeats)
                if torch is not None:
                    res["torch loop"] = _median_time(torch_loop(torch, model, data.X_train, data.y_train,
                                                                B, M, args.steps),
                                                     args.repeats)
                work = args.steps * B * M
                load = (load, os.getloadavg()[0])
                for name, (t, cpu) in res.items():
                    ratio = (res["torch loop"][0] / t) if "torch loop" in res else float("nan")
                    row = dict(depth=depth, batch=B, models=M, backend=name, seconds=t,
                               seconds_per_step=t / args.steps, cpu_seconds_per_step=cpu / args.steps,
                               images_models_per_s=work / t, gflops=work * flops / t / 1e9,
                               vs_torch=ratio, load_average=load)
                    rows.append(row)
                    print(f"ResNet-{depth:<3d} B={B:<5d} M={M:<3d} {name:12s} "
                          f"{t / args.steps:7.3f} s/step ({cpu / args.steps:6.3f} CPU-s) "
                          f"{work / t:8.1f} img·models/s {work * flops / t / 1e9:7.2f} GFLOP/s"
                          + (f"  x{ratio:.2f} of torch loop" if ratio == ratio else "")
                          + f"  [load {load[0]:.1f} -> {load[1]:.1f}]")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _openblas_cores() -> str:
    """The kernel sets of the OpenBLAS libraries loaded in this process (``OPENBLAS_CORETYPE``
    overrides OpenBLAS's choice when set before the process starts)."""
    import ctypes
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower()})
    except OSError:
        return "unknown"
    names = []
    for path in paths:
        lib = ctypes.CDLL(path)
        for fn in ("openblas_get_corename", "scipy_openblas_get_corename", "scipy_openblas_get_corename64_"):
            if hasattr(lib, fn):
                getattr(lib, fn).restype = ctypes.c_char_p
                names.append(f"{Path(path).name.split('-')[0]}: {getattr(lib, fn)().decode()}")
                break
    return ", ".join(names) or "none found"


def _trains(backend: str, model) -> bool:
    try:
        backends.get(backend).trainer_for(model)
        return backend != "cuda"
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
