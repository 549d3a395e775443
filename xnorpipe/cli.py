"""The `xnorpipe` command line: one click group, each subcommand in xnorpipe/commands/."""

from __future__ import annotations

import importlib
import os
import sys

import click

from xnorpipe import __version__

# name -> "module:attribute"; imported only when the subcommand runs, so `xnorpipe info`
# never pays for onnxruntime, and missing optional dependencies only affect their command.
COMMANDS = {
    "train": ("xnorpipe.commands.train:train", "Train an arch on CIFAR-10 with the seed's recipe."),
    "eval": ("xnorpipe.commands.evaluate:evaluate", "Test top-1 and loss of a checkpoint."),
    "info": ("xnorpipe.commands.info:info", "Params, MACs (seed's count and binary), sizes."),
    "export": ("xnorpipe.commands.export:export", "Fold a checkpoint (or a random init) and write its ONNX forms."),
    "bench": ("xnorpipe.commands.bench:bench", "Latency, throughput, accuracy and parity per engine."),
    "build-engine": ("xnorpipe.commands.build_engine:build_engine",
                     "Build a TensorRT engine from an exported ONNX file."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target[0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        # Short help from the table above: `xnorpipe --help` imports no subcommand.
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xnorpipe")
def cli():
    """Train XNOR-Nets on CIFAR-10, fold and export them to ONNX, run them on bitwise kernels."""


def main(argv=None):
    """Console entry point: user errors are one line; unexpected ones too unless XNORPIPE_DEBUG=1."""
    try:
        cli.main(args=argv, prog_name="xnorpipe", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as e:  # one line, not click's usage block
        path = e.ctx.command_path if e.ctx else ""
        hint = f" (see 'xnorpipe {path.split(' ', 1)[1]} --help')" if " " in path else ""
        click.echo(f"Error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as e:  # last resort: never a traceback for the user
        if os.environ.get("XNORPIPE_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(f"Error: {type(e).__name__}: {msg} (set XNORPIPE_DEBUG=1 for a traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
