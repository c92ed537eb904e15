"""What the CUDA-simulator check scripts (run in a subprocess with NUMBA_ENABLE_CUDASIM=1)
share: the relative deviation and a tally of the comparisons that failed."""
from __future__ import annotations

import numpy as np


def rel(u, v) -> float:
    """max |u − v| / max |v| (v the reference)."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    return float(np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-300))


class Tally:
    """Prints each comparison and counts the failed ones (``bad``); ``tol`` for deviations."""

    def __init__(self, tol: float):
        self.tol, self.bad = tol, 0

    def report(self, name: str, dev: float, exact: bool = False) -> None:
        ok = dev == 0.0 if exact else dev <= self.tol
        self.bad += not ok
        print(f"  {name}: {'mismatches' if exact else 'max rel. deviation'} {dev:.3g} "
              f"{'ok' if ok else 'MISMATCH'}", flush=True)
