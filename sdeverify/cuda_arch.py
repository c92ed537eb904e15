"""GPU architecture limits, theoretical occupancy and a launch validator for the CUDA kernels.

The table holds the per-multiprocessor and per-block limits of the two data-centre
architectures the CUDA engine and trainer are built for, sm_80 (A100) and sm_90 (H100/H200).
Sources: NVIDIA, *CUDA C++ Programming Guide*, appendix "Compute Capabilities", table
"Technical Specifications per Compute Capability" (threads, blocks, warps, registers, shared
memory; 1 KB of shared memory reserved per block from compute capability 8.0 on); the
allocation granularities are those of NVIDIA's CUDA Occupancy Calculator
(``cuda_occupancy.h`` of the CUDA toolkit: registers allocated per warp in units of 256,
shared memory in units of 128 bytes, the register file split into 4 sub-partitions).

:func:`limits` gives the limits of a named architecture (from the table) or of a GPU (queried
through numba.cuda's device attributes, with the per-thread register limit and the allocation
granularities, which the driver does not report, from the table).  :func:`occupancy` computes
resident blocks per multiprocessor and the theoretical occupancy by the occupancy
calculator's rules; :func:`check_launch` raises a ``ValueError`` naming the parameter and the
allowed range for a launch configuration the device would refuse, instead of a launch
failure (``CUDA_ERROR_INVALID_VALUE`` / ``LAUNCH_OUT_OF_RESOURCES``).
"""
from __future__ import annotations

import dataclasses

__all__ = ["ArchLimits", "Occupancy", "ARCHS", "limits", "current_limits", "occupancy",
           "check_launch", "MAX_GRID"]

#: Largest grid dimensions (x, y, z), compute capability ≥ 3.0 (Programming Guide table).
MAX_GRID = (2 ** 31 - 1, 65535, 65535)


@dataclasses.dataclass(frozen=True)
class ArchLimits:
    """Resource limits of one GPU architecture (bytes for shared memory)."""
    name: str                       #: "sm_80", "sm_90", or the device's name
    cc: tuple[int, int]             #: compute capability
    max_threads_per_block: int
    max_threads_per_sm: int
    max_blocks_per_sm: int
    registers_per_sm: int           #: 32-bit registers
    registers_per_block: int
    registers_per_thread: int
    register_alloc_unit: int        #: registers are allocated per warp in units of this
    register_sub_partitions: int    #: the register file is split evenly among these
    shared_per_sm: int              #: largest shared-memory carve-out of one multiprocessor
    shared_per_block: int           #: without opt-in (static + dynamic)
    shared_per_block_optin: int     #: dynamic, after ``cudaFuncSetAttribute`` opt-in
    shared_reserved_per_block: int  #: used by the system for every resident block
    shared_alloc_unit: int
    sm_count: int | None = None     #: multiprocessors (None: depends on the product)
    source: str = ""

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // 32


_GUIDE = ('CUDA C++ Programming Guide, "Compute Capabilities", table "Technical Specifications '
          'per Compute Capability"; granularities from the CUDA Occupancy Calculator '
          '(cuda_occupancy.h)')

ARCHS: dict[str, ArchLimits] = {
    "sm_80": ArchLimits("sm_80", (8, 0), max_threads_per_block=1024, max_threads_per_sm=2048,
                        max_blocks_per_sm=32, registers_per_sm=65536, registers_per_block=65536,
                        registers_per_thread=255, register_alloc_unit=256,
                        register_sub_partitions=4, shared_per_sm=164 * 1024,
                        shared_per_block=48 * 1024, shared_per_block_optin=163 * 1024,
                        shared_reserved_per_block=1024, shared_alloc_unit=128, sm_count=108,
                        source=_GUIDE + "; 108 SMs: NVIDIA A100 Tensor Core GPU Architecture "
                                        "whitepaper"),
    "sm_90": ArchLimits("sm_90", (9, 0), max_threads_per_block=1024, max_threads_per_sm=2048,
                        max_blocks_per_sm=32, registers_per_sm=65536, registers_per_block=65536,
                        registers_per_thread=255, register_alloc_unit=256,
                        register_sub_partitions=4, shared_per_sm=228 * 1024,
                        shared_per_block=48 * 1024, shared_per_block_optin=227 * 1024,
                        shared_reserved_per_block=1024, shared_alloc_unit=128, sm_count=132,
                        source=_GUIDE + "; 132 SMs: NVIDIA H100/H200 SXM datasheets"),
}


