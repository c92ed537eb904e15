"""The counter-based generator (sdeverify.rng): Philox known answers, the NumPy twin, and the
statistical quality of the draws.

Every statistical check is a z- or KS-test at a fixed seed with a threshold written here:
z-tests reject beyond 5 standard errors, KS-tests below p = 1e-4.  With the asymptotic
null distributions that is a false-failure probability below ~1e-4 per check; measured during
development by running every statistical check of this file under 300 other seeds: 0
failures (``python tests/test_rng.py 300`` repeats that experiment).  Negative controls (a
mean shifted by 0.01, a variance off by 1%, a broken quadrant map) must fail the same tests.
"""
import sys

import numpy as np
import pytest
from scipy import stats

from sdeverify import rng

N_PATHS, N_DRAWS = 4096, 256          # 2**20 draws per call of the lanes generator
Z_MAX = 5.0                            # z-test threshold (standard errors)
P_MIN = 1e-4                           # KS threshold


def lanes(kind, seed, *, path0=0, paths=N_PATHS, n=N_DRAWS, step=0, stream=0, dtype="float64"):
    """Draws (paths, n) from the compiled lanes generator (the CPU engine's code path)."""
    k0, k1 = rng.key_words(seed)
    out = np.empty((rng.n_rows(n), paths), dtype=dtype)
    rng.fill_lanes(dtype)(kind, k0, k1, path0, step, stream, out)
    return out[:n].T


# ---- Philox4x32-10 known-answer vectors (Random123 kat_vectors) --------------------------------
KAT = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
       ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]


@pytest.mark.parametrize("ctr,key,expect", KAT)
def test_philox_known_answers(ctr, key, expect):
    u = [np.uint64(v) for v in ctr + key]
    assert tuple(int(w) for w in rng.philox4x32(*u)) == expect          # compiled
    c = [np.array([v], dtype=np.uint64) for v in ctr]
    assert tuple(int(w[0]) for w in rng.philox4x32_py(*c, *u[4:])) == expect   # NumPy twin


# ---- the compiled generator and its NumPy twin agree bitwise ----------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", [rng.NORMAL, rng.RADEMACHER, rng.UNIFORM])
def test_engine_draws_equal_numpy_twin(kind, dtype):
    seed, path0, n = 2 ** 40 + 12345, 3 * 2 ** 32 - 7, 11      # paths wrap modulo 2**32
    got = lanes(kind, seed, path0=path0, paths=96, n=n, step=77, stream=1, dtype=dtype)
    ref = rng.draws_numpy(kind, seed, np.arange(path0, path0 + 96), 77, 1, n, dtype=dtype)
    assert got.dtype == ref.dtype == np.dtype(dtype)
    assert np.array_equal(got, ref)
    one = np.empty(n, dtype=dtype)
    rng.fill_draws(kind, *rng.key_words(seed), path0 + 5, 77, 1, one)
    assert np.array_equal(one, ref[5])


def test_draws_do_not_depend_on_the_lane_grouping():
    """Draw (path, step, stream, i) is a pure function: any grouping of paths into lanes, any
    offset, gives the same values (what makes thread counts and shards irrelevant)."""
    a = lanes(rng.NORMAL, 9, path0=0, paths=192, n=9, step=3)
    b = np.concatenate([lanes(rng.NORMAL, 9, path0=p, paths=w, n=9, step=3)
                        for p, w in [(0, 1), (1, 63), (64, 64), (128, 64)]])
    assert np.array_equal(a, b)
    assert np.array_equal(lanes(rng.NORMAL, 9, paths=64, n=5, step=3), a[:64, :5])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", [rng.NORMAL, rng.UNIFORM])
