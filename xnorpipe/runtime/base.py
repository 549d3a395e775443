"""The interface every runtime implements, and what each engine declares about itself.

An engine class declares what it runs (`source`, `forms`, `default_form`), what it needs
(`custom_op_library`), where it runs (`devices`) and the `bench` options it takes (`options`);
`xnorpipe bench` builds its --engine help, its engine options and each engine's model from these
declarations (the registry is xnorpipe.runtime.ENGINES), and interprets no engine name itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class EngineOption:
    """A `bench` option that engines declare; several engines may declare the same one."""

    flag: str  # "--gpu-kernels"; a boolean switch: "--cuda-graphs/--no-cuda-graphs"
    param: str  # the value's name: bench's parameter and the engine's keyword argument
    default: Any
    help: str  # "{engines}" stands for the engines that declare the option
    choices: tuple[str, ...] | None = None
    # True: the option picks the model bench builds for the engine (a form, a first layer), and
    # reaches the engine only through that model, not as a keyword argument
    selects_model: bool = False


DEVICE = EngineOption("--device", "device", "auto", "Where {engines} run: auto picks CUDA when available.",
                      ("cpu", "cuda", "auto"))
XNOR_FORM = EngineOption(
    "--xnor-form", "xnor_form", None,
    "The ONNX form {engines} run with --arch: packed-bits (bit-packed activations between binary layers) "
    "or packed.", ("packed", "packed-bits"), selects_model=True)
GPU_KERNELS = EngineOption(
    "--gpu-kernels", "gpu_kernels", "triton",
    "Kernels of xnorpipe's ops in {engines}: triton (every op) or cuda (the hand-written XnorConv2d "
    "kernel, packed form only).", ("triton", "cuda"))
CUDA_KERNEL_FORM = "packed"  # what --gpu-kernels cuda implies: the hand-written kernel is XnorConv2d only
CUDA_GRAPHS = EngineOption("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", True,
                           "{engines} on CUDA: capture one CUDA graph per input shape and replay it.")
FIRST_LAYER = EngineOption(
    "--first-layer", "first_layer", "float",
    "With --arch: int8 runs the packed-bits model of {engines} with the integer first layer (uint8 image "
    "in; calibrated on the first training images of --data, else synthetic ones).", ("float", "int8"),
    selects_model=True)


class Engine:
    """Runs one deployed model: normalised float32 NCHW input -> float32 logits [N, classes].

    Sources (an engine takes the ones it needs, and raises XnorpipeError when one is missing):
      - `model`: a DeployModel (xnorpipe.deploy.ir), for the PyTorch-based engines and for the
        ONNX engines, which then emit their form in memory;
      - `onnx_path`: an ONNX file from `xnorpipe export` (or a serialized engine for `trt`).
    Every engine also takes `threads`, `batch_size`, the keyword of each option it declares
    (`options`, but for those that select the model), and, when `source` is "onnx", `form`.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # a few words for `bench --help`
    source: ClassVar[str] = "onnx"  # what it runs: "deploy" (a DeployModel) or "onnx" (an ONNX file)
    # the ONNX forms bench may build for it from --arch (with --onnx it runs the given file), and
    # the one it builds when no option says otherwise
    forms: ClassVar[tuple[str, ...]] = ()
    default_form: ClassVar[str | None] = None
    # (option param, value) -> the form that value implies when --xnor-form is not given
    implied_forms: ClassVar[Mapping[tuple[str, Any], str]] = {}
    first_layer_forms: ClassVar[tuple[str, ...]] = ()  # forms it runs with the integer first layer
    custom_op_library: ClassVar[bool] = False  # runs xnorpipe's ops on libxnorpipe_ort.so
    devices: ClassVar[tuple[str, ...]] = ("cpu",)  # where it runs; the first is what it is meant for
    options: ClassVar[tuple[EngineOption, ...]] = ()
    # set by an engine whose model takes the decoded uint8 NHWC image (the integer first layer)
    uint8_input: bool = False

    def __init__(self, *, model=None, onnx_path: str | None = None, threads: int | None = None,
                 batch_size: int = 1, **options: Any) -> None:
        raise NotImplementedError

    @classmethod
    def form_for(cls, values: Mapping[str, Any]) -> str | None:
        """The ONNX form this engine runs from --arch, given bench's option values (None for an
        engine that runs the DeployModel itself)."""
        if cls.source != "onnx":
            return None
        if XNOR_FORM in cls.options and values.get(XNOR_FORM.param) is not None:
            return values[XNOR_FORM.param]
        for (param, value), form in cls.implied_forms.items():
            if values.get(param) == value:
                return form
        return cls.default_form

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Facts for the bench report (provider, library path, precision, ...)."""
        return {"engine": self.name}
