"""ONNX versions of the exported files: the lowest IR version a form and opset need, and the
ai.onnx opsets the installed onnx and ONNX Runtime support (docs/XNORCONV2D.md, "Versions").

Files carry the lowest IR version their form and opset need (IR 8 for portable at opset 18,
IR 9 for function attribute defaults), and the opset is bounded by what the installed onnx and
ONNX Runtime support.
"""

from __future__ import annotations

import functools

import onnx
from onnx import TensorProto, helper

from xnorpipe.deploy.forms import FORMS_BY_NAME, MIN_OPSET
from xnorpipe.errors import XnorpipeError


def ir_version_for(form: str, opset: int) -> int:
    """The lowest IR version a `form` file at ai.onnx `opset` needs: the opset's own (onnx's
    version table) or the form's structure's (IR 9 for function attribute defaults), the higher.
    ONNX Runtime <= 1.16 refuses IR 10, which nothing here needs at opsets <= 20."""
    by_opset = helper.find_min_ir_version_for([helper.make_opsetid("", opset)], ignore_unknown=True)
    return max(by_opset, FORMS_BY_NAME[form].min_ir)


def _ort_loads_opset(ort, opset: int) -> bool:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "opset_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                          ir_version=ir_version_for("portable", opset))
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception:  # ORT raises its own types; beyond its opsets: "Opset N is under development"
        return False
    return True


@functools.cache
def supported_opsets() -> tuple[int, int | None]:
    """(highest ai.onnx opset the installed onnx knows, highest the installed ONNX Runtime
    loads, None without onnxruntime). ONNX Runtime has no API for the latter and a table keyed
    by its version goes stale with each release, so it is probed: ORT refuses a model stamped
    with an opset beyond its own (bisected over one-node models, usually one session; the
    probe never goes past onnx's bound, which it would have no version table for)."""
    onnx_max = onnx.defs.onnx_opset_version()
    try:
        import onnxruntime as ort
    except ImportError:
        return onnx_max, None
    low, high = min(MIN_OPSET.values()), onnx_max
    if not _ort_loads_opset(ort, low):
        return onnx_max, low - 1
    while low < high:  # _ort_loads_opset(low) holds
        mid = (low + high + 1) // 2
        if _ort_loads_opset(ort, mid):
            low = mid
        else:
            high = mid - 1
    return onnx_max, low


def opset_range(form: str) -> tuple[int, int]:
    """The ai.onnx opsets a `form` file can be written at here: the form's minimum up to what
    both onnx (to build and check it) and ONNX Runtime (to run it) support."""
    onnx_max, ort_max = supported_opsets()
    return MIN_OPSET[form], min(onnx_max, ort_max) if ort_max is not None else onnx_max


def check_opset(form: str, opset: int) -> None:
    low, high = opset_range(form)
    if opset < low:
        raise XnorpipeError(f"the {form} form needs opset >= {low}, got {opset}")
    if opset > high:
        onnx_max, ort_max = supported_opsets()
        import importlib.metadata

        ort = (f"onnxruntime {importlib.metadata.version('onnxruntime')} loads up to {ort_max}"
               if ort_max is not None else "onnxruntime is not installed")
        raise XnorpipeError(f"opset {opset} is beyond what this installation supports (onnx {onnx.__version__} "
                            f"knows opsets up to {onnx_max}, {ort}): choose --opset {low} to {high}")

