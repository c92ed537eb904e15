import numpy as np
import pytest

import sdeverify as sv


@pytest.fixture(scope="session")
def quad2():
    """A 2-d quadratic with off-diagonal Hessian and correlated noise."""
    return sv.problems.Quadratic(np.array([[2.0, 0.5], [0.5, 1.0]]),
                                 noise_cov=np.array([[1.0, 0.3], [0.3, 0.5]]), center=[1.0, -1.0])
