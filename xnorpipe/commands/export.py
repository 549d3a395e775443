"""`xnorpipe export`: fold a checkpoint and write portable, packed and/or packed-bits ONNX files."""

from __future__ import annotations

import click

from xnorpipe.commands import options


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


@click.command()
@options.arch(required=True)
@options.checkpoint("Checkpoint to export [default: checkpoints/cifar10_<arch>_best.pth.tar].")
@click.option("--form", type=click.Choice(["portable", "packed", "packed-bits", "all", "both"]), default="all",
              show_default=True,
              help="portable: standard ONNX ops only; packed: xnorpipe::XnorConv2d nodes with "
              "bit-packed weights; packed-bits: packed, plus bit-packed activations between binary "
              "layers (ONNX Runtime only; binary archs only); all: every form of the arch; "
              "both: portable and packed.")
@options.out_dir("exports", "Output folder.")
@options.random_init()
@click.option("--opset", type=click.IntRange(min=17), default=18, show_default=True,
              help="ai.onnx opset (packed and packed-bits need >= 18).")
def export(arch, checkpoint, form, out, random_init, opset):
    """Fold BatchNorm and scaling factors and export ONNX (<out>/<arch>.<form>.onnx)."""
    from xnorpipe.deploy.fold import fold_model, load_source_model
    from xnorpipe.deploy.onnx_export import export as export_onnx, resolve_forms

    model, metadata = load_source_model(arch, checkpoint, random_init)
    deploy = fold_model(model, arch=arch, metadata=metadata)
    forms, note = resolve_forms(deploy, form)
    if note:
        click.echo(f"note: {note}")
    files = export_onnx(deploy, forms, out, opset=opset)
    source = "random init" if random_init else metadata["xnorpipe.checkpoint"]
    click.echo(f"{arch} from {source}, opset {opset}")
    header = ("form", "file", "size", "XnorConv2d nodes", "bit ops", "float weights", "packed weights")
    rows = [(f.form, str(f.path), _kib(f.size_bytes), str(f.custom_nodes), str(f.bit_nodes),
             _kib(f.float_weight_bytes), _kib(f.packed_weight_bytes)) for f in files]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
