"""Runtimes that execute a deployed model; `create_engine(name, ...)` picks one by name.

Each engine maps normalised float32 NCHW input (NumPy) to float32 logits [N, classes].
Engines import their heavy dependencies lazily: a missing one raises XnorpipeError naming it.
"""

from __future__ import annotations

import importlib

# name -> "module:class"
ENGINES = {
    "torch": "xnorpipe.runtime.torch_engine:TorchEngine",
    "ort": "xnorpipe.runtime.ort_engine:OrtEngine",
    "ort-xnor": "xnorpipe.runtime.ort_engine:OrtXnorEngine",
    "torch-xnor": "xnorpipe.runtime.torch_xnor:TorchXnorEngine",
    "trt": "xnorpipe.runtime.trt_engine:TrtEngine",
}


def engine_class(name: str):
    from xnorpipe.errors import XnorpipeError

    if name not in ENGINES:
        raise XnorpipeError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    module, attr = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), attr)
