"""The op table (xnorpipe/deploy/onnx/ops.py) is the single source of the xnorpipe ops' facts:
the function bodies, the emitted nodes, the one-node models, the TensorRT plugins, the torch-xnor
runner and the contract's tables all agree with it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from xnorpipe.deploy import ir
from xnorpipe.deploy import onnx as deploy_onnx
from xnorpipe.deploy.first_layer import integer_layer
from xnorpipe.deploy.fold import fold_model
from xnorpipe.deploy.onnx import OPS
from xnorpipe.errors import XnorpipeError
from xnorpipe.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def _value(a: onnx.AttributeProto):
    v = helper.get_attribute_value(a)
    return tuple(v) if isinstance(v, list) else v


@pytest.mark.parametrize("op", OPS.values(), ids=list(OPS))
def test_function_body_declares_the_tables_inputs_and_attributes(op):
    """Declared inputs, required attributes, defaults (value and type), the attributes the body
    references (the op's, of its types, every one of them), and the ops it calls (each given all
    its attributes)."""
    f = op.function()
    assert (f.domain, f.name) == (op.domain, op.name)
    assert tuple(f.input) == op.input_names and tuple(f.output) == (op.output.name,)
    assert tuple(f.attribute) == op.required
    assert {a.name: _value(a) for a in f.attribute_proto} == op.defaults
    assert all(a.type == op.attr(a.name).kind for a in f.attribute_proto)
    kinds = {a.name: a.kind for a in op.attributes}
    refs = [a for n in f.node for a in n.attribute if a.ref_attr_name]
    assert all(kinds[a.ref_attr_name] == a.type for a in refs)
    assert {a.ref_attr_name for a in refs} == set(op.attribute_names)  # each attribute reaches the body
    called = [n for n in f.node if n.domain == deploy_onnx.DOMAIN]
    assert {n.op_type for n in called} == {c.name for c in op.calls}
    for n in called:
        assert [a.ref_attr_name for a in n.attribute] == list(OPS[n.op_type].attribute_names)
    # the callees' functions come along, in the table's order
    assert [g.name for g in deploy_onnx.functions_for([op.name])] == [
        name for name in OPS if name == op.name or name in _callees(op)]


def _callees(op) -> set[str]:
    return {c.name for c in op.calls} | {n for c in op.calls for n in _callees(c)}


def test_attributes_of_one_name_agree_across_ops():
    """One name, one type and one default (what the plugins' and runners' defaults rely on)."""
    seen = {}
    for op in OPS.values():
        for a in op.attributes:
            assert seen.setdefault(a.name, a) == a, (op.name, a)


# --------------------------------------------------------------------- one-node models


SIZES = {"N": 2, "C": 40, "H": 9, "W": 11, "M": 36, "kH": 3, "kW": 3}
GROUP = 2
ATTRS = {"kernel_shape": [3, 3], "strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [2, 1], "group": GROUP,
         "relu": 1, "channels": SIZES["C"], "shuffle_output": 1}


def _size(symbol: str) -> int:
    if symbol.startswith("words("):
        return -(-_size(symbol[6:-1]) // 32)
    if symbol == "C/group":
        return SIZES["C"] // GROUP
    return SIZES[symbol]


@pytest.mark.parametrize("runtime", ["function_body", "library"])
@pytest.mark.parametrize("op", OPS.values(), ids=list(OPS))
def test_one_node_model_runs_with_the_tables_shapes_and_dtypes(op, runtime):
    """Every op with every attribute set away from its default: the model the table describes
    (input dtypes and shapes from its symbols) is checker-clean, and ONNX Runtime gives the output
    dtype and shape the table declares (the function body, and the library's kernel)."""
    rng = np.random.default_rng(len(op.name))
    inputs = {}
    for t in op.inputs:
        shape = tuple(_size(s) for s in t.shape)
        if np.issubdtype(t.np_dtype, np.floating):
            inputs[t.name] = rng.standard_normal(shape).astype(t.np_dtype)
        else:
            info = np.iinfo(t.np_dtype)
            inputs[t.name] = rng.integers(max(info.min, -100), min(info.max, 100), shape).astype(t.np_dtype)
    x = inputs.pop(op.inputs[0].name)
    attrs = {a: v for a, v in ATTRS.items() if a in op.attribute_names}
    assert set(attrs) == set(op.attribute_names)
    m = deploy_onnx.single_node_model(op.name, x.shape, inputs, attrs)
    deploy_onnx.check_onnx(m)
    declared = m.graph.output[0].type.tensor_type
    so = ort.SessionOptions()
    so.log_severity_level = 4
    if runtime == "library":
        from conftest import require_ort_library

        from xnorpipe.runtime.ort_engine import _library_implements

        library = require_ort_library()
        if not _library_implements(library, op.name):
            pytest.skip(f"{library} has no xnorpipe::{op.name} kernel (an older build)")
        so.register_custom_ops_library(library)
        del m.functions[:]  # the library or nothing
    y = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    assert helper.np_dtype_to_tensor_dtype(y.dtype) == op.output.dtype == declared.elem_type
    assert y.shape[1:] == tuple(d.dim_value for d in declared.shape.dim[1:]) and y.shape[0] == SIZES["N"]
    assert declared.shape.dim[0].dim_param == deploy_onnx.BATCH_DIM


def test_one_node_model_refuses_what_the_table_does_not_have():
    thr = {"threshold": np.zeros(4, np.float32)}
    pool = {"kernel_shape": [2, 2]}
    cases = [
        (("Nope", (1, 4, 6, 6), thr, pool), "unknown xnorpipe op 'Nope'"),
        ((deploy_onnx.AVG_POOL_BINARIZE, (1, 4, 6, 6), thr, {**pool, "relu": 1}), "has no attribute relu"),
        ((deploy_onnx.AVG_POOL_BINARIZE, (1, 4, 6, 6), thr, {}), "needs the attribute kernel_shape"),
        ((deploy_onnx.AVG_POOL_BINARIZE, (1, 4, 6, 6), {}, pool), "inputs after X are threshold"),
        ((deploy_onnx.AVG_POOL_BINARIZE, (1, 4, 6, 6), {"threshold": np.zeros(4, np.int32)}, pool), None),
        ((deploy_onnx.BINARIZE, (1, 4, 6, 6), {"threshold": np.zeros(4, np.uint8)}, {}), None),
        ((deploy_onnx.OP_NAME, (1, 4, 6, 6), {"W": np.zeros((1, 1, 1, 1), np.float32), "threshold": np.zeros(4),
                                              "scale": np.ones(1), "bias": np.zeros(1)}, {"kernel_shape": [1, 1]}),
         "W is int32, got float32"),
        ((deploy_onnx.AVG_POOL_BINARIZE, (1, 4, 6, 6), {"threshold": np.zeros(5, np.float32)}, pool),
         "threshold has C = 5, another input 4"),
        ((deploy_onnx.AVG_POOL_BINARIZE, (1, 4, 6), thr, pool), r"X must be \[N, C, H, W\], got \[1, 4, 6\]"),
        ((deploy_onnx.AVG_POOL_BINARIZE, (1, 4, 1, 6), thr, pool), "the window does not fit the input"),
    ]
    for args, match in cases:
        if match is None:  # an integer threshold where the table says float: cast within numbers
            m = deploy_onnx.single_node_model(*args)
            assert m.graph.initializer[0].data_type == onnx.TensorProto.FLOAT
            continue
        with pytest.raises(XnorpipeError, match=match) as e:
            deploy_onnx.single_node_model(*args)
        assert "\n" not in str(e.value)


def test_probe_model_is_the_smallest_model_of_each_op():
    for op in OPS.values():
        m = deploy_onnx.probe_model(op.name)
        deploy_onnx.check_onnx(m)
        node = m.graph.node[0]
        assert (node.domain, node.op_type) == (op.domain, op.name)
        assert {a.name for a in node.attribute} == set(op.required)
        assert all(d == 1 for t in m.graph.initializer for d in t.dims)


# --------------------------------------------------------------------- emitted nodes


def _every_form_and_op():
    """Models whose forms hold every xnorpipe op: every_op_ir (tests/test_trt.py), two binary
    layers on the graph input (Binarize), nin_gc_xnornet (shuffle_output) and nin_xnornet with an
    integer first layer."""
    from test_fold import SMALL
    from test_trt import _binary_layer, every_op_ir

    torch.manual_seed(0)
    on_input = ir.DeployModel.from_layers(arch="on_input", input_shape=(3, 8, 8), layers=[
        _binary_layer(3, 32, 3, seed=1), _binary_layer(32, 16, 1, pads=(0,) * 4, seed=2), ir.Flatten()])
    models = [every_op_ir(), on_input] + [fold_model(build_model(arch, SMALL[arch][0]).eval(), arch=arch)
                                          for arch in ("nin_xnornet", "nin_gc_xnornet")]
    out = [deploy_onnx.build_onnx(m, form) for m in models for form in ("packed", "packed-bits")]
    first = models[2].nodes[0].op
    m = first.out_channels
    k = first.kernel_shape
    layer = integer_layer(np.zeros((m, 3, *k), np.int8), np.zeros(3, np.uint8), np.zeros((m, *k), np.int16),
                          np.zeros(m, np.int32), strides=first.strides, pads=first.pads)
    return out + [deploy_onnx.build_onnx(models[2], "packed-bits", first_layer=layer)]


def test_emitted_nodes_are_the_tables():
    """Every xnorpipe node of every form: its attributes a subset of the table's (of the table's
    types, the required ones present), its inputs as many as the table's, its initializer
    inputs and its inferred output of the table's dtypes; together they use every op."""
    seen = set()
    for m in _every_form_and_op():
        inferred = deploy_onnx.check_onnx(m)
        dtypes = {t.name: t.data_type for t in m.graph.initializer}
        dtypes |= {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *m.graph.input]}
        for n in m.graph.node:
            if n.domain != deploy_onnx.DOMAIN:
                continue
            op = OPS[n.op_type]
            seen.add(op.name)
            names = [a.name for a in n.attribute]
            assert set(names) <= set(op.attribute_names) and set(op.required) <= set(names), n.name
            assert all(a.type == op.attr(a.name).kind for a in n.attribute), n.name
            assert len(n.input) == len(op.inputs), n.name
            assert [dtypes[i] for i in n.input] == [t.dtype for t in op.inputs], n.name
            assert dtypes.get(n.output[0], inferred.graph.output[0].type.tensor_type.elem_type) == op.output.dtype
            if op.reads_bits:  # its input is bits, written by an op that writes bits
                producer = next(p for p in m.graph.node if n.input[0] in p.output)
                assert producer.domain == deploy_onnx.DOMAIN and OPS[producer.op_type].writes_bits, n.name
    assert seen == set(OPS)


