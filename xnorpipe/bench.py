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


@dataclass
class BenchSources:
    """What the engines run and what they are compared against."""

    arch: str | None
    deploy: Any = None  # DeployModel, for PyTorch-based engines
    reference: torch.nn.Module | None = None  # training model (eval), for parity
    input_shape: tuple[int, int, int] = (3, 32, 32)  # C, H, W of the (normalised float NCHW) input
    engine_files: dict[str, str] = field(default_factory=dict)  # engine -> the ONNX file bench built for it
    engine_forms: dict[str, str] = field(default_factory=dict)  # engine -> the form of that file
    given_onnx: str | None = None  # --onnx: every ONNX engine runs this file
    options: dict[str, Any] = field(default_factory=dict)  # the engine options' values (xnorpipe.runtime)
    notes: list[str] = field(default_factory=list)
    _tmp: Any = None  # keeps the temporary export folder alive

    def onnx_for(self, engine: str) -> str | None:
        return self.given_onnx if self.given_onnx is not None else self.engine_files.get(engine)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def engine_forms(engines: Sequence[str], options: dict[str, Any] | None = None) -> dict[str, str]:
    """engine -> the ONNX form it runs when the bench exports the model, for these option values
    (engines that run the DeployModel itself have none)."""
    from xnorpipe.runtime import engine_class, resolve_options

    values = resolve_options(options)
    forms = {name: engine_class(name).form_for(values) for name in engines}
    return {name: form for name, form in forms.items() if form is not None}


MAX_IMAGE_VALUES = 1 << 26  # C * H * W of an ONNX file's input: a hostile size is refused, not allocated


def onnx_input_shape(model, source: str) -> tuple[int, int, int]:
    """(C, H, W) of an ONNX model's image input, as the normalised float NCHW batch every engine
    takes: a float input is [N, C, H, W], a uint8 one (the integer first layer) [N, H, W, C]."""
    from onnx import TensorProto

    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise XnorpipeError(f"{source}: expected one graph input, found {len(inputs)}")
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
    if len(dims) == 4:
        chw = (dims[3], dims[1], dims[2]) if tensor.elem_type == TensorProto.UINT8 else tuple(dims[1:])
        if min(chw) > 0 and math.prod(chw) <= MAX_IMAGE_VALUES:
            return chw
    shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    raise XnorpipeError(f"{source}: input {inputs[0].name!r} has shape {shown}; bench needs a 4-D image input "
                        f"with fixed channels, height and width, at most {MAX_IMAGE_VALUES} values an image")


def _rebuild_reference(meta: dict[str, str], checkpoint: str | None, notes: list[str], data: str | None = None):
    """The training model behind an ONNX file: --checkpoint, its random init (seed and BatchNorm
    calibration: synthetic, or the first training images of `data`), or the default checkpoint."""
    from xnorpipe import sources
    from xnorpipe.checkpoint import default_checkpoint
    from xnorpipe.models import model_names

    arch = meta.get("xnorpipe.arch")
    if not arch:
        notes.append("the ONNX file has no xnorpipe.arch metadata: parity and the torch engine are skipped")
        return None, None
    if arch not in model_names():
        notes.append(f"the ONNX file's arch {arch!r} is not one this xnorpipe builds: parity and the torch "
                     "engine are skipped")
        return arch, None
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
            return arch, sources.load_source_model(arch, random_init=True, data=data,
                                                   model_kwargs=sources.model_kwargs_from_metadata(meta))[0]
        return arch, sources.load_source_model(arch, random_init=True,
                                               model_kwargs=sources.model_kwargs_from_metadata(meta))[0]
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


def _float_arch_alternatives(name: str) -> str:
    """The engines that run a float arch where engine `name` is meant to run."""
    from xnorpipe.runtime import ENGINES

    device = ENGINES[name].devices[0]
    return " or ".join(n for n, cls in ENGINES.items()
                       if (cls.source == "deploy" or "portable" in cls.forms) and device in cls.devices)


