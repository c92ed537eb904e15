"""Every CUDA kernel of sdeverify compiled for real GPUs, with no GPU: NVVM to PTX, ptxas to SASS.

    python benchmarks/gpu_static.py                         # sm_80 and sm_90, plain table
    python benchmarks/gpu_static.py --arch sm_90 --markdown # one architecture, Markdown table
    python benchmarks/gpu_static.py --arch device           # the current GPU's compute
                                                            # capability and queried limits
    python benchmarks/gpu_static.py --arch device --driver  # on a GPU without ptxas: compiled
                                                            # by numba-cuda, read from the driver

Needs the ``gpu-build`` extra (``numba-cuda``, ``nvidia-cuda-nvcc-cu12`` for libNVVM and
``ptxas``, ``nvidia-cuda-nvrtc-cu12``); numba-cuda finds the pip-installed libNVVM by itself
(``cuda.pathfinder``), ``ptxas`` is looked up on PATH, then in the ``nvidia.cuda_nvcc`` wheel.
Neither needs a driver: ``numba.cuda.compile_ptx`` runs without one (no flag needed,
``NUMBA_ENABLE_CUDASIM`` must be unset), except that numba-cuda asks the driver for the compute
capability of kernels' device-function callees (the engine's); :class:`_OfflineDevice` answers
with the target architecture's.

Kernels (:func:`kernels`), each with the signature its launch code really uses:

* the engine's kernel (:mod:`sdeverify.engine.cuda`) for every built-in problem type and the
  README's user NGOS "quartic", with SGD + SGDM (two optimizers); the signature is typed by
  ``numba.typeof`` from the very argument tuple the engine launches with
  (:func:`sdeverify.engine.cuda.launch_args`);
* the trainer's batched GEMM (:func:`sdeverify.train.cuda.make_gemm`): both GPU tiles, every
  (transpose, epilogue, activation) combination the trainer launches — forward with ReLU,
  tanh or no activation, weight gradient ``[A, 1]ᵀ dZ``, input gradient with the ReLU or tanh
  derivative — in float32 and float64;
* its pointwise kernels (:func:`sdeverify.train.cuda.make_pointwise`): gather, the loss
  gradient (cross-entropy and squared), the per-model reduction and the optimizer update.

For each kernel and architecture: registers per thread, spill stores / loads and stack frame
(bytes), static and dynamic shared memory, threads per block of the launch code, and from
:mod:`sdeverify.cuda_arch` the resident blocks per SM and theoretical occupancy.
:func:`problems` lists what the project's rules forbid (spills, a stack frame without an
:data:`ALLOW` entry saying why, a launch that does not fit); ``tests/test_gpu_static.py`` runs it.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdeverify import cuda_arch  # noqa: E402

ARCHS = ("sm_80", "sm_90")

#: Kernels allowed to spill registers (name prefix -> why): each entry is a measured cost
#: that has not been removed yet, said in the table's notes.
SPILLS = {
    "engine diagonal_net": "d = 20 with two optimizers: the engine unrolls its per-optimizer "
                           "loop (range(NOPT), a compile-time bound) over 2 x 20 coordinates of "
                           "state; 255 registers, 268-292 bytes spilled (a d = 20 quadratic with "
                           "two optimizers spills 120-132 bytes too). A run-time loop bound "
                           "removes the spill (124 registers) at a 656-byte stack frame; its "
                           "speed on a GPU is unmeasured, so the change waits for a device",
}

#: Kernels allowed a stack frame (name prefix -> why).
ALLOW = {
    "engine ": "per-path state in local memory by design: x, m (n_opt x dim), g, v and the draw "
               "rows are cuda.local arrays indexed by run-time loops; one thread per path",
}


#: Kernels that do not compile for a GPU (name prefix -> why).  Found by this tool; each is a
#: defect to fix in the problem's code, after which its entry must go (:func:`problems`
#: reports a listed kernel that compiles).  The simulator runs them, since it runs Python.
KNOWN_FAILURES: dict[str, str] = {}


@dataclasses.dataclass
class Kernel:
    """One kernel as launched: its Python function, signature and launch shape."""
    name: str
    dtype: str
    pyfunc: object
    signature: tuple
    threads: int
    dynamic_shared: int = 0
    max_registers: int | None = None


@dataclasses.dataclass
class Row:
    """ptxas's resource usage of one kernel on one architecture, and its occupancy."""
    kernel: str
    dtype: str
    arch: str
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    static_shared: int | None = None
    dynamic_shared: int = 0
    threads: int = 0
    blocks_per_sm: int | None = None
    occupancy: float | None = None
    limiter: str = ""
    error: str = ""
    seconds: float = 0.0


