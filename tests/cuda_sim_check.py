"""Run by tests/test_cuda.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the simulator must
be chosen before Numba is imported).  The CUDA engine against the NumPy reference backend
(``backend="numpy"``, bitwise the CPU engine).  Prints one line per case; exits 1 on any
mismatch."""
import importlib.util
import math
import sys
from pathlib import Path

import numba
import numpy as np

import sdeverify as sv
from sdeverify.engine import cuda as cuda_engine
from sdeverify.problems import SVAG, CosineWell, DiagonalNet, LinearRegression, Quadratic, Valley

_spec = importlib.util.spec_from_file_location(
    "gpu_static", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_static.py")
gpu_static = sys.modules["gpu_static"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_static)

bad = 0
# (problem, threads per simulated block): 1 (the engine's simulator default, serial) puts the
# 40 paths in 40 blocks; 16 gives multi-thread blocks (3, the last one partial) so the
# thread/block index arithmetic and the bounds check are exercised too.  Only non-diverging
# cases use 16: the simulator's threads race on module globals when a warning is raised.
# Valley, DiagonalNet and the README's quartic are problems whose kernels once did not compile
# for a GPU (benchmarks/gpu_static.py); DiagonalNet with n = 2 draws (a draw buffer of 4 rows)
# takes its draw count from the shape of the draws it is given.
cases = [(Quadratic(np.diag([1.0, 2.0]), center=[1, 0]), 1), (Quadratic(np.diag([1.0, 2.0])), 16),
         (CosineWell(3, noise_dist="rademacher"), 1), (SVAG(CosineWell(2), 3.0), 1),
         (LinearRegression.generate(n=16, d=2, batch_size=3), 1),
         (Valley(sx2=(0.5, 0.2), sy2=(1.0, 0.1)), 1), (DiagonalNet.generate(n=2, D=3, sparsity=1), 1),
         (gpu_static.readme_quartic(), 1)]
for P, tpb in cases:
    cuda_engine.SIM_THREADS_PER_BLOCK = tpb
    kw = dict(steps=6, paths=40, sigma=1.0, seed=3, record=[0, 2, 6],
              observables=["loss", "sqnorm", "x0"], store_states=True)
    opts = [sv.SGD(0.05), sv.SGDM(0.05, 0.9), sv.HeavyBall(0.01, 0.8, 0.3)]
    g = sv.simulate(P, opts, np.full(P.dim, 0.5), backend="cuda", **kw)
    c = sv.simulate(P, opts, np.full(P.dim, 0.5), backend="numpy", **kw)
    dev = max(np.abs(g.x_final - c.x_final).max(), np.abs(g.states - c.states).max(),
              np.nanmax(np.abs(g.mean - c.mean)), np.abs(g.paired(1, "loss")[0] - c.paired(1, "loss")[0]).max())
    ok = dev <= 1e-12 and np.array_equal(g.count, c.count)
    bad += not ok
    print(f"{P.name} ({tpb} threads/block): max deviation cuda-sim vs the NumPy reference {dev:.3g} "
          f"{'ok' if ok else 'MISMATCH'}")
cuda_engine.SIM_THREADS_PER_BLOCK = 1
# divergence is detected and reported on the GPU path too
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    r = sv.simulate(Quadratic(np.diag([1.0, 20.0])), [sv.SGD(1.25)], [1.0, 1.0], steps=300, paths=20,
                    sigma=0.1, backend="cuda")
div = r.divergence
ok = bool(div) and div[0].fraction == 1.0 and any(issubclass(x.category, sv.DivergenceWarning) for x in w)
bad += not ok
print(f"divergence reported: {'ok' if ok else 'MISSING'}")
# 64-bit path indices: a shard at 2**32 draws what the CPU engine draws there, not path 0's
P = Quadratic(np.diag([1.0, 2.0]))
kw = dict(steps=4, paths=6, sigma=1.0, seed=3, record=[4], store_states=True)
g = sv.simulate(P, [sv.SGD(0.1)], [0.5, 0.5], backend="cuda", path_offset=2 ** 32 + 256, **kw)
c = sv.simulate(P, [sv.SGD(0.1)], [0.5, 0.5], backend="numpy", path_offset=2 ** 32 + 256, **kw)
c0 = sv.simulate(P, [sv.SGD(0.1)], [0.5, 0.5], backend="numpy", path_offset=256, **kw)
dev = np.abs(g.states - c.states).max()
ok = dev <= 1e-12 and not np.any(c0.states == g.states)
bad += not ok
print(f"paths beyond 2**32: deviation {dev:.3g}, distinct from the low paths {'ok' if ok else 'MISMATCH'}")


# the divergence bound and non-finite observables: the same paths, steps and counts as the CPU
@numba.njit
def log_x0(x):
    return math.log(x[0]) if x[0] > 0 else math.nan


kw = dict(steps=30, paths=12, sigma=0.5, seed=1, record=[0, 10, 30], divergence_bound=50.0,
          observables=["x0", log_x0], on_divergence="ignore")
opts = [sv.SGD(2.2), sv.SGD(0.5)]
g = sv.simulate(Quadratic(np.eye(2)), opts, [1.0, 1.0], backend="cuda", **kw)
c = sv.simulate(Quadratic(np.eye(2)), opts, [1.0, 1.0], backend="numpy", **kw)
ok = (np.array_equal(g.div_step, c.div_step) and np.array_equal(g.nonfinite, c.nonfinite)
      and np.array_equal(g.count, c.count) and bool(g.divergence) and g.nonfinite.sum() > 0)
bad += not ok
print(f"divergence bound and non-finite counts as in the NumPy reference: {'ok' if ok else 'MISMATCH'}")
sys.exit(1 if bad else 0)
