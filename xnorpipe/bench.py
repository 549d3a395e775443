"""Benchmarking library: latency and throughput of engines, accuracy and parity on CIFAR-10.

Used by `xnorpipe bench` and benchmarks/*.py. Parity is always against the PyTorch *training*
model in eval mode (not the deploy module), so it covers folding as well as the runtime.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xnorpipe.errors import XnorpipeError

# The ONNX form each engine runs when the bench exports the model itself. --xnor-form overrides
# it for every engine of XNOR_ENGINES; --gpu-kernels cuda (the hand-written kernel implements
# XnorConv2d only) makes the GPU engines' default the packed form.
ENGINE_FORMS = {"ort": "portable", "ort-xnor": "packed-bits", "torch-xnor": "packed-bits", "trt": "packed"}
XNOR_FORMS = ("packed", "packed-bits")
XNOR_ENGINES = ("ort-xnor", "torch-xnor", "trt")
GPU_KERNELS = ("triton", "cuda")  # --gpu-kernels: the kernels of torch-xnor and of trt's plugins
CUDA_KERNEL_FORM = "packed"


def engine_forms(xnor_form: str | None = None, gpu_kernels: str = "triton") -> dict[str, str]:
    """engine -> the ONNX form it runs when the bench exports the model, for these options."""
    if xnor_form is not None and xnor_form not in XNOR_FORMS:
        raise XnorpipeError(f"unknown --xnor-form {xnor_form!r}; choose {' or '.join(XNOR_FORMS)}")
    if gpu_kernels not in GPU_KERNELS:
        raise XnorpipeError(f"unknown --gpu-kernels {gpu_kernels!r}; choose {' or '.join(GPU_KERNELS)}")
    forms = dict(ENGINE_FORMS)
    if gpu_kernels == "cuda":
        forms.update({"torch-xnor": CUDA_KERNEL_FORM, "trt": CUDA_KERNEL_FORM})
    if xnor_form is not None:
        forms.update({e: xnor_form for e in XNOR_ENGINES})
    return forms


@dataclass
class BenchSources:
    """What the engines run and what they are compared against."""

    arch: str | None
    deploy: Any = None  # DeployModel, for PyTorch-based engines
    reference: torch.nn.Module | None = None  # training model (eval), for parity
    onnx_paths: dict[str, str] = field(default_factory=dict)  # form -> file
    given_onnx: str | None = None  # --onnx: every ONNX engine runs this file
    notes: list[str] = field(default_factory=list)
    engine_forms: dict[str, str] = field(default_factory=lambda: dict(ENGINE_FORMS))
    _tmp: Any = None  # keeps the temporary export folder alive

    def onnx_for(self, engine: str) -> str | None:
        if self.given_onnx is not None:
            return self.given_onnx
        form = self.engine_forms.get(engine)
        if form is None:
            return None
        if form != "portable" and form not in self.onnx_paths:
            if engine == "ort-xnor":
                raise XnorpipeError(f"engine ort-xnor needs a {form} model, and {self.arch} is a float "
                                    "arch with none: use --engine ort")
            return self.onnx_paths.get("portable")
        return self.onnx_paths.get(form)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _rebuild_reference(meta: dict[str, str], checkpoint: str | None, notes: list[str], data: str | None = None):
    """The training model behind an ONNX file: --checkpoint, its random init (seed and BatchNorm
    calibration: synthetic, or the first training images of `data`), or the default checkpoint."""
    from xnorpipe import sources
    from xnorpipe.checkpoint import default_checkpoint

    arch = meta.get("xnorpipe.arch")
    if not arch:
        notes.append("the ONNX file has no xnorpipe.arch metadata: parity and the torch engine are skipped")
        return None, None
    if checkpoint is None and meta.get("xnorpipe.random_init") == "true":
        calibration = meta.get("xnorpipe.random_calibration", "")
        if meta.get("xnorpipe.random_seed") != str(sources.RANDOM_INIT_SEED) or not (
                calibration == f"synthetic:{sources.CALIBRATION_SEED}" or calibration.startswith("data:")):
            notes.append("random-init export with an unknown seed or BatchNorm calibration (an older "
                         "xnorpipe's?): parity is skipped")
            return arch, None
        if calibration.startswith("data:"):
            if data is None:
                notes.append("random-init export calibrated on a dataset's images: pass that dataset as "
                             "--data to rebuild its reference; parity is skipped")
                return arch, None
            if sources.calibration_tag(sources.data_calibration_images(data), data) != calibration:
                notes.append(f"random-init export calibrated on other images than --data's "
                             f"({calibration[:17]}...): parity is skipped")
                return arch, None
            return arch, sources.load_source_model(arch, random_init=True, data=data)[0]
        return arch, sources.load_source_model(arch, random_init=True)[0]
    if checkpoint is None and not default_checkpoint(arch).is_file():
        notes.append(f"no checkpoint for {arch} ({default_checkpoint(arch)}): parity is skipped; "
                     "pass --checkpoint")
        return arch, None
    model, prov = sources.load_source_model(arch, checkpoint)
    want = meta.get("xnorpipe.checkpoint_sha256")
    if want and want != prov["xnorpipe.checkpoint_sha256"]:
        notes.append(f"the reference checkpoint is not the one the ONNX file was exported from "
                     f"(sha256 {prov['xnorpipe.checkpoint_sha256'][:12]} vs {want[:12]})")
    return arch, model


def prepare_sources(*, arch: str | None = None, checkpoint: str | None = None,
                    onnx_path: str | None = None, random_init: bool = False,
                    engines: Sequence[str] = (), xnor_form: str | None = None,
                    gpu_kernels: str = "triton", data: str | None = None,
                    first_layer: str = "float") -> BenchSources:
    """Resolve --arch/--checkpoint/--onnx into the model(s) the engines run and the reference.

    `data` (--data) calibrates a --random-init model's BatchNorm, as `xnorpipe export` does, and
    rebuilds the reference of an --onnx random-init export calibrated on it.

    `xnor_form` and `gpu_kernels` pick the forms the xnor engines run when the bench exports
    (`engine_forms`). `first_layer` int8: ort-xnor runs its packed-bits form with the integer first
    layer, calibrated on `data`'s first training images (else synthetic ones)."""
    from xnorpipe.deploy import onnx_export
    from xnorpipe.deploy.fold import fold_model
    from xnorpipe.sources import load_source_model

    if (arch is None) == (onnx_path is None):
        raise XnorpipeError("give exactly one of --arch or --onnx")
    forms = engine_forms(xnor_form, gpu_kernels)
    if onnx_path is not None:
        if random_init:
            raise XnorpipeError("--random-init applies to --arch, not to --onnx")
        # metadata only: each engine loads the file itself, and the custom-op engines run it
        # without function bodies too
        meta = onnx_export.model_metadata(onnx_export.load_onnx(onnx_path, custom_op_library=True))
        notes: list[str] = []
        if first_layer != "float":
            notes.append("--first-layer applies to --arch: the file runs with its own first layer")
        xnor = [e for e in engines if e in XNOR_ENGINES]
        if xnor_form is not None and xnor:
            notes.append(f"--xnor-form applies to --arch: {', '.join(xnor)} run {Path(onnx_path).name} "
                         f"({meta.get('xnorpipe.form', 'form unknown')})")
        arch, reference = _rebuild_reference(meta, checkpoint, notes, data)
        deploy = fold_model(reference, arch=arch) if reference is not None else None
        return BenchSources(arch=arch, deploy=deploy, reference=reference, given_onnx=str(onnx_path),
                            notes=notes)
    reference, metadata = load_source_model(arch, checkpoint, random_init, data=data if random_init else None)
    deploy = fold_model(reference, arch=arch, metadata=metadata)
    sources = BenchSources(arch=arch, deploy=deploy, reference=reference)
    sources.engine_forms = forms
    wanted = {sources.engine_forms[e] for e in engines if e in sources.engine_forms}
    if not onnx_export.has_binary_layers(deploy) and wanted - {"portable"}:
        wanted = {"portable"}
    integer = None
    if first_layer == "int8":  # the integer first layer: ort-xnor's packed-bits model only
        others = [e for e in engines if e in XNOR_ENGINES and e != "ort-xnor"]
        if "ort-xnor" not in engines or others or forms["ort-xnor"] != "packed-bits":
            raise XnorpipeError("--first-layer int8 runs on ort-xnor with the packed-bits form only")
        from xnorpipe.deploy.first_layer import calibrated_first_layer

        integer = calibrated_first_layer(deploy, data)
        wanted.discard("packed-bits")
    if wanted or integer is not None:
        sources._tmp = tempfile.TemporaryDirectory(prefix="xnorpipe-bench-")
        for f in onnx_export.export(deploy, sorted(wanted), sources._tmp.name) if wanted else ():
            sources.onnx_paths[f.form] = str(f.path)
        if integer is not None:
            (f,) = onnx_export.export(deploy, ["packed-bits"], sources._tmp.name, first_layer=integer)
            sources.onnx_paths["packed-bits"] = str(f.path)
    return sources


