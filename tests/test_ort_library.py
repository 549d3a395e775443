"""The ONNX Runtime custom-op library: registration, errors as exceptions, threads, weight caching."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("torch")

from onnxruntime.capi import onnxruntime_pybind11_state as ort_state  # noqa: E402
from test_cpu_kernels import _library, make_session, reference, xnor_model  # noqa: E402

from xnorpipe.deploy.packing import pack_weights  # noqa: E402

ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph, ort_state.NotImplemented,
              ort_state.RuntimeException)


def _layer(rng, n=2, c=96, m=64, hw=10, k=3, group=1):
    x = rng.normal(0, 1, (n, c, hw, hw)).astype(np.float32)
    threshold = rng.normal(0, 0.3, c).astype(np.float32)
    w = pack_weights(rng.random((m, c // group, k, k)) < 0.5)
    scale = rng.uniform(0.1, 1, m).astype(np.float32)
    bias = rng.normal(0, 1, m).astype(np.float32)
    return x, w, threshold, scale, bias


def test_library_exports_only_register_custom_ops():
    out = subprocess.run(["nm", "-D", "--defined-only", _library()], capture_output=True, text=True)
    if out.returncode:
        pytest.skip("nm not available")
    symbols = [line.split()[-1] for line in out.stdout.splitlines() if line.split()[-2:-1] in (["T"], ["W"])]
    assert symbols == ["RegisterCustomOps"], symbols


def test_threads_give_identical_results():
    rng = np.random.default_rng(0)
    x, w, threshold, scale, bias = _layer(rng, n=3, c=130, m=70, hw=13)
    model = xnor_model(x.shape, w, threshold, scale, bias, kernel_shape=[3, 3], pads=[1, 0, 2, 1], relu=1)
    one = make_session(model, threads=1).run(None, {"X": x})[0]
    two = make_session(model, threads=2).run(None, {"X": x})[0]
    assert np.array_equal(one, two)
    attrs = dict(strides=[1, 1], pads=[1, 0, 2, 1], dilations=[1, 1], group=1, relu=1)
    assert np.array_equal(one, reference(x, w, threshold, scale, bias, attrs))


def test_weights_as_graph_input_and_repeated_runs():
    """W not an initializer: packed per call; a constant W is cached: both must track their inputs."""
    rng = np.random.default_rng(1)
    x, w, threshold, scale, bias = _layer(rng, c=70, m=20, hw=7)
    attrs = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, relu=0)
    sess = make_session(xnor_model(x.shape, w, threshold, scale, bias, w_as_input=True, kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]))
    for _ in range(3):
        w2 = pack_weights(rng.random((20, 70, 3, 3)) < 0.5)
        got = sess.run(None, {"X": x, "W": w2})[0]
        assert np.array_equal(got, reference(x, w2, threshold, scale, bias, attrs))
    const = make_session(xnor_model(x.shape, w, threshold, scale, bias, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    for _ in range(3):
        x2 = rng.normal(0, 1, x.shape).astype(np.float32)
        assert np.array_equal(const.run(None, {"X": x2})[0], reference(x2, w, threshold, scale, bias, attrs))


def test_dynamic_batch_and_size():
    rng = np.random.default_rng(2)
    x, w, threshold, scale, bias = _layer(rng, c=40, m=24)
    model = xnor_model(["N", 40, "H", "W"], w, threshold, scale, bias, kernel_shape=[3, 3], strides=[2, 2],
                       pads=[1, 1, 1, 1])
    sess = make_session(model)
    attrs = dict(strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, relu=0)
    for n, h, wd in [(1, 5, 9), (4, 16, 3), (2, 1, 1)]:
        x = rng.normal(0, 1, (n, 40, h, wd)).astype(np.float32)
        assert np.array_equal(sess.run(None, {"X": x})[0], reference(x, w, threshold, scale, bias, attrs))


def _expect_error(model: bytes, feeds: dict, match: str | None = None):
    with pytest.raises(ORT_ERRORS) as info:
        make_session(model).run(None, feeds)
    if match:
        assert match in str(info.value), str(info.value)


@pytest.mark.parametrize("what", [
    "w_shape", "w_words", "w_dtype", "threshold_len", "scale_len", "bias_len", "group", "filters_group",
    "no_kernel_shape", "zero_stride", "neg_pad", "zero_dilation", "kernel_shape_len", "pads_len", "relu2",
    "output_empty", "x_rank", "threshold_rank",
])
def test_malformed_models_raise(what):
    rng = np.random.default_rng(4)
    c, m = 64, 32
    x, w, threshold, scale, bias = _layer(rng, n=1, c=c, m=m, hw=6)
    attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    feeds = {"X": x}
    x_shape = x.shape
    match = None
    if what == "w_shape":
        w = pack_weights(rng.random((m, c, 5, 5)) < 0.5); match = "W shape"
    elif what == "w_words":
        w = np.zeros((m, 3, 3, 3), np.int32); match = "W shape"
    elif what == "w_dtype":
        w = w.astype(np.int64)
    elif what == "threshold_len":
        threshold = threshold[:-1]; match = "threshold"
    elif what == "scale_len":
        scale = np.ones(m + 1, np.float32); match = "scale"
    elif what == "bias_len":
        bias = np.ones(m - 1, np.float32); match = "bias"
    elif what == "group":
        attrs["group"] = 3; match = "divisible"
    elif what == "filters_group":
        attrs["group"] = 2
        w = pack_weights(rng.random((m + 1, c // 2, 3, 3)) < 0.5)
        scale = bias = np.ones(m + 1, np.float32)
    elif what == "no_kernel_shape":
        del attrs["kernel_shape"]; match = "kernel_shape"
    elif what == "zero_stride":
        attrs["strides"] = [0, 1]; match = "strides"
    elif what == "neg_pad":
        attrs["pads"] = [1, -1, 1, 1]; match = "pads"
    elif what == "zero_dilation":
        attrs["dilations"] = [1, 0]; match = "dilations"
    elif what == "kernel_shape_len":
        attrs["kernel_shape"] = [3]; match = "kernel_shape"
    elif what == "pads_len":
        attrs["pads"] = [1, 1]; match = "pads"
    elif what == "relu2":
        attrs["relu"] = 2; match = "relu"
    elif what == "output_empty":
        attrs = dict(kernel_shape=[3, 3], dilations=[4, 4]); match = "output size"
    elif what == "x_rank":
        x_shape = (1, c, 36); feeds = {"X": x.reshape(x_shape)}; match = "X must be"
    elif what == "threshold_rank":
        threshold = threshold.reshape(8, 8); match = "threshold"
    _expect_error(xnor_model(x_shape, w, threshold, scale, bias, **attrs), feeds, match)


def _bit_op_model(op: str, x: np.ndarray, inits: dict, attrs: dict, out_type=None) -> bytes:
    """One packed-bits op, no function body: only the library can run it."""
    from onnx import TensorProto, helper, numpy_helper

    x_type = helper.np_dtype_to_tensor_dtype(x.dtype)
    out_type = out_type or TensorProto.INT32
    node = helper.make_node(op, ["X", *inits], ["Y"], domain="xnorpipe", **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("X", x_type, list(x.shape))],
                              [helper.make_tensor_value_info("Y", out_type, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("xnorpipe", 1)],
                             ir_version=10).SerializeToString()


@pytest.mark.parametrize("what", [
    "bits_no_channels", "bits_words", "bits_shuffle_output", "bits_out_threshold_len", "binarize_threshold_len",
    "binarize_rank", "bitmaxpool_pads", "bitmaxpool_empty", "convbin_w_shape", "convbin_threshold_len",
    "avgpool_count_include_pad", "avgpool_threshold_len",
])
def test_malformed_bit_op_nodes_raise(what):
    """packed-bits ops: bad attributes and shapes come back as ONNX Runtime errors naming the problem."""
    from onnx import TensorProto

    rng = np.random.default_rng(5)
    c, m = 64, 40
    bits = rng.integers(0, 2**31, (1, 2, 6, 6)).astype(np.int32)  # 64 channels as 2 words
    w = pack_weights(rng.random((m, c, 1, 1)) < 0.5)
    ones, zeros = np.ones(m, np.float32), np.zeros(m, np.float32)
    conv = dict(kernel_shape=[1, 1], channels=c)
    x_float = rng.normal(0, 1, (1, c, 6, 6)).astype(np.float32)
    cases = {
        "bits_no_channels": ("XnorConv2dBits", bits, dict(W=w, scale=ones, bias=zeros), dict(kernel_shape=[1, 1]),
                             TensorProto.FLOAT, "channels"),
        "bits_words": ("XnorConv2dBits", bits, dict(W=w, scale=ones, bias=zeros),
                       dict(kernel_shape=[1, 1], channels=100), TensorProto.FLOAT, "words per pixel"),
        "bits_shuffle_output": ("XnorConv2dBits", bits, dict(W=pack_weights(rng.random((m, 20, 1, 1)) < 0.5),
                                                             scale=ones, bias=zeros),
                                dict(kernel_shape=[1, 1], channels=40, group=2, shuffle_output=2), TensorProto.FLOAT,
                                "shuffle_output must be 0 or 1"),
        "bits_out_threshold_len": ("XnorConv2dBitsBinarize", bits, dict(W=w, scale=ones, bias=zeros,
                                                                        output_threshold=np.zeros(m - 1, np.float32)),
                                   conv, None, "output_threshold"),
        "binarize_threshold_len": ("Binarize", x_float, dict(threshold=np.zeros(c + 1, np.float32)), {}, None,
                                   "threshold"),
        "binarize_rank": ("Binarize", x_float.reshape(1, c, 36), dict(threshold=np.zeros(c, np.float32)), {}, None,
                          "X must be"),
        "bitmaxpool_pads": ("BitMaxPool", bits, {}, dict(kernel_shape=[2, 2], pads=[2, 0, 0, 0]), None,
                            "smaller than the kernel"),
        "bitmaxpool_empty": ("BitMaxPool", bits, {}, dict(kernel_shape=[7, 7]), None, "output size"),
        "convbin_w_shape": ("ConvBinarize", x_float, dict(W=np.zeros((m, c, 3, 3), np.float32), B=zeros,
                                                          threshold=zeros),
                            dict(kernel_shape=[5, 5]), None, "W shape"),
        "convbin_threshold_len": ("ConvBinarize", x_float, dict(W=np.zeros((m, c, 3, 3), np.float32), B=zeros,
                                                                threshold=np.zeros(3, np.float32)),
                                  dict(kernel_shape=[3, 3]), None, "threshold"),
        "avgpool_count_include_pad": ("AvgPoolBinarize", x_float, dict(threshold=np.zeros(c, np.float32)),
                                      dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0), None,
                                      "count_include_pad"),
        "avgpool_threshold_len": ("AvgPoolBinarize", x_float, dict(threshold=np.zeros(c - 1, np.float32)),
                                  dict(kernel_shape=[3, 3]), None, "threshold"),
    }
    op, x, inits, attrs, out_type, match = cases[what]
    _expect_error(_bit_op_model(op, x, inits, attrs, out_type), {"X": x}, match)


def test_errors_do_not_kill_the_interpreter():
    """A malformed model in a child interpreter: it must exit normally after catching the error."""
    library = _library()  # skips where the library is not built
    code = (
        "import numpy as np, os, sys\n"
        f"sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})\n"
        f"os.environ['XNORPIPE_ORT_LIBRARY'] = {library!r}\n"
        "from test_cpu_kernels import make_session, xnor_model\n"
        "w = np.zeros((4, 3, 3, 2), np.int32)\n"
        "m = xnor_model((1, 8, 5, 5), w, np.zeros(8, np.float32), np.ones(4, np.float32), np.zeros(4, np.float32),"
        " kernel_shape=[3, 3])\n"
        "try:\n"
        "    make_session(m).run(None, {'X': np.zeros((1, 8, 5, 5), np.float32)})\n"
        "except Exception as e:\n"
        "    print('caught', type(e).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "caught" in out.stdout
