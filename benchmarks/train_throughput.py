"""Throughput of the trainer (sdeverify.train) against NumPy, the machine's GEMM rate and torch.

    python benchmarks/train_throughput.py [--repeats 5] [--wait-idle 120] [--json out.json] [--figure] [--per-core]

For each workload (MLP widths, batch B, replicas R; float32; one optimizer, SGDM β = 0.9;
forward + backward + update), prints samples·replicas/s and achieved GFLOP/s
(``MLP.flops_per_sample()``: 2 GEMMs for the first layer, 3 for the others) of

* ``sdeverify cpu`` — the Numba backend (models split over the cores, OpenBLAS 1 thread;
  with fewer models than cores, the two halves of each model's batch);
* ``numpy ref``    — the NumPy reference backend (batched ``np.matmul`` over replicas);
* ``torch loop``   — torch CPU, a Python loop over replicas, ``torch.optim.SGD(momentum=0.9)``
  (only when torch is installed; it is never a dependency);
* ``torch vmap``   — ``torch.func.vmap`` of ``torch.func.grad`` over stacked replica weights;

next to the **GEMM limit**: the median rate of one ``np.matmul`` of the workload's largest
layer shape (B×w by w×w, float32, all cores) — what the machine's BLAS achieves for these
shapes.  Medians of ``--repeats`` runs after a warm-up; the share of the CPUs used by other
processes during each run is measured (``others``) and quiet runs (others < 5%) are reported
separately, as in ``throughput.py``.  ``--per-core`` runs everything on one thread and
takes one-thread ``np.matmul`` as the GEMM limit (on a loaded machine, multithreaded BLAS
collapses and distorts the all-core ratio).  GPU numbers come from ``benchmarks/gpu_check.py``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import Timing, measure, wait_idle  # noqa: E402

from sdeverify.train import MLP  # noqa: E402
from sdeverify.train import cpu, reference  # noqa: E402
from sdeverify.train.batches import BatchSampler  # noqa: E402
from sdeverify.train.blas_threads import single_threaded  # noqa: E402
from sdeverify.result import atomic_write_text  # noqa: E402

WORKLOADS = [  # (widths, batch, replicas, steps)
    ((64, 256, 256, 10), 256, 1, 20),
    ((64, 256, 256, 10), 256, 16, 10),
    ((64, 256, 256, 10), 256, 64, 4),
    ((64, 256, 256, 10), 1024, 16, 4),
    ((64, 256, 256, 10), 4096, 1, 8),
    ((64, 256, 256, 10), 4096, 16, 2),
    ((64, 256, 256, 10), 16384, 4, 2),
    ((64, 1024, 1024, 10), 4096, 4, 2),
]
N_DATA = 16384


def timed(fn, repeats, idle):
    fn()
    wait_idle(idle)
    return Timing([measure(fn) for _ in range(repeats)])


def ours(backend, widths, B, R, S):
    m = MLP(widths)
    rs = np.random.default_rng(0)
    X = rs.normal(size=(N_DATA, widths[0])).astype(np.float32)
    y = rs.integers(0, widths[-1], N_DATA)
    idx = BatchSampler(0, N_DATA, B, np.arange(R), "replacement").indices(0, S)
    c = (np.full((1, S), 0.9), np.full((1, S), 0.1), np.full((1, S), 0.01))
    T = (cpu if backend == "cpu" else reference).Trainer(m, X, y, 1, R, "float32")
    W0 = m.init(0, R, dtype="float32")
    T.set_state(W0, np.zeros_like(W0))
    return lambda: T.train(idx, *c, np.array([1.0]))


def gemm(widths, B):
    w = max(widths[1:-1])
    rs = np.random.default_rng(1)
    A = rs.normal(size=(B, w)).astype(np.float32)
    Wm = rs.normal(size=(w, w)).astype(np.float32)
    out = np.empty((B, w), np.float32)
    return (lambda: [np.matmul(A, Wm, out=out) for _ in range(8)]), 8 * 2 * B * w * w


def torch_mlp(widths):
    """The same MLP in torch (Linear + ReLU)."""
    import torch
    layers = []
    for l in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[l], widths[l + 1]))
        if l < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_loop(widths, B, R, S):
    import torch
    torch.manual_seed(0)
    nets = []
    for _ in range(R):
        net = torch_mlp(widths)
        nets.append((net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)))
    X = torch.randn(N_DATA, widths[0])
    y = torch.randint(0, widths[-1], (N_DATA,))
    idx = [torch.randint(0, N_DATA, (R, B)) for _ in range(S)]

    def run():
        for s in range(S):
            for r, (net, opt) in enumerate(nets):
                rows = idx[s][r]
                loss = torch.nn.functional.cross_entropy(net(X[rows]), y[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return run


def torch_vmap(widths, B, R, S):
    import torch
    from torch.func import functional_call, grad, vmap
    net = torch_mlp(widths)
    params = {k: torch.stack([v.detach().clone() for _ in range(R)]) for k, v in net.named_parameters()}
    mom = {k: torch.zeros_like(v) for k, v in params.items()}
    X = torch.randn(N_DATA, widths[0])
    y = torch.randint(0, widths[-1], (N_DATA,))
    idx = [torch.randint(0, N_DATA, (R, B)) for _ in range(S)]

    def loss(p, xb, yb):
        return torch.nn.functional.cross_entropy(functional_call(net, p, (xb,)), yb)
    g = vmap(grad(loss))

    def run():
        for s in range(S):
            gr = g(params, X[idx[s]], y[idx[s]])
            for k in params:
                mom[k].mul_(0.9).add_(gr[k])
                params[k].sub_(0.01 * mom[k])
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--wait-idle", type=float, default=0.0)
    p.add_argument("--json", type=str, default=None)
    p.add_argument("--figure", action="store_true", help="write figures/train_throughput.png")
    p.add_argument("--quick", action="store_true", help="3 workloads, 3 repeats")
    p.add_argument("--only", type=str, default=None,
                   help="comma-separated workload numbers (0-based rows of WORKLOADS), e.g. 5,6")
    p.add_argument("--per-core", action="store_true",
                   help="everything on one thread (Numba, OpenBLAS, torch); the GEMM limit is then "
                        "one-thread np.matmul: a view of the kernels that a loaded machine distorts less")
    args = p.parse_args()
    try:
        import torch
        torch.set_num_threads(1 if args.per_core else 2)
        has_torch = True
    except ImportError:
        has_torch = False
    import numba
    one_thread = ExitStack()
    if args.per_core:
        importlib.import_module("scipy.linalg")     # loads SciPy's OpenBLAS for single_threaded()
        numba.set_num_threads(1)
        one_thread.enter_context(single_threaded())
        print("per core: Numba, OpenBLAS and torch on one thread")
    load0 = os.getloadavg()
    print(f"load average (1, 5, 15 min) at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print(f"machine: {platform.processor() or platform.machine()}, {numba.config.NUMBA_NUM_THREADS} threads; "
          f"numpy {np.__version__}, numba {numba.__version__}" + (f", torch {torch.__version__}" if has_torch else ", torch not installed"))
    work = WORKLOADS if not args.quick else [WORKLOADS[2], WORKLOADS[5], WORKLOADS[7]]
    if args.only:
        work = [WORKLOADS[int(i)] for i in args.only.split(",")]
    reps = args.repeats if not args.quick else 3
    rows = []
    hdr = f"{'MLP':>16s} {'B':>6s} {'R':>3s} | {'GEMM limit':>10s} | {'ours cpu':>17s} {'%GEMM':>6s} | {'numpy ref':>9s} | {'torch loop':>10s} {'torch vmap':>10s} | {'ours/torch':>10s} {'others':>6s}"
    print("GFLOP/s (median; quiet runs' median in the JSON).  samples·replicas/s for ours in [].")
    print(hdr)
    for widths, B, R, S in work:
        m = MLP(widths)
        flops = m.flops_per_sample() * B * R * S
        gf, gw = gemm(widths, B)
        tg = timed(gf, reps, args.wait_idle)
        res = {"widths": widths, "batch": B, "replicas": R, "steps": S, "gemm_gflops": gw / tg.wall / 1e9}
        for name, make in (("cpu", lambda: ours("cpu", widths, B, R, S)),
                           ("numpy", lambda: ours("numpy", widths, B, R, S)),
                           ("torch_loop", (lambda: torch_loop(widths, B, R, S)) if has_torch else None),
                           ("torch_vmap", (lambda: torch_vmap(widths, B, R, S)) if has_torch else None)):
            if make is None:
                res[name] = None
                continue
            t = timed(make(), reps, args.wait_idle)
            res[name] = {"gflops": flops / t.wall / 1e9, "samples_per_s": B * R * S / t.wall, "timing": t.as_dict(),
                         "gflops_quiet": flops / t.quiet / 1e9 if t.quiet else None}
        rows.append(res)
        f = lambda k: f"{res[k]['gflops']:10.1f}" if res[k] else f"{'-':>10s}"
        best_torch = max([res[k]["gflops"] for k in ("torch_loop", "torch_vmap") if res[k]] or [np.nan])
        print(f"{'-'.join(map(str, widths)):>16s} {B:6d} {R:3d} | {res['gemm_gflops']:10.1f} | "
              f"{res['cpu']['gflops']:6.1f} [{res['cpu']['samples_per_s']:8.3g}] {100 * res['cpu']['gflops'] / res['gemm_gflops']:5.0f}% | "
              f"{res['numpy']['gflops']:9.1f} | {f('torch_loop')} {f('torch_vmap')} | "
              f"{res['cpu']['gflops'] / best_torch:10.2f} {res['cpu']['timing']['others']:6.2f}", flush=True)
    one_thread.close()
    load1 = os.getloadavg()
    print(f"load average (1, 5, 15 min) at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps({"rows": rows, "machine": platform.platform(), "per_core": args.per_core,
                                                       "loadavg_start": load0, "loadavg_end": load1}, indent=1))
    if args.figure:
        _figure(rows, ROOT / "figures" / "train_throughput.png")
    return 0


def _figure(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4.2))
    labels = [f"{'-'.join(map(str, r['widths']))}\nB={r['batch']} R={r['replicas']}" for r in rows]
    x = np.arange(len(rows))
    series = [("GEMM limit", [r["gemm_gflops"] for r in rows])]
    for k, lab in (("cpu", "sdeverify cpu"), ("numpy", "NumPy reference"), ("torch_loop", "torch loop"),
                   ("torch_vmap", "torch vmap")):
        if all(r[k] for r in rows):
            series.append((lab, [r[k]["gflops"] for r in rows]))
    w = 0.8 / len(series)
    for i, (lab, v) in enumerate(series):
        ax.bar(x + (i - len(series) / 2 + 0.5) * w, v, w, label=lab)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set(ylabel="GFLOP/s (float32, fwd+bwd+update)", title="trainer throughput, 2 CPU cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())