def create_engine(name: str, sources: BenchSources, *, threads: int | None, batch_size: int,
                  device: str = "cpu", gpu_kernels: str = "triton", cuda_graphs: bool = True):
    """Engine `name` on `sources`; `device` reaches torch and torch-xnor, `gpu_kernels` the GPU
    engines, `cuda_graphs` torch-xnor."""
    from xnorpipe.runtime import engine_class

    cls = engine_class(name)
    kwargs: dict[str, Any] = {"model": sources.deploy, "onnx_path": sources.onnx_for(name),
                              "threads": threads, "batch_size": batch_size}
    if name in ("torch", "torch-xnor"):
        kwargs["device"] = device
    if name in ("torch-xnor", "trt"):
        kwargs["gpu_kernels"] = gpu_kernels
    if name == "torch-xnor":
        kwargs["cuda_graphs"] = cuda_graphs
    if name == "ort-xnor" and sources.given_onnx is None:
        kwargs["form"] = sources.engine_forms[name]
    return cls(**kwargs)


# -------------------------------------------------------------------------- measuring


def normalised_images(images_nhwc_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 NCHW, normalised as in training (the exports' metadata)."""
    from xnorpipe.data import normalize, to_tensor

    return normalize(to_tensor(images_nhwc_uint8)).numpy()


def measure_latency(run: Callable[[np.ndarray], Any], x: np.ndarray, *, iters: int,
                    warmup: int) -> dict[str, float]:
    """Per-call wall latency of `run(x)` after `warmup` untimed calls."""
    if iters < 1:
        raise XnorpipeError("--iters must be at least 1")
    for _ in range(warmup):
        run(x)
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        run(x)
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "images_per_s": float(x.shape[0] * iters / times.sum())}


def batched_logits(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int,
                   desc: str | None = None) -> np.ndarray:
    """Logits of `run` over `x` in batches; with `desc`, a progress bar on stderr."""
    from tqdm import tqdm

    from xnorpipe.utils import progress_interval

    starts = range(0, x.shape[0], batch_size)
    bar = tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None,
               mininterval=progress_interval())
    return np.concatenate([np.asarray(run(x[i:i + batch_size]), dtype=np.float32) for i in bar])