# --------------------------------------------------------------------- consumers


def _plugin_signatures() -> dict[str, dict[str, list[str]]]:
    """op -> {"register": params, "aot_impl": params} of the decorated functions in
    xnorpipe/gpu/trt_plugin.py (read from the source: TensorRT is not needed)."""
    tree = ast.parse((ROOT / "xnorpipe" / "gpu" / "trt_plugin.py").read_text())
    out: dict[str, dict[str, list[str]]] = {}
    for f in ast.walk(tree):
        if isinstance(f, ast.FunctionDef):
            for d in f.decorator_list:
                if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.args:
                    call = d.args[0]
                    if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "plugin_id":
                        out.setdefault(call.args[0].value, {})[d.func.attr] = [a.arg for a in f.args.args]
    return out


def test_tensorrt_plugins_read_the_table():
    from xnorpipe.gpu import trt_build, trt_plugin

    assert set(trt_plugin.PLUGIN_OPS) | set(trt_build.SPLIT_OPS) | {deploy_onnx.CONV_INTEGER_BINARIZE} == set(OPS)
    signatures = _plugin_signatures()
    assert set(signatures) == set(trt_plugin.PLUGIN_OPS)
    for name in trt_plugin.PLUGIN_OPS:
        op = OPS[name]
        own = tuple(trt_plugin.OWN_ATTRS.get(name, ()))
        attrs = tuple(a for a in op.attribute_names if a not in trt_plugin.NOT_TAKEN)
        assert trt_plugin.PLUGIN_ATTRS[name] == attrs + own
        assert trt_plugin.PLUGIN_INPUTS[name] == len(op.inputs)
        assert trt_plugin.PLUGIN_DEFAULTS[name] == {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in op.defaults.items() if k in attrs},
            **trt_plugin.OWN_ATTRS.get(name, {})}
        assert trt_plugin.output_is_bits(name) == op.writes_bits
        types = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.INT32: "INT32"}
        assert trt_plugin.io_types(name) == ", ".join(types[t.dtype] for t in (*op.inputs, op.output))
        # the hand-written signatures TensorRT reads: inputs (lower case), then PLUGIN_ATTRS in order
        inputs = [t.name.lower() for t in op.inputs]
        assert signatures[name]["register"] == inputs + list(trt_plugin.PLUGIN_ATTRS[name])
        assert signatures[name]["aot_impl"] == inputs + list(trt_plugin.PLUGIN_ATTRS[name]) + ["outputs", "tactic"]
        assert signatures[name]["autotune"] == inputs + ["outputs"]
    assert trt_plugin.CONV_ATTRS == OPS[deploy_onnx.OP_NAME].attribute_names


