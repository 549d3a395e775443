"""Per-layer ONNX Runtime benchmark (not a test): xnorpipe::XnorConv2d from libxnorpipe_ort.so vs
the same layer as standard ops (GreaterOrEqual + Where -> Conv on +-1 float weights -> Mul -> Add
-> Relu, the "portable" form) on ORT's own FP32 kernels. One intra-op thread by default.

    PYTHONPATH=. python benchmarks/xnor_cpu/bench_ort_layers.py [--batch 1 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from xnorpipe.deploy.packing import pack_weights, unpack_weights
from xnorpipe.native import ort_library_path

LAYERS = [  # net, layer, cin, cout, k, pad, group, hw
    ("nin_xnornet", "L1", 192, 160, 1, 0, 1, 32), ("nin_xnornet", "L2", 160, 96, 1, 0, 1, 32),
    ("nin_xnornet", "L3", 96, 192, 3, 1, 1, 16), ("nin_xnornet", "L4", 192, 192, 1, 0, 1, 16),
    ("nin_xnornet", "L5", 192, 192, 1, 0, 1, 16), ("nin_xnornet", "L6", 192, 192, 3, 1, 1, 8),
    ("nin_xnornet", "L7", 192, 192, 1, 0, 1, 8),
    ("nin_gc_xnornet", "L1", 256, 256, 1, 0, 2, 32), ("nin_gc_xnornet", "L2", 256, 256, 1, 0, 2, 32),
    ("nin_gc_xnornet", "L3", 256, 512, 3, 1, 16, 16), ("nin_gc_xnornet", "L4", 512, 512, 1, 0, 4, 16),
    ("nin_gc_xnornet", "L5", 512, 512, 1, 0, 4, 16), ("nin_gc_xnornet", "L6", 512, 1024, 3, 1, 32, 8),
    ("nin_gc_xnornet", "L7", 1024, 1024, 1, 0, 8, 8),
]


def _model(nodes, inits, c, hw):
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", c, hw, hw])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("xnorpipe", 1)])
    m.ir_version = 8
    return m.SerializeToString()


def packed_model(w, thr, scale, bias, k, pad, group, c, hw):
    node = helper.make_node("XnorConv2d", ["X", "W", "T", "S", "B"], ["Y"], domain="xnorpipe", kernel_shape=[k, k],
                            pads=[pad] * 4, group=group, relu=1)
    inits = [numpy_helper.from_array(a, n) for n, a in zip("WTSB", (w, thr, scale, bias))]
    return _model([node], inits, c, hw)


def portable_model(w, thr, scale, bias, k, pad, group, c, hw):
    wf = unpack_weights(w, c // group)
    m = wf.shape[0]
    nodes = [
        helper.make_node("GreaterOrEqual", ["X", "T"], ["ge"]),
        helper.make_node("Where", ["ge", "one", "minus_one"], ["xb"]),
        helper.make_node("Conv", ["xb", "Wf"], ["s"], kernel_shape=[k, k], pads=[pad] * 4, group=group),
        helper.make_node("Mul", ["s", "S"], ["ys"]),
        helper.make_node("Add", ["ys", "B"], ["yb"]),
        helper.make_node("Relu", ["yb"], ["Y"]),
    ]
    inits = [numpy_helper.from_array(thr.reshape(1, c, 1, 1), "T"), numpy_helper.from_array(np.float32([1]), "one"),
             numpy_helper.from_array(np.float32([-1]), "minus_one"), numpy_helper.from_array(wf, "Wf"),
             numpy_helper.from_array(scale.reshape(1, m, 1, 1), "S"),
             numpy_helper.from_array(bias.reshape(1, m, 1, 1), "B")]
    return _model(nodes, inits, c, hw)


def best_time(sess, x, min_s):
    sess.run(None, {"X": x})
    best, total, reps = 1e9, 0.0, 0
    while total < min_s or reps < 3:
        t0 = time.perf_counter()
        sess.run(None, {"X": x})
        t = time.perf_counter() - t0
        best, total, reps = min(best, t), total + t, reps + 1
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-seconds", type=float, default=0.3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| net | layer | batch | XnorConv2d (ms) | G binary MAC/s | float portable (ms) | speed-up |\n"
          "|---|---|---|---|---|---|---|")
    for net, name, c, m, k, pad, group, hw in LAYERS:
        w = pack_weights(rng.random((m, c // group, k, k)) < 0.5)
        thr = rng.normal(0, 0.3, c).astype(np.float32)
        scale = rng.uniform(0.1, 1, m).astype(np.float32)
        bias = rng.normal(0, 0.1, m).astype(np.float32)
        sessions = []
        for build in (packed_model, portable_model):
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.register_custom_ops_library(ort_library_path())
            sessions.append(ort.InferenceSession(build(w, thr, scale, bias, k, pad, group, c, hw), so,
                                                 providers=["CPUExecutionProvider"]))
        for n in args.batch:
            x = rng.normal(0, 1, (n, c, hw, hw)).astype(np.float32)
            y0, y1 = (s.run(None, {"X": x})[0] for s in sessions)
            assert np.array_equal(y0, y1) or np.abs(y0 - y1).max() < 1e-3, "packed and portable disagree"
            t_packed, t_float = (best_time(s, x, args.min_seconds) for s in sessions)
            macs = n * m * hw * hw * (c // group) * k * k
            print(f"| {net} | {name} | {n} | {t_packed * 1e3:.3f} | {macs / t_packed / 1e9:.0f} | "
                  f"{t_float * 1e3:.3f} | {t_float / t_packed:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
