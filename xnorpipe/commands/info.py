"""`xnorpipe info`: parameters, MACs (the seed's way and the binary ones it omitted), binary and
float ops (the papers' way), sizes."""

from __future__ import annotations

import json
import textwrap

import click

from xnorpipe.commands import options
from xnorpipe.errors import XnorpipeError


@click.command()
@options.arch()
@options.model_args()
@options.checkpoint(help="Read the arch and its model arguments from this checkpoint instead.")
@options.json_output()
def info(arch, model_args, checkpoint, as_json):
    """Model complexity: params, MACs as the seed counted them, binary MACs, binary and float ops
    as the binary-network papers count them (BOPs, FLOPs, OPs), sizes."""
    from xnorpipe.complexity import count
    from xnorpipe.models import build_model, get_model_spec

    if checkpoint:
        from xnorpipe.checkpoint import load_checkpoint

        if model_args:
            raise XnorpipeError("--model-arg and --checkpoint exclude each other (the checkpoint has its own)")
        ckpt = load_checkpoint(checkpoint, arch)
        arch, model, model_kwargs = ckpt.arch, ckpt.build_model(), ckpt.model_kwargs
    elif arch:
        model, model_kwargs = build_model(arch, **model_args), model_args
    else:
        raise XnorpipeError("give --arch NAME or --checkpoint PATH")
    spec = get_model_spec(arch)
    c = count(model, arch, spec.input_shape)
    nin_fields = {"cfg": model.cfg, "groups": model.groups} if hasattr(model, "cfg") else {}
    if as_json:
        click.echo(json.dumps({**c.as_dict(), **nin_fields, "model_kwargs": model_kwargs,
                               "binary": spec.binary, "note": spec.note}))
        return
    rows = [("arch", arch), ("input", "x".join(map(str, spec.input_shape)))]
    rows += [(k, str(v)) for k, v in nin_fields.items()]
    if model_kwargs:
        rows.append(("model arguments", ", ".join(f"{k}={v}" for k, v in model_kwargs.items())))
    rows += [
        ("parameters", f"{c.params:,} ({c.as_dict()['params_seed']})"),
        ("MACs (seed's count)", f"{c.macs_seed:,} ({c.as_dict()['macs_seed_str']})"),
        ("binary MACs (not in the seed's count)", f"{c.binary_macs:,} ({c.binary_macs / 1e6:.2f} M)"),
        ("binary ops (BOPs)", f"{c.binary_ops:,} ({c.binary_ops:.3e})"),
        ("float ops (FLOPs)", f"{c.float_ops:,} ({c.float_ops:.3e})"),
        ("OPs = FLOPs + BOPs/64", f"{c.ops:.3e}"),
        ("size, float32", f"{c.float32_bytes:,} B ({c.float32_bytes / 2**20:.2f} MiB)"),
        ("size, deployed (BN folded, bits packed)",
         f"{c.packed_bytes:,} B ({c.packed_bytes / 2**20:.2f} MiB, "
         f"{c.float32_bytes / c.packed_bytes:.1f}x smaller)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
    click.echo(textwrap.fill("BOPs: weight MACs of the binary convs; FLOPs: weight MACs of the float convs and "
                             "linears (BN, pooling, additions, biases not counted), as the binary-network papers.",
                             100))
    if spec.note:
        click.echo(textwrap.fill(f"note: {spec.note}", 100))
