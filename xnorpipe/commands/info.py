"""`xnorpipe info`: parameters, MACs (the seed's way and the binary ones it omitted), sizes."""

from __future__ import annotations

import json

import click

from xnorpipe.commands import options
from xnorpipe.errors import XnorpipeError


@click.command()
@options.arch()
@options.checkpoint(help="Read arch, cfg and groups from this checkpoint instead of the defaults.")
@options.json_output()
def info(arch, checkpoint, as_json):
    """Model complexity: params, MACs as the seed counted them, binary MACs, sizes."""
    from xnorpipe.complexity import count
    from xnorpipe.models import ARCHS, build_model

    if checkpoint:
        from xnorpipe.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint, arch)
        arch, model = ckpt.arch, ckpt.build_model()
    elif arch:
        model = build_model(arch)
    else:
        raise XnorpipeError("give --arch NAME or --checkpoint PATH")
    c = count(model, arch)
    if as_json:
        click.echo(json.dumps({**c.as_dict(), "cfg": model.cfg, "groups": model.groups,
                               "binary": ARCHS[arch].binary}))
        return
    rows = [
        ("arch", arch),
        ("cfg", str(model.cfg)),
        ("groups", str(model.groups)),
        ("parameters", f"{c.params:,} ({c.as_dict()['params_seed']})"),
        ("MACs (seed's count)", f"{c.macs_seed:,} ({c.as_dict()['macs_seed_str']})"),
        ("binary MACs (not in the seed's count)", f"{c.binary_macs:,} ({c.binary_macs / 1e6:.2f} M)"),
        ("size, float32", f"{c.float32_bytes:,} B ({c.float32_bytes / 2**20:.2f} MiB)"),
        ("size, deployed (BN folded, bits packed)",
         f"{c.packed_bytes:,} B ({c.packed_bytes / 2**20:.2f} MiB, "
         f"{c.float32_bytes / c.packed_bytes:.1f}x smaller)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
