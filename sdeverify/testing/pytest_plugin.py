"""A pytest plugin for property tests of your own: pinned seeds and one kernel cache.

Enable it in your ``conftest.py`` (or with ``pytest -p sdeverify.testing.pytest_plugin``)::

    pytest_plugins = ["sdeverify.testing.pytest_plugin"]

It is not registered automatically (no ``pytest11`` entry point): loading itself into every
pytest session of every environment where sdeverify is installed would change their random
state and Numba's cache location unasked.

What it does

* **Seeds.**  Before each test it seeds Python's ``random`` and NumPy's global generator
  with that test's seed, and the ``sdeverify_seed`` fixture returns the same integer (pass
  it as ``seed=`` to :func:`sdeverify.simulate`).  The seed is a hash of the test's id plus
  ``--sdeverify-seed`` (default 0): fixed from run to run and from machine to machine,
  different between tests, and printed in the report of a failing test, so a failure
  replays with the same draws.
* **Kernel cache.**  It points Numba's cache (``NUMBA_CACHE_DIR``) at one folder for the
  session — ``--sdeverify-kernel-cache DIR``, default ``.pytest_cache/d/sdeverify-kernels``
  under the rootdir — so the engine's kernels compile once per machine (shared by
  ``pytest -n`` workers, :mod:`sdeverify.compile_lock`) and are loaded by later sessions;
  ``pytest --cache-clear`` starts it afresh (do so after editing a helper that a problem
  function calls: the cache cannot see such edits, :mod:`sdeverify.engine.cache`).  A
  ``NUMBA_CACHE_DIR`` already set in the environment is left alone.  The engine's kernels
  are built when a test first runs a simulation, after this plugin has set the folder; the
  package's small ``cache=True`` functions, decorated when sdeverify is imported, stay in
  Numba's default location unless ``NUMBA_CACHE_DIR`` is set before pytest starts.
"""
from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import pytest

__all__ = ["seed_for", "sdeverify_seed"]



def seed_for(nodeid: str, base: int = 0) -> int:
    """The seed of the test ``nodeid``: the first 8 hex digits of SHA-256(``base:nodeid``),
    an integer in [0, 2³²)."""
    return int(hashlib.sha256(f"{int(base)}:{nodeid}".encode()).hexdigest()[:8], 16)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sdeverify")
    group.addoption("--sdeverify-seed", type=int, default=0, metavar="N",
                    help="base of every test's seed (default 0): the same N gives the same "
                         "draws; another N draws afresh")
    group.addoption("--sdeverify-kernel-cache", default=None, metavar="DIR",
                    help="Numba kernel cache folder for the session (default "
                         ".pytest_cache/d/sdeverify-kernels; an environment NUMBA_CACHE_DIR "
                         "wins)")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        folder = os.environ["NUMBA_CACHE_DIR"]
    else:
        given = config.getoption("--sdeverify-kernel-cache")
        folder = str(given) if given else str(config.cache.mkdir("sdeverify-kernels"))
        os.makedirs(folder, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = folder
        import numba.core.config as numba_config      # already imported: set it there too
        numba_config.CACHE_DIR = folder
    config._sdeverify_kernel_cache = folder


def pytest_report_header(config: pytest.Config) -> str:
    return (f"sdeverify: seeds pinned (--sdeverify-seed={config.getoption('--sdeverify-seed')}),"
            f" kernel cache {getattr(config, '_sdeverify_kernel_cache', '?')}")


@pytest.fixture(autouse=True)
def _sdeverify_pin_seeds(request: pytest.FixtureRequest) -> int:
    """Seed ``random`` and NumPy's global generator with the test's seed; the seed is kept
    with the test's report (shown when it fails)."""
    seed = seed_for(request.node.nodeid, request.config.getoption("--sdeverify-seed"))
    random.seed(seed)
    np.random.seed(seed)
    request.node.user_properties.append(("sdeverify_seed", seed))
    return seed


@pytest.fixture
def sdeverify_seed(_sdeverify_pin_seeds: int) -> int:
    """This test's seed (:func:`seed_for` of its id and ``--sdeverify-seed``), fixed from
    run to run: pass it as ``seed=`` to :func:`sdeverify.simulate` or :func:`sdeverify.train.fit`."""
    return _sdeverify_pin_seeds


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seed = dict(item.user_properties).get("sdeverify_seed")
        if seed is not None:
            report.sections.append(("sdeverify", f"seed {seed} (--sdeverify-seed="
                                    f"{item.config.getoption('--sdeverify-seed')})"))
