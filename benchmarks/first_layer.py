"""The integer first layer against the float one (not a test): a float packed-bits export and its
`--first-layer int8` twin of the same checkpoint, both on ONNX Runtime with the xnorpipe library,
and the int8 file once more with every margin set to -1 (the int8 sum alone decides, no fine
refinement), to show what the refinement buys and costs. Top-1 agreement on the CIFAR-10 test
set, then latency (one thread, the first test images, rounds interleaved, medians).

    python benchmarks/first_layer.py --float exports/nin_xnornet.packed-bits.onnx \
        --int8 exports/nin_xnornet.packed-bits.int8.onnx --data ../shared/data/cifar10-jpeg.tar.gz \
        [--batch-sizes 1,64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xnorpipe.data import load_cifar10  # noqa: E402
from xnorpipe.native import ort_library_path  # noqa: E402


def session(model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1 if threads else 0
    so.register_custom_ops_library(ort_library_path())
    so.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def without_margin(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with ConvIntegerBinarize's margins at -1: acc >= threshold decides."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {n.input[5] for n in out.graph.node if n.op_type == "ConvIntegerBinarize"}
    for init in out.graph.initializer:
        if init.name in names:
            init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), -1), init.name))
    return out


def predictions(model: onnx.ModelProto, images: np.ndarray, normalise, batch: int = 500) -> np.ndarray:
    s = session(model)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: normalise(images[i:i + batch])})[0].argmax(1)
                           for i in range(0, len(images), batch)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--float", dest="float_path", required=True, help="the float packed-bits export")
    p.add_argument("--int8", dest="int8_path", required=True, help="its --first-layer int8 twin")
    p.add_argument("--data", required=True)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    data = load_cifar10(args.data, progress=False)
    images, labels = np.ascontiguousarray(data.test_images), np.asarray(data.test_labels)
    float_model, int8_model = onnx.load(args.float_path), onnx.load(args.int8_path)
    meta = {m.key: m.value for m in float_model.metadata_props}
    mean = np.asarray(json.loads(meta["xnorpipe.mean"]), np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(json.loads(meta["xnorpipe.std"]), np.float32).reshape(1, 3, 1, 1)

    def normalised(u8):
        return ((u8.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255) - mean) / std).astype(np.float32)

    want = predictions(float_model, images, normalised)
    print(f"float first layer: top-1 {100 * np.mean(want == labels):.2f} % on {len(images)} test images")
    for label, model in (("int8 first layer", int8_model), ("int8, margins -1 (no refinement)",
                                                            without_margin(int8_model))):
        got = predictions(model, images, lambda u8: u8)
        print(f"{label}: top-1 {100 * np.mean(got == labels):.2f} %, agreement with the float first layer "
              f"{100 * np.mean(got == want):.2f} %")

    variants = {"float first layer": (session(float_model, 1), normalised),
                "int8 first layer": (session(int8_model, 1), lambda u8: u8),
                "int8, margins -1": (session(without_margin(int8_model), 1), lambda u8: u8)}
    print("\n| batch | model | p50 ms | speed-up vs float |\n|---|---|---|---|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        feeds = {k: (s, {s.get_inputs()[0].name: prep(images[:batch])}) for k, (s, prep) in variants.items()}
        medians: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):  # rounds cycle through the variants: noise hits a round, not a row
            for k, (s, feed) in feeds.items():
                s.run(None, feed)
                runs = []
                for _ in range(max(3, 200 // batch)):
                    t = time.perf_counter()
                    s.run(None, feed)
                    runs.append(time.perf_counter() - t)
                medians[k].append(float(np.median(runs)))
        base = np.median(medians["float first layer"])
        for k, v in medians.items():
            print(f"| {batch} | {k} | {1e3 * np.median(v):.3f} | {base / np.median(v):.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