def _from_device(dev) -> ArchLimits:
    """Limits queried from a numba.cuda device (``CU_DEVICE_ATTRIBUTE_*``)."""
    cc = tuple(dev.compute_capability)
    base = ARCHS.get(f"sm_{cc[0]}{cc[1]}", ARCHS["sm_80"] if cc < (9, 0) else ARCHS["sm_90"])

    def attr(name, default):
        try:
            return int(getattr(dev, name))
        except Exception:   # an attribute this driver or Numba does not know
            return default

    name = getattr(dev, "name", f"sm_{cc[0]}{cc[1]}")
    name = name.decode() if isinstance(name, bytes) else str(name)
    return dataclasses.replace(
        base, name=name, cc=cc,
        max_threads_per_block=attr("MAX_THREADS_PER_BLOCK", base.max_threads_per_block),
        max_threads_per_sm=attr("MAX_THREADS_PER_MULTIPROCESSOR", base.max_threads_per_sm),
        max_blocks_per_sm=attr("MAX_BLOCKS_PER_MULTIPROCESSOR", base.max_blocks_per_sm),
        registers_per_sm=attr("MAX_REGISTERS_PER_MULTIPROCESSOR", base.registers_per_sm),
        registers_per_block=attr("MAX_REGISTERS_PER_BLOCK", base.registers_per_block),
        shared_per_sm=attr("MAX_SHARED_MEMORY_PER_MULTIPROCESSOR", base.shared_per_sm),
        shared_per_block=attr("MAX_SHARED_MEMORY_PER_BLOCK", base.shared_per_block),
        shared_per_block_optin=attr("MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
                                    base.shared_per_block_optin),
        shared_reserved_per_block=attr("RESERVED_SHARED_MEMORY_PER_BLOCK",
                                       base.shared_reserved_per_block),
        sm_count=attr("MULTIPROCESSOR_COUNT", base.sm_count),
        source=f"queried from the device ({name}); per-thread registers and granularities: "
               + base.source)


def limits(arch_or_device=None) -> ArchLimits:
    """The limits of ``"sm_80"``/``"sm_90"`` (table), of a numba.cuda device (queried), of an
    :class:`ArchLimits` (returned as is) or, for None, of the current GPU (:func:`current_limits`)."""
    if arch_or_device is None:
        return current_limits()
    if isinstance(arch_or_device, ArchLimits):
        return arch_or_device
    if isinstance(arch_or_device, str):
        if arch_or_device not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch_or_device!r}")
        return ARCHS[arch_or_device]
    return _from_device(arch_or_device)


def current_limits() -> ArchLimits:
    """The current GPU's limits when numba.cuda sees a real one; otherwise (no GPU, or Numba's
    CUDA simulator) the sm_80 table, the stricter of the two (a launch that fits sm_80 fits
    sm_90: every sm_90 limit is at least sm_80's)."""
    try:
        import numba
        from numba import cuda
        if not numba.config.ENABLE_CUDASIM and cuda.is_available():
            return _from_device(cuda.get_current_device())
    except Exception:   # no numba.cuda, or no driver
        pass
    return ARCHS["sm_80"]


@dataclasses.dataclass(frozen=True)
class Occupancy:
    """Resident blocks per multiprocessor, the limit that sets them and theoretical occupancy
    (resident warps / maximum warps per multiprocessor)."""
    blocks_per_sm: int
    warps_per_sm: int
    occupancy: float
    limiter: str                    #: "threads", "blocks", "registers" or "shared memory"
    by: dict                        #: blocks per SM allowed by each resource


