"""Tunables of the engine, in one place.

``BLOCK`` is the number of consecutive (globally indexed) paths whose statistics are
accumulated together.  Blocks are the unit of parallel work *and* of the canonical
reduction: per-block (count, mean, M2) are merged in a fixed pairwise tree over global block
order, which is what makes results bitwise identical for any thread count and any split of
the paths into shards (shards must start at a multiple of ``BLOCK``).
"""
BLOCK: int = 256

#: Default number of recorded steps (evenly spaced, the initial point included).
DEFAULT_RECORDS: int = 16

#: Paths advanced together inside a block by the CPU engine (the "lanes"): the draws of one
#: step are generated for all lanes at once and the update loop runs over lanes, both
#: vectorised over SIMD lanes.  Must divide ``BLOCK``; 64 measured best on AVX-512 (32: -9%,
#: 128: -4%, float64, benchmarks/RESULTS.md).  Changing it never changes results.
LANES: int = 64

#: Problems with at most this many parameters get them copied to the stack inside the CPU
#: kernel (and one compiled specialisation per parameter count), which lets LLVM hoist their
#: loads out of the SIMD loop; larger parameter vectors are read in place.
STACK_PARAMS: int = 512

#: Up to this dimension the CPU kernel computes the oracle and the update of a lane in one
#: loop over lanes (fastest while the body unrolls over coordinates: +15% at d = 8); above
#: it, in two loops, so that the update stays vectorised for any d (2.4x at d = 16).
FUSE_MAX_DIM: int = 8

#: ... and only for oracles with at most this many base draws per call: a minibatch oracle
#: reserving 64 draws (the batch_size check's least squares, d = 4) compiled in 17.9 s fused
#: against 11.5 s split, and ran 2¹⁴ paths × 400 steps in 2.09 s against 1.78 s (same numbers).
FUSE_MAX_DRAWS: int = 16

#: Default divergence rule of :func:`sdeverify.simulate`: a path diverges at the first step
#: where some coordinate satisfies |x_i| > DIVERGENCE_FACTOR · max(1, max_i |x0_i|) (or is
#: not finite).  Measured over the checks' own runs (``sdeverify check --smoke`` and
#: ``--quick``, seed 0: 1086 and 1119 ``simulate`` calls) with the factor lowered to 1e3: no
#: healthy run was flagged and every verdict passed; the only flagged runs were the ones the
#: svag check makes diverge on purpose (above a stability threshold).  The largest final
#: max_i |x_i| / max(1, max_i |x0_i|) of a non-diverged path was 22.4.  Blow-ups of the
#: linear-instability kind grow geometrically and cross the bound long before float overflow.
DIVERGENCE_FACTOR: float = 1e8

#: A process that finds another one compiling the kernel it needs (same machine, same cache
#: directory) waits at most this long for it, then compiles on its own (compile_lock.py).
COMPILE_WAIT_S: float = 300.0
