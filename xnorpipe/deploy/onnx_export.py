"""ONNX emitters of the deploy IR: the portable form (standard ops) and the packed form.

packed: `xnorpipe::XnorConv2d` v1 nodes (shared/docs/XNORCONV2D.md) with int32 bit-word
weights, plus ONE model-local FunctionProto `xnorpipe::XnorConv2d` whose body computes the op
from standard ops. The body is attribute-generic: its nodes take kernel_shape, strides, pads,
dilations and group by `ref_attr_name`, and `group`/`relu` also reach it as tensors through
`Constant(value_int=@attr)`; ONNX Runtime 1.32 inlines it per call site. One function name
keeps `op_type == "XnorConv2d"`, which is what TensorRT's parser maps to the plugin (no
overloads needed). The body unpacks bits with BitwiseAnd, so the packed form needs opset >= 18.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xnorpipe import __version__
from xnorpipe.deploy import ir
from xnorpipe.deploy.packing import WORD_BITS, unpack_weights
from xnorpipe.errors import XnorpipeError
from xnorpipe.utils import atomic_path

DOMAIN = "xnorpipe"
OP_NAME = "XnorConv2d"
OP_VERSION = 1
DEFAULT_OPSET = 18
MIN_OPSET = {"portable": 17, "packed": 18}
IR_VERSION = 10  # ONNX 1.16+, read by ONNX Runtime >= 1.17; needed for function attribute defaults
FORMS = ("portable", "packed")
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
        doc_string="xnorpipe::XnorConv2d v1 from standard ops (shared/docs/XNORCONV2D.md)")


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


def _emit_layers(model: ir.DeployModel, form: str, g: _GraphBuilder) -> str:
    x = INPUT_NAME
    shapes = layer_shapes(model)
    conv_i = 0
    for i, layer in enumerate(model.layers):
        if isinstance(layer, ir.FloatConv):
            tag = f"conv{conv_i}"
            conv_i += 1
            w = g.init(f"{tag}.weight", np.asarray(layer.weight, np.float32))
            b = g.init(f"{tag}.bias", np.asarray(layer.bias, np.float32))
            x = g.node("Conv", [x, w, b], f"{tag}", **_conv_attrs(layer))
            if layer.relu:
                x = g.node("Relu", [x], f"{tag}.relu")
        elif isinstance(layer, ir.BinaryConv):
            tag = f"conv{conv_i}"
            conv_i += 1
            if form == "packed":
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
        elif isinstance(layer, ir.MaxPool):
            x = g.node("MaxPool", [x], f"maxpool{i}", kernel_shape=list(layer.kernel_shape),
                       strides=list(layer.strides), pads=list(layer.pads))
        elif isinstance(layer, ir.AvgPool):
            x = g.node("AveragePool", [x], f"avgpool{i}", kernel_shape=list(layer.kernel_shape),
                       strides=list(layer.strides), pads=list(layer.pads), count_include_pad=1)
        elif isinstance(layer, ir.ChannelShuffle):
            c, h, w = shapes[i]
            grp = layer.groups
            split = g.init(f"shuffle{i}.split", np.array([0, grp, c // grp, h, w], np.int64))
            merge = g.init(f"shuffle{i}.merge", np.array([0, c, h, w], np.int64))
            x = g.node("Reshape", [x, split], f"shuffle{i}.split")
            x = g.node("Transpose", [x], f"shuffle{i}.transpose", perm=[0, 2, 1, 3, 4])
            x = g.node("Reshape", [x, merge], f"shuffle{i}.merge")
        elif isinstance(layer, ir.Flatten):
            x = g.node("Flatten", [x], f"flatten{i}", axis=1)
        else:
            raise XnorpipeError(f"unknown IR layer {type(layer).__name__}")
    return x


def has_binary_layers(model: ir.DeployModel) -> bool:
    return any(isinstance(layer, ir.BinaryConv) for layer in model.layers)


def metadata_props(model: ir.DeployModel, form: str) -> dict[str, str]:
    props = {
        "xnorpipe.arch": model.arch,
        "xnorpipe.form": form,
        "xnorpipe.mean": json.dumps([float(v) for v in model.mean]),
        "xnorpipe.std": json.dumps([float(v) for v in model.std]),
        "xnorpipe.layout": "NCHW",
        "xnorpipe.classes": json.dumps(list(model.classes)),
        "xnorpipe.version": __version__,
    }
    for key, value in model.metadata.items():
        props[key if key.startswith("xnorpipe.") else f"xnorpipe.{key}"] = str(value)
    return props


def build_onnx(model: ir.DeployModel, form: str, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The IR as an ONNX model of the given form ("portable" or "packed")."""
    if form not in FORMS:
        raise XnorpipeError(f"unknown ONNX form {form!r}; choose from {', '.join(FORMS)}")
    if opset < MIN_OPSET[form]:
        raise XnorpipeError(f"the {form} form needs opset >= {MIN_OPSET[form]}, got {opset}")
    if form == "packed" and not has_binary_layers(model):
        raise XnorpipeError(f"{model.arch} has no binary layers: only the portable form exists")
    g = _GraphBuilder()
    g.name(INPUT_NAME)
    last = _emit_layers(model, form, g)
    # Rename the last tensor to the public output name.
    g.nodes[-1].output[0] = OUTPUT_NAME
    for node in g.nodes:
        for k, name in enumerate(node.input):
            if name == last:
                node.input[k] = OUTPUT_NAME
    c, h, w = model.input_shape
    out_shape = layer_shapes(model)[-1]
    graph = helper.make_graph(
        g.nodes, f"{model.arch}_{form}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, c, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, *out_shape])],
        g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    functions = []
    if form == "packed":
        opsets.append(helper.make_opsetid(DOMAIN, OP_VERSION))
        functions.append(xnor_conv_function(opset))
    m = helper.make_model(graph, opset_imports=opsets, functions=functions, ir_version=IR_VERSION,
                          producer_name="xnorpipe", producer_version=__version__)
    helper.set_model_props(m, metadata_props(model, form))
    return m


def check_onnx(m: onnx.ModelProto) -> onnx.ModelProto:
    """Full ONNX checker plus strict shape inference; returns the inferred model."""
    onnx.checker.check_model(m, full_check=True)
    return onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)


