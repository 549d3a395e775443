"""The deploy IR: a trained model folded into a graph of deploy ops.

It is the single source for every emitter (portable ONNX, packed ONNX, PyTorch deploy module)
and every runtime. A `DeployModel` is a list of `Node`s in topological order; each node applies
one op to named tensors and writes one named tensor (the graph input is `INPUT`). Arrays are
NumPy, float32 unless noted; pads are ONNX-style [top, left, bottom, right]; shapes are per
sample (C, H, W), or (F,) after Flatten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xnorpipe.errors import XnorpipeError


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


@dataclass
class Add:
    """Elementwise sum of two float tensors of one shape (a residual shortcut)."""


@dataclass
class Concat:
    """Concatenation of float tensors along channels."""


@dataclass
class Linear:
    """Fully connected layer on a flat input: x @ weight.T + bias."""

    weight: np.ndarray  # [out, in]
    bias: np.ndarray  # [out]


@dataclass
class Relu:
    pass


@dataclass
class PRelu:
    """x if x >= 0 else slope * x, one slope per channel (or one for all)."""

    slope: np.ndarray  # [C] or [1]


@dataclass
class Clip:
    """min(max(x, low), high): Hardtanh."""

    low: float
    high: float


Op = FloatConv | BinaryConv | MaxPool | AvgPool | ChannelShuffle | Flatten | Add | Concat | Linear | Relu | PRelu | Clip
Layer = Op  # one op of a chain (DeployModel.from_layers)
CONVS = (FloatConv, BinaryConv)
# Ops that act on each channel alone: a channel permutation passes through them unchanged.
CHANNELWISE = (MaxPool, AvgPool, Relu, Clip)

INPUT = "input"  # the graph input's tensor name


@dataclass
class Node:
    op: Op
    inputs: tuple[str, ...]
    output: str
    source: str = ""  # where it was folded from (a module path), for messages


@dataclass
class DeployModel:
    arch: str
    nodes: list[Node]
    output: str = ""  # the model output's tensor; default: the last node's
    input_shape: tuple[int, int, int] = (3, 32, 32)  # C, H, W
    mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, ...] = (0.2023, 0.1994, 0.2010)
    classes: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)  # e.g. checkpoint sha256, random init

    def __post_init__(self):
        if not self.output and self.nodes:
            self.output = self.nodes[-1].output

    @classmethod
    def from_layers(cls, arch: str, layers: list[Op], **kwargs) -> DeployModel:
        """A chain: layer i reads layer i - 1's output (the first reads the input)."""
        nodes, x = [], INPUT
        for i, op in enumerate(layers):
            nodes.append(Node(op, (x,), f"t{i}"))
            x = f"t{i}"
        return cls(arch, nodes, **kwargs)

    @property
    def layers(self) -> list[Op]:
        """The ops in node order."""
        return [n.op for n in self.nodes]

    def consumers(self) -> dict[str, list[int]]:
        """tensor -> indices of the nodes reading it (once per node)."""
        out: dict[str, list[int]] = {INPUT: []}
        for n in self.nodes:
            out.setdefault(n.output, [])
        for i, n in enumerate(self.nodes):
            for t in dict.fromkeys(n.inputs):
                out.setdefault(t, []).append(i)
        return out

    def producers(self) -> dict[str, int]:
        """tensor -> index of the node writing it."""
        return {n.output: i for i, n in enumerate(self.nodes)}


def _spatial(op, shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise XnorpipeError(f"{what}: expects a (C, H, W) input, gets {shape}")
    c, h, w = shape
    kh, kw = op.kernel_shape
    top, left, bottom, right = op.pads
    dh, dw = getattr(op, "dilations", (1, 1))
    sh, sw = op.strides
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise XnorpipeError(f"{what}: a {kh}x{kw} window does not fit the {h}x{w} input")
    return c, ho, wo


def _op_shape(op: Op, shapes: list[tuple[int, ...]], what: str) -> tuple[int, ...]:
    x = shapes[0]
    if isinstance(op, CONVS):
        c, ho, wo = _spatial(op, x, what)
        if op.in_channels != c:
            raise XnorpipeError(f"{what}: expects {op.in_channels} channels, gets {c}")
        return op.out_channels, ho, wo
    if isinstance(op, (MaxPool, AvgPool)):
        return _spatial(op, x, what)
    if isinstance(op, ChannelShuffle):
        if len(x) != 3 or op.groups < 1 or x[0] % op.groups:
            raise XnorpipeError(f"{what}: cannot shuffle {x} in {op.groups} groups")
        return x
    if isinstance(op, Flatten):
        return (int(np.prod(x)),)
    if isinstance(op, Add):
        if len(shapes) != 2 or shapes[0] != shapes[1]:
            raise XnorpipeError(f"{what}: adds tensors of shapes {shapes}; they must be two of one shape")
        return x
    if isinstance(op, Concat):
        if len(shapes) < 1 or any(len(s) != 3 or s[1:] != x[1:] for s in shapes):
            raise XnorpipeError(f"{what}: concatenates shapes {shapes} on channels")
        return (sum(s[0] for s in shapes), *x[1:])
    if isinstance(op, Linear):
        if len(x) != 1 or op.weight.shape[1] != x[0]:
            raise XnorpipeError(f"{what}: Linear of {op.weight.shape[1]} inputs gets {x}")
        return (op.weight.shape[0],)
    if isinstance(op, PRelu):
        if op.slope.size not in (1, x[0]):
            raise XnorpipeError(f"{what}: PReLU has {op.slope.size} slopes for {x[0]} channels")
        return x
    if isinstance(op, (Relu, Clip)):
        return x
    raise XnorpipeError(f"{what}: unknown IR op {type(op).__name__}")


_ARITY = {Add: (2, 2), Concat: (1, None)}


def tensor_shapes(model: DeployModel) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every tensor; checks the graph (each tensor written once, before it
    is read; arities; shapes)."""
    shapes: dict[str, tuple[int, ...]] = {INPUT: tuple(model.input_shape)}
    for i, n in enumerate(model.nodes):
        what = f"IR node {i} ({type(n.op).__name__}{', ' + n.source if n.source else ''})"
        low, high = _ARITY.get(type(n.op), (1, 1))
        if len(n.inputs) < low or (high is not None and len(n.inputs) > high):
            raise XnorpipeError(f"{what}: takes {low}{'' if high == low else '+'} inputs, has {len(n.inputs)}")
        missing = [t for t in n.inputs if t not in shapes]
        if missing:
            raise XnorpipeError(f"{what}: reads {missing[0]!r} before anything writes it")
        if n.output in shapes:
            raise XnorpipeError(f"{what}: writes {n.output!r}, which is already written")
        shapes[n.output] = _op_shape(n.op, [shapes[t] for t in n.inputs], what)
    if model.output not in shapes or model.output == INPUT:
        raise XnorpipeError(f"the model output {model.output!r} is not written by any node")
    return shapes


def node_shapes(model: DeployModel) -> list[tuple[int, ...]]:
    """Per-sample output shape of every node, in node order."""
    shapes = tensor_shapes(model)
    return [shapes[n.output] for n in model.nodes]
