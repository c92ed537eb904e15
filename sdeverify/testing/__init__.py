"""Statistical testing for your own predictions: assertions with a stated false-failure
rate and Hypothesis strategies for valid problems, optimizers and run sizes.

The assertions (:mod:`sdeverify.testing.assertions`) need only the core dependencies; the
strategies (:mod:`sdeverify.testing.strategies`) need Hypothesis
(``pip install 'sdeverify[test]'``) and are imported on first use::

    from sdeverify.testing import assert_mean, quadratics

Every problem and optimizer prints as the call that builds it (:func:`replay` rebuilds it
from the printed text), so a Hypothesis falsifying example can be replayed exactly.  For
pytest, :mod:`sdeverify.testing.pytest_plugin` pins seeds and the kernel cache.
"""
from __future__ import annotations

from .assertions import (Outcome, StatisticalAssertionError, assert_mean, assert_order,
                         assert_paired_difference, assert_paired_less, assert_variance,
                         paired_series)
from .moments import moment_observables, variance_series
from .replay import replay

_STRATEGIES = ("psd_matrices", "quadratics", "cosine_wells", "problems", "optimizers",
               "run_sizes")

__all__ = ["assert_mean", "assert_paired_difference", "assert_paired_less", "assert_variance",
           "assert_order", "paired_series", "moment_observables", "variance_series", "replay",
           "StatisticalAssertionError", "Outcome", *_STRATEGIES]


def __getattr__(name: str):
    if name in _STRATEGIES:
        from . import strategies
        return getattr(strategies, name)
    raise AttributeError(f"module 'sdeverify.testing' has no attribute {name!r}")
