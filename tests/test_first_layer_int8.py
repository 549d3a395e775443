"""The integer first layer (`--first-layer int8`, `xnorpipe::ConvIntegerBinarize`).

The op is integer arithmetic, so every runtime must equal the NumPy reference bit for bit: the
library on every popcount path this CPU runs ($XNORPIPE_POPCOUNT picks the integer kernel family:
avx512 -> AVX512-VNNI, avx2 -> AVX-VNNI or AVX2, portable), its function body on stock ONNX
Runtime and on onnx.reference. Cases include padding (pads past the kernel too), strides and
dilations, and the extremes that would saturate a careless kernel: all-255 images, weights at
-128/+127 (fine weights at the int32 extremes), pad values at +-2^15, zero points 0 and 255,
thresholds at an occurring sum and at the integer extremes, margins -1, 0, small and INT32_MAX
(the fine sum decides every bit). Then the quantiser (exact thresholds, constant channels,
closeness to the float layer), the export files and metadata, and the engines on uint8 and float
input.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from conftest import assert_outputs_depend_on_input, require_ort_library  # noqa: E402
from test_cpu_kernels import available_paths, make_session  # noqa: E402

from xnorpipe.deploy import ir  # noqa: E402
from xnorpipe.deploy import onnx as deploy_onnx  # noqa: E402
from xnorpipe.deploy.first_layer import (  # noqa: E402
    integer_layer,
    integer_threshold,
    normalised,
    quantize_first_layer,
    zero_points,
)
from xnorpipe.deploy.reference import conv_binarize, conv_integer64, conv_integer_binarize  # noqa: E402
from xnorpipe.errors import XnorpipeError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _case(seed: int):
    """(X uint8 NHWC, layer): random shapes and attributes; every third case at the extremes."""
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 14)), int(rng.integers(1, 20))
    c = int(rng.choice([1, 3, 3, 4, 17]))
    m = int(rng.choice([1, 7, 32, 40, 64, 70, 192]))
    kh, kw = int(rng.choice([1, 3, 5])), int(rng.choice([1, 2, 3, 5]))
    strides = [int(v) for v in rng.integers(1, 3, 2)]
    dilations = [int(v) for v in rng.integers(1, 3, 2)]
    pads = [int(v) for v in rng.integers(0, 8 if seed % 5 == 4 else 3, 4)]  # 4: pads past the kernel
    extent_h, extent_w = dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1
    if h + pads[0] + pads[2] < extent_h or w + pads[1] + pads[3] < extent_w:  # no output: pad by a kernel
        pads = [extent_h, extent_w, extent_h, extent_w]
    i32 = np.iinfo(np.int32)
    if seed % 3 == 1:  # saturation-prone extremes
        x = np.full((n, h, w, c), 255, np.uint8)
        weight = rng.choice(np.array([-128, 127], np.int8), (m, c, kh, kw))
        z = rng.choice(np.array([0, 255], np.uint8), c)
        pad_value = rng.choice(np.array([-32768, 32767], np.int16), (m, kh, kw))
        fine_weight = rng.choice(np.array([i32.min, i32.max], np.int32), (m, c, kh, kw))
        fine_pad_value = rng.choice(np.array([i32.min, i32.max], np.int32), (m, kh, kw))
    else:
        x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
        weight = rng.integers(-128, 128, (m, c, kh, kw), dtype=np.int8)
        z = rng.integers(0, 256, c, dtype=np.uint8)
        pad_value = rng.integers(-400, 400, (m, kh, kw)).astype(np.int16)
        fine_weight = rng.integers(i32.min, i32.max, (m, c, kh, kw), dtype=np.int64) >> rng.integers(0, 24)
        fine_weight = fine_weight.astype(np.int32)
        fine_pad_value = rng.integers(-2**20, 2**20, (m, kh, kw)).astype(np.int32)
    attrs = dict(strides=strides, pads=pads, dilations=dilations)
    acc = conv_integer64(x, weight, z, pad_value, **attrs)
    fine = conv_integer64(x, fine_weight, z, fine_pad_value, **attrs)
    # thresholds: a sum that occurs (acc == t), +-1 of it, or the integer extremes
    at = (rng.integers(0, n), slice(None), rng.integers(0, acc.shape[2]), rng.integers(0, acc.shape[3]))
    threshold = (acc[at] + rng.integers(-1, 2, m)).astype(np.int32)
    fine_threshold = fine[at] + rng.integers(-1, 2, m)
    extreme = rng.random(m)
    threshold[extreme < 0.1] = i32.min
    threshold[extreme > 0.9] = i32.max
    fine_threshold[(extreme > 0.1) & (extreme < 0.2)] = np.iinfo(np.int64).min
    margin = rng.choice(np.array([-1, 0, 3, 1000, i32.max], np.int32), m)
    return x, integer_layer(weight, z, pad_value, threshold, margin, fine_weight, fine_pad_value, fine_threshold,
                            **attrs)


CASES = [_case(seed) for seed in range(24)]


def _model(layer, x_shape) -> onnx.ModelProto:
    """One ConvIntegerBinarize node with `layer`'s tensors and attributes, X uint8 [N, H, W, C]."""
    return deploy_onnx.single_node_model(deploy_onnx.CONV_INTEGER_BINARIZE, x_shape, dict(layer.tensors()),
                                         layer.attributes())


