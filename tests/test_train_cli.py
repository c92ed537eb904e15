"""``sdeverify train``: a run writes loadable results and a figure; bad values exit 2 with one line."""
from __future__ import annotations

import numpy as np
import pytest

from sdeverify.cli import main
from sdeverify.train import TrainResult


def test_train_writes_results_and_curves(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "--model", "resnet8", "--width", "0.25", "--n-train", "96",
               "--image-size", "8", "--batch-size", "16", "--epochs", "2", "--lr", "0.05,0.1",
               "--svag", "1", "--replicas", "2", "--dtype", "float64", "--out", str(out),
               "--quiet"])
    assert rc == 0
    for lr in ("0.05", "0.1"):
        res = TrainResult.load(out / f"train-lr{lr}-svag1")
        assert res.optimizers == ("SGD", "SGDM")
        assert res.eval_steps.tolist() == [0, 4, 8]            # every epoch: 72 // 16 = 4 steps
        assert res.meta["augment"] is True and np.all(np.isfinite(res.values))
    assert (out / "train.png").stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "ResNet-8" in text and "lr=0.05, svag=1" in text and "nan" not in text.lower()


def test_train_a_resnet_without_batchnorm(tmp_path, capsys):
    assert main(["train", "--model", "resnet8", "--width", "0.25", "--no-bn", "--n-train", "64",
                 "--image-size", "8", "--batch-size", "16", "--epochs", "1", "--lr", "0.05",
                 "--svag", "1", "--replicas", "1", "--out", str(tmp_path), "--quiet"]) == 0
    res = TrainResult.load(tmp_path / "train-lr0.05-svag1")
    assert res.buffers is None or res.buffers.size == 0
    assert "norm=False" in capsys.readouterr().out


def test_train_mlp_on_vectors(tmp_path):
    assert main(["train", "--model", "mlp", "--hidden", "16", "--data", "teacher", "--n-train",
                 "128", "--batch-size", "32", "--epochs", "1", "--svag", "1,2", "--backend", "cpu",
                 "--out", str(tmp_path), "--quiet", "--format", "svg"]) == 0
    assert TrainResult.load(tmp_path / "train-lr0.1-svag2").meta["svag"] == 2
    assert (tmp_path / "train.svg").exists()


@pytest.mark.parametrize("argv, message", [
    (["--lr", "fast"], "--lr must be a comma list"),
    (["--lr", "-0.1"], "--lr must be a comma list of values >= 0"),
    (["--svag", "0"], "--svag must be a comma list of values >= 1"),
    (["--data", "teacher"], "--data teacher is vector data"),
    (["--model", "mlp"], "--data images are images"),
    (["--data", "mnist"], "--data must be images, teacher, digits or cifar10:FOLDER"),
    (["--batch-size", "0"], "--batch-size must be in [1, "),
    (["--optimizers", "adam"], "--optimizers must be a comma list of distinct sgd, sgdm"),
    (["--seed", "-1"], "--seed"),
    (["--depth-typo"], "unrecognized arguments"),
    (["--data", "cifar10:/nonexistent/folder"], "cifar"),
])
def test_bad_values_exit_2_with_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) if argv == ["--depth-typo"] else _no_raise() as _:
        rc = main(["train", "--n-train", "64", "--epochs", "1", "--out", str(tmp_path), "--quiet",
                   *argv])
        assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message.lower() in err.lower() and len(err.splitlines()) == 1, err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
