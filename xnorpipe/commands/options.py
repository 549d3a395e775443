"""Flags shared by every subcommand, so the same flag means the same thing everywhere.

Use them as decorators: `@options.arch()`, `@options.data()`, ...
"""

from __future__ import annotations

import click

from xnorpipe.models import model_names


class ArchType(click.ParamType):
    """A registered arch, or a user model FILE.py:NAME / package.module:NAME (imported here)."""

    name = "arch"

    def get_metavar(self, param, ctx=None):
        return "[" + "|".join(model_names()) + "|FILE.py:NAME]"

    def convert(self, value, param, ctx):
        from xnorpipe.errors import XnorpipeError
        from xnorpipe.models import ARCHS, import_user_model

        if value in ARCHS:
            return value
        if ":" not in value:
            self.fail(f"{value!r} is not one of {', '.join(model_names())}, or FILE.py:NAME", param, ctx)
        try:
            import_user_model(value)
        except XnorpipeError as e:
            self.fail(str(e), param, ctx)
        return value


def arch(required: bool = False):
    return click.option(
        "--arch", type=ArchType(), required=required,
        help="Model architecture: a registered one, or your own model as FILE.py:NAME (or package.module:NAME), "
             "its builder decorated with @xnorpipe.models.register_model(NAME, ...).",
    )


def _model_arg_value(text: str):
    """An integer, a number, a comma-separated list of integers, else the text itself."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if "," in text:
        try:
            return [int(v) for v in text.split(",")]
        except ValueError:
            pass
    return text


def _parse_model_args(ctx, param, values) -> dict:
    from xnorpipe.errors import XnorpipeError
    from xnorpipe.models import plain_model_kwargs

    kwargs = {}
    for item in values:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise XnorpipeError(f"--model-arg wants KEY=VALUE, got {item!r}")
        if key in kwargs:
            raise XnorpipeError(f"--model-arg {key} given twice")
        kwargs[key] = _model_arg_value(text.strip())
    return plain_model_kwargs(kwargs, "--model-arg")


def model_args():
    return click.option(
        "--model-arg", "model_args", multiple=True, metavar="KEY=VALUE", callback=_parse_model_args,
        help="A keyword argument of the arch's builder, e.g. width=32 (repeatable); VALUE is read as "
        "an integer, a number, comma-separated integers, or text. A checkpoint records its own: export and "
        "bench take it with --random-init only.",
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
