"""The model-local function bodies of the xnorpipe ops: each op from standard ONNX ops (and the
xnorpipe ops it calls), so that a runtime without xnorpipe's library still runs a packed model.

A body builder fills a `_Body` with nodes; `function_proto` wraps it with what the op table
(ops.py) says of the op: its inputs, its required attributes and their declared defaults, its
domain and version. Bodies are attribute-generic: their nodes take the call's attributes by
`ref_attr_name` (checked against the table), and `group`/`relu`/... reach them as tensors through
`Constant(value_int=@attr)`.

`XnorConv2d` unpacks bits with BitwiseAnd, so the packed form needs opset >= 18. The bit ops'
bodies call `XnorConv2d` and `Binarize` (nested model-local functions), so a model carries the
functions its nodes use and the ones those call (`ops.functions_for`). Bodies pack bits with
BitwiseOr, never an integer sum (OpenVINO sums int32 in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xnorpipe.deploy.packing import WORD_BITS
from xnorpipe.errors import XnorpipeError

if TYPE_CHECKING:
    from xnorpipe.deploy.onnx.ops import Op

CONTRACT = "docs/XNORCONV2D.md"


def _attr_ref(name: str, ref: str, kind: int) -> onnx.AttributeProto:
    a = onnx.AttributeProto()
    a.name, a.ref_attr_name, a.type = name, ref, kind
    return a


class _Body:
    """Nodes of `op`'s function body, with constants, attribute references and calls."""

    def __init__(self, op: Op):
        self.op = op
        self.nodes: list[onnx.NodeProto] = []

    def ref(self, attr: str, name: str | None = None) -> onnx.AttributeProto:
        """Attribute `name` (default: `attr`) taking the call's attribute `attr`, of its table type."""
        return _attr_ref(name or attr, attr, self.op.attr(attr).kind)

    def const(self, name: str, value) -> str:
        self.nodes.append(helper.make_node("Constant", [], [name],
                                           value=numpy_helper.from_array(np.asarray(value), name)))
        return name

    def attr_const(self, name: str, attr: str) -> str:
        """A scalar int64 tensor holding the int attribute `attr` of the call."""
        node = helper.make_node("Constant", [], [name])
        node.attribute.append(self.ref(attr, "value_int"))
        self.nodes.append(node)
        return name

    def add(self, op: str, inputs: Sequence[str], output: str, refs: Sequence[str] = (), **attrs) -> str:
        """A standard op; `refs`: attributes it takes from the call, by name."""
        node = helper.make_node(op, list(inputs), [output], domain="", **attrs)
        node.attribute.extend(self.ref(name) for name in refs)
        self.nodes.append(node)
        return output

    def call(self, op_type: str, inputs: Sequence[str], output: str) -> str:
        """An xnorpipe op the table lists in `calls`, given every attribute of it from the call."""
        callee = next((c for c in self.op.calls if c.name == op_type), None)
        if callee is None:
            raise XnorpipeError(f"internal error: the body of xnorpipe::{self.op.name} calls {op_type}, "
                                "which its row of the op table does not list")
        node = helper.make_node(callee.name, list(inputs), [output], domain=callee.domain)
        node.attribute.extend(self.ref(a.name) for a in callee.attributes)
        self.nodes.append(node)
        return output


def function_proto(op: Op, opset: int) -> onnx.FunctionProto:
    """`op`'s model-local function at ai.onnx `opset`, from its table row and body builder."""
    b = _Body(op)
    op.body(b)
    imports = [helper.make_opsetid("", opset)]
    if op.body_imports_domain:
        imports.append(helper.make_opsetid(op.domain, op.version))
    doc = f"{op.domain}::{op.name} v{op.version} from standard ops ({CONTRACT})" + (f": {op.doc}" if op.doc else "")
    return helper.make_function(op.domain, op.name, list(op.input_names), [op.output.name], b.nodes, imports,
                                attributes=list(op.required),
                                attribute_protos=[a.proto() for a in op.attributes if not a.required],
                                doc_string=doc)


# ------------------------------------------------------------------------------ shared parts


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


# ------------------------------------------------------------------------------ the bodies