def reference_logits(model: torch.nn.Module, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return batched_logits(lambda b: model(torch.from_numpy(b)).numpy(), x, batch_size)


def parity(logits: np.ndarray, labels: np.ndarray | None, ref: np.ndarray | None) -> dict[str, float]:
    """Top-1 of an engine (and of the reference), agreement and |logit difference| vs the reference."""
    out: dict[str, float] = {"images": int(logits.shape[0])}
    top = logits.argmax(1)
    if labels is not None:
        out["top1"] = float((top == labels).mean() * 100)
    if ref is not None:
        diff = np.abs(logits.astype(np.float64) - ref.astype(np.float64))
        if labels is not None:
            out["reference_top1"] = float((ref.argmax(1) == labels).mean() * 100)
        out["agreement"] = float((top == ref.argmax(1)).mean() * 100)
        out["median_abs_diff"] = float(np.median(diff))
        out["max_abs_diff"] = float(diff.max())
    return out


def bench_engine(engine, *, batch_size: int, iters: int, warmup: int,
                 data: np.ndarray | None = None, labels: np.ndarray | None = None,
                 ref: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """Latency on one batch (real images when given), then accuracy/parity over `data`."""
    if data is not None and data.shape[0] >= batch_size:
        x = data[:batch_size]
    else:
        x = np.random.default_rng(seed).standard_normal((batch_size, 3, 32, 32)).astype(np.float32)
    prepare = getattr(engine, "prepare_input", None)
    if prepare is not None:  # timed on the input the model takes (an integer first layer: uint8 images)
        x = prepare(x)
    result: dict[str, Any] = dict(engine.describe())
    result["batch_size"] = batch_size
    result.update(measure_latency(engine, x, iters=iters, warmup=warmup))
    if data is not None:
        logits = batched_logits(engine, data, batch_size, desc=f"{engine.name} on {data.shape[0]} images")
        result.update(parity(logits, labels, ref))
    return result


def load_test_set(path: str, subset: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 test images (normalised NCHW float32) and labels through xnorpipe.data."""
    from xnorpipe import data as cifar

    d = cifar.load_cifar10(path, progress=False)
    images, labels = d.test_images, d.test_labels
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    return normalised_images(images), np.asarray(labels)


def run_bench(engines: Sequence[str], sources: BenchSources, *, batch_size: int, iters: int,
              warmup: int, threads: int | None = None, data: np.ndarray | None = None,
              labels: np.ndarray | None = None, device: str = "cpu", gpu_kernels: str = "triton",
              cuda_graphs: bool = True) -> list[dict[str, Any]]:
    """One result dict per engine, in order; parity columns when data and a reference exist."""
    if threads:
        torch.set_num_threads(threads)
    ref = None
    if data is not None and sources.reference is not None:
        ref = reference_logits(sources.reference, data)
    results = []
    for name in engines:
        engine = create_engine(name, sources, threads=threads, batch_size=batch_size, device=device,
                               gpu_kernels=gpu_kernels, cuda_graphs=cuda_graphs)
        r = bench_engine(engine, batch_size=batch_size, iters=iters, warmup=warmup,
                         data=data, labels=labels, ref=ref)
        r["arch"] = sources.arch
        r["threads"] = threads
        r["iters"] = iters
        results.append(r)
        del engine
    return results


# ---------------------------------------------------------------------------- output


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and abs(v) < 1e-2:
            return f"{v:.1e}"
        return f"{v:,.{digits}f}"
    return str(v)


TABLE_COLUMNS = [("engine", "engine"), ("form", "form"), ("batch", "batch_size"), ("p50 ms", "p50_ms"),
                 ("p90 ms", "p90_ms"), ("p99 ms", "p99_ms"), ("img/s", "images_per_s"),
                 ("top-1 %", "top1"), ("ref top-1 %", "reference_top1"), ("agree %", "agreement"),
                 ("median |d|", "median_abs_diff"), ("max |d|", "max_abs_diff")]


def format_table(results: Sequence[dict[str, Any]]) -> str:
    cols = [(h, k) for h, k in TABLE_COLUMNS if any(k in r for r in results)]
    rows = [[h for h, _ in cols]] + [[_fmt(r.get(k)) for _, k in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) if cols[i][1] in ("engine", "form") else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))) for row in rows)


def to_json_lines(results: Sequence[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(r, sort_keys=True) for r in results)


def read_engine_list(values: Sequence[str]) -> list[str]:
    """`--engine a --engine b,c` -> [a, b, c], validated against the registry."""
    from xnorpipe.runtime import ENGINES

    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        raise XnorpipeError("no engine given")
    for n in names:
        if n not in ENGINES:
            raise XnorpipeError(f"unknown engine {n!r}; choose from {', '.join(ENGINES)}")
    return names


def write_results_markdown(path: str | Path, title: str, command: str, body: str) -> None:
    from xnorpipe.utils import atomic_write_text

    atomic_write_text(path, f"# {title}\n\nCommand: `{command}`\n\n{body}\n")
