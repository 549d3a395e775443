"""`xnorpipe bench`: latency/throughput per engine; with --data, accuracy and parity."""

from __future__ import annotations

import click

from xnorpipe.commands import options


@click.command()
@click.option("--engine", "engines", multiple=True, default=("torch", "ort"), show_default=True,
              help="Engine(s): torch, ort, ort-xnor, torch-xnor, trt; repeat or comma-separate.")
@options.onnx_model()
@options.arch()
@options.checkpoint("Checkpoint of --arch, or the PyTorch reference for --onnx "
                    "[default: checkpoints/cifar10_<arch>_best.pth.tar].")
@options.random_init()
@options.data()
@options.test_subset()
@options.batch_size(1)
@options.threads()
@click.option("--iters", type=click.IntRange(min=1), default=100, show_default=True,
              help="Timed runs per engine.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Untimed runs before timing.")
@click.option("--xnor-form", type=click.Choice(["packed", "packed-bits"]), default=None,
              help="The ONNX form the xnor engines (ort-xnor, torch-xnor, trt) run with --arch: "
              "packed-bits (bit-packed activations between binary layers) or packed.  [default: "
              "packed-bits for ort-xnor and torch-xnor, packed for trt and with --gpu-kernels cuda]")
@click.option("--gpu-kernels", type=click.Choice(["triton", "cuda"]), default="triton", show_default=True,
              help="Kernels of torch-xnor and of trt's plugins: triton (every xnorpipe op) or cuda "
              "(the hand-written XnorConv2d kernel, packed form only; torch-xnor loads it with CuPy).")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="torch-xnor on CUDA: capture one CUDA graph per input shape and replay it.")
@click.option("--first-layer", type=click.Choice(["float", "int8"]), default="float", show_default=True,
              help="With --arch: int8 runs ort-xnor's packed-bits model with the integer first layer "
              "(uint8 image in; calibrated on the first training images of --data, else synthetic ones).")
@options.device(("cpu", "cuda", "auto"))
@options.json_output()
def bench(engines, onnx_path, arch, checkpoint, random_init, data, test_subset, batch_size,
          threads, iters, warmup, xnor_form, gpu_kernels, cuda_graphs, first_layer, device, as_json):
    """Benchmark engines on one model (--arch, exported in-process, or --onnx FILE)."""
    from xnorpipe import bench as lib

    names = lib.read_engine_list(engines)
    sources = lib.prepare_sources(arch=arch, checkpoint=checkpoint, onnx_path=onnx_path,
                                  random_init=random_init, engines=names, xnor_form=xnor_form,
                                  gpu_kernels=gpu_kernels, data=data, first_layer=first_layer)
    try:
        images = labels = None
        if data:
            images, labels = lib.load_test_set(data, test_subset)
        results = lib.run_bench(names, sources, batch_size=batch_size, iters=iters, warmup=warmup,
                                threads=threads, data=images, labels=labels, device=device,
                                gpu_kernels=gpu_kernels, cuda_graphs=cuda_graphs)
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