def xnor_conv_body(b: _Body) -> None:
    """`xnorpipe::XnorConv2d` from standard ops (the contract's semantics, any attributes).

    Unpacking: W [M,kH,kW,nw] & (1 << k) != 0 -> +-1, reshaped to [M,kH,kW,32*nw], cut to
    C/group channels and transposed to Conv's [M, C/group, kH, kW]. Conv zero-pads the +-1
    tensor, as the contract requires. (Its nodes leave `domain` unset where the other bodies
    set it to "": the same ops, written so before the others; files stay byte-identical.)
    """
    masks = np.array([1 << k for k in range(WORD_BITS)], dtype=np.int64).astype(np.uint32).view(np.int32)
    n = b.nodes
    b.const("one", np.array(1.0, np.float32))
    b.const("minus_one", np.array(-1.0, np.float32))
    b.const("zero_f", np.array(0.0, np.float32))
    b.const("minus_inf", np.array(-np.inf, np.float32))
    b.const("zero_i", np.array(0, np.int32))
    b.const("masks", masks)
    b.const("axes_chw", np.array([1, 2], np.int64))
    b.const("axis_last", np.array([4], np.int64))
    b.const("slice_start", np.array([0], np.int64))
    b.const("slice_axis", np.array([3], np.int64))
    b.const("flat_shape", np.array([0, 0, 0, -1], np.int64))
    b.attr_const("group_t", "group")
    b.attr_const("relu_t", "relu")
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
    n.append(helper.make_node("Slice", ["w_pm1_padded", "slice_start", "group_channels", "slice_axis"],
                              ["w_pm1_mhwc"]))
    n.append(helper.make_node("Transpose", ["w_pm1_mhwc"], ["w_pm1"], perm=[0, 3, 1, 2]))
    conv = helper.make_node("Conv", ["x_pm1", "w_pm1"], ["sums"])
    conv.attribute.extend(b.ref(name) for name in ("kernel_shape", "strides", "pads", "dilations", "group"))
    n.append(conv)
    # Y = sums * scale + bias (two roundings), then max(Y, 0) if relu else max(Y, -inf) = Y
    n.append(helper.make_node("Unsqueeze", ["scale", "axes_chw"], ["scale_c11"]))
    n.append(helper.make_node("Unsqueeze", ["bias", "axes_chw"], ["bias_c11"]))
    n.append(helper.make_node("Mul", ["sums", "scale_c11"], ["scaled"]))
    n.append(helper.make_node("Add", ["scaled", "bias_c11"], ["affine"]))
    n.append(helper.make_node("Cast", ["relu_t"], ["relu_b"], to=TensorProto.BOOL))
    n.append(helper.make_node("Where", ["relu_b", "zero_f", "minus_inf"], ["floor"]))
    n.append(helper.make_node("Max", ["affine", "floor"], ["Y"]))


def binarize_body(b: _Body) -> None:
    """`xnorpipe::Binarize`: bit = X >= threshold[c] (NaN: 0), channels padded to whole words."""
    b.const("axes_chw", np.array([1, 2], np.int64))
    b.add("Unsqueeze", ["threshold", "axes_chw"], "thr_c11")
    b.add("GreaterOrEqual", ["X", "thr_c11"], "positive")
    b.add("Cast", ["positive"], "bits", to=TensorProto.INT32)
    b.add("Shape", ["threshold"], "channels")
    _pad_and_pack(b, "bits", "channels", "X", "X", "Y")


def xnor_conv_bits_body(b: _Body) -> None:
    """`xnorpipe::XnorConv2dBits`: unpack Xp to +-1, cut to `channels`, then XnorConv2d with
    threshold 0 (+1 >= 0 > -1), so the arithmetic is XnorConv2d's own."""
    _unpack(b, "Xp")
    b.const("zero_1", np.array([0], np.int64))
    b.const("c_axis", np.array([1], np.int64))
    b.const("axis_0", np.array([0], np.int64))
    b.attr_const("channels_s", "channels")
    b.add("Unsqueeze", ["channels_s", "axis_0"], "channels")
    b.add("Slice", ["up_pm1", "zero_1", "channels", "c_axis"], "x_pm1")
    b.add("ConstantOfShape", ["channels"], "zero_threshold", value=numpy_helper.from_array(np.zeros(1, np.float32)))
    b.call("XnorConv2d", ["x_pm1", "W", "zero_threshold", "scale", "bias"], "y_conv")
    _shuffle_output(b, "y_conv", "Y")


