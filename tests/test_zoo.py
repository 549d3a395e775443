"""Models the project has never seen, written from the public layers (tests/zoo.py): each one
folds, every ONNX form runs on stock ONNX Runtime and on the custom-op library, and matches the
deploy module: binary layers bit for bit (each on the runtime's own input), logits within the
contract's tolerance, on inputs whose logits differ. Unsupported layers fail in one line."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import zoo
from conftest import assert_outputs_depend_on_input, require_ort_library
from onnx import helper

import xnorpipe
from xnorpipe.deploy import ir
from xnorpipe.deploy import onnx as deploy_onnx
from xnorpipe.deploy.fold import fold_model
from xnorpipe.deploy.module import DeployModule
from xnorpipe.deploy.packing import unpack_weights
from xnorpipe.deploy.reference import xnor_conv2d_pm1
from xnorpipe.errors import XnorpipeError
from xnorpipe.nn import BinaryActivation, BinaryConv2d


@pytest.fixture(scope="module")
def folded():
    out = {}
    for name, cls in zoo.ZOO.items():
        torch.manual_seed(0)
        model = zoo.calibrated(cls())
        out[name] = (model, fold_model(model, arch=name.lower(), input_shape=zoo.INPUT_SHAPE))
    return out


def _inputs(batch=6):
    return torch.randn(batch, *zoo.INPUT_SHAPE, generator=torch.Generator().manual_seed(7))


def _session(m: onnx.ModelProto, library: str | None = None, optimize: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:  # the optimiser folds the function body's scale Mul into its conv (docs/XNORCONV2D.md)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if library:
        so.register_custom_ops_library(library)
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _close(got, want, what):
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1), err_msg=what)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=what)


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_fold_equals_the_model(name, folded):
    model, deploy = folded[name]
    x = _inputs(16)
    with torch.no_grad():
        want, got = model(x).numpy(), DeployModule(deploy)(x).numpy()
    assert_outputs_depend_on_input(want)
    _close(got, want, name)
    assert any(isinstance(op, ir.BinaryConv) for op in deploy.layers)


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_every_form_on_stock_ort_and_the_library(name, folded):
    library = require_ort_library()
    _, deploy = folded[name]
    x = _inputs()
    with torch.no_grad():
        want = DeployModule(deploy)(x).numpy()
    assert_outputs_depend_on_input(want)
    for form in deploy_onnx.FORMS:
        m = deploy_onnx.build_onnx(deploy, form)
        deploy_onnx.check_onnx(m)
        _close(_session(m).run(None, {"input": x.numpy()})[0], want, f"{name} {form} stock ORT")
        if form in ("packed", "packed-bits"):
            _close(_session(m, library).run(None, {"input": x.numpy()})[0], want, f"{name} {form} library")


def _with_outputs(m: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    out.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    return out


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_binary_layers_are_bit_exact_on_their_own_inputs(name, folded):
    """Each XnorConv2d node of the packed form, on stock ORT (function body, optimiser off) and
    on the library, equals the contract's reference applied to the input that runtime gave it
    (float layers before it may round differently; the binary layer itself may not)."""
    library = require_ort_library()
    _, deploy = folded[name]
    m = deploy_onnx.build_onnx(deploy, "packed")
    convs = [n for n in m.graph.node if n.op_type == "XnorConv2d"]
    layers = [n.op for n in deploy.nodes if isinstance(n.op, ir.BinaryConv)]
    assert len(convs) == len(layers) >= 1
    probes = [t for n in convs for t in (n.input[0], n.output[0]) if t != "logits"]
    x = _inputs().numpy()
    for lib in (None, library):
        values = dict(zip(probes, _session(_with_outputs(m, probes), lib, optimize=False).run(probes, {"input": x}),
                          strict=True))
        values["logits"] = _session(m, lib, optimize=False).run(None, {"input": x})[0]
        for node, layer in zip(convs, layers, strict=True):
            w = torch.from_numpy(unpack_weights(layer.weight_bits, layer.in_channels // layer.group))
            want = xnor_conv2d_pm1(torch.from_numpy(values[node.input[0]]), w, torch.from_numpy(layer.threshold),
                                   torch.from_numpy(layer.scale), torch.from_numpy(layer.bias),
                                   strides=layer.strides, pads=layer.pads, dilations=layer.dilations,
                                   group=layer.group, relu=layer.relu).numpy()
            np.testing.assert_array_equal(values[node.output[0]], want, err_msg=f"{name} {node.name} lib={bool(lib)}")


def test_packed_bits_links_follow_the_graph(folded):
    """Bits pass where every reader is binary: not on Bi-Real's residual streams (an Add reads
    them), but into a concat's readers' producers and between the shuffled grouped layers."""
    ops = {name: [n.op_type for n in deploy_onnx.build_onnx(deploy, "packed-bits").graph.node]
           for name, (_, deploy) in folded.items()}
    assert "XnorConv2dBitsBinarize" not in ops["Residual"] and ops["Residual"].count("XnorConv2d") == 2
    assert ops["GroupedShuffle"][:3] == ["ConvBinarize", "XnorConv2dBitsBinarize", "XnorConv2dBitsBinarize"]
    assert "Reshape" not in ops["GroupedShuffle"]  # both shuffles folded
    assert ops["Kernel5Stride2"].count("XnorConv2dBitsBinarize") == 1
    assert ops["LinearHead"].count("Gemm") == 2
    assert "Concat" in ops["Concat"]


def test_python_export_and_info_of_an_unregistered_model(tmp_path):
    model = zoo.calibrated(zoo.Residual())
    paths = xnorpipe.export(model, torch.zeros(1, *zoo.INPUT_SHAPE), out=tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"residual.{f}.onnx" for f in deploy_onnx.FORMS)
    m = deploy_onnx.load_onnx(tmp_path / "residual.packed.onnx")
    assert deploy_onnx.model_metadata(m)["xnorpipe.arch"] == "residual"
    x = _inputs()
    with torch.no_grad():
        _close(_session(m).run(None, {"input": x.numpy()})[0], model(x).numpy(), "xnorpipe.export")
    counts = xnorpipe.info(model, zoo.INPUT_SHAPE)
    assert counts["binary_macs"] == 2 * 32 * 32 * 9 * 16 * 16 and counts["params"] > 0
    with pytest.raises(XnorpipeError, match="example_input"):
        xnorpipe.export(model, torch.zeros(3), out=tmp_path)


class _Gated(nn.Module):
    def __init__(self, tail: nn.Module | None = None, forward=None):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.sign, self.bconv = BinaryActivation(), BinaryConv2d(8, 8, 3, padding=1)
        self.tail = tail or nn.Identity()
        self._forward = forward

    def forward(self, x):
        if self._forward is not None:
            return self._forward(self, x)
        return self.tail(self.bconv(self.sign(self.bn(self.conv(x))))).flatten(1)


UNSUPPORTED = {
    "sigmoid": (_Gated(nn.Sigmoid()), r"^cannot fold tail \(Sigmoid\): supported are Conv2d"),
    "scalar_mul": (_Gated(forward=lambda s, x: s.bconv(s.sign(s.bn(s.conv(x)))).mul(2).flatten(1)),
                   r"^cannot fold mul \(mul\): supported"),
    "unsigned_binary": (_Gated(forward=lambda s, x: s.bconv(s.conv(x)).flatten(1)),
                        r"^cannot fold bconv \(BinaryConv2d\): it reads conv, not a BinaryActivation"),
    "sign_into_float": (_Gated(forward=lambda s, x: s.conv(s.sign(x)).flatten(1)),
                        r"^cannot fold sign \(BinaryActivation\): it feeds conv"),
    "lone_batchnorm": (_Gated(forward=lambda s, x: s.bn(s.conv(x) + s.conv(x)).flatten(1)),
                       r"^cannot fold bn \(BatchNorm2d\): a BatchNorm folds into"),
    "cat_on_width": (_Gated(forward=lambda s, x: torch.cat([s.conv(x), s.conv(x)], 3).flatten(1)),
                     r"^cannot fold cat \(torch.cat on dim 3\)"),
    "pool_to_2": (_Gated(nn.AdaptiveAvgPool2d(2)), r"^cannot fold tail \(adaptive average pool to 2\)"),
    "branch_on_values": (_Gated(forward=lambda s, x: s.conv(x) if x.sum() > 0 else x),
                         r"^cannot trace _Gated with torch.fx"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_layers_fail_in_one_line(case):
    model, message = UNSUPPORTED[case]
    with pytest.raises(XnorpipeError, match=message) as e:
        fold_model(model.eval(), arch="gated", input_shape=(3, 8, 8))
    assert "\n" not in str(e.value)