def test_torch_xnor_runner_reads_the_input_counts():
    from xnorpipe.gpu import onnx_runner

    for op in OPS.values():
        assert onnx_runner._ARITY[op.name] == (len(op.inputs), len(op.inputs))
    assert set(onnx_runner._TritonKernels.ops) <= set(OPS)


def test_contract_tables_name_the_tables_inputs():
    """docs/XNORCONV2D.md's input tables (`| # | name | type | shape |`) of XnorConv2d and
    ConvIntegerBinarize list the table's inputs, in order, with its dtypes."""
    text = (ROOT / "docs" / "XNORCONV2D.md").read_text()
    words = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT32: "int32", onnx.TensorProto.UINT8: "uint8",
             onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT16: "int16", onnx.TensorProto.INT64: "int64"}
    for name in (deploy_onnx.OP_NAME, deploy_onnx.CONV_INTEGER_BINARIZE):
        section = text[text.index(f"`xnorpipe::{name}`, version 1"):]
        rows = re.findall(r"^\| (\d+) \| (\w+) \| (\w+)", section[section.index("| # | name"):], re.M)
        rows = rows[:len(OPS[name].inputs)]
        assert [(r[1], r[2]) for r in rows] == [(t.name, words[t.dtype]) for t in OPS[name].inputs]
        assert [int(r[0]) for r in rows] == list(range(len(rows)))


def test_library_probe_reads_the_table():
    from conftest import require_ort_library

    from xnorpipe.runtime.ort_engine import _library_implements

    library = require_ort_library()
    assert not _library_implements(library, "NoSuchOp")
    assert all(_library_implements(library, op) for op in OPS), "an older build of the library?"


def test_integer_first_layer_tensors_follow_the_table():
    op = OPS[deploy_onnx.CONV_INTEGER_BINARIZE]
    layer = integer_layer(np.ones((2, 3, 1, 1)), np.zeros(3), np.zeros((2, 1, 1)), np.zeros(2))
    tensors = layer.tensors()
    assert [n for n, _ in tensors] == list(op.input_names[1:])
    assert [a.dtype for _, a in tensors] == [t.np_dtype for t in op.inputs[1:]]
