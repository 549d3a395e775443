"""ONNX emitters of the deploy IR: the portable form (standard ops), the packed and packed-bits
forms, and those two with their functions inlined. The forms are listed in deploy/forms.py;
their contract is docs/XNORCONV2D.md.

packed: `xnorpipe::XnorConv2d` v1 nodes with int32 bit-word weights, plus ONE model-local
FunctionProto `xnorpipe::XnorConv2d` whose body computes the op from standard ops. The body is
attribute-generic: its nodes take kernel_shape, strides, pads, dilations and group by
`ref_attr_name`, and `group`/`relu` also reach it as tensors through
`Constant(value_int=@attr)`; ONNX Runtime 1.32 inlines it per call site. One function name
keeps `op_type == "XnorConv2d"`, which is what TensorRT's parser maps to the plugin (no
overloads needed). The body unpacks bits with BitwiseAnd, so the packed form needs opset >= 18.

packed-bits: as packed, but binary layers that feed binary layers pass bit-packed activations
(int32 [N, ceil(C/32), H, W]) through `Binarize`, `XnorConv2dBits`, `XnorConv2dBitsBinarize`
and `BitMaxPool` (the contract's last section), each with its own model-local function; a
float conv (group 1) that feeds a binary layer reading bits writes its bits itself through
`ConvBinarize` (Conv, ReLU and the next layer's binarization in one node), and an
AveragePool that feeds one through `AvgPoolBinarize`. The bit ops' bodies call `XnorConv2d`
and `Binarize` (nested model-local functions), so a model carries the functions its nodes use
and the ones those call. Bodies pack bits with BitwiseOr, never an integer sum (OpenVINO sums
int32 in float32).

packed-inline, packed-bits-inline: the same models after `onnx.inliner`: standard ops only,
no function, for runtimes that expand no model-local function; weights stay bit-packed.

The integer first layer (`first_layer=`, deploy/first_layer.py; packed-bits and its inlined
form): `xnorpipe::ConvIntegerBinarize` on the uint8 NHWC image replaces the first
`ConvBinarize`; its function body is built from ConvInteger (files `<arch>.<form>.int8.onnx`).

Files carry the lowest IR version their form and opset need (IR 8 for portable at opset 18,
IR 9 for function attribute defaults), and the opset is bounded by what the installed onnx and
ONNX Runtime support.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xnorpipe import __version__
from xnorpipe.deploy import ir
from xnorpipe.deploy.forms import DEFAULT_OPSET, FIRST_LAYERS, FORM_SETS, FORMS, FORMS_BY_NAME, INT8_FORMS, MIN_OPSET
from xnorpipe.deploy.packing import WORD_BITS, num_words, unpack_weights
from xnorpipe.errors import XnorpipeError
from xnorpipe.utils import atomic_path, remove_stale_temps, write_error

DOMAIN = "xnorpipe"
OP_NAME = "XnorConv2d"
OP_VERSION = 1
CONTRACT = "docs/XNORCONV2D.md"
INPUT_CONVENTION = "RGB uint8 / 255, then (x - mean) / std, NCHW float32"
BINARIZE, CONV_BITS, CONV_BITS_BINARIZE, BIT_MAX_POOL = ("Binarize", "XnorConv2dBits",
                                                         "XnorConv2dBitsBinarize", "BitMaxPool")
CONV_BINARIZE = "ConvBinarize"  # float conv (+ ReLU) + the next layer's Binarize, fused
AVG_POOL_BINARIZE = "AvgPoolBinarize"  # AveragePool + the next layer's Binarize, fused
# the integer first layer: uint8 image in, int8 weights, bits out (--first-layer int8)
CONV_INTEGER_BINARIZE = "ConvIntegerBinarize"
CONV_INTEGER_BINARIZE_INPUTS = ("X", "W", "x_zero_point", "pad_value", "threshold", "margin", "fine_weight",
                                "fine_pad_value", "fine_threshold")  # and the tensors' dtypes: the contract
CONV_OPS = (OP_NAME, CONV_BITS, CONV_BITS_BINARIZE)  # the XnorConv2d family
# bit-activation ops outside the XnorConv2d family
BIT_OPS = (BINARIZE, CONV_BINARIZE, BIT_MAX_POOL, AVG_POOL_BINARIZE, CONV_INTEGER_BINARIZE)
INT8_INPUT_CONVENTION = "RGB uint8 as decoded, NHWC, no normalisation (folded into the integer first layer)"
INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "logits", "batch"


# ---------------------------------------------------------------------------------- shapes


def layer_shapes(model: ir.DeployModel) -> list[tuple[int, ...]]:
    """Per-sample output shape of every layer: (C, H, W), or (F,) after Flatten."""
    shape: tuple[int, ...] = tuple(model.input_shape)
    out = []
    for layer in model.layers:
        if isinstance(layer, (ir.FloatConv, ir.BinaryConv, ir.MaxPool, ir.AvgPool)):
            c, h, w = shape
            kh, kw = layer.kernel_shape
            top, left, bottom, right = layer.pads
            dh, dw = getattr(layer, "dilations", (1, 1))
            sh, sw = layer.strides
            ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
            wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
            if isinstance(layer, (ir.FloatConv, ir.BinaryConv)):
                if layer.in_channels != c:
                    raise XnorpipeError(f"IR layer expects {layer.in_channels} channels, gets {c}")
                c = layer.out_channels
            shape = (c, ho, wo)
        elif isinstance(layer, ir.ChannelShuffle):
            pass
        elif isinstance(layer, ir.Flatten):
            shape = (int(np.prod(shape)),)
        else:
            raise XnorpipeError(f"unknown IR layer {type(layer).__name__}")
        out.append(shape)
    return out


# ------------------------------------------------------------------------- the op function


def _attr_ref(name: str, ref: str, kind: int) -> onnx.AttributeProto:
    a = onnx.AttributeProto()
    a.name, a.ref_attr_name, a.type = name, ref, kind
    return a


def xnor_conv_function(opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """`xnorpipe::XnorConv2d` from standard ops (the contract's semantics, any attributes).

    Unpacking: W [M,kH,kW,nw] & (1 << k) != 0 -> +-1, reshaped to [M,kH,kW,32*nw], cut to
    C/group channels and transposed to Conv's [M, C/group, kH, kW]. Conv zero-pads the +-1
    tensor, as the contract requires.
    """
    A = onnx.AttributeProto
    masks = np.array([1 << k for k in range(WORD_BITS)], dtype=np.int64).astype(np.uint32).view(np.int32)
    n = []

    def const(name, value):
        n.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name)))

    const("one", np.array(1.0, np.float32))
    const("minus_one", np.array(-1.0, np.float32))
    const("zero_f", np.array(0.0, np.float32))
    const("minus_inf", np.array(-np.inf, np.float32))
    const("zero_i", np.array(0, np.int32))
    const("masks", masks)
    const("axes_chw", np.array([1, 2], np.int64))
    const("axis_last", np.array([4], np.int64))
    const("slice_start", np.array([0], np.int64))
    const("slice_axis", np.array([3], np.int64))
    const("flat_shape", np.array([0, 0, 0, -1], np.int64))
    group = helper.make_node("Constant", [], ["group_t"])
    group.attribute.append(_attr_ref("value_int", "group", A.INT))
    relu = helper.make_node("Constant", [], ["relu_t"])
    relu.attribute.append(_attr_ref("value_int", "relu", A.INT))
    n += [group, relu]
    # Xb = X >= threshold[c] ? +1 : -1  (NaN -> -1)
    n.append(helper.make_node("Unsqueeze", ["threshold", "axes_chw"], ["thr_c11"]))
    n.append(helper.make_node("GreaterOrEqual", ["X", "thr_c11"], ["x_pos"]))
    n.append(helper.make_node("Where", ["x_pos", "one", "minus_one"], ["x_pm1"]))
    # Weights: bits -> +-1 float [M, C/group, kH, kW]
    n.append(helper.make_node("Unsqueeze", ["W", "axis_last"], ["w_5d"]))
    n.append(helper.make_node("BitwiseAnd", ["w_5d", "masks"], ["w_bits"]))
    n.append(helper.make_node("Equal", ["w_bits", "zero_i"], ["w_clear"]))
    n.append(helper.make_node("Where", ["w_clear", "minus_one", "one"], ["w_pm1_5d"]))
    n.append(helper.make_node("Reshape", ["w_pm1_5d", "flat_shape"], ["w_pm1_padded"]))
    n.append(helper.make_node("Shape", ["threshold"], ["channels"]))
    n.append(helper.make_node("Div", ["channels", "group_t"], ["group_channels"]))
    n.append(helper.make_node("Slice", ["w_pm1_padded", "slice_start", "group_channels", "slice_axis"], ["w_pm1_mhwc"]))
    n.append(helper.make_node("Transpose", ["w_pm1_mhwc"], ["w_pm1"], perm=[0, 3, 1, 2]))
    conv = helper.make_node("Conv", ["x_pm1", "w_pm1"], ["sums"])
    for name, kind in [("kernel_shape", A.INTS), ("strides", A.INTS), ("pads", A.INTS),
                       ("dilations", A.INTS), ("group", A.INT)]:
        conv.attribute.append(_attr_ref(name, name, kind))
    n.append(conv)
    # Y = sums * scale + bias (two roundings), then max(Y, 0) if relu else max(Y, -inf) = Y
    n.append(helper.make_node("Unsqueeze", ["scale", "axes_chw"], ["scale_c11"]))
    n.append(helper.make_node("Unsqueeze", ["bias", "axes_chw"], ["bias_c11"]))
    n.append(helper.make_node("Mul", ["sums", "scale_c11"], ["scaled"]))
    n.append(helper.make_node("Add", ["scaled", "bias_c11"], ["affine"]))
    n.append(helper.make_node("Cast", ["relu_t"], ["relu_b"], to=TensorProto.BOOL))
    n.append(helper.make_node("Where", ["relu_b", "zero_f", "minus_inf"], ["floor"]))
    n.append(helper.make_node("Max", ["affine", "floor"], ["Y"]))
    return helper.make_function(
        DOMAIN, OP_NAME, ["X", "W", "threshold", "scale", "bias"], ["Y"], n,
        [helper.make_opsetid("", opset)],
        attributes=["kernel_shape"],
        attribute_protos=[helper.make_attribute("strides", [1, 1]),
                          helper.make_attribute("pads", [0, 0, 0, 0]),
                          helper.make_attribute("dilations", [1, 1]),
                          helper.make_attribute("group", 1),
                          helper.make_attribute("relu", 0)],
        doc_string=f"xnorpipe::XnorConv2d v1 from standard ops ({CONTRACT})")


class _Body:
    """Nodes of a function body, with constants and attribute references."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []

    def const(self, name: str, value) -> str:
        self.nodes.append(helper.make_node("Constant", [], [name],
                                           value=numpy_helper.from_array(np.asarray(value), name)))
        return name

    def attr_const(self, name: str, attr: str) -> str:
        """A scalar int64 tensor holding the int attribute `attr` of the call."""
        node = helper.make_node("Constant", [], [name])
        node.attribute.append(_attr_ref("value_int", attr, onnx.AttributeProto.INT))
        self.nodes.append(node)
        return name

    def add(self, op: str, inputs: Sequence[str], output: str, domain: str = "",
            refs: Sequence[tuple[str, int]] = (), **attrs) -> str:
        node = helper.make_node(op, list(inputs), [output], domain=domain, **attrs)
        node.attribute.extend(_attr_ref(name, name, kind) for name, kind in refs)
        self.nodes.append(node)
        return output


def _word_masks() -> np.ndarray:
    """int32 [32, 1, 1]: 1 << k (bit 31 is INT32_MIN), broadcast over [N, words, 32, H, W]."""
    masks = np.array([1 << k for k in range(WORD_BITS)], dtype=np.int64).astype(np.uint32).view(np.int32)
    return masks.reshape(WORD_BITS, 1, 1)


def _pack(b: _Body, bits: str, lead: str, tail: str, out: str) -> str:
    """int32 0/1 [N, 32*words, H, W] -> int32 words [N, words, H, W]; `lead` is [N, words] and
    `tail` [H, W] (int64). Each bit plane k is weighted by 1 << k (exact in any arithmetic: a
    power of two times 0 or 1), then the 32 planes are ORed in a tree of 5 BitwiseOr levels.
    Not a ReduceSum: OpenVINO sums int32 in float32 and loses low bits of wide words."""
    b.const("pk_masks", _word_masks())
    b.const("pk_32", np.array([WORD_BITS], np.int64))
    b.const("pk_axis", np.array([2], np.int64))
    b.add("Concat", [lead, "pk_32", tail], "pk_shape", axis=0)
    b.add("Reshape", [bits, "pk_shape"], "pk_bits5")
    planes = b.add("Mul", ["pk_bits5", "pk_masks"], "pk_weighted")  # [N, words, 32, H, W]
    width = WORD_BITS
    while width > 1:  # OR the lower half of the planes with the upper half
        width //= 2
        low, high = f"pk_low{width}", f"pk_high{width}"
        b.nodes.append(helper.make_node("Split", [planes], [low, high], axis=2, num_outputs=2))
        planes = b.add("BitwiseOr", [low, high], f"pk_or{width}")
    return b.add("Squeeze", [planes, "pk_axis"], out)


def _pad_and_pack(b: _Body, bits: str, count: str, batch_of: str, hw_of: str, out: str) -> str:
    """int32 0/1 [N, count, H, W] -> int32 words [N, ceil(count / 32), H, W]: pad the channels to
    whole words with clear bits, then `_pack`. `count` is [1] int64; N is read from `batch_of`'s
    shape, H and W from `hw_of`'s."""
    b.const("pp_c_axis", np.array([1], np.int64))
    b.const("pp_zero", np.array([0], np.int64))
    b.const("pp_word_bits", np.array([WORD_BITS], np.int64))
    b.const("pp_word_bits_m1", np.array([WORD_BITS - 1], np.int64))
    b.add("Add", [count, "pp_word_bits_m1"], "pp_count_up")
    b.add("Div", ["pp_count_up", "pp_word_bits"], "pp_words")
    b.add("Mul", ["pp_words", "pp_word_bits"], "pp_padded_count")
    b.add("Sub", ["pp_padded_count", count], "pp_pad")
    b.add("Concat", ["pp_zero", "pp_pad"], "pp_pads", axis=0)
    b.add("Pad", [bits, "pp_pads", "", "pp_c_axis"], "pp_bits")
    b.add("Shape", [batch_of], "pp_n", end=1)
    b.add("Shape", [hw_of], "pp_hw", start=2)
    b.add("Concat", ["pp_n", "pp_words"], "pp_lead", axis=0)
    return _pack(b, "pp_bits", "pp_lead", "pp_hw", out)


def _unpack(b: _Body, xp: str) -> str:
    """int32 words [N, words, H, W] -> float +-1 [N, 32*words, H, W] (bits past C included)."""
    b.const("up_masks", _word_masks())
    b.const("up_axis", np.array([2], np.int64))
    b.const("up_zero", np.array(0, np.int32))
    b.const("up_one", np.array(1.0, np.float32))
    b.const("up_minus_one", np.array(-1.0, np.float32))
    b.const("up_keep_n_merge_c", np.array([0, -1], np.int64))
    b.add("Unsqueeze", [xp, "up_axis"], "up_xp5")
    b.add("BitwiseAnd", ["up_xp5", "up_masks"], "up_bits")
    b.add("Equal", ["up_bits", "up_zero"], "up_clear")
    b.add("Where", ["up_clear", "up_minus_one", "up_one"], "up_pm1_5d")
    b.add("Shape", [xp], "up_hw", start=2)
    b.add("Concat", ["up_keep_n_merge_c", "up_hw"], "up_shape", axis=0)
    return b.add("Reshape", ["up_pm1_5d", "up_shape"], "up_pm1")


_CONV_REFS = [("kernel_shape", onnx.AttributeProto.INTS), ("strides", onnx.AttributeProto.INTS),
              ("pads", onnx.AttributeProto.INTS), ("dilations", onnx.AttributeProto.INTS),
              ("group", onnx.AttributeProto.INT), ("relu", onnx.AttributeProto.INT)]


def _conv_defaults() -> list[onnx.AttributeProto]:
    return [helper.make_attribute("strides", [1, 1]), helper.make_attribute("pads", [0, 0, 0, 0]),
            helper.make_attribute("dilations", [1, 1]), helper.make_attribute("group", 1),
            helper.make_attribute("relu", 0)]


def _bits_conv_defaults() -> list[onnx.AttributeProto]:
    return _conv_defaults() + [helper.make_attribute("shuffle_output", 0)]


def _shuffle_output(b: _Body, y: str, out: str) -> str:
    """ChannelShuffle(group) of y [N, M, H, W] when the call's `shuffle_output` is 1, else y
    unchanged: the shuffle with s = 1 + shuffle_output * (group - 1) groups (s = 1 is none)."""
    b.attr_const("so_group", "group")
    b.attr_const("so_flag", "shuffle_output")
    b.const("so_one", np.array(1, np.int64))
    b.const("so_axis_0", np.array([0], np.int64))
    b.add("Sub", ["so_group", "so_one"], "so_group_m1")
    b.add("Mul", ["so_flag", "so_group_m1"], "so_extra")
    b.add("Add", ["so_extra", "so_one"], "so_s")
    b.add("Unsqueeze", ["so_s", "so_axis_0"], "so_groups")
    b.add("Shape", [y], "so_shape")
    b.add("Shape", [y], "so_n", end=1)
    b.add("Shape", [y], "so_m", start=1, end=2)
    b.add("Shape", [y], "so_hw", start=2)
    b.add("Div", ["so_m", "so_groups"], "so_per_group")
    b.add("Concat", ["so_n", "so_groups", "so_per_group", "so_hw"], "so_split", axis=0)
    b.add("Reshape", [y, "so_split"], "so_y5")
    b.add("Transpose", ["so_y5"], "so_y5t", perm=[0, 2, 1, 3, 4])
    return b.add("Reshape", ["so_y5t", "so_shape"], out)


def _function(name: str, inputs, outputs, b: _Body, opset: int, attributes, defaults, doc: str):
    return helper.make_function(
        DOMAIN, name, inputs, outputs, b.nodes,
        [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, OP_VERSION)],
        attributes=attributes, attribute_protos=defaults,
        doc_string=f"xnorpipe::{name} v1 from standard ops ({CONTRACT}): {doc}")