# ---- tools ----------------------------------------------------------------------------------
def ptxas_path() -> str | None:
    """``ptxas`` on PATH, else the one of the ``nvidia-cuda-nvcc-cu12`` wheel, else None."""
    found = shutil.which("ptxas")
    if found:
        return found
    try:
        import nvidia.cuda_nvcc as nvcc
    except ImportError:
        return None
    for root in getattr(nvcc, "__path__", []):
        p = Path(root) / "bin" / "ptxas"
        if p.exists():
            return str(p)
    return None


def unavailable() -> str | None:
    """Why kernels cannot be compiled and assembled here (None: they can)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM is set: the simulator cannot compile to PTX"
    if importlib.util.find_spec("numba_cuda") is None:
        return "numba-cuda is not installed (pip install 'sdeverify[gpu-build]')"
    if ptxas_path() is None:
        return "ptxas not found (pip install 'sdeverify[gpu-build]': nvidia-cuda-nvcc-cu12)"
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
    except Exception as e:
        return f"libNVVM not found (pip install 'sdeverify[gpu-build]'): {type(e).__name__}: {e}"
    try:   # the toolchain itself (numba-cuda 0.30.4 fails on any kernel with numpy >= 2.5)
        from numba import cuda, float64
        cuda.compile_ptx(_trivial, (float64[::1],), cc=(8, 0))
    except Exception as e:
        return (f"numba-cuda cannot compile a trivial kernel here: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[-1][:200]}")
    return None


def _trivial(a):
    a[0] = 2.0 * a[0]


# ---- the kernels ----------------------------------------------------------------------------
def readme_quartic():
    """The README's user NGOS "quartic", executed from the README's own code block."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if "quartic = sv.problems.NGOS(" in block:
            src = block.split("res = sv.simulate")[0]
            ns: dict = {}
            exec(compile(src, "README.md", "exec"), ns)
            return ns["quartic"]
    raise RuntimeError("README.md has no code block defining the user NGOS 'quartic'")


def engine_problems() -> list:
    """One instance of every built-in problem type (the engine compiles one kernel per type,
    dimension and draw count; SVAG makes two noise calls per step), and the README's quartic."""
    from sdeverify.problems import (SVAG, CosineWell, DiagonalNet, LinearRegression, Quadratic,
                                    Sphere, Valley)
    return [Quadratic(np.diag([1.0, 2.0, 3.0])), CosineWell(4),
            LinearRegression.generate(n=64, d=3, batch_size=4), SVAG(CosineWell(2), 4.0),
            Valley(), Sphere(), DiagonalNet.generate(), readme_quartic()]


def engine_kernels() -> list[Kernel]:
    import numba

    import sdeverify as sv
    from sdeverify.engine import cuda as ec
    from sdeverify.engine.spec import make_spec
    out = []
    for P in engine_problems():
        spec = make_spec(P, [sv.SGD(0.01), sv.SGDM(0.01, 0.9)], np.full(P.dim, 0.5), steps=4,
                         paths=256, sigma=1.0, observables=["loss", "sqnorm"])
        args = ec.launch_args(spec, lambda a: a, lambda shape, dt: np.empty(shape, dt))
        sig = tuple(numba.typeof(a) for a in args)
        out.append(Kernel(f"engine {P.name} (d={P.dim}, {spec.n_calls} noise call(s))", "float64",
                          ec.kernel_for(spec).py_func, sig, ec.THREADS_PER_BLOCK))
    return out


#: Types of the trainer kernels' parameters, as the launch code in sdeverify/train/cuda.py
#: passes them: "dt" the trainer's dtype (arrays and ``dtype.type(...)`` scalars), "i64"
#: Python ints and int64 arrays, "f64" Python floats and float64 arrays; "[]" a 1-D array.
#: Every parameter is listed: a renamed or added one is an error here, not a wrong type.
_I = "i64"
TRAINER_PARAMS = {
    "gemm": dict(a="dt[]", offa=_I, saz=_I, zmoda=_I, lda=_I, b="dt[]", offb=_I, sbz=_I, ldb=_I,
                 c="dt[]", offc=_I, scz=_I, ldc=_I, e="dt[]", offe=_I, sez=_I, nm=_I, nn=_I,
                 nk=_I, ones_row=_I, accumulate=_I),
    # make_gemm(split_k=True): the same plus the two-level z of split-K products
    "gemm_split": dict(a="dt[]", offa=_I, saz=_I, zmoda=_I, lda=_I, b="dt[]", offb=_I, sbz=_I,
                       ldb=_I, c="dt[]", offc=_I, scz=_I, ldc=_I, e="dt[]", offe=_I, sez=_I,
                       nm=_I, nn=_I, nk=_I, ones_row=_I, accumulate=_I, zs=_I, ska=_I,
                       skb=_I),
    "gather": dict(X="dt[]", y="i64[]", idx="i64[]", off=_I, n_rows=_I, d=_I, a0="dt[]",
                   y0="i64[]"),
    "loss_grad": dict(zl="dt[]", offz=_I, labels="i64[]", ymod=_I, sy=_I, nb=_I, nc=_I,
                      denom="dt", dz="dt[]", offd=_I, losses="f64[]", correct="f64[]"),
    "reduce": dict(losses="f64[]", correct="f64[]", nb=_I, scale="f64", out_loss="f64[]",
                   off_loss=_I, out_correct="f64[]", off_correct=_I, accumulate=_I),
    "update": dict(w="dt[]", mom="dt[]", g="dt[]", n_slots=_I, r0="dt", r1="dt", lam="dt",
                   a="dt[]", b="dt[]", gamma="dt[]", s=_I, S=_I, R=_I, P=_I, M=_I),
}


def trainer_signature(kind: str, pyfunc, dtype) -> tuple:
    """The signature of a trainer kernel from its parameter names (:data:`TRAINER_PARAMS`)."""
    from numba import types as T
    scalars = {"dt": T.float32 if np.dtype(dtype) == np.float32 else T.float64,
               "i64": T.int64, "f64": T.float64}
    names = list(inspect.signature(pyfunc).parameters)
    if set(names) != set(TRAINER_PARAMS[kind]):
        raise KeyError(f"the {kind} kernel's parameters {names} differ from TRAINER_PARAMS"
                       f"[{kind!r}] {list(TRAINER_PARAMS[kind])}: update the table")
    sig = []
    for p in names:
        t = TRAINER_PARAMS[kind][p]
        base = scalars[t.rstrip("[]")]
        sig.append(T.Array(base, 1, "C") if t.endswith("[]") else base)
    return tuple(sig)


#: The (transposes, epilogue, activation) combinations the trainer launches.
def gemm_variants():
    from sdeverify.train import cuda as tc
    return [("forward relu", False, False, tc.EPI_BIAS_ACT, tc.RELU),
            ("forward tanh", False, False, tc.EPI_BIAS_ACT, tc.TANH),
            ("forward logits", False, False, tc.EPI_BIAS_ACT, tc.IDENTITY),
            ("weight grad", True, False, tc.EPI_NONE, tc.IDENTITY),
            ("input grad relu", False, True, tc.EPI_DERIV, tc.RELU),
            ("input grad tanh", False, True, tc.EPI_DERIV, tc.TANH)]


def trainer_kernels(dtypes=("float32", "float64"), tiles=None, variants=None) -> list[Kernel]:
    from sdeverify.train import cuda as tc
    from sdeverify.train.models import LOSSES
    out = []
    for dt in dtypes:
        npdt = np.dtype(dt)
        for size in tiles or tc.GPU_TILES:
            tile = tc.GPU_TILES[size]
            regs = tc.GPU_MAX_REGISTERS[size] if npdt == np.float32 else None
            for label, ta, tb, epi, act in gemm_variants():
                if variants is not None and label not in variants:
                    continue
                k = tc.make_gemm(npdt, tile, ta, tb, epi, act, regs)
                out.append(Kernel(f"gemm {size} {tile} {label}", dt, k.py_func,
                                  trainer_signature("gemm", k.py_func, npdt), k.threads,
                                  k.shared_bytes, regs))
        for loss, code in LOSSES.items():
            kinds = ("gather", "loss_grad", "reduce", "update") if code == 0 else ("loss_grad",)
            ks = dict(zip(("gather", "loss_grad", "reduce", "update"),
                          tc.make_pointwise(npdt, code, tc.GPU_TPB)))
            for kind in kinds:
                name = f"{kind} ({loss})" if kind == "loss_grad" else kind
                shared = 16 * tc.GPU_TPB if kind == "reduce" else 0
                out.append(Kernel(name, dt, ks[kind].py_func,
                                  trainer_signature(kind, ks[kind].py_func, npdt), tc.GPU_TPB, shared))
    return out


def conv_kernels(dtypes=("float32", "float64"), tiles=None, variants=None,
                 pointwise: bool = True) -> list[Kernel]:
    """The ResNet trainer's kernels (:mod:`sdeverify.train.conv_cuda`): the GEMM variants it
    adds to the MLP's (:data:`~sdeverify.train.conv_cuda.GEMM_VARIANTS` not launched by the
    MLP trainer) with the MLP's two tiles, every variant with its narrow tiles
    (:data:`~sdeverify.train.conv_cuda.NARROW_TILES`, ``tiles`` names which), and its gather
    / im2col / col2im (+ shortcut adjoint) / BatchNorm (+ shortcut, ReLU; + ReLU adjoint) /
    pool / split-K sum / update kernels, with the signatures of its launch code."""
    from sdeverify.train import conv_cuda as cc
    from sdeverify.train import cuda as tc
    mlp = {(ta, tb, epi, act) for _, ta, tb, epi, act in gemm_variants()}
    out = []
    for dt in dtypes:
        npdt = np.dtype(dt)
        for size in cc.CONV_GPU_TILES if tiles is None else tiles:
            tile = cc.CONV_GPU_TILES[size]
            regs = tc.GPU_MAX_REGISTERS.get(size) if npdt == np.float32 else None
            for label, ta, tb, epi, act, split in cc.GEMM_VARIANTS:
                if ((ta, tb, epi, act) in mlp and not split and size in tc.GPU_TILES) or (
                        variants is not None and label not in variants):
                    continue
                k = tc.make_gemm(npdt, tile, ta, tb, epi, act, regs, split_k=split)
                kind = "gemm_split" if split else "gemm"
                out.append(Kernel(f"gemm {size} {tile} {label}", dt, k.py_func,
                                  trainer_signature(kind, k.py_func, npdt), k.threads,
                                  k.shared_bytes, regs))
        if pointwise:
            for name, fn, sig, threads, shared, regs in cc.static_kernels(npdt, tc.GPU_TPB):
                out.append(Kernel(f"conv {name}", dt, fn, sig, threads, shared, regs))
    return out


def kernels() -> list[Kernel]:
    """Every CUDA kernel the package can launch (engine, MLP trainer, ResNet trainer)."""
    return engine_kernels() + trainer_kernels() + conv_kernels()


# ---- compile, assemble, parse ---------------------------------------------------------------
_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "static_shared": re.compile(r"(\d+) bytes smem"),
}


