"""`xnorpipe eval`: test top-1 and loss of a checkpoint."""

from __future__ import annotations

import json

import click

from xnorpipe.commands import options
from xnorpipe.errors import XnorpipeError


@click.command()
@options.checkpoint()
@options.arch()
@options.data(required=True)
@options.batch_size(default=100)
@options.device()
@options.test_subset()
@options.json_output()
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def evaluate(checkpoint, arch, data, batch_size, device, test_subset, as_json, quiet):
    """Score a checkpoint on the CIFAR-10 test set (default: --arch's best checkpoint)."""
    from xnorpipe.checkpoint import default_checkpoint, load_checkpoint
    from xnorpipe.train import evaluate_checkpoint

    if checkpoint is None:
        if arch is None:
            raise XnorpipeError("give --checkpoint PATH (or --arch for checkpoints/cifar10_<arch>_best.pth.tar)")
        checkpoint = str(default_checkpoint(arch))
    elif arch is not None:
        load_checkpoint(checkpoint, arch=arch)  # fails early on an arch mismatch
    result = evaluate_checkpoint(checkpoint, data, batch_size=batch_size, device=device,
                                 test_subset=test_subset, progress=not quiet and not as_json)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{result['arch']} (epoch {result['epoch']}): test top-1 {result['top1']:.2f} %  "
                   f"loss {result['loss']:.4f}  on {result['n']} images  [{checkpoint}]")
