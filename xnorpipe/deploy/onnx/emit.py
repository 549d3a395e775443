"""The graph emitter: the deploy IR as an ONNX model of a form (deploy/forms.py): the portable
form (standard ops), the packed and packed-bits forms (xnorpipe ops, ops.py, with their
model-local functions, functions.py), and those two with their functions inlined. The contract
is docs/XNORCONV2D.md.

packed: `xnorpipe::XnorConv2d` v1 nodes with int32 bit-word weights, plus ONE model-local
FunctionProto `xnorpipe::XnorConv2d` whose body computes the op from standard ops; ONNX Runtime
inlines it per call site. One function name keeps `op_type == "XnorConv2d"`, which is what
TensorRT's parser maps to the plugin (no overloads needed).

packed-bits: as packed, but binary layers that feed binary layers pass bit-packed activations
(int32 [N, ceil(C/32), H, W]) through `Binarize`, `XnorConv2dBits`, `XnorConv2dBitsBinarize`
and `BitMaxPool` (the contract's last section), each with its own model-local function; a
float conv (group 1) that feeds a binary layer reading bits writes its bits itself through
`ConvBinarize` (Conv, ReLU and the next layer's binarization in one node), and an
AveragePool that feeds one through `AvgPoolBinarize` (`bit_tensors` decides which tensors).

packed-inline, packed-bits-inline: the same models after `onnx.inliner`: standard ops only,
no function, for runtimes that expand no model-local function; weights stay bit-packed.

The integer first layer (`first_layer=`, deploy/first_layer.py; packed-bits and its inlined
form): `xnorpipe::ConvIntegerBinarize` on the uint8 NHWC image replaces the first
`ConvBinarize` (files `<arch>.<form>.int8.onnx`).

Every xnorpipe node is made by `ops.make_node`, so its attributes are the op table's.
`single_node_model` builds a model of one xnorpipe node (op-level tests), `probe_model` the
smallest one (the ONNX Runtime engine's library probe).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xnorpipe import __version__
from xnorpipe.deploy import ir
from xnorpipe.deploy.forms import DEFAULT_OPSET, FORMS, FORMS_BY_NAME, INT8_FORMS
from xnorpipe.deploy.onnx import ops
from xnorpipe.deploy.onnx.ops import (
    AVG_POOL_BINARIZE,
    BINARIZE,
    BIT_MAX_POOL,
    CONV_BINARIZE,
    CONV_BITS,
    CONV_BITS_BINARIZE,
    CONV_INTEGER_BINARIZE,
    DOMAIN,
    OP_NAME,
    OP_VERSION,
    functions_for,
)
from xnorpipe.deploy.onnx.versions import check_opset, ir_version_for
from xnorpipe.deploy.packing import num_words, unpack_weights
from xnorpipe.errors import XnorpipeError

INPUT_CONVENTION = "RGB uint8 / 255, then (x - mean) / std, NCHW float32"
INT8_INPUT_CONVENTION = "RGB uint8 as decoded, NHWC, no normalisation (folded into the integer first layer)"
INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "logits", "batch"


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

    def node(self, op: str, inputs: Sequence[str], base: str, **attrs) -> str:
        """A standard ONNX node."""
        out = self.name(base)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, domain="", **attrs))
        return out

    def op(self, op_type: str, inputs: Sequence[str], base: str, **attrs) -> str:
        """An xnorpipe node (ops.make_node: the table's domain, attributes checked against it)."""
        out = self.name(base)
        self.nodes.append(ops.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def conv_attrs(layer) -> dict:
    """ONNX Conv's window attributes of a conv layer (IR FloatConv or BinaryConv)."""
    return dict(kernel_shape=list(layer.kernel_shape), strides=list(layer.strides),
                pads=list(layer.pads), dilations=list(layer.dilations), group=int(layer.group))


def layer_attrs(layer, reads_bits: bool = False) -> dict:
    """The xnorpipe node attributes of an IR layer: a BinaryConv's as `XnorConv2d`, or with
    `reads_bits` as `XnorConv2dBits*` (plus `channels`, and `shuffle_output` when set); a
    FloatConv's as `ConvBinarize`; a MaxPool's or AvgPool's as `BitMaxPool`/`AvgPoolBinarize`."""
    if isinstance(layer, (ir.MaxPool, ir.AvgPool)):
        return dict(kernel_shape=list(layer.kernel_shape), strides=list(layer.strides), pads=list(layer.pads))
    if isinstance(layer, ir.BinaryConv) and reads_bits:
        shuffle = {"shuffle_output": 1} if layer.shuffle_output else {}
        return dict(relu=int(layer.relu), channels=int(layer.in_channels), **conv_attrs(layer), **shuffle)
    if isinstance(layer, (ir.BinaryConv, ir.FloatConv)):
        return dict(relu=int(layer.relu), **conv_attrs(layer))
    raise XnorpipeError(f"internal error: no xnorpipe op of an IR {type(layer).__name__}")


def _pool_on_bits(pool: ir.MaxPool | ir.AvgPool) -> bool:
    """BitMaxPool and AvgPoolBinarize need an in-image tap in every window: pads < kernel
    (ONNX's pooling requires it too)."""
    top, left, bottom, right = pool.pads
    kh, kw = pool.kernel_shape
    return max(top, bottom) < kh and max(left, right) < kw


def _writes_bits(op, reads_bits: bool) -> bool:
    """Can a node of `op` write bits (reading bits when `reads_bits`)? A binary conv
    (`XnorConv2dBitsBinarize`, after a `Binarize` for a float input), a group-1 float conv
    (`ConvBinarize`), an AveragePool (`AvgPoolBinarize`), a MaxPool on bits (`BitMaxPool`)."""
    if isinstance(op, ir.BinaryConv):
        return True
    if isinstance(op, ir.FloatConv):
        return op.group == 1
    if isinstance(op, ir.AvgPool):
        return _pool_on_bits(op)
    if isinstance(op, ir.MaxPool):
        return _pool_on_bits(op) and reads_bits
    return False


def bit_tensors(model: ir.DeployModel) -> dict[str, np.ndarray]:
    """The tensors packed-bits passes as bits, each with the threshold it is binarized at.

    A tensor is bits when every node reading it reads bits (a binary conv, or a MaxPool whose
    output is bits) at one threshold, its producer can write bits (`_writes_bits`), and it is
    not the model output. So a tensor read by a binary conv and by a float op (a residual add)
    stays float, and the binary conv binarizes it itself (`XnorConv2d`).
    """
    nodes, consumers, producers = model.nodes, model.consumers(), model.producers()
    bits = {n.output for n in nodes
            if n.output != model.output and consumers[n.output]
            and all(isinstance(nodes[c].op, ir.BinaryConv)
                    or (isinstance(nodes[c].op, ir.MaxPool) and _pool_on_bits(nodes[c].op))
                    for c in consumers[n.output])}

    def threshold(t: str) -> np.ndarray | None:
        """The one threshold `t`'s readers binarize it at, or None (they differ, or not all read bits)."""
        found = None
        for c in consumers[t]:
            op = nodes[c].op
            if isinstance(op, ir.BinaryConv):
                thr = op.threshold
            elif nodes[c].output in bits:  # a MaxPool writing bits: its readers' threshold
                thr = threshold(nodes[c].output)
            else:
                return None
            if thr is None:
                return None
            if found is not None and not np.array_equal(found, thr):
                return None
            found = thr
        return found

    changed = True
    while changed:
        changed = False
        for t in sorted(bits):
            p = nodes[producers[t]]
            if not _writes_bits(p.op, p.inputs[0] in bits) or threshold(t) is None:
                bits.discard(t)
                changed = True
    return {t: np.asarray(threshold(t), np.float32) for t in bits}


def _emit_shuffle(g: _GraphBuilder, x: str, groups: int, shape: tuple[int, ...], tag: str) -> str:
    """ChannelShuffle(groups) of x [N, C, H, W] as Reshape -> Transpose -> Reshape."""
    c, h, w = shape
    split = g.init(f"{tag}.split", np.array([0, groups, c // groups, h, w], np.int64))
    merge = g.init(f"{tag}.merge", np.array([0, c, h, w], np.int64))
    x = g.node("Reshape", [x, split], f"{tag}.split")
    x = g.node("Transpose", [x], f"{tag}.transpose", perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [x, merge], f"{tag}.merge")


def _emit_binary(g: _GraphBuilder, layer: ir.BinaryConv, x: str, form: str, tag: str,
                 in_bits: bool, out_threshold: np.ndarray | None, shape: tuple[int, ...]) -> str:
    """A binary conv in `form`; packed-bits with `in_bits` (x holds bits) or an `out_threshold`
    (it writes bits) takes the bit ops."""
    if in_bits or out_threshold is not None:
        if not in_bits:  # float in, bits out: binarize with the layer's own threshold
            thr = g.init(f"{tag}.threshold", np.asarray(layer.threshold, np.float32))
            x = g.op(BINARIZE, [x, thr], f"{tag}.binarize")
        inputs = [x, g.init(f"{tag}.weight_bits", layer.weight_bits.astype(np.int32)),
                  g.init(f"{tag}.scale", np.asarray(layer.scale, np.float32)),
                  g.init(f"{tag}.bias", np.asarray(layer.bias, np.float32))]
        op = CONV_BITS
        if out_threshold is not None:  # fuse the readers' binarization
            inputs.append(g.init(f"{tag}.output_threshold", out_threshold))
            op = CONV_BITS_BINARIZE
        return g.op(op, inputs, f"{tag}", **layer_attrs(layer, reads_bits=True))
    if form in ("packed", "packed-bits"):
        inputs = [x, g.init(f"{tag}.weight_bits", layer.weight_bits.astype(np.int32)),
                  g.init(f"{tag}.threshold", np.asarray(layer.threshold, np.float32)),
                  g.init(f"{tag}.scale", np.asarray(layer.scale, np.float32)),
                  g.init(f"{tag}.bias", np.asarray(layer.bias, np.float32))]
        x = g.op(OP_NAME, inputs, f"{tag}", **layer_attrs(layer))
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
        s = g.node("Conv", [xb, w], f"{tag}.xnor", **conv_attrs(layer))
        y = g.node("Mul", [s, scale], f"{tag}.scale_mul")
        x = g.node("Add", [y, bias], f"{tag}.bias_add")
        if layer.relu:
            x = g.node("Relu", [x], f"{tag}.relu")
    if layer.shuffle_output:  # only the bit ops have the attribute (contract v1 does not)
        x = _emit_shuffle(g, x, layer.group, shape, f"{tag}.shuffle")
    return x


def _emit_nodes(model: ir.DeployModel, form: str, g: _GraphBuilder, first_layer=None) -> str:
    """The nodes as ONNX nodes; returns the ONNX name of the model output. `first_layer` (an
    IntegerFirstLayer) replaces the first node, a float conv writing bits (packed-bits only)."""
    shapes = ir.tensor_shapes(model)
    bits = bit_tensors(model) if form == "packed-bits" else {}
    names = {ir.INPUT: INPUT_NAME}  # IR tensor -> ONNX tensor
    conv_i = 0
    for i, node in enumerate(model.nodes):
        layer, out_thr = node.op, bits.get(node.output)
        xs = [names[t] for t in node.inputs]
        x, in_bits = xs[0], node.inputs[0] in bits
        if i == 0 and first_layer is not None:
            if not (isinstance(layer, ir.FloatConv) and node.inputs == (ir.INPUT,) and out_thr is not None):
                raise XnorpipeError("internal error: the integer first layer needs a first conv that writes bits")
            inputs = [x] + [g.init(f"conv0.{name}", array) for name, array in first_layer.tensors()]
            y = g.op(CONV_INTEGER_BINARIZE, inputs, "conv0", **first_layer.attributes())
            conv_i += 1
        elif isinstance(layer, ir.FloatConv):
            tag = f"conv{conv_i}"
            conv_i += 1
            w = g.init(f"{tag}.weight", np.asarray(layer.weight, np.float32))
            b = g.init(f"{tag}.bias", np.asarray(layer.bias, np.float32))
            if out_thr is not None:  # Conv (+ Relu) + the readers' Binarize, one node
                thr = g.init(f"{tag}.output_threshold", out_thr)
                y = g.op(CONV_BINARIZE, [x, w, b, thr], f"{tag}", **layer_attrs(layer))
            else:
                y = g.node("Conv", [x, w, b], f"{tag}", **conv_attrs(layer))
                if layer.relu:
                    y = g.node("Relu", [y], f"{tag}.relu")
        elif isinstance(layer, ir.BinaryConv):
            tag = f"conv{conv_i}"
            conv_i += 1
            y = _emit_binary(g, layer, x, form, tag, in_bits, out_thr, shapes[node.output])
        elif isinstance(layer, ir.MaxPool):
            y = (g.op(BIT_MAX_POOL, [x], f"maxpool{i}", **layer_attrs(layer)) if in_bits
                 else g.node("MaxPool", [x], f"maxpool{i}", **layer_attrs(layer)))
        elif isinstance(layer, ir.AvgPool) and out_thr is not None:  # + the readers' Binarize
            thr = g.init(f"avgpool{i}.output_threshold", out_thr)
            y = g.op(AVG_POOL_BINARIZE, [x, thr], f"avgpool{i}", **layer_attrs(layer))
        elif isinstance(layer, ir.AvgPool):
            y = g.node("AveragePool", [x], f"avgpool{i}", kernel_shape=list(layer.kernel_shape),
                       strides=list(layer.strides), pads=list(layer.pads), count_include_pad=1)
        elif isinstance(layer, ir.ChannelShuffle):
            y = _emit_shuffle(g, x, layer.groups, shapes[node.output], f"shuffle{i}")
        elif isinstance(layer, ir.Flatten):
            y = g.node("Flatten", [x], f"flatten{i}", axis=1)
        elif isinstance(layer, ir.Add):
            y = g.node("Add", xs, f"add{i}")
        elif isinstance(layer, ir.Concat):
            y = g.node("Concat", xs, f"concat{i}", axis=1)
        elif isinstance(layer, ir.Linear):
            w = g.init(f"linear{i}.weight", np.asarray(layer.weight, np.float32))
            b = g.init(f"linear{i}.bias", np.asarray(layer.bias, np.float32))
            y = g.node("Gemm", [x, w, b], f"linear{i}", transB=1)
        elif isinstance(layer, ir.Relu):
            y = g.node("Relu", [x], f"relu{i}")
        elif isinstance(layer, ir.PRelu):
            slope = np.asarray(layer.slope, np.float32)
            slope = slope.reshape(-1, 1, 1) if slope.size > 1 and len(shapes[node.output]) == 3 else slope
            y = g.node("PRelu", [x, g.init(f"prelu{i}.slope", slope)], f"prelu{i}")
        elif isinstance(layer, ir.Clip):
            low = g.init(f"clip{i}.min", np.array(layer.low, np.float32))
            high = g.init(f"clip{i}.max", np.array(layer.high, np.float32))
            y = g.node("Clip", [x, low, high], f"clip{i}")
        else:
            raise XnorpipeError(f"unknown IR op {type(layer).__name__}")
        if any(t in bits for t in node.inputs) and not isinstance(layer, (ir.BinaryConv, ir.MaxPool)):
            raise XnorpipeError(f"internal error: bits reach a {type(layer).__name__} node")
        names[node.output] = y
    if model.output in bits:
        raise XnorpipeError("internal error: the model's output is bits")
    return names[model.output]


def has_binary_layers(model: ir.DeployModel) -> bool:
    return any(isinstance(n.op, ir.BinaryConv) for n in model.nodes)


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



def model_metadata(m: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in m.metadata_props}


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
    last = _emit_nodes(model, form, g, first_layer)
    # Rename the model output's tensor to the public output name.
    for node in g.nodes:
        for k, name in enumerate(node.output):
            if name == last:
                node.output[k] = OUTPUT_NAME
        for k, name in enumerate(node.input):
            if name == last:
                node.input[k] = OUTPUT_NAME
    c, h, w = model.input_shape
    out_shape = ir.tensor_shapes(model)[model.output]
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




# ------------------------------------------------------------------------- one-node models


def _output_shape(op: ops.Op, x_shape: Sequence[int], arrays: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> tuple[int, ...]:
    """The output shape the op table gives for these input shapes and attributes: each input's
    shape binds the contract's symbols ("M", "kH", "words(C)", ...), "words(S)" is ceil(S / 32),
    and Ho, Wo are ONNX Conv's output size."""
    dims: dict[str, int] = {}
    for tensor, shape in [(op.inputs[0], x_shape), *((t, arrays[t.name].shape) for t in op.inputs[1:])]:
        if len(shape) != len(tensor.shape):
            raise XnorpipeError(f"xnorpipe::{op.name}: {tensor.name} must be [{', '.join(tensor.shape)}], "
                                f"got {list(shape)}")
        for symbol, size in zip(tensor.shape, shape, strict=True):
            if dims.setdefault(symbol, int(size)) != int(size):
                raise XnorpipeError(f"xnorpipe::{op.name}: {tensor.name} has {symbol} = {size}, another input "
                                    f"{dims[symbol]}")
    at = {**op.defaults, **attrs}

    def dim(symbol: str) -> int:
        if symbol in dims:
            return dims[symbol]
        if symbol.startswith("words(") and symbol.endswith(")"):
            return num_words(dim(symbol[len("words("):-1]))
        if symbol in ("Ho", "Wo"):
            axis = 0 if symbol == "Ho" else 1
            kernel, stride = at["kernel_shape"][axis], at["strides"][axis]
            dilation = at.get("dilations", (1, 1))[axis]
            padded = dim("H" if axis == 0 else "W") + at["pads"][axis] + at["pads"][axis + 2]
            size = (padded - dilation * (kernel - 1) - 1) // stride + 1
            if size < 1:
                raise XnorpipeError(f"xnorpipe::{op.name}: the window does not fit the input")
            return size
        raise XnorpipeError(f"internal error: xnorpipe::{op.name}'s output dimension {symbol} is not known")

    return tuple(dim(symbol) for symbol in op.output.shape)


def single_node_model(op_type: str, x_shape: Sequence[int], inputs: Mapping[str, np.ndarray],
                      attrs: Mapping[str, Any] | None = None, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """A model of one xnorpipe node, for op-level tests and probes: graph input "X" of
    `x_shape` (the op's first input: its dtype from the table, its batch symbolic), the op's
    other inputs as initializers (`inputs`: name -> array, cast to the table's dtype within its
    kind), output "Y" of the table's dtype and shape; the node has `attrs` as given (the others
    take the op's defaults) and the model carries exactly the functions the node needs."""
    op = ops.op_spec(op_type)
    rest = op.inputs[1:]
    if set(inputs) != {t.name for t in rest}:
        raise XnorpipeError(f"xnorpipe::{op.name}: inputs after X are {', '.join(t.name for t in rest) or 'none'}, "
                            f"got {', '.join(inputs) or 'none'}")
    arrays = {}
    for t in rest:
        array = np.asarray(inputs[t.name])
        if not np.can_cast(array.dtype, t.np_dtype, "same_kind"):
            raise XnorpipeError(f"xnorpipe::{op.name}: {t.name} is {np.dtype(t.np_dtype).name}, got {array.dtype}")
        arrays[t.name] = np.ascontiguousarray(array.astype(t.np_dtype, copy=False))
    attrs = dict(attrs or {})
    node = ops.make_node(op.name, ["X", *(t.name for t in rest)], ["Y"], **attrs)
    y_shape = _output_shape(op, x_shape, arrays, attrs)
    graph = helper.make_graph([node], op.name,
                              [helper.make_tensor_value_info("X", op.inputs[0].dtype, [BATCH_DIM, *x_shape[1:]])],
                              [helper.make_tensor_value_info("Y", op.output.dtype, [BATCH_DIM, *y_shape[1:]])],
                              [numpy_helper.from_array(arrays[t.name], t.name) for t in rest])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid(op.domain, op.version)],
                             functions=functions_for([op.name], opset), ir_version=ir_version_for("packed", opset))


def probe_model(op_type: str, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The smallest model of one `op_type` node: every dimension 1, every required attribute 1
    (kernel_shape [1, 1]), every input zero. A runtime that has the op loads it."""
    op = ops.op_spec(op_type)
    required = {a.name: [1, 1] if a.kind == onnx.AttributeProto.INTS else 1 for a in op.attributes if a.required}
    return single_node_model(op.name, (1,) * len(op.inputs[0].shape),
                             {t.name: np.zeros((1,) * len(t.shape), t.np_dtype) for t in op.inputs[1:]},
                             required, opset)