def parse_ptxas(text: str) -> dict:
    """Registers, stack, spills and static shared memory from ``ptxas -v`` output (one kernel)."""
    out = {}
    for key, rx in _PTXAS.items():
        m = rx.search(text)
        out[key] = int(m.group(1)) if m else 0
    if not _PTXAS["registers"].search(text):
        raise RuntimeError(f"no register count in ptxas output:\n{text}")
    return out


def assemble(ptx: str, arch: str, max_registers: int | None = None) -> str:
    """``ptxas -v`` output (stderr/stdout) of ``ptx`` assembled for ``arch`` ("sm_90")."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        cmd = [ptxas_path(), "-v", f"--gpu-name={arch}", str(src), "-o", str(Path(d) / "k.cubin")]
        if max_registers:
            cmd.insert(1, f"--maxrregcount={max_registers}")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode:
            raise RuntimeError(f"ptxas failed for {arch}: {r.stderr.strip()}")
        return r.stdout + r.stderr


class _OfflineDevice:
    """Stands in for the current device while compiling without a driver: numba-cuda compiles
    a kernel's ``cuda.jit(device=True)`` callees for ``get_current_device().compute_capability``
    (which needs a driver) — here the target architecture's.  A callee compiled once is
    reused for the other architecture (its overloads are keyed by argument types only); the
    kernel itself is compiled and assembled for each architecture."""

    def __init__(self, cc: tuple[int, int]):
        self.compute_capability = cc

    def __enter__(self):
        from numba.cuda import dispatcher
        self._saved = dispatcher.get_current_device
        if unavailable_driver():
            dispatcher.get_current_device = lambda: self
        return self

    def __exit__(self, *exc):
        from numba.cuda import dispatcher
        dispatcher.get_current_device = self._saved


def unavailable_driver() -> bool:
    """True when numba.cuda has no usable driver (the usual case here: no GPU)."""
    from numba import cuda
    try:
        return not cuda.is_available()
    except Exception:
        return True


def _error(e: Exception) -> str:
    """First line of an exception, without object addresses (stable across runs)."""
    return re.sub(r" at 0x[0-9a-f]+", "", f"{type(e).__name__}: "
                  f"{str(e).strip().splitlines()[0][:200]}").replace("\x1b[1m", "")


def measure(k: Kernel, arch: str, lim=None) -> Row:
    """Compile ``k`` for ``arch`` ("sm_80", "sm_90"), assemble, and compute its occupancy
    against ``lim`` (default: the architecture's table)."""
    from numba import cuda
    row = Row(k.name, k.dtype, arch, dynamic_shared=k.dynamic_shared, threads=k.threads)
    cc = (int(arch[3:-1]), int(arch[-1]))
    t0 = time.perf_counter()
    try:
        with _OfflineDevice(cc):
            ptx, _ = cuda.compile_ptx(k.pyfunc, k.signature, cc=cc)
        info = parse_ptxas(assemble(ptx, arch, k.max_registers))
    except Exception as e:  # reported in the table and by problems()
        row.error = _error(e)
        row.seconds = time.perf_counter() - t0
        return row
    row.seconds = time.perf_counter() - t0
    for key, v in info.items():
        setattr(row, key, v)
    occ = cuda_arch.occupancy(lim or arch, k.threads, row.registers,
                              row.static_shared + row.dynamic_shared)
    row.blocks_per_sm, row.occupancy, row.limiter = occ.blocks_per_sm, occ.occupancy, occ.limiter
    return row


def measure_on_device(k: Kernel, lim) -> Row:
    """Compile ``k`` for the current GPU through numba-cuda's own path (NVVM, then the driver's
    JIT) and read its resources from the driver (``cuFuncGetAttribute``): registers, local
    memory per thread (stack + spills, not told apart), static shared memory.  Needs a GPU,
    not ptxas: the cross-check of the ptxas table on a real card."""
    from numba import cuda
    arch = f"sm_{lim.cc[0]}{lim.cc[1]}"
    row = Row(k.name, k.dtype, arch, dynamic_shared=k.dynamic_shared, threads=k.threads)
    t0 = time.perf_counter()
    try:
        opts = {"max_registers": k.max_registers} if k.max_registers else {}
        disp = cuda.jit(k.signature, **opts)(k.pyfunc)     # eager: one specialised overload

        def one(v):
            return next(iter(v.values())) if isinstance(v, dict) else v
        row.registers = one(disp.get_regs_per_thread())
        row.stack = one(disp.get_local_mem_per_thread())
        row.static_shared = one(disp.get_shared_mem_per_block())
        row.spill_stores = row.spill_loads = 0      # inside ``stack`` (local memory)
    except Exception as e:  # reported in the table and by problems()
        row.error = _error(e)
        row.seconds = time.perf_counter() - t0
        return row
    row.seconds = time.perf_counter() - t0
    occ = cuda_arch.occupancy(lim, k.threads, row.registers, row.static_shared + row.dynamic_shared)
    row.blocks_per_sm, row.occupancy, row.limiter = occ.blocks_per_sm, occ.occupancy, occ.limiter
    return row


def table(ks: list[Kernel], archs=ARCHS, lim=None, driver: bool = False) -> list[Row]:
    """Rows for every kernel and architecture (``driver``: through the current GPU's driver,
    :func:`measure_on_device`, instead of ptxas)."""
    if driver:
        return [measure_on_device(k, lim) for k in ks]
    return [measure(k, a, lim) for a in archs for k in ks]


def problems(rows: list[Row], allow: dict = ALLOW, lim=None,
             known: dict = KNOWN_FAILURES, spills: dict = SPILLS) -> list[str]:
    """What the rows break: a compile failure not in ``known`` (or a ``known`` one that now
    compiles), any spill, a stack frame without an ``allow`` entry, a launch configuration
    that does not fit the architecture."""
    bad = []
    for r in rows:
        where = f"{r.kernel} [{r.dtype}, {r.arch}]"
        listed = any(r.kernel.startswith(p) for p in known)
        if r.error:
            if not listed:
                bad.append(f"{where}: does not compile: {r.error}")
            continue
        if listed:
            bad.append(f"{where}: compiles now: remove its KNOWN_FAILURES entry")
        if (r.spill_stores or r.spill_loads) and not any(r.kernel.startswith(p) for p in spills):
            bad.append(f"{where}: spills {r.spill_stores} bytes stores / {r.spill_loads} loads")
        if r.stack and not any(r.kernel.startswith(p) for p in allow):
            bad.append(f"{where}: {r.stack} bytes stack frame, not in the allow-list")
        try:
            cuda_arch.check_launch(lim or r.arch, r.threads, r.static_shared + r.dynamic_shared,
                                   r.registers)
        except ValueError as e:
            bad.append(f"{where}: launch does not fit: {e}")
    return bad


# ---- output ---------------------------------------------------------------------------------
COLUMNS = ("kernel", "dtype", "arch", "regs", "spill st/ld", "stack B", "smem static+dyn B",
           "threads", "blocks/SM", "occupancy")


def cells(r: Row) -> tuple:
    if r.error:
        return (r.kernel, r.dtype, r.arch, "FAILS: " + r.error, "", "", "", str(r.threads), "", "")
    return (r.kernel, r.dtype, r.arch, str(r.registers), f"{r.spill_stores}/{r.spill_loads}",
            str(r.stack), f"{r.static_shared}+{r.dynamic_shared}", str(r.threads),
            str(r.blocks_per_sm), f"{r.occupancy:.0%} ({r.limiter})")


def render(rows: list[Row], markdown: bool = False) -> str:
    data = [COLUMNS] + [cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in data]
        lines.insert(1, "|" + "---|" * len(COLUMNS))
        return "\n".join(lines)
    w = [max(len(row[i]) for row in data) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip() for row in data)


def render_wide(rows: list[Row]) -> str:
    """A Markdown table with one row per kernel and the architectures side by side
    ("a / b" in each resource column, in the order of the architectures)."""
    archs = list(dict.fromkeys(r.arch for r in rows))
    by = {}
    for r in rows:
        by.setdefault((r.kernel, r.dtype), {})[r.arch] = r

    def col(rs, f):
        vals = [f(rs[a]) if a in rs else "-" for a in archs]
        return vals[0] if len(set(vals)) == 1 else " / ".join(vals)
    head = ("kernel", "dtype", "regs", "spill st/ld B", "stack B", "smem static+dyn B", "threads",
            "blocks/SM", "occupancy (limiter)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (kernel, dtype), rs in by.items():
        if any(r.error for r in rs.values()):
            err = next(r.error for r in rs.values() if r.error)
            lines.append(f"| {kernel} | {dtype} | does not compile: {err[:90]} |" + " |" * 6)
            continue
        lines.append("| " + " | ".join((
            kernel, dtype, col(rs, lambda r: str(r.registers)),
            col(rs, lambda r: f"{r.spill_stores}/{r.spill_loads}"), col(rs, lambda r: str(r.stack)),
            col(rs, lambda r: f"{r.static_shared}+{r.dynamic_shared}"), str(next(iter(rs.values())).threads),
            col(rs, lambda r: str(r.blocks_per_sm)),
            col(rs, lambda r: f"{r.occupancy:.1%} ({r.limiter})"))) + " |")
    return f"Architectures: {' / '.join(archs)}\n\n" + "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default=",".join(ARCHS),
                   help="comma-separated sm_80,sm_90, or 'device' for the current GPU")
    p.add_argument("--markdown", action="store_true",
                   help="a Markdown table, one row per kernel, architectures side by side")
    p.add_argument("--driver", action="store_true",
                   help="with --arch device: resources from the GPU's driver, no ptxas needed")
    args = p.parse_args(argv)
    why = None if args.driver else unavailable()
    if why:
        print(f"cannot compile: {why}")
        return 2
    lim = None
    if args.arch == "device":
        lim = cuda_arch.current_limits()
        archs = [f"sm_{lim.cc[0]}{lim.cc[1]}"]
        print(f"limits: {lim}")
    else:
        archs = args.arch.split(",")
        for a in archs:
            cuda_arch.limits(a)   # a ValueError naming the allowed names
    t0 = time.perf_counter()
    rows = table(kernels(), archs, lim, args.driver)
    print(render_wide(rows) if args.markdown else render(rows))
    bad = problems(rows, lim=lim)
    print(f"\n{len(rows)} kernel builds in {time.perf_counter() - t0:.1f} s; "
          + ("PROBLEMS:\n  " + "\n  ".join(bad) if bad
             else "spills and stack frames only where allowed (below), every launch fits"))
    for prefix, why in ALLOW.items():
        print(f"allowed stack frame: {prefix.strip()}*: {why}")
    for prefix, why in SPILLS.items():
        print(f"allowed spill: {prefix}*: {why}")
    for prefix, why in KNOWN_FAILURES.items():
        print(f"known compile failure: {prefix}*: {why}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
