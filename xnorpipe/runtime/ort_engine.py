"""ONNX Runtime engines (CPU): `ort` (stock ORT, any form) and `ort-xnor` (the custom-op library).

`ort` runs a portable model as is and a packed model through its XnorConv2d function body.
`ort-xnor` registers `libxnorpipe_ort.so` so XnorConv2d nodes run on the bitwise kernels; it
refuses a model without XnorConv2d nodes, since its numbers would then silently be stock ORT's.
Sources: `onnx_path`, or a DeployModel (`model`), emitted in memory in the engine's form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xnorpipe.errors import XnorpipeError
from xnorpipe.runtime.base import Engine


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class OrtEngine(Engine):
    name = "ort"
    form = "portable"  # the form emitted when given a DeployModel instead of a file

    def __init__(self, *, model=None, onnx_path: str | None = None, threads: int | None = None,
                 batch_size: int = 1, optimization: str = "all", **options: Any) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise XnorpipeError(f"engine {self.name}: onnxruntime is not installed") from None
        from xnorpipe.deploy import onnx_export

        if onnx_path is not None:
            proto = onnx_export.load_onnx(onnx_path)
            source = str(onnx_path)
        elif model is not None:
            proto = onnx_export.build_onnx(model, self.form)
            source = f"<{model.arch}.{self.form} in memory>"
        else:
            raise XnorpipeError(f"engine {self.name} needs an ONNX file or a model")
        self.custom_nodes = onnx_export.count_custom_nodes(proto)
        self.metadata = onnx_export.model_metadata(proto)
        self.source = source
        self._check_model()
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        self.library = self._register(so)
        self.threads = threads
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), sess_options=so,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise XnorpipeError(f"engine {self.name}: ONNX Runtime cannot load {source}: "
                                f"{_first_line(e)}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._ort_version = ort.__version__

    def _check_model(self) -> None:
        pass

    def _register(self, so) -> str | None:
        return None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def describe(self) -> dict[str, Any]:
        d = {"engine": self.name, "runtime": f"onnxruntime {self._ort_version}",
             "provider": "CPUExecutionProvider", "model": self.source,
             "xnor_nodes": self.custom_nodes, "threads": self.threads}
        if self.library:
            d["library"] = self.library
        return d


class OrtXnorEngine(OrtEngine):
    name = "ort-xnor"
    form = "packed"

    def _check_model(self) -> None:
        if self.custom_nodes == 0:
            raise XnorpipeError(f"engine ort-xnor needs a packed model (xnorpipe::XnorConv2d nodes); "
                                f"{self.source} has none: use --engine ort for it")

    def _register(self, so) -> str:
        from xnorpipe.native import ort_library_path

        library = ort_library_path()
        try:
            so.register_custom_ops_library(library)
        except Exception as e:
            raise XnorpipeError(f"engine ort-xnor: cannot load {Path(library).name}: {_first_line(e)}") from None
        return library