def _check_first_layer(engines: Sequence[str], forms: dict[str, str]) -> list[str]:
    """The engines that run the integer first layer (--first-layer int8), or a one-line error
    when an engine of `engines` would run a binary form without it."""
    from xnorpipe.runtime import FIRST_LAYER, engine_class, engines_with

    takers = [n for n in engines_with(FIRST_LAYER, engines) if forms[n] in engine_class(n).first_layer_forms]
    others = [n for n in engines if n in forms and forms[n] != "portable" and n not in takers]
    if not takers or others:
        able = engines_with(FIRST_LAYER)
        able_forms = dict.fromkeys(f for n in able for f in engine_class(n).first_layer_forms)
        raise XnorpipeError(f"--first-layer int8 runs on {' or '.join(able)} with the {' or '.join(able_forms)} "
                            "form only")
    return takers


def prepare_sources(*, arch: str | None = None, checkpoint: str | None = None,
                    onnx_path: str | None = None, random_init: bool = False,
                    engines: Sequence[str] = (), data: str | None = None, model_kwargs: dict | None = None,
                    **options: Any) -> BenchSources:
    """Resolve --arch/--checkpoint/--onnx into the model(s) the engines run and the reference.

    `options`: the engine options' values by name (xnorpipe.runtime.engine_options: xnor_form,
    gpu_kernels, first_layer, ...; defaults for the others). With --arch, each ONNX engine runs
    the form it declares for them (`Engine.form_for`), exported here to a temporary folder;
    first_layer int8 gives the engines that declare it their form with the integer first layer,
    calibrated on `data`'s first training images (else synthetic ones).

    `data` (--data) also calibrates a --random-init model's BatchNorm, as `xnorpipe export` does,
    and rebuilds the reference of an --onnx random-init export calibrated on it; `model_kwargs`
    (--model-arg) are a --random-init model's builder arguments."""
    from xnorpipe.deploy import onnx as deploy_onnx
    from xnorpipe.runtime import FIRST_LAYER, engine_options, engines_with, resolve_options
    from xnorpipe.sources import fold_arch, load_source_model

    if (arch is None) == (onnx_path is None):
        raise XnorpipeError("give exactly one of --arch or --onnx")
    values = resolve_options(options)
    if onnx_path is not None:
        if random_init or model_kwargs:
            raise XnorpipeError(f"{'--random-init' if random_init else '--model-arg'} applies to --arch, not to --onnx")
        # metadata and input only: each engine loads the file itself, and the custom-op engines run
        # it without function bodies too
        proto = deploy_onnx.load_onnx(onnx_path, custom_op_library=True)
        meta = deploy_onnx.model_metadata(proto)
        input_shape = onnx_input_shape(proto, str(onnx_path))
        notes: list[str] = []
        for opt in engine_options():
            takers = engines_with(opt, engines)
            if opt.selects_model and values[opt.param] != opt.default and takers:
                notes.append(f"{opt.flag} applies to --arch: {', '.join(takers)} run {Path(onnx_path).name} "
                             f"({meta.get('xnorpipe.form', 'form unknown')})")
        arch, reference = _rebuild_reference(meta, checkpoint, notes, data)
        deploy = fold_arch(reference, arch) if reference is not None else None
        if deploy is not None and tuple(deploy.input_shape) != input_shape:
            raise XnorpipeError(f"{onnx_path} takes {list(input_shape)} images, but its arch {arch} takes "
                                f"{list(deploy.input_shape)}")
        return BenchSources(arch=arch, deploy=deploy, reference=reference, input_shape=input_shape,
                            given_onnx=str(onnx_path), options=values, notes=notes)
    reference, metadata = load_source_model(arch, checkpoint, random_init, data=data if random_init else None,
                                            model_kwargs=model_kwargs)
    deploy = fold_arch(reference, arch, metadata=metadata)
    sources = BenchSources(arch=arch, deploy=deploy, reference=reference, input_shape=tuple(deploy.input_shape),
                           options=values)
    forms = engine_forms(engines, values)
    if not deploy_onnx.has_binary_layers(deploy):
        from xnorpipe.runtime import engine_class

        for name, form in forms.items():
            if form != "portable":
                cls = engine_class(name)
                if "portable" not in cls.forms:
                    raise XnorpipeError(f"engine {name} needs a {form} model, and {arch} is a float arch with "
                                        f"none: use --engine {_float_arch_alternatives(name)}")
                forms[name] = "portable"
    integer = set()
    if values[FIRST_LAYER.param] != FIRST_LAYER.default:
        integer = set(_check_first_layer(engines, forms))
    sources.engine_forms = forms
    if forms:
        sources._tmp = tempfile.TemporaryDirectory(prefix="xnorpipe-bench-")
        float_forms = sorted({f for n, f in forms.items() if n not in integer})
        files = {f.form: str(f.path) for f in deploy_onnx.export(deploy, float_forms, sources._tmp.name)} \
            if float_forms else {}
        int8_files = {}
        if integer:
            from xnorpipe.deploy.first_layer import calibrated_first_layer

            layer = calibrated_first_layer(deploy, data)
            int8_forms = sorted({forms[n] for n in integer})
            int8_files = {f.form: str(f.path) for f in deploy_onnx.export(deploy, int8_forms, sources._tmp.name,
                                                                           first_layer=layer)}
        sources.engine_files = {n: (int8_files if n in integer else files)[f] for n, f in forms.items()}
    return sources


