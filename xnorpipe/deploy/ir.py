"""The deploy IR: a trained model folded into a short list of layers.

It is the single source for every emitter (portable ONNX, packed ONNX, PyTorch deploy module)
and every runtime. Arrays are NumPy, float32 unless noted; pads are ONNX-style
[top, left, bottom, right].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FloatConv:
    """Conv2d with BatchNorm folded into weight and bias, optionally followed by ReLU."""

    weight: np.ndarray  # [M, C/group, kH, kW]
    bias: np.ndarray  # [M]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    relu: bool = False

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.group

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel_shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape[2:])


@dataclass
class BinaryConv:
    """`xnorpipe::XnorConv2d`: sign(x >= threshold) conv packed +-1 weights, * scale + bias."""

    weight_bits: np.ndarray  # int32 [M, kH, kW, ceil((C/group)/32)], see packing.py
    threshold: np.ndarray  # [C], may hold +-inf (BN gamma == 0)
    scale: np.ndarray  # [M]
    bias: np.ndarray  # [M]
    kernel_shape: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    relu: bool = False
    # Output channels shuffled as ChannelShuffle(group) does (docs/XNORCONV2D.md, packed-bits):
    # group g's j-th filter writes channel j * group + g. W, scale and bias keep the grouped
    # order; a channel shuffle after a grouped layer folds into it this way (fold.fold_shuffles).
    shuffle_output: bool = False

    @property
    def in_channels(self) -> int:
        return self.threshold.shape[0]

    @property
    def out_channels(self) -> int:
        return self.weight_bits.shape[0]


@dataclass
class MaxPool:
    kernel_shape: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class AvgPool:
    """Average pool; zero padding counts in the divisor (PyTorch's count_include_pad=True)."""

    kernel_shape: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class ChannelShuffle:
    """ShuffleNet shuffle: view(B, g, C/g, H, W) -> transpose(1, 2) -> view(B, C, H, W)."""

    groups: int


def shuffle_order(channels: int, groups: int) -> np.ndarray:
    """ChannelShuffle(groups) as an index: output channel c reads input channel order[c]."""
    if groups < 1 or channels % groups:
        raise ValueError(f"cannot shuffle {channels} channels in {groups} groups")
    return np.arange(channels).reshape(groups, channels // groups).T.reshape(-1)


@dataclass
class Flatten:
    """view(B, -1)."""


Layer = FloatConv | BinaryConv | MaxPool | AvgPool | ChannelShuffle | Flatten


@dataclass
class DeployModel:
    arch: str
    layers: list[Layer]
    input_shape: tuple[int, int, int] = (3, 32, 32)  # C, H, W
    mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, ...] = (0.2023, 0.1994, 0.2010)
    classes: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)  # e.g. checkpoint sha256, random init
