"""xnorpipe.gpu.onnx_runner's standard ops beyond the NIN chain (Gemm, Concat, PRelu, Clip,
AveragePool with any kernel and padding, GlobalAveragePool, broadcasting Add), each against
stock ONNX Runtime on small models built with onnx.helper, and graphs that are not a chain (one
tensor feeding several nodes). No xnorpipe node: no kernel set, no Triton, CPU only."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import assert_outputs_depend_on_input
from onnx import TensorProto, helper, numpy_helper

from xnorpipe.errors import XnorpipeError
from xnorpipe.gpu.onnx_runner import OnnxRunner

RNG = np.random.default_rng(0)


def _const(name: str, shape, scale: float = 1.0) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, x_shape, inits=(), opset: int = 18) -> onnx.ModelProto:
    """A float model of input X (`x_shape`) whose last node writes Y (shape inferred)."""
    graph = helper.make_graph(nodes, "ops", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], list(inits))
    m = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), strict_mode=True)
    onnx.checker.check_model(m, full_check=True)
    return m


def _ort(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the ops as written
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]


def _check(m: onnx.ModelProto, x_shape) -> np.ndarray:
    x = RNG.standard_normal(x_shape).astype(np.float32)
    want = _ort(m, x)
    got = OnnxRunner(m, device="cpu")(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return got


def _pool(kernel, strides, pads, count_include_pad):
    return helper.make_node("AveragePool", ["X"], ["Y"], kernel_shape=kernel, strides=strides, pads=pads,
                            count_include_pad=count_include_pad)


CASES = {
    "gemm": (lambda: _model([helper.make_node("Gemm", ["X", "W", "C"], ["Y"], transB=1)], [4, 16],
                            [_const("W", (10, 16)), _const("C", (10,))]), [4, 16]),
    "gemm_no_bias": (lambda: _model([helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1, alpha=1.0, beta=1.0,
                                                      transA=0)], [3, 8], [_const("W", (5, 8))]), [3, 8]),
    "concat_channels": (lambda: _model([helper.make_node("Conv", ["X", "W"], ["A"], kernel_shape=[1, 1]),
                                        helper.make_node("Concat", ["X", "A", "X"], ["Y"], axis=1)],
                                       [2, 3, 5, 6], [_const("W", (4, 3, 1, 1))]), [2, 3, 5, 6]),
    "prelu_per_channel": (lambda: _model([helper.make_node("PRelu", ["X", "S"], ["Y"])], [2, 4, 3, 5],
                                         [_const("S", (4, 1, 1))]), [2, 4, 3, 5]),
    "prelu_scalar": (lambda: _model([helper.make_node("PRelu", ["X", "S"], ["Y"])], [2, 4, 3, 5],
                                    [numpy_helper.from_array(np.array(0.25, np.float32), "S")]), [2, 4, 3, 5]),
    "clip_min_max": (lambda: _model([helper.make_node("Clip", ["X", "lo", "hi"], ["Y"])], [2, 3, 4, 4],
                                    [numpy_helper.from_array(np.array(-1, np.float32), "lo"),
                                     numpy_helper.from_array(np.array(0.5, np.float32), "hi")]), [2, 3, 4, 4]),
    "clip_max_only": (lambda: _model([helper.make_node("Clip", ["X", "", "hi"], ["Y"])], [2, 3, 4, 4],
                                     [numpy_helper.from_array(np.array(0.3, np.float32), "hi")]), [2, 3, 4, 4]),
    "clip_min_only": (lambda: _model([helper.make_node("Clip", ["X", "lo"], ["Y"])], [2, 3, 4, 4],
                                     [numpy_helper.from_array(np.array(-0.2, np.float32), "lo")]), [2, 3, 4, 4]),
    "clip_neither": (lambda: _model([helper.make_node("Clip", ["X"], ["Y"])], [2, 3], []), [2, 3]),
    "avgpool_whole_map": (lambda: _model([_pool([5, 7], [1, 1], [0, 0, 0, 0], 0),
                                          ], [2, 3, 5, 7]), [2, 3, 5, 7]),
    "avgpool_whole_map_flatten": (lambda: _model([helper.make_node("AveragePool", ["X"], ["P"], kernel_shape=[6, 4]),
                                                  helper.make_node("Flatten", ["P"], ["Y"], axis=1)],
                                                 [2, 3, 6, 4]), [2, 3, 6, 4]),
    "avgpool_asymmetric_exclude_pad": (lambda: _model([_pool([3, 2], [2, 1], [1, 0, 0, 1], 0)], [2, 3, 7, 6]),
                                       [2, 3, 7, 6]),
    "avgpool_asymmetric_include_pad": (lambda: _model([_pool([3, 2], [2, 1], [1, 0, 0, 1], 1)], [2, 3, 7, 6]),
                                       [2, 3, 7, 6]),
    "avgpool_wide_pad_exclude_pad": (lambda: _model([_pool([3, 3], [1, 1], [2, 2, 2, 2], 0)], [1, 2, 5, 5]),
                                     [1, 2, 5, 5]),
    "avgpool_symmetric_exclude_pad": (lambda: _model([_pool([3, 3], [2, 2], [1, 1, 1, 1], 0)], [2, 3, 8, 8]),
                                      [2, 3, 8, 8]),
    "global_average_pool": (lambda: _model([helper.make_node("GlobalAveragePool", ["X"], ["Y"])], [2, 5, 3, 4]),
                            [2, 5, 3, 4]),
    "add_broadcast": (lambda: _model([helper.make_node("Add", ["X", "B"], ["Y"])], [2, 4, 3, 3],
                                     [_const("B", (4, 1, 1))]), [2, 4, 3, 3]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime(case):
    build, x_shape = CASES[case]
    _check(build(), x_shape)


def test_residual_graph_with_every_new_op():
    """A Bi-Real-style block and head: X feeds a conv and the residual Add; the Add feeds PRelu
    and a Concat; then Clip (Hardtanh), a whole-map AveragePool, Flatten and a Linear (Gemm)."""
    nodes = [helper.make_node("Conv", ["X", "W1", "B1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["a", "X"], ["r"]),
             helper.make_node("PRelu", ["r", "S"], ["p"]),
             helper.make_node("Concat", ["p", "r"], ["c"], axis=1),
             helper.make_node("Clip", ["c", "lo", "hi"], ["h"]),
             helper.make_node("AveragePool", ["h"], ["g"], kernel_shape=[6, 5]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W2", "B2"], ["Y"], transB=1)]
    inits = [_const("W1", (4, 4, 3, 3), 0.3), _const("B1", (4,)), _const("S", (4, 1, 1)),
             numpy_helper.from_array(np.array(-1, np.float32), "lo"),
             numpy_helper.from_array(np.array(1, np.float32), "hi"), _const("W2", (7, 8)), _const("B2", (7,))]
    m = _model(nodes, [3, 4, 6, 5], inits)
    y = _check(m, [3, 4, 6, 5])
    assert y.shape == (3, 7)
    assert_outputs_depend_on_input(y)
    runner = OnnxRunner(m, device="cpu")
    values = runner.trace(torch.zeros(3, 4, 6, 5))
    assert {"a", "r", "p", "c", "h", "g", "f", "Y"} <= set(values)  # every node ran once, in graph order


@pytest.mark.parametrize("node,needle", [
    (helper.make_node("Gemm", ["X", "W"], ["Y"]), "transB=0"),
    (helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1, alpha=2.0), "alpha=2.0"),
    (helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1, transA=1), "transA=1"),
    (helper.make_node("Concat", ["X", "X"], ["Y"]), "axis"),
    (helper.make_node("Concat", [], ["Y"], axis=1), "1 or more inputs"),
])
def test_unsupported_attributes_are_one_line(node, needle):
    inits = [_const("W", (5, 8))] if node.op_type == "Gemm" else []
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [3, 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(XnorpipeError) as e:
        OnnxRunner(m, device="cpu")
    assert needle in e.value.message and node.op_type in e.value.message and "\n" not in e.value.message


def test_clip_attributes_of_old_opsets_are_refused():
    m = _model([helper.make_node("Clip", ["X"], ["Y"], min=-1.0, max=1.0)], [2, 3], opset=6)
    with pytest.raises(XnorpipeError, match="opset 11") as e:
        OnnxRunner(m, device="cpu")
    assert "\n" not in e.value.message


def test_bad_shapes_at_run_time_are_one_line():
    m = CASES["gemm"][0]()
    runner = OnnxRunner(m, device="cpu")
    with pytest.raises(XnorpipeError, match="2-D") as e:
        runner(torch.zeros(2, 4, 16))
    assert "Gemm" in e.value.message and "\n" not in e.value.message
    clip = _model([helper.make_node("Clip", ["X", "lo"], ["Y"])], [2, 3], [_const("lo", (3,))])
    with pytest.raises(XnorpipeError, match="min must be a scalar"):
        OnnxRunner(clip, device="cpu")(torch.zeros(2, 3))
