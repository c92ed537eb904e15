"""Heavy-batch training of real networks, torch-free (the paper's Sec 6 experiments).

Many replicas × optimizers of one network (an MLP or the CIFAR ResNet) train in one launch on the NumPy reference, the Numba
CPU backend or numba.cuda, with common initial weights and minibatches per replica so that
optimizer differences are paired::

    from sdeverify import SGD, SGDM
    from sdeverify.train import MLP, fit, teacher_student
    data = teacher_student(n=4096, dim=32, classes=10)
    res = fit(MLP([32, 128, 10]), data, [SGD(0.5), SGDM(0.5, 0.9)], batch_size=512,
              epochs=5, replicas=8)
    print(res.summary())
"""
from .datasets import Dataset, cifar10, digits, from_arrays, teacher_student
from . import backends
from .spec import TrainSpec
from ..schedules import svag_weights
from .training import fit, minibatch_indices
from .convnet import ResNet, resnet
from .images import cifar10_images, conv_teacher
from .lr import epoch_multiplier, goyal_multiplier, linear_scaling
from .models import MLP
from .result import METRICS, TrainResult
from .tuning import LrTuning, tune_lr

__all__ = ["MLP", "Dataset", "teacher_student", "digits", "from_arrays", "cifar10", "fit",
           "TrainResult", "METRICS", "goyal_multiplier", "linear_scaling", "svag_weights",
           "TrainSpec", "minibatch_indices", "backends", "ResNet", "resnet", "conv_teacher",
           "cifar10_images", "epoch_multiplier", "tune_lr", "LrTuning"]
