"""Bit-exactness of the native XnorConv2d kernels (libxnorpipe_ort.so) against the PyTorch reference.

Every popcount path this CPU runs is forced in turn with $XNORPIPE_POPCOUNT (read when ORT
creates the kernel, i.e. at session creation). Outputs must be np.array_equal to
`xnorpipe.deploy.reference.xnor_conv2d`, including thresholds of +-inf, inputs exactly equal
to their threshold and NaN inputs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from conftest import binary_conv_inputs  # noqa: E402
from conftest import require_ort_library as _library  # noqa: E402,F401  (other test files import it from here)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from xnorpipe.deploy import ir  # noqa: E402
from xnorpipe.deploy import onnx as deploy_onnx  # noqa: E402
from xnorpipe.deploy.packing import num_words, pack_weights  # noqa: E402
from xnorpipe.deploy.reference import binarize_bits, xnor_conv2d, xnor_conv2d_bits  # noqa: E402


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def available_paths() -> list[str]:
    flags = _cpu_flags()
    paths = ["reference", "portable"]
    if "avx2" in flags:
        paths.append("avx2")
    if {"avx512f", "avx512_vpopcntdq"} <= flags:
        paths.append("avx512")
    return paths


def xnor_model(x_shape, w, threshold, scale, bias, *, w_as_input=False, **attrs) -> bytes:
    """Single-node model: X -> XnorConv2d (W, threshold, scale, bias initializers) -> Y."""
    attrs = {k: v for k, v in attrs.items() if v is not None}
    inputs = ["X", "W", "threshold", "scale", "bias"]
    node = helper.make_node("XnorConv2d", inputs, ["Y"], domain="xnorpipe", **attrs)
    inits = [numpy_helper.from_array(np.asarray(a), name)
             for name, a in zip(inputs[1:], (w, threshold, scale, bias))]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))]
    if w_as_input:
        w_arr = np.asarray(w)
        graph_inputs.append(helper.make_tensor_value_info(
            "W", helper.np_dtype_to_tensor_dtype(w_arr.dtype), list(w_arr.shape)))
        inits = inits[1:]
    graph = helper.make_graph([node], "xnor", graph_inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("xnorpipe", 1)])
    model.ir_version = 8
    return model.SerializeToString()


def make_session(model: bytes, path: str | None = None, threads: int = 1):
    so = ort.SessionOptions()
    so.register_custom_ops_library(_library())
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    old = os.environ.get("XNORPIPE_POPCOUNT")
    try:
        if path is None:
            os.environ.pop("XNORPIPE_POPCOUNT", None)
        else:
            os.environ["XNORPIPE_POPCOUNT"] = path
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    finally:
        if old is None:
            os.environ.pop("XNORPIPE_POPCOUNT", None)
        else:
            os.environ["XNORPIPE_POPCOUNT"] = old


def random_case(rng: np.random.Generator, *, big: bool, pointwise: bool = False):
    group = int(rng.choice([1, 1, 1, 2, 3, 4]))
    if pointwise:  # 1x1/stride 1/no pads (the pixels-in-lanes kernel): > 256-pixel chunks, odd widths
        cg = int(rng.integers(1, 300 // group + 1))
        mg = int(rng.integers(1, 300 // group + 1))
        n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 25)), int(rng.integers(1, 25))
    elif big:
        cg = int(rng.integers(1, 300 // group + 1))
        mg = int(rng.integers(1, 300 // group + 1))
        n, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    else:
        cg = int(rng.integers(1, 70))
        mg = int(rng.integers(1, 40))
        n, h, w = int(rng.integers(1, 5)), int(rng.integers(1, 12)), int(rng.integers(1, 12))
    c, m = cg * group, mg * group
    kh = int(rng.choice([1, 3, 5]))
    kw = kh if rng.random() < 0.75 else int(rng.choice([1, 3, 5]))
    attrs = dict(
        kernel_shape=[kh, kw],
        strides=[int(rng.integers(1, 3)), int(rng.integers(1, 3))],
        pads=[int(v) for v in rng.integers(0, 3, size=4)],
        dilations=[int(rng.integers(1, 3)), int(rng.integers(1, 3))],
        group=group,
        relu=int(rng.integers(0, 2)),
    )
    if pointwise:
        kh = kw = 1
        attrs.update(kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0])
    span_h = h + attrs["pads"][0] + attrs["pads"][2] - attrs["dilations"][0] * (kh - 1) - 1
    span_w = w + attrs["pads"][1] + attrs["pads"][3] - attrs["dilations"][1] * (kw - 1) - 1
    if span_h < 0 or span_w < 0:
        return None
    threshold = rng.normal(0, 0.5, c).astype(np.float32)
    special = rng.random(c)
    threshold[special < 0.08] = np.inf
    threshold[(special >= 0.08) & (special < 0.16)] = -np.inf
    x = rng.normal(0, 1, (n, c, h, w)).astype(np.float32)
    pick = rng.random(x.shape)
    x = np.where(pick < 0.1, np.broadcast_to(threshold.reshape(1, c, 1, 1), x.shape), x)  # exactly at threshold
    x[pick > 0.95] = np.nan
    x[(pick > 0.93) & (pick <= 0.94)] = np.inf
    x[(pick > 0.94) & (pick <= 0.95)] = -np.inf
    x = x.astype(np.float32)
    w_bits = rng.random((m, cg, kh, kw)) < 0.5
    w = pack_weights(w_bits)
    scale = rng.normal(0, 1, m).astype(np.float32)
    bias = rng.normal(0, 1, m).astype(np.float32)
    return x, w, threshold, scale, bias, attrs


def reference(x, w, threshold, scale, bias, attrs):
    y = xnor_conv2d(torch.from_numpy(x), w, torch.from_numpy(threshold), torch.from_numpy(scale),
                    torch.from_numpy(bias), strides=attrs["strides"], pads=attrs["pads"],
                    dilations=attrs["dilations"], group=attrs["group"], relu=bool(attrs["relu"]))
    return y.numpy()


def _cases(seed: int, count: int, big: bool, pointwise: bool = False):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        case = random_case(rng, big=big, pointwise=pointwise)
        if case is not None:
            out.append(case)
    return out


SMALL_CASES = _cases(7, 80, big=False)
BIG_CASES = _cases(11, 20, big=True)
POINTWISE_CASES = _cases(13, 12, big=True, pointwise=True)


@pytest.mark.parametrize("path", available_paths())
def test_bit_exact_random_shapes(path):
    cases = SMALL_CASES + (BIG_CASES[:3] + POINTWISE_CASES[:2] if path == "reference" else BIG_CASES + POINTWISE_CASES)
    for i, (x, w, threshold, scale, bias, attrs) in enumerate(cases):
        want = reference(x, w, threshold, scale, bias, attrs)
        sess = make_session(xnor_model(x.shape, w, threshold, scale, bias, **attrs), path)
        got = sess.run(None, {"X": x})[0]
        assert got.shape == want.shape, (i, attrs)
        assert got.dtype == np.float32
        assert np.array_equal(got, want), f"case {i}: {x.shape} W{w.shape} {attrs}: " \
            f"{np.count_nonzero(got != want)} of {got.size} differ"


@pytest.mark.parametrize("path", [p for p in available_paths() if p != "reference"])
def test_bit_exact_nin_layers(path):
    """Layer shapes of nin_xnornet / nin_gc_xnornet (batch 2), incl. channel counts not multiple of 32."""
    rng = np.random.default_rng(3)
    layers = [(192, 160, 1, 0, 1, 12), (96, 192, 3, 1, 1, 16), (192, 192, 3, 1, 1, 8),
              (256, 512, 1, 0, 16, 8), (512, 512, 3, 1, 32, 8), (300, 300, 3, 2, 1, 5), (33, 65, 5, 2, 1, 7)]
    for c, m, k, pad, group, hw in layers:
        x = rng.normal(0, 1, (2, c, hw, hw)).astype(np.float32)
        threshold = rng.normal(0, 0.3, c).astype(np.float32)
        w = pack_weights(rng.random((m, c // group, k, k)) < 0.5)
        scale = rng.uniform(0.01, 1, m).astype(np.float32)
        bias = rng.normal(0, 1, m).astype(np.float32)
        attrs = dict(kernel_shape=[k, k], strides=[1, 1], pads=[pad] * 4, dilations=[1, 1], group=group, relu=1)
        want = reference(x, w, threshold, scale, bias, attrs)
        got = make_session(xnor_model(x.shape, w, threshold, scale, bias, **attrs), path).run(None, {"X": x})[0]
        assert np.array_equal(got, want), (c, m, k, group)


# Bit ops (packed-bits) with a shuffled output and groups that are not whole words: nin_gc_xnornet's
# folded layers and edge cases. C, M, k, pad, group, H, W
SHUFFLED_BIT_LAYERS = [
    (256, 512, 3, 1, 16, 16, 16),  # L3: 16 channels a group (half words), 3x3
    (512, 1024, 3, 1, 32, 8, 8),   # L6
    (512, 512, 1, 0, 4, 16, 16),   # L4, L5: pointwise, 4 words a group
    (1024, 1024, 1, 0, 8, 8, 8),   # L7
    (48, 40, 3, 1, 2, 9, 7),       # 24 a group: group 1 straddles two words
    (60, 36, 1, 0, 3, 5, 33),      # 20 a group, pointwise with a pixel tail
]


@pytest.mark.parametrize("path", available_paths())
def test_bit_ops_with_shuffled_output_and_partial_word_groups(path):
    """XnorConv2dBits (float out) and XnorConv2dBitsBinarize (bits out) with `shuffle_output`
    on and off, bit-exact against the reference, with one and two threads (each call big enough
    to be split into tasks at batch 2)."""
    rng = np.random.default_rng(17)
    layers = SHUFFLED_BIT_LAYERS[4:] if path == "reference" else SHUFFLED_BIT_LAYERS
    for c, m, k, pad, group, h, w in layers:
        for shuffle in (True, False):
            layer = ir.BinaryConv(weight_bits=pack_weights(rng.random((m, c // group, k, k)) < 0.5),
                                  threshold=np.zeros(c, np.float32), scale=rng.uniform(0.01, 1, m).astype(np.float32),
                                  bias=rng.normal(0, 2, m).astype(np.float32), kernel_shape=(k, k),
                                  pads=(pad,) * 4, group=group, relu=True, shuffle_output=shuffle)
            xp = binarize_bits(rng.normal(0, 1, (2, c, h, w)).astype(np.float32), np.zeros(c, np.float32))
            attrs = dict(pads=layer.pads, group=group, relu=True, shuffle_output=shuffle)
            y = xnor_conv2d_bits(xp, c, layer.weight_bits, layer.scale, layer.bias, **attrs)
            out_thr = np.median(y, axis=(0, 2, 3)).astype(np.float32)
            out_thr[::5] = y[0, ::5, 0, 0]  # exactly at an output value
            for out in (None, out_thr):
                want = y if out is None else binarize_bits(y, out)
                op = deploy_onnx.CONV_BITS if out is None else deploy_onnx.CONV_BITS_BINARIZE
                inputs = binary_conv_inputs(layer, reads_bits=True) | ({} if out is None else {"output_threshold": out})
                attrs = deploy_onnx.layer_attrs(layer, reads_bits=True)
                model = deploy_onnx.single_node_model(op, xp.shape, inputs, attrs)
                del model.functions[:]  # the library or nothing
                for threads in (1, 2):
                    got = make_session(model.SerializeToString(), path, threads).run(None, {"X": xp})[0]
                    assert np.array_equal(got, want), (path, c, m, k, group, shuffle, out is not None, threads)
            if shuffle:
                assert not np.array_equal(y, xnor_conv2d_bits(xp, c, layer.weight_bits, layer.scale, layer.bias,
                                                              pads=layer.pads, group=group, relu=True))


def test_default_path_matches_reference():
    x, w, threshold, scale, bias, attrs = SMALL_CASES[0]
    got = make_session(xnor_model(x.shape, w, threshold, scale, bias, **attrs), None).run(None, {"X": x})[0]
    assert np.array_equal(got, reference(x, w, threshold, scale, bias, attrs))


def test_weight_pad_bits_are_ignored():
    """Bits past C/group in W are 0 by contract and must be ignored, even if set."""
    rng = np.random.default_rng(5)
    c, m = 40, 24
    x = rng.normal(0, 1, (1, c, 6, 6)).astype(np.float32)
    threshold = np.zeros(c, np.float32)
    w = pack_weights(rng.random((m, c, 3, 3)) < 0.5)
    w_dirty = (w.view(np.uint32) | np.uint32(0xFFFFFF00) * (np.arange(num_words(c)) == 1)).view(np.int32)
    scale, bias = np.ones(m, np.float32), np.zeros(m, np.float32)
    attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    for path in available_paths():
        clean = make_session(xnor_model(x.shape, w, threshold, scale, bias, **attrs), path).run(None, {"X": x})[0]
        dirty = make_session(xnor_model(x.shape, w_dirty, threshold, scale, bias, **attrs), path).run(None, {"X": x})[0]
        assert np.array_equal(clean, dirty), path


def test_unknown_popcount_path_is_an_error():
    x, w, threshold, scale, bias, attrs = SMALL_CASES[1]
    with pytest.raises(Exception, match="XNORPIPE_POPCOUNT"):
        make_session(xnor_model(x.shape, w, threshold, scale, bias, **attrs), "sse9")


@pytest.mark.skipif("avx512" in available_paths(), reason="this CPU has AVX-512 VPOPCNTDQ")
def test_forcing_missing_isa_is_an_error():
    x, w, threshold, scale, bias, attrs = SMALL_CASES[1]
    with pytest.raises(Exception, match="does not support"):
        make_session(xnor_model(x.shape, w, threshold, scale, bias, **attrs), "avx512")
