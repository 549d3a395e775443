"""ONNX Runtime's NCHWc layout pass and the xnorpipe ops (not a test): nin_xnornet, one thread,
the portable graph on stock ORT vs the packed and packed-bits graphs with the library, each of
the latter with ORT's NchwcTransformer on (ORT's default, what ort-xnor does) and off.

    PYTHONPATH=. python benchmarks/xnor_cpu/bench_nchwc.py [--arch nin_xnornet] [--threads 1] [--rounds 3]
        [--batch-sizes 1,64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

from xnorpipe.deploy import onnx as deploy_onnx
from xnorpipe.native import ort_library_path
from xnorpipe.sources import fold_arch, load_source_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="nin_xnornet")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-sizes", default="1,64")
    args = p.parse_args()
    model, _ = load_source_model(args.arch, None, random_init=True)
    deploy = fold_arch(model, args.arch)

    def session(form: str, library: bool, nchwc: bool):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        if library:
            so.register_custom_ops_library(ort_library_path())
        if not nchwc:
            so.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
        return ort.InferenceSession(deploy_onnx.build_onnx(deploy, form).SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])

    variants = {"portable, stock ORT": session("portable", False, True),
                "packed, NCHWc on": session("packed", True, True),
                "packed, NCHWc off": session("packed", True, False),
                "packed-bits, NCHWc on": session("packed-bits", True, True),
                "packed-bits, NCHWc off": session("packed-bits", True, False)}
    print("| batch | variant | p50 ms | speed-up vs portable |\n|---|---|---|---|")
    pixels = int(np.prod(deploy.input_shape))
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        iters = max(5, min(400, int(400 * 3072 / (pixels * batch))))  # about the same time per batch size
        x = np.random.default_rng(0).standard_normal((batch, *deploy.input_shape)).astype(np.float32)
        medians = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, s in variants.items():
                for _ in range(3):
                    s.run(None, {"input": x})
                ts = []
                for _ in range(iters):
                    t0 = time.perf_counter()
                    s.run(None, {"input": x})
                    ts.append(time.perf_counter() - t0)
                medians[name].append(float(np.median(ts)) * 1e3)
        base = float(np.median(medians["portable, stock ORT"]))
        for name, ms in medians.items():
            m = float(np.median(ms))
            print(f"| {batch} | {name} | {m:.3f} | {base / m:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
