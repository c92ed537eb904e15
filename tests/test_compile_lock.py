"""One compile per machine (``sdeverify.compile_lock``): processes that need the same
cached function at the same time compile it once; a failed compile does not keep the lock."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import pytest

fcntl = pytest.importorskip("fcntl")

ROOT = Path(__file__).resolve().parents[1]

# A module with a cached function that takes a noticeable time to compile (so that two
# processes released together overlap), made cached-once by compile_once.
MODULE = textwrap.dedent("""
    import numba
    from sdeverify.compile_lock import compile_once

    @numba.njit(cache=True)
    def work(x):
        s = 0.0
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                s += x[i, j] * (i - j) if (i + j) % 3 else x[i, j] / (1.0 + i + j)
                s -= (x[j % x.shape[0], i % x.shape[1]] ** 2) * 0.5
        return s

    compile_once(globals())
""")

# Each process: import, say it is ready, wait until both are, then call work() once.
RACER = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import lockmod
    ready = os.path.join(sys.argv[1], "ready-" + sys.argv[2])
    open(ready, "w").close()
    while len([f for f in os.listdir(sys.argv[1]) if f.startswith("ready-")]) < 2:
        time.sleep(0.005)
    lockmod.work(np.ones((3, 3)))
    st = lockmod.work.stats
    print(json.dumps({"misses": sum(st.cache_misses.values()), "hits": sum(st.cache_hits.values())}))
""")


def _race(tmp_path) -> list:
    (tmp_path / "lockmod.py").write_text(MODULE)
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return [json.loads(o[0].strip().splitlines()[-1]) for o in outs]


def test_two_processes_compile_a_cached_function_once(tmp_path):
    """Released together on an empty cache, one process compiles, the other loads what it
    saved (without the lock both compile: seen with the lock disabled, 2 misses)."""
    runs = _race(tmp_path)
    assert sorted(r["misses"] for r in runs) == [0, 1], runs
    assert sorted(r["hits"] for r in runs) == [0, 1], runs


def test_a_failed_compile_releases_the_lock(tmp_path, monkeypatch):
    """A compile that raises (a typing error) must not keep the entry's lock: another
    process would wait ``config.COMPILE_WAIT_S`` for nothing."""
    from sdeverify.compile_lock import SharedFunctionCache, compile_once

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    src = tmp_path / "badmod.py"
    src.write_text("import numba\n@numba.njit(cache=True)\ndef bad(x):\n    return x + 'a'\n"
                   "@numba.njit(cache=True)\ndef good(x):\n    return x + 1\n")
    namespace = {"__name__": "badmod", "__file__": str(src)}
    exec(compile(src.read_text(), str(src), "exec"), namespace)
    compile_once(namespace)
    for name in ("bad", "good"):
        assert isinstance(namespace[name]._cache, SharedFunctionCache)
    with pytest.raises(numba.core.errors.TypingError):
        namespace["bad"](1.0)
    assert namespace["good"](1.0) == 2.0
    for name in ("bad", "good"):
        cache = namespace[name]._cache
        assert cache._lock_fd is None
        fd = os.open(cache._lock_path(), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # raises if still held
        finally:
            os.close(fd)
