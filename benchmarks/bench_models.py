"""Whole-model CPU latency: portable ONNX on stock ORT vs ort-xnor (packed, packed-bits) vs OpenVINO
vs PyTorch.

Random-init models (speed does not depend on the weights); every variant is measured in the
same run and reported as a ratio to stock ORT on the portable form. OpenVINO (not a dependency
of xnorpipe: measured where `import openvino` works, else skipped with a note) runs the portable
form and the inlined packed forms in FP32. Prints a table; with --out, also writes it as
markdown (benchmarks/RESULTS.md quotes it).

    python benchmarks/bench_models.py [--iters 50] [--rounds 3] [--threads 1,2] [--batch-sizes 1,64]
        [--engines ort,ort-xnor,openvino,torch]
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xnorpipe import bench as lib  # noqa: E402
from xnorpipe.errors import XnorpipeError  # noqa: E402

ARCHS = ["nin_xnornet", "nin_gc_xnornet", "nin"]
INT8 = "packed-bits, int8 first layer"  # ort-xnor's row for `export --first-layer int8`
BASELINE = "ort"


def available_engines(arch_binary: bool) -> tuple[list[str], str | None]:
    engines = ["ort", "torch"]
    if not arch_binary:
        return engines, None
    try:
        from xnorpipe.native import ort_library_path

        ort_library_path()
    except XnorpipeError as e:
        return engines, f"ort-xnor skipped: {e}"
    return ["ort", "ort-xnor", "torch"], None


# The forms OpenVINO runs: no model-local functions, so the inlined packed forms (a float arch
# has the portable form only).
OPENVINO_FORMS = ("portable", "packed-inline", "packed-bits-inline")


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__.split("-")[0]


class OpenVinoRunner:
    """OpenVINO's CPU plugin on one ONNX file: FP32 (INFERENCE_PRECISION_HINT f32; on CPUs with
    bf16 its default is bf16, which is not faithful to the model), `threads` threads, one stream,
    the batch fixed at compile time (OpenVINO's fastest setting)."""

    def __init__(self, path: str, threads: int, batch: int, shape: tuple[int, int, int]):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(path)
        model.reshape({model.inputs[0].get_any_name(): [batch, *shape]})
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                          "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[self.output]


def bench_openvino(runners: dict, path: str, threads: int, batch: int, iters: int, warmup: int,
                   shape: tuple[int, int, int]) -> dict:
    """p50/p90 of OpenVINO on `path`, compiled once per (file, threads, batch), on the input
    lib.run_bench uses (seed 0)."""
    key = (path, threads, batch)
    if key not in runners:
        runners[key] = OpenVinoRunner(path, threads, batch, shape)
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    r = lib.measure_latency(runners[key], x, iters=iters, warmup=warmup)
    return {"engine": "openvino", **r}


def openvino_parity(paths: dict[str, str], shape: tuple[int, int, int]) -> str:
    """OpenVINO FP32 vs stock ORT on the portable form, 16 random inputs: the timed runs compute
    the model (bf16, for one, would not)."""
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((16, *shape)).astype(np.float32)
    want = ort.InferenceSession(paths["portable"], providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    diffs = {form: float(np.abs(OpenVinoRunner(path, 1, len(x), shape)(x) - want).max())
             for form, path in paths.items()}
    return "OpenVINO FP32 vs stock ORT (portable), 16 random inputs, max |logit diff|: " + ", ".join(
        f"{form} {d:.1e}" for form, d in diffs.items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="passes over all variants; rows are medians")
    p.add_argument("--out", default=None, help="also write the table as markdown here")
    p.add_argument("--engines", default="ort,ort-xnor,openvino,torch",
                   help="engines to time (ort, the baseline, always runs)")
    args = p.parse_args(argv)
    wanted = {e for e in args.engines.split(",") if e} | {BASELINE}
    archs = [a for a in args.archs.split(",") if a]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]

    from xnorpipe.models import ARCHS as SPECS

    rows, notes = [], []
    ov_version = openvino_version() if "openvino" in wanted else None
    if "openvino" in wanted and ov_version is None:
        notes.append("openvino skipped: it is not installed (pip install openvino; not a dependency of xnorpipe)")
    ov_runners: dict = {}
    for arch in archs:
        engines, note = available_engines(SPECS[arch].binary)
        engines = [e for e in engines if e in wanted]
        if note and note not in notes:
            notes.append(note)
        # ort-xnor runs both packed forms; each (engine, form) is one row, all from one run.
        variants = [(e, None) for e in engines if e != "ort-xnor"]
        if "ort-xnor" in engines:
            variants[1:1] = [("ort-xnor", "packed"), ("ort-xnor", "packed-bits"), ("ort-xnor", INT8)]
        # packed-bits serves every engine; the packed source only ort-xnor's packed rows
        sources = {"packed-bits": lib.prepare_sources(arch=arch, random_init=True, engines=engines,
                                                      xnor_form="packed-bits" if "ort-xnor" in engines else None)}
        if "ort-xnor" in engines:
            sources["packed"] = lib.prepare_sources(arch=arch, random_init=True, engines=["ort-xnor"],
                                                    xnor_form="packed")
            # the integer first layer (uint8 image in): timed on uint8 input, the run's own batch
            try:
                sources[INT8] = lib.prepare_sources(arch=arch, random_init=True, engines=["ort-xnor"],
                                                    xnor_form="packed-bits", first_layer="int8")
            except XnorpipeError as e:  # e.g. a first conv whose output a float op reads too
                variants.remove(("ort-xnor", INT8))
                notes.append(f"{arch}: no int8 first layer row: {e}")
        ov_dir = None
        if ov_version is not None:  # OpenVINO's rows, after ort-xnor's: the forms it opens
            from xnorpipe.deploy import onnx as deploy_onnx

            deploy = sources["packed-bits"].deploy
            forms = OPENVINO_FORMS if deploy_onnx.has_binary_layers(deploy) else ("portable",)
            ov_dir = tempfile.TemporaryDirectory(prefix="xnorpipe-bench-ov-")
            ov_paths = {f.form: str(f.path) for f in deploy_onnx.export(deploy, forms, ov_dir.name)}
            at = max(i for i, (e, _) in enumerate(variants) if e in ("ort", "ort-xnor")) + 1
            variants[at:at] = [("openvino", form) for form in forms]
            notes.append(f"{arch}: {openvino_parity(ov_paths, tuple(deploy.input_shape))}")
        try:
            for t in threads:
                for b in batches:
                    # more timed runs at batch 1 (sub-ms calls: noise needs samples), fewer at big
                    # batches (keeps the whole run to minutes)
                    iters = args.iters * 4 if b == 1 else max(5, args.iters // (4 if b >= 32 else 1))
                    # Rounds cycle through every variant; a variant's figure is its median over
                    # rounds, so a burst of noise on this shared VM hits one round, not one row.
                    rounds: dict[tuple, list] = {v: [] for v in variants}
                    for _ in range(args.rounds):
                        for engine, form in variants:
                            if engine == "openvino":
                                r = bench_openvino(ov_runners, ov_paths[form], t, b, iters, args.warmup,
                                                   tuple(sources["packed-bits"].deploy.input_shape))
                            else:
                                src = sources[form or "packed-bits"]
                                (r,) = lib.run_bench([engine], src, batch_size=b, iters=iters, warmup=args.warmup,
                                                     threads=t)
                            rounds[(engine, form)].append(r)
                    results = []
                    for (engine, form), rs in rounds.items():
                        r = dict(rs[0])
                        r["p50_ms"] = float(np.median([x["p50_ms"] for x in rs]))
                        r["p90_ms"] = float(np.median([x["p90_ms"] for x in rs]))
                        r["images_per_s"] = b * 1e3 / r["p50_ms"]
                        r["label"] = f"{engine} ({form})" if form else engine
                        results.append(r)
                    base = next(r for r in results if r["engine"] == BASELINE)["p50_ms"]
                    for r in results:
                        rows.append((arch, t, b, r["label"], r["p50_ms"], r["p90_ms"], r["images_per_s"],
                                     base / r["p50_ms"]))
                        print(f"{arch:15s} threads {t} batch {b:3d} {r['label']:32s} p50 {r['p50_ms']:9.3f} ms "
                              f"{r['images_per_s']:10.1f} img/s  x{base / r['p50_ms']:.2f} vs ort portable",
                              flush=True)
        finally:
            for src in sources.values():
                src.close()
            ov_runners.clear()
            if ov_dir is not None:
                ov_dir.cleanup()

    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).as_posix()), *sys.argv[1:]])
    header = "| arch | threads | batch | engine | p50 ms | p90 ms | images/s | speed-up vs ort (portable) |"
    lines = [header, "|" + "---|" * 8]
    lines += [f"| {a} | {t} | {b} | {e} | {p50:.3f} | {p90:.3f} | {ips:,.1f} | {ratio:.2f}x |"
              for a, t, b, e, p50, p90, ips, ratio in rows]
    import onnxruntime
    import torch

    env = (f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
           f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}"
           + (f", openvino {ov_version}" if ov_version else ""))
    body = (f"Environment: {env}.\n\nForms: `ort` runs the portable ONNX (standard ops) on stock ONNX "
            "Runtime; `ort-xnor (packed)` runs the packed ONNX (XnorConv2d v1, float activations) and "
            "`ort-xnor (packed-bits)` the packed-bits ONNX (bit-packed activations) with the xnorpipe "
            "custom-op library, `ort-xnor (packed-bits, int8 first layer)` the same with "
            "`--first-layer int8` (ConvIntegerBinarize on the uint8 NHWC image, timed on uint8 input); "
            "`openvino (form)` runs that form on OpenVINO's CPU plugin in FP32 "
            "(INFERENCE_PRECISION_HINT f32, INFERENCE_NUM_THREADS = threads, one stream, static batch); "
            "`torch` runs the deploy module (float ops). Random-init weights; p50/p90 per batch.\n\n"
            + "\n".join(lines) + ("\n\n" + "\n".join(f"Note: {n}" for n in notes) if notes else ""))
    if args.out:
        lib.write_results_markdown(args.out, "Whole-model latency (CPU)", command, body)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
