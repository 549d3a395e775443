"""Channel shuffles folded into the layers around them (fold.fold_shuffles): exact, and what it
buys nin_gc_xnornet's packed-bits graph (every binary layer reads bits, no shuffle between them).

The oracle is the IR without the pass (`fold_model(..., channel_shuffles=False)`): the same model
with its shuffles as layers."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import assert_outputs_depend_on_input, binary_conv_inputs, bit_links, require_ort_library

from xnorpipe.deploy import ir
from xnorpipe.deploy import onnx as deploy_onnx
from xnorpipe.deploy.fold import fold_model, fold_shuffles
from xnorpipe.deploy.module import DeployModule
from xnorpipe.deploy.packing import pack_weights
from xnorpipe.nn import ChannelShuffle
from xnorpipe.sources import load_source_model

ARCH = "nin_gc_xnornet"


def _binary(rng, c, m, k=1, g=1, pads=(0, 0, 0, 0)):
    threshold = rng.standard_normal(c).astype(np.float32)
    return ir.BinaryConv(weight_bits=pack_weights(rng.random((m, c // g, k, k)) < 0.5), threshold=threshold,
                         scale=rng.random(m).astype(np.float32) + 0.1, bias=rng.standard_normal(m).astype(np.float32),
                         kernel_shape=(k, k), pads=pads, group=g, relu=True)


def _float(rng, c, m, k=1, g=1):
    return ir.FloatConv(weight=rng.standard_normal((m, c // g, k, k)).astype(np.float32),
                        bias=rng.standard_normal(m).astype(np.float32), pads=(k // 2,) * 4, group=g, relu=True)


def _run(model: ir.DeployModel, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return DeployModule(model)(torch.from_numpy(x)).numpy()


def test_shuffle_order_is_the_model_shuffle():
    x = torch.randn(2, 24, 3, 3)
    for groups in (1, 2, 3, 4, 8, 24):
        assert torch.equal(ChannelShuffle(groups)(x), x[:, torch.from_numpy(ir.shuffle_order(24, groups))])
    with pytest.raises(ValueError):
        ir.shuffle_order(24, 5)


def _toy_cases(rng):
    pool = ir.MaxPool((2, 2), (2, 2))
    return {  # layers -> (where the shuffle goes, exact)
        # a group-1 producer: its filters permuted (through a pool)
        "group1_producer": ([_binary(rng, 8, 48, 3, pads=(1, 1, 1, 1)), pool, ir.ChannelShuffle(4),
                             _binary(rng, 48, 24, g=2), ir.Flatten()], "producer", True),
        # a grouped binary producer with the shuffle's groups: shuffle_output
        "grouped_producer": ([_binary(rng, 8, 64, 3, pads=(1, 1, 1, 1)), _binary(rng, 64, 64, g=4), pool,
                              ir.ChannelShuffle(4), _binary(rng, 64, 32, 3, g=2, pads=(1, 1, 1, 1)), ir.Flatten()],
                             "shuffle_output", True),
        # other groups than the producer's: the group-1 binary consumer's inputs permuted
        "binary_consumer": ([_binary(rng, 8, 48, g=2), ir.ChannelShuffle(3), _binary(rng, 48, 16, 3),
                             ir.Flatten()], "consumer", True),
        # a float group-1 consumer after a grouped float conv: inputs permuted (float order)
        "float_consumer": ([_float(rng, 8, 40, 3, g=2), ir.ChannelShuffle(2), _float(rng, 40, 10), ir.Flatten()],
                           "consumer", False),
        # grouped float convs on both sides: nothing can take it
        "kept": ([_float(rng, 8, 40, 3, g=2), ir.ChannelShuffle(2), _float(rng, 40, 10, g=2), ir.Flatten()],
                 "kept", False),
    }


@pytest.mark.parametrize("case", ["group1_producer", "grouped_producer", "binary_consumer", "float_consumer",
                                  "kept"])
def test_fold_shuffles_moves_each_shuffle_where_it_is_exact(case):
    rng = np.random.default_rng(3)
    layers, where, exact = _toy_cases(rng)[case]
    model = ir.DeployModel.from_layers("toy", layers, input_shape=(8, 6, 6))
    folded = fold_shuffles(model)
    shuffles = [layer for layer in folded.layers if isinstance(layer, ir.ChannelShuffle)]
    assert len(shuffles) == (1 if where == "kept" else 0)
    assert any(getattr(layer, "shuffle_output", False) for layer in folded.layers) == (where == "shuffle_output")
    assert [type(a) for a in model.layers if not isinstance(a, ir.ChannelShuffle)] == \
        [type(b) for b in folded.layers if not isinstance(b, ir.ChannelShuffle)]
    assert any(isinstance(layer, ir.ChannelShuffle) for layer in model.layers)  # the input is left as it was
    x = rng.standard_normal((16, 8, 6, 6)).astype(np.float32)
    want, got = _run(model, x), _run(folded, x)
    assert_outputs_depend_on_input(want)
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # every form computes the folded model as the unfolded one (stock ORT, function bodies)
    for form in ("portable", "packed-bits") if any(isinstance(a, ir.BinaryConv) for a in layers) else ("portable",):
        m = deploy_onnx.build_onnx(folded, form)
        deploy_onnx.check_onnx(m)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        y = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
            None, {"input": x})[0]
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- nin_gc_xnornet


@pytest.fixture(scope="module")
def nin_gc():
    """The full-width nin_gc_xnornet, random weights with BatchNorm calibrated (sources.py), folded
    with and without the pass."""
    model, meta = load_source_model(ARCH, random_init=True)
    return (fold_model(model, arch=ARCH, metadata=meta),
            fold_model(model, arch=ARCH, metadata=meta, channel_shuffles=False))


@pytest.fixture(scope="module")
def images(cifar_tarball):
    from xnorpipe.bench import normalised_images
    from xnorpipe.data import load_cifar10

    return normalised_images(load_cifar10(cifar_tarball, progress=False).test_images[:48])


def _binary_inputs(model: ir.DeployModel, x: np.ndarray) -> list[torch.Tensor]:
    """What each binary layer of the deploy module binarizes: its input >= its thresholds."""
    module = DeployModule(model)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0] >= mod.threshold.view(1, -1, 1, 1)))
             for m in module.layers if type(m).__name__ == "_BinaryConv"]
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    for h in hooks:
        h.remove()
    return seen, logits


def test_nin_gc_fold_removes_every_shuffle_and_changes_no_bit(nin_gc, images):
    folded, plain = nin_gc
    assert sum(isinstance(layer, ir.ChannelShuffle) for layer in plain.layers) == 7
    assert not any(isinstance(layer, ir.ChannelShuffle) for layer in folded.layers)
    binary = [layer for layer in folded.layers if isinstance(layer, ir.BinaryConv)]
    assert [layer.shuffle_output for layer in binary] == [True] * 7
    got_bits, got = _binary_inputs(folded, images)
    want_bits, want = _binary_inputs(plain, images)
    assert_outputs_depend_on_input(want)
    assert len(got_bits) == len(want_bits) == 7
    for a, b in zip(got_bits, want_bits, strict=True):
        assert torch.equal(a, b)  # every binary layer reads the same bits
        assert 0.05 < float(a.float().mean()) < 0.95, "a binary layer's input is (almost) constant"
    np.testing.assert_array_equal(got, want)  # the float layers see the same values in the same order


def test_nin_gc_widths_and_the_bit_link_rule(nin_gc):
    """The rule of the 0.2 bit ops, (C/group) % 32 == 0, fails for L3 and L6 (16 channels a
    group); the bit ops now read groups wherever they sit in the words, so every binary layer
    reads bits all the same."""
    folded, _ = nin_gc
    binary = [(i, layer) for i, layer in enumerate(folded.layers) if isinstance(layer, ir.BinaryConv)]
    per_group = [layer.in_channels // layer.group for _, layer in binary]
    assert per_group == [128, 128, 16, 128, 128, 16, 128]
    links = bit_links(folded)
    readers = set(links.values()) | set(bit_links(folded, ir.FloatConv).values()) | \
        set(bit_links(folded, ir.AvgPool).values())
    assert readers == {i for i, _ in binary}


def _node_counts(m: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in m.graph.node))


def test_nin_gc_packed_bits_graph_has_no_shuffle_and_reads_bits(nin_gc):
    folded, plain = nin_gc
    m = deploy_onnx.build_onnx(folded, "packed-bits")
    deploy_onnx.check_onnx(m)
    assert _node_counts(m) == {"ConvBinarize": 1, "XnorConv2dBitsBinarize": 5, "XnorConv2dBits": 2, "BitMaxPool": 1,
                               "AvgPoolBinarize": 1, "Conv": 1, "Relu": 1, "AveragePool": 1, "Flatten": 1}
    shuffles = [onnx.helper.get_attribute_value(a) for n in m.graph.node if n.op_type.startswith("XnorConv2d")
                for a in n.attribute if a.name == "shuffle_output"]
    assert shuffles == [1] * 7
    # without the pass: a Reshape/Transpose/Reshape between every two binary layers, floats between
    before = _node_counts(deploy_onnx.build_onnx(plain, "packed-bits"))
    assert before["Transpose"] == 7 and before["XnorConv2d"] == 6 and before.get("XnorConv2dBitsBinarize", 0) == 0
    # the packed and portable forms keep their graphs: the shuffle is emitted after the layer
    for form in ("packed", "portable"):
        assert _node_counts(deploy_onnx.build_onnx(folded, form)) == _node_counts(deploy_onnx.build_onnx(plain, form))


def _session(m: onnx.ModelProto, library: str | None, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if library:
        so.register_custom_ops_library(library)
    else:  # stock ORT, function bodies, bit-exact without the optimiser's Conv/Mul fusion
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def test_nin_gc_packed_bits_library_and_function_bodies_agree(nin_gc, images):
    """The library's kernels (one and two threads) and stock ORT's function bodies on the folded
    packed-bits model, against the unfolded IR's deploy module. The float layers that write bits
    (ConvBinarize, AvgPoolBinarize) may round differently from PyTorch: within the contract."""
    library = require_ort_library()
    folded, plain = nin_gc
    m = deploy_onnx.build_onnx(folded, "packed-bits")
    with torch.no_grad():
        want = DeployModule(plain)(torch.from_numpy(images)).numpy()
    bodies = _session(m, None).run(None, {"input": images})[0]
    one = _session(m, library).run(None, {"input": images})[0]
    two = _session(m, library, threads=2).run(None, {"input": images})[0]
    np.testing.assert_array_equal(one, two)
    for got, ref in ((bodies, want), (one, want), (one, bodies)):
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.97
        assert np.median(np.abs(got - ref)) <= 1e-4


def test_library_refuses_a_bad_shuffle_output():
    library = require_ort_library()
    rng = np.random.default_rng(0)
    layer = _binary(rng, 64, 32, g=2)
    for value, message in ((2, "shuffle_output must be 0 or 1"), (1.0, "must be an int")):
        m = deploy_onnx.single_node_model(deploy_onnx.CONV_BITS, (1, 2, 4, 4),
                                          binary_conv_inputs(layer, reads_bits=True),
                                          deploy_onnx.layer_attrs(layer, reads_bits=True))
        node = m.graph.node[0]
        node.attribute.append(onnx.helper.make_attribute("shuffle_output", value))
        del m.functions[:]
        with pytest.raises(Exception, match=message):
            _session(m, library)
