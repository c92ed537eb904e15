"""The statistics' block merge (sdeverify.observables)."""
import numpy as np
import pytest


def test_block_merge_level_by_level_is_bitwise_the_canonical_tree():
    """``merge_blocks`` (one vectorised merge per tree level) gives the bits of the recursive
    definition (split at the largest power of two below n) for every n, with empty blocks,
    and differs from another tree (a planted left-to-right fold)."""
    from sdeverify.observables import merge_blocks, merge_blocks_recursive, merge_pair
    rng = np.random.default_rng(3)
    for n in list(range(1, 70)) + [255, 256, 257, 1023, 4097]:
        b = np.stack([rng.integers(1, 300, (n, 2, 3)).astype(float),
                      rng.normal(size=(n, 2, 3)) * 1e3, rng.random((n, 2, 3)) * 1e4], axis=-1)
        b[rng.random((n, 2, 3)) < 0.1] = 0.0           # blocks without paths
        assert np.array_equal(merge_blocks(b), merge_blocks_recursive(b)), n
    fold = b[0]
    for blk in b[1:]:
        fold = merge_pair(fold, blk)
    assert not np.array_equal(fold, merge_blocks(b))   # the tree's shape is in the bits
    with pytest.raises(ValueError, match="no blocks"):
        merge_blocks(b[:0])
