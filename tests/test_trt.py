"""TensorRT side without TensorRT or a GPU: the plugins' shape and launch arithmetic with plain
ints, the Triton kernels' PTX against TensorRT's AOT calling convention, `prepare_onnx` (run on
stock ONNX Runtime, which must compute what the unprepared model computes), and the one-line
errors of `build-engine` and the `trt` engine. TensorRT itself is not verified here: the
plugin definitions are only registered where `tensorrt` imports."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_outputs_depend_on_input

from xnorpipe.errors import XnorpipeError
from xnorpipe.gpu import plan
from xnorpipe.gpu.device import gpu_problem

ROOT = Path(__file__).resolve().parent.parent
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def _trt_usable() -> bool:
    if not HAS_TRT:
        return False
    try:
        import tensorrt as trt
        return hasattr(trt, "Builder")
    except Exception:  # noqa: BLE001  a stub or broken install: treated as absent
        return False


TRT_OK = _trt_usable()
NO_GPU = gpu_problem() is not None


def _binary_layer(c=8, m=6, k=3, group=1, pads=(1, 1, 1, 1), relu=True, seed=0):
    from xnorpipe.deploy import ir
    from xnorpipe.deploy.packing import pack_weights

    rng = np.random.default_rng(seed)
    return ir.BinaryConv(weight_bits=pack_weights(rng.random((m, c // group, k, k)) < 0.5),
                         threshold=rng.uniform(0.0, 0.6, c).astype(np.float32),
                         scale=rng.uniform(0.05, 0.2, m).astype(np.float32),
                         bias=rng.normal(0, 0.3, m).astype(np.float32),
                         kernel_shape=(k, k), pads=pads, group=group, relu=relu)


def _float_conv(c, m, k, relu=True, seed=0):
    from xnorpipe.deploy import ir

    rng = np.random.default_rng(seed)
    return ir.FloatConv(weight=(rng.standard_normal((m, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32),
                        bias=rng.normal(0, 0.1, m).astype(np.float32), pads=((k - 1) // 2,) * 4, relu=relu)


def every_op_ir():
    """A small model whose packed-bits form holds all seven xnorpipe ops (and XnorConv2d in
    its packed form): Binarize after a float MaxPool (of a Clip, which writes no bits), BitMaxPool,
    AvgPoolBinarize, ConvBinarize, both bit-input convs."""
    from xnorpipe.deploy import ir

    layers = [_float_conv(3, 32, 3, seed=1), ir.Clip(-1.0, 1.0), ir.MaxPool((2, 2), (2, 2)),
              _binary_layer(32, 32, 3, seed=2), _binary_layer(32, 40, 1, pads=(0,) * 4, seed=3),
              ir.MaxPool((3, 3), (1, 1), (1, 1, 1, 1)), _binary_layer(40, 48, 1, pads=(0,) * 4, seed=4),
              ir.AvgPool((3, 3), (1, 1), (1, 1, 1, 1)), _binary_layer(48, 16, 1, pads=(0,) * 4, seed=5),
              _float_conv(16, 32, 1, seed=6), _binary_layer(32, 24, 1, pads=(0,) * 4, seed=7),
              _float_conv(24, 10, 1, relu=False, seed=8), ir.AvgPool((4, 4), (4, 4)), ir.Flatten()]
    return ir.DeployModel.from_layers(arch="every_op", layers=layers, input_shape=(3, 8, 8))


@pytest.fixture
def packed_onnx(tmp_path) -> Path:
    from conftest import binary_conv_inputs

    from xnorpipe.deploy import onnx as deploy_onnx

    path = tmp_path / "op.onnx"
    layer = _binary_layer()
    onnx.save(deploy_onnx.single_node_model(deploy_onnx.OP_NAME, (1, 8, 5, 5), binary_conv_inputs(layer),
                                            deploy_onnx.layer_attrs(layer)), path)
    return path


@pytest.fixture
def packed_bits_onnx(tmp_path) -> Path:
    from xnorpipe.deploy.onnx import build_onnx

    path = tmp_path / "bits.onnx"
    onnx.save(build_onnx(every_op_ir(), "packed-bits"), path)
    return path


# ------------------------------------------------------------------ shape arithmetic


@pytest.mark.parametrize("seed", range(40))
def test_output_size_matches_torch_conv(seed):
    rng = np.random.default_rng(seed)
    k, s, d = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
    pads = [int(v) for v in rng.integers(0, 3, 4)]
    h = int(rng.integers((k - 1) * d + 1, 20))
    w = int(rng.integers((k - 1) * d + 1, 20))
    a = plan.conv_attrs((k, k), (s, s), pads, (d, d))
    x = F.pad(torch.zeros(1, 1, h, w), (pads[1], pads[3], pads[0], pads[2]))
    y = F.conv2d(x, torch.zeros(1, 1, k, k), stride=s, dilation=d)
    assert a.output_hw(h, w) == tuple(y.shape[2:])


def test_plugin_attributes_arrive_as_numpy():
    from xnorpipe.gpu.trt_plugin import conv_attrs

    a = conv_attrs(np.array([3, 3], np.int32), np.array([2, 1], np.int32), np.array([1, 0, 2, 1], np.int32),
                   np.array([1, 2], np.int32), 1, 1)
    assert a == plan.ConvAttrs((3, 3), (2, 1), (1, 0, 2, 1), (1, 2), 1, True)


def test_attr_validation():
    with pytest.raises(ValueError, match="pads"):
        plan.conv_attrs((3, 3), pads=(1, 1))
    with pytest.raises(ValueError, match="strides"):
        plan.conv_attrs((3, 3), strides=(0, 1))
    with pytest.raises(ValueError, match="group"):
        plan.launch_plan((1, 6, 4, 4), 6, plan.conv_attrs((1, 1), group=4))
    with pytest.raises(ValueError, match="empty"):
        plan.launch_plan((1, 6, 2, 2), 6, plan.conv_attrs((5, 5)))


# ------------------------------------------------------------------ launch planning


NIN = [(192, 160, 1, 0, 32), (160, 96, 1, 0, 32), (96, 192, 3, 1, 16), (192, 192, 1, 0, 16),
       (192, 192, 3, 1, 8), (192, 192, 1, 0, 8)]


@pytest.mark.parametrize("c,m,k,p,hw", NIN)
@pytest.mark.parametrize("batch", [1, 256])
def test_nin_layers_use_8x8_tiles(c, m, k, p, hw, batch):
    lp = plan.launch_plan((batch, c, hw, hw), m, plan.conv_attrs((k, k), pads=(p,) * 4, relu=1))
    assert lp.tile == (8, 8)
    assert lp.out_shape == (batch, m, hw, hw)
    assert lp.grid == (batch * (hw // 8) ** 2 * -(-m // 64), 1, 1)
    assert lp.block == (128, 1, 1)
    assert lp.smem_bytes <= plan.SMEM_LIMIT
    assert lp.kernel_args == (batch, c, hw, hw, m, hw, hw, k, k, 1, 1, p, p, 1, 1, 1, 1, 8, 8)


def test_tile_shrinks_for_large_footprints_and_small_outputs():
    a = plan.conv_attrs((9, 9), strides=(2, 2), dilations=(3, 3))
    th, tw = plan.choose_tile(64, 64, a)
    assert th * tw < 64 and plan.smem_bytes(th, tw, a) <= plan.SMEM_LIMIT
    assert plan.choose_tile(3, 1, plan.conv_attrs((1, 1))) == (4, 1)
    assert plan.choose_tile(1, 40, plan.conv_attrs((3, 3))) == (1, 8)
    with pytest.raises(ValueError, match="shared memory"):
        plan.choose_tile(4, 4, plan.conv_attrs((31, 31), dilations=(3, 3)))


@pytest.mark.parametrize("cap,expected", [
    ((7, 5), (75, plan.POPC_KERNEL)), ((8, 0), (80, plan.MMA_KERNEL)), ((8, 6), (86, plan.MMA_KERNEL)),
    ((8, 7), (86, plan.MMA_KERNEL)), ((8, 9), (89, plan.MMA_KERNEL)), ((9, 0), (90, plan.MMA_KERNEL)),
    ((10, 0), (75, plan.POPC_KERNEL)), ((12, 0), (75, plan.POPC_KERNEL)),
])
def test_kernel_selection(cap, expected):
    assert plan.select_kernel(cap) == expected


def test_kernel_selection_errors_and_forcing():
    assert plan.select_kernel((9, 0), kernel="popc") == (90, plan.POPC_KERNEL)
    with pytest.raises(ValueError, match="7.0"):
        plan.select_kernel((7, 0))
    with pytest.raises(ValueError, match="tensor-core"):
        plan.select_kernel((7, 5), kernel="mma")
    with pytest.raises(ValueError, match="tensor-core"):
        plan.select_kernel((10, 0), kernel="mma")
    assert plan.select_kernel((9, 0), archs=[75]) == (75, plan.POPC_KERNEL)
    assert plan.cubin_fits(86, (8, 9)) and plan.cubin_fits(80, (8, 0))
    assert not plan.cubin_fits(90, (8, 9)) and not plan.cubin_fits(80, (9, 0))


def test_aot_launch_cuda_with_plain_ints():
    """The hand-written kernel's AOT launch (--gpu-kernels cuda): grid scales with the batch."""
    from xnorpipe.gpu.trt_plugin import aot_launch_cuda

    a = plan.conv_attrs((3, 3), pads=(1, 1, 1, 1), relu=1)
    kernel, arch, params, args = aot_launch_cuda((5, 96, 16, 16), 192, a, (9, 0), plan.KERNEL_ARCHS)
    per_image = plan.launch_plan((1, 96, 16, 16), 192, a)
    assert (kernel, arch) == (plan.MMA_KERNEL, 90)
    assert params["grid_x"] == 5 * per_image.grid[0] == plan.launch_plan((5, 96, 16, 16), 192, a).grid[0]
    assert params["block_x"] == 128 and params["shared_mem"] == per_image.smem_bytes
    assert args == list(plan.launch_plan((5, 96, 16, 16), 192, a).kernel_args)
    with pytest.raises(ValueError, match="static"):
        aot_launch_cuda((5, object(), 16, 16), 192, a, (9, 0), plan.KERNEL_ARCHS)


