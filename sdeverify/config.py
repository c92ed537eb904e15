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