def xnor_conv_bits_binarize_body(b: _Body) -> None:
    """`xnorpipe::XnorConv2dBitsBinarize` = Binarize(XnorConv2dBits(...), output_threshold)."""
    b.call("XnorConv2dBits", ["Xp", "W", "scale", "bias"], "y_float")
    b.call("Binarize", ["y_float", "output_threshold"], "Y")


def bit_max_pool_body(b: _Body) -> None:
    """`xnorpipe::BitMaxPool`: unpack every bit to +-1, MaxPool (its -inf padding never wins:
    an OR over in-image taps), repack with threshold 0."""
    _unpack(b, "Xp")
    b.const("zero_f", np.array(0.0, np.float32))
    b.add("MaxPool", ["up_pm1"], "pooled", refs=["kernel_shape", "strides", "pads"])
    b.add("GreaterOrEqual", ["pooled", "zero_f"], "positive")
    b.add("Cast", ["positive"], "bits", to=TensorProto.INT32)
    b.add("Shape", ["Xp"], "lead", end=2)
    b.add("Shape", ["pooled"], "hw", start=2)
    _pack(b, "bits", "lead", "hw", "Y")


def conv_binarize_body(b: _Body) -> None:
    """`xnorpipe::ConvBinarize` = Binarize(relu?(Conv(X, W, B)), threshold): ONNX Conv with
    the call's attributes, ReLU as max(Y, 0) or max(Y, -inf) = Y from `relu`, then Binarize.
    NaN stays NaN through the ReLU (Max's NaN handling is unspecified), so its bit is 0."""
    b.const("zero_f", np.array(0.0, np.float32))
    b.const("minus_inf", np.array(-np.inf, np.float32))
    b.attr_const("relu_t", "relu")
    b.add("Conv", ["X", "W", "B"], "conv", refs=["kernel_shape", "strides", "pads", "dilations", "group"])
    b.add("Cast", ["relu_t"], "relu_b", to=TensorProto.BOOL)
    b.add("Where", ["relu_b", "zero_f", "minus_inf"], "floor")
    b.add("Max", ["conv", "floor"], "floored")
    b.add("IsNaN", ["conv"], "is_nan")
    b.add("Where", ["is_nan", "conv", "floored"], "y_float")
    b.call("Binarize", ["y_float", "threshold"], "Y")


def avg_pool_binarize_body(b: _Body) -> None:
    """`xnorpipe::AvgPoolBinarize` = Binarize(AveragePool(X), threshold): ONNX AveragePool with
    the call's kernel_shape, strides and pads and count_include_pad=1 (zero padding counts in
    the divisor, the only variant the op has), then Binarize. NaN in a window: NaN, bit 0."""
    b.add("AveragePool", ["X"], "pooled", refs=["kernel_shape", "strides", "pads"], count_include_pad=1)
    b.call("Binarize", ["pooled", "threshold"], "Y")


def _wide_conv_integer(b: _Body, x: str, w: str, out: str, refs: Sequence[str]) -> str:
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


def conv_integer_binarize_body(b: _Body) -> None:
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
    window = ["kernel_shape", "strides", "dilations"]
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
    pads.attribute.append(b.ref("pads", "value_ints"))
    b.nodes.append(pads)
    b.add("Slice", ["pads_tlbr", "at_0", "at_2"], "pads_tl")
    b.add("Slice", ["pads_tlbr", "at_2", "at_4"], "pads_br")
    b.add("Concat", ["zero_zero", "pads_tl", "zero_zero", "pads_br"], "pads_nchw", axis=0)
    b.add("Pad", ["inside", "pads_nchw", "one_u8"], "outside")

    def sums(weight: str, pad_value: str, out: str) -> str:
        image = _wide_conv_integer(b, "x_nchw", weight, f"{out}_x", window + ["pads"])
        zero = _wide_conv_integer(b, "zp_image", weight, f"{out}_z", window + ["pads"])
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
