"""The ONNX forms of a deployed model: the one table the exporter, `xnorpipe export` and its help
read (docs/XNORCONV2D.md describes each form). Plain Python, so the CLI imports it for free.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Form:
    name: str
    help: str  # one line for `xnorpipe export --help`
    min_opset: int  # ai.onnx opset the form's ops need
    min_ir: int  # ONNX IR version the form's structure needs (0: the opset alone decides)
    binary_only: bool  # exists only for archs with binary layers
    inlines: str | None = None  # the form whose model-local functions this one inlines


# IR 8 added model-local functions, IR 9 their attribute defaults (onnx.proto): the packed forms'
# functions declare defaults; portable and the inlined forms have no function at all.
FORM_TABLE = (
    Form("portable", "standard ONNX ops only, +-1 float weights (any runtime)", 17, 0, False),
    Form("packed", "xnorpipe::XnorConv2d nodes with bit-packed weights and model-local functions "
         "(ONNX Runtime, onnx.reference; TensorRT with the plugin)", 18, 9, True),
    Form("packed-bits", "packed, plus bit-packed activations between binary layers (ONNX Runtime, "
         "onnx.reference)", 18, 9, True),
    Form("packed-inline", "packed with its functions inlined: standard ops, bit-packed weights "
         "(e.g. OpenVINO)", 18, 0, True, inlines="packed"),
    Form("packed-bits-inline", "packed-bits with its functions inlined", 18, 0, True, inlines="packed-bits"),
)
FORMS_BY_NAME = {f.name: f for f in FORM_TABLE}
FORMS = tuple(FORMS_BY_NAME)
MIN_OPSET = {f.name: f.min_opset for f in FORM_TABLE}
# --form values beyond the forms themselves; "both" (portable and packed) predates packed-bits
FORM_SETS = {"all": FORMS, "both": ("portable", "packed")}
DEFAULT_OPSET = 18
# --first-layer: the float first conv as trained (the input is the normalised float image), or
# int8: `xnorpipe::ConvIntegerBinarize` on the uint8 NHWC image, which only these forms have
# (the forms whose first layer writes bits; their file names end in .int8.onnx).
FIRST_LAYERS = ("float", "int8")
INT8_FORMS = ("packed-bits", "packed-bits-inline")


def cli_help() -> str:
    """The --form help: every form and set, from the table."""
    forms = "; ".join(f"{f.name}: {f.help}" for f in FORM_TABLE)
    return (f"{forms}; all: every form of the arch (a float arch has portable only); "
            "both: portable and packed.")