def _round_up(v: int, unit: int) -> int:
    return -(-v // unit) * unit


def occupancy(arch_or_device, threads: int, registers: int, shared_bytes: int = 0) -> Occupancy:
    """Blocks per multiprocessor of a kernel with ``registers`` per thread, ``threads`` per
    block and ``shared_bytes`` (static + dynamic) of shared memory per block, by the CUDA
    Occupancy Calculator's rules: warps per block rounded up; registers allocated per warp
    in units of ``register_alloc_unit`` within each of the register file's sub-partitions;
    shared memory plus the per-block reserve rounded up to ``shared_alloc_unit``."""
    lim = limits(arch_or_device)
    warps = -(-threads // 32)
    by = {"threads": lim.max_warps_per_sm // warps, "blocks": lim.max_blocks_per_sm}
    if registers > 0:
        per_warp = _round_up(registers * 32, lim.register_alloc_unit)
        warps_per_part = (lim.registers_per_sm // lim.register_sub_partitions) // per_warp
        by["registers"] = (warps_per_part * lim.register_sub_partitions) // warps
        if per_warp * warps > lim.registers_per_block or registers > lim.registers_per_thread:
            by["registers"] = 0
    sh = _round_up(shared_bytes + lim.shared_reserved_per_block, lim.shared_alloc_unit)
    by["shared memory"] = lim.shared_per_sm // sh if shared_bytes else lim.max_blocks_per_sm
    limiter = min(by, key=lambda k: by[k])
    blocks = by[limiter]
    return Occupancy(blocks, blocks * warps, blocks * warps / lim.max_warps_per_sm, limiter, by)


def check_launch(arch_or_device, threads: int, shared_bytes: int = 0, registers: int | None = None,
                 grid: tuple = (1, 1, 1), opt_in: bool = False) -> Occupancy:
    """Validate a launch of ``grid`` blocks of ``threads`` threads with ``shared_bytes`` of
    shared memory and ``registers`` per thread (None: the architecture's per-thread maximum,
    so that the check holds whatever the compiler allocates) against the limits of
    ``arch_or_device`` (see :func:`limits`); return the kernel's :class:`Occupancy`.

    Raises ``ValueError`` naming the parameter and its allowed range where the device would
    refuse the launch.  ``opt_in``: the kernel has opted in to more than the default shared
    memory per block (``cudaFuncSetAttribute``), which the CUDA kernels here do not do.
    """
    lim = limits(arch_or_device)
    where = f"on {lim.name} (compute capability {lim.cc[0]}.{lim.cc[1]})"
    threads = int(threads)
    if not 1 <= threads <= lim.max_threads_per_block:
        raise ValueError(f"threads per block must be in [1, {lim.max_threads_per_block}] "
                         f"{where}, got {threads}")
    cap = lim.shared_per_block_optin if opt_in else lim.shared_per_block
    if not 0 <= shared_bytes <= cap:
        raise ValueError(f"shared memory per block must be in [0, {cap}] bytes {where}"
                         f"{'' if opt_in else ' without opt-in'}, got {shared_bytes}")
    regs = lim.registers_per_thread if registers is None else int(registers)
    if not 1 <= regs <= lim.registers_per_thread:
        raise ValueError(f"registers per thread must be in [1, {lim.registers_per_thread}] "
                         f"{where}, got {regs}")
    per_block = _round_up(regs * 32, lim.register_alloc_unit) * (-(-threads // 32))
    if per_block > lim.registers_per_block:
        most = lim.registers_per_block // (-(-threads // 32)) // 32
        raise ValueError(f"registers per block must be at most {lim.registers_per_block} {where}: "
                         f"{threads} threads x {regs} registers allocate {per_block}; use at most "
                         f"{most} registers per thread (max_registers) or fewer threads")
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    for axis, g, top in zip("xyz", grid, MAX_GRID):
        if not 1 <= g <= top:
            raise ValueError(f"grid dimension {axis} must be in [1, {top}] {where}, got {g} "
                             f"(grid {grid})")
    occ = occupancy(lim, threads, regs, shared_bytes)
    if occ.blocks_per_sm < 1:
        raise ValueError(f"a block of {threads} threads, {regs} registers per thread and "
                         f"{shared_bytes} bytes of shared memory does not fit one multiprocessor "
                         f"{where} (limited by {occ.limiter})")
    return occ

