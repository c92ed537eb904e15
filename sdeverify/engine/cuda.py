"""The numba.cuda engine: one GPU thread per path, the same maths and the same draws.

Every thread runs one path through all steps with its state in local memory, draws its
Philox words and normals from the *same source* as the CPU engine (:mod:`sdeverify.rng`,
compiled with ``cuda.jit(device=True)``; ``cuda.clz`` for the leading-zero count), applies
each optimizer's update ``m = a m + b g, x = x − γ m`` and writes the observables of its path
at the recorded steps.  The host then folds those values into per-block (count, mean, M2)
accumulators in path order — the same canonical reduction as the CPU engine — so results
merge with CPU shards and agree with the CPU engine up to floating-point rounding (the GPU
contracts multiply-adds into FMAs).

Divergence: a path stops at the first step where some |x_i| exceeds the spec's bound or is
not finite, as on the CPU.  An observable that raises on the device cannot be caught there
(CUDA has no exceptions); :func:`sdeverify.engine.probe.probe` runs every function once at
x0 on the host first.

Limits: float64 only; problem, noise, loss and observable functions must be written with
scalar loops and ``math``/``numpy`` scalar functions (as the built-in problems are), since
``cuda.jit`` compiles their Python source; memory for observable values is
n_opt × n_rec × n_obs × paths × 8 bytes on the device.

Without a GPU this module imports fine; :func:`run` raises a clear error, unless the CUDA
simulator is on (``NUMBA_ENABLE_CUDASIM=1``), where it runs — slowly — for tests.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from .. import config, cuda_arch, rng
from ..compile_lock import compile_once
from ..observables import LOSS, SQNORM, USER0, welford
from .output import EngineOutput

try:  # a module global, so that the CUDA simulator can swap it inside kernels
    from numba import cuda
except Exception:  # pragma: no cover - depends on the install
    cuda = None

THREADS_PER_BLOCK = 128
#: Threads per block under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).  The simulator
#: runs the threads of a block as concurrent Python threads that share module globals; a
#: floating-point warning raised in one (e.g. overflow on a diverging path) inserts
#: ``__warningregistry__`` into those globals while another thread iterates them, which
#: crashes the launch at random.  Blocks run one after another, so one thread per block makes
#: the simulated launch serial and deterministic.
SIM_THREADS_PER_BLOCK = 1
_KERNELS: dict = {}


class CudaUnavailable(RuntimeError):
    """backend='cuda' was asked for but no usable GPU, driver or numba.cuda is present."""


def _cuda():
    if cuda is None:  # pragma: no cover - depends on the install
        raise CudaUnavailable("backend='cuda' needs numba's CUDA support: "
                           "pip install 'sdeverify[cuda]'")
    if not cuda.is_available():
        raise CudaUnavailable("backend='cuda': no usable CUDA GPU or driver found "
                           "(set NUMBA_ENABLE_CUDASIM=1 to run on Numba's CUDA simulator)")
    return cuda


def require() -> None:
    """Raise :class:`CudaUnavailable` (one clear line) unless a GPU, or the simulator, can run."""
    _cuda()


def _device_rng():
    """Philox and the draw transforms of :mod:`sdeverify.rng`, compiled for the device."""
    def select(c, a, b):
        return a if c else b

    def clz64(v):  # via 32-bit halves: the simulator's clz only handles 32-bit values
        hi = np.uint32(v >> np.uint64(32))
        lo = np.uint32(v & np.uint64(0xFFFFFFFF))
        n = cuda.clz(hi) if hi != 0 else 32 + cuda.clz(lo)
        return np.uint64(n)

    dev = cuda.jit(device=True)
    prim = dict(_select=dev(select), _clz64=dev(clz64), _sqrt=math.sqrt)
    spec = lambda f, name: dev(rng.specialise(f, name, **prim))
    return (dev(rng.philox4x32_py), spec(rng.normal_pair64_py, "normal_pair64_cuda"),
            spec(rng.uniform64_py, "uniform64_cuda"), spec(rng.rademacher64_py, "rademacher64_cuda"))


def _user_chain(funcs):
    dev = cuda.jit(device=True)

    def none(u, x):
        return math.nan

    ev = dev(none)
    for idx, f in enumerate(funcs):
        ev = _link(dev, ev, dev(f.py_func), idx)
    return ev


def _link(dev, prev, f, idx):
    def ev(u, x):
        if u == idx:
            return f(x)
        return prev(u, x)
    return dev(ev)


def _both(dev, grad, noise, oracle):
    """Device function ``both(x, p, xi, g, v)``: the problem's ``oracle`` when it has one, else
    ``grad`` then ``noise`` (one oracle call, as on the CPU)."""
    if oracle is not None:
        return dev(oracle.py_func)

    def both(x, p, xi, g, v):
        grad(x, p, g)
        noise(x, p, xi, v)
    return dev(both)


def _make_kernel(problem, user_funcs, n_opt: int, n_calls: int):
    dev = cuda.jit(device=True)
    philox, normal_pair, uniform, rademacher = _device_rng()
    grad, noise, loss = dev(problem.grad.py_func), dev(problem.noise.py_func), dev(problem.loss.py_func)
    both = _both(dev, grad, noise, getattr(problem, "oracle", None))
    user = _user_chain(user_funcs)
    D, ND, NOPT = problem.dim, problem.n_draws, n_opt
    ROWS = rng.n_rows(ND)
    NORMAL, RADEMACHER = rng.NORMAL, rng.RADEMACHER
    MASK32 = rng.MASK32
    f64 = numba.float64

    U16, U32 = np.uint64(16), np.uint64(32)

    @cuda.jit(device=True)
    def draws(kind, k0, k1, path, step, stream, z):
        c1 = np.uint64(step) & MASK32
        p = np.uint64(path)
        c2 = p & MASK32
        c3 = ((np.uint64(stream) & MASK32) + ((p >> U32) << U16)) & MASK32   # rng module doc
        for b in range(ROWS // 4):
            w0, w1, w2, w3 = philox(np.uint64(b), c1, c2, c3, k0, k1)
            if kind == NORMAL:
                z[4 * b], z[4 * b + 1] = normal_pair(w0, w1)
                z[4 * b + 2], z[4 * b + 3] = normal_pair(w2, w3)
            elif kind == RADEMACHER:
                z[4 * b], z[4 * b + 1] = rademacher(w0), rademacher(w1)
                z[4 * b + 2], z[4 * b + 3] = rademacher(w2), rademacher(w3)
            else:
                z[4 * b], z[4 * b + 1] = uniform(w0), uniform(w1)
                z[4 * b + 2], z[4 * b + 3] = uniform(w2), uniform(w3)

    @cuda.jit(device=True)
    def observe(code, x, params):
        if code >= 0:
            return x[code]
        if code == LOSS:
            return loss(x, params)
        if code == SQNORM:
            s = 0.0
            for i in range(D):
                s += x[i] * x[i]
            return s
        return user(USER0 - code, x)

    @cuda.jit
    def kernel(x0, m0, params, sigma, A, B, Gamma, rec_steps, codes, k0, k1, path0, n_paths,
               kind, r1, r2, bound, vals, x_final, m_final, div_step, states, store):
        ip = cuda.grid(1)
        if ip >= n_paths:
            return
        x = cuda.local.array((NOPT, D), f64)
        m = cuda.local.array((NOPT, D), f64)
        g = cuda.local.array(D, f64)
        v = cuda.local.array(D, f64)
        z1 = cuda.local.array(ROWS, f64)
        z2 = cuda.local.array(ROWS, f64)
        alive = cuda.local.array(NOPT, numba.boolean)
        path = path0 + ip
        for j in range(NOPT):
            alive[j] = True
            div_step[j, ip] = -1
            for i in range(D):
                x[j, i] = x0[i]
                m[j, i] = m0[j, i]
        n_rec = rec_steps.shape[0]
        r = 0
        for k in range(-1, A.shape[1]):
            if k >= 0:
                draws(kind, k0, k1, path, k, 0, z1)
                if n_calls == 2:
                    draws(kind, k0, k1, path, k, 1, z2)
                for j in range(NOPT):
                    if not alive[j]:
                        continue
                    xj = x[j]
                    both(xj, params, z1[:ND], g, v)     # the problem's n_draws, not ROWS
                    if n_calls == 2:
                        for i in range(D):
                            g[i] += sigma * r1 * v[i]
                        noise(xj, params, z2[:ND], v)
                        for i in range(D):
                            g[i] += sigma * r2 * v[i]
                    else:
                        for i in range(D):
                            g[i] += sigma * v[i]
                    out = False
                    for i in range(D):
                        m[j, i] = A[j, k] * m[j, i] + B[j, k] * g[i]
                        x[j, i] -= Gamma[j, k] * m[j, i]
                        ax = abs(x[j, i])         # not finite (inf too when bound = inf)
                        if not (ax <= bound and ax < math.inf):
                            out = True
                    if out:
                        alive[j] = False
                        div_step[j, ip] = k + 1
            if r < n_rec and rec_steps[r] == k + 1:
                for j in range(NOPT):
                    for o in range(codes.shape[0]):
                        vals[j, r, o, ip] = observe(codes[o], x[j], params) if alive[j] else math.nan
                    if store:
                        for i in range(D):
                            states[j, r, ip, i] = x[j, i] if alive[j] else math.nan
                r += 1
        for j in range(NOPT):
            for i in range(D):
                x_final[j, ip, i] = x[j, i]
                m_final[j, ip, i] = m[j, i]

    return kernel


@numba.njit(cache=True)
def fold(vals, div_step, rec_steps, block_stats, block_diff, block_bad, block):
    """Welford per block of paths, in path order, from per-path values: the canonical
    reduction of the CPU engine.  A path counts at recorded step s while it has not diverged
    (``div_step`` < 0 or > s); its non-finite values are counted in ``block_bad``."""
    n_opt, n_rec, n_obs, n_paths = vals.shape
    for ip in range(n_paths):
        blk = ip // block
        for r in range(n_rec):
            s = rec_steps[r]
            for j in range(n_opt):
                dj = div_step[j, ip]
                if dj >= 0 and dj <= s:
                    continue
                d0 = div_step[0, ip]
                alive0 = d0 < 0 or d0 > s
                for o in range(n_obs):
                    v = vals[j, r, o, ip]
                    if not np.isfinite(v):
                        block_bad[blk, j, r, o, 0] += 1.0
                        continue
                    welford(block_stats[blk, j, r, o], v)
                    v0 = vals[0, r, o, ip]
                    if alive0 and np.isfinite(v0):
                        welford(block_diff[blk, j, r, o], v - v0)


def kernel_for(spec):
    """The compiled-on-first-launch kernel of a :class:`~sdeverify.engine.spec.RunSpec`'s
    problem, user observables, optimizer count and noise calls (built once per process)."""
    n_opt = spec.a.shape[0]
    key = (spec.problem.grad, spec.problem.noise, spec.problem.loss,
           getattr(spec.problem, "oracle", None), spec.problem.dim,
           spec.problem.n_draws, tuple(id(f) for f in spec.user_funcs), n_opt, spec.n_calls)
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernel(spec.problem, spec.user_funcs, n_opt, spec.n_calls)
    return _KERNELS[key]


def launch_args(spec, to_device, empty) -> tuple:
    """The kernel's arguments for ``spec``, in order: inputs through ``to_device(array)``,
    outputs ``empty(shape, dtype)`` (``cuda.to_device``/``cuda.device_array`` for a launch;
    ``benchmarks/gpu_static.py`` types the kernel's signature from host arrays)."""
    n_opt, n_rec, n_obs = spec.a.shape[0], spec.record.shape[0], spec.codes.shape[0]
    states = (np.full((n_opt, n_rec, spec.paths, spec.problem.dim), np.nan) if spec.store_states
              else np.zeros((1, 1, 1, 1)))
    return (to_device(spec.x0), to_device(spec.m0), to_device(spec.problem.params),
            spec.sigma, to_device(spec.a), to_device(spec.b), to_device(spec.gamma),
            to_device(spec.record), to_device(spec.codes), spec.k0, spec.k1,
            spec.path_offset, spec.paths, spec.problem.draw_kind, spec.r1, spec.r2, spec.bound,
            empty((n_opt, n_rec, n_obs, spec.paths), np.float64),
            empty((n_opt, spec.paths, spec.problem.dim), np.float64),
            empty((n_opt, spec.paths, spec.problem.dim), np.float64),
            empty((n_opt, spec.paths), np.int64), to_device(states), spec.store_states)


def launch_config(paths: int, limits=None) -> tuple[int, int]:
    """``(blocks, threads per block)`` for ``paths`` paths, one thread each, validated against
    the GPU's limits (:func:`sdeverify.cuda_arch.check_launch`; ``limits``: an architecture
    name or :class:`~sdeverify.cuda_arch.ArchLimits`, default the current GPU's)."""
    tpb = SIM_THREADS_PER_BLOCK if numba.config.ENABLE_CUDASIM else THREADS_PER_BLOCK
    blocks = (paths + tpb - 1) // tpb
    cuda_arch.check_launch(limits, tpb, 0, grid=(blocks, 1, 1))
    return blocks, tpb


def run(spec) -> EngineOutput:
    """Run a validated :class:`~sdeverify.engine.spec.RunSpec` on the GPU (one thread per path)."""
    _cuda()
    kernel = kernel_for(spec)
    out = EngineOutput.allocate(spec)
    blocks, tpb = launch_config(spec.paths)
    args = launch_args(spec, cuda.to_device, lambda shape, dt: cuda.device_array(shape, dtype=dt))
    kernel[blocks, tpb](*args)
    d_vals, d_x, d_m, d_div, d_states = args[-6:-1]
    vals = d_vals.copy_to_host()
    out.x_final[:] = d_x.copy_to_host()
    out.m_final[:] = d_m.copy_to_host()
    out.div_step[:] = d_div.copy_to_host()
    if spec.store_states:
        out.states[:] = d_states.copy_to_host()
    fold(vals, out.div_step, spec.record, out.block_stats, out.block_diff,
         out.block_bad, config.BLOCK)
    return out


compile_once(globals())     # one compile per machine (sdeverify/compile_lock.py)
