"""ONNX Runtime engines (CPU): `ort` (stock ORT, any form) and `ort-xnor` (the custom-op library).

`ort` runs a portable model as is and a packed or packed-bits model through its model-local
function bodies: it is the stock baseline. `ort-xnor` registers `libxnorpipe_ort.so` so the
xnorpipe ops run on the bitwise kernels; it refuses a model without XnorConv2d-family nodes,
since its numbers would then silently be stock ORT's.
Sources: `onnx_path`, or a DeployModel (`model`), emitted in memory in the engine's form
(`ort`: portable; `ort-xnor`: packed-bits, or `form="packed"`).

Inputs: the normalised float NCHW batch every engine takes. A model with the integer first layer
(a uint8 graph input; `xnorpipe.first_layer` = int8 in its metadata) takes the decoded uint8 NHWC image instead: the
engine turns a float batch back into it (`prepare_input`, exact: the pixels are integers), and
passes a uint8 batch as it is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from xnorpipe.errors import XnorpipeError
from xnorpipe.runtime.base import FIRST_LAYER, XNOR_FORM, Engine


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _run_error(e: Exception) -> str:
    """ORT's run error as '<op> node: <kernel message>' when it names a node, else its first line."""
    text = _first_line(e)
    match = re.search(r"running (\S+) node\..*?Status Message: (.*)", text)
    return f"{match.group(1)} node: {match.group(2).strip()}" if match else text


class OrtEngine(Engine):
    name = "ort"
    summary = "stock ONNX Runtime"
    forms = ("portable",)
    default_form = "portable"
    custom_op_library = False  # True: xnorpipe ops run on libxnorpipe_ort.so (no function body needed)

    def __init__(self, *, model=None, onnx_path: str | None = None, threads: int | None = None,
                 batch_size: int = 1, optimization: str = "all", form: str | None = None,
                 **options: Any) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise XnorpipeError(f"engine {self.name}: onnxruntime is not installed") from None
        from xnorpipe.deploy import onnx as deploy_onnx

        if form is not None and form not in self.forms:
            raise XnorpipeError(f"engine {self.name} emits the {' or '.join(self.forms)} form, not {form!r}")
        form = form or self.default_form
        if onnx_path is not None:
            proto = deploy_onnx.load_onnx(onnx_path, custom_op_library=self.custom_op_library)
            source = str(onnx_path)
        elif model is not None:
            proto = deploy_onnx.build_onnx(model, form)
            source = f"<{model.arch}.{form} in memory>"
        else:
            raise XnorpipeError(f"engine {self.name} needs an ONNX file or a model")
        self.custom_nodes = deploy_onnx.count_custom_nodes(proto)
        self.op_types = deploy_onnx.custom_op_types(proto)
        self.metadata = deploy_onnx.model_metadata(proto)
        self.model_form = self.metadata.get("xnorpipe.form")  # the form actually run (None: foreign file)
        self.source = source
        self._check_model()
        so = ort.SessionOptions()
        so.log_severity_level = 4  # errors come back as exceptions, reported once, as one line
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
        # what the graph declares, not what the metadata says (a file's metadata may lie)
        self.uint8_input = self.session.get_inputs()[0].type == "tensor(uint8)"
        if self.uint8_input:
            self._mean, self._std = _normalisation(self.metadata, source)

    def _check_model(self) -> None:
        pass

    def _register(self, so) -> str | None:
        return None

    def prepare_input(self, x: np.ndarray) -> np.ndarray:
        """The batch as the model takes it: float32 NCHW, or, for a model with the integer first
        layer, uint8 NHWC (a float batch is de-normalised: rint((x * std + mean) * 255))."""
        x = np.asarray(x)
        if not self.uint8_input:
            return np.ascontiguousarray(x, dtype=np.float32)
        if x.dtype == np.uint8:
            return np.ascontiguousarray(x)
        channels = self._mean.shape[1]
        if x.ndim != 4 or x.shape[1] != channels:
            raise XnorpipeError(f"engine {self.name}: expected a normalised float batch [N, {channels}, H, W] "
                                f"or a uint8 image batch [N, H, W, {channels}], got {x.dtype} {list(x.shape)}")
        pixels = (x.astype(np.float64) * self._std + self._mean) * 255.0
        return np.ascontiguousarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = self.prepare_input(x)
        try:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as e:  # ORT's own exception types (Fail, RuntimeException, ...)
            raise XnorpipeError(f"engine {self.name}: running {self.source} failed: {_run_error(e)}") from None

    def describe(self) -> dict[str, Any]:
        d = {"engine": self.name, "runtime": f"onnxruntime {self._ort_version}",
             "provider": "CPUExecutionProvider", "model": self.source, "form": self.model_form,
             "xnor_nodes": self.custom_nodes, "threads": self.threads}
        if self.library:
            d["library"] = self.library
        if self.uint8_input:
            d["form"] = f"{self.model_form}, int8 first layer"
        return d


