"""`DeployModule`: the deploy IR graph as a plain PyTorch module, the oracle for every runtime.

Binary layers run the XnorConv2d contract's reference (xnorpipe.deploy.reference) on +-1
float32 weights unpacked once: the integer tap sums are exact in float32 below 2**24.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from xnorpipe.deploy import ir
from xnorpipe.deploy.packing import unpack_weights
from xnorpipe.deploy.reference import xnor_conv2d_pm1
from xnorpipe.nn import ChannelShuffle


def _torch_pads(pads) -> tuple[int, int, int, int]:
    top, left, bottom, right = pads
    return (left, right, top, bottom)  # F.pad order: last dim first


class _FloatConv(nn.Module):
    def __init__(self, layer: ir.FloatConv):
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(np.asarray(layer.weight, np.float32).copy()))
        self.register_buffer("bias", torch.from_numpy(np.asarray(layer.bias, np.float32).copy()))
        self.pads, self.strides, self.dilations = layer.pads, layer.strides, layer.dilations
        self.group, self.relu = layer.group, layer.relu

    def forward(self, x):
        top, left, bottom, right = self.pads
        if top == bottom and left == right:
            y = F.conv2d(x, self.weight, self.bias, self.strides, (top, left), self.dilations, self.group)
        else:
            y = F.conv2d(F.pad(x, _torch_pads(self.pads)), self.weight, self.bias, self.strides, 0,
                         self.dilations, self.group)
        return F.relu(y) if self.relu else y


class _BinaryConv(nn.Module):
    def __init__(self, layer: ir.BinaryConv):
        super().__init__()
        cg = layer.in_channels // layer.group
        self.register_buffer("weight", torch.from_numpy(unpack_weights(layer.weight_bits, cg)))
        for name in ("threshold", "scale", "bias"):
            self.register_buffer(name, torch.from_numpy(np.asarray(getattr(layer, name), np.float32).copy()))
        self.pads, self.strides, self.dilations = layer.pads, layer.strides, layer.dilations
        self.group, self.relu = layer.group, layer.relu
        self.shuffle = ChannelShuffle(layer.group) if layer.shuffle_output else None

    def forward(self, x):
        y = xnor_conv2d_pm1(x, self.weight, self.threshold, self.scale, self.bias,
                            strides=self.strides, pads=self.pads, dilations=self.dilations,
                            group=self.group, relu=self.relu)
        return self.shuffle(y) if self.shuffle is not None else y


class _Pool(nn.Module):
    def __init__(self, layer: ir.MaxPool | ir.AvgPool):
        super().__init__()
        self.max = isinstance(layer, ir.MaxPool)
        self.kernel, self.strides, self.pads = layer.kernel_shape, layer.strides, layer.pads

    def forward(self, x):
        top, left, bottom, right = self.pads
        if top == bottom and left == right:
            if self.max:
                return F.max_pool2d(x, self.kernel, self.strides, (top, left))
            return F.avg_pool2d(x, self.kernel, self.strides, (top, left), count_include_pad=True)
        pad_value = -float("inf") if self.max else 0.0
        x = F.pad(x, _torch_pads(self.pads), value=pad_value)
        return F.max_pool2d(x, self.kernel, self.strides) if self.max else F.avg_pool2d(x, self.kernel, self.strides)


class _Flatten(nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], -1)


class _Add(nn.Module):
    def forward(self, a, b):
        return a + b


class _Concat(nn.Module):
    def forward(self, *xs):
        return torch.cat(xs, dim=1)


class _Linear(nn.Module):
    def __init__(self, layer: ir.Linear):
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(np.asarray(layer.weight, np.float32).copy()))
        self.register_buffer("bias", torch.from_numpy(np.asarray(layer.bias, np.float32).copy()))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class _PRelu(nn.Module):
    def __init__(self, layer: ir.PRelu):
        super().__init__()
        self.register_buffer("slope", torch.from_numpy(np.asarray(layer.slope, np.float32).copy()))

    def forward(self, x):
        return F.prelu(x, self.slope)


class _Clip(nn.Module):
    def __init__(self, layer: ir.Clip):
        super().__init__()
        self.low, self.high = layer.low, layer.high

    def forward(self, x):
        return torch.clamp(x, self.low, self.high)


def _build(op: ir.Op) -> nn.Module:
    if isinstance(op, ir.FloatConv):
        return _FloatConv(op)
    if isinstance(op, ir.BinaryConv):
        return _BinaryConv(op)
    if isinstance(op, (ir.MaxPool, ir.AvgPool)):
        return _Pool(op)
    if isinstance(op, ir.ChannelShuffle):
        return ChannelShuffle(op.groups)
    simple = {ir.Flatten: _Flatten, ir.Add: _Add, ir.Concat: _Concat, ir.Relu: nn.ReLU}
    if type(op) in simple:
        return simple[type(op)]()
    built = {ir.Linear: _Linear, ir.PRelu: _PRelu, ir.Clip: _Clip}
    if type(op) in built:
        return built[type(op)](op)
    raise TypeError(f"unknown IR op {type(op).__name__}")


class DeployModule(nn.Module):
    """Normalised float32 NCHW input -> logits, computed from the IR alone (its nodes in order,
    each tensor dropped after its last reader)."""

    def __init__(self, model: ir.DeployModel):
        super().__init__()
        ir.tensor_shapes(model)  # a consistent graph
        self.arch = model.arch
        self.layers = nn.ModuleList([_build(n.op) for n in model.nodes])
        self.wiring = [(n.inputs, n.output) for n in model.nodes]
        self.output = model.output
        last_read = {t: i for i, n in enumerate(model.nodes) for t in n.inputs}
        self.dead_after = [[t for t in dict.fromkeys(n.inputs) if last_read[t] == i and t != model.output]
                           for i, n in enumerate(model.nodes)]
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {ir.INPUT: x}
        for i, (layer, (inputs, output)) in enumerate(zip(self.layers, self.wiring)):
            values[output] = layer(*(values[t] for t in inputs))
            for t in self.dead_after[i]:
                del values[t]
        return values[self.output]