@pytest.mark.parametrize("n_used", [0, 1, 2, 3, 4, 5, 6, 7, 8])
def test_fewer_rows_used_give_the_same_bits_in_the_rows_used(kind, dtype, n_used):
    """``n_used``: the rows below it are the full buffer's bits; a last block whose second
    Box–Muller pair no row needs is not computed (its rows 2 and 3 are left as they were)."""
    k0, k1 = rng.key_words(77)
    full = np.empty((8, 70), dtype=dtype)
    rng.fill_lanes(dtype)(kind, k0, k1, 2 ** 32 - 9, 5, 1, full)
    part = np.full((8, 70), 7.0, dtype=dtype)
    rng.fill_lanes(dtype)(kind, k0, k1, 2 ** 32 - 9, 5, 1, part, n_used)
    assert np.array_equal(part[:n_used], full[:n_used])
    if kind == rng.NORMAL:      # computed: whole blocks, or the last block's first pair only
        done = 4 * (n_used // 4) + (0 if n_used % 4 == 0 else 2 if n_used % 4 <= 2 else 4)
        assert np.array_equal(part[:done], full[:done]) and np.all(part[done:] == 7.0)


# ---- statistical quality ---------------------------------------------------------------------
def moment_z(x):
    """z-scores of mean, variance, skewness and excess kurtosis against N(0, 1)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    m2 = np.mean(x * x)
    return np.array([np.mean(x) / np.sqrt(1 / n), (np.var(x) - 1) / np.sqrt(2 / n),
                     stats.skew(x) / np.sqrt(6 / n), stats.kurtosis(x) / np.sqrt(24 / n),
                     (m2 - 1) / np.sqrt(2 / n)])


def check_normal(z):
    """Moments (z ≤ 5), KS against N(0, 1), and the polar structure of the Box–Muller pairs:
    R² ~ Exp(mean 2) and the angle uniform (KS, p ≥ 1e-4)."""
    assert np.all(np.abs(moment_z(z)) < Z_MAX), moment_z(z)
    z = np.asarray(z, dtype=np.float64)
    assert stats.kstest(z.ravel(), "norm").pvalue > P_MIN
    x, y = z[:, 0::2].ravel(), z[:, 1::2].ravel()          # the pairs (z0, z1), (z2, z3)
    assert stats.kstest(x * x + y * y, "expon", args=(0, 2)).pvalue > P_MIN
    angle = (np.arctan2(y, x) / (2 * np.pi)) % 1.0
    assert stats.kstest(angle, "uniform").pvalue > P_MIN


def check_independent(a, b, squares=True):
    """Pearson correlation of a with b, and of a² with b², within 5 standard errors of 0."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    lim = Z_MAX / np.sqrt(a.size)
    assert abs(np.corrcoef(a, b)[0, 1]) < lim
    if squares:
        assert abs(np.corrcoef(a * a, b * b)[0, 1]) < lim


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_normal_moments_ks_and_polar_structure(dtype):
    check_normal(lanes(rng.NORMAL, 2024, dtype=dtype))


def test_normals_independent_across_index_paths_steps_streams_and_seeds():
    z = lanes(rng.NORMAL, 7, n=64)
    check_independent(z[:, 0::2], z[:, 1::2])                # within a Box–Muller pair
    check_independent(z[:, 1:-1:2], z[:, 2::2])              # across pairs and Philox blocks
    check_independent(z[:-1], z[1:])                         # adjacent paths
    check_independent(z, lanes(rng.NORMAL, 7, n=64, step=1))       # adjacent steps
    check_independent(z, lanes(rng.NORMAL, 7, n=64, stream=1))     # SVAG's second stream
    check_independent(z, lanes(rng.NORMAL, 8, n=64))                # adjacent seeds
    check_independent(z, lanes(rng.NORMAL, 7 + 2 ** 32, n=64))      # high key word


def test_normal_range_and_float32_matches_float64():
    z64 = lanes(rng.NORMAL, 3)
    z32 = lanes(rng.NORMAL, 3, dtype="float32")
    assert np.abs(z64).max() < np.sqrt(-2 * np.log(2.0 ** -33)) + 1e-9    # 6.76: 32-bit uniforms
    # same words, float32 arithmetic and a 24-bit angle: |Δ| ≤ 2e-6 (max |z| ≈ 6)
    assert np.max(np.abs(z32.astype(np.float64) - z64)) < 2e-6


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_uniform_and_rademacher(dtype):
    u = lanes(rng.UNIFORM, 11, dtype=dtype).astype(np.float64).ravel()
    assert 0.0 < u.min() and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > P_MIN
    r = lanes(rng.RADEMACHER, 11, dtype=dtype).astype(np.float64).ravel()
    assert set(np.unique(r)) == {-1.0, 1.0}
    assert abs(r.mean()) < Z_MAX / np.sqrt(r.size)
    check_independent(r[:-1], r[1:], squares=False)


def test_negative_controls_fail():
    """The same checks reject slightly wrong generators (they have power)."""
    z = lanes(rng.NORMAL, 2024)
    for bad in (z + 0.01, z * np.sqrt(1.01)):
        with pytest.raises(AssertionError):
            check_normal(bad)
    broken = z.copy()
    broken[:, 1::2] = np.abs(broken[:, 1::2])       # angles confined to the upper half-plane
    with pytest.raises(AssertionError):
        check_normal(broken)
    with pytest.raises(AssertionError):
        check_independent(z[:, 0], z[:, 0] + 0.05 * z[:, 1])


# ---- named sub-seeds -----------------------------------------------------------------------------
def test_substream_is_the_documented_hash():
    """substream(seed, name, i) = the first 8 bytes (little-endian) of SHA-256(tag ‖ seed ‖ i ‖
    name), recomputed here from the docstring's formula; the pinned values make a change of
    the formula (which would silently change every check's numbers) fail."""
    import hashlib
    for seed, name, i in [(0, "a", 0), (7, "slow_sde.coupled", 3), (2 ** 64 - 1, "é", 2 ** 64 - 1)]:
        h = hashlib.sha256(b"sdeverify.rng.substream/1\0" + seed.to_bytes(8, "little")
                           + i.to_bytes(8, "little") + name.encode()).digest()
        assert rng.substream(seed, name, i) == int.from_bytes(h[:8], "little")
    assert rng.substream(0, "a") == 12955849414033014146
    assert rng.substream(1, "a") == 2363303335327398591
    assert rng.substream(0, "a", 1) == 14406642567516130191
    assert rng.substream(np.uint64(5), "x", np.int64(2)) == rng.substream(5, "x", 2)


def test_substreams_are_distinct_where_offsets_collide():
    """Every (seed, name, i) of a grid gets its own seed, although the offsets the checks used
    to add (seed + 17 i + j) give 17 of the grid's seeds twice; the seeds are valid engine
    seeds and their draws are independent."""
    names = ["coupled", "coupled_sphere", "gap", "a", "b"]
    grid = [(s, nm, i) for s in range(40) for nm in names for i in range(40)]
    got = {rng.substream(*g) for g in grid}
    assert len(got) == len(grid)
    assert all(0 <= v < 2 ** 64 for v in got)
    offsets = [s + 17 * i + j for s in range(2) for i in range(2) for j in range(18)]
    assert len(set(offsets)) < len(offsets)            # what substream replaces does collide
    sub = [rng.substream(s, "coupled", 18 * i + j) for s in range(2) for i in range(2) for j in range(18)]
    assert len(set(sub)) == len(sub)
    z1 = lanes(rng.NORMAL, rng.substream(0, "a"), n=64)
    z2 = lanes(rng.NORMAL, rng.substream(0, "b"), n=64)
    check_independent(z1, z2)


@pytest.mark.parametrize("args,match", [((-1, "a"), "seed"), ((2 ** 64, "a"), "seed"),
                                        ((0.0, "a"), "seed"), ((0, ""), "name"), ((0, 3), "name"),
                                        ((0, "a", -1), "i must"), ((0, "a", 2 ** 64), "i must"),
                                        ((True, "a"), "seed")])
def test_substream_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        rng.substream(*args)


# ---- false-failure rate (run by hand: python tests/test_rng.py 300) ---------------------------
def _false_failures(n_seeds: int) -> int:
    fails = 0
    for s in range(1000, 1000 + n_seeds):
        try:
            for dtype in ("float64", "float32"):
                check_normal(lanes(rng.NORMAL, s, dtype=dtype))
            z = lanes(rng.NORMAL, s, n=64)
            check_independent(z[:, 0::2], z[:, 1::2])
            check_independent(z[:, 1:-1:2], z[:, 2::2])
            check_independent(z[:-1], z[1:])
            check_independent(z, lanes(rng.NORMAL, s, n=64, step=1))
            check_independent(z, lanes(rng.NORMAL, s, n=64, stream=1))
            check_independent(z, lanes(rng.NORMAL, s + 1, n=64))
            u = lanes(rng.UNIFORM, s).ravel()
            assert stats.kstest(u, "uniform").pvalue > P_MIN
        except AssertionError:
            fails += 1
            print("seed", s, "failed")
    return fails


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    print(f"{_false_failures(n)} of {n} seeds failed")