# ------------------------------------------------------------------ the Triton plugins, plain ints

CONV = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1,
        "relu": 1}
# op, input shapes (batch 5), plugin attributes: nin_xnornet's layer 3 in each form, its pools
PLUGIN_CASES = [
    ("XnorConv2d", [(5, 96, 16, 16), (192, 3, 3, 3), (96,), (192,), (192,)], dict(CONV, cuda_kernel=0)),
    ("XnorConv2dBits", [(5, 3, 16, 16), (192, 3, 3, 3), (192,), (192,)], dict(CONV, channels=96)),
    ("XnorConv2dBitsBinarize", [(5, 3, 16, 16), (192, 3, 3, 3), (192,), (192,), (192,)], dict(CONV, channels=96)),
    ("BitMaxPool", [(5, 5, 32, 32)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("Binarize", [(5, 192, 8, 8), (192,)], {}),
]


def _run_kernel(op, shapes, attrs):
    """The Triton wrapper on zero inputs of `shapes` (CPU interpreter): its output tensor."""
    from xnorpipe.gpu import triton_kernels as tk

    def t(shape, dtype=torch.float32):
        return torch.zeros(shape, dtype=dtype)

    conv = {k: attrs[k] for k in ("strides", "pads", "dilations", "group") if k in attrs}
    if op == "XnorConv2d":
        return tk.xnor_conv2d(t(shapes[0]), t(shapes[1], torch.int32), *(t(s) for s in shapes[2:]),
                              relu=bool(attrs["relu"]), **conv)
    if op.startswith("XnorConv2dBits"):
        thr = t(shapes[4]) if len(shapes) == 5 else None
        return tk.xnor_conv2d_bits(t(shapes[0], torch.int32), t(shapes[1], torch.int32), t(shapes[2]), t(shapes[3]),
                                   channels=attrs["channels"], output_threshold=thr, relu=bool(attrs["relu"]), **conv)
    if op == "BitMaxPool":
        return tk.bit_max_pool(t(shapes[0], torch.int32), kernel_shape=attrs["kernel_shape"],
                               strides=attrs["strides"], pads=attrs["pads"])
    return tk.binarize(t(shapes[0]), t(shapes[1]))


@needs_triton
@pytest.mark.parametrize("op,shapes,attrs", PLUGIN_CASES, ids=[c[0] for c in PLUGIN_CASES])
def test_plugin_output_shape_and_type_match_the_kernel(op, shapes, attrs):
    """What the plugin tells TensorRT (shape, INT32 or FP32) is what the kernel produces."""
    from xnorpipe.gpu.trt_plugin import io_types, output_is_bits, output_shape

    y = _run_kernel(op, [s if i else (1, *s[1:]) for i, s in enumerate(shapes)], attrs)
    assert output_shape(op, shapes, attrs) == (5, *y.shape[1:])
    assert output_is_bits(op) == (y.dtype == torch.int32)
    types = [t.strip() for t in io_types(op).split(",")]
    assert len(types) == len(shapes) + 1 and types[-1] == ("INT32" if y.dtype == torch.int32 else "FP32")


@needs_triton
@pytest.mark.parametrize("op,shapes,attrs", PLUGIN_CASES, ids=[c[0] for c in PLUGIN_CASES])
def test_triton_aot_launch_with_plain_ints(op, shapes, attrs):
    """The plugin's AOT launch of the Triton kernel (PTX compiled for sm_90 on this CPU): the
    grid is the batch times the kernel's per-image grid, the int32 arguments are the wrapper's,
    and the PTX takes what TensorRT passes (inputs, int32s, output, then only null pointers)."""
    from xnorpipe.gpu import triton_kernels as tk
    from xnorpipe.gpu.trt_plugin import PLUGIN_INPUTS, aot_launch_triton, check_trt_abi

    name, ptx, params, args = aot_launch_triton(op, shapes, attrs, (9, 0))
    shape = {"input_shape": shapes[0][1:]}
    if op.startswith("XnorConv2d"):
        shape.update(num_filters=shapes[1][0], **{k: v for k, v in attrs.items() if k != "cuda_kernel"})
    elif op == "BitMaxPool":
        shape.update(attrs)
    spec = tk.launch_spec(op, **shape)
    gx, gy, gz = spec.grid_per_image
    assert name == spec.kernel and (params["grid_x"], params["grid_y"], params["grid_z"]) == (5 * gx, gy, gz)
    assert params["block_x"] == spec.num_warps * 32 and params["block_y"] == params["block_z"] == 1
    assert args == list(spec.scalars) and 0 <= params["shared_mem"] <= plan.SMEM_LIMIT
    assert ".target sm_90" in ptx and f".entry {name}(" in ptx
    assert check_trt_abi(ptx, name, PLUGIN_INPUTS[op], len(args), op) == 2  # global_/profile_scratch


def test_trt_abi_check_refuses_other_parameter_orders():
    from xnorpipe.gpu.trt_plugin import check_trt_abi

    def ptx(*types):
        params = ",\n".join(f"\t.param .{t} k_param_{i}" for i, t in enumerate(types))
        return f".version 8.0\n.target sm_90\n.visible .entry k(\n{params}\n)\n{{\n\tret;\n}}\n"

    assert check_trt_abi(ptx("u64", "u64", "u32", "u32", "u64"), "k", 2, 2, "op") == 0
    assert check_trt_abi(ptx("u64", "u32", "u64", "u64", "u64"), "k", 1, 1, "op") == 2
    with pytest.raises(ValueError, match="TensorRT's AOT launch passes 2 input pointers, 2 int32"):
        check_trt_abi(ptx("u64", "u64", "u64", "u32", "u32"), "k", 2, 2, "op")  # output before the ints
    with pytest.raises(ValueError):
        check_trt_abi(ptx("u64", "u32", "u64", "u32"), "k", 1, 1, "op")  # a trailing non-pointer
    with pytest.raises(ValueError):
        check_trt_abi(ptx("u64", "u32", "u64"), "k", 1, 2, "op")  # too few ints
    with pytest.raises(Exception, match="no .entry"):
        check_trt_abi(ptx("u64"), "other", 1, 0, "op")


def test_plugin_table_matches_the_contract_ops():
    from xnorpipe.deploy import onnx as deploy_onnx
    from xnorpipe.gpu import trt_build
    from xnorpipe.gpu.trt_plugin import PLUGIN_ATTRS, PLUGIN_INPUTS

    # every op but the integer first layer (--first-layer int8, uint8 NHWC input), which is refused
    ops = set(deploy_onnx.CONV_OPS) | set(deploy_onnx.BIT_OPS)
    assert set(PLUGIN_ATTRS) | set(trt_build.SPLIT_OPS) == ops - {"ConvIntegerBinarize"}
    assert set(PLUGIN_INPUTS) == set(PLUGIN_ATTRS)
    if HAS_TRITON:
        from xnorpipe.gpu import triton_kernels as tk

        assert set(PLUGIN_ATTRS) == set(tk.OPS)


# ------------------------------------------------------------------ ONNX preparation


def _prepared(proto, gpu_kernels="triton"):
    from xnorpipe.gpu.trt_build import prepare_onnx

    p = copy.deepcopy(proto)
    return p, prepare_onnx(p, gpu_kernels)


def test_prepare_onnx_splits_fused_float_layers_and_orders_attributes():
    from xnorpipe.deploy.onnx import build_onnx
    from xnorpipe.gpu.trt_plugin import PLUGIN_ATTRS

    proto = build_onnx(every_op_ir(), "packed-bits")
    ops = {n.op_type for n in proto.graph.node if n.domain == "xnorpipe"}
    assert ops == {"Binarize", "XnorConv2dBits", "XnorConv2dBitsBinarize", "BitMaxPool", "ConvBinarize",
                   "AvgPoolBinarize"}
    p, count = _prepared(proto)
    custom = [n for n in p.graph.node if n.domain == "xnorpipe"]
    assert count == len(custom) == 9
    assert {n.op_type for n in custom} == set(PLUGIN_ATTRS) - {"XnorConv2d"}
    for n in custom:
        names = [a.name for a in n.attribute]
        assert names == [*PLUGIN_ATTRS[n.op_type], "plugin_namespace", "aot"], n.name
        at = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert at["plugin_namespace"] == b"xnorpipe" and at["aot"] == 1
    std = [n.op_type for n in p.graph.node if n.domain == ""]
    assert std.count("AveragePool") == 2 and std.count("Conv") == 3 and std.count("Relu") == 2
    assert {f.name for f in p.functions} == {"Binarize", "XnorConv2dBits", "XnorConv2dBitsBinarize", "BitMaxPool",
                                             "XnorConv2d"}  # XnorConv2dBits' body calls XnorConv2d
    again, count2 = _prepared(p)
    assert count2 == count and again.SerializeToString() == p.SerializeToString()  # idempotent
    onnx.checker.check_model(p, full_check=True)


def test_prepare_onnx_fills_defaults_and_marks_the_kernel(packed_onnx):
    p, _ = _prepared(onnx.load(packed_onnx))
    node = next(n for n in p.graph.node if n.op_type == "XnorConv2d")
    kept = [a for a in node.attribute if a.name in ("kernel_shape", "pads")]
    del node.attribute[:]
    node.attribute.extend(kept)
    p, _ = _prepared(p, "cuda")
    node = next(n for n in p.graph.node if n.op_type == "XnorConv2d")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["strides"] == [1, 1] and attrs["dilations"] == [1, 1] and attrs["pads"] == [1, 1, 1, 1]
    assert attrs["group"] == 1 and attrs["relu"] == 0 and attrs["cuda_kernel"] == 1
    p, _ = _prepared(p, "triton")
    node = next(n for n in p.graph.node if n.op_type == "XnorConv2d")
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["cuda_kernel"] == 0


def _outputs_of_every_node(proto):
    """The model with every xnorpipe node's output as a graph output too (typed by inference)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    info = {v.name: v for v in inferred.graph.value_info}
    p = copy.deepcopy(proto)
    names = [n.output[0] for n in p.graph.node if n.domain == "xnorpipe"]
    p.graph.output.extend(info[name] for name in names)
    return p, names


def _ort_run(proto, x, library=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if library:
        so.register_custom_ops_library(library)
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))


def _libraries():
    """Function bodies (None), and the custom-op library where it is built."""
    from xnorpipe.native import ort_library_path

    try:
        return [None, ort_library_path()]
    except XnorpipeError:
        return [None]


@pytest.mark.parametrize("form", ["packed", "packed-bits"])
def test_prepared_model_computes_what_the_export_computes(form):
    """prepare_onnx on stock ONNX Runtime (function bodies, and the custom-op library where it is
    built): the same logits, and every bit tensor the export and the prepared model share
    identical."""
    from xnorpipe.deploy.onnx import build_onnx

    proto = build_onnx(every_op_ir(), form)
    prepared, _ = _prepared(proto)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    src, names = _outputs_of_every_node(proto)
    dst, names2 = _outputs_of_every_node(prepared)
    want = _ort_run(src, x)
    assert_outputs_depend_on_input(want["logits"])
    for lib in _libraries():
        got = _ort_run(dst, x, lib)
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=1e-5)
        shared = [n for n in names if n in names2]
        assert len(shared) == len(names)  # every original output still exists (split ops keep theirs)
        for name in shared:
            assert np.array_equal(got[name], want[name]) or want[name].dtype == np.float32 and np.allclose(
                got[name], want[name], rtol=0, atol=1e-5), name


def test_check_plugin_ops():
    from xnorpipe.deploy.onnx import build_onnx
    from xnorpipe.gpu.trt_build import check_plugin_ops

    proto = build_onnx(every_op_ir(), "packed-bits")
    check_plugin_ops(proto, "m.onnx", "triton")
    with pytest.raises(XnorpipeError, match="XnorConv2d only.*--form packed"):
        check_plugin_ops(proto, "m.onnx", "cuda")
    check_plugin_ops(build_onnx(every_op_ir(), "packed"), "m.onnx", "cuda")
    custom = next(n for n in proto.graph.node if n.domain == "xnorpipe")
    custom.op_type = "XnorWarp"
    with pytest.raises(XnorpipeError, match="no TensorRT plugin for xnorpipe::XnorWarp"):
        check_plugin_ops(proto, "m.onnx", "triton")
    custom.op_type = "ConvIntegerBinarize"
    with pytest.raises(XnorpipeError, match="no TensorRT plugin for xnorpipe::ConvIntegerBinarize"):
        check_plugin_ops(proto, "m.onnx", "triton")
    # a folded channel shuffle is refused before TensorRT is imported
    proto = build_onnx(every_op_ir(), "packed-bits")
    next(n for n in proto.graph.node if n.op_type.startswith("XnorConv2dBits")).attribute.append(
        onnx.helper.make_attribute("shuffle_output", 1))
    with pytest.raises(XnorpipeError, match="shuffle_output=1 .*export --form packed"):
        check_plugin_ops(proto, "m.onnx", "triton")


def test_prepare_onnx_refuses_foreign_attributes():
    from xnorpipe.deploy.onnx import build_onnx
    from xnorpipe.gpu.trt_build import prepare_onnx

    proto = build_onnx(every_op_ir(), "packed-bits")
    node = next(n for n in proto.graph.node if n.op_type == "BitMaxPool")
    node.attribute.append(onnx.helper.make_attribute("ceil_mode", 1))
    with pytest.raises(XnorpipeError, match="ceil_mode"):
        prepare_onnx(proto)
    # shuffle_output (nin_gc_xnornet's packed-bits layers): the plugins do not take it yet, and
    # dropping it would leave the output channels unshuffled
    proto = build_onnx(every_op_ir(), "packed-bits")
    node = next(n for n in proto.graph.node if n.op_type.startswith("XnorConv2dBits"))
    node.attribute.append(onnx.helper.make_attribute("shuffle_output", 1))
    with pytest.raises(XnorpipeError, match="shuffle_output=1 .*plugins do not take"):
        prepare_onnx(proto)


# ------------------------------------------------------------------ error paths


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "xnorpipe.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def _one_line_error(r):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
    return lines[0]


@pytest.mark.skipif(TRT_OK and not NO_GPU, reason="TensorRT and a GPU are present: builds would succeed")
@pytest.mark.parametrize("which", ["packed", "packed-bits"])
def test_build_engine_without_tensorrt_or_gpu(which, packed_onnx, packed_bits_onnx, tmp_path):
    src = packed_onnx if which == "packed" else packed_bits_onnx
    out = tmp_path / "x.engine"
    line = _one_line_error(_cli("build-engine", "--onnx", src, "-o", out))
    assert ("TensorRT" in line) or ("GPU" in line)
    assert not out.exists()
    assert not src.with_suffix(".engine").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.engine")]  # no temp left


def test_build_engine_input_errors(tmp_path):
    line = _one_line_error(_cli("build-engine", "--onnx", tmp_path / "missing.onnx", "-o", tmp_path / "e"))
    assert "not found" in line
    assert not (tmp_path / "e").exists()
    assert "--onnx" in _one_line_error(_cli("build-engine"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all")
    _one_line_error(_cli("build-engine", "--onnx", bad, "-o", tmp_path / "e"))
    assert not (tmp_path / "e").exists()


@pytest.mark.skipif(TRT_OK and not NO_GPU, reason="TensorRT and a GPU are present")
def test_trt_engine_errors(packed_onnx, packed_bits_onnx, tmp_path):
    from xnorpipe.runtime import engine_class

    cls = engine_class("trt")
    assert cls.name == "trt" and cls.devices == ("cuda",)
    with pytest.raises(XnorpipeError, match="--onnx"):
        cls(model=None, onnx_path=None)
    with pytest.raises(XnorpipeError, match="not found"):
        cls(onnx_path=str(tmp_path / "missing.engine"))
    for path in (packed_onnx, packed_bits_onnx):
        with pytest.raises(XnorpipeError, match="TensorRT|GPU") as e:
            cls(onnx_path=str(path))
        assert "\n" not in str(e.value.message)


def test_cuda_kernels_refuse_bit_ops_before_tensorrt(packed_bits_onnx, tmp_path):
    """--gpu-kernels cuda is XnorConv2d only: one line, whether or not TensorRT is here."""
    from xnorpipe.runtime import engine_class

    out = tmp_path / "x.engine"
    line = _one_line_error(_cli("build-engine", "--onnx", packed_bits_onnx, "-o", out, "--gpu-kernels", "cuda"))
    for needle in ("bits.onnx", "bit-packed activations", "xnorpipe::XnorConv2dBitsBinarize", "XnorConv2d only",
                   "--form packed"):
        assert needle in line, line
    assert not out.exists()
    with pytest.raises(XnorpipeError, match="bit-packed activations") as e:
        engine_class("trt")(onnx_path=str(packed_bits_onnx), gpu_kernels="cuda")
    assert "\n" not in str(e.value)


def test_trt_engine_error_message_names_tensorrt_when_absent(monkeypatch):
    """With tensorrt unimportable, the message names TensorRT and how to get it."""
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "tensorrt" or name.startswith("tensorrt."):
            raise ImportError("No module named 'tensorrt'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    from xnorpipe.gpu.trt_build import import_tensorrt

    with pytest.raises(XnorpipeError, match="TensorRT is not installed"):
        import_tensorrt()


# ------------------------------------------------------------------ with TensorRT


@pytest.mark.skipif(not TRT_OK, reason="tensorrt is not importable here (no TensorRT libraries)")
def test_plugins_register_with_tensorrt():
    import tensorrt as trt

    from xnorpipe.gpu.trt_build import MIN_PLUGIN_TRT, _version
    from xnorpipe.gpu.trt_plugin import PLUGIN_ATTRS, PLUGIN_NAMESPACE, register_plugins

    if _version(trt.__version__) < MIN_PLUGIN_TRT:
        pytest.skip(f"TensorRT {trt.__version__} < 10.9: no quickly deployable plugins")
    register_plugins()
    register_plugins()  # idempotent
    import tensorrt.plugin as trtp

    for op in PLUGIN_ATTRS:
        assert hasattr(getattr(trtp.op, PLUGIN_NAMESPACE), op)
        assert trt.get_plugin_registry().get_creator(op, "1", PLUGIN_NAMESPACE) is not None
