"""xnorpipe.gpu.onnx_runner (the torch-xnor engine's executor) on the CPU: the Triton kernels run
in Triton's interpreter, so whole exported models are checked here without a GPU.

Binary nodes must be bit-exact with xnorpipe.deploy.reference on the very inputs the runner
fed them; the fused float nodes (ConvBinarize, AvgPoolBinarize) exact outside float rounding
of their thresholds; the logits within the contract's parity bounds (docs/XNORCONV2D.md) of the
deploy module and of stock ONNX Runtime running the same file through its function bodies.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
from conftest import assert_outputs_depend_on_input

from xnorpipe.errors import XnorpipeError

pytest.importorskip("triton", reason="the runner's kernels are Triton kernels")

BATCH = 2


@functools.cache
def _model(arch: str):
    """(source model, deploy IR): a random init with calibrated BatchNorm (xnorpipe.sources)."""
    from xnorpipe.deploy.fold import fold_model
    from xnorpipe.sources import load_source_model

    model, meta = load_source_model(arch, random_init=True)
    return model, fold_model(model, arch=arch, metadata=meta)


def _inputs(seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((BATCH, 3, 32, 32)).astype(np.float32))


def _ort(proto: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # bodies as written
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _check_binary_nodes(proto: onnx.ModelProto, values: dict[str, torch.Tensor]) -> int:
    """Every xnorpipe node's output against the reference on the node's own inputs."""
    from onnx import helper, numpy_helper

    from xnorpipe.deploy import reference as ref

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}

    def value(name):
        return np.array(inits[name] if name in inits else values[name].numpy())  # writable copies

    checked = 0
    for node in proto.graph.node:
        if node.domain != "xnorpipe":
            continue
        at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = [value(i) for i in node.input]
        got = values[node.output[0]].numpy()
        conv = {k: at[k] for k in ("strides", "pads", "dilations", "group") if k in at}
        if node.op_type == "XnorConv2d":
            want = ref.xnor_conv2d(torch.from_numpy(ins[0]), ins[1], torch.from_numpy(ins[2]),
                                   torch.from_numpy(ins[3]), torch.from_numpy(ins[4]), relu=bool(at["relu"]),
                                   **conv).numpy()
        elif node.op_type in ("XnorConv2dBits", "XnorConv2dBitsBinarize"):
            want = ref.xnor_conv2d_bits(ins[0], at["channels"], ins[1], ins[2], ins[3],
                                        output_threshold=ins[4] if len(ins) == 5 else None,
                                        relu=bool(at["relu"]), shuffle_output=bool(at.get("shuffle_output", 0)),
                                        **conv)
        elif node.op_type == "BitMaxPool":
            want = ref.bit_max_pool(ins[0], at["kernel_shape"], at["strides"], at["pads"])
        elif node.op_type == "Binarize":
            want = ref.binarize_bits(ins[0], ins[1])
        else:  # ConvBinarize / AvgPoolBinarize: float layers, exact up to rounding at the threshold
            if node.op_type == "ConvBinarize":
                y = ref.float_conv2d64(ins[0], ins[1], ins[2], relu=bool(at["relu"]), **conv)
                thr = ins[3]
            else:
                y = ref.avg_pool2d64(ins[0], kernel_shape=at["kernel_shape"], strides=at["strides"],
                                     pads=at["pads"])
                thr = ins[1]
            far = np.abs(y - thr.reshape(1, -1, 1, 1)) > 1e-4 * (1 + np.abs(y))
            c = y.shape[1]
            got_pm1 = ref.unpack_activation_bits(got, c)
            want_pm1 = np.where(y >= thr.reshape(1, -1, 1, 1), 1.0, -1.0)
            assert far.mean() > 0.99, node.name
            assert np.array_equal(got_pm1[far], want_pm1[far]), node.name
            checked += 1
            continue
        assert got.dtype == want.dtype and got.shape == want.shape, node.name
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), f"{node.name} ({node.op_type}) differs"
        checked += 1
    return checked


@pytest.mark.parametrize("arch,form", [("nin_xnornet", "packed"), ("nin_xnornet", "packed-bits"),
                                       ("nin_gc_xnornet", "packed-bits")])
def test_whole_model_in_the_interpreter(arch, form):
    """In nin_gc_xnornet's packed-bits model every grouped binary layer reads bits and writes its
    output channel-shuffled (shuffle_output: the fold moved the shuffles into the layers), two
    of them with 16 channels a group (two groups to a word)."""
    from xnorpipe.deploy.module import DeployModule
    from xnorpipe.deploy.onnx import build_onnx
    from xnorpipe.gpu.onnx_runner import OnnxRunner

    source, ir = _model(arch)
    proto = build_onnx(ir, form)
    runner = OnnxRunner(proto, device="cpu")
    x = _inputs()
    values = runner.trace(x)
    logits = values[runner.output_name]
    n_custom = sum(n.domain == "xnorpipe" for n in proto.graph.node)
    assert _check_binary_nodes(proto, values) == n_custom >= 7
    if arch == "nin_gc_xnornet":
        bits = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in proto.graph.node
                if n.op_type.startswith("XnorConv2dBits")]
        assert len(bits) == 7 and all(at.get("shuffle_output") == 1 for at in bits)
        assert any((at["channels"] // at["group"]) % 32 for at in bits)  # groups inside words

    with torch.inference_mode():
        oracle = DeployModule(ir)(x).numpy()
        trained = source.eval()(x).numpy()
    stock = _ort(proto, x)
    y = logits.numpy()
    assert y.shape == (BATCH, 10)
    assert_outputs_depend_on_input(y)  # else every comparison below would be vacuous
    for other in (oracle, stock, trained):
        assert (y.argmax(1) == other.argmax(1)).all()
        assert np.median(np.abs(y - other)) <= 1e-4
        assert np.abs(y - other).max() <= 1e-3
    assert np.array_equal(runner(x).numpy(), y)  # repeatable


def test_portable_form_and_kernel_free_models():
    """A portable model has no xnorpipe node: the runner needs no kernel set for it."""
    from xnorpipe.deploy.onnx import build_onnx
    from xnorpipe.gpu.onnx_runner import OnnxRunner

    proto = build_onnx(_model("nin_gc_xnornet")[1], "portable")  # Reshape/Transpose/Where/... too
    runner = OnnxRunner(proto, device="cpu")
    assert runner.kernels is None and runner.custom_nodes == 0
    x = _inputs(1)
    np.testing.assert_allclose(runner(x).numpy(), _ort(proto, x), rtol=0, atol=1e-4)


def _packed_bits_proto():
    from xnorpipe.deploy.onnx import build_onnx

    return build_onnx(_model("nin_xnornet")[1], "packed-bits")


def test_unsupported_node_is_one_line():
    from xnorpipe.gpu.onnx_runner import OnnxRunner

    proto = _packed_bits_proto()
    proto.graph.node[-1].op_type = "Softmax"  # the final Flatten
    with pytest.raises(XnorpipeError) as e:
        OnnxRunner(proto, device="cpu")
    assert "flatten12" in e.value.message and "Softmax" in e.value.message and "\n" not in e.value.message
    proto = _packed_bits_proto()
    proto.graph.node[0].op_type = "XnorTeleport"
    with pytest.raises(XnorpipeError, match="conv0.*xnorpipe::XnorTeleport"):
        OnnxRunner(proto, device="cpu")


def test_cuda_kernels_refuse_packed_bits_before_any_device():
    """--gpu-kernels cuda is XnorConv2d only: a packed-bits model is one line, also without a GPU."""
    from xnorpipe.gpu.onnx_runner import check_supported

    with pytest.raises(XnorpipeError) as e:
        check_supported(_packed_bits_proto(), "cuda", "m.onnx")
    for needle in ("m.onnx", "XnorConv2d only", "conv0", "xnorpipe::ConvBinarize", "--gpu-kernels triton",
                   "--xnor-form packed"):
        assert needle in e.value.message
    with pytest.raises(XnorpipeError, match="kernel set"):
        check_supported(_packed_bits_proto(), "opencl", "m.onnx")


@pytest.mark.parametrize("mutate,needle", [
    (lambda p: p.graph.node[1].attribute.append(onnx.helper.make_attribute("auto_pad", "SAME_UPPER")), "auto_pad"),
    (lambda p: _set(p.graph.node[1], "strides", [0, 1]), "strides"),
    (lambda p: _drop(p.graph.node[1], "channels"), "channels"),
    (lambda p: _set(p.graph.node[3], "pads", [3, 3, 3, 3]), "pads"),
    (lambda p: p.graph.node[1].input.pop(), "inputs"),
    (lambda p: _set(p.graph.node[0], "kernel_shape", [3, 3]), "kernel_shape"),
])
def test_malformed_nodes_are_one_line(mutate, needle):
    from xnorpipe.gpu.onnx_runner import OnnxRunner

    proto = _packed_bits_proto()
    mutate(proto)
    with pytest.raises(XnorpipeError) as e:
        OnnxRunner(proto, device="cpu")
    assert needle in e.value.message and "\n" not in e.value.message


def _set(node, name, value):
    _drop(node, name)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _drop(node, name):
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)


def test_bad_inputs_at_run_time_are_one_line():
    from xnorpipe.gpu.onnx_runner import OnnxRunner

    runner = OnnxRunner(_packed_bits_proto(), device="cpu")
    with pytest.raises(XnorpipeError, match="float32"):
        runner(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(XnorpipeError) as e:
        runner(torch.zeros(1, 4, 32, 32))  # wrong channel count: the first conv says so
    assert "conv0" in e.value.message and "\n" not in e.value.message


def test_engine_on_the_cpu_interpreter():
    """The torch-xnor engine itself, from a DeployModel, on --device cpu (Triton's interpreter)."""
    from xnorpipe.deploy.module import DeployModule
    from xnorpipe.runtime import engine_class

    _, ir = _model("nin_xnornet")
    eng = engine_class("torch-xnor")(model=ir, device="cpu")
    d = eng.describe()
    assert d["form"] == "packed-bits" and d["gpu_kernels"] == "triton" and d["xnor_nodes"] == 10
    x = _inputs(2)
    with torch.inference_mode():
        want = DeployModule(ir)(x).numpy()
    y = eng(x.numpy())
    assert isinstance(y, np.ndarray) and (y.argmax(1) == want.argmax(1)).all()
    assert np.median(np.abs(y - want)) <= 1e-4
    with pytest.raises(XnorpipeError, match="CUDA GPU only"):
        engine_class("torch-xnor")(model=ir, device="cpu", gpu_kernels="cuda")


@pytest.mark.parametrize("form", ["packed", "packed-bits"])
def test_residual_model_in_the_interpreter(form):
    """A graph that is not a chain: Bi-Real-Net-18 (CIFAR stem, width 8: small enough for the
    interpreter), where each unit's input feeds its binary conv and its residual Add, ending in a
    whole-map AveragePool, Flatten and a Gemm head; binary nodes bit-exact, logits as the deploy
    module's and stock ORT's."""
    from xnorpipe.deploy.fold import fold_model
    from xnorpipe.deploy.module import DeployModule
    from xnorpipe.deploy.onnx import build_onnx
    from xnorpipe.gpu.onnx_runner import OnnxRunner
    from xnorpipe.models import build_model, get_model_spec
    from xnorpipe.sources import calibrate_batchnorm, synthetic_calibration_images

    arch = "birealnet18_cifar"
    torch.manual_seed(0)
    source = build_model(arch, width=8)
    calibrate_batchnorm(source, synthetic_calibration_images(n=32), image_size=get_model_spec(arch).image_size)
    ir = fold_model(source.eval(), arch=arch, input_shape=get_model_spec(arch).input_shape)
    proto = build_onnx(ir, form)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Add", "Gemm", "AveragePool", "Flatten"} <= ops
    readers: dict[str, int] = {}
    for n in proto.graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    assert max(readers.values()) >= 2  # a tensor feeds two nodes
    runner = OnnxRunner(proto, device="cpu")
    x = _inputs(3)
    values = runner.trace(x)
    y = values[runner.output_name].numpy()
    assert _check_binary_nodes(proto, values) == sum(n.domain == "xnorpipe" for n in proto.graph.node) >= 16
    with torch.inference_mode():
        oracle = DeployModule(ir)(x).numpy()
    assert_outputs_depend_on_input(y)
    for other in (oracle, _ort(proto, x)):
        assert (y.argmax(1) == other.argmax(1)).all()
        assert np.abs(y - other).max() <= 1e-4