def xnor_conv_model(layer: ir.BinaryConv, input_shape: Sequence[int],
                    opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """A one-node packed model (input "X" of `input_shape`, output "Y"): for op-level tests."""
    n, c, h, w = input_shape
    probe = ir.DeployModel(arch="op", layers=[layer], input_shape=(c, h, w))
    m_out, ho, wo = layer_shapes(probe)[-1]
    inits = [numpy_helper.from_array(layer.weight_bits.astype(np.int32), "W"),
             numpy_helper.from_array(np.asarray(layer.threshold, np.float32), "threshold"),
             numpy_helper.from_array(np.asarray(layer.scale, np.float32), "scale"),
             numpy_helper.from_array(np.asarray(layer.bias, np.float32), "bias")]
    node = helper.make_node(OP_NAME, ["X", "W", "threshold", "scale", "bias"], ["Y"], domain=DOMAIN,
                            relu=int(layer.relu), **_conv_attrs(layer))
    graph = helper.make_graph([node], "xnor_conv",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [BATCH_DIM, c, h, w])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [BATCH_DIM, m_out, ho, wo])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid(DOMAIN, OP_VERSION)],
                             functions=[xnor_conv_function(opset)], ir_version=IR_VERSION)


# ----------------------------------------------------------------------------- to files


@dataclass
class ExportedFile:
    form: str
    path: Path
    size_bytes: int
    custom_nodes: int  # xnorpipe::XnorConv2d nodes
    float_weight_bytes: int  # float32 initializers
    packed_weight_bytes: int  # int32 bit-word initializers


def _summarise(form: str, path: Path, m: onnx.ModelProto) -> ExportedFile:
    float_bytes = sum(len(t.raw_data) for t in m.graph.initializer if t.data_type == TensorProto.FLOAT)
    packed_bytes = sum(len(t.raw_data) for t in m.graph.initializer if t.data_type == TensorProto.INT32)
    custom = sum(1 for node in m.graph.node if node.domain == DOMAIN)
    return ExportedFile(form, path, path.stat().st_size, custom, float_bytes, packed_bytes)


def resolve_forms(model: ir.DeployModel, form: str) -> tuple[list[str], str | None]:
    """`portable|packed|both` -> forms to write and a note (float arch asked for both)."""
    if form == "both":
        if has_binary_layers(model):
            return list(FORMS), None
        return ["portable"], f"{model.arch} is a float arch: only the portable form is written"
    if form not in FORMS:
        raise XnorpipeError(f"unknown ONNX form {form!r}; choose portable, packed or both")
    if form == "packed" and not has_binary_layers(model):
        raise XnorpipeError(f"{model.arch} is a float arch (no binary layers): "
                            "the packed form does not exist, use --form portable")
    return [form], None


def export_path(out_dir: str | os.PathLike, arch: str, form: str) -> Path:
    return Path(out_dir) / f"{arch}.{form}.onnx"


def export(model: ir.DeployModel, forms: Iterable[str], out_dir: str | os.PathLike,
           opset: int = DEFAULT_OPSET) -> list[ExportedFile]:
    """Build, check and atomically write `<arch>.<form>.onnx` for each form."""
    forms = list(forms)
    built = []
    for form in forms:  # build and check everything before writing anything
        m = build_onnx(model, form, opset)
        try:
            check_onnx(m)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            first = str(e).strip().splitlines()[0]
            raise XnorpipeError(f"internal error: the {form} ONNX model fails the checker: {first}") from None
        built.append((form, m))
    out = []
    for form, m in built:
        path = export_path(out_dir, model.arch, form)
        with atomic_path(path) as tmp:
            tmp.write_bytes(m.SerializeToString())
        out.append(_summarise(form, path, m))
    return out


# ----------------------------------------------------------------------------- reading


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with one-line errors (missing, not ONNX, truncated)."""
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
    return m


def model_metadata(m: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in m.metadata_props}


def count_custom_nodes(m: onnx.ModelProto) -> int:
    return sum(1 for node in m.graph.node if node.domain == DOMAIN and node.op_type == OP_NAME)
