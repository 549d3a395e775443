"""`xnorpipe build-engine`: a serialized TensorRT engine from an ONNX export."""

from __future__ import annotations

from pathlib import Path

import click

from xnorpipe.commands import options
from xnorpipe.errors import XnorpipeError


@click.command("build-engine")
@options.onnx_model()
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Engine file to write (default: the ONNX path with suffix .engine).")
@click.option("--fp16", is_flag=True, help="Allow FP16 layers (the xnorpipe plugins stay FP32/INT32).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache: read if present, updated after the build.")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=None, metavar="MB",
              help="Builder workspace limit in MiB (default: TensorRT's).")
@options.batch_size(default=1)
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Largest batch of the engine's dynamic batch profile (min 1, opt --batch-size).")
@click.option("--gpu-kernels", type=click.Choice(["triton", "cuda"]), default="triton", show_default=True,
              help="The plugins' kernels: triton (every xnorpipe op) or cuda (the hand-written XnorConv2d "
              "kernel, packed form only).")
@click.option("-v", "--verbose", is_flag=True, help="TensorRT's verbose log.")
def build_engine(onnx_path, out_path, fp16, timing_cache, workspace_mb, batch_size, max_batch, gpu_kernels,
                 verbose):
    """Build a TensorRT engine from portable ONNX (stock layers) or packed / packed-bits ONNX
    (xnorpipe's plugins, their kernels' PTX compiled into the engine: no Python needed to run
    it)."""
    from xnorpipe.gpu.trt_build import build_serialized_engine
    from xnorpipe.utils import atomic_write_bytes

    if not onnx_path:
        raise XnorpipeError("give --onnx PATH (an ONNX file from `xnorpipe export`)")
    out = Path(out_path) if out_path else Path(onnx_path).with_suffix(".engine")
    if out.resolve() == Path(onnx_path).resolve():
        raise XnorpipeError(f"the engine would overwrite its ONNX file {out}: give -o")
    res = build_serialized_engine(onnx_path, fp16=fp16, workspace_mb=workspace_mb,
                                  timing_cache=timing_cache, opt_batch=batch_size,
                                  max_batch=max_batch, verbose=verbose, gpu_kernels=gpu_kernels)
    atomic_write_bytes(out, res.engine)
    batch = (f"batch {res.profile[0]}..{res.profile[2]} (opt {res.profile[1]})" if res.profile
             else "static batch")
    plugin = (f", {res.plugin_nodes} xnorpipe nodes -> {res.plugin_layers} plugin layers "
              f"({res.gpu_kernels} kernels)" if res.plugin_nodes else ", no plugin (portable ONNX)")
    click.echo(f"wrote {out} ({len(res.engine) / 2**20:.1f} MiB): TensorRT {res.trt_version}, "
               f"{batch}{plugin}{', fp16' if fp16 else ''}, built in {res.seconds:.1f} s")
