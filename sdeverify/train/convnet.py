"""The CIFAR ResNet of He et al. (2016, Sec. 4.2) as a trainer model description.

The paper's Sec. 6 experiments (Fig. 2, App. D.2) train ResNets with BatchNorm on CIFAR-10;
this module describes that network for the torch-free trainer (:mod:`sdeverify.train`):

* stem: 3×3 conv (no bias), BatchNorm, ReLU, ``16·width`` channels;
* three stages of ``n = (depth − 2)/6`` basic blocks with ``16·width``, ``32·width``,
  ``64·width`` channels; a block is ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``
  with 3×3 convs (padding 1, no bias); the first block of stages 2 and 3 has stride 2;
* shortcuts where the shape changes: option ``"A"`` — subsample ``x[..., ::2, ::2]`` and pad
  the new channels with zeros (half of them in front, half behind, as the widely used CIFAR
  reimplementation's ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4))``; no
  parameters) — or option ``"B"`` — 1×1 conv with stride 2 (no bias) + BatchNorm; elsewhere
  the identity;
* global average pooling, a linear head with bias, softmax cross-entropy (mean over the
  batch).

Parameters are one flat vector per model, laid out tensor by tensor in the order and with
the names of ``torch.nn.Module.named_parameters()`` of the usual PyTorch definition
(``conv1.weight``, ``bn1.weight``, ``bn1.bias``, ``layer1.0.conv1.weight``, …,
``layer2.0.shortcut.0.weight``, ``layer2.0.shortcut.1.weight``, …, ``linear.weight``,
``linear.bias``), each tensor row-major in torch's shape (conv ``(out, in, k, k)``, linear
``(classes, features)``): :meth:`ResNet.layout` lists them.  BatchNorm running statistics
are *state*, not parameters: a second flat vector per model (:meth:`ResNet.buffer_layout`,
``running_mean`` then ``running_var`` of each BN layer, initialised 0 and 1).

Initialisation (:meth:`ResNet.init`) is drawn from the project's counter-based generator
exactly as :meth:`sdeverify.train.models.MLP.init` does (Philox stream ``STREAM_INIT`` of
replica ``r``, one standard normal per parameter), so a replica's initial weights do not
depend on the backend or on how many replicas run: He normal (std √(2/fan_in), fan_in =
in·k·k) for conv and linear weights, BN γ = 1, β = 0, linear bias 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import numpy as np

from .. import rng
from ..validation import finite_float, flag, positive_int
from .models import STREAM_INIT

if TYPE_CHECKING:
    from .datasets import Dataset

__all__ = ["ResNet", "resnet", "Tensor", "Block", "SHORTCUTS", "BN_EPS", "BN_MOMENTUM"]

SHORTCUTS = ("A", "B")
#: BatchNorm's ε and running-statistics momentum (torch.nn.BatchNorm2d's defaults).
BN_EPS, BN_MOMENTUM = 1e-5, 0.1


class Tensor(NamedTuple):
    """One tensor of a flat vector: ``name`` (torch's), ``offset``, ``shape``, and ``kind``
    (``"conv"``, ``"bn_weight"``, ``"bn_bias"``, ``"linear_weight"``, ``"linear_bias"``,
    ``"running_mean"``, ``"running_var"``)."""
    name: str
    offset: int
    shape: tuple
    kind: str

    @property
    def size(self) -> int:
        """Number of entries."""
        return int(math.prod(self.shape))


class Block(NamedTuple):
    """A basic block: ``prefix`` (e.g. ``"layer2.0"``), channels in/out, stride, and whether
    its shortcut is a projection (option B, shape change), a zero-pad (option A, shape
    change) or the identity (``"B"``, ``"A"``, ``""``)."""
    prefix: str
    c_in: int
    c_out: int
    stride: int
    shortcut: str


@dataclass(frozen=True)
class ResNet:
    """The CIFAR ResNet-``depth`` (module docstring), ``depth = 6n + 2``.

    Parameters
    ----------
    depth : 8, 14, 20, 26, 32, … (6n + 2, n ≥ 1 blocks per stage).
    width : channel multiplier of 16-32-64 (> 0; stage-1 channels ``round(16·width)`` ≥ 1).
    shortcut : ``"A"`` (zero-pad, the paper's CIFAR choice) or ``"B"`` (1×1 conv + BN).
    classes : output classes (≥ 2).
    in_channels : image channels.
    image_size : image height = width (≥ 4).
    weight_decay : λ ≥ 0, added as λ·w to the gradient of the parameters in
        :meth:`decay_mask` (``torch.optim.SGD``'s ``weight_decay``).
    decay_bn : apply weight decay also to BN γ/β and the linear bias (``False``, the
        standard ResNet practice, excludes them).
    norm : BatchNorm after every conv (``True``, the paper's networks); ``False`` drops every
        BN layer (no γ/β parameters, no running statistics: the conv output goes straight on)
        — the same network without normalisation, for ablations (numpy and cpu backends).
    """
    depth: int = 20
    width: float = 1.0
    shortcut: str = "A"
    classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    weight_decay: float = 0.0
    decay_bn: bool = False
    norm: bool = True
    #: The loss on the logits (the trainer's loss code reads it, as for :class:`MLP`).
    loss: ClassVar[str] = "cross_entropy"

    def __post_init__(self):
        depth = positive_int("depth", self.depth)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), "
                             f"got {depth}")
        width = finite_float("width", self.width, low=0.0, low_open=True)
        if round(16 * width) < 1:
            raise ValueError(f"width must give at least 1 stage-1 channel (16·width >= 0.5), got {width}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        classes = positive_int("classes", self.classes)
        if classes < 2:
            raise ValueError(f"classes must be >= 2, got {classes}")
        in_ch = positive_int("in_channels", self.in_channels)
        size = positive_int("image_size", self.image_size)
        if size < 4:
            raise ValueError(f"image_size must be >= 4, got {size}")
        flag("decay_bn", self.decay_bn)
        flag("norm", self.norm)
        for name, v in (("depth", depth), ("width", width), ("classes", classes),
                        ("in_channels", in_ch), ("image_size", size),
                        ("weight_decay", finite_float("weight_decay", self.weight_decay, low=0.0)),
                        ("decay_bn", bool(self.decay_bn)), ("norm", bool(self.norm))):
            object.__setattr__(self, name, v)

    # ---- architecture ------------------------------------------------------------------
    @property
    def blocks_per_stage(self) -> int:
        """``n = (depth − 2) / 6``."""
        return (self.depth - 2) // 6

    @property
    def channels(self) -> tuple[int, int, int]:
        """Channels of the three stages: ``c, 2c, 4c`` with ``c = round(16·width)``."""
        c = int(round(16 * self.width))
        return c, 2 * c, 4 * c

    @property
    def n_classes(self) -> int:
        """Output logits (classes)."""
        return self.classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return self.in_channels, self.image_size, self.image_size

    def blocks(self) -> list[Block]:
        """The basic blocks in order (stage by stage)."""
        out, c_in = [], self.channels[0]
        for s, c in enumerate(self.channels):
            for b in range(self.blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                change = stride != 1 or c_in != c
                out.append(Block(f"layer{s + 1}.{b}", c_in, c, stride,
                                 self.shortcut if change else ""))
                c_in = c
        return out

    def spatial_sizes(self) -> tuple[int, int, int]:
        """Feature-map height (= width) of the three stages (a stride-2 3×3 conv with
        padding 1 maps H to ⌈H/2⌉, as the option-A subsampling does)."""
        h1 = self.image_size
        h2 = (h1 + 1) // 2
        return h1, h2, (h2 + 1) // 2

    # ---- layout ------------------------------------------------------------------------
    def layout(self) -> list[Tensor]:
        """Every parameter tensor (name, offset, shape, kind), in flat-vector order."""
        items: list[tuple[str, tuple, str]] = []

        def bn(name, c):
            if self.norm:
                items.extend([(f"{name}.weight", (c,), "bn_weight"), (f"{name}.bias", (c,), "bn_bias")])

        c0 = self.channels[0]
        items.append(("conv1.weight", (c0, self.in_channels, 3, 3), "conv"))
        bn("bn1", c0)
        for blk in self.blocks():
            p = blk.prefix
            items.append((f"{p}.conv1.weight", (blk.c_out, blk.c_in, 3, 3), "conv"))
            bn(f"{p}.bn1", blk.c_out)
            items.append((f"{p}.conv2.weight", (blk.c_out, blk.c_out, 3, 3), "conv"))
            bn(f"{p}.bn2", blk.c_out)
            if blk.shortcut == "B":
                items.append((f"{p}.shortcut.0.weight", (blk.c_out, blk.c_in, 1, 1), "conv"))
                bn(f"{p}.shortcut.1", blk.c_out)
        items.append(("linear.weight", (self.classes, self.channels[2]), "linear_weight"))
        items.append(("linear.bias", (self.classes,), "linear_bias"))
        return _offsets(items)

    def bn_layers(self) -> list[tuple[str, int]]:
        """``(name, channels)`` of every BatchNorm layer, in order."""
        return [(t.name[:-len(".weight")], t.shape[0]) for t in self.layout() if t.kind == "bn_weight"]

    def buffer_layout(self) -> list[Tensor]:
        """The BN running statistics: ``<bn>.running_mean`` then ``<bn>.running_var`` of
        every BN layer, in flat-buffer order."""
        items = []
        for name, c in self.bn_layers():
            items.extend([(f"{name}.running_mean", (c,), "running_mean"),
                          (f"{name}.running_var", (c,), "running_var")])
        return _offsets(items)

    @property
    def n_params(self) -> int:
        """Length of the flat parameter vector."""
        last = self.layout()[-1]
        return last.offset + last.size

    @property
    def n_buffers(self) -> int:
        """Length of the flat buffer vector (2 × the channels of every BN layer)."""
        return 2 * sum(c for _, c in self.bn_layers())

    def unflatten(self, p: np.ndarray) -> dict[str, np.ndarray]:
        """``{name: view}`` of a flat parameter vector ``p`` (or a stack ``p[..., :]``), each
        view of shape ``p.shape[:-1] + tensor shape``."""
        return _views(self.layout(), p)

    def unflatten_buffers(self, b: np.ndarray) -> dict[str, np.ndarray]:
        """``{name: view}`` of a flat buffer vector (or a stack of them)."""
        return _views(self.buffer_layout(), b)

    def decay_mask(self) -> np.ndarray:
        """Boolean ``(n_params,)``: where weight decay applies — every parameter when
        ``decay_bn``, else the conv and linear weights only (BN γ/β and the linear bias
        excluded, the standard ResNet practice)."""
        mask = np.ones(self.n_params, dtype=bool)
        if not self.decay_bn:
            for t in self.layout():
                if t.kind in ("bn_weight", "bn_bias", "linear_bias"):
                    mask[t.offset:t.offset + t.size] = False
        return mask

    def flops_per_sample(self) -> int:
        """2 × multiply-adds of one forward + backward pass per image, counting convs and the
        linear head (BN, ReLU and pooling are not counted): each conv costs its forward
        product, the weight gradient and the input gradient (3×), except the stem, whose input
        gradient is not needed (2×)."""
        h = dict(zip(("layer1", "layer2", "layer3"), self.spatial_sizes()))
        c0 = self.channels[0]
        total = 2 * 2 * c0 * self.in_channels * 9 * self.image_size ** 2
        for blk in self.blocks():
            hw = h[blk.prefix.split(".")[0]] ** 2
            total += 3 * 2 * hw * (blk.c_out * blk.c_in * 9 + blk.c_out * blk.c_out * 9)
            if blk.shortcut == "B":
                total += 3 * 2 * hw * blk.c_out * blk.c_in
        total += 3 * 2 * self.classes * self.channels[2]
        return int(total)

    # ---- initialisation ----------------------------------------------------------------
    def init(self, seed: int, replicas: int, replica_offset: int = 0,
             dtype: str = "float64") -> np.ndarray:
        """Initial flat parameters ``(replicas, n_params)`` (module docstring): He normal
        conv/linear weights from Philox stream ``STREAM_INIT`` of replica
        ``replica_offset + r``, BN γ = 1, β = 0, linear bias 0."""
        replicas = positive_int("replicas", replicas)
        z = rng.draws_numpy(rng.NORMAL, seed, np.arange(replicas) + int(replica_offset), 0,
                            STREAM_INIT, self.n_params, "float64")
        p = np.zeros_like(z)
        for t in self.layout():
            sl = slice(t.offset, t.offset + t.size)
            if t.kind in ("conv", "linear_weight"):
                fan_in = t.size // t.shape[0]
                p[:, sl] = np.sqrt(2.0 / fan_in) * z[:, sl]
            elif t.kind == "bn_weight":
                p[:, sl] = 1.0
        return p.astype(dtype)

    def init_buffers(self, models: int, dtype: str = "float64") -> np.ndarray:
        """Initial BN running statistics ``(models, n_buffers)``: means 0, variances 1."""
        b = np.zeros((positive_int("models", models), self.n_buffers), dtype=dtype)
        for t in self.buffer_layout():
            if t.kind == "running_var":
                b[:, t.offset:t.offset + t.size] = 1.0
        return b

    def check_data(self, data: "Dataset") -> None:
        """``ValueError`` unless ``data``'s inputs are images of shape :attr:`input_shape`."""
        shape = tuple(data.X_train.shape[1:])
        if shape != self.input_shape:
            raise ValueError(f"the data's inputs have shape {shape}, but {self.describe()} takes "
                             f"images {self.input_shape} (C, H, W)")

    def describe(self) -> str:
        """A one-line label, e.g. ``ResNet-20(width=1, shortcut=A, 3x32x32 -> 10, wd=0.0005,
        decay_bn=False)``."""
        return (f"ResNet-{self.depth}(width={self.width:g}, shortcut={self.shortcut}, "
                f"{'x'.join(map(str, self.input_shape))} -> {self.classes}, "
                f"wd={self.weight_decay:g}, decay_bn={self.decay_bn}"
                + ("" if self.norm else ", norm=False") + ")")


def resnet(depth: int = 20, width: float = 1.0, shortcut: str = "A", classes: int = 10,
           in_channels: int = 3, image_size: int = 32, weight_decay: float = 0.0,
           decay_bn: bool = False, norm: bool = True) -> ResNet:
    """The CIFAR ResNet-``depth`` (He et al. 2016): see :class:`ResNet` for the parameters.
    ``resnet(32)`` is the network of the paper's Fig. 2; ``norm=False`` the same net without
    BatchNorm."""
    return ResNet(depth, width, shortcut, classes, in_channels, image_size, weight_decay, decay_bn,
                  norm)


def _offsets(items) -> list[Tensor]:
    out, off = [], 0
    for name, shape, kind in items:
        t = Tensor(name, off, tuple(int(s) for s in shape), kind)
        out.append(t)
        off += t.size
    return out


def _views(layout: list[Tensor], p: np.ndarray) -> dict[str, np.ndarray]:
    return {t.name: p[..., t.offset:t.offset + t.size].reshape(p.shape[:-1] + t.shape)
            for t in layout}
