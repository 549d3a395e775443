"""`xnorpipe export`: fold a checkpoint and write the ONNX forms (deploy/forms.py) of it."""

from __future__ import annotations

import click

from xnorpipe.commands import options
from xnorpipe.deploy.forms import DEFAULT_OPSET, FIRST_LAYERS, FORM_SETS, FORMS, INT8_FORMS, MIN_OPSET, cli_help


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


@click.command()
@options.arch(required=True)
@options.checkpoint("Checkpoint to export [default: checkpoints/cifar10_<arch>_best.pth.tar].")
@click.option("--form", type=click.Choice([*FORMS, *FORM_SETS]), default="all", show_default=True,
              help=cli_help())
@options.out_dir("exports", "Output folder.")
@options.random_init()
@options.model_args()
@options.data()
@click.option("--opset", type=click.IntRange(min=1), default=DEFAULT_OPSET, show_default=True,
              help=f"ai.onnx opset: portable needs >= {MIN_OPSET['portable']}, the other forms >= "
              f"{MIN_OPSET['packed']}; at most what the installed onnx and onnxruntime support.")
@click.option("--first-layer", type=click.Choice(FIRST_LAYERS), default="float", show_default=True,
              help=f"float: the first conv as trained, on the normalised float image. int8 ({', '.join(INT8_FORMS)} "
              "only, <arch>.<form>.int8.onnx): xnorpipe::ConvIntegerBinarize, int8 weights on the uint8 NHWC image as "
              "decoded, no client-side normalisation; its rounding and scales are calibrated on the first 256 "
              "training images of --data (else on synthetic images).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Export weights or BatchNorm statistics holding NaN or inf (refused by default: the forms "
              "may disagree on them).")
def export(arch, checkpoint, form, out, random_init, model_args, data, opset, first_layer, allow_nonfinite):
    """Fold BatchNorm and scaling factors and export ONNX (<out>/<arch>.<form>.onnx).

    All forms of one run are written together: the folder never holds forms of this arch from
    two checkpoints (forms of another one are removed). A --random-init model has its BatchNorm
    statistics calibrated on the first training images of --data, else on a fixed synthetic set.
    """
    from xnorpipe.deploy.onnx import export as export_onnx
    from xnorpipe.deploy.onnx import resolve_forms
    from xnorpipe.sources import fold_arch, load_source_model

    if data is not None and not random_init and first_layer == "float":
        if click.get_current_context().get_parameter_source("data") == click.core.ParameterSource.COMMANDLINE:
            click.echo("note: --data only calibrates --random-init models and --first-layer int8: not used")
        data = None
    model, metadata = load_source_model(arch, checkpoint, random_init, data=data if random_init else None,
                                        model_kwargs=model_args)
    deploy = fold_arch(model, arch, metadata=metadata, allow_nonfinite=allow_nonfinite)
    forms, note = resolve_forms(deploy, form, first_layer)
    if note:
        click.echo(f"note: {note}")
    integer = None
    if first_layer == "int8":
        integer = _integer_first_layer(deploy, data)
    files = export_onnx(deploy, forms, out, opset=opset, note=lambda text: click.echo(f"note: {text}"),
                        first_layer=integer)
    if random_init:
        source = f"random init (seed {metadata['xnorpipe.random_seed']}, BatchNorm calibrated on "
        calibration = metadata["xnorpipe.random_calibration"]
        source += (f"the first training images of {data})" if calibration.startswith("data:")
                   else "synthetic images)")
    else:
        source = metadata["xnorpipe.checkpoint"]
    click.echo(f"{arch} from {source}, opset {opset}")
    if "xnorpipe.nonfinite" in deploy.metadata:
        click.echo(f"warning: exported non-finite values (--allow-nonfinite): {deploy.metadata['xnorpipe.nonfinite']}; "
                   "the forms may disagree on them")
    header = ("form", "file", "size", "XnorConv2d nodes", "bit ops", "float weights", "packed weights")
    rows = [(f.form, str(f.path), _kib(f.size_bytes), str(f.custom_nodes), str(f.bit_nodes),
             _kib(f.float_weight_bytes), _kib(f.packed_weight_bytes)) for f in files]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def _integer_first_layer(deploy, data):
    """The calibrated integer first layer, with a progress bar and a summary line."""
    from tqdm import tqdm

    from xnorpipe.deploy.first_layer import calibrated_first_layer
    from xnorpipe.utils import progress_interval

    if data is None:
        click.echo("note: --first-layer int8 without --data: calibrated on synthetic images; pass --data for "
                   "the training images (fewer bits that differ from the float layer)")
    with tqdm(desc="calibrating the integer first layer", unit="image", leave=False,
              mininterval=progress_interval()) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        layer = calibrated_first_layer(deploy, data, progress)
    click.echo(f"integer first layer: {layer.flipped_bits:,} of {layer.total_bits:,} output bits "
               f"({100 * layer.flipped_bits / layer.total_bits:.3f} %) differ from the float layer on "
               f"{layer.calibration_images} calibration images")
    return layer
