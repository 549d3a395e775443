"""The float layers of the packed-bits form that write bits (not a test): ConvBinarize vs ONNX
Conv + Relu + Binarize, and AvgPoolBinarize vs ONNX AveragePool + Binarize, at nin_xnornet's
shapes (conv0: 3->192 5x5 @32x32; the pool before L6: 192 @16x16, 3x3 s2 p1). All on ONNX
Runtime with the xnorpipe library (Binarize is the library's too), NCHWc off as in ort-xnor.
Also counts the output bits that differ between the two (float rounding near a threshold).

    PYTHONPATH=. python benchmarks/xnor_cpu/bench_fused_float_layers.py [--threads 1] [--iters 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from xnorpipe.native import ort_library_path


def _model(nodes, inits, x_shape):
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", *x_shape])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("xnorpipe", 1)],
                             ir_version=10).SerializeToString()


def variants(rng):
    w = (rng.standard_normal((192, 3, 5, 5)) * 0.2).astype(np.float32)
    b = (rng.standard_normal(192) * 0.1).astype(np.float32)
    thr = (rng.standard_normal(192) * 0.3).astype(np.float32)
    conv = dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2])
    pool = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    yield ("conv0 3->192 5x5 @32x32", (3, 32, 32), {
        "Conv + Relu + Binarize": _model([helper.make_node("Conv", ["X", "W", "B"], ["c"], **conv),
                                          helper.make_node("Relu", ["c"], ["r"]),
                                          helper.make_node("Binarize", ["r", "thr"], ["Y"], domain="xnorpipe")],
                                         dict(W=w, B=b, thr=thr), (3, 32, 32)),
        "ConvBinarize": _model([helper.make_node("ConvBinarize", ["X", "W", "B", "thr"], ["Y"], domain="xnorpipe",
                                                 relu=1, **conv)], dict(W=w, B=b, thr=thr), (3, 32, 32))})
    yield ("avgpool 192 @16x16 3x3 s2 p1", (192, 16, 16), {
        "AveragePool + Binarize": _model([helper.make_node("AveragePool", ["X"], ["p"], count_include_pad=1, **pool),
                                          helper.make_node("Binarize", ["p", "thr"], ["Y"], domain="xnorpipe")],
                                         dict(thr=thr), (192, 16, 16)),
        "AvgPoolBinarize": _model([helper.make_node("AvgPoolBinarize", ["X", "thr"], ["Y"], domain="xnorpipe", **pool)],
                                  dict(thr=thr), (192, 16, 16))})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=300)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print("| layer | batch | variant | p50 us | speed-up | differing bits |\n|---|---|---|---|---|---|")
    for layer, x_shape, models in variants(rng):
        sessions = {}
        for name, model in models.items():
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
            so.register_custom_ops_library(ort_library_path())
            so.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
            sessions[name] = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        for batch in (1, 64):
            x = rng.standard_normal((batch, *x_shape)).astype(np.float32)
            if layer.startswith("avgpool"):
                x = np.maximum(x, 0)  # it follows a ReLU
            out, times = {}, {}
            iters = args.iters if batch == 1 else max(10, args.iters // 20)
            for name, s in sessions.items():
                out[name] = s.run(None, {"X": x})[0]
                for _ in range(5):
                    s.run(None, {"X": x})
                ts = []
                for _ in range(iters):
                    t0 = time.perf_counter()
                    s.run(None, {"X": x})
                    ts.append(time.perf_counter() - t0)
                times[name] = float(np.median(ts)) * 1e6
            base, fused = list(models)
            diff = int(np.unpackbits(np.bitwise_xor(out[base], out[fused]).view(np.uint8)).sum())
            for name in models:
                print(f"| {layer} | {batch} | {name} | {times[name]:.1f} | {times[base] / times[name]:.2f}x | "
                      f"{diff if name == fused else ''} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
