"""Flags shared by every subcommand, so the same flag means the same thing everywhere.

Use them as decorators: `@options.arch()`, `@options.data()`, ...
"""

from __future__ import annotations

import click

from xnorpipe.models import ARCHS


def arch(required: bool = False):
    return click.option(
        "--arch", type=click.Choice(sorted(ARCHS)), required=required,
        help="Model architecture.",
    )


def checkpoint(help: str = "Checkpoint (.pth.tar) written by `xnorpipe train`."):
    return click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help=help)


def data(required: bool = False):
    return click.option(
        "--data", type=click.Path(), required=required, envvar="XNORPIPE_DATA",
        show_envvar=True,
        help="CIFAR-10: cifar-10-batches-py folder (or its parent), an image-folder tree "
        "train/<class>/*, test/<class>/* or a .tar.gz of one.",
    )


def batch_size(default: int):
    return click.option("--batch-size", type=click.IntRange(min=1), default=default,
                        show_default=True, help="Batch size.")


def device(choices=("auto", "cpu", "cuda")):
    return click.option("--device", type=click.Choice(choices), default="auto", show_default=True,
                        help="Where to run: auto picks CUDA when available.")


def json_output():
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")


def out_dir(default: str, help: str):
    return click.option("-o", "--out", type=click.Path(file_okay=False), default=default,
                        show_default=True, help=help)


def onnx_model():
    return click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
                        help="An ONNX file written by `xnorpipe export`.")


def threads():
    return click.option("--threads", type=click.IntRange(min=1), default=None,
                        help="CPU threads (intra-op); default: the runtime's own choice.")


def test_subset():
    return click.option("--test-subset", type=int, default=None, metavar="N",
                        help="Use only the first N test images (class-balanced for image folders).")


def random_init():
    return click.option("--random-init", is_flag=True,
                        help="Use a randomly initialised model (fixed seed) instead of a checkpoint.")
