"""`xnorpipe train`: the click layer over xnorpipe.train.train."""

from __future__ import annotations

import click

from xnorpipe.commands import options
from xnorpipe.errors import XnorpipeError


def _int_list(flag: str):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            items = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise XnorpipeError(f"{flag} wants comma-separated integers, got {value!r}") from None
        if not items or min(items) < 1:
            raise XnorpipeError(f"{flag} wants positive integers, got {value!r}")
        return items
    return parse


@click.command()
@options.arch(required=True)
@options.data(required=True)
@click.option("--epochs", type=int, default=None, help="Epochs [default: the recipe of --arch].")
@click.option("--lr", type=float, default=None, help="Initial learning rate [default: the recipe of --arch].")
@options.batch_size(default=None)
@options.device()
@click.option("--deterministic", is_flag=True,
              help="Seed 0 (unless --seed), deterministic algorithms: bit-identical reruns on CPU.")
@click.option("--seed", type=int, default=None, help="RNG seed [default: 0 with --deterministic, else random].")
@click.option("--amp", is_flag=True, help="Mixed precision (CUDA only).")
@click.option("--subset", type=int, default=None, metavar="N",
              help="Train on the first N training images only.")
@options.test_subset()
@options.out_dir("checkpoints", "Folder for checkpoints, the log and the curves.")
@click.option("--resume", is_flag=False, flag_value="auto", default=None, metavar="[CHECKPOINT]",
              help="Continue from OUT/cifar10_<arch>_checkpoint.pth.tar or the given checkpoint.")
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the model.")
@options.model_args()
@click.option("--cfg", callback=_int_list("--cfg"), default=None, metavar="C0,...,C7",
              help="NIN archs: the 8 layer widths [default: the seed's for --arch].")
@click.option("--groups", callback=_int_list("--groups"), default=None, metavar="G0,...,G8",
              help="NIN archs: the 9 conv groups [default: the seed's for --arch].")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="NHWC memory format (faster for these nets on CPU and CUDA).")
@click.option("--time-limit", type=float, default=None, metavar="SECONDS",
              help="Wall-clock budget: stop at the epoch boundary where the next epoch would likely "
              "overrun it (mean epoch time so far; the first epoch always runs), keeping the planned "
              "lr schedule; exit 0, continue later with --resume.")
@click.option("--no-plot", is_flag=True, help="Skip the PNG of the curves.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def train(arch, data, epochs, lr, batch_size, device, deterministic, seed, amp, subset, test_subset,
          out, resume, use_compile, model_args, cfg, groups, channels_last, time_limit, no_plot, quiet):
    """Train ARCH on CIFAR-10 with its recipe (checkpoint every epoch, +_best).

    Defaults: SGD momentum 0.9, weight decay 1e-4, batch 100, lr x0.1 at 50 % and 75 % of the
    epochs; epochs and lr per arch (the seed's for the NIN archs). Images are resized to the
    arch's input size (224x224 for birealnet18). --data download:DIR fetches the pickles with
    torchvision (if installed). Under torchrun it trains with DDP; --batch-size is then the
    global batch.
    """
    from xnorpipe.train import TrainOptions
    from xnorpipe.train import train as run

    _sigterm_as_interrupt()
    run(TrainOptions(arch=arch, data=data, epochs=epochs, lr=lr, batch_size=batch_size,
                     device=device, deterministic=deterministic, seed=seed, amp=amp, subset=subset,
                     test_subset=test_subset, out=out, resume=resume, compile=use_compile,
                     model_kwargs=model_args, cfg=cfg, groups=groups, channels_last=channels_last,
                     time_limit=time_limit, progress=not quiet,
                     plot=not no_plot, log=lambda msg: click.echo(msg, err=True)))


def _sigterm_as_interrupt() -> None:
    """A scheduler's SIGTERM (preemption, `kill`) stops training like Ctrl-C does."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
