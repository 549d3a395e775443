"""`xnorpipe bench`: latency/throughput per engine; with --data, accuracy and parity.

The engines, their --engine help and their options come from the registry
(xnorpipe.runtime.ENGINES): each engine class declares what it runs and the options it takes.
"""

from __future__ import annotations

import click

from xnorpipe.commands import options
from xnorpipe.runtime import ENGINES, XNOR_FORM, EngineOption, engine_options, engines_with


def _engine_help() -> str:
    rows = []
    for name, cls in ENGINES.items():
        forms = "" if cls.source == "deploy" else f"; forms {', '.join(cls.forms)}"
        rows.append(f"{name} ({cls.summary}{forms}; {'/'.join(cls.devices)})")
    return f"Engine(s), repeat or comma-separate: {', '.join(rows)}."


def _form_defaults() -> str:
    """The form each engine of --xnor-form runs without it, from their declarations."""
    parts = []
    for name in engines_with(XNOR_FORM):
        cls = ENGINES[name]
        flags = {opt.param: opt.flag for opt in cls.options}
        parts.append(f"{name} {cls.default_form}" + "".join(
            f" ({form} with {flags[param]} {value})" for (param, value), form in cls.implied_forms.items()
            if form != cls.default_form))
    return f"  [default: {', '.join(parts)}]"


def _option(opt: EngineOption):
    help_text = opt.help.format(engines=", ".join(engines_with(opt)))
    if opt is XNOR_FORM:
        help_text += _form_defaults()
    kwargs = {"default": opt.default, "show_default": opt.default is not None, "help": help_text}
    if opt.choices is not None:
        kwargs["type"] = click.Choice(opt.choices)
    return click.option(opt.flag, opt.param, **kwargs)


def _engine_options(command):
    for opt in reversed(engine_options()):
        command = _option(opt)(command)
    return command


@click.command()
@click.option("--engine", "engines", multiple=True, default=("torch", "ort"), show_default=True,
              help=_engine_help())
@options.onnx_model()
@options.arch()
@options.checkpoint("Checkpoint of --arch, or the PyTorch reference for --onnx "
                    "[default: checkpoints/cifar10_<arch>_best.pth.tar].")
@options.random_init()
@options.model_args()
@options.data()
@options.test_subset()
@options.batch_size(1)
@options.threads()
@click.option("--iters", type=click.IntRange(min=1), default=100, show_default=True,
              help="Timed runs per engine.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Untimed runs before timing.")
@_engine_options
@options.json_output()
def bench(engines, onnx_path, arch, checkpoint, random_init, model_args, data, test_subset, batch_size,
          threads, iters, warmup, as_json, **engine_values):
    """Benchmark engines on one model (--arch, exported in-process, or --onnx FILE)."""
    from xnorpipe import bench as lib

    names = lib.read_engine_list(engines)
    sources = lib.prepare_sources(arch=arch, checkpoint=checkpoint, onnx_path=onnx_path,
                                  random_init=random_init, engines=names, data=data, model_kwargs=model_args,
                                  **engine_values)
    try:
        images = labels = None
        if data:
            images, labels = lib.load_test_images(data, test_subset)
        results = lib.run_bench(names, sources, batch_size=batch_size, iters=iters, warmup=warmup,
                                threads=threads, images=images, labels=labels)
    finally:
        sources.close()
    if as_json:
        for r in results:
            r["notes"] = sources.notes
        click.echo(lib.to_json_lines(results))
        return
    for note in sources.notes:
        click.echo(f"note: {note}")
    click.echo(f"{sources.arch or '?'}, batch {batch_size}, threads {threads or 'default'}, "
               f"{iters} iterations after {warmup} warm-up"
               + (f", {results[0].get('images', 0)} test images" if images is not None else ""))
    click.echo(lib.format_table(results))
