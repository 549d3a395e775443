"""`xnorpipe bench` from the engine registry (xnorpipe.runtime.ENGINES) and on models whose
input is not CIFAR's 32x32: the engines' declarations, the forms and options bench derives from
them, an engine added by its class alone, and the input shape read from the model (DeployModel
or ONNX file) with CIFAR images resized to it identically for the reference and every engine."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from conftest import assert_outputs_depend_on_input, require_ort_library, synthetic_images

from xnorpipe import bench as lib
from xnorpipe import runtime
from xnorpipe.errors import XnorpipeError
from xnorpipe.runtime import ENGINES, FIRST_LAYER, XNOR_FORM, EngineOption, engine_options, resolve_options
from xnorpipe.runtime.ort_engine import OrtEngine

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 40, 48)  # not square: a swapped H and W would not run


class TinyRect(nn.Module):
    """3x40x48 -> 10 logits: float conv /2, one binary block (or a float one), 1x1 conv, a
    whole-map average pool. It fails on a 32x32 input (the pool is larger than the map)."""

    def __init__(self, binary: bool = True, num_classes: int = 10):
        super().__init__()
        if binary:
            from xnorpipe.nn import BinaryActivation, BinaryConv2d

            middle = [nn.BatchNorm2d(32), BinaryActivation(), BinaryConv2d(32, 32, 3, padding=1), nn.ReLU()]
        else:
            middle = [nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      *middle, nn.Conv2d(32, num_classes, 1), nn.AvgPool2d((20, 24)))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


@pytest.fixture
def tiny_archs(monkeypatch):
    """tiny_rect (binary) and tiny_rect_float registered for this test only."""
    from xnorpipe import models

    monkeypatch.setattr(models, "ARCHS", dict(models.ARCHS))
    models.register_model("tiny_rect", input_shape=SHAPE, binary=True, epochs=1, lr=0.1)(
        lambda num_classes=10: TinyRect(True, num_classes))
    models.register_model("tiny_rect_float", input_shape=SHAPE, binary=False, epochs=1, lr=0.1)(
        lambda num_classes=10: TinyRect(False, num_classes))
    return "tiny_rect", "tiny_rect_float"


def _images(n_per_class: int = 2, seed: int = 5):
    return synthetic_images(n_per_class, seed)  # CIFAR-sized uint8 NHWC images and labels


# ------------------------------------------------------------------------- the registry


def test_declarations_are_consistent():
    """Every engine declares what bench needs, and every option it declares reaches a named
    parameter of its constructor (not swallowed by **options)."""
    for name, cls in ENGINES.items():
        assert cls.name == name and cls.summary
        assert cls.source in ("deploy", "onnx")
        assert cls.devices and set(cls.devices) <= {"cpu", "cuda"}
        params = inspect.signature(cls.__init__).parameters
        for opt in cls.options:
            assert isinstance(opt, EngineOption)
            assert opt.selects_model or opt.param in params, (name, opt.param)
        if cls.source == "onnx":
            assert cls.default_form in cls.forms and "form" in params
        else:
            assert not cls.forms and cls.default_form is None
        assert set(cls.first_layer_forms) <= set(cls.forms)
        assert (FIRST_LAYER in cls.options) == bool(cls.first_layer_forms)
        flags = {opt.param for opt in cls.options}
        for (param, _), form in cls.implied_forms.items():
            assert param in flags and form in cls.forms
    assert [cls.name for cls in ENGINES.values() if cls.custom_op_library] == ["ort-xnor"]
    assert len({opt.flag for opt in engine_options()}) == len(engine_options())


def test_engine_forms_come_from_the_declarations():
    every = list(ENGINES)
    assert lib.engine_forms(every) == {"ort": "portable", "ort-xnor": "packed-bits", "torch-xnor": "packed-bits",
                                       "trt": "packed"}
    cuda = lib.engine_forms(every, {"gpu_kernels": "cuda"})
    assert cuda["torch-xnor"] == cuda["trt"] == "packed" and cuda["ort-xnor"] == "packed-bits"
    packed = lib.engine_forms(every, {"xnor_form": "packed"})
    assert all(packed[n] == "packed" for n in runtime.engines_with(XNOR_FORM)) and packed["ort"] == "portable"
    assert lib.engine_forms(every, {"xnor_form": "packed-bits", "gpu_kernels": "cuda"})["torch-xnor"] == "packed-bits"
    assert "torch" not in lib.engine_forms(every)  # runs the DeployModel itself
    with pytest.raises(XnorpipeError, match="--xnor-form 'portable'"):
        resolve_options({"xnor_form": "portable"})
    with pytest.raises(TypeError, match="warp"):
        resolve_options({"warp": 9})
    assert resolve_options({"gpu_kernels": None})["gpu_kernels"] == "triton"  # None: the default


def test_bench_command_is_built_from_the_registry():
    from click.testing import CliRunner

    from xnorpipe.commands.bench import bench

    r = CliRunner().invoke(bench, ["--help"], terminal_width=400)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for name, cls in ENGINES.items():
        assert f"{name} ({cls.summary}" in text
    for opt in engine_options():
        assert opt.flag.split("/")[0] in text
    params = {p.name for p in bench.params}
    assert {opt.param for opt in engine_options()} <= params
    assert "torch-xnor packed-bits (packed with --gpu-kernels cuda)" in text


class OrtUnoptimisedEngine(OrtEngine):
    """Stock ONNX Runtime at a chosen graph optimisation level: an engine that exists only as a
    class with one option of its own."""

    name = "ort-level"
    summary = "stock ONNX Runtime at a chosen optimisation level"
    options = (EngineOption("--ort-level", "optimization", "all", "Graph optimisation of {engines}.",
                            ("all", "basic", "none")),)


def test_an_engine_is_its_class_alone(monkeypatch, tiny_archs):
    """Registering a class is all a new engine takes: bench lists it, resolves its option,
    exports its form and hands it the option's value."""
    import onnxruntime as ort

    from xnorpipe.commands.bench import _engine_help

    monkeypatch.setitem(ENGINES, OrtUnoptimisedEngine.name, OrtUnoptimisedEngine)
    assert lib.read_engine_list(["ort,ort-level"]) == ["ort", "ort-level"]
    assert "ort-level (stock ONNX Runtime at a chosen optimisation level" in _engine_help()
    assert resolve_options()["optimization"] == "all"
    sources = lib.prepare_sources(arch=tiny_archs[0], random_init=True, engines=["ort-level"], optimization="none")
    try:
        assert sources.engine_forms == {"ort-level": "portable"}
        level = ort.GraphOptimizationLevel
        engine = lib.create_engine("ort-level", sources, threads=1, batch_size=2)
        assert engine.session.get_session_options().graph_optimization_level == level.ORT_DISABLE_ALL
        engine = lib.create_engine("ort-level", sources, threads=1, batch_size=2, optimization="basic")
        assert engine.session.get_session_options().graph_optimization_level == level.ORT_ENABLE_BASIC
        (row,) = lib.run_bench(["ort-level"], sources, batch_size=2, iters=1, warmup=0, threads=1)
        assert row["engine"] == "ort-level" and row["form"] == "portable"
        with pytest.raises(TypeError, match="prepare_sources"):
            lib.create_engine("ort-level", sources, threads=1, batch_size=2, xnor_form="packed")
    finally:
        sources.close()


