"""Hostile single-node models against libxnorpipe_ort.so: extreme, negative and wrongly typed
attributes, wrong input ranks, dtypes and shapes, an empty batch, for all eight custom ops.

Each case runs in a child interpreter (native code may crash: it must not), once with one
intra-op thread and once with four, so that errors raised inside ORT's thread pool are covered.
One child runs all cases and prints one JSON line per finished case; if it does not exit
normally, every case is rerun in a child of its own, so that a crash is charged to its case. A
case passes when its child exits normally and the case ends as expected: a Python exception
whose message is one line naming the op and the problem, or a result of the expected shape.

Run as a script (`python test_native_hostile.py LIBRARY THREADS CASE...`) it is that child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HUGE = 2**30
MARK = "CASE-RESULT "  # prefix of the child's result lines
THREADS = (1, 4)


@dataclass
class Case:
    op: str
    x: np.ndarray
    inits: dict
    attrs: dict
    error: tuple[str, ...] = ()  # substrings of the one-line error (the op first); () = must succeed
    shape: tuple[int, ...] | None = None  # the output shape when it succeeds
    extra: dict = field(default_factory=dict)


FLOAT_OUT = {"XnorConv2d", "XnorConv2dBits"}


def _words(c: int) -> int:
    return (c + 31) // 32


def _cases() -> dict[str, Case]:
    rng = np.random.default_rng(0)
    c, m, hw = 64, 40, 6
    xf = rng.normal(0, 1, (1, c, hw, hw)).astype(np.float32)
    bits = rng.integers(-2**31, 2**31, (1, _words(c), hw, hw), dtype=np.int64).astype(np.int32)
    ones, zeros = np.ones(m, np.float32), np.zeros(m, np.float32)
    thr_c = np.zeros(c, np.float32)

    def xw(k=3, cg=c, mm=m):  # packed weights [M, k, k, words]
        return rng.integers(-2**31, 2**31, (mm, k, k, _words(cg)), dtype=np.int64).astype(np.int32)

    def xnor(attrs, x=xf, w=None, error=(), shape=None, **inits):
        w = xw() if w is None else w
        base = dict(W=w, threshold=thr_c, scale=ones, bias=zeros)
        return Case("XnorConv2d", x, {**base, **inits}, attrs, error, shape)

    def bits_op(attrs, op="XnorConv2dBits", x=bits, w=None, error=(), shape=None, **inits):
        w = xw(k=1) if w is None else w
        base = dict(W=w, scale=ones, bias=zeros)
        if op == "XnorConv2dBitsBinarize":
            base["output_threshold"] = zeros
        return Case(op, x, {**base, **inits}, {"channels": c, "kernel_shape": [1, 1], **attrs}, error, shape)

    def convbin(attrs, x=xf, error=(), shape=None, k=3, **inits):
        base = dict(W=rng.normal(0, 1, (m, c, k, k)).astype(np.float32), B=zeros, threshold=zeros)
        return Case("ConvBinarize", x, {**base, **inits}, {"kernel_shape": [k, k], **attrs}, error, shape)

    def avgpool(attrs, x=xf, error=(), shape=None, **inits):
        attrs = {"kernel_shape": [2, 2], **attrs}
        return Case("AvgPoolBinarize", x, {"threshold": thr_c, **inits}, attrs, error, shape)

    def maxpool(attrs, x=bits, error=(), shape=None):
        return Case("BitMaxPool", x, {}, {"kernel_shape": [2, 2], **attrs}, error, shape)

    def binarize(x=xf, error=(), shape=None, **inits):
        return Case("Binarize", x, {"threshold": thr_c, **inits}, {}, error, shape)

    xu = rng.integers(0, 256, (1, hw, hw, 3), dtype=np.uint8)  # ConvIntegerBinarize: a uint8 NHWC image

    def intbin(attrs, x=xu, error=(), shape=None, k=3, mm=m, **inits):
        cin = x.shape[3] if x.ndim == 4 else 3
        base = dict(W=rng.integers(-128, 128, (mm, cin, k, k), dtype=np.int8), x_zero_point=np.full(cin, 120, np.uint8),
                    pad_value=np.full((mm, k, k), -7, np.int16), threshold=np.zeros(mm, np.int32),
                    margin=np.full(mm, 50, np.int32), fine_weight=np.full((mm, cin, k, k), 3, np.int32),
                    fine_pad_value=np.zeros((mm, k, k), np.int32), fine_threshold=np.zeros(mm, np.int64))
        return Case("ConvIntegerBinarize", x, {**base, **inits}, {"kernel_shape": [k, k], **attrs}, error, shape)

    k3 = {"kernel_shape": [3, 3]}
    cases = {
        # Controls: the harness passes well-formed nodes.
        "xnor_ok": xnor({**k3, "pads": [1, 1, 1, 1], "relu": 1}, shape=(1, m, hw, hw)),
        "bits_ok": bits_op({}, shape=(1, m, hw, hw)),
        "bits_binarize_ok": bits_op({}, op="XnorConv2dBitsBinarize", shape=(1, _words(m), hw, hw)),
        "binarize_ok": binarize(shape=(1, _words(c), hw, hw)),
        "bitmaxpool_ok": maxpool({"strides": [2, 2]}, shape=(1, _words(c), 3, 3)),
        "convbin_ok": convbin({"pads": [1, 1, 1, 1]}, shape=(1, _words(m), hw, hw)),
        "avgpool_ok": avgpool({"strides": [2, 2]}, shape=(1, _words(c), 3, 3)),
        # The examples: int overflow of padded sizes, std::length_error in ORT's pool.
        "convbin_huge_pads_strides": convbin({"pads": [0, HUGE, 0, HUGE], "strides": [1, HUGE]}, k=1,
                                             error=("ConvBinarize", "strides", "65536")),
        "avgpool_huge_window": avgpool({"kernel_shape": [1, HUGE], "pads": [0, HUGE - 1, 0, HUGE - 1],
                                        "strides": [1, HUGE]}, error=("AvgPoolBinarize", "kernel_shape")),
        # Huge attributes.
        "xnor_huge_pads": xnor({**k3, "pads": [HUGE] * 4}, error=("XnorConv2d", "pads", "65536")),
        "xnor_huge_kernel": xnor({"kernel_shape": [2**40, 3]}, error=("XnorConv2d", "kernel_shape")),
        "xnor_huge_dilation": xnor({**k3, "dilations": [HUGE, 1]}, error=("XnorConv2d", "dilations")),
        "xnor_dilated_extent": xnor({**k3, "dilations": [40000, 1]}, error=("XnorConv2d", "extent")),
        "xnor_huge_group": xnor({**k3, "group": 2**40}, error=("XnorConv2d", "group")),
        "bits_huge_channels": bits_op({"channels": 2**40}, error=("XnorConv2dBits", "channels")),
        "bits_binarize_huge_stride": bits_op({"strides": [2**62, 1]}, op="XnorConv2dBitsBinarize",
                                             error=("XnorConv2dBitsBinarize", "strides")),
        "bitmaxpool_huge_kernel": maxpool({"kernel_shape": [HUGE, HUGE]}, error=("BitMaxPool", "kernel_shape")),
        "convbin_huge_dilation": convbin({"dilations": [1, 2**33]}, error=("ConvBinarize", "dilations")),
        "convbin_huge_group": convbin({"group": HUGE}, error=("ConvBinarize", "group")),
        # Within the attribute limits, but the output would exceed 2^31 elements: refused before
        # ORT allocates it (131080^2 floats per filter).
        "xnor_huge_output": xnor({"kernel_shape": [1, 1], "pads": [65536] * 4}, w=xw(k=1),
                                 error=("XnorConv2d", "output", "elements")),
        "bits_binarize_huge_output": bits_op({"pads": [65536] * 4}, op="XnorConv2dBitsBinarize",
                                             error=("XnorConv2dBitsBinarize", "output", "elements")),
        "bitmaxpool_huge_output": maxpool({"kernel_shape": [65536, 65536], "pads": [65535] * 4},
                                          x=np.zeros((1, 2**16, 1, 1), np.int32),
                                          error=("BitMaxPool", "output", "elements")),
        # ConvBinarize's per-item scratch: 16 channels x 65536 padded rows x 131073 columns (two
        # images: two work items in the pool).
        "convbin_huge_scratch": Case("ConvBinarize", np.zeros((2, 16, 1, 1), np.float32),
                                     dict(W=np.zeros((1, 16, 65536, 1), np.float32), B=np.zeros(1, np.float32),
                                          threshold=np.zeros(1, np.float32)),
                                     {"kernel_shape": [65536, 1], "strides": [65536, 1],
                                      "pads": [65535, 65536, 65535, 65536]},
                                     ("ConvBinarize", "padded input rows")),
        # 2^32 taps: the divisor no longer fits an int (AvgPool over a 65536 x 65536 window).
        "avgpool_2pow32_taps": avgpool({"kernel_shape": [65536, 65536], "pads": [65535, 65535, 0, 0]},
                                       x=np.full((1, c, 1, 1), -2.0**31, np.float32),
                                       threshold=np.full(c, -1.0, np.float32), shape=(1, _words(c), 1, 1)),
        # Negative and zero values.
        "xnor_negative_pad": xnor({**k3, "pads": [1, -1, 1, 1]}, error=("XnorConv2d", "pads")),
        "xnor_negative_group": xnor({**k3, "group": -1}, error=("XnorConv2d", "group")),
        "bits_negative_channels": bits_op({"channels": -64}, error=("XnorConv2dBits", "channels")),
        "bitmaxpool_negative_stride": maxpool({"strides": [-2, 1]}, error=("BitMaxPool", "strides")),
        "avgpool_zero_kernel": avgpool({"kernel_shape": [0, 2]}, error=("AvgPoolBinarize", "kernel_shape")),
        "convbin_zero_dilation": convbin({"dilations": [0, 1]}, error=("ConvBinarize", "dilations")),
        # Wrong attribute types: an error, never the default.
        "xnor_relu_float": xnor({**k3, "relu": 1.0}, error=("XnorConv2d", "relu", "must be an int", "float")),
        "xnor_group_string": xnor({**k3, "group": "2"}, error=("XnorConv2d", "group", "must be an int", "string")),
        "xnor_kernel_int": xnor({"kernel_shape": 3}, error=("XnorConv2d", "kernel_shape", "must be ints")),
        "xnor_auto_pad": xnor({**k3, "auto_pad": "SAME_UPPER"}, error=("XnorConv2d", "auto_pad")),
        "bits_channels_float": bits_op({"channels": 64.0}, error=("XnorConv2dBits", "channels", "must be an int")),
        "bits_binarize_relu_string": bits_op({"relu": "1"}, op="XnorConv2dBitsBinarize",
                                             error=("XnorConv2dBitsBinarize", "relu", "must be an int")),
        "convbin_pads_floats": convbin({"pads": [1.0, 1.0, 1.0, 1.0]}, error=("ConvBinarize", "pads", "must be ints")),
        "convbin_relu_float": convbin({"relu": 0.0}, error=("ConvBinarize", "relu", "must be an int")),
        "bitmaxpool_strides_string": maxpool({"strides": "2"}, error=("BitMaxPool", "strides", "must be ints")),
        "avgpool_ceil_mode_string": avgpool({"ceil_mode": "0"}, error=("AvgPoolBinarize", "ceil_mode")),
        "avgpool_count_include_pad_float": avgpool({"count_include_pad": 1.0},
                                                   error=("AvgPoolBinarize", "count_include_pad")),
        # Wrong input ranks, dtypes and shapes.
        "xnor_x_rank3": xnor(k3, x=xf.reshape(1, c, hw * hw), error=("XnorConv2d", "X must be")),
        "xnor_w_int64": xnor(k3, w=xw().astype(np.int64), error=("XnorConv2d",)),
        "xnor_threshold_2d": xnor(k3, threshold=thr_c.reshape(8, 8), error=("XnorConv2d", "threshold")),
        "xnor_empty_height": xnor(k3, x=np.zeros((1, c, 0, hw), np.float32), error=("XnorConv2d", "empty")),
        "bits_x_float": bits_op({}, x=bits.astype(np.float32), error=("XnorConv2dBits",)),
        "bits_scale_len": bits_op({}, scale=np.ones(m + 1, np.float32), error=("XnorConv2dBits", "scale")),
        "bits_binarize_out_threshold_len": bits_op({}, op="XnorConv2dBitsBinarize",
                                                   output_threshold=np.zeros(3, np.float32),
                                                   error=("XnorConv2dBitsBinarize", "output_threshold")),
        "binarize_x_rank5": binarize(x=xf.reshape(1, c, hw, hw, 1), error=("Binarize", "X must be")),
        "binarize_x_int32": binarize(x=bits, error=("Binarize",)),
        "binarize_threshold_len": binarize(threshold=np.zeros(c + 1, np.float32), error=("Binarize", "threshold")),
        "bitmaxpool_x_rank2": maxpool({}, x=bits.reshape(1, -1), error=("BitMaxPool", "X must be")),
        "convbin_w_int32": convbin({}, W=np.zeros((m, c, 3, 3), np.int32), error=("ConvBinarize",)),
        "convbin_w_shape": convbin({}, W=np.zeros((m, c, 5, 5), np.float32), error=("ConvBinarize", "W shape")),
        "convbin_b_len": convbin({}, B=np.zeros(m - 1, np.float32), error=("ConvBinarize", "B must be")),
        "avgpool_threshold_rank": avgpool({}, threshold=thr_c.reshape(1, c), error=("AvgPoolBinarize", "threshold")),
        # Weight words and the channels attribute against the inputs.
        "xnor_w_words": xnor(k3, w=xw(cg=32), error=("XnorConv2d", "W shape")),
        "bits_w_words": bits_op({}, w=xw(k=1, cg=128), error=("XnorConv2dBits", "W shape")),
        "bits_channels_vs_words": bits_op({"channels": 100}, error=("XnorConv2dBits", "words per pixel")),
        "bits_binarize_channels_vs_words": bits_op({"channels": 32}, op="XnorConv2dBitsBinarize",
                                                   error=("XnorConv2dBitsBinarize", "words per pixel")),
        "bits_shuffle_output": bits_op({"shuffle_output": 3}, error=("XnorConv2dBits", "must be 0 or 1")),
        "bits_shuffle_output_float": bits_op({"shuffle_output": 1.0}, op="XnorConv2dBitsBinarize",
                                             error=("XnorConv2dBitsBinarize", "must be an int")),
        "xnor_filters_group": xnor({**k3, "group": 3}, error=("XnorConv2d", "divisible")),
        # An empty batch: an empty output of the right shape, as stock ORT gives for the portable model.
        "xnor_batch0": xnor({**k3, "strides": [2, 2], "pads": [1, 1, 1, 1]}, x=np.zeros((0, c, 7, 7), np.float32),
                            shape=(0, m, 4, 4)),
        "bits_batch0": bits_op({}, x=np.zeros((0, 2, 5, 3), np.int32), shape=(0, m, 5, 3)),
        "bits_binarize_batch0": bits_op({}, op="XnorConv2dBitsBinarize", x=np.zeros((0, 2, 5, 3), np.int32),
                                        shape=(0, _words(m), 5, 3)),
        "binarize_batch0": binarize(x=np.zeros((0, c, 5, 3), np.float32), shape=(0, 2, 5, 3)),
        "bitmaxpool_batch0": maxpool({}, x=np.zeros((0, 2, 5, 3), np.int32), shape=(0, 2, 4, 2)),
        "convbin_batch0": convbin({}, x=np.zeros((0, c, 5, 3), np.float32), shape=(0, _words(m), 3, 1)),
        "avgpool_batch0": avgpool({}, x=np.zeros((0, c, 5, 3), np.float32), shape=(0, 2, 4, 2)),
        # Output size <= 0.
        "xnor_output_empty": xnor({"kernel_shape": [7, 7]}, w=xw(k=7), error=("XnorConv2d", "output size")),
        "bits_output_empty": bits_op({"kernel_shape": [3, 3], "dilations": [4, 4]}, w=xw(k=3),
                                     error=("XnorConv2dBits", "output size")),
        "convbin_output_empty": convbin({}, k=7, error=("ConvBinarize", "output size")),
        "avgpool_output_empty": avgpool({"kernel_shape": [7, 7]}, error=("AvgPoolBinarize", "output size")),
        "bitmaxpool_output_empty": maxpool({"kernel_shape": [7, 7]}, error=("BitMaxPool", "output size")),
        # ConvIntegerBinarize (the integer first layer): the same classes of hostile input.
        "intbin_ok": intbin({"pads": [1, 1, 1, 1]}, shape=(1, _words(m), hw, hw)),
        "intbin_batch0": intbin({}, x=np.zeros((0, 5, 3, 3), np.uint8), shape=(0, _words(m), 3, 1)),
        "intbin_output_empty": intbin({}, k=7, error=("ConvIntegerBinarize", "output size")),
        "intbin_huge_pads": intbin({"pads": [HUGE] * 4}, error=("ConvIntegerBinarize", "pads", "65536")),
        "intbin_huge_dilation": intbin({"dilations": [1, 2**33]}, error=("ConvIntegerBinarize", "dilations")),
        "intbin_negative_pad": intbin({"pads": [0, -1, 0, 0]}, error=("ConvIntegerBinarize", "pads")),
        "intbin_zero_stride": intbin({"strides": [0, 1]}, error=("ConvIntegerBinarize", "strides")),
        # (C + 1) * kH * kW = 4 * 100 * 100 > 32768: int32 sums could overflow.
        "intbin_too_many_taps": intbin({"pads": [50] * 4}, k=100, mm=1,
                                       error=("ConvIntegerBinarize", "exceeds 32768")),
        "intbin_huge_output": intbin({"pads": [65536] * 4}, k=1, error=("ConvIntegerBinarize", "output", "elements")),
        # A work item's padded rows: 131071 rows x 131073 pixels x 16 channels (two images).
        "intbin_huge_scratch": intbin({"kernel_shape": [2, 1], "dilations": [65535, 1], "strides": [65535, 1],
                                       "pads": [65535, 65536, 65535, 65536]}, x=np.zeros((2, 1, 1, 16), np.uint8),
                                      k=1, mm=1, W=np.zeros((1, 16, 2, 1), np.int8),
                                      pad_value=np.zeros((1, 2, 1), np.int16),
                                      fine_weight=np.zeros((1, 16, 2, 1), np.int32),
                                      fine_pad_value=np.zeros((1, 2, 1), np.int32),
                                      error=("ConvIntegerBinarize", "padded input rows")),
        "intbin_kernel_int": intbin({"kernel_shape": 3}, error=("ConvIntegerBinarize", "kernel_shape", "must be ints")),
        "intbin_pads_floats": intbin({"pads": [1.0] * 4}, error=("ConvIntegerBinarize", "pads", "must be ints")),
        "intbin_auto_pad": intbin({"auto_pad": "VALID"}, error=("ConvIntegerBinarize", "auto_pad")),
        "intbin_x_float": intbin({}, x=xu.astype(np.float32), error=("ConvIntegerBinarize",)),
        "intbin_x_nchw_rank3": intbin({}, x=xu.reshape(1, hw, hw * 3), error=("ConvIntegerBinarize",)),
        "intbin_w_uint8": intbin({}, W=np.zeros((m, 3, 3, 3), np.uint8), error=("ConvIntegerBinarize",)),
        "intbin_w_channels": intbin({}, W=np.zeros((m, 4, 3, 3), np.int8), error=("ConvIntegerBinarize", "W must be")),
        "intbin_zero_point_len": intbin({}, x_zero_point=np.zeros(4, np.uint8),
                                        error=("ConvIntegerBinarize", "x_zero_point must be")),
        "intbin_pad_value_int32": intbin({}, pad_value=np.zeros((m, 3, 3), np.int32), error=("ConvIntegerBinarize",)),
        "intbin_pad_value_shape": intbin({}, pad_value=np.zeros((m, 3, 2), np.int16),
                                         error=("ConvIntegerBinarize", "pad_value must be")),
        "intbin_threshold_float": intbin({}, threshold=np.zeros(m, np.float32), error=("ConvIntegerBinarize",)),
        "intbin_threshold_len": intbin({}, threshold=np.zeros(m + 1, np.int32),
                                       error=("ConvIntegerBinarize", "threshold must be")),
        "intbin_margin_int64": intbin({}, margin=np.zeros(m, np.int64), error=("ConvIntegerBinarize",)),
        "intbin_fine_weight_int8": intbin({}, fine_weight=np.zeros((m, 3, 3, 3), np.int8),
                                          error=("ConvIntegerBinarize",)),
        "intbin_fine_weight_shape": intbin({}, fine_weight=np.zeros((m, 3, 3, 1), np.int32),
                                           error=("ConvIntegerBinarize", "fine_weight must be")),
        "intbin_fine_threshold_int32": intbin({}, fine_threshold=np.zeros(m, np.int32), error=("ConvIntegerBinarize",)),
        "intbin_fine_pad_value_len": intbin({}, fine_pad_value=np.zeros((m + 1, 3, 3), np.int32),
                                            error=("ConvIntegerBinarize", "fine_pad_value must be")),
    }
    return cases


def _model(case: Case) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(case.op, ["X", *case.inits], ["Y"], domain="xnorpipe", **case.attrs)
    out_type = TensorProto.FLOAT if case.op in FLOAT_OUT else TensorProto.INT32
    graph = helper.make_graph(
        [node], case.op,
        [helper.make_tensor_value_info("X", helper.np_dtype_to_tensor_dtype(case.x.dtype), list(case.x.shape))],
        [helper.make_tensor_value_info("Y", out_type, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in case.inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("xnorpipe", 1)],
                             ir_version=10).SerializeToString()


def _child(library: str, threads: int, names: list[str]) -> None:
    """Runs each case and prints its outcome as one JSON line, flushed before the next starts."""
    import onnxruntime as ort

    cases = _cases()
    for name in names:
        case = cases[name]
        result: dict = {"case": name}
        try:
            so = ort.SessionOptions()
            so.register_custom_ops_library(library)
            so.intra_op_num_threads = threads
            so.log_severity_level = 4  # the error comes back as the exception
            so.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
            sess = ort.InferenceSession(_model(case), so, providers=["CPUExecutionProvider"])
            y = sess.run(None, {"X": case.x})[0]
            result.update(status="ok", shape=list(y.shape), dtype=str(y.dtype))
            if name == "avgpool_2pow32_taps":  # x / 2^32 = -0.5 >= -1: every channel's bit set
                result["all_set"] = bool((y.view(np.uint32) == np.uint32(0xFFFFFFFF)).all())
        except Exception as e:  # ORT's exception types (Fail, InvalidArgument, RuntimeException, ...)
            result.update(status="error", type=type(e).__name__, message=str(e))
        print(MARK + json.dumps(result), flush=True)


def _run_child(library: str, threads: int, names: list[str]) -> tuple[dict[str, dict], int | str, str]:
    try:
        proc = subprocess.run([sys.executable, __file__, library, str(threads), *names],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    except subprocess.TimeoutExpired:
        return {}, "a timeout (hung)", ""
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            r = json.loads(line[len(MARK):])
            results[r["case"]] = r
    return results, proc.returncode, proc.stderr[-2000:]


def run_cases(library: str, threads: int, names: list[str]) -> dict[str, dict]:
    """Every case's outcome and the exit status of the child it ran in. All cases share one
    child; if it does not exit normally, each case is rerun alone, so a crash is charged to
    the case that causes it."""
    results, code, _ = _run_child(library, threads, names)
    if code == 0 and len(results) == len(names):
        return {name: {**results[name], "exit": 0} for name in names}
    out = {}
    for name in names:
        alone, code, stderr = _run_child(library, threads, [name])
        out[name] = {**alone.get(name, {"case": name, "status": "crashed"}), "exit": code, "stderr": stderr}
    return out


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
    sys.exit(0)


# ----------------------------------------------------------------------------- the tests

import pytest  # noqa: E402

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from conftest import require_ort_library  # noqa: E402

CASES = _cases()


@pytest.fixture(scope="module")
def outcomes() -> dict[int, dict[str, dict]]:
    library = require_ort_library()
    return {threads: run_cases(library, threads, list(CASES)) for threads in THREADS}


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_node(outcomes, name, threads):
    case, got = CASES[name], outcomes[threads][name]
    assert got["exit"] == 0 and got["status"] != "crashed", \
        f"{name}: the child exited with {got['exit']} ({got['status']}): {got.get('stderr', '')[-500:]}"
    if case.error:
        assert got["status"] == "error", f"{name}: expected an error naming {case.error}, got {got}"
        message = got["message"].strip()
        assert "\n" not in message, f"{name}: not one line: {message!r}"
        for part in case.error:
            assert part in message, f"{name}: {part!r} not in {message!r}"
    else:
        assert got["status"] == "ok", f"{name}: {got.get('message')}"
        assert tuple(got["shape"]) == case.shape
        assert got["dtype"] == ("float32" if case.op in FLOAT_OUT else "int32")
        if name == "avgpool_2pow32_taps":
            assert got["all_set"]


def test_every_op_is_covered():
    ops = {case.op for case in CASES.values()}
    assert ops == {"XnorConv2d", "XnorConv2dBits", "XnorConv2dBitsBinarize", "Binarize", "BitMaxPool",
                   "ConvBinarize", "AvgPoolBinarize", "ConvIntegerBinarize"}
    for op in ops:  # an empty batch and an error case for each
        assert any(c.op == op and c.shape and c.shape[0] == 0 for c in CASES.values()), op
        assert any(c.op == op and c.error for c in CASES.values()), op


def _bench_model(path: Path, conv_attrs: dict) -> None:
    """A minimal model `xnorpipe bench --engine ort-xnor` runs: CIFAR-shaped input -> ConvBinarize
    (hostile attributes) -> XnorConv2dBits -> Y, no xnorpipe metadata (parity is skipped)."""
    from onnx import TensorProto, helper, numpy_helper

    m = 32
    inits = [numpy_helper.from_array(np.zeros((m, 3, 1, 1), np.float32), "Wc"),
             numpy_helper.from_array(np.zeros(m, np.float32), "Bc"),
             numpy_helper.from_array(np.zeros(m, np.float32), "Tc"),
             numpy_helper.from_array(np.zeros((10, 1, 1, 1), np.int32), "Wx"),
             numpy_helper.from_array(np.ones(10, np.float32), "S"),
             numpy_helper.from_array(np.zeros(10, np.float32), "B")]
    nodes = [helper.make_node("ConvBinarize", ["X", "Wc", "Bc", "Tc"], ["bits"], domain="xnorpipe",
                              kernel_shape=[1, 1], **conv_attrs),
             helper.make_node("XnorConv2dBits", ["bits", "Wx", "S", "B"], ["Y"], domain="xnorpipe",
                              kernel_shape=[1, 1], channels=m)]
    graph = helper.make_graph(nodes, "hostile",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 10, "H", "W"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("xnorpipe", 1)],
                              ir_version=10)
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("conv_attrs, expect", [
    # The example (exit 139 with >= 2 threads before): refused when ORT creates the kernel.
    (dict(pads=[0, HUGE, 0, HUGE], strides=[1, HUGE]), "strides"),
    # Within the attribute limits, refused when the node runs (the output would be 2^36 words).
    (dict(pads=[65536] * 4), "elements"),
])
def test_cli_bench_hostile_model_fails_with_one_line(tmp_path, conv_attrs, expect):
    require_ort_library()
    model = tmp_path / "hostile.onnx"
    _bench_model(model, conv_attrs)
    env = {k: v for k, v in os.environ.items() if k != "XNORPIPE_DEBUG"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-m", "xnorpipe.cli", "bench", "--onnx", str(model), "--engine", "ort-xnor",
                           "--batch-size", "4", "--threads", "4", "--iters", "1", "--warmup", "0"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "ConvBinarize" in lines[0] and expect in lines[0], lines[0]
