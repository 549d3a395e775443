"""Per-node time of one model on ONNX Runtime with the xnorpipe library (not a test): ORT's own
profiler (`enable_profiling`), median per node over the runs, random-init weights, ORT's default
optimisations (NCHWc on) as in ort-xnor. Each convolution is set against its ceiling on this
CPU, measured in the same run by xnorpipe_bench_cpu (build/*/core/, `make native`): FP32 FMA/s
for the float convolutions, the xor-popcount loop's binary MAC/s for the binary ones (one bit =
one binary MAC).

    PYTHONPATH=. python benchmarks/xnor_cpu/profile_model.py [--arch nin_xnornet] [--form packed-bits]
        [--batch 1] [--threads 1] [--first-layer int8]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from xnorpipe.deploy import ir
from xnorpipe.deploy import onnx as deploy_onnx
from xnorpipe.native import ort_library_path
from xnorpipe.sources import fold_arch, load_source_model

ROOT = Path(__file__).resolve().parents[2]


def ceilings() -> dict[str, float]:
    """G MAC/s of one core's in-register loops: {"binary": xor-popcount, "float": FP32 FMA}, from
    xnorpipe_bench_cpu (empty if it is not built)."""
    found = sorted(ROOT.glob("build/*/core/xnorpipe_bench_cpu"), key=lambda p: p.stat().st_mtime)
    if not found:
        return {}
    out = subprocess.run([str(found[-1]), "0.3", "avx512,avx2", "none"], capture_output=True, text=True,
                         timeout=120).stdout
    result = {}
    for line in out.splitlines():
        value = re.search(r"\|\s*([\d.]+)\s*\|\s*$", line)
        if not value:
            continue
        if "binary" not in result and re.match(r"\| (avx512|avx2): vp?xor", line):
            result["binary"] = float(value.group(1))
        elif "fp32 FMA/s" in line:
            result["float"] = float(value.group(1))
        elif "int8" not in result and "vpdpbusd" in line:
            result["int8"] = float(value.group(1))
    return result


def conv_macs(deploy: ir.DeployModel, batch: int) -> list[tuple[str, int]]:
    """("float" or "binary", multiply-adds per call) of each convolution, in the order the
    exporter names its nodes conv0, conv1, ..."""
    shapes = ir.tensor_shapes(deploy)
    out = []
    for node in deploy.nodes:
        layer, before, after = node.op, shapes[node.inputs[0]], shapes[node.output]
        if isinstance(layer, (ir.FloatConv, ir.BinaryConv)):
            (c, _, _), (m, ho, wo) = before, after
            kh, kw = layer.kernel_shape
            kind = "binary" if isinstance(layer, ir.BinaryConv) else "float"
            out.append((kind, batch * m * ho * wo * (c // layer.group) * kh * kw))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="nin_xnornet")
    p.add_argument("--form", default="packed-bits", choices=["portable", "packed", "packed-bits"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--first-layer", choices=["float", "int8"], default="float",
                   help="int8: the packed-bits model with the integer first layer (uint8 NHWC input; "
                   "calibrated on synthetic images)")
    args = p.parse_args()
    if args.first_layer == "int8" and args.form != "packed-bits":
        p.error("--first-layer int8 needs --form packed-bits")
    peak = ceilings()
    model, _ = load_source_model(args.arch, None, random_init=True)
    deploy = fold_arch(model, args.arch)
    integer = None
    if args.first_layer == "int8":
        from xnorpipe.deploy.first_layer import calibrated_first_layer

        integer = calibrated_first_layer(deploy)
    proto = deploy_onnx.build_onnx(deploy, args.form, first_layer=integer)
    macs = conv_macs(deploy, args.batch)
    if integer is not None:  # conv0 is ConvIntegerBinarize: int8 multiply-adds
        macs[0] = ("int8", macs[0][1])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "xnorpipe_profile")
    if args.form != "portable":
        so.register_custom_ops_library(ort_library_path())
    s = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    c, h, w = deploy.input_shape
    x = np.random.default_rng(0).standard_normal((args.batch, c, h, w)).astype(np.float32)
    if integer is not None:
        x = np.random.default_rng(0).integers(0, 256, (args.batch, h, w, c), dtype=np.uint8)
    name = s.get_inputs()[0].name
    for _ in range(300 if args.batch == 1 else 10):
        s.run(None, {name: x})
    path = s.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    times = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[(e["name"][: -len("_kernel_time")], e["args"].get("op_name"))].append(e["dur"])
    print(f"{args.arch}, {args.form}, batch {args.batch}, {args.threads} thread(s); ceilings (one core, "
          f"G MAC/s): " + (", ".join(f"{k} {v:g}" for k, v in peak.items()) or "xnorpipe_bench_cpu not built"))
    print("\n| node | op | median us | G MAC/s | % of its ceiling |\n|---|---|---|---|---|")
    total = 0.0
    for (node, op), us in times.items():
        median = float(np.median(us))
        total += median
        conv = re.fullmatch(r"conv(\d+)(?:_nchwc)?", node)  # NCHWc renames the float convs it takes
        rate = share = ""
        if conv and int(conv.group(1)) < len(macs) and median > 0:
            kind, work = macs[int(conv.group(1))]
            g = work / median / 1e3
            rate = f"{g:.1f} ({kind})"
            share = f"{100 * g / peak[kind]:.0f} %" if kind in peak else ""
        print(f"| {node} | {op} | {median:.1f} | {rate} | {share} |")
    print(f"| sum | | {total:.1f} | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