def test_model_choices_from_the_declarations(tiny_archs):
    """A float arch runs on no engine that needs a binary form (trt falls back to portable), and
    --first-layer int8 runs only where an engine declares it, in its forms: one-line errors
    before anything is exported."""
    binary, floating = tiny_archs
    with pytest.raises(XnorpipeError) as e:
        lib.prepare_sources(arch=floating, random_init=True, engines=["torch-xnor"])
    for needle in ("engine torch-xnor", "tiny_rect_float is a float arch", "--engine torch or"):
        assert needle in e.value.message
    sources = lib.prepare_sources(arch=floating, random_init=True, engines=["trt", "ort"])
    try:
        assert sources.engine_forms == {"trt": "portable", "ort": "portable"}
        assert sources.engine_files["trt"] == sources.engine_files["ort"]
    finally:
        sources.close()
    for engines, options in ((["ort-xnor", "torch-xnor"], {}), (["ort-xnor"], {"xnor_form": "packed"}),
                             (["ort", "torch"], {})):
        with pytest.raises(XnorpipeError, match="--first-layer int8 runs on ort-xnor with the packed-bits form only"):
            lib.prepare_sources(arch=binary, random_init=True, engines=engines, first_layer="int8", **options)


# ------------------------------------------------------------------------ input size


def test_model_input_resizes_before_normalising():
    images, _ = _images(1)
    assert np.array_equal(lib.model_input(images, (3, 32, 32)), lib.normalised_images(images))  # as before
    pixels = lib.model_input(images, SHAPE, uint8=True)
    assert pixels.dtype == np.uint8 and pixels.shape == (10, 40, 48, 3)
    assert np.array_equal(lib.model_input(images, SHAPE), lib.normalised_images(pixels))
    with pytest.raises(XnorpipeError, match="1-channel"):
        lib.model_input(images, (1, 40, 48))


