"""The xnorpipe ONNX ops: ONE table (`OPS`) of the eight custom ops of domain `xnorpipe`,
version 1, whose contract is docs/XNORCONV2D.md.

Each row says what the contract says of the op: its inputs (name, dtype, shape in the contract's
symbols), its output, its attributes with their types and defaults (a default of None: required),
the builder of its model-local function body (functions.py) and the xnorpipe ops that body
calls. Whether the op reads or writes bit tensors follows from the shapes. Everything that
needs these facts reads them here: the function bodies (declared inputs, attribute defaults,
attribute references), the graph emitter and `single_node_model` (emit.py: attribute checks,
output shapes), the ONNX Runtime engine's library probe (`probe_model`), the TensorRT plugins
(xnorpipe.gpu.trt_plugin: attributes, inputs, io types, bit outputs) and the torch-xnor runner
(input counts).

Adding an op: a row here plus its body builder in functions.py; then the native kernels
(plugins/), which the table does not generate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from xnorpipe.deploy.forms import DEFAULT_OPSET
from xnorpipe.deploy.onnx import functions as _bodies
from xnorpipe.errors import XnorpipeError

DOMAIN = "xnorpipe"
OP_VERSION = 1


@dataclass(frozen=True)
class Attr:
    name: str
    kind: int  # AttributeProto.INT or AttributeProto.INTS
    default: int | tuple[int, ...] | None = None  # None: required

    @property
    def required(self) -> bool:
        return self.default is None

    def proto(self) -> onnx.AttributeProto:
        """The default as an AttributeProto (a function's declared default)."""
        value = list(self.default) if self.kind == AttributeProto.INTS else self.default
        return helper.make_attribute(self.name, value, attr_type=self.kind)


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: int  # TensorProto data type
    # the contract's shape; "words(S)" is ceil(S / 32), the int32 words of a bit tensor of S channels
    shape: tuple[str, ...]

    @property
    def np_dtype(self) -> np.dtype:
        return helper.tensor_dtype_to_np_dtype(self.dtype)


@dataclass(frozen=True)
class Op:
    name: str
    inputs: tuple[Tensor, ...]
    output: Tensor
    attributes: tuple[Attr, ...]
    body: Callable  # functions.py: fills a function body (its `_Body`) with the op's nodes
    calls: tuple[Op, ...] = ()  # the xnorpipe ops its body calls (nested model-local functions)
    binary_conv: bool = False  # the XnorConv2d family: a binary convolution of bit-packed weights
    doc: str = ""  # the function's doc string says this after the op's name
    # The function imports the xnorpipe domain next to ai.onnx. XnorConv2d's body, the first one
    # written, imports ai.onnx only; it stays so, so that files stay byte-identical.
    body_imports_domain: bool = True
    domain: str = DOMAIN
    version: int = OP_VERSION

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes if a.required)

    @property
    def defaults(self) -> dict[str, int | tuple[int, ...]]:
        return {a.name: a.default for a in self.attributes if not a.required}

    @property
    def reads_bits(self) -> bool:
        """Its first input is a bit tensor (int32 words of 32 channels)."""
        return self.inputs[0].shape[1].startswith("words(")

    @property
    def writes_bits(self) -> bool:
        """Its output is a bit tensor."""
        return self.output.shape[1].startswith("words(")

    def attr(self, name: str) -> Attr:
        for a in self.attributes:
            if a.name == name:
                return a
        raise XnorpipeError(f"internal error: xnorpipe::{self.name} has no attribute {name!r}")

    def function(self, opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
        """The op's model-local function: its body from standard ops (and the ops it calls)."""
        return _bodies.function_proto(self, opset)


# Attributes shared by several ops: one name, one type and one default each.
INT, INTS = AttributeProto.INT, AttributeProto.INTS
KERNEL_SHAPE = Attr("kernel_shape", INTS)
STRIDES = Attr("strides", INTS, (1, 1))
PADS = Attr("pads", INTS, (0, 0, 0, 0))  # [top, left, bottom, right]
DILATIONS = Attr("dilations", INTS, (1, 1))
GROUP = Attr("group", INT, 1)
RELU = Attr("relu", INT, 0)
CHANNELS = Attr("channels", INT)  # C of a bit input, which its word count does not give
SHUFFLE_OUTPUT = Attr("shuffle_output", INT, 0)
CONV_ATTRS = (KERNEL_SHAPE, STRIDES, PADS, DILATIONS, GROUP, RELU)
POOL_ATTRS = (KERNEL_SHAPE, STRIDES, PADS)

FLOAT, INT32 = TensorProto.FLOAT, TensorProto.INT32
NCHW, BITS = ("N", "C", "H", "W"), ("N", "words(C)", "H", "W")


def _bits_out(channels: str) -> Tensor:
    return Tensor("Y", INT32, ("N", f"words({channels})", "Ho", "Wo"))


BINARIZE_OP = Op("Binarize", (Tensor("X", FLOAT, NCHW), Tensor("threshold", FLOAT, ("C",))),
                 Tensor("Y", INT32, BITS), (), _bodies.binarize_body,
                 doc="GreaterOrEqual, padded to whole words, bit planes ORed into words")
XNOR_CONV_OP = Op("XnorConv2d",
                  (Tensor("X", FLOAT, NCHW), Tensor("W", INT32, ("M", "kH", "kW", "words(C/group)")),
                   Tensor("threshold", FLOAT, ("C",)), Tensor("scale", FLOAT, ("M",)), Tensor("bias", FLOAT, ("M",))),
                  Tensor("Y", FLOAT, ("N", "M", "Ho", "Wo")), CONV_ATTRS, _bodies.xnor_conv_body,
                  binary_conv=True, body_imports_domain=False)
_BITS_CONV_INPUTS = (Tensor("Xp", INT32, BITS), XNOR_CONV_OP.inputs[1], XNOR_CONV_OP.inputs[3], XNOR_CONV_OP.inputs[4])
CONV_BITS_OP = Op("XnorConv2dBits", _BITS_CONV_INPUTS, XNOR_CONV_OP.output,
                  CONV_ATTRS + (CHANNELS, SHUFFLE_OUTPUT), _bodies.xnor_conv_bits_body, calls=(XNOR_CONV_OP,),
                  binary_conv=True, doc="unpack, then XnorConv2d, then the output's channel shuffle if shuffle_output")
CONV_BITS_BINARIZE_OP = Op("XnorConv2dBitsBinarize", _BITS_CONV_INPUTS + (Tensor("output_threshold", FLOAT, ("M",)),),
                           _bits_out("M"), CONV_BITS_OP.attributes, _bodies.xnor_conv_bits_binarize_body,
                           calls=(CONV_BITS_OP, BINARIZE_OP), binary_conv=True, doc="XnorConv2dBits, then Binarize")
BIT_MAX_POOL_OP = Op("BitMaxPool", (Tensor("Xp", INT32, BITS),), _bits_out("C"), POOL_ATTRS,
                     _bodies.bit_max_pool_body, doc="unpack, MaxPool, repack")
CONV_BINARIZE_OP = Op("ConvBinarize",  # float conv (+ ReLU) + the next layer's Binarize, fused
                      (Tensor("X", FLOAT, NCHW), Tensor("W", FLOAT, ("M", "C/group", "kH", "kW")),
                       Tensor("B", FLOAT, ("M",)), Tensor("threshold", FLOAT, ("M",))),
                      _bits_out("M"), CONV_ATTRS, _bodies.conv_binarize_body, calls=(BINARIZE_OP,),
                      doc="Conv, ReLU by Max with 0 or -inf, then Binarize")
AVG_POOL_BINARIZE_OP = Op("AvgPoolBinarize",  # AveragePool + the next layer's Binarize, fused
                          (Tensor("X", FLOAT, NCHW), Tensor("threshold", FLOAT, ("C",))), _bits_out("C"),
                          POOL_ATTRS, _bodies.avg_pool_binarize_body, calls=(BINARIZE_OP,),
                          doc="AveragePool (count_include_pad=1), then Binarize")
# the integer first layer: uint8 image in, int8 weights, bits out (--first-layer int8)
CONV_INTEGER_BINARIZE_OP = Op(
    "ConvIntegerBinarize",
    (Tensor("X", TensorProto.UINT8, ("N", "H", "W", "C")), Tensor("W", TensorProto.INT8, ("M", "C", "kH", "kW")),
     Tensor("x_zero_point", TensorProto.UINT8, ("C",)), Tensor("pad_value", TensorProto.INT16, ("M", "kH", "kW")),
     Tensor("threshold", INT32, ("M",)), Tensor("margin", INT32, ("M",)),
     Tensor("fine_weight", INT32, ("M", "C", "kH", "kW")), Tensor("fine_pad_value", INT32, ("M", "kH", "kW")),
     Tensor("fine_threshold", TensorProto.INT64, ("M",))),
    _bits_out("M"), (KERNEL_SHAPE, STRIDES, PADS, DILATIONS), _bodies.conv_integer_binarize_body,
    doc="ConvInteger byte planes for both sums (image minus zero points plus pad values), the margin rule, packed")

# The table, in the order a model carries the functions.
OPS: dict[str, Op] = {op.name: op for op in (XNOR_CONV_OP, BINARIZE_OP, CONV_BITS_OP, CONV_BITS_BINARIZE_OP,
                                             BIT_MAX_POOL_OP, CONV_BINARIZE_OP, AVG_POOL_BINARIZE_OP,
                                             CONV_INTEGER_BINARIZE_OP)}

OP_NAME = XNOR_CONV_OP.name
BINARIZE, CONV_BITS, CONV_BITS_BINARIZE, BIT_MAX_POOL = (BINARIZE_OP.name, CONV_BITS_OP.name,
                                                         CONV_BITS_BINARIZE_OP.name, BIT_MAX_POOL_OP.name)
CONV_BINARIZE, AVG_POOL_BINARIZE = CONV_BINARIZE_OP.name, AVG_POOL_BINARIZE_OP.name
CONV_INTEGER_BINARIZE = CONV_INTEGER_BINARIZE_OP.name
CONV_INTEGER_BINARIZE_INPUTS = CONV_INTEGER_BINARIZE_OP.input_names
CONV_OPS = tuple(op.name for op in OPS.values() if op.binary_conv)  # the XnorConv2d family
BIT_OPS = tuple(op.name for op in OPS.values() if not op.binary_conv)  # bit-activation ops outside it


def op_spec(op_type: str) -> Op:
    if op_type not in OPS:
        raise XnorpipeError(f"unknown xnorpipe op {op_type!r}; the ops are {', '.join(OPS)}")
    return OPS[op_type]


def check_attributes(op: Op, names: Iterable[str]) -> None:
    """A node of `op` with attributes `names`: none unknown to the table, every required one there."""
    names = set(names)
    unknown = sorted(names - set(op.attribute_names))
    if unknown:
        raise XnorpipeError(f"xnorpipe::{op.name} has no attribute {', '.join(unknown)} "
                            f"(its attributes: {', '.join(op.attribute_names)})")
    missing = [a for a in op.required if a not in names]
    if missing:
        raise XnorpipeError(f"xnorpipe::{op.name} needs the attribute {', '.join(missing)}")


def make_node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str | None = None,
              **attrs) -> onnx.NodeProto:
    """A node of xnorpipe op `op_type` in the table's domain, its attributes checked against the table."""
    op = op_spec(op_type)
    check_attributes(op, attrs)
    return helper.make_node(op.name, list(inputs), list(outputs), name=name, domain=op.domain, **attrs)


def functions_for(op_types: Iterable[str], opset: int = DEFAULT_OPSET) -> list[onnx.FunctionProto]:
    """The model-local functions that nodes of `op_types` (xnorpipe domain) need, callees
    included, in the table's order."""
    need: set[str] = set()
    todo = [OPS[op] for op in op_types if op in OPS]
    while todo:
        op = todo.pop()
        if op.name not in need:
            need.add(op.name)
            todo.extend(op.calls)
    return [op.function(opset) for op in OPS.values() if op.name in need]