def binarize_function(opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """`xnorpipe::Binarize`: bit = X >= threshold[c] (NaN: 0), channels padded to whole words."""
    b = _Body()
    b.const("axes_chw", np.array([1, 2], np.int64))
    b.add("Unsqueeze", ["threshold", "axes_chw"], "thr_c11")
    b.add("GreaterOrEqual", ["X", "thr_c11"], "positive")
    b.add("Cast", ["positive"], "bits", to=TensorProto.INT32)
    b.add("Shape", ["threshold"], "channels")
    _pad_and_pack(b, "bits", "channels", "X", "X", "Y")
    return _function(BINARIZE, ["X", "threshold"], ["Y"], b, opset, None, None,
                     "GreaterOrEqual, padded to whole words, bit planes ORed into words")


def xnor_conv_bits_function(opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """`xnorpipe::XnorConv2dBits`: unpack Xp to +-1, cut to `channels`, then XnorConv2d with
    threshold 0 (+1 >= 0 > -1), so the arithmetic is XnorConv2d's own."""
    b = _Body()
    _unpack(b, "Xp")
    b.const("zero_1", np.array([0], np.int64))
    b.const("c_axis", np.array([1], np.int64))
    b.const("axis_0", np.array([0], np.int64))
    b.attr_const("channels_s", "channels")
    b.add("Unsqueeze", ["channels_s", "axis_0"], "channels")
    b.add("Slice", ["up_pm1", "zero_1", "channels", "c_axis"], "x_pm1")
    b.add("ConstantOfShape", ["channels"], "zero_threshold",
          value=numpy_helper.from_array(np.zeros(1, np.float32)))
    b.add(OP_NAME, ["x_pm1", "W", "zero_threshold", "scale", "bias"], "y_conv", domain=DOMAIN, refs=_CONV_REFS)
    _shuffle_output(b, "y_conv", "Y")
    return _function(CONV_BITS, ["Xp", "W", "scale", "bias"], ["Y"], b, opset,
                     ["kernel_shape", "channels"], _bits_conv_defaults(),
                     "unpack, then XnorConv2d, then the output's channel shuffle if shuffle_output")


def xnor_conv_bits_binarize_function(opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """`xnorpipe::XnorConv2dBitsBinarize` = Binarize(XnorConv2dBits(...), output_threshold)."""
    b = _Body()
    b.add(CONV_BITS, ["Xp", "W", "scale", "bias"], "y_float", domain=DOMAIN,
          refs=_CONV_REFS + [("channels", onnx.AttributeProto.INT), ("shuffle_output", onnx.AttributeProto.INT)])
    b.add(BINARIZE, ["y_float", "output_threshold"], "Y", domain=DOMAIN)
    return _function(CONV_BITS_BINARIZE, ["Xp", "W", "scale", "bias", "output_threshold"], ["Y"], b,
                     opset, ["kernel_shape", "channels"], _bits_conv_defaults(),
                     "XnorConv2dBits, then Binarize")


def bit_max_pool_function(opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """`xnorpipe::BitMaxPool`: unpack every bit to +-1, MaxPool (its -inf padding never wins:
    an OR over in-image taps), repack with threshold 0."""
    A = onnx.AttributeProto
    b = _Body()
    _unpack(b, "Xp")
    b.const("zero_f", np.array(0.0, np.float32))
    b.add("MaxPool", ["up_pm1"], "pooled", refs=[("kernel_shape", A.INTS), ("strides", A.INTS),
                                                 ("pads", A.INTS)])
    b.add("GreaterOrEqual", ["pooled", "zero_f"], "positive")
    b.add("Cast", ["positive"], "bits", to=TensorProto.INT32)
    b.add("Shape", ["Xp"], "lead", end=2)
    b.add("Shape", ["pooled"], "hw", start=2)
    _pack(b, "bits", "lead", "hw", "Y")
    return _function(BIT_MAX_POOL, ["Xp"], ["Y"], b, opset, ["kernel_shape"],
                     [helper.make_attribute("strides", [1, 1]), helper.make_attribute("pads", [0, 0, 0, 0])],
                     "unpack, MaxPool, repack")


def conv_binarize_function(opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """`xnorpipe::ConvBinarize` = Binarize(relu?(Conv(X, W, B)), threshold): ONNX Conv with
    the call's attributes, ReLU as max(Y, 0) or max(Y, -inf) = Y from `relu`, then Binarize.
    NaN stays NaN through the ReLU (Max's NaN handling is unspecified), so its bit is 0."""
    A = onnx.AttributeProto
    b = _Body()
    b.const("zero_f", np.array(0.0, np.float32))
    b.const("minus_inf", np.array(-np.inf, np.float32))
    b.attr_const("relu_t", "relu")
    b.add("Conv", ["X", "W", "B"], "conv", refs=[("kernel_shape", A.INTS), ("strides", A.INTS),
                                                 ("pads", A.INTS), ("dilations", A.INTS), ("group", A.INT)])
    b.add("Cast", ["relu_t"], "relu_b", to=TensorProto.BOOL)
    b.add("Where", ["relu_b", "zero_f", "minus_inf"], "floor")
    b.add("Max", ["conv", "floor"], "floored")
    b.add("IsNaN", ["conv"], "is_nan")
    b.add("Where", ["is_nan", "conv", "floored"], "y_float")
    b.add(BINARIZE, ["y_float", "threshold"], "Y", domain=DOMAIN)
    return _function(CONV_BINARIZE, ["X", "W", "B", "threshold"], ["Y"], b, opset, ["kernel_shape"],
                     _conv_defaults(), "Conv, ReLU by Max with 0 or -inf, then Binarize")


def avg_pool_binarize_function(opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """`xnorpipe::AvgPoolBinarize` = Binarize(AveragePool(X), threshold): ONNX AveragePool with
    the call's kernel_shape, strides and pads and count_include_pad=1 (zero padding counts in
    the divisor, the only variant the op has), then Binarize. NaN in a window: NaN, bit 0."""
    A = onnx.AttributeProto
    b = _Body()
    b.add("AveragePool", ["X"], "pooled", refs=[("kernel_shape", A.INTS), ("strides", A.INTS),
                                                ("pads", A.INTS)], count_include_pad=1)
    b.add(BINARIZE, ["pooled", "threshold"], "Y", domain=DOMAIN)
    return _function(AVG_POOL_BINARIZE, ["X", "threshold"], ["Y"], b, opset, ["kernel_shape"],
                     [helper.make_attribute("strides", [1, 1]), helper.make_attribute("pads", [0, 0, 0, 0])],
                     "AveragePool (count_include_pad=1), then Binarize")


def _wide_conv_integer(b: _Body, x: str, w: str, out: str, refs) -> str:
    """int64 sum_taps W * X, X uint8, W any integer tensor of int32 range (int8, int16, int32):
    W as four byte planes, W = b0 + 256 b1 + 65536 b2 + 2^24 b3 (b0..b2 in [0, 255] from Mod with
    a positive divisor, b3 in [-128, 127]), one ConvInteger per plane (uint8 x uint8; b3 shifted by
    128 with w_zero_point 128), the planes' int32 sums (at most 255 * 255 * 32768 < 2^31) added
    in int64 with their weights 256^k. `refs`: the ConvInteger attributes."""
    b.const(f"{out}_byte", np.array(256, np.int32))
    b.const(f"{out}_shift", np.array(128, np.int32))
    b.const(f"{out}_zp", np.array(128, np.uint8))
    rest = b.add("Cast", [w], f"{out}_w32", to=TensorProto.INT32)
    total = None
    for k in range(4):
        if k < 3:
            byte = b.add("Mod", [rest, f"{out}_byte"], f"{out}_b{k}")  # fmod=0: the divisor's sign, >= 0
            rest = b.add("Div", [b.add("Sub", [rest, byte], f"{out}_r{k}_exact"), f"{out}_byte"], f"{out}_r{k}")
            plane, zp = b.add("Cast", [byte], f"{out}_p{k}", to=TensorProto.UINT8), ""
        else:  # the signed top byte
            shifted = b.add("Add", [rest, f"{out}_shift"], f"{out}_b3_shifted")
            plane, zp = b.add("Cast", [shifted], f"{out}_p3", to=TensorProto.UINT8), f"{out}_zp"
        part = b.add("ConvInteger", [x, plane, "", zp] if zp else [x, plane], f"{out}_conv{k}", refs=refs)
        part = b.add("Cast", [part], f"{out}_conv{k}_i64", to=TensorProto.INT64)
        if k:
            b.const(f"{out}_scale{k}", np.array(256 ** k, np.int64))
            part = b.add("Mul", [part, f"{out}_scale{k}"], f"{out}_conv{k}_scaled")
        total = part if total is None else b.add("Add", [total, part], f"{out}_sum{k}")
    return b.add("Identity", [total], out)


def conv_integer_binarize_function(opset: int = DEFAULT_OPSET) -> onnx.FunctionProto:
    """`xnorpipe::ConvIntegerBinarize` (contract: X uint8 NHWC; W int8, x_zero_point uint8,
    pad_value int16, threshold int32, margin int32, fine_weight int32, fine_pad_value int32,
    fine_threshold int64) -> bits. Both sums, exactly, in int64:
      sum W * (X - z) over in-image taps = S(X) - S(Z), S(.) = ConvInteger with the call's pads
        (it pads with 0, so both sum the in-image taps), Z the image of zero points;
      + the padded taps' pad values = ConvInteger(outside, pad_value) with no pads, `outside` 1 on
        the padding and 0 on the image (one image, broadcast over the batch);
    every ConvInteger on uint8 x uint8 byte planes of the weights (`_wide_conv_integer`): ONNX
    Runtime's uint8 x uint8 kernels are exact on any x86 CPU, its uint8 x int8 kernels without VNNI
    use vpmaddubsw, whose int16 pair sums saturate (255 * 127 * 2 > 32767). Then the margin rule,
    and the `Binarize` packing."""
    A = onnx.AttributeProto
    window = [("kernel_shape", A.INTS), ("strides", A.INTS), ("dilations", A.INTS)]
    b = _Body()
    b.const("axes_chw", np.array([1, 2], np.int64))
    b.const("axis_1", np.array([1], np.int64))
    b.const("one_u8", np.array(1, np.uint8))
    b.const("one_one", np.array([1, 1], np.int64))
    b.const("zero_zero", np.array([0, 0], np.int64))
    b.const("at_0", np.array([0], np.int64))
    b.const("at_2", np.array([2], np.int64))
    b.const("at_4", np.array([4], np.int64))
    b.add("Transpose", ["X"], "x_nchw", perm=[0, 3, 1, 2])
    b.add("Unsqueeze", ["x_zero_point", "axes_chw"], "zp_c11")
    b.add("Shape", ["x_nchw"], "x_shape")
    b.add("Expand", ["zp_c11", "x_shape"], "zp_image")
    # the padding indicator: [1, 1, H + pads, W + pads], 1 outside the image
    b.add("Shape", ["X"], "hw_in", start=1, end=3)
    b.add("Concat", ["one_one", "hw_in"], "outside_shape", axis=0)
    b.add("ConstantOfShape", ["outside_shape"], "inside", value=numpy_helper.from_array(np.zeros(1, np.uint8)))
    pads = helper.make_node("Constant", [], ["pads_tlbr"])
    pads.attribute.append(_attr_ref("value_ints", "pads", A.INTS))
    b.nodes.append(pads)
    b.add("Slice", ["pads_tlbr", "at_0", "at_2"], "pads_tl")
    b.add("Slice", ["pads_tlbr", "at_2", "at_4"], "pads_br")
    b.add("Concat", ["zero_zero", "pads_tl", "zero_zero", "pads_br"], "pads_nchw", axis=0)
    b.add("Pad", ["inside", "pads_nchw", "one_u8"], "outside")

    def sums(weight: str, pad_value: str, out: str) -> str:
        image = _wide_conv_integer(b, "x_nchw", weight, f"{out}_x", window + [("pads", A.INTS)])
        zero = _wide_conv_integer(b, "zp_image", weight, f"{out}_z", window + [("pads", A.INTS)])
        b.add("Unsqueeze", [pad_value, "axis_1"], f"{out}_pv_w")
        padded = _wide_conv_integer(b, "outside", f"{out}_pv_w", f"{out}_pv", window)
        return b.add("Add", [b.add("Sub", [image, zero], f"{out}_in_image"), padded], out)

    sums("W", "pad_value", "acc")
    sums("fine_weight", "fine_pad_value", "fine")
    for name in ("threshold", "margin", "fine_threshold"):
        b.add("Cast", [name], f"{name}_i64", to=TensorProto.INT64)
        b.add("Unsqueeze", [f"{name}_i64", "axes_chw"], f"{name}_c11")
    b.add("Sub", ["acc", "threshold_c11"], "above")
    b.add("Neg", ["margin_c11"], "minus_margin")
    b.add("Greater", ["above", "margin_c11"], "surely_set")
    b.add("GreaterOrEqual", ["above", "minus_margin"], "not_surely_clear")
    b.add("GreaterOrEqual", ["fine", "fine_threshold_c11"], "fine_set")
    b.add("And", ["not_surely_clear", "fine_set"], "set_by_fine")
    b.add("Or", ["surely_set", "set_by_fine"], "positive")
    b.add("Cast", ["positive"], "bits", to=TensorProto.INT32)
    b.add("Shape", ["threshold"], "filters")
    _pad_and_pack(b, "bits", "filters", "X", "acc", "Y")
    return _function(CONV_INTEGER_BINARIZE, list(CONV_INTEGER_BINARIZE_INPUTS), ["Y"], b, opset, ["kernel_shape"],
                     [helper.make_attribute("strides", [1, 1]), helper.make_attribute("pads", [0, 0, 0, 0]),
                      helper.make_attribute("dilations", [1, 1])],
                     "ConvInteger byte planes for both sums (image minus zero points plus pad values), "
                     "the margin rule, packed")


_FUNCTIONS = {OP_NAME: xnor_conv_function, BINARIZE: binarize_function,
              CONV_BITS: xnor_conv_bits_function, CONV_BITS_BINARIZE: xnor_conv_bits_binarize_function,
              BIT_MAX_POOL: bit_max_pool_function, CONV_BINARIZE: conv_binarize_function,
              AVG_POOL_BINARIZE: avg_pool_binarize_function,
              CONV_INTEGER_BINARIZE: conv_integer_binarize_function}
_CALLS = {CONV_BITS: (OP_NAME,), CONV_BITS_BINARIZE: (CONV_BITS, BINARIZE),
          CONV_BINARIZE: (BINARIZE,), AVG_POOL_BINARIZE: (BINARIZE,)}  # nested calls


def functions_for(op_types: Iterable[str], opset: int = DEFAULT_OPSET) -> list[onnx.FunctionProto]:
    """The model-local functions that nodes of `op_types` (xnorpipe domain) need, callees
    included, in a fixed order."""
    need: set[str] = set()
    todo = [op for op in op_types if op in _FUNCTIONS]
    while todo:
        op = todo.pop()
        if op not in need:
            need.add(op)
            todo.extend(_CALLS.get(op, ()))
    return [_FUNCTIONS[op](opset) for op in _FUNCTIONS if op in need]


# ------------------------------------------------------------------------------ emission


class _GraphBuilder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def name(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def init(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], base: str, domain: str = "", **attrs) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, domain=domain, **attrs))
        return out


def _conv_attrs(layer) -> dict:
    return dict(kernel_shape=list(layer.kernel_shape), strides=list(layer.strides),
                pads=list(layer.pads), dilations=list(layer.dilations), group=int(layer.group))


def _bits_conv_attrs(layer: ir.BinaryConv) -> dict:
    shuffle = {"shuffle_output": 1} if layer.shuffle_output else {}
    return dict(relu=int(layer.relu), channels=int(layer.in_channels), **_conv_attrs(layer), **shuffle)


def _pool_attrs(pool: ir.MaxPool | ir.AvgPool) -> dict:
    return dict(kernel_shape=list(pool.kernel_shape), strides=list(pool.strides), pads=list(pool.pads))


def can_read_bits(layer: ir.BinaryConv) -> bool:
    """Every binary layer can read bits: a group's channels need not be whole words (the bit
    ops read group g's channels wherever they sit in the words, docs/XNORCONV2D.md)."""
    return isinstance(layer, ir.BinaryConv)


def _pool_on_bits(pool: ir.MaxPool | ir.AvgPool) -> bool:
    """BitMaxPool and AvgPoolBinarize need an in-image tap in every window: pads < kernel
    (ONNX's pooling requires it too)."""
    top, left, bottom, right = pool.pads
    kh, kw = pool.kernel_shape
    return max(top, bottom) < kh and max(left, right) < kw


def bit_links(model: ir.DeployModel) -> dict[int, int]:
    """producer -> consumer layer indices of the binary layers that pass bits (packed-bits).

    A consumer is the next binary layer, directly or through one MaxPool, that can read bits.
    The producer must be able to read bits too: no binary op takes float in and gives bits
    out, so a producer with a float input reads it through `Binarize` (or gets its bits from
    `ConvBinarize` after a group-1 float conv, `conv_binarize_links`, or from
    `AvgPoolBinarize` after an AveragePool, `avg_pool_binarize_links`).
    """
    layers = model.layers
    links = {}
    for i, layer in enumerate(layers):
        if not isinstance(layer, ir.BinaryConv) or not can_read_bits(layer):
            continue
        j = i + 1
        if j < len(layers) and isinstance(layers[j], ir.MaxPool) and _pool_on_bits(layers[j]):
            j += 1
        if j < len(layers) and isinstance(layers[j], ir.BinaryConv) and can_read_bits(layers[j]):
            links[i] = j
    return links


def _feeds_bit_reader(model: ir.DeployModel, i: int) -> bool:
    nxt = model.layers[i + 1] if i + 1 < len(model.layers) else None
    return isinstance(nxt, ir.BinaryConv) and can_read_bits(nxt)


def conv_binarize_links(model: ir.DeployModel) -> dict[int, int]:
    """float conv -> binary layer indices fused into `ConvBinarize` (packed-bits).

    A FloatConv with group 1 (the custom-op library's fast kernels) whose output feeds directly
    a binary layer that can read bits writes that layer's bits itself, instead of Conv (+ Relu)
    written as floats and binarized by the next layer. The binary layer then reads bits even
    when it writes floats (`XnorConv2dBits`).
    """
    return {i: i + 1 for i, layer in enumerate(model.layers)
            if isinstance(layer, ir.FloatConv) and layer.group == 1 and _feeds_bit_reader(model, i)}


def avg_pool_binarize_links(model: ir.DeployModel) -> dict[int, int]:
    """average pool -> binary layer indices fused into `AvgPoolBinarize` (packed-bits).

    An AvgPool whose output feeds directly a binary layer that can read bits writes that
    layer's bits itself, instead of AveragePool + the layer's own binarization; only with
    pads < kernel on each side (`AvgPoolBinarize`'s requirement, and ONNX AveragePool's).
    """
    return {i: i + 1 for i, layer in enumerate(model.layers)
            if isinstance(layer, ir.AvgPool) and _pool_on_bits(layer) and _feeds_bit_reader(model, i)}


def _emit_shuffle(g: _GraphBuilder, x: str, groups: int, shape: tuple[int, ...], tag: str) -> str:
    """ChannelShuffle(groups) of x [N, C, H, W] as Reshape -> Transpose -> Reshape."""
    c, h, w = shape
    split = g.init(f"{tag}.split", np.array([0, groups, c // groups, h, w], np.int64))
    merge = g.init(f"{tag}.merge", np.array([0, c, h, w], np.int64))
    x = g.node("Reshape", [x, split], f"{tag}.split")
    x = g.node("Transpose", [x], f"{tag}.transpose", perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [x, merge], f"{tag}.merge")


def _emit_layers(model: ir.DeployModel, form: str, g: _GraphBuilder, first_layer=None) -> str:
    """The layers as nodes; `first_layer` (an IntegerFirstLayer) replaces the first conv, its
    ReLU and the next layer's binarization (packed-bits only)."""
    x = INPUT_NAME
    shapes = layer_shapes(model)
    links = bit_links(model) if form == "packed-bits" else {}
    fused = conv_binarize_links(model) if form == "packed-bits" else {}
    pool_fused = avg_pool_binarize_links(model) if form == "packed-bits" else {}
    reads_bits = set(links) | set(links.values()) | set(fused.values()) | set(pool_fused.values())
    bits = False  # does x hold bit-packed activations?
    conv_i = 0
    for i, layer in enumerate(model.layers):
        if bits and not (isinstance(layer, ir.MaxPool) or (isinstance(layer, ir.BinaryConv) and i in reads_bits)):
            raise XnorpipeError(f"internal error: bits reach a {type(layer).__name__} layer")
        if i == 0 and first_layer is not None:
            if fused.get(0) != 1:
                raise XnorpipeError("internal error: the integer first layer needs a ConvBinarize link 0 -> 1")
            inputs = [x] + [g.init(f"conv0.{name}", array) for name, array in first_layer.tensors()]
            x = g.node(CONV_INTEGER_BINARIZE, inputs, "conv0", domain=DOMAIN,
                       kernel_shape=list(first_layer.kernel_shape), strides=list(first_layer.strides),
                       pads=list(first_layer.pads), dilations=list(first_layer.dilations))
            conv_i += 1
            bits = True
            continue
        if isinstance(layer, ir.FloatConv):
            tag = f"conv{conv_i}"
            conv_i += 1
            w = g.init(f"{tag}.weight", np.asarray(layer.weight, np.float32))
            b = g.init(f"{tag}.bias", np.asarray(layer.bias, np.float32))
            if i in fused:  # Conv (+ Relu) + the consumer's Binarize, one node
                consumer = model.layers[fused[i]]
                thr = g.init(f"{tag}.output_threshold", np.asarray(consumer.threshold, np.float32))
                x = g.node(CONV_BINARIZE, [x, w, b, thr], f"{tag}", domain=DOMAIN, relu=int(layer.relu),
                           **_conv_attrs(layer))
                bits = True
                continue
            x = g.node("Conv", [x, w, b], f"{tag}", **_conv_attrs(layer))
            if layer.relu:
                x = g.node("Relu", [x], f"{tag}.relu")
        elif isinstance(layer, ir.BinaryConv) and i in reads_bits:
            tag = f"conv{conv_i}"
            conv_i += 1
            if not bits:  # float in, bits out: binarize with the layer's own threshold
                thr = g.init(f"{tag}.threshold", np.asarray(layer.threshold, np.float32))
                x = g.node(BINARIZE, [x, thr], f"{tag}.binarize", domain=DOMAIN)
            inputs = [x, g.init(f"{tag}.weight_bits", layer.weight_bits.astype(np.int32)),
                      g.init(f"{tag}.scale", np.asarray(layer.scale, np.float32)),
                      g.init(f"{tag}.bias", np.asarray(layer.bias, np.float32))]
            op = CONV_BITS
            if i in links:  # fuse the consumer's binarization
                consumer = model.layers[links[i]]
                inputs.append(g.init(f"{tag}.output_threshold", np.asarray(consumer.threshold, np.float32)))
                op = CONV_BITS_BINARIZE
            x = g.node(op, inputs, f"{tag}", domain=DOMAIN, **_bits_conv_attrs(layer))
            bits = i in links
        elif isinstance(layer, ir.BinaryConv):
            tag = f"conv{conv_i}"
            conv_i += 1
            if form in ("packed", "packed-bits"):
                inputs = [x, g.init(f"{tag}.weight_bits", layer.weight_bits.astype(np.int32)),
                          g.init(f"{tag}.threshold", np.asarray(layer.threshold, np.float32)),
                          g.init(f"{tag}.scale", np.asarray(layer.scale, np.float32)),
                          g.init(f"{tag}.bias", np.asarray(layer.bias, np.float32))]
                x = g.node(OP_NAME, inputs, f"{tag}", domain=DOMAIN, relu=int(layer.relu),
                           **_conv_attrs(layer))
            else:
                c = layer.in_channels
                thr = g.init(f"{tag}.threshold", np.asarray(layer.threshold, np.float32).reshape(1, c, 1, 1))
                one = g.init(f"{tag}.one", np.array(1.0, np.float32))
                minus_one = g.init(f"{tag}.minus_one", np.array(-1.0, np.float32))
                w = g.init(f"{tag}.weight_pm1", unpack_weights(layer.weight_bits, c // layer.group))
                scale = g.init(f"{tag}.scale", np.asarray(layer.scale, np.float32).reshape(1, -1, 1, 1))
                bias = g.init(f"{tag}.bias", np.asarray(layer.bias, np.float32).reshape(1, -1, 1, 1))
                pos = g.node("GreaterOrEqual", [x, thr], f"{tag}.ge")
                xb = g.node("Where", [pos, one, minus_one], f"{tag}.sign")
                s = g.node("Conv", [xb, w], f"{tag}.xnor", **_conv_attrs(layer))
                y = g.node("Mul", [s, scale], f"{tag}.scale_mul")
                x = g.node("Add", [y, bias], f"{tag}.bias_add")
                if layer.relu:
                    x = g.node("Relu", [x], f"{tag}.relu")
            if layer.shuffle_output:  # only the bit ops have the attribute (contract v1 does not)
                x = _emit_shuffle(g, x, layer.group, shapes[i], f"{tag}.shuffle")
        elif isinstance(layer, ir.MaxPool):
            x = g.node(BIT_MAX_POOL if bits else "MaxPool", [x], f"maxpool{i}",
                       domain=DOMAIN if bits else "", **_pool_attrs(layer))
        elif isinstance(layer, ir.AvgPool) and i in pool_fused:  # + the consumer's Binarize
            consumer = model.layers[pool_fused[i]]
            thr = g.init(f"avgpool{i}.output_threshold", np.asarray(consumer.threshold, np.float32))
            x = g.node(AVG_POOL_BINARIZE, [x, thr], f"avgpool{i}", domain=DOMAIN, **_pool_attrs(layer))
            bits = True
        elif isinstance(layer, ir.AvgPool):
            x = g.node("AveragePool", [x], f"avgpool{i}", kernel_shape=list(layer.kernel_shape),
                       strides=list(layer.strides), pads=list(layer.pads), count_include_pad=1)
        elif isinstance(layer, ir.ChannelShuffle):
            x = _emit_shuffle(g, x, layer.groups, shapes[i], f"shuffle{i}")
        elif isinstance(layer, ir.Flatten):
            x = g.node("Flatten", [x], f"flatten{i}", axis=1)
        else:
            raise XnorpipeError(f"unknown IR layer {type(layer).__name__}")
    if bits:
        raise XnorpipeError("internal error: the model's output is bits")
    return x


def has_binary_layers(model: ir.DeployModel) -> bool:
    return any(isinstance(layer, ir.BinaryConv) for layer in model.layers)


def metadata_props(model: ir.DeployModel, form: str, first_layer=None) -> dict[str, str]:
    props = {
        "xnorpipe.arch": model.arch,
        "xnorpipe.form": form,
        "xnorpipe.input": INPUT_CONVENTION,
        "xnorpipe.mean": json.dumps([float(v) for v in model.mean]),
        "xnorpipe.std": json.dumps([float(v) for v in model.std]),
        "xnorpipe.layout": "NCHW",
        "xnorpipe.classes": json.dumps(list(model.classes)),
        "xnorpipe.version": __version__,
    }
    for key, value in model.metadata.items():
        props[key if key.startswith("xnorpipe.") else f"xnorpipe.{key}"] = str(value)
    if first_layer is not None:
        props.update({"xnorpipe.input": INT8_INPUT_CONVENTION, "xnorpipe.layout": "NHWC",
                      **first_layer.metadata()})
    return props


# ------------------------------------------------------------------------------ versions


def ir_version_for(form: str, opset: int) -> int:
    """The lowest IR version a `form` file at ai.onnx `opset` needs: the opset's own (onnx's
    version table) or the form's structure's (IR 9 for function attribute defaults), the higher.
    ONNX Runtime <= 1.16 refuses IR 10, which nothing here needs at opsets <= 20."""
    by_opset = helper.find_min_ir_version_for([helper.make_opsetid("", opset)], ignore_unknown=True)
    return max(by_opset, FORMS_BY_NAME[form].min_ir)


def _ort_loads_opset(ort, opset: int) -> bool:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "opset_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                          ir_version=ir_version_for("portable", opset))
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception:  # ORT raises its own types; beyond its opsets: "Opset N is under development"
        return False
    return True


@functools.cache
def supported_opsets() -> tuple[int, int | None]:
    """(highest ai.onnx opset the installed onnx knows, highest the installed ONNX Runtime
    loads, None without onnxruntime). ONNX Runtime has no API for the latter and a table keyed
    by its version goes stale with each release, so it is probed: ORT refuses a model stamped
    with an opset beyond its own (bisected over one-node models, usually one session; the
    probe never goes past onnx's bound, which it would have no version table for)."""
    onnx_max = onnx.defs.onnx_opset_version()
    try:
        import onnxruntime as ort
    except ImportError:
        return onnx_max, None
    low, high = min(MIN_OPSET.values()), onnx_max
    if not _ort_loads_opset(ort, low):
        return onnx_max, low - 1
    while low < high:  # _ort_loads_opset(low) holds
        mid = (low + high + 1) // 2
        if _ort_loads_opset(ort, mid):
            low = mid
        else:
            high = mid - 1
    return onnx_max, low


def opset_range(form: str) -> tuple[int, int]:
    """The ai.onnx opsets a `form` file can be written at here: the form's minimum up to what
    both onnx (to build and check it) and ONNX Runtime (to run it) support."""
    onnx_max, ort_max = supported_opsets()
    return MIN_OPSET[form], min(onnx_max, ort_max) if ort_max is not None else onnx_max


def check_opset(form: str, opset: int) -> None:
    low, high = opset_range(form)
    if opset < low:
        raise XnorpipeError(f"the {form} form needs opset >= {low}, got {opset}")
    if opset > high:
        onnx_max, ort_max = supported_opsets()
        import importlib.metadata

        ort = (f"onnxruntime {importlib.metadata.version('onnxruntime')} loads up to {ort_max}"
               if ort_max is not None else "onnxruntime is not installed")
        raise XnorpipeError(f"opset {opset} is beyond what this installation supports (onnx {onnx.__version__} "
                            f"knows opsets up to {onnx_max}, {ort}): choose --opset {low} to {high}")


# ----------------------------------------------------------------------------- building


def _form(form: str):
    if form not in FORMS_BY_NAME:
        raise XnorpipeError(f"unknown ONNX form {form!r}; choose from {', '.join(FORMS)}")
    return FORMS_BY_NAME[form]


def build_onnx(model: ir.DeployModel, form: str, opset: int = DEFAULT_OPSET, first_layer=None) -> onnx.ModelProto:
    """The IR as an ONNX model of `form` (deploy/forms.py) at ai.onnx `opset`; with
    `first_layer` (deploy/first_layer.py's IntegerFirstLayer, forms INT8_FORMS) the model takes
    the uint8 NHWC image and starts with `ConvIntegerBinarize`."""
    spec = _form(form)
    check_opset(form, opset)
    if spec.binary_only and not has_binary_layers(model):
        raise XnorpipeError(f"{model.arch} has no binary layers: only the portable form exists")
    if first_layer is not None and form not in INT8_FORMS:
        raise XnorpipeError(f"the integer first layer exists in the {' and '.join(INT8_FORMS)} forms, not {form}")
    if spec.inlines is not None:
        return inline_functions(build_onnx(model, spec.inlines, opset, first_layer), form)
    g = _GraphBuilder()
    g.name(INPUT_NAME)
    last = _emit_layers(model, form, g, first_layer)
    # Rename the last tensor to the public output name.
    g.nodes[-1].output[0] = OUTPUT_NAME
    for node in g.nodes:
        for k, name in enumerate(node.input):
            if name == last:
                node.input[k] = OUTPUT_NAME
    c, h, w = model.input_shape
    out_shape = layer_shapes(model)[-1]
    graph_input = (helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, c, h, w])
                   if first_layer is None else
                   helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [BATCH_DIM, h, w, c]))
    graph = helper.make_graph(
        g.nodes, f"{model.arch}_{form}",
        [graph_input],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, *out_shape])],
        g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    functions = functions_for({n.op_type for n in g.nodes if n.domain == DOMAIN}, opset)
    if functions:
        opsets.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    m = helper.make_model(graph, opset_imports=opsets, functions=functions, ir_version=ir_version_for(form, opset),
                          producer_name="xnorpipe", producer_version=__version__)
    helper.set_model_props(m, metadata_props(model, form, first_layer))
    return m


def _spell_out_defaults(m: onnx.ModelProto) -> None:
    """Give every call of a model-local function the attributes it leaves to their defaults:
    onnx.inliner (1.23) drops a `ref_attr_name` the call does not set instead of taking the
    function's default, which leaves e.g. `Constant(value_int=@relu)` without a value."""
    defaults = {(f.domain, f.name): f.attribute_proto for f in m.functions}
    for node in [*m.graph.node, *(n for f in m.functions for n in f.node)]:
        given = {a.name for a in node.attribute}
        node.attribute.extend(a for a in defaults.get((node.domain, node.op_type), ()) if a.name not in given)


def inline_functions(m: onnx.ModelProto, form: str) -> onnx.ModelProto:
    """`m` with every model-local function inlined (onnx.inliner): standard ops only, the same
    initializers (bit-packed weights stay packed), metadata saying `form`."""
    import onnx.inliner

    src = onnx.ModelProto()
    src.CopyFrom(m)
    _spell_out_defaults(src)
    out = onnx.inliner.inline_local_functions(src, convert_version=False)
    left = sorted({f"{n.domain}::{n.op_type}" for n in out.graph.node if n.domain not in ("", "ai.onnx")})
    if left or len(out.functions):
        raise XnorpipeError(f"internal error: inlining left {', '.join(left) or 'functions'} in the {form} form")
    kept = [o for o in out.opset_import if o.domain in ("", "ai.onnx")]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    opset = next(o.version for o in kept)
    out.ir_version = ir_version_for(form, opset)
    out.graph.name = f"{model_metadata(m).get('xnorpipe.arch', 'model')}_{form}"
    helper.set_model_props(out, {**model_metadata(m), "xnorpipe.form": form})
    return out


def check_onnx(m: onnx.ModelProto) -> onnx.ModelProto:
    """Full ONNX checker plus strict shape inference; returns the inferred model."""
    onnx.checker.check_model(m, full_check=True)
    return onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)


def _one_node_model(node: onnx.NodeProto, x_type: int, x_shape, y_type: int, y_shape,
                    inits: list[onnx.TensorProto], opset: int) -> onnx.ModelProto:
    """Input "X", output "Y", batch dim symbolic; carries exactly the functions the node needs."""
    graph = helper.make_graph([node], node.op_type,
                              [helper.make_tensor_value_info("X", x_type, [BATCH_DIM, *x_shape])],
                              [helper.make_tensor_value_info("Y", y_type, [BATCH_DIM, *y_shape])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid(DOMAIN, OP_VERSION)],
                             functions=functions_for([node.op_type], opset),
                             ir_version=ir_version_for("packed", opset))


def _conv_output(layer: ir.BinaryConv, input_shape: Sequence[int]) -> tuple[int, int, int]:
    n, c, h, w = input_shape
    return layer_shapes(ir.DeployModel(arch="op", layers=[layer], input_shape=(c, h, w)))[-1]


def xnor_conv_model(layer: ir.BinaryConv, input_shape: Sequence[int],
                    opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """A one-node packed model (input "X" of `input_shape`, output "Y"): for op-level tests."""
    n, c, h, w = input_shape
    inits = [numpy_helper.from_array(layer.weight_bits.astype(np.int32), "W"),
             numpy_helper.from_array(np.asarray(layer.threshold, np.float32), "threshold"),
             numpy_helper.from_array(np.asarray(layer.scale, np.float32), "scale"),
             numpy_helper.from_array(np.asarray(layer.bias, np.float32), "bias")]
    node = helper.make_node(OP_NAME, ["X", "W", "threshold", "scale", "bias"], ["Y"], domain=DOMAIN,
                            relu=int(layer.relu), **_conv_attrs(layer))
    return _one_node_model(node, TensorProto.FLOAT, (c, h, w), TensorProto.FLOAT,
                           _conv_output(layer, input_shape), inits, opset)


def conv_integer_binarize_model(layer, input_shape: Sequence[int], opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """One `ConvIntegerBinarize` node: X uint8 `input_shape` (N, H, W, C) -> Y bits int32
    [N, ceil(M/32), Ho, Wo], with `layer`'s tensors (`tensors()`) and attributes (an
    IntegerFirstLayer)."""
    n, h, w, c = input_shape
    weight = np.asarray(layer.weight, np.int8)
    m, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
    conv = ir.FloatConv(weight=np.zeros((m, c, kh, kw), np.float32), bias=np.zeros(m, np.float32),
                        strides=tuple(layer.strides), pads=tuple(layer.pads), dilations=tuple(layer.dilations))
    _, ho, wo = layer_shapes(ir.DeployModel(arch="op", layers=[conv], input_shape=(c, h, w)))[-1]
    names = CONV_INTEGER_BINARIZE_INPUTS[1:]
    inits = [numpy_helper.from_array(array, name) for name, (_, array) in zip(names, layer.tensors(), strict=True)]
    node = helper.make_node(CONV_INTEGER_BINARIZE, list(CONV_INTEGER_BINARIZE_INPUTS), ["Y"],
                            domain=DOMAIN, kernel_shape=[kh, kw], strides=list(layer.strides),
                            pads=list(layer.pads), dilations=list(layer.dilations))
    return _one_node_model(node, TensorProto.UINT8, (h, w, c), TensorProto.INT32, (num_words(m), ho, wo), inits, opset)


def conv_binarize_model(layer: ir.FloatConv, threshold: np.ndarray, input_shape: Sequence[int],
                        opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """One `ConvBinarize` node: X float `input_shape` (N, C, H, W) -> Y bits int32
    [N, ceil(M/32), Ho, Wo], with the layer's weight, bias and attributes and `threshold` [M]."""
    n, c, h, w = input_shape
    m, ho, wo = layer_shapes(ir.DeployModel(arch="op", layers=[layer], input_shape=(c, h, w)))[-1]
    inits = [numpy_helper.from_array(np.asarray(layer.weight, np.float32), "W"),
             numpy_helper.from_array(np.asarray(layer.bias, np.float32).reshape(m), "B"),
             numpy_helper.from_array(np.asarray(threshold, np.float32).reshape(m), "threshold")]
    node = helper.make_node(CONV_BINARIZE, ["X", "W", "B", "threshold"], ["Y"], domain=DOMAIN,
                            relu=int(layer.relu), **_conv_attrs(layer))
    return _one_node_model(node, TensorProto.FLOAT, (c, h, w), TensorProto.INT32,
                           (num_words(m), ho, wo), inits, opset)


def avg_pool_binarize_model(pool: ir.AvgPool, threshold: np.ndarray, input_shape: Sequence[int],
                            opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """One `AvgPoolBinarize` node: X float `input_shape` (N, C, H, W) -> Y bits int32
    [N, ceil(C/32), Ho, Wo], with the pool's attributes and `threshold` [C]."""
    n, c, h, w = input_shape
    _, ho, wo = layer_shapes(ir.DeployModel(arch="op", layers=[pool], input_shape=(c, h, w)))[-1]
    inits = [numpy_helper.from_array(np.asarray(threshold, np.float32).reshape(c), "threshold")]
    node = helper.make_node(AVG_POOL_BINARIZE, ["X", "threshold"], ["Y"], domain=DOMAIN, **_pool_attrs(pool))
    return _one_node_model(node, TensorProto.FLOAT, (c, h, w), TensorProto.INT32,
                           (num_words(c), ho, wo), inits, opset)


def binarize_model(threshold: np.ndarray, input_shape: Sequence[int],
                   opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """One `Binarize` node: X float [N, C, H, W] -> Y bits int32 [N, ceil(C/32), H, W]."""
    n, c, h, w = input_shape
    node = helper.make_node(BINARIZE, ["X", "threshold"], ["Y"], domain=DOMAIN)
    inits = [numpy_helper.from_array(np.asarray(threshold, np.float32).reshape(c), "threshold")]
    return _one_node_model(node, TensorProto.FLOAT, (c, h, w), TensorProto.INT32,
                           (num_words(c), h, w), inits, opset)


def xnor_conv_bits_model(layer: ir.BinaryConv, input_shape: Sequence[int],
                         output_threshold: np.ndarray | None = None,
                         opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """One `XnorConv2dBits` node (float Y), or `XnorConv2dBitsBinarize` (bits Y) when
    `output_threshold` is given. `input_shape` is the float shape (N, C, H, W); X is its bits,
    int32 [N, ceil(C/32), H, W]. The layer's own threshold is not used (its input is bits)."""
    n, c, h, w = input_shape
    m, ho, wo = _conv_output(layer, input_shape)
    inits = [numpy_helper.from_array(layer.weight_bits.astype(np.int32), "W"),
             numpy_helper.from_array(np.asarray(layer.scale, np.float32), "scale"),
             numpy_helper.from_array(np.asarray(layer.bias, np.float32), "bias")]
    inputs = ["X", "W", "scale", "bias"]
    op, y_type, y_shape = CONV_BITS, TensorProto.FLOAT, (m, ho, wo)
    if output_threshold is not None:
        inits.append(numpy_helper.from_array(np.asarray(output_threshold, np.float32).reshape(m),
                                             "output_threshold"))
        inputs.append("output_threshold")
        op, y_type, y_shape = CONV_BITS_BINARIZE, TensorProto.INT32, (num_words(m), ho, wo)
    node = helper.make_node(op, inputs, ["Y"], domain=DOMAIN, **_bits_conv_attrs(layer))
    return _one_node_model(node, TensorProto.INT32, (num_words(c), h, w), y_type, y_shape, inits, opset)


def bit_max_pool_model(pool: ir.MaxPool, input_shape: Sequence[int],
                       opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """One `BitMaxPool` node; `input_shape` is the unpacked (N, C, H, W), X its int32 bits."""
    n, c, h, w = input_shape
    _, ho, wo = layer_shapes(ir.DeployModel(arch="op", layers=[pool], input_shape=(c, h, w)))[-1]
    node = helper.make_node(BIT_MAX_POOL, ["X"], ["Y"], domain=DOMAIN, **_pool_attrs(pool))
    return _one_node_model(node, TensorProto.INT32, (num_words(c), h, w), TensorProto.INT32,
                           (num_words(c), ho, wo), [], opset)


# ----------------------------------------------------------------------------- to files


@dataclass
class ExportedFile:
    form: str
    path: Path
    size_bytes: int
    custom_nodes: int  # XnorConv2d-family nodes (XnorConv2d, XnorConv2dBits, XnorConv2dBitsBinarize)
    float_weight_bytes: int  # float32 initializers
    packed_weight_bytes: int  # int32 bit-word initializers
    bit_nodes: int = 0  # Binarize, ConvBinarize, BitMaxPool and AvgPoolBinarize nodes (packed-bits)


def _summarise(form: str, path: Path, m: onnx.ModelProto) -> ExportedFile:
    float_bytes = sum(len(t.raw_data) for t in m.graph.initializer if t.data_type == TensorProto.FLOAT)
    packed_bytes = sum(len(t.raw_data) for t in m.graph.initializer if t.data_type == TensorProto.INT32)
    return ExportedFile(form, path, path.stat().st_size, count_custom_nodes(m), float_bytes, packed_bytes,
                        count_bit_nodes(m))


def resolve_forms(model: ir.DeployModel, form: str, first_layer: str = "float") -> tuple[list[str], str | None]:
    """A form or a set of forms (`all`, `both`) -> forms to write and a note (a float arch
    asked for several; a set with --first-layer int8, which only INT8_FORMS have)."""
    if first_layer not in FIRST_LAYERS:
        raise XnorpipeError(f"unknown first layer {first_layer!r}; choose {' or '.join(FIRST_LAYERS)}")
    if first_layer == "int8":
        if not has_binary_layers(model):
            raise XnorpipeError(f"{model.arch} is a float arch: --first-layer int8 needs binary layers")
        if form in FORM_SETS:
            forms = [f for f in FORM_SETS[form] if f in INT8_FORMS]
            if not forms:
                raise XnorpipeError(f"--form {form} has no form with an integer first layer "
                                    f"({', '.join(INT8_FORMS)})")
            return forms, f"--first-layer int8: writing {', '.join(forms)} (the forms that have it)"
        if form not in INT8_FORMS:
            raise XnorpipeError(f"--first-layer int8 applies to the {' and '.join(INT8_FORMS)} forms, not {form}")
        return [form], None
    if form in FORM_SETS:
        if has_binary_layers(model):
            return list(FORM_SETS[form]), None
        return ["portable"], f"{model.arch} is a float arch: only the portable form is written"
    if form not in FORMS:
        raise XnorpipeError(f"unknown ONNX form {form!r}; choose {', '.join(FORMS)}, {' or '.join(FORM_SETS)}")
    if FORMS_BY_NAME[form].binary_only and not has_binary_layers(model):
        raise XnorpipeError(f"{model.arch} is a float arch (no binary layers): "
                            f"the {form} form does not exist, use --form portable")
    return [form], None


def export_path(out_dir: str | os.PathLike, arch: str, form: str, first_layer: str = "float") -> Path:
    """`<arch>.<form>.onnx`, or `<arch>.<form>.int8.onnx` with the integer first layer."""
    return Path(out_dir) / (f"{arch}.{form}.onnx" if first_layer == "float" else f"{arch}.{form}.{first_layer}.onnx")


def _arch_paths(out_dir: Path, arch: str) -> list[Path]:
    """Every file `export` may write for `arch`."""
    return [export_path(out_dir, arch, form, fl) for form in FORMS for fl in FIRST_LAYERS
            if fl == "float" or form in INT8_FORMS]


# Metadata that names the model a file was exported from: files of one arch in one folder must
# agree on it (`export`). A checkpoint's hash, or a random init's seed and calibration.
SOURCE_KEYS = ("xnorpipe.arch", "xnorpipe.checkpoint_sha256", "xnorpipe.random_init", "xnorpipe.random_seed",
               "xnorpipe.random_calibration")


def source_of(meta: dict[str, str]) -> tuple[str | None, ...]:
    return tuple(meta.get(k) for k in SOURCE_KEYS)


def _source_of_file(path: Path) -> tuple[str | None, ...] | None:
    """The source an existing export names; None if it cannot be read."""
    try:
        return source_of(model_metadata(onnx.load(str(path), load_external_data=False)))
    except Exception:  # truncated or foreign: not a file of any source
        return None


def _build_checked(model: ir.DeployModel, form: str, opset: int, first_layer=None) -> onnx.ModelProto:
    m = build_onnx(model, form, opset, first_layer)
    try:
        check_onnx(m)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0]
        raise XnorpipeError(f"internal error: the {form} ONNX model fails the checker: {first}") from None
    return m


@contextlib.contextmanager
def _arch_lock(out_dir: Path, arch: str):
    """Exclusive flock on `<out>/.<arch>.export.lock` for one export of `arch`: concurrent
    exports wait, and the kernel drops the lock of a killed one. Removed when done (the inode
    check retries if the holder before us removed the file we opened). Where flock is missing
    (not POSIX, some NFS) exports of one arch must not run concurrently."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    path = out_dir / f".{arch}.export.lock"
    fd = None
    while fcntl is not None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(e, path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no flock on this file system
            os.close(fd)
            fd = None
            break
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def export(model: ir.DeployModel, forms: Iterable[str], out_dir: str | os.PathLike,
           opset: int = DEFAULT_OPSET, note: Callable[[str], None] | None = None,
           first_layer=None) -> list[ExportedFile]:
    """Build, check and write `<arch>.<form>.onnx` for each form: all of them or none. With
    `first_layer` (an IntegerFirstLayer, forms INT8_FORMS), `<arch>.<form>.int8.onnx`.

    The arch's files in `out_dir` always come from one source (checkpoint or random init, see
    SOURCE_KEYS), also after a SIGKILL at any point:
      1. every form is built and checked in memory, then written to a temp file beside its
         target (`atomic_path`: fsynced; a failure removes the temps, the old files stay);
      2. the arch's files from another source are removed (`note` tells of those this export
         does not replace), so no new file ever lands beside an old one of another source;
      3. the temps are renamed onto their targets, each atomically.
    A kill in step 2 leaves part of the old set, in step 3 part of the new one (the renames take
    milliseconds): never a mix, and the next export completes the set. The next export of the
    arch also removes a killed run's temps (`remove_stale_temps`); an flock keeps concurrent
    exports of one arch apart, so their steps 2 and 3 cannot interleave.
    """
    forms = list(dict.fromkeys(forms))
    built = [(form, _build_checked(model, form, opset, first_layer)) for form in forms]
    variant = "float" if first_layer is None else "int8"
    source = source_of(metadata_props(model, "portable"))
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, out_dir) from None
    written = []
    with _arch_lock(out_dir, model.arch):
        for path in _arch_paths(out_dir, model.arch):  # killed writers' temps, also of files not written now
            remove_stale_temps(path)
        with contextlib.ExitStack() as renames:  # on leaving: every temp renamed onto its target
            for form, m in built:
                path = export_path(out_dir, model.arch, form, variant)
                renames.enter_context(atomic_path(path)).write_bytes(m.SerializeToString())  # fsynced
                written.append((form, path, m))
            targets = {path for _, path, _ in written}
            for path in _arch_paths(out_dir, model.arch):
                if path.is_file() and _source_of_file(path) != source:
                    path.unlink()
                    if path not in targets and note is not None:
                        note(f"removed {path}: exported from another checkpoint or random init")
        _sync_dir(out_dir)
    return [_summarise(form, path, m) for form, path, m in written]


# ----------------------------------------------------------------------------- reading


def missing_functions(m: onnx.ModelProto) -> list[str]:
    """xnorpipe op types that a node (of the graph or of a function) calls but no model-local
    function defines: only a runtime with the custom-op library can run those."""
    defined = {(f.domain, f.name) for f in m.functions}
    nodes = [*m.graph.node, *(n for f in m.functions for n in f.node)]
    return sorted({n.op_type for n in nodes if n.domain == DOMAIN and (n.domain, n.op_type) not in defined})


def load_onnx(path: str | os.PathLike, *, custom_op_library: bool = False) -> onnx.ModelProto:
    """Read an ONNX file with one-line errors (missing, not ONNX, truncated, functions lost).

    `custom_op_library`: the caller runs xnorpipe ops on the custom-op library (or the
    TensorRT plugin), so a model whose function bodies are missing is still runnable.
    """
    path = Path(path)
    if not path.is_file():
        raise XnorpipeError(f"ONNX file not found: {path}")
    try:
        m = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise XnorpipeError(f"{path}: not a readable ONNX model (truncated or not ONNX?): "
                            f"{type(e).__name__}") from None
    if not m.graph.node or not m.opset_import:
        raise XnorpipeError(f"{path}: not a readable ONNX model (no graph)")
    try:  # a file cut at a field boundary parses, but loses initializers or nodes
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise XnorpipeError(f"{path}: invalid ONNX model (truncated?): {first}") from None
    missing = missing_functions(m)
    if missing and not custom_op_library:
        ops = ", ".join(f"{DOMAIN}::{op}" for op in missing)
        raise XnorpipeError(f"{path}: the model-local functions of {ops} are missing (onnx.version_converter "
                            "and some other tools drop them; the checker does not notice), so only the "
                            "xnorpipe custom-op library can run it: re-export with `xnorpipe export --opset N` "
                            "instead of converting, or use a packed-inline form")
    return m


def model_metadata(m: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in m.metadata_props}


def count_custom_nodes(m: onnx.ModelProto) -> int:
    """XnorConv2d-family nodes: XnorConv2d, XnorConv2dBits, XnorConv2dBitsBinarize."""
    return sum(1 for node in m.graph.node if node.domain == DOMAIN and node.op_type in CONV_OPS)


def count_bit_nodes(m: onnx.ModelProto) -> int:
    """Binarize, ConvBinarize, BitMaxPool and AvgPoolBinarize nodes (the packed-bits form's ops
    outside the XnorConv2d family)."""
    return sum(1 for node in m.graph.node if node.domain == DOMAIN and node.op_type in BIT_OPS)


def model_form(m: onnx.ModelProto) -> str | None:
    """The form an xnorpipe export declares in its metadata (None for a foreign file)."""
    return model_metadata(m).get("xnorpipe.form")


def custom_op_types(m: onnx.ModelProto) -> list[str]:
    """Sorted op types of the model's xnorpipe-domain nodes."""
    return sorted({node.op_type for node in m.graph.node if node.domain == DOMAIN})
