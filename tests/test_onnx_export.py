"""ONNX emitters: checker-clean, metadata, dynamic batch, op semantics, parity on real images."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import assert_outputs_depend_on_input, binary_conv_inputs, bit_links
from test_fold import SMALL

from xnorpipe import __version__
from xnorpipe.deploy import ir
from xnorpipe.deploy import onnx as deploy_onnx
from xnorpipe.deploy.fold import fold_model
from xnorpipe.deploy.module import DeployModule
from xnorpipe.deploy.packing import pack_weights
from xnorpipe.deploy.reference import (
    avg_pool2d64,
    avg_pool_binarize,
    binarize_bits,
    bit_max_pool,
    conv_binarize,
    float_conv2d64,
    unpack_activation_bits,
    xnor_conv2d,
    xnor_conv2d_bits,
)
from xnorpipe.models import ARCHS, build_model

ROOT = Path(__file__).resolve().parents[1]


def session(m: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    """Stock ONNX Runtime, no custom-op library: packed models run their function body."""
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def forms_of(arch):
    return list(deploy_onnx.FORMS) if ARCHS[arch].binary else ["portable"]


@pytest.fixture(scope="module")
def small_models():
    """SMALL widths, BN statistics measured on standard-normal inputs (the tests' inputs), then a
    third of the gammas negated: logits that depend on the input, and gamma < 0 channels. (With
    random statistics alone, `randomise_bn`, nin_xnornet's logits are the same for every input.)"""
    calib = np.random.default_rng(12).standard_normal((64, 3, 32, 32)).astype(np.float32)
    out = {}
    for arch in SMALL:
        model = calibrated(arch, SMALL[arch][0], calib, seed=11)
        out[arch] = (model, fold_model(model, arch=arch, metadata={"xnorpipe.checkpoint_sha256": "ab" * 32}))
    return out


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_forms_pass_checker_and_strict_shape_inference(arch, small_models):
    _, deploy = small_models[arch]
    for form in forms_of(arch):
        inferred = deploy_onnx.check_onnx(deploy_onnx.build_onnx(deploy, form))
        out = inferred.graph.output[0]
        assert out.name == "logits"
        dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
        assert dims == ["batch", 10]
        inp = inferred.graph.input[0]
        assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, 32, 32]


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_forms_match_deploy_module_with_dynamic_batch(arch, small_models):
    _, deploy = small_models[arch]
    module = DeployModule(deploy)
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = module(x).numpy()
        if batch > 1:
            assert_outputs_depend_on_input(want)
        for form in forms_of(arch):
            m = deploy_onnx.build_onnx(deploy, form)
            got = session(m).run(None, {"input": x.numpy()})[0]
            assert got.shape == (batch, 10)
            np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            if form in ("packed", "packed-bits"):
                assert deploy_onnx.count_custom_nodes(m) == 7


def test_custom_nodes_and_function_layout(small_models):
    _, deploy = small_models["nin_gc_xnornet"]
    packed = deploy_onnx.build_onnx(deploy, "packed")
    portable = deploy_onnx.build_onnx(deploy, "portable")
    assert deploy_onnx.count_custom_nodes(portable) == 0
    assert {o.domain for o in portable.opset_import} == {""}
    assert [(f.domain, f.name) for f in packed.functions] == [("xnorpipe", "XnorConv2d")]
    assert {(o.domain, o.version) for o in packed.opset_import} >= {("xnorpipe", 1)}
    node = next(n for n in packed.graph.node if n.op_type == "XnorConv2d")
    attrs = {a.name for a in node.attribute}
    assert attrs == {"kernel_shape", "strides", "pads", "dilations", "group", "relu"}
    w = next(t for t in packed.graph.initializer if t.name == node.input[1])
    assert w.data_type == onnx.TensorProto.INT32 and len(w.dims) == 4
    # group-conv layers get their own group attribute through the one generic function
    groups = {next(a.i for a in n.attribute if a.name == "group")
              for n in packed.graph.node if n.op_type == "XnorConv2d"}
    assert groups == {2, 16, 4, 32, 8}


def test_metadata(small_models, tmp_path):
    _, deploy = small_models["nin_xnornet"]
    files = deploy_onnx.export(deploy, deploy_onnx.FORMS, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "nin_xnornet.packed-bits-inline.onnx", "nin_xnornet.packed-bits.onnx", "nin_xnornet.packed-inline.onnx",
        "nin_xnornet.packed.onnx", "nin_xnornet.portable.onnx"]
    for f in files:
        meta = deploy_onnx.model_metadata(onnx.load(str(f.path)))
        assert meta["xnorpipe.arch"] == "nin_xnornet"
        assert meta["xnorpipe.form"] == f.form
        assert meta["xnorpipe.input"] == "RGB uint8 / 255, then (x - mean) / std, NCHW float32"
        assert json.loads(meta["xnorpipe.mean"]) == pytest.approx([0.4914, 0.4822, 0.4465])
        assert json.loads(meta["xnorpipe.std"]) == pytest.approx([0.2023, 0.1994, 0.2010])
        assert meta["xnorpipe.layout"] == "NCHW"
        assert json.loads(meta["xnorpipe.classes"])[:2] == ["airplane", "automobile"]
        assert len(json.loads(meta["xnorpipe.classes"])) == 10
        assert meta["xnorpipe.version"] == __version__
        assert meta["xnorpipe.checkpoint_sha256"] == "ab" * 32


def test_packed_is_at_most_an_eighth_of_portable(tmp_path):
    """And the inlined forms keep most of it (their weights stay packed; each call site gets its
    own copy of the function body): about 15x and 13x for nin_xnornet."""
    model = build_model("nin_xnornet").eval()  # the seed's widths: the size claim is about them
    files = {f.form: f for f in deploy_onnx.export(fold_model(model, arch="nin_xnornet"), deploy_onnx.FORMS,
                                                    tmp_path)}
    portable = files["portable"].size_bytes
    print("nin_xnornet " + ", ".join(f"{form} {f.size_bytes} B ({portable / f.size_bytes:.1f}x)"
                                     for form, f in files.items()))
    assert files["packed"].size_bytes * 8 <= portable
    assert all(files[form].size_bytes * 12 <= portable for form in ("packed-inline", "packed-bits-inline"))
    assert files["packed"].custom_nodes == 7 and files["portable"].custom_nodes == 0
    assert files["packed-inline"].custom_nodes == 0 and files["packed-inline"].packed_weight_bytes == \
        files["packed"].packed_weight_bytes


def test_opset_limits(small_models):
    _, deploy = small_models["nin_xnornet"]
    from xnorpipe.errors import XnorpipeError

    deploy_onnx.check_onnx(deploy_onnx.build_onnx(deploy, "portable", opset=17))
    for form in deploy_onnx.FORMS[1:]:
        with pytest.raises(XnorpipeError, match="opset >= 18"):
            deploy_onnx.build_onnx(deploy, form, opset=17)
        deploy_onnx.check_onnx(deploy_onnx.build_onnx(deploy, form, opset=21))


# ------------------------------------------------------------------ op semantics, one node

OP_CASES = [  # C, M, k, stride, pads, dilation, group, relu
    (40, 24, 3, 1, (1, 1, 1, 1), 1, 1, 1),   # C not a multiple of 32, zero-padding edges
    (64, 32, 3, 2, (1, 1, 1, 1), 1, 2, 0),   # stride 2, groups, exactly 32 per group
    (48, 16, 5, 2, (2, 2, 2, 2), 1, 4, 1),   # 12 channels per group
    (33, 7, 1, 1, (0, 0, 0, 0), 1, 1, 0),    # 1x1, 33 channels = 2 words
    (35, 10, 3, 1, (0, 1, 2, 1), 2, 5, 1),   # asymmetric pads, dilation 2
    (96, 96, 3, 1, (1, 1, 1, 1), 1, 96, 0),  # depthwise: one channel per group
]


def _random_layer(rng, c, m, k, s, pads, dil, g, relu):
    threshold = rng.standard_normal(c).astype(np.float32)
    threshold[0], threshold[1] = -np.inf, np.inf
    return ir.BinaryConv(weight_bits=pack_weights(rng.random((m, c // g, k, k)) < 0.5), threshold=threshold,
                         scale=rng.random(m).astype(np.float32) + 0.01,
                         bias=rng.standard_normal(m).astype(np.float32), kernel_shape=(k, k),
                         strides=(s, s), pads=pads, dilations=(dil, dil), group=g, relu=bool(relu))


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: "c{}m{}k{}s{}g{}".format(*c[:4], c[6]))
def test_function_body_computes_the_contract(case):
    rng = np.random.default_rng(sum(case[:4]))
    layer = _random_layer(rng, *case)
    x = rng.standard_normal((3, case[0], 11, 13)).astype(np.float32)
    x[0, :, 0, 0] = layer.threshold  # exactly at the thresholds, in a padded corner
    x[1, :, -1, -1] = np.where(np.isfinite(layer.threshold), layer.threshold, 0)
    x[2, 0, 5, 5] = np.nan  # NaN binarizes to -1
    m = deploy_onnx.single_node_model(deploy_onnx.OP_NAME, x.shape, binary_conv_inputs(layer),
                                      deploy_onnx.layer_attrs(layer))
    deploy_onnx.check_onnx(m)
    want = xnor_conv2d(torch.from_numpy(x), layer.weight_bits, torch.from_numpy(layer.threshold),
                       torch.from_numpy(layer.scale), torch.from_numpy(layer.bias), strides=layer.strides,
                       pads=layer.pads, dilations=layer.dilations, group=layer.group,
                       relu=layer.relu).numpy()
    # Unoptimised, the body is bit-exact; ORT's default optimiser folds scale into the conv
    # weights (ConvMulFusion), which moves results by float rounding only.
    np.testing.assert_array_equal(session(m, optimize=False).run(None, {"X": x})[0], want)
    np.testing.assert_allclose(session(m).run(None, {"X": x})[0], want, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        one_op = ir.DeployModel.from_layers("op", [layer], input_shape=x.shape[1:])
        module_out = DeployModule(one_op)(torch.from_numpy(x))
    np.testing.assert_array_equal(module_out.numpy(), want)


def test_padding_is_zero_not_plus_or_minus_one():
    """All inputs below threshold (-1 everywhere): a corner sees 4 of 9 taps inside the image."""
    layer = ir.BinaryConv(weight_bits=pack_weights(np.ones((1, 5, 3, 3), bool)),
                          threshold=np.zeros(5, np.float32), scale=np.ones(1, np.float32),
                          bias=np.zeros(1, np.float32), kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    x = -np.ones((1, 5, 4, 4), np.float32)
    m = deploy_onnx.single_node_model(deploy_onnx.OP_NAME, x.shape, binary_conv_inputs(layer),
                                      deploy_onnx.layer_attrs(layer))
    y = session(m).run(None, {"X": x})[0]
    assert y[0, 0, 0, 0] == -4 * 5 and y[0, 0, 1, 1] == -9 * 5 and y[0, 0, 0, 1] == -6 * 5


# ------------------------------------------------------------------------ real images


@pytest.fixture(scope="module")
def cifar(cifar_tarball):
    """The first images through the data module (conftest's tarball fixture skips when absent)."""
    from xnorpipe.bench import normalised_images
    from xnorpipe.data import load_cifar10

    d = load_cifar10(cifar_tarball, progress=False)
    return (normalised_images(d.train_images[:256]), normalised_images(d.test_images[:400]),
            d.test_labels[:400])


def calibrated(arch, cfg, train_x, seed):
    """Random weights, BN statistics measured on real images (so real activations straddle the
    thresholds), then a third of the BN channels negated: gamma < 0 on real data."""
    torch.manual_seed(seed)
    model = build_model(arch, cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(train_x), 128):
            model(torch.from_numpy(train_x[i:i + 128]))
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            flip = torch.rand(m.num_features, generator=g) < 1 / 3
            m.weight.data[flip] *= -1
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.2
    return model.eval()


REAL_CFG = {"nin_xnornet": [96, 80, 48, 96, 96, 96, 96, 96],  # half the seed's widths: test time
            "nin_gc_xnornet": SMALL["nin_gc_xnornet"][0]}


_REAL_RUNS: dict = {}


def real_runs(arch, cifar):
    """Calibrated `arch` folded, and the logits of the training model and the deploy module on
    the test images (computed once per arch for the tests below)."""
    if arch not in _REAL_RUNS:
        train_x, test_x, _ = cifar
        model = calibrated(arch, REAL_CFG[arch], train_x, seed=21)
        assert any((m.weight < 0).any() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        deploy = fold_model(model, arch=arch)
        with torch.no_grad():
            trained = model(torch.from_numpy(test_x)).numpy()
            oracle = DeployModule(deploy)(torch.from_numpy(test_x)).numpy()
        _REAL_RUNS[arch] = (deploy, test_x, trained, oracle)
    return _REAL_RUNS[arch]


def assert_within_contract(got, oracle, trained):
    """Untrained but calibrated nets have small logit margins (a trained net's are larger), and
    a bit flips wherever PyTorch's and ORT's float rounding straddle a threshold, so top-1
    agreement is asserted at 99 % here; the contract's 99.9 % is for trained checkpoints
    (`xnorpipe bench --data`). The median difference is the contract's own bound."""
    for ref in (oracle, trained):
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99
        assert np.median(np.abs(got - ref)) <= 1e-4


@pytest.mark.parametrize("arch", ["nin_xnornet", "nin_gc_xnornet"])
def test_real_images_parity(arch, cifar):
    deploy, test_x, trained, oracle = real_runs(arch, cifar)
    assert_outputs_depend_on_input(trained)
    portable = session(deploy_onnx.build_onnx(deploy, "portable")).run(None, {"input": test_x})[0]
    packed = session(deploy_onnx.build_onnx(deploy, "packed")).run(None, {"input": test_x})[0]
    assert np.median(np.abs(portable - oracle)) <= 1e-5
    assert_within_contract(oracle, oracle, trained)
    assert_within_contract(portable, oracle, trained)
    assert_within_contract(packed, oracle, trained)


@pytest.mark.parametrize("arch", ["nin_xnornet", "nin_gc_xnornet"])
def test_real_images_parity_native_kernels(arch, cifar):
    """The packed form on libxnorpipe_ort.so (skips where it is not built)."""
    from test_cpu_kernels import _library

    so = ort.SessionOptions()
    so.register_custom_ops_library(_library())
    deploy, test_x, trained, oracle = real_runs(arch, cifar)
    native = ort.InferenceSession(deploy_onnx.build_onnx(deploy, "packed").SerializeToString(), so,
                                  providers=["CPUExecutionProvider"]).run(None, {"input": test_x})[0]
    assert_within_contract(native, oracle, trained)


def test_polygraphy_comparator_agrees_across_forms(small_models):
    """Cross-check through polygraphy: portable vs packed (function body) on stock ORT."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, DataLoader, SimpleCompareFunc

    _, deploy = small_models["nin_gc_xnornet"]
    runners = [OnnxrtRunner(SessionFromOnnx(deploy_onnx.build_onnx(deploy, form).SerializeToString()),
                            name=form) for form in ("portable", "packed")]
    loader = DataLoader(iterations=2, input_metadata=None, val_range=(-2.0, 2.0))
    results = Comparator.run(runners, data_loader=loader)
    assert len(results) == 2 and all(len(r) == 2 for _, r in results.items())
    assert bool(Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=1e-4, rtol=1e-4)))


def test_custom_op_library_matches_the_function_body(small_models):
    """Where plugins/ has built libxnorpipe_ort.so: kernel and function body give the same model."""
    from test_cpu_kernels import _library

    from xnorpipe.runtime.ort_engine import OrtEngine, OrtXnorEngine

    _library()  # skips where the library is not built
    _, deploy = small_models["nin_gc_xnornet"]
    x = np.random.default_rng(0).standard_normal((7, 3, 32, 32)).astype(np.float32)
    kernel = OrtXnorEngine(model=deploy, threads=1)
    assert kernel.describe()["xnor_nodes"] == 7 and kernel.library
    with torch.no_grad():
        want = DeployModule(deploy)(torch.from_numpy(x)).numpy()
    assert_outputs_depend_on_input(want)
    got = kernel(x)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(OrtEngine(model=deploy, threads=1)(x), want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------- packed-bits: bit-packed activations

NIN_BITS_SEQUENCE = ["ConvBinarize", "XnorConv2dBitsBinarize", "XnorConv2dBitsBinarize",
                     "BitMaxPool", "XnorConv2dBitsBinarize", "XnorConv2dBitsBinarize", "XnorConv2dBits",
                     "AvgPoolBinarize", "XnorConv2dBitsBinarize", "XnorConv2dBits", "Conv", "Relu",
                     "AveragePool", "Flatten"]


def _inits(m):
    return {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_packed_bits_graph_of_nin_xnornet(small_models):
    _, deploy = small_models["nin_xnornet"]
    m = deploy_onnx.build_onnx(deploy, "packed-bits")
    assert [n.op_type for n in m.graph.node] == NIN_BITS_SEQUENCE
    assert all(n.domain == ("" if n.op_type in ("Conv", "Relu", "AveragePool", "Flatten") else "xnorpipe")
               for n in m.graph.node)
    assert [f.name for f in m.functions] == ["XnorConv2d", "Binarize", "XnorConv2dBits",
                                             "XnorConv2dBitsBinarize", "BitMaxPool", "ConvBinarize",
                                             "AvgPoolBinarize"]
    assert deploy_onnx.model_metadata(m)["xnorpipe.form"] == "packed-bits"
    # 7 XnorConv2d family; ConvBinarize, BitMaxPool and AvgPoolBinarize (no plain Binarize)
    assert deploy_onnx.count_custom_nodes(m) == 7 and deploy_onnx.count_bit_nodes(m) == 3
    binary = [layer for layer in deploy.layers if isinstance(layer, ir.BinaryConv)]
    convs = [n for n in m.graph.node if n.op_type.startswith("XnorConv2d")]
    inits = _inits(m)
    for k, (node, layer) in enumerate(zip(convs, binary)):
        a = _attrs(node)
        assert a == {"kernel_shape": list(layer.kernel_shape), "strides": list(layer.strides),
                     "pads": list(layer.pads), "dilations": list(layer.dilations), "group": layer.group,
                     "relu": int(layer.relu), "channels": layer.in_channels}
        np.testing.assert_array_equal(inits[node.input[1]], layer.weight_bits)
        if node.op_type == "XnorConv2dBitsBinarize":  # the next binary layer's threshold
            np.testing.assert_array_equal(inits[node.input[4]], binary[k + 1].threshold)
    # conv0 (float, group 1) writes layer 1's bits: its weight, bias, attributes and ReLU,
    # layer 1's threshold
    first = deploy.layers[0]
    assert isinstance(first, ir.FloatConv) and first.group == 1 and deploy.layers[1] is binary[0]
    fused = m.graph.node[0]
    assert fused.domain == "xnorpipe" and list(fused.input[:1]) == ["input"] and len(fused.input) == 4
    assert _attrs(fused) == {"kernel_shape": list(first.kernel_shape), "strides": list(first.strides),
                             "pads": list(first.pads), "dilations": list(first.dilations), "group": 1,
                             "relu": int(first.relu)}
    for name, want in zip(fused.input[1:], (first.weight, first.bias, binary[0].threshold)):
        np.testing.assert_array_equal(inits[name], want)
    assert bit_links(deploy, ir.FloatConv) == {0: 1}
    # the first AvgPool (after layer 5) writes layer 6's bits: the pool's attributes, layer 6's
    # threshold; the second (after conv8) stays a float AveragePool
    pools = [i for i, layer in enumerate(deploy.layers) if isinstance(layer, ir.AvgPool)]
    assert bit_links(deploy, ir.AvgPool) == {pools[0]: pools[0] + 1}
    assert deploy.layers[pools[0] + 1] is binary[5]
    avg_node = next(n for n in m.graph.node if n.op_type == "AvgPoolBinarize")
    avg = deploy.layers[pools[0]]
    assert _attrs(avg_node) == {"kernel_shape": list(avg.kernel_shape), "strides": list(avg.strides),
                                "pads": list(avg.pads)}
    assert list(avg_node.input[:1]) == list(convs[4].output) and len(avg_node.input) == 2  # L5's float
    np.testing.assert_array_equal(inits[avg_node.input[1]], binary[5].threshold)
    assert list(convs[5].input[:1]) == list(avg_node.output)
    pool_node = next(n for n in m.graph.node if n.op_type == "BitMaxPool")
    pool = next(layer for layer in deploy.layers if isinstance(layer, ir.MaxPool))
    assert _attrs(pool_node) == {"kernel_shape": list(pool.kernel_shape), "strides": list(pool.strides),
                                 "pads": list(pool.pads)}
    # strict inference through the function bodies: bits are int32 of rank 4 (the bodies'
    # computed Reshape targets leave the dimensions symbolic)
    inferred = {vi.name: vi for vi in deploy_onnx.check_onnx(m).graph.value_info}
    for node in m.graph.node:
        if node.op_type in ("ConvBinarize", "XnorConv2dBitsBinarize", "BitMaxPool", "AvgPoolBinarize"):
            vi = inferred[node.output[0]]
            assert vi.type.tensor_type.elem_type == onnx.TensorProto.INT32 and len(_dims(vi)) == 4


def test_nin_gc_packed_bits_links_every_binary_layer(small_models):
    """nin_gc_xnornet's channel shuffles fold into its grouped layers (`shuffle_output`), so its
    packed-bits graph has nin_xnornet's shape: every binary layer reads bits, no shuffle between
    them (tests/test_shuffle_fold.py checks the fold and the outputs)."""
    _, deploy = small_models["nin_gc_xnornet"]
    assert bit_links(deploy) == {1: 2, 2: 4, 4: 5, 5: 6, 8: 9}
    assert bit_links(deploy, ir.FloatConv) == {0: 1}
    bits = deploy_onnx.build_onnx(deploy, "packed-bits")
    assert [n.op_type for n in bits.graph.node] == NIN_BITS_SEQUENCE


def _toy_bits_model(rng):
    """Bits through one MaxPool and into grouped layers (one of 24 channels a group: a group
    need not be whole words); stopped by a channel shuffle left in the IR and an AvgPool."""
    def conv(c, m, k=1, g=1, pads=(0, 0, 0, 0)):
        return _random_layer(rng, c, m, k, 1, pads, 1, g, 1)

    layers = [conv(8, 40, 3, pads=(1, 1, 1, 1)), ir.MaxPool((2, 2), (2, 2)), conv(40, 64),
              conv(64, 64, 3, g=2, pads=(1, 1, 1, 1)), ir.ChannelShuffle(2), conv(64, 64, g=2),
              ir.AvgPool((2, 2), (2, 2)), conv(64, 48), conv(48, 48, g=2), conv(48, 10), ir.Flatten()]
    return ir.DeployModel.from_layers(arch="toy", layers=layers, input_shape=(8, 12, 12))


def test_bit_links_follow_the_rules_and_keep_the_logits():
    rng = np.random.default_rng(5)
    model = _toy_bits_model(rng)
    assert bit_links(model) == {0: 2, 2: 3, 7: 8, 8: 9}
    m = deploy_onnx.build_onnx(model, "packed-bits")
    deploy_onnx.check_onnx(m)
    assert [n.op_type for n in m.graph.node] == [
        "Binarize", "XnorConv2dBitsBinarize", "BitMaxPool", "XnorConv2dBitsBinarize", "XnorConv2dBits",
        "Reshape", "Transpose", "Reshape", "XnorConv2d", "AvgPoolBinarize", "XnorConv2dBitsBinarize",
        "XnorConv2dBitsBinarize", "XnorConv2dBits", "Flatten"]
    # a MaxPool whose padding reaches a whole window passes floats; two MaxPools pass bits
    padded = ir.DeployModel.from_layers("toy", [model.layers[0], ir.MaxPool((1, 1), (1, 1), (1, 1, 1, 1)),
                                                model.layers[2]],
                            input_shape=(8, 12, 12))
    two = ir.DeployModel.from_layers("toy", [model.layers[0], model.layers[1], model.layers[1], model.layers[2]],
                         input_shape=(8, 12, 12))
    assert bit_links(padded) == {}
    two_bits = deploy_onnx.build_onnx(two, "packed-bits")
    assert [n.op_type for n in two_bits.graph.node].count("BitMaxPool") == 2
    x = rng.standard_normal((3, 8, 12, 12)).astype(np.float32)
    x[0, :, 0, 0] = model.layers[0].threshold  # at the first thresholds
    np.testing.assert_array_equal(session(two_bits, optimize=False).run(None, {"input": x})[0],
                                  session(deploy_onnx.build_onnx(two, "packed"), optimize=False)
                                  .run(None, {"input": x})[0])
    want = session(deploy_onnx.build_onnx(model, "packed"), optimize=False).run(None, {"input": x})[0]
    np.testing.assert_array_equal(session(m, optimize=False).run(None, {"input": x})[0], want)


def test_reference_bit_ops_by_hand():
    # 33 channels: two words; channel 31 is the sign bit of word 0, channel 32 bit 0 of word 1
    x = np.full((1, 33, 1, 2), -1.0, np.float32)
    thr = np.zeros(33, np.float32)
    thr[1] = -np.inf
    x[0, 0, 0, 0] = 0.0  # equal to its threshold: set
    x[0, 31, 0, 0] = 5.0
    x[0, 32, 0, 1] = 1.0
    x[0, 1, 0, 1] = np.nan  # NaN >= -inf is false: clear
    bits = binarize_bits(x, thr)
    assert bits.dtype == np.int32 and bits.shape == (1, 2, 1, 2)
    assert bits[0, 0, 0, 0] == np.array(1 | 2 | (1 << 31), np.int64).astype(np.uint32).view(np.int32)
    assert bits[0, 0, 0, 1] == 0 and bits[0, 1, 0, 0] == 0 and bits[0, 1, 0, 1] == 1
    pm1 = unpack_activation_bits(bits, 33)
    assert pm1.dtype == np.float32
    np.testing.assert_array_equal(pm1, np.where(x >= thr[:, None, None], 1.0, -1.0))  # NaN: -1
    garbage = bits.copy()
    garbage[0, 1] |= 0b1110  # bits past channel 32 are ignored
    np.testing.assert_array_equal(unpack_activation_bits(garbage, 33), pm1)
    all_set = np.full((1, 1, 1, 1), -1, np.int32)
    np.testing.assert_array_equal(unpack_activation_bits(all_set, 32), np.ones((1, 32, 1, 1)))
    with pytest.raises(ValueError):
        unpack_activation_bits(bits, 65)
    # BitMaxPool: one bit per pixel, so an output word shows exactly which taps it ORed
    words = (1 << np.arange(9, dtype=np.int32)).reshape(1, 1, 3, 3)
    assert bit_max_pool(words, (2, 2), (1, 1)).ravel().tolist() == [
        0b000011011, 0b000110110, 0b011011000, 0b110110000]
    # 3x3 stride 2, padding 1: the corner window holds only the 4 in-image taps
    assert bit_max_pool(words, (3, 3), (2, 2), (1, 1, 1, 1)).ravel().tolist() == [
        0b000011011, 0b000110110, 0b011011000, 0b110110000]
    assert bit_max_pool(words, (2, 2), (2, 2), (0, 0, 1, 1)).ravel().tolist() == [
        0b000011011, 0b000100100, 0b011000000, 0b100000000]
    assert bit_max_pool(np.full((1, 1, 2, 2), -1, np.int32), (2, 2), (1, 1)).ravel().tolist() == [-1]


@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 1, 2, 1)])
def test_bit_max_pool_commutes_with_binarize(pads):
    """Binarize(MaxPool(x), t) == BitMaxPool(Binarize(x, t)): MaxPool pads with -inf."""
    rng = np.random.default_rng(len(pads) + pads[2])
    x = rng.standard_normal((2, 70, 9, 11)).astype(np.float32)
    thr = rng.standard_normal(70).astype(np.float32) * 0.5 + 1.0
    top, left, bottom, right = pads
    xt = torch.nn.functional.pad(torch.from_numpy(x), (left, right, top, bottom), value=-np.inf)
    pooled = torch.nn.functional.max_pool2d(xt, 3, 2).numpy()
    np.testing.assert_array_equal(bit_max_pool(binarize_bits(x, thr), (3, 3), (2, 2), pads),
                                  binarize_bits(pooled, thr))


def _random_words(rng, shape):
    return rng.integers(-2**31, 2**31, shape, dtype=np.int64).astype(np.int32)


@pytest.mark.parametrize("c", [1, 31, 32, 33, 70, 96])
def test_binarize_function_body_matches_reference(c):
    rng = np.random.default_rng(c)
    thr = rng.standard_normal(c).astype(np.float32)
    thr[0] = -np.inf
    if c > 2:
        thr[2] = np.inf
    m = deploy_onnx.single_node_model(deploy_onnx.BINARIZE, (3, c, 7, 5), {"threshold": thr})
    deploy_onnx.check_onnx(m)
    s = session(m, optimize=False)
    for n in (1, 3):
        x = rng.standard_normal((n, c, 7, 5)).astype(np.float32)
        x[0, :, 0, 0] = thr  # equality: set
        x[-1, 0, 1, 1] = np.nan
        x[-1, :, 2, 2] = np.inf
        got = s.run(None, {"X": x})[0]
        assert got.dtype == np.int32 and got.shape == (n, (c + 31) // 32, 7, 5)
        np.testing.assert_array_equal(got, binarize_bits(x, thr))


BITS_CONV_CASES = [  # C, M, k, stride, pads, dilation, group, relu
    (40, 24, 3, 1, (1, 1, 1, 1), 1, 1, 1),   # C not a multiple of 32
    (64, 32, 3, 2, (1, 1, 1, 1), 1, 2, 0),   # groups of exactly one word
    (33, 7, 1, 1, (0, 0, 0, 0), 1, 1, 0),    # 1x1, M = 7 -> one output word
    (35, 40, 3, 1, (0, 1, 2, 1), 2, 1, 1),   # asymmetric pads, dilation 2, M = 40 -> two words
    (128, 64, 3, 1, (1, 1, 1, 1), 1, 2, 1),  # two words per group
]


@pytest.mark.parametrize("binarize_out", [False, True], ids=["float_out", "bits_out"])
@pytest.mark.parametrize("case", BITS_CONV_CASES, ids=lambda c: "c{}m{}k{}s{}g{}".format(*c[:4], c[6]))
def test_xnor_conv_bits_function_body_matches_reference(case, binarize_out):
    rng = np.random.default_rng(sum(case[:4]) + binarize_out)
    c = case[0]
    layer = _random_layer(rng, *case)
    attrs = dict(strides=layer.strides, pads=layer.pads, dilations=layer.dilations, group=layer.group,
                 relu=layer.relu)
    xp = _random_words(rng, (3, (c + 31) // 32, 11, 13))  # garbage past C: must be ignored
    y = xnor_conv2d_bits(xp, c, layer.weight_bits, layer.scale, layer.bias, **attrs)
    out_thr = None
    if binarize_out:  # thresholds inside the outputs' range, some exactly at an output value
        out_thr = np.median(y, axis=(0, 2, 3)).astype(np.float32)
        out_thr[::3] = y[0, ::3, 0, 0]
    want = xnor_conv2d_bits(xp, c, layer.weight_bits, layer.scale, layer.bias, output_threshold=out_thr, **attrs)
    op = deploy_onnx.CONV_BITS_BINARIZE if binarize_out else deploy_onnx.CONV_BITS
    inputs = binary_conv_inputs(layer, reads_bits=True) | ({"output_threshold": out_thr} if binarize_out else {})
    model = deploy_onnx.single_node_model(op, xp.shape, inputs, deploy_onnx.layer_attrs(layer, reads_bits=True))
    deploy_onnx.check_onnx(model)
    assert [f.name for f in model.functions] == (
        ["XnorConv2d", "Binarize", "XnorConv2dBits", "XnorConv2dBitsBinarize"] if binarize_out
        else ["XnorConv2d", "XnorConv2dBits"])
    got = session(model, optimize=False).run(None, {"X": xp})[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    if binarize_out:
        assert 0 < np.unpackbits(got.view(np.uint8)).mean() < 1  # not all set or all clear


@pytest.mark.parametrize("shuffle_output", [False, True])
def test_xnor_conv_bits_reads_groups_of_partial_words(shuffle_output):
    """24 channels a group (group 1 starts at bit 24 of word 0): the function body reads them
    where they are, and `shuffle_output` shuffles the output's channels."""
    rng = np.random.default_rng(0)
    layer = _random_layer(rng, 48, 16, 1, 1, (0, 0, 0, 0), 1, 2, 0)
    layer.shuffle_output = shuffle_output
    attrs = dict(strides=layer.strides, pads=layer.pads, dilations=layer.dilations, group=2, relu=layer.relu)
    xp = _random_words(rng, (2, 2, 4, 4))
    model = deploy_onnx.single_node_model(deploy_onnx.CONV_BITS, xp.shape, binary_conv_inputs(layer, reads_bits=True),
                                          deploy_onnx.layer_attrs(layer, reads_bits=True))
    deploy_onnx.check_onnx(model)
    got = session(model, optimize=False).run(None, {"X": xp})[0]
    want = xnor_conv2d_bits(xp, 48, layer.weight_bits, layer.scale, layer.bias, shuffle_output=shuffle_output,
                            **attrs)
    np.testing.assert_array_equal(got, want)
    plain = xnor_conv2d_bits(xp, 48, layer.weight_bits, layer.scale, layer.bias, **attrs)
    np.testing.assert_array_equal(want, plain[:, ir.shuffle_order(16, 2)] if shuffle_output else plain)


@pytest.mark.parametrize("case", [(40, 9, 9, 3, 2, (1, 1, 1, 1)), (64, 8, 8, 2, 2, (0, 0, 0, 0)),
                                  (33, 7, 10, 3, 1, (0, 1, 2, 1)), (96, 16, 16, 3, 2, (1, 1, 1, 1))],
                         ids=lambda c: "c{}h{}w{}k{}s{}".format(*c[:5]))
def test_bit_max_pool_function_body_matches_reference(case):
    c, h, w, k, s, pads = case
    rng = np.random.default_rng(c + h)
    pool = ir.MaxPool((k, k), (s, s), pads)
    model = deploy_onnx.single_node_model(deploy_onnx.BIT_MAX_POOL, (2, (c + 31) // 32, h, w), {},
                                          deploy_onnx.layer_attrs(pool))
    deploy_onnx.check_onnx(model)
    assert [f.name for f in model.functions] == ["BitMaxPool"]
    # sparse bits, so that an OR of a window is not simply all ones
    xp = (_random_words(rng, (2, (c + 31) // 32, h, w)) & _random_words(rng, (2, (c + 31) // 32, h, w))
          & _random_words(rng, (2, (c + 31) // 32, h, w)))
    got = session(model, optimize=False).run(None, {"X": xp})[0]
    np.testing.assert_array_equal(got, bit_max_pool(xp, pool.kernel_shape, pool.strides, pool.pads))


# ----------------------------------------------- ConvBinarize: the float first layer, fused

CONV_BINARIZE_CASES = [  # C, M, k, stride, pads, dilation, group, relu
    (3, 40, 3, 1, (1, 1, 1, 1), 1, 1, 1),   # M = 40: a second, partial output word
    (3, 96, 5, 2, (2, 2, 2, 2), 1, 1, 0),   # stride 2, three whole words (nin_xnornet's conv0 is 5x5)
    (8, 7, 3, 2, (0, 1, 2, 1), 2, 1, 1),    # asymmetric pads, dilation 2, M < 32
    (16, 64, 1, 1, (0, 0, 0, 0), 1, 1, 0),  # 1x1
    (6, 36, 3, 1, (1, 1, 1, 1), 1, 3, 1),   # group 3: the op allows it (the exporter fuses group 1 only)
]


def _random_float_conv(rng, c, m, k, s, pads, dil, g, relu):
    return ir.FloatConv(weight=(rng.standard_normal((m, c // g, k, k)) * 0.5).astype(np.float32),
                        bias=(rng.standard_normal(m) * 0.5).astype(np.float32), strides=(s, s), pads=pads,
                        dilations=(dil, dil), group=g, relu=bool(relu))


def _float_conv_attrs(layer: ir.FloatConv) -> dict:
    return dict(strides=layer.strides, pads=layer.pads, dilations=layer.dilations, group=layer.group)


def _decided(x, layer: ir.FloatConv, threshold) -> np.ndarray:
    """bool [N, M, Ho, Wo]: where every float32 runtime must give the real-number bit.

    A float32 conv's result lies within a few ulps of sum |terms| of the real y, far below
    the margin 1e-5 * (sum |terms| + 1). Undecided: |relu?(y) - threshold| <= margin, except
    where ReLU gets a clearly negative y (every runtime then compares exactly 0). NaN is
    decided (bit 0)."""
    attrs = _float_conv_attrs(layer)
    y_pre = float_conv2d64(x, layer.weight, layer.bias, **attrs)
    y = float_conv2d64(x, layer.weight, layer.bias, relu=layer.relu, **attrs)
    margin = 1e-5 * (float_conv2d64(np.abs(x), np.abs(layer.weight), np.abs(layer.bias), **attrs) + 1)
    thr = np.asarray(threshold, np.float32).astype(np.float64).reshape(1, -1, 1, 1)
    with np.errstate(invalid="ignore"):
        decided = np.abs(y - thr) > margin  # +-inf thresholds: always decided
        if layer.relu:
            decided |= y_pre < -margin
    return decided | np.isnan(y)


def _assert_bits_agree_where_decided(got, want, decided, m):
    assert got.dtype == np.int32 and got.shape == want.shape
    g, w = unpack_activation_bits(got, m), unpack_activation_bits(want, m)
    wrong = (g != w) & decided
    assert not wrong.any(), f"{wrong.sum()} decided bits differ, first at {np.argwhere(wrong)[0]}"
    words = got.shape[1]
    assert (unpack_activation_bits(got, 32 * words)[:, m:] == -1).all()  # bits past M are clear


def _library_session_factory(*ops: str):
    """Sessions on libxnorpipe_ort.so as ort-xnor makes them (ORT's default optimizations);
    skips where the library is not built or lacks a kernel of `ops` (default: ConvBinarize)."""
    from test_cpu_kernels import _library

    from xnorpipe.runtime.ort_engine import _library_implements

    library = _library()  # skips where the library is not built
    for op in ops or ("ConvBinarize",):
        if not _library_implements(library, op):
            pytest.skip(f"{library} has no xnorpipe::{op} kernel (an older build): rebuild plugins/")

    def make(m: onnx.ModelProto) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.register_custom_ops_library(library)
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])

    return make


@pytest.mark.parametrize("runtime", ["function_body", "library"])
@pytest.mark.parametrize("case", CONV_BINARIZE_CASES,
                         ids=lambda c: "c{}m{}k{}s{}d{}g{}r{}".format(*c[:4], *c[5:]))
def test_conv_binarize_matches_the_real_number_reference(case, runtime):
    """ConvBinarize on stock ORT (its function body, unoptimised) and on the custom-op library
    against the float64 reference: equal wherever the bit is decided beyond float rounding."""
    make = (lambda m: session(m, optimize=False)) if runtime == "function_body" else _library_session_factory()
    rng = np.random.default_rng(sum(case[:4]) + case[6] + 10 * case[7])
    c, m = case[:2]
    layer = _random_float_conv(rng, *case)
    x = rng.standard_normal((3, c, 11, 13)).astype(np.float32)
    x[2, 0, 4, 5] = np.nan  # every filter of the pixels that see it: NaN, bit 0 (row even, column odd:
    # seen by stride 2, dilation 2 and pads (0, 1, 2, 1) too)
    attrs = _float_conv_attrs(layer)
    y = float_conv2d64(x, layer.weight, layer.bias, relu=layer.relu, **attrs)
    thr = np.nanmedian(y, axis=(0, 2, 3)).astype(np.float32)  # about half of the bits set
    thr[0], thr[1] = -np.inf, np.inf  # all set (but NaN), all clear
    thr[2] = 0.0  # with ReLU every output is >= 0: all set (but NaN)
    thr[3] = y[0, 3, 0, 0]  # exactly at an output: undecided, but exercised
    model = deploy_onnx.single_node_model(deploy_onnx.CONV_BINARIZE, x.shape,
                                          {"W": layer.weight, "B": layer.bias, "threshold": thr},
                                          deploy_onnx.layer_attrs(layer))
    deploy_onnx.check_onnx(model)
    assert [f.name for f in model.functions] == ["Binarize", "ConvBinarize"]
    want = conv_binarize(x, layer.weight, layer.bias, thr, relu=layer.relu, **attrs)
    _, ho, wo = ir.node_shapes(ir.DeployModel.from_layers("op", [layer], input_shape=(c, 11, 13)))[-1]
    assert want.shape == (3, (m + 31) // 32, ho, wo)
    decided = _decided(x, layer, thr)
    assert decided.mean() > 0.97 and np.isnan(y).any()
    pm1 = unpack_activation_bits(want, m)
    assert (pm1[..., 1, :, :] == -1).all() and (pm1[:2, 0] == 1).all()
    assert (pm1[:2, 2] == 1).all() if layer.relu else 0 < (pm1[:, 2] == 1).mean() < 1
    assert (pm1[np.isnan(y)] == -1).all() and 0.2 < (pm1 == 1).mean() < 0.8
    for n in (1, 3):
        got = make(model).run(None, {"X": x[:n]})[0]
        _assert_bits_agree_where_decided(got, want[:n], decided[:n], m)


def test_conv_binarize_fusion_rules():
    """Only a group-1 FloatConv directly before a binary layer that can read bits is fused (the
    layer then reads bits, whatever it writes); a model without a fused first layer stays
    bit-exact with its packed form."""
    rng = np.random.default_rng(9)

    def float_conv(c, m, g=1):
        return _random_float_conv(rng, c, m, 3, 1, (1, 1, 1, 1), 1, g, 1)

    def binary(c, m):
        return _random_layer(rng, c, m, 1, 1, (0, 0, 0, 0), 1, 1, 1)

    cases = {  # layers -> packed-bits node sequence
        "fused": ([float_conv(4, 40), binary(40, 48), binary(48, 10), ir.Flatten()],
                  ["ConvBinarize", "XnorConv2dBitsBinarize", "XnorConv2dBits", "Flatten"]),
        "grouped": ([float_conv(4, 40, g=2), binary(40, 48), binary(48, 10), ir.Flatten()],
                    ["Conv", "Relu", "Binarize", "XnorConv2dBitsBinarize", "XnorConv2dBits", "Flatten"]),
        "through_pool": ([float_conv(4, 40), ir.MaxPool((2, 2), (2, 2)), binary(40, 48), binary(48, 10),
                          ir.Flatten()],
                         ["ConvBinarize", "BitMaxPool", "XnorConv2dBitsBinarize", "XnorConv2dBits", "Flatten"]),
        "float_reader": ([float_conv(4, 40), binary(40, 10), ir.Flatten()],
                         ["ConvBinarize", "XnorConv2dBits", "Flatten"]),
    }
    x = rng.standard_normal((4, 4, 6, 6)).astype(np.float32)
    for name, (layers, sequence) in cases.items():
        model = ir.DeployModel.from_layers("toy", layers, input_shape=(4, 6, 6))
        m = deploy_onnx.build_onnx(model, "packed-bits")
        deploy_onnx.check_onnx(m)
        assert [n.op_type for n in m.graph.node] == sequence, name
        fused = name in ("fused", "float_reader", "through_pool")
        assert bit_links(model, ir.FloatConv) == ({0: 2 if name == "through_pool" else 1} if fused else {}), name
        got = session(m, optimize=False).run(None, {"input": x})[0]
        want = session(deploy_onnx.build_onnx(model, "packed"), optimize=False).run(None, {"input": x})[0]
        if fused:  # ConvBinarize may round its sums differently (see below)
            np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        else:
            np.testing.assert_array_equal(got, want)


# ----------------------------------------- AvgPoolBinarize: an AveragePool before a binary layer

AVG_POOL_CASES = [  # C, H, W, kernel, strides, pads
    (96, 16, 16, (3, 3), (2, 2), (1, 1, 1, 1)),  # nin_xnornet's pool: 3 whole words
    (40, 8, 8, (2, 2), (2, 2), (0, 0, 0, 0)),     # 2x2 stride 2, a partial second word
    (33, 11, 13, (3, 3), (2, 2), (0, 1, 2, 1)),   # asymmetric pads
    (70, 9, 20, (2, 3), (1, 2), (1, 0, 0, 2)),    # non-square kernel and strides
    (7, 6, 40, (3, 3), (1, 1), (1, 1, 1, 1)),     # a row wider than 32: the library's generic path
    (32, 5, 12, (1, 9), (1, 1), (0, 4, 0, 4)),    # kernel width 9: the generic path too
]


def _pool_kwargs(pool: ir.AvgPool) -> dict:
    return dict(kernel_shape=pool.kernel_shape, strides=pool.strides, pads=pool.pads)


def _avg_decided(x, pool: ir.AvgPool, threshold) -> np.ndarray:
    """bool [N, C, Ho, Wo]: where every float32 runtime must give the real-number bit: the
    average lies beyond 1e-5 * (sum |window| + 1) of the threshold (a float32 sum of the window
    and one division are within a few ulps of sum |window|). NaN (bit 0) and +-inf averages
    (an infinite tap, compared exactly) are decided."""
    kh, kw = pool.kernel_shape
    y = avg_pool2d64(x, **_pool_kwargs(pool))
    with np.errstate(invalid="ignore"):
        margin = 1e-5 * (avg_pool2d64(np.abs(x), **_pool_kwargs(pool)) * (kh * kw) + 1)
        thr = np.asarray(threshold, np.float32).astype(np.float64).reshape(1, -1, 1, 1)
        decided = np.abs(y - thr) > margin  # +-inf thresholds: decided for finite averages
    return decided | np.isnan(y) | np.isinf(y)


def test_avg_pool_binarize_reference_by_hand():
    """count_include_pad=1: zero padding counts in the divisor (PyTorch's default)."""
    x = np.ones((1, 1, 4, 4), np.float32)
    pool = ir.AvgPool((3, 3), (2, 2), (1, 1, 1, 1))
    y = avg_pool2d64(x, **_pool_kwargs(pool))
    np.testing.assert_allclose(y[0, 0], [[4 / 9, 6 / 9], [6 / 9, 1.0]], rtol=1e-15)
    xt = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 5, 7, 6)))
    np.testing.assert_allclose(avg_pool2d64(xt.numpy().astype(np.float32), **_pool_kwargs(pool)),
                               torch.nn.functional.avg_pool2d(xt.float().double(), 3, 2, 1).numpy(), rtol=1e-12)
    thr = np.array([5 / 9], np.float32)
    bits = avg_pool_binarize(x, thr, **_pool_kwargs(pool))
    assert bits.dtype == np.int32 and bits.ravel().tolist() == [0, 1, 1, 1]
    x[0, 0, 3, 3] = np.nan  # only the bottom-right window sees it
    assert avg_pool_binarize(x, thr, **_pool_kwargs(pool)).ravel().tolist() == [0, 1, 1, 0]
    model = deploy_onnx.single_node_model(deploy_onnx.AVG_POOL_BINARIZE, x.shape, {"threshold": thr},
                                          deploy_onnx.layer_attrs(pool))
    np.testing.assert_array_equal(session(model, optimize=False).run(None, {"X": x})[0], [[[[0, 1], [1, 0]]]])


@pytest.mark.parametrize("runtime", ["function_body", "library"])
@pytest.mark.parametrize("case", AVG_POOL_CASES,
                         ids=lambda c: "c{}h{}w{}k{}x{}s{}x{}".format(*c[:3], *c[3], *c[4]))
def test_avg_pool_binarize_matches_the_real_number_reference(case, runtime):
    """AvgPoolBinarize on stock ORT (its function body, unoptimised) and on the custom-op
    library against the float64 reference: equal wherever the bit is decided beyond float
    rounding; bits past C clear; NaN in a window: bit 0."""
    make = ((lambda m: session(m, optimize=False)) if runtime == "function_body"
            else _library_session_factory("AvgPoolBinarize"))
    c, h, w, kernel, strides, pads = case
    rng = np.random.default_rng(c + h + w)
    pool = ir.AvgPool(kernel, strides, pads)
    x = rng.standard_normal((3, c, h, w)).astype(np.float32)
    x[2, :5, 2, 3] = np.nan  # every window that sees it: NaN, bit 0
    x[1, :, 0, 1] = np.inf  # +inf in image 1, -inf far from it: exact +-inf averages
    x[1, :, h - 1, w - 1] = -np.inf
    y = avg_pool2d64(x, **_pool_kwargs(pool))
    thr = np.nanmedian(np.where(np.isinf(y), np.nan, y), axis=(0, 2, 3)).astype(np.float32)  # about half set
    thr[0], thr[1] = -np.inf, np.inf  # all set (but NaN), all clear (but +inf averages)
    thr[2] = y[0, 2, 0, 0]  # exactly at an average: undecided, but exercised
    model = deploy_onnx.single_node_model(deploy_onnx.AVG_POOL_BINARIZE, x.shape, {"threshold": thr},
                                          deploy_onnx.layer_attrs(pool))
    deploy_onnx.check_onnx(model)
    assert [f.name for f in model.functions] == ["Binarize", "AvgPoolBinarize"]
    want = avg_pool_binarize(x, thr, **_pool_kwargs(pool))
    _, ho, wo = ir.node_shapes(ir.DeployModel.from_layers("op", [pool], input_shape=(c, h, w)))[-1]
    assert want.shape == (3, (c + 31) // 32, ho, wo) == (3, (c + 31) // 32, *y.shape[2:])
    decided = _avg_decided(x, pool, thr)
    assert decided.mean() > 0.97 and np.isnan(y).any() and np.isposinf(y).any() and np.isneginf(y).any()
    pm1 = unpack_activation_bits(want, c)
    assert (pm1[np.isnan(y)] == -1).all() and (pm1[np.isposinf(y)] == 1).all()
    assert (pm1[:, 0][~np.isnan(y[:, 0])] == 1).all() and (pm1[:, 1][~np.isposinf(y[:, 1])] == -1).all()
    assert 0.2 < (pm1 == 1).mean() < 0.8
    for n in (1, 3):
        got = make(model).run(None, {"X": x[:n]})[0]
        _assert_bits_agree_where_decided(got, want[:n], decided[:n], c)


def test_avg_pool_binarize_library_refuses_other_averages():
    """The library implements count_include_pad=1 and ceil_mode=0 only, and says so."""
    make = _library_session_factory("AvgPoolBinarize")
    pool = ir.AvgPool((2, 2), (2, 2))
    op, thr = deploy_onnx.AVG_POOL_BINARIZE, {"threshold": np.zeros(4, np.float32)}
    attrs = deploy_onnx.layer_attrs(pool)
    for name, value in (("count_include_pad", 0), ("ceil_mode", 1)):
        m = deploy_onnx.single_node_model(op, (1, 4, 6, 6), thr, attrs)
        m.graph.node[0].attribute.append(onnx.helper.make_attribute(name, value))
        del m.functions[:]  # the library's kernel or nothing
        with pytest.raises(Exception, match=name):
            make(m)
    m = deploy_onnx.single_node_model(op, (1, 4, 6, 6), thr, attrs)
    m.graph.node[0].attribute.append(onnx.helper.make_attribute("count_include_pad", 1))  # the default
    del m.functions[:]
    assert make(m).run(None, {"X": np.ones((1, 4, 6, 6), np.float32)})[0].ravel().tolist() == [15] * 9


def test_avg_pool_binarize_fusion_rules():
    """Only an AvgPool (pads < kernel) directly before a binary layer that can read bits is fused."""
    rng = np.random.default_rng(10)

    def float_conv(c, m):
        return _random_float_conv(rng, c, m, 3, 1, (1, 1, 1, 1), 1, 1, 1)

    def binary(c, m, g=1):
        return _random_layer(rng, c, m, 1, 1, (0, 0, 0, 0), 1, g, 1)

    pool = ir.AvgPool((3, 3), (2, 2), (1, 1, 1, 1))
    cases = {  # layers -> packed-bits node sequence, fused {pool: reader}
        "input_pool": ([pool, binary(4, 40), binary(40, 10), ir.Flatten()],
                       ["AvgPoolBinarize", "XnorConv2dBitsBinarize", "XnorConv2dBits", "Flatten"], {0: 1}),
        "nin_like": ([binary(4, 40), pool, binary(40, 48), binary(48, 10), ir.Flatten()],
                     ["XnorConv2d", "AvgPoolBinarize", "XnorConv2dBitsBinarize", "XnorConv2dBits", "Flatten"],
                     {1: 2}),
        "after_float_conv": ([float_conv(4, 40), pool, binary(40, 48), binary(48, 10), ir.Flatten()],
                             ["Conv", "Relu", "AvgPoolBinarize", "XnorConv2dBitsBinarize", "XnorConv2dBits",
                              "Flatten"], {1: 2}),
        "float_reader": ([pool, binary(4, 10), ir.Flatten()], ["AvgPoolBinarize", "XnorConv2dBits", "Flatten"],
                         {0: 1}),
        "grouped_reader": ([pool, binary(4, 48, g=2), binary(48, 10), ir.Flatten()],  # 2 channels a group
                           ["AvgPoolBinarize", "XnorConv2dBitsBinarize", "XnorConv2dBits", "Flatten"], {0: 1}),
        "through_shuffle": ([pool, ir.ChannelShuffle(2), binary(4, 40), binary(40, 10), ir.Flatten()],
                            ["AveragePool", "Reshape", "Transpose", "Reshape", "Binarize",
                             "XnorConv2dBitsBinarize", "XnorConv2dBits", "Flatten"], {}),
    }
    x = rng.standard_normal((4, 4, 6, 6)).astype(np.float32)
    for name, (layers, sequence, fused) in cases.items():
        model = ir.DeployModel.from_layers("toy", layers, input_shape=(4, 6, 6))
        m = deploy_onnx.build_onnx(model, "packed-bits")
        deploy_onnx.check_onnx(m)
        assert [n.op_type for n in m.graph.node] == sequence, name
        assert bit_links(model, ir.AvgPool) == fused, name
        got = session(m, optimize=False).run(None, {"input": x})[0]
        want = session(deploy_onnx.build_onnx(model, "packed"), optimize=False).run(None, {"input": x})[0]
        if fused:  # AvgPoolBinarize may round its sums differently (not promised bit for bit)
            np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        else:
            np.testing.assert_array_equal(got, want)
    # a padding that reaches a whole window (pads >= kernel): AveragePool + Binarize
    wide = ir.DeployModel.from_layers("toy", [ir.AvgPool((2, 2), (1, 1), (0, 2, 0, 0)), binary(4, 40), binary(40, 10),
                                  ir.Flatten()], input_shape=(4, 6, 6))
    assert bit_links(wide, ir.AvgPool) == {} and bit_links(wide) == {1: 2}
    m = deploy_onnx.build_onnx(wide, "packed-bits")
    assert [n.op_type for n in m.graph.node] == ["AveragePool", "Binarize", "XnorConv2dBitsBinarize",
                                                 "XnorConv2dBits", "Flatten"]
    # the packed form has no bit ops to fuse into
    assert "AvgPoolBinarize" not in {n.op_type for n in deploy_onnx.build_onnx(model, "packed").graph.node}


@pytest.fixture(scope="module")
def calibrated_nin():
    """nin_xnornet with BN statistics measured on the inputs' own distribution (standard
    normal), so activations straddle the thresholds."""
    calib = np.random.default_rng(3).standard_normal((256, 3, 32, 32)).astype(np.float32)
    return fold_model(calibrated("nin_xnornet", REAL_CFG["nin_xnornet"], calib, seed=4), arch="nin_xnornet")


def _packed_bits_vs_packed(deploy, make_session, x):
    """Run both forms, returning both logits and, per image, whether the bits of a layer that
    a float op feeds differ (layer 1's or layer 6's input).

    packed-bits starts with ConvBinarize (conv0 + ReLU + layer 1's binarization); packed with
    Conv, Relu, then layer 1 binarizes the float output (y >= threshold). Likewise layer 5's
    float output goes through AvgPoolBinarize (pool + layer 6's binarization) in packed-bits,
    AveragePool then layer 6's own binarization in packed. Each form's bit tensors must equal
    the float64 reference of its own float input wherever it is decided beyond float rounding."""
    first, layer1 = deploy.layers[0], deploy.layers[1]
    k = next(i for i, layer in enumerate(deploy.layers) if isinstance(layer, ir.AvgPool))
    pool, reader = deploy.layers[k], deploy.layers[k + 1]
    assert isinstance(reader, ir.BinaryConv)
    bits_model, packed_model = deploy_onnx.build_onnx(deploy, "packed-bits"), deploy_onnx.build_onnx(deploy, "packed")
    fused, relu = bits_model.graph.node[0], packed_model.graph.node[1]
    assert fused.op_type == "ConvBinarize" and relu.op_type == "Relu"
    avg_bits = next(n for n in bits_model.graph.node if n.op_type == "AvgPoolBinarize")
    avg_packed = next(n for n in packed_model.graph.node if n.op_type == "AveragePool")
    f32, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    bits_outs = [(fused.output[0], i32), (avg_bits.input[0], f32), (avg_bits.output[0], i32)]
    packed_outs = [(relu.output[0], f32), (avg_packed.input[0], f32), (avg_packed.output[0], f32)]
    for model, outs in ((bits_model, bits_outs), (packed_model, packed_outs)):
        model.graph.output.extend(onnx.helper.make_tensor_value_info(name, t, None) for name, t in outs)
    logits_bits, words_bits, pool_in_bits, pool_words_bits = make_session(bits_model).run(
        ["logits"] + [name for name, _ in bits_outs], {"input": x})
    logits_packed, y_packed, pool_in_packed, pooled_packed = make_session(packed_model).run(
        ["logits"] + [name for name, _ in packed_outs], {"input": x})
    # conv0 -> layer 1's bits
    words_packed = binarize_bits(y_packed, layer1.threshold)
    m = first.out_channels
    want = conv_binarize(x, first.weight, first.bias, layer1.threshold, relu=first.relu, **_float_conv_attrs(first))
    decided = _decided(x, first, layer1.threshold)
    assert decided.mean() > 0.99
    for words in (words_bits, words_packed):
        _assert_bits_agree_where_decided(words, want, decided, m)
    pm1 = unpack_activation_bits(words_bits, m)
    assert 0.1 < (pm1 == 1).mean() < 0.9  # layer 1's binarization is not degenerate
    differ = (pm1 != unpack_activation_bits(words_packed, m)).any(axis=(1, 2, 3))
    # layers 1 to 5 are bit-exact in both forms: images whose layer-1 bits agree reach the pool
    # with the same floats
    np.testing.assert_array_equal(pool_in_bits[~differ], pool_in_packed[~differ])
    # the pool -> layer 6's bits, each form against the reference of its own pool input
    c = reader.in_channels
    pool_words_packed = binarize_bits(pooled_packed, reader.threshold)
    for words, pool_in in ((pool_words_bits, pool_in_bits), (pool_words_packed, pool_in_packed)):
        want = avg_pool_binarize(pool_in, reader.threshold, **_pool_kwargs(pool))
        decided = _avg_decided(pool_in, pool, reader.threshold)
        assert decided.mean() > 0.99
        _assert_bits_agree_where_decided(words, want, decided, c)
    pm1 = unpack_activation_bits(pool_words_bits, c)
    assert 0.1 < (pm1 == 1).mean() < 0.9  # layer 6's binarization is not degenerate
    differ |= (pm1 != unpack_activation_bits(pool_words_packed, c)).any(axis=(1, 2, 3))
    # everything after those bits is bit-exact in both forms: images whose bits agree get the
    # same logits, bit for bit
    np.testing.assert_array_equal(logits_bits[~differ], logits_packed[~differ])
    return logits_bits, logits_packed, differ


# Why not bit for bit: ConvBinarize's and AvgPoolBinarize's float sums may be ordered
# differently from ORT's Conv and AveragePool (the library's kernels do), so a bit of layer 1's
# or layer 6's input flips where the float value lies within float rounding of its threshold,
# and an untrained net amplifies one flip: shifting conv0's thresholds by 1e-6 changed 3 of 64
# images' logits by up to a quarter of the logits' std. So: flips only where undecided
# (above), exact logits wherever no bit flipped, and top-1 agreement with a margin for the
# rare flipped image.


def test_packed_bits_matches_packed_on_stock_ort(calibrated_nin):
    """Through the function bodies (unoptimised). ConvBinarize's and AvgPoolBinarize's bodies
    use ORT's own Conv and AveragePool, so today no bit flips here, but the form no longer
    promises it."""
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    logits_bits, logits_packed, differ = _packed_bits_vs_packed(
        calibrated_nin, lambda m: session(m, optimize=False), x)
    assert_outputs_depend_on_input(logits_packed)
    assert differ.mean() <= 0.05
    np.testing.assert_array_equal(logits_bits.argmax(1), logits_packed.argmax(1))
    assert np.median(np.abs(logits_bits - logits_packed)) <= 1e-6
    bits = session(deploy_onnx.build_onnx(calibrated_nin, "packed-bits"), optimize=False)
    packed = session(deploy_onnx.build_onnx(calibrated_nin, "packed"), optimize=False)
    for n in (1, 5):  # batch sizes other than the probe's
        np.testing.assert_array_equal(bits.run(None, {"input": x[:n]})[0].argmax(1),
                                      packed.run(None, {"input": x[:n]})[0].argmax(1))


def test_packed_bits_matches_packed_on_the_library(calibrated_nin):
    """The same library for both forms, as ort-xnor runs them: ConvBinarize's and
    AvgPoolBinarize's own kernels against ORT's Conv + Relu and AveragePool, and the library's
    binary layers."""
    make = _library_session_factory("ConvBinarize", "AvgPoolBinarize")
    x = np.random.default_rng(1).standard_normal((200, 3, 32, 32)).astype(np.float32)
    logits_bits, logits_packed, differ = _packed_bits_vs_packed(calibrated_nin, make, x)
    assert differ.mean() <= 0.05
    assert (logits_bits.argmax(1) == logits_packed.argmax(1)).mean() >= 0.99
    assert np.median(np.abs(logits_bits - logits_packed)) <= 1e-6


def test_ort_engine_runs_packed_bits_through_function_bodies(small_models, tmp_path):
    from xnorpipe.runtime.ort_engine import OrtEngine

    _, deploy = small_models["nin_xnornet"]
    files = {f.form: f for f in deploy_onnx.export(deploy, ["packed", "packed-bits"], tmp_path)}
    assert files["packed-bits"].custom_nodes == 7 and files["packed-bits"].bit_nodes == 3
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    bits = OrtEngine(onnx_path=str(files["packed-bits"].path), threads=1, optimization="none")
    d = bits.describe()
    assert d["form"] == "packed-bits" and d["xnor_nodes"] == 7 and "library" not in d
    packed = OrtEngine(onnx_path=str(files["packed"].path), threads=1, optimization="none")
    # not promised bit for bit: ConvBinarize and AvgPoolBinarize may round differently (see above)
    got, want_packed = bits(x), packed(x)
    np.testing.assert_array_equal(got.argmax(1), want_packed.argmax(1))
    np.testing.assert_allclose(got, want_packed, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        want = DeployModule(deploy)(torch.from_numpy(x)).numpy()
    assert_outputs_depend_on_input(want)
    np.testing.assert_allclose(OrtEngine(onnx_path=str(files["packed-bits"].path))(x), want, rtol=1e-4, atol=1e-4)


def test_ort_xnor_engine_forms_and_library_check(small_models, monkeypatch):
    """ort-xnor emits packed-bits unless told packed, and refuses a library that lacks an op
    of the model (ORT would silently run that op's function body)."""
    from test_cpu_kernels import _library

    from xnorpipe.errors import XnorpipeError
    from xnorpipe.runtime import ort_engine

    _library()  # skips where the library is not built
    _, deploy = small_models["nin_xnornet"]
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    packed = ort_engine.OrtXnorEngine(model=deploy, threads=1, form="packed")
    assert packed.describe()["form"] == "packed" and packed.describe()["xnor_nodes"] == 7
    with pytest.raises(XnorpipeError, match="packed or packed-bits"):
        ort_engine.OrtXnorEngine(model=deploy, form="portable")
    ops = deploy_onnx.CONV_OPS + deploy_onnx.BIT_OPS
    if all(ort_engine._library_implements(packed.library, op) for op in ops):
        bits = ort_engine.OrtXnorEngine(model=deploy, threads=1)
        assert bits.describe()["form"] == "packed-bits"
        # the ConvBinarize and AvgPoolBinarize kernels round their own way: not bit for bit (see above)
        got, want = bits(x), packed(x)
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    else:
        with pytest.raises(XnorpipeError, match="does not implement"):
            ort_engine.OrtXnorEngine(model=deploy)
    monkeypatch.setattr(ort_engine, "_library_implements", lambda lib, op: op == "XnorConv2d")
    with pytest.raises(XnorpipeError) as e:
        ort_engine.OrtXnorEngine(model=deploy)
    msg = str(e.value)
    assert "\n" not in msg and "xnorpipe::AvgPoolBinarize" in msg and "--xnor-form packed" in msg
    ort_engine.OrtXnorEngine(model=deploy, form="packed")  # XnorConv2d only: fine
