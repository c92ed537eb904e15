"""Run the ``sdeverify`` command line in this process and report the CPU of this process
alone — the driver of a ``--workers N`` run: the CLI, its check threads, the items it keeps,
statistics, figures, saved points and the in-process Dask scheduler — apart from its children
(the nannies and workers).

    PYTHONPATH=. python benchmarks/driver_cpu.py check --full --workers 2 --only svag

The last line on stderr is ``DRIVER {json}``: ``wall_s``, ``driver_cpu_s`` (user + system),
``driver_user_s``, ``driver_sys_s``, ``children_cpu_s``, ``driver_maxrss_mb``, ``exit``
(:func:`parse` reads it back).
"""
from __future__ import annotations

import json
import resource
import runpy
import sys
import time

PREFIX = "DRIVER "


def parse(stderr: str) -> dict | None:
    """The report of :mod:`driver_cpu` in a run's stderr, or None."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX):])
    return None


def main() -> None:
    t0 = time.perf_counter()
    sys.argv = ["sdeverify"] + sys.argv[1:]
    code = 0
    try:
        runpy.run_module("sdeverify", run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        report = {"wall_s": time.perf_counter() - t0, "driver_cpu_s": s.ru_utime + s.ru_stime,
                  "driver_user_s": s.ru_utime, "driver_sys_s": s.ru_stime,
                  "children_cpu_s": c.ru_utime + c.ru_stime,
                  "driver_maxrss_mb": s.ru_maxrss / 1024, "exit": code}
        print(PREFIX + json.dumps(report), file=sys.stderr, flush=True)
    sys.exit(code)


if __name__ == "__main__":      # the Dask workers it spawns import this module again
    main()
