"""The protocol's lr tuning (sdeverify.train.tuning): a factor-2 grid on a validation split,
extended until the choice is interior, diverged replicas at chance, the test set untouched."""
import numpy as np
import pytest

from sdeverify.optim import SGDM
from sdeverify.train import MLP, Dataset, teacher_student
from sdeverify.train.tuning import LrTuning, tune_lr


@pytest.fixture(scope="module")
def data():
    return teacher_student(n=1024, dim=8, classes=4, hidden=16, seed=0)


MODEL = MLP([8, 16, 4])


def sgdm(lr):
    return SGDM(lr, 0.9)


def test_a_grid_below_the_best_lr_is_extended_until_the_choice_is_interior(data):
    t = tune_lr(MODEL, data, sgdm, [0.01, 0.02], batch_size=64, epochs=3, replicas=2,
                max_extensions=8)
    assert isinstance(t, LrTuning)
    assert t.extended >= 2 and not t.at_edge
    assert t.grid[0] == 0.01 and np.allclose(np.diff(np.log2(t.grid)), 1.0)    # factor-2 steps
    assert t.grid[0] < t.lr < t.grid[-1]
    assert t.lr == t.grid[int(np.argmax(t.mean_acc))]                      # tolerance 0: the best
    assert t.val_acc.shape == (len(t.grid), 2)
    assert "*" in t.describe()


def test_an_exhausted_extension_budget_is_reported_at_the_edge(data):
    t = tune_lr(MODEL, data, sgdm, [0.01, 0.02], batch_size=64, epochs=3, replicas=2,
                max_extensions=0)
    assert t.grid == (0.01, 0.02) and t.extended == 0
    assert t.at_edge and t.lr == 0.02
    assert "inconclusive" in t.describe()


def test_a_diverged_replica_scores_chance_and_is_counted(data):
    t = tune_lr(MODEL, data, sgdm, [1e3, 2e3], batch_size=64, epochs=2, replicas=2,
                max_extensions=0)
    assert t.diverged.sum() > 0
    assert np.all(np.isfinite(t.val_acc))
    assert np.sum(t.val_acc == 0.25) >= t.diverged.sum()        # chance = 1/4 classes


def test_a_flat_plateau_is_not_extended_and_is_reported_inconclusive(data):
    """Every lr diverges (all at chance, exactly tied): more lrs cannot resolve the choice."""
    t = tune_lr(MODEL, data, sgdm, [1e3, 2e3], batch_size=64, epochs=1, replicas=2,
                max_extensions=4)
    assert np.all(t.val_acc == 0.25)
    assert t.extended == 0 and t.at_edge and t.lr == 1e3


def test_the_test_set_never_enters_the_choice(data):
    """Scrambling the test labels (and images) changes nothing: only the validation slice of
    the training set is used."""
    rng = np.random.default_rng(3)
    other = Dataset(data.X_train, data.y_train, rng.normal(size=data.X_test.shape),
                    rng.integers(0, 4, data.y_test.shape[0]), data.n_classes, "scrambled test set")
    a = tune_lr(MODEL, data, sgdm, [0.05, 0.1, 0.2], batch_size=64, epochs=2, replicas=2)
    b = tune_lr(MODEL, other, sgdm, [0.05, 0.1, 0.2], batch_size=64, epochs=2, replicas=2)
    assert a.grid == b.grid and a.lr == b.lr
    np.testing.assert_array_equal(a.val_acc, b.val_acc)


@pytest.mark.parametrize("kw, name", [(dict(grid=[]), "grid"), (dict(grid=[0.1, -1.0]), "grid"),
                                      (dict(grid=[0.1, 0.1]), "grid"),
                                      (dict(batch_size=10_000), "batch_size"),
                                      (dict(epochs=0), "epochs"), (dict(tolerance=-1), "tolerance"),
                                      (dict(max_extensions=-1), "max_extensions")])
def test_bad_input_names_the_parameter(data, kw, name):
    args = dict(grid=[0.1, 0.2], batch_size=64, epochs=1)
    args.update(kw)
    grid = args.pop("grid")
    with pytest.raises(ValueError, match=name):
        tune_lr(MODEL, data, sgdm, grid, **args)
