"""What printed numbers mean and what loaders do by default: the SVAG stability verdicts name
the numbers they show; digits() splits and scales as from_arrays does, and says so."""
import inspect
import sys
import types

import numpy as np

from sdeverify.experiments import svag
from sdeverify.train import datasets


def test_svag_stability_predictions_name_the_numbers_shown(monkeypatch):
    """The stability verdicts print a pair / a triple of diverged fractions: the prediction
    next to them says which fraction is which (it used to say only the threshold)."""
    monkeypatch.setattr(svag, "simulate", _no_divergence)
    _, verdicts = svag._stability(8, 0)
    for v in verdicts[:-1]:
        assert len(v.measured.value) == 2
        assert "diverged fraction at 0.97x, at 1.03x the threshold" in v.prediction, v.prediction
    assert len(verdicts[-1].measured.value) == 3
    assert "diverged fraction of SGD, of SGDM, of SGD+SVAG(2)" in verdicts[-1].prediction


def _no_divergence(*args, **kwargs):
    return types.SimpleNamespace(divergence=[])


def _fake_sklearn(monkeypatch, n: int = 200):
    g = np.random.default_rng(0)
    data = types.SimpleNamespace(data=g.integers(0, 17, size=(n, 64)).astype(float),
                                 target=np.arange(n) % 10)
    sk = types.ModuleType("sklearn")
    sk.datasets = types.ModuleType("sklearn.datasets")
    sk.datasets.load_digits = lambda: data
    monkeypatch.setitem(sys.modules, "sklearn", sk)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", sk.datasets)
    return data


def test_digits_defaults_are_those_of_from_arrays(monkeypatch):
    """Same held-out fraction and scaling as from_arrays by default; raw pixels on request."""
    data = _fake_sklearn(monkeypatch)
    own = inspect.signature(datasets.from_arrays).parameters
    mine = inspect.signature(datasets.digits).parameters
    for p in ("test_fraction", "seed", "standardize"):
        assert mine[p].default == own[p].default, p
    d = datasets.digits()
    ref = datasets.from_arrays(data.data, data.target, n_classes=10)
    np.testing.assert_array_equal(d.X_train, ref.X_train)
    np.testing.assert_array_equal(d.y_test, ref.y_test)
    assert abs(d.X_train.mean(axis=0)).max() < 1e-12          # standardised, as documented
    raw = datasets.digits(standardize=False)
    assert set(np.unique(raw.X_train)) <= set(range(17))
    assert "standardised" in datasets.digits.__doc__