def _reference(x, layer):
    return conv_integer_binarize(x, *(a for _, a in layer.tensors()), strides=layer.strides, pads=layer.pads,
                                 dilations=layer.dilations)


def test_reference_is_the_contract_sum():
    """conv_integer64 against the contract's sum written as loops: in-image taps W * (X - z), padded
    taps pad_value."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    weight = rng.integers(-128, 128, (4, 3, 3, 2), dtype=np.int8)
    z = rng.integers(0, 256, 3, dtype=np.uint8)
    pv = rng.integers(-1000, 1000, (4, 3, 2)).astype(np.int16)
    strides, pads, dilations = (2, 1), (2, 1, 1, 3), (1, 2)
    got = conv_integer64(x, weight, z, pv, strides=strides, pads=pads, dilations=dilations)
    n, h, w, c = x.shape
    for b in range(n):
        for m in range(4):
            for oh in range(got.shape[2]):
                for ow in range(got.shape[3]):
                    s = 0
                    for i in range(3):
                        for j in range(2):
                            y = oh * strides[0] - pads[0] + i * dilations[0]
                            q = ow * strides[1] - pads[1] + j * dilations[1]
                            if 0 <= y < h and 0 <= q < w:
                                s += sum(int(weight[m, ch, i, j]) * (int(x[b, y, q, ch]) - int(z[ch]))
                                         for ch in range(c))
                            else:
                                s += int(pv[m, i, j])
                    assert got[b, m, oh, ow] == s


@pytest.mark.parametrize("path", available_paths())
def test_library_is_bit_exact(path):
    require_ort_library()
    for x, layer in CASES:
        sess = make_session(_model(layer, x.shape).SerializeToString(), path,
                            threads=2)
        got = sess.run(None, {"X": x})[0]
        want = _reference(x, layer)
        assert got.dtype == np.int32 and np.array_equal(got, want), (path, x.shape, layer.weight.shape, layer.pads)


def test_function_body_is_bit_exact_on_stock_ort():
    for x, layer in CASES[:12]:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(_model(layer, x.shape).SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        assert np.array_equal(sess.run(None, {"X": x})[0], _reference(x, layer)), (x.shape, layer.pads)


def test_function_body_on_onnx_reference():
    from onnx.reference import ReferenceEvaluator

    for x, layer in (CASES[0], CASES[1]):  # a random case and an extreme one
        got = ReferenceEvaluator(_model(layer, x.shape)).run(None, {"X": x})[0]
        assert np.array_equal(got, _reference(x, layer))


def test_batch_zero_and_new_sizes_reuse_the_session():
    require_ort_library()
    x, layer = CASES[0]
    model = _model(layer, x.shape)
    for value in (model.graph.input[0], model.graph.output[0]):  # any height and width
        for k, name in ((1, "h"), (2, "w")) if value is model.graph.input[0] else ((2, "ho"), (3, "wo")):
            value.type.tensor_type.shape.dim[k].dim_param = name
    sess = make_session(model.SerializeToString())
    empty = sess.run(None, {"X": x[:0]})[0]
    assert empty.shape == (0, *_reference(x, layer).shape[1:])
    for seed in (1, 2):  # the cached thresholds follow the input size
        bigger = np.random.default_rng(seed).integers(0, 256, (2, x.shape[1] + seed, x.shape[2] + 2 * seed, x.shape[3]),
                                                      dtype=np.uint8)
        assert np.array_equal(sess.run(None, {"X": bigger})[0], _reference(bigger, layer))


def test_integer_threshold_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        t, offset = float(rng.normal(0, 10)), float(rng.normal(0, 10))
        scale = float(np.exp(rng.uniform(-12, 2)))
        a = integer_threshold(t, offset, scale)
        assert Fraction(offset) + Fraction(scale) * a >= Fraction(t)
        assert Fraction(offset) + Fraction(scale) * (a - 1) < Fraction(t)
    assert integer_threshold(1.0, 0.0, 1e-300) == 2**31 - 1  # clamped: never reached
    assert integer_threshold(-1.0, 0.0, 1e-300) == -(2**31)
    assert integer_threshold(1.0, 0.0, 1e-300, 64) == 2**63 - 1


def _tiny_model(weight, bias, threshold, relu=True) -> ir.DeployModel:
    m = weight.shape[0]
    first = ir.FloatConv(weight=weight.astype(np.float32), bias=bias.astype(np.float32), pads=(1, 1, 1, 1), relu=relu)
    words = np.zeros((4, 1, 1, 1), np.int32)
    binary = ir.BinaryConv(weight_bits=words, threshold=threshold.astype(np.float32), scale=np.ones(4, np.float32),
                           bias=np.zeros(4, np.float32), kernel_shape=(1, 1))
    assert binary.in_channels == m
    return ir.DeployModel.from_layers(arch="tiny", layers=[first, binary, ir.Flatten()], input_shape=(3, 8, 8))


def test_quantiser_constant_channels_and_closeness():
    """Channels whose bit never depends on the image get q = 0 and T in {0, 1}; the others match
    the float layer (computed in float64) on all but a few bits."""
    rng = np.random.default_rng(5)
    m = 8
    weight = rng.normal(0, 0.3, (m, 3, 3, 3))
    weight[3] = 0  # all-zero weights: relu(bias) >= t decides
    bias = rng.normal(0, 0.2, m)
    bias[3] = 0.5
    threshold = rng.uniform(0.05, 0.5, m)
    threshold[0], threshold[1], threshold[2], threshold[3] = -0.3, np.inf, -np.inf, 0.4  # 0, 3: always; 1: never
    model = _tiny_model(weight, bias, threshold)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    layer = quantize_first_layer(model, images[:24], "test")
    assert [a.dtype for _, a in layer.tensors()] == [np.int8, np.uint8, np.int16, np.int32, np.int32, np.int32,
                                                     np.int32, np.int64]
    assert np.array_equal(layer.x_zero_point, zero_points(model.mean))
    for j, bit in [(0, 1), (1, 0), (2, 1), (3, 1)]:
        assert not layer.weight[j].any() and not layer.pad_value[j].any() and layer.threshold[j] == (0 if bit else 1)
        assert layer.margin[j] == -1
    assert np.abs(layer.weight[4:]).max() >= 100  # the full int8 range is used
    assert (layer.margin[4:] > 0).all() and np.abs(layer.fine_weight[4:]).max() > 2**19
    # the flipped bits it reports are the reference's count on its calibration images
    calibrated = _reference(images[:24], layer)
    float_bits = conv_binarize(normalised(images[:24], model.mean, model.std), weight, bias, threshold,
                               pads=(1, 1, 1, 1), relu=True)
    assert np.unpackbits((calibrated ^ float_bits).view(np.uint8)).sum() == layer.flipped_bits
    assert layer.total_bits == 24 * 8 * 64 and 0 < layer.refined_bits < 0.2 * layer.total_bits
    assert layer.flipped_bits < layer.int8_flipped_bits
    got = _reference(images[24:], layer)
    want = conv_binarize(normalised(images[24:], model.mean, model.std), weight, bias, threshold, pads=(1, 1, 1, 1),
                         relu=True)
    differ = np.unpackbits((got ^ want).view(np.uint8)).sum()
    assert (got[:, 0] >> 3 & 1).all() and not (got[:, 0] >> 1 & 1).any()
    assert differ <= 0.001 * 16 * 64 * 8, differ  # with the fine sums: float rounding's share only


def test_quantiser_refuses_models_without_a_float_first_conv():
    model = _tiny_model(np.ones((8, 3, 3, 3)), np.zeros(8), np.ones(8))
    model = ir.DeployModel.from_layers(model.arch, model.layers[1:], input_shape=model.input_shape)
    with pytest.raises(XnorpipeError, match="float first conv"):
        quantize_first_layer(model, np.zeros((1, 8, 8, 3), np.uint8), "test")
    with pytest.raises(XnorpipeError, match="calibration images"):
        quantize_first_layer(_tiny_model(np.ones((8, 3, 3, 3)), np.zeros(8), np.ones(8)),
                             np.zeros((1, 8, 8, 3), np.float32), "test")


@pytest.fixture(scope="module")
def nin_int8():
    """The random-init nin_xnornet, folded, and its integer first layer (calibrated on a few
    synthetic images: fast; the CLI test calibrates on the full set)."""
    from xnorpipe.deploy.fold import fold_model
    from xnorpipe.sources import load_source_model, synthetic_calibration_images

    model, meta = load_source_model("nin_xnornet", random_init=True)
    deploy = fold_model(model, arch="nin_xnornet", metadata=meta)
    return model, deploy, quantize_first_layer(deploy, synthetic_calibration_images(n=16), "synthetic:0")


def test_exported_model_runs_everywhere(nin_int8, tmp_path):
    """packed-bits with the integer first layer: uint8 NHWC input, the library and the function
    bodies agree, and the first layer's bits are the float layer's but for a few."""
    from xnorpipe.runtime.ort_engine import OrtEngine, OrtXnorEngine
    from xnorpipe.sources import synthetic_calibration_images

    require_ort_library()
    _, deploy, layer = nin_int8
    files = deploy_onnx.export(deploy, ["packed-bits", "packed-bits-inline"], tmp_path, first_layer=layer)
    assert [f.path.name for f in files] == ["nin_xnornet.packed-bits.int8.onnx",
                                            "nin_xnornet.packed-bits-inline.int8.onnx"]
    m = onnx.load(str(files[0].path))
    meta = deploy_onnx.model_metadata(m)
    assert meta["xnorpipe.layout"] == "NHWC" and meta["xnorpipe.first_layer"] == "int8"
    assert "uint8" in meta["xnorpipe.input"]
    assert json.loads(meta["xnorpipe.first_layer_quantisation"])["calibration"] == "synthetic:0"
    (x,) = m.graph.input
    assert x.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value or d.dim_param for d in x.type.tensor_type.shape.dim] == ["batch", 32, 32, 3]
    assert m.graph.node[0].op_type == "ConvIntegerBinarize" and "ConvBinarize" not in deploy_onnx.custom_op_types(m)

    images = synthetic_calibration_images(seed=7, n=12)
    lib = OrtXnorEngine(onnx_path=str(files[0].path), threads=2)
    stock = OrtEngine(onnx_path=str(files[0].path), threads=1)
    inlined = OrtEngine(onnx_path=str(files[1].path), threads=1)
    y = lib(images)
    assert_outputs_depend_on_input(y)
    normalised_batch = normalised(images, deploy.mean, deploy.std)
    assert np.array_equal(lib.prepare_input(normalised_batch), images)  # exact: pixels are integers
    assert np.array_equal(lib(normalised_batch), y)
    np.testing.assert_allclose(stock(images), y, atol=1e-5)
    np.testing.assert_allclose(inlined(images), y, atol=1e-5)
    assert lib.describe()["form"] == "packed-bits, int8 first layer"
    with pytest.raises(XnorpipeError, match="uint8 image batch"):
        lib(np.zeros((2, 32, 32, 3), np.float32))


def test_first_layer_bits_close_to_float(nin_int8):
    """On images the calibration did not see, the integer layer's bits differ from the float
    layer's (float64) in a tiny fraction: int8 alone flips ~5e-4 of them, the margin's fine sums
    ~1e-7 (measured on CIFAR-10); here on synthetic images, a bound with room."""
    from xnorpipe.sources import synthetic_calibration_images

    _, deploy, layer = nin_int8
    conv, consumer = deploy.layers[0], deploy.layers[1]
    images = synthetic_calibration_images(seed=11, n=8)
    got = _reference(images, layer)
    want = conv_binarize(normalised(images, deploy.mean, deploy.std), conv.weight, conv.bias, consumer.threshold,
                         pads=conv.pads, relu=True)
    fraction = np.unpackbits((got ^ want).view(np.uint8)).sum() / (8 * 192 * 32 * 32)
    assert fraction < 2e-5, fraction


def test_int8_only_in_packed_bits_forms(nin_int8):
    _, deploy, layer = nin_int8
    for form in ("portable", "packed", "packed-inline"):
        with pytest.raises(XnorpipeError, match="integer first layer"):
            deploy_onnx.build_onnx(deploy, form, first_layer=layer)
    assert deploy_onnx.resolve_forms(deploy, "all", "int8")[0] == ["packed-bits", "packed-bits-inline"]
    with pytest.raises(XnorpipeError, match="applies to the packed-bits"):
        deploy_onnx.resolve_forms(deploy, "packed", "int8")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "xnorpipe.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_cli_export_and_bench(tmp_path):
    """`export --first-layer int8` writes <arch>.<form>.int8.onnx beside the float files of the
    same source; `bench --onnx` runs it on ort-xnor and stock ORT; a float-only form is refused
    in one line."""
    require_ort_library()
    out = tmp_path / "exports"
    r = _cli("export", "--arch", "nin_xnornet", "--random-init", "--form", "packed-bits", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli("export", "--arch", "nin_xnornet", "--random-init", "--first-layer", "int8", "--form", "packed-bits",
             "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "integer first layer:" in r.stdout and "calibrated on synthetic images" in r.stdout
    assert sorted(p.name for p in out.glob("*.onnx")) == ["nin_xnornet.packed-bits.int8.onnx",
                                                          "nin_xnornet.packed-bits.onnx"]
    flipped = json.loads(deploy_onnx.model_metadata(onnx.load(str(out / "nin_xnornet.packed-bits.int8.onnx")))[
        "xnorpipe.first_layer_quantisation"])
    assert flipped["calibration_images"] == 256 and 0 < flipped["int8_flipped_bits"] < 1e-3 * flipped["total_bits"]
    assert flipped["flipped_bits"] < 0.1 * flipped["int8_flipped_bits"]
    r = _cli("bench", "--onnx", str(out / "nin_xnornet.packed-bits.int8.onnx"), "--engine", "ort-xnor,ort",
             "--iters", "2", "--warmup", "0", "--batch-size", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("int8 first layer") == 2
    r = _cli("export", "--arch", "nin_xnornet", "--random-init", "--first-layer", "int8", "--form", "packed",
             "--out", str(out))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "packed-bits" in r.stderr
    assert "Traceback" not in r.stderr
