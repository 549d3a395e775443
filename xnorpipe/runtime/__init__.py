"""Runtimes that execute a deployed model, and the registry of them (`ENGINES`).

Each engine maps normalised float32 NCHW input (NumPy) to float32 logits [N, classes], and
declares what it runs, where, and the `bench` options it takes (xnorpipe.runtime.base.Engine).
`xnorpipe bench` reads everything it knows about engines from here. Engines import their heavy
dependencies (onnxruntime, Triton, CuPy, TensorRT) lazily: a missing one raises XnorpipeError
naming it when the engine is built, never when the registry is imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from xnorpipe.errors import XnorpipeError
from xnorpipe.runtime.base import CUDA_GRAPHS, DEVICE, FIRST_LAYER, GPU_KERNELS, XNOR_FORM, Engine, EngineOption
from xnorpipe.runtime.ort_engine import OrtEngine, OrtXnorEngine
from xnorpipe.runtime.torch_engine import TorchEngine
from xnorpipe.runtime.torch_xnor import TorchXnorEngine
from xnorpipe.runtime.trt_engine import TrtEngine

ENGINES: dict[str, type[Engine]] = {cls.name: cls for cls in (TorchEngine, OrtEngine, OrtXnorEngine,
                                                              TorchXnorEngine, TrtEngine)}


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise XnorpipeError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    return ENGINES[name]


def engine_options() -> list[EngineOption]:
    """Every option some engine declares, once, in the order the registry first meets it."""
    seen: dict[str, EngineOption] = {}
    for cls in ENGINES.values():
        for opt in cls.options:
            if seen.setdefault(opt.param, opt) is not opt:
                raise RuntimeError(f"two declarations of the engine option {opt.param!r}")  # a coding error
    return list(seen.values())


def engines_with(option: EngineOption, names: Iterable[str] | None = None) -> list[str]:
    """The engines (of `names`, default all) that declare `option`."""
    return [n for n in (ENGINES if names is None else names) if option in engine_class(n).options]


def resolve_options(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every engine option's value: `values` over the declared defaults, choices checked."""
    values = dict(values or {})
    out = {}
    for opt in engine_options():
        v = values.pop(opt.param, None)
        v = opt.default if v is None else v
        if opt.choices is not None and v is not None and v not in opt.choices:
            raise XnorpipeError(f"unknown {opt.flag} {v!r}; choose {' or '.join(opt.choices)}")
        out[opt.param] = v
    if values:
        raise TypeError(f"not an engine option: {', '.join(sorted(values))}")
    return out


def engine_kwargs(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments engine `name` takes from the option values (its declared options,
    but those that select the model it is given)."""
    return {opt.param: values[opt.param] for opt in engine_class(name).options if not opt.selects_model}


__all__ = ["CUDA_GRAPHS", "DEVICE", "ENGINES", "FIRST_LAYER", "GPU_KERNELS", "XNOR_FORM", "Engine", "EngineOption",
           "engine_class", "engine_kwargs", "engine_options", "engines_with", "resolve_options"]