def test_bench_resizes_cifar_images_for_reference_and_engines(tiny_archs):
    """A 3x40x48 model benched on 32x32 images: every engine agrees with the PyTorch reference
    (which it could not, on other pixels), the latency batch has the model's shape, and the
    integer first layer gets the very pixels the float engines see, as uint8 NHWC."""
    require_ort_library()
    images, labels = _images()
    sources = lib.prepare_sources(arch=tiny_archs[0], random_init=True, engines=["torch", "ort", "ort-xnor"])
    try:
        assert sources.input_shape == SHAPE and tuple(sources.deploy.input_shape) == SHAPE
        ref = lib.reference_logits(sources.reference, images, sources.input_shape)
        assert_outputs_depend_on_input(ref)
        rows = lib.run_bench(["torch", "ort", "ort-xnor"], sources, batch_size=8, iters=1, warmup=0, threads=1,
                             images=images, labels=labels)
        for row in rows:
            assert row["images"] == 20 and row["agreement"] == 100.0 and row["median_abs_diff"] <= 1e-4, row
        (row,) = lib.run_bench(["ort-xnor"], sources, batch_size=3, iters=1, warmup=0, threads=1)  # random input
        assert row["batch_size"] == 3 and row["p50_ms"] > 0
    finally:
        sources.close()
    int8 = lib.prepare_sources(arch=tiny_archs[0], random_init=True, engines=["ort-xnor"], first_layer="int8")
    try:
        engine = lib.create_engine("ort-xnor", int8, threads=1, batch_size=8)
        assert engine.uint8_input
        via_float = engine(lib.model_input(images, SHAPE))  # de-normalised back to pixels by the engine
        assert np.array_equal(engine(lib.model_input(images, SHAPE, uint8=True)), via_float)
        (row,) = lib.run_bench(["ort-xnor"], int8, batch_size=8, iters=1, warmup=0, threads=1, images=images,
                               labels=labels)
        assert row["form"] == "packed-bits, int8 first layer" and row["agreement"] >= 90.0
    finally:
        int8.close()


def _exported(tmp_path, arch, forms=("portable",), first_layer=None):
    from xnorpipe.deploy import onnx as deploy_onnx
    from xnorpipe.sources import fold_arch, load_source_model

    model, meta = load_source_model(arch, random_init=True)
    deploy = fold_arch(model, arch, metadata=meta)
    return {f.form: f.path for f in deploy_onnx.export(deploy, forms, tmp_path, first_layer=first_layer)}, deploy


def test_onnx_input_shape_is_read_from_the_file(tiny_archs, tmp_path):
    from xnorpipe.deploy.first_layer import calibrated_first_layer

    files, deploy = _exported(tmp_path / "float", tiny_archs[0], ("portable", "packed-bits"))
    int8, _ = _exported(tmp_path / "int8", tiny_archs[0], ("packed-bits",), calibrated_first_layer(deploy))
    for path in (*files.values(), *int8.values()):
        assert lib.onnx_input_shape(onnx.load(str(path)), str(path)) == SHAPE
    images, labels = _images(1)
    sources = lib.prepare_sources(onnx_path=str(files["portable"]), engines=["ort", "torch"])
    try:
        assert sources.input_shape == SHAPE and sources.reference is not None  # the random init, rebuilt
        rows = lib.run_bench(["ort", "torch"], sources, batch_size=4, iters=1, warmup=0, threads=1, images=images,
                             labels=labels)
        assert all(r["agreement"] == 100.0 and r["median_abs_diff"] <= 1e-4 for r in rows)
    finally:
        sources.close()
    m = onnx.load(str(files["portable"]))
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    with pytest.raises(XnorpipeError, match="fixed channels, height and width") as e:
        lib.onnx_input_shape(m, "m.onnx")
    assert "'height'" in e.value.message
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 10**9  # a hostile size: refused, not allocated
    with pytest.raises(XnorpipeError, match="at most"):
        lib.onnx_input_shape(m, "m.onnx")
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 36  # a file that says another size than its arch
    other = tmp_path / "other.onnx"
    onnx.save(m, str(other))
    with pytest.raises(XnorpipeError, match=r"takes \[3, 36, 48\] images, but its arch tiny_rect takes \[3, 40, 48\]"):
        lib.prepare_sources(onnx_path=str(other), engines=["ort"])


def test_cli_bench_on_an_unknown_arch_file_resizes_its_images(tiny_archs, tmp_path, image_tree):
    """`bench --onnx` of a 3x40x48 file whose arch this process does not know (the CLI runs in
    its own): no parity, but top-1 on the test images resized to the file's input."""
    files, _ = _exported(tmp_path, tiny_archs[0])
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "bench", "--onnx", str(files["portable"]), "--engine",
                        "ort", "--data", str(image_tree.path), "--batch-size", "7", "--iters", "1", "--warmup", "0",
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["images"] == 20 and 0 <= row["top1"] <= 100 and "agreement" not in row
    assert any("'tiny_rect' is not one this xnorpipe builds" in note for note in row["notes"])
