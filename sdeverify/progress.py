"""Progress bars on stderr (tqdm), off with ``quiet`` or when stderr is not a terminal."""
from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def bar(total: int, desc: str, quiet: bool = False, unit: str = "it"):
    """Yield ``update(done, total)``; a tqdm bar when stderr is a terminal and not quiet."""
    enabled = not quiet and sys.stderr.isatty()
    if not enabled:
        yield lambda done, total=None: None
        return
    from tqdm import tqdm
    t = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
    state = {"done": 0}

    def update(done: int, new_total: int | None = None) -> None:
        if new_total is not None and new_total != t.total:
            t.total = new_total
            t.refresh()
        t.update(done - state["done"])
        state["done"] = done

    try:
        yield update
    finally:
        t.close()
