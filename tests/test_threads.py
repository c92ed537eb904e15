"""sdeverify.threads: ranges cover every item once, on the requested threads, errors surface."""
import threading

import numpy as np
import pytest

from sdeverify.threads import run_ranges


@pytest.mark.parametrize("n_items, threads", [(1, 2), (7, 2), (64, 2), (5, 8), (100, 3)])
def test_ranges_cover_every_item_exactly_once(n_items, threads):
    hits = np.zeros(n_items, dtype=int)
    names = set()
    lock = threading.Lock()

    def kernel(out, lo, hi):
        with lock:
            names.add(threading.current_thread().name)
        out[lo:hi] += 1
    run_ranges(kernel, n_items, hits, threads=threads)
    assert (hits == 1).all()
    assert len(names) <= min(threads, n_items)


def test_one_thread_runs_in_the_caller():
    seen = []
    run_ranges(lambda lo, hi: seen.append((threading.current_thread(), lo, hi)), 10, threads=1)
    assert seen == [(threading.current_thread(), 0, 10)]
    run_ranges(lambda lo, hi: seen.append("never"), 0, threads=2)
    assert len(seen) == 1


def test_an_error_in_a_range_is_raised_after_all_finish():
    done = []

    def kernel(lo, hi):
        if lo == 0:
            raise ZeroDivisionError("range 0")
        done.append(lo)
    with pytest.raises(ZeroDivisionError, match="range 0"):
        run_ranges(kernel, 8, threads=2)
    assert sorted(done) == [1, 2, 3, 4, 5, 6, 7]


def test_check_workers_get_one_blas_and_numba_thread_each(monkeypatch):
    """Worker processes of `check --jobs` start with the thread variables set (an OpenBLAS of
    its own per worker slowed a trained-network check fivefold); the parent's are restored."""
    import os
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from sdeverify import check_jobs
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        with check_jobs._child_threads(1):
            fut = pool.submit(os.getenv, "OPENBLAS_NUM_THREADS")
        assert fut.result() == "1"
    assert os.environ["OPENBLAS_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ


def test_callers_with_different_thread_counts_do_not_disturb_each_other():
    """Two threads using different counts at the same time (one pool per count: a shared
    pool swapped for another size would refuse the other caller's submissions)."""
    errors, done = [], []

    def caller(t):
        try:
            for _ in range(200):
                hits = np.zeros(37, dtype=int)
                run_ranges(lambda out, lo, hi: out.__setitem__(slice(lo, hi), out[lo:hi] + 1),
                           37, hits, threads=t)
                assert (hits == 1).all()
            done.append(t)
        except Exception as exc:           # reported below
            errors.append(exc)
    ts = [threading.Thread(target=caller, args=(t,)) for t in (2, 3)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    assert not errors and sorted(done) == [2, 3]
    # each count keeps its pool: asking for another size never shuts down one in use
    from sdeverify import threads
    p2 = threads._pool(2)
    threads._pool(3)
    assert threads._pool(2) is p2
    p2.submit(int).result()                 # still accepts work


def test_limited_caps_this_thread_only():
    import numba
    from sdeverify.threads import limited, n_threads
    full = n_threads()
    assert full == numba.get_num_threads()
    with limited(1):
        assert n_threads() == 1
        seen = []
        t = threading.Thread(target=lambda: seen.append((n_threads(), numba.get_num_threads())))
        t.start()
        t.join()
        assert seen[0][0] == seen[0][1]              # another thread is not capped
        with limited(5):                             # nested caps only tighten
            assert n_threads() == 1
    assert n_threads() == full
    with pytest.raises(ValueError, match="threads"):
        with limited(0):
            pass


def test_trainer_keeps_blas_within_a_task_cap():
    """One model (the trainer would leave BLAS its own threads): inside a 1-thread cap, as
    in a Dask task, every loaded OpenBLAS runs on one thread, and its count is restored."""
    from sdeverify.threads import limited
    from sdeverify.train import blas_threads
    from sdeverify.train import cpu
    ctl = blas_threads._controllers()
    if not ctl:
        pytest.skip("no OpenBLAS loaded here")
    before = [get() for get, _ in ctl]
    with limited(1):
        T, blas = cpu._threads(1)
        with blas:
            inside = [get() for get, _ in ctl]
    assert T == 1 and inside == [1] * len(ctl)
    assert [get() for get, _ in ctl] == before
    T, blas = cpu._threads(1)                    # no cap: BLAS keeps its own threads
    with blas:
        assert [get() for get, _ in ctl] == before