def create_engine(name: str, sources: BenchSources, *, threads: int | None, batch_size: int, **options: Any):
    """Engine `name` on `sources`, with the engine options it declares (`options` over the values
    `sources` was prepared with; those that select the model cannot change here)."""
    from xnorpipe.runtime import engine_class, engine_kwargs, engine_options, resolve_options

    values = resolve_options({**sources.options, **options})
    for opt in engine_options():
        if opt.selects_model and opt.param in sources.options and values[opt.param] != sources.options[opt.param]:
            raise TypeError(f"{opt.param} selects the model: give it to prepare_sources")
    kwargs: dict[str, Any] = {"model": sources.deploy, "onnx_path": sources.onnx_for(name), "threads": threads,
                              "batch_size": batch_size, **engine_kwargs(name, values)}
    if sources.given_onnx is None and name in sources.engine_forms:
        kwargs["form"] = sources.engine_forms[name]
    return engine_class(name)(**kwargs)


# -------------------------------------------------------------------------- measuring


def normalised_images(images_nhwc_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 NCHW, normalised as in training (the exports' metadata)."""
    from xnorpipe.data import normalize, to_tensor

    return normalize(to_tensor(images_nhwc_uint8)).numpy()


def model_input(images_nhwc_uint8: np.ndarray, input_shape: Sequence[int], *, uint8: bool = False) -> np.ndarray:
    """Decoded images as a model of `input_shape` (C, H, W) takes them: resized to H x W
    (xnorpipe.data.resize_batch: bilinear, rounded to uint8; a no-op at their own size), then
    normalised float32 NCHW, or with `uint8` (a model with the integer first layer) the resized
    uint8 NHWC pixels. The reference and every engine see the same pixels."""
    from xnorpipe.data import normalize, resize_batch, to_tensor

    c, h, w = input_shape
    if images_nhwc_uint8.ndim != 4 or images_nhwc_uint8.shape[3] != c:
        raise XnorpipeError(f"the model takes {c}-channel images, the data has images of shape "
                            f"{list(images_nhwc_uint8.shape[1:])}")
    batch = resize_batch(to_tensor(images_nhwc_uint8), (h, w))
    return batch.permute(0, 2, 3, 1).contiguous().numpy() if uint8 else normalize(batch).numpy()


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
                   desc: str | None = None, prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Logits of `run` over `x` in batches, each batch through `prepare` first when given; with
    `desc`, a progress bar on stderr."""
    from tqdm import tqdm

    from xnorpipe.utils import progress_interval

    starts = range(0, x.shape[0], batch_size)
    bar = tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None,
               mininterval=progress_interval())
    prepare = prepare or (lambda b: b)
    return np.concatenate([np.asarray(run(prepare(x[i:i + batch_size])), dtype=np.float32) for i in bar])


REFERENCE_PIXELS_PER_BATCH = 500 * 32 * 32  # the reference's batches: 500 CIFAR-sized images' worth


def reference_logits(model: torch.nn.Module, images: np.ndarray, input_shape: Sequence[int],
                     desc: str | None = None) -> np.ndarray:
    """The PyTorch model's logits on decoded uint8 NHWC images (`model_input`)."""
    model.eval()
    batch = max(1, REFERENCE_PIXELS_PER_BATCH // (input_shape[1] * input_shape[2]))
    with torch.inference_mode():
        return batched_logits(lambda b: model(torch.from_numpy(b)).numpy(), images, batch, desc,
                              prepare=lambda b: model_input(b, input_shape))


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


def bench_engine(engine, *, input_shape: Sequence[int], batch_size: int, iters: int, warmup: int,
                 images: np.ndarray | None = None, labels: np.ndarray | None = None,
                 ref: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """Latency on one batch of `input_shape` (real images when there are enough), then accuracy
    and parity over `images` (decoded uint8 NHWC, `model_input`)."""
    uint8 = engine.uint8_input
    if images is not None and images.shape[0] >= batch_size:
        x = model_input(images[:batch_size], input_shape, uint8=uint8)
    else:
        x = np.random.default_rng(seed).standard_normal((batch_size, *input_shape)).astype(np.float32)
        prepare = getattr(engine, "prepare_input", None)
        if prepare is not None:  # timed on the input the model takes (an integer first layer: uint8 images)
            x = prepare(x)
    result: dict[str, Any] = dict(engine.describe())
    result["batch_size"] = batch_size
    result.update(measure_latency(engine, x, iters=iters, warmup=warmup))
    if images is not None:
        logits = batched_logits(engine, images, batch_size, desc=f"{engine.name} on {images.shape[0]} images",
                                prepare=lambda b: model_input(b, input_shape, uint8=uint8))
        result.update(parity(logits, labels, ref))
    return result


def load_test_images(path: str, subset: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 test images (decoded uint8 NHWC, as stored) and labels through xnorpipe.data;
    `model_input` turns a batch into what a model takes."""
    from xnorpipe import data as cifar

    if subset is not None and subset < 1:
        raise XnorpipeError(f"--test-subset must be at least 1, got {subset}")
    d = cifar.load_cifar10(path, progress=False)
    images, labels = d.test_images, d.test_labels
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    return np.asarray(images), np.asarray(labels)


def run_bench(engines: Sequence[str], sources: BenchSources, *, batch_size: int, iters: int,
              warmup: int, threads: int | None = None, images: np.ndarray | None = None,
              labels: np.ndarray | None = None, **options: Any) -> list[dict[str, Any]]:
    """One result dict per engine, in order; parity columns when images and a reference exist.

    `images`: decoded uint8 NHWC test images (`load_test_images`), resized to the model's input
    per batch; `options`: engine options (xnorpipe.runtime) over those `sources` was prepared with."""
    if threads:
        torch.set_num_threads(threads)
    ref = None
    if images is not None:
        model_input(images[:1], sources.input_shape)  # a channel mismatch: one line, before any engine
        if sources.reference is not None:
            ref = reference_logits(sources.reference, images, sources.input_shape,
                                   desc=f"reference on {images.shape[0]} images")
    results = []
    for name in engines:
        engine = create_engine(name, sources, threads=threads, batch_size=batch_size, **options)
        r = bench_engine(engine, input_shape=sources.input_shape, batch_size=batch_size, iters=iters,
                         warmup=warmup, images=images, labels=labels, ref=ref)
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
