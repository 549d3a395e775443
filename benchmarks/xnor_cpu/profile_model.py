"""Per-node time of one model on ONNX Runtime with the xnorpipe library (not a test): ORT's own
profiler (`enable_profiling`), median per node over the runs, random-init weights, NCHWc off as
in ort-xnor.

    PYTHONPATH=. python benchmarks/xnor_cpu/profile_model.py [--arch nin_xnornet] [--form packed-bits]
        [--batch 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort

from xnorpipe.deploy import onnx_export
from xnorpipe.deploy.fold import fold_model
from xnorpipe.native import ort_library_path
from xnorpipe.sources import load_source_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="nin_xnornet")
    p.add_argument("--form", default="packed-bits", choices=["portable", "packed", "packed-bits"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    model, _ = load_source_model(args.arch, None, random_init=True)
    proto = onnx_export.build_onnx(fold_model(model, arch=args.arch), args.form)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "xnorpipe_profile")
    if args.form != "portable":
        so.register_custom_ops_library(ort_library_path())
        so.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
    s = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    for _ in range(300 if args.batch == 1 else 10):
        s.run(None, {"input": x})
    path = s.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    times = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[(e["name"][: -len("_kernel_time")], e["args"].get("op_name"))].append(e["dur"])
    print(f"| node | op | median us |\n|---|---|---|")
    total = 0.0
    for (node, op), us in times.items():
        total += float(np.median(us))
        print(f"| {node} | {op} | {np.median(us):.1f} |")
    print(f"| sum | | {total:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
