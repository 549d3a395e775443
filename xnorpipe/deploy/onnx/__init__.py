"""xnorpipe's ONNX side: the deploy IR as ONNX files of five forms (deploy/forms.py), their
contract docs/XNORCONV2D.md.

    ops.py        the op table: the eight xnorpipe ops, their inputs, output, attributes and
                  defaults, function-body builders and callees (the one place to add an op)
    functions.py  the ops' model-local function bodies from standard ops
    emit.py       the graph emitter (IR -> ONNX, bit tensors, inlining, checks, one-node models)
    versions.py   IR versions and the opsets the installed onnx and ONNX Runtime support
    files.py      export (all forms or none) and loading, what a file holds

Import it as `from xnorpipe.deploy import onnx as deploy_onnx` (a bare `onnx` would hide the
onnx library); the names below are its public API.
"""

from xnorpipe.deploy.forms import DEFAULT_OPSET, FORMS, INT8_FORMS, MIN_OPSET
from xnorpipe.deploy.onnx.emit import (
    BATCH_DIM,
    INPUT_CONVENTION,
    INPUT_NAME,
    INT8_INPUT_CONVENTION,
    OUTPUT_NAME,
    bit_tensors,
    build_onnx,
    check_onnx,
    conv_attrs,
    has_binary_layers,
    inline_functions,
    layer_attrs,
    metadata_props,
    model_metadata,
    probe_model,
    single_node_model,
)
from xnorpipe.deploy.onnx.files import (
    SOURCE_KEYS,
    ExportedFile,
    count_bit_nodes,
    count_custom_nodes,
    custom_op_types,
    export,
    export_path,
    load_onnx,
    missing_functions,
    model_form,
    resolve_forms,
    source_of,
)
from xnorpipe.deploy.onnx.functions import CONTRACT
from xnorpipe.deploy.onnx.ops import (
    AVG_POOL_BINARIZE,
    BINARIZE,
    BIT_MAX_POOL,
    BIT_OPS,
    CONV_BINARIZE,
    CONV_BITS,
    CONV_BITS_BINARIZE,
    CONV_INTEGER_BINARIZE,
    CONV_INTEGER_BINARIZE_INPUTS,
    CONV_OPS,
    DOMAIN,
    OP_NAME,
    OP_VERSION,
    OPS,
    Attr,
    Op,
    Tensor,
    functions_for,
    make_node,
    op_spec,
)
from xnorpipe.deploy.onnx.versions import check_opset, ir_version_for, opset_range, supported_opsets

__all__ = [
    "AVG_POOL_BINARIZE", "BATCH_DIM", "BINARIZE", "BIT_MAX_POOL", "BIT_OPS", "CONTRACT", "CONV_BINARIZE", "CONV_BITS",
    "CONV_BITS_BINARIZE", "CONV_INTEGER_BINARIZE", "CONV_INTEGER_BINARIZE_INPUTS", "CONV_OPS", "DEFAULT_OPSET",
    "DOMAIN", "FORMS", "INPUT_CONVENTION", "INPUT_NAME", "INT8_FORMS", "INT8_INPUT_CONVENTION", "MIN_OPSET",
    "OPS", "OP_NAME", "OP_VERSION", "OUTPUT_NAME", "SOURCE_KEYS", "Attr", "ExportedFile", "Op", "Tensor",
    "bit_tensors", "build_onnx", "check_onnx", "check_opset", "conv_attrs", "count_bit_nodes",
    "count_custom_nodes", "custom_op_types", "export", "export_path", "functions_for", "has_binary_layers",
    "inline_functions", "ir_version_for", "layer_attrs", "load_onnx", "make_node", "metadata_props",
    "missing_functions", "model_form", "model_metadata", "op_spec", "opset_range", "probe_model",
    "resolve_forms", "single_node_model", "source_of", "supported_opsets",
]
