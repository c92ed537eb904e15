"""The SIMD width Numba compiles for: 512-bit vectors on AVX-512 hosts (set at import).

LLVM's tuning for Intel's AVX-512 processors (Skylake-SP through Sapphire Rapids and later)
carries the feature ``prefer-256-bit``: its vectorisers then emit 256-bit vectors even where
the CPU has 512-bit ones (a guard against the clock penalty of 512-bit instructions on the
first AVX-512 cores), and the engine's lane loops, its generator, the vectorised ``vmath``
functions and the trainer's GEMM micro-kernel run at half their width.  Measured on an Intel
Xeon with AVX-512 (Sapphire Rapids class, 2 vCPUs; benchmarks/RESULTS.md): the reference
workload 1.21× per CPU-second, the built-in problems 1.07–1.23× (``DiagonalNet`` 1.00×,
``LinearRegression``'s row gathers 0.95×), the generator alone 1.2–1.5×, with the same bits
(the lanes are independent: a vector's width changes no arithmetic; no fast-math anywhere).

:func:`configure` runs when ``sdeverify`` is imported, before anything compiles, and sets
``numba.config.CPU_FEATURES`` to the host's features plus ``-prefer-256-bit`` — for the whole
process (Numba has one CPU target), so a user's own ``numba.njit`` functions compiled later
get 512-bit vectors too.  The environment variable ``SDEVERIFY_VECTOR_WIDTH`` chooses:

* ``auto`` (default): 512-bit where the host has AVX-512F **and** AVX512-VBMI2, i.e. Ice
  Lake and later Intel cores and AMD Zen 4 and later, whose 512-bit instructions carry no
  large clock penalty; LLVM's own choice on Skylake-SP / Cascade Lake (AVX-512 without
  VBMI2), where the penalty is real and the gain unmeasured here;
* ``512``: 512-bit on any AVX-512F host;
* ``llvm``: LLVM's own choice everywhere (what Numba does by itself).

It changes nothing when the user set ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` (theirs
win), on hosts without AVX-512F, or when Numba had already compiled in this process before
``sdeverify`` was imported (the CPU target is built once; a later setting would not take
effect).  :data:`STATE` says which case applied.  Compiled kernels are cached per feature set
(Numba's cache keys hold the target machine), so switching never loads a kernel compiled
for the other width.
"""
from __future__ import annotations

import os

__all__ = ["configure", "decide", "STATE", "ENV"]

#: The environment variable that chooses the policy.
ENV = "SDEVERIFY_VECTOR_WIDTH"
_MODES = ("auto", "512", "llvm")

#: What :func:`configure` did at import: "512" (set), "llvm" (LLVM's choice: the policy or
#: the host), "user" (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES set), "late" (Numba had compiled
#: already), or "unset" before it ran.
STATE = "unset"


def decide(mode: str, host_features: dict, user_set: bool, compiled: bool) -> str:
    """The policy of :func:`configure`, as a pure function: "512" when 512-bit vectors should
    be preferred, else the reason they are not ("llvm", "user", "late").  ``host_features``
    maps LLVM feature names (``avx512f``, ``avx512vbmi2``) to booleans."""
    mode = str(mode).strip().lower()
    if mode not in _MODES:
        raise ValueError(f"{ENV} must be one of {', '.join(_MODES)}; got {mode!r}")
    if mode == "llvm":
        return "llvm"
    if user_set:
        return "user"
    if compiled:
        return "late"
    if not host_features.get("avx512f", False):
        return "llvm"
    if mode == "auto" and not host_features.get("avx512vbmi2", False):
        return "llvm"
    return "512"


def configure() -> str:
    """Apply :func:`decide` to this process (module docstring); returns and records the state."""
    global STATE
    import numba
    from numba.core import codegen, registry
    features = codegen.get_host_cpu_features()          # "" when LLVM cannot tell
    host = {f[1:]: f[0] == "+" for f in features.split(",") if f[:1] in "+-" and len(f) > 1}
    user_set = numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None
    compiled = "_toplevel_target_context" in vars(registry.cpu_target)
    STATE = decide(os.environ.get(ENV, "auto"), host, user_set, compiled)
    if STATE == "512":
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"
    return STATE