def _normalisation(meta: dict[str, str], source: str) -> tuple[np.ndarray, np.ndarray]:
    """mean and std [1, C, 1, 1] from an export's metadata."""
    import json

    try:
        mean = np.asarray(json.loads(meta["xnorpipe.mean"]), np.float64)
        std = np.asarray(json.loads(meta["xnorpipe.std"]), np.float64)
    except (KeyError, ValueError, TypeError):
        raise XnorpipeError(f"{source}: an integer-first-layer model without readable xnorpipe.mean/std "
                            "metadata") from None
    if mean.ndim != 1 or mean.shape != std.shape or not np.isfinite(mean).all() or not (std > 0).all():
        raise XnorpipeError(f"{source}: xnorpipe.mean/std must be lists of finite means and positive stds")
    return mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)


class OrtXnorEngine(OrtEngine):
    name = "ort-xnor"
    summary = "ONNX Runtime with xnorpipe's custom-op library"
    forms = ("packed", "packed-bits")
    default_form = "packed-bits"
    first_layer_forms = ("packed-bits",)
    custom_op_library = True
    options = (XNOR_FORM, FIRST_LAYER)

    def _check_model(self) -> None:
        if self.custom_nodes == 0:
            raise XnorpipeError(f"engine ort-xnor needs a packed or packed-bits model (xnorpipe::XnorConv2d "
                                f"nodes); {self.source} has none: use --engine ort for it")

    def _register(self, so) -> str:
        from xnorpipe.native import ort_library_path

        library = ort_library_path()
        try:
            so.register_custom_ops_library(library)
        except Exception as e:
            raise XnorpipeError(f"engine ort-xnor: cannot load {Path(library).name}: {_first_line(e)}") from None
        # ORT silently runs the function body of an op the library lacks: refuse instead.
        missing = [op for op in self.op_types if not _library_implements(library, op)]
        if missing:
            raise XnorpipeError(f"engine ort-xnor: {Path(library).name} does not implement "
                                f"{', '.join('xnorpipe::' + op for op in missing)} (an older build?): "
                                "rebuild it, or run the packed form (--xnor-form packed)")
        return library


_IMPLEMENTS: dict[tuple[str, int, str], bool] = {}


def _library_implements(library: str, op_type: str) -> bool:
    """Does the custom-op library have a kernel for `op_type`? A one-node model without its
    function body loads only if it does (cached per library file, its mtime and op)."""
    key = (library, Path(library).stat().st_mtime_ns, op_type)
    if key not in _IMPLEMENTS:
        import onnxruntime as ort

        from xnorpipe.deploy import onnx as deploy_onnx

        if op_type not in deploy_onnx.OPS:
            _IMPLEMENTS[key] = False
        else:
            m = deploy_onnx.probe_model(op_type)  # the op table's smallest one-node model
            del m.functions[:]
            so = ort.SessionOptions()
            so.register_custom_ops_library(library)
            try:
                ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                _IMPLEMENTS[key] = True
            except Exception:
                _IMPLEMENTS[key] = False
    return _IMPLEMENTS[key]

