"""Training and evaluation: the seed's recipe, data resident on the device, resumable, DDP-ready.

`train(TrainOptions(...))` runs the whole thing (the `xnorpipe train` CLI is a thin layer over it);
`evaluate(model, images, labels)` is the test loop shared with the deploy/bench code.

Under `torchrun` (env WORLD_SIZE > 1) it runs DDP (gloo on CPU, nccl on CUDA) with no other
change: --batch-size stays the global batch (split evenly across processes, so the seed's lr
still fits), every rank draws the same global shuffle, and only rank 0 writes files or prints.

`time_limit` stops at an epoch boundary when the next epoch would likely overrun the budget
(mean epoch time so far); the LR schedule stays the planned one (milestones at 50/75 % of the
planned epochs), so `--resume` later continues exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from xnorpipe.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint, stored_model_kwargs
from xnorpipe.data import BatchIterator, Cifar10, load_cifar10, normalize, resize_batch, to_tensor
from xnorpipe.errors import XnorpipeError
from xnorpipe.models import build_model, get_model_spec, plain_model_kwargs
from xnorpipe.utils import append_text, arch_file_stem, atomic_write_text, os_error_reason, progress_interval

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 100
LR_MILESTONES = (0.5, 0.75)
LR_GAMMA = 0.1


class TrainingInterrupted(XnorpipeError):
    """Ctrl-C: the last completed epoch's checkpoint is intact; exit like SIGINT does."""

    exit_code = 130


@contextlib.contextmanager
def _signals_deferred():
    """Ctrl-C or SIGTERM during the checkpoint writes acts after them: the epoch the interrupt
    message names is the one on disk, never a checkpoint written but not yet counted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in caught[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


@dataclass
class TrainOptions:
    """Options of one run; None means "the seed's default" (or, on --resume, the checkpoint's)."""

    arch: str
    data: str
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    device: str = "auto"
    deterministic: bool = False
    seed: int | None = None
    amp: bool = False
    subset: int | None = None
    test_subset: int | None = None
    out: str = "checkpoints"
    resume: str | None = None  # "auto" = <out>/cifar10_<arch>_checkpoint.pth.tar, or a path
    compile: bool = False
    # The builder's keyword arguments (plain values); cfg/groups: the NIN archs' widths and groups.
    model_kwargs: dict[str, Any] | None = None
    cfg: Sequence[int] | None = None
    groups: Sequence[int] | None = None
    # NHWC: faster for these nets on CUDA and, per benchmarks/bench_train.py, on CPU (oneDNN) too.
    channels_last: bool = True
    time_limit: float | None = None  # seconds of wall clock for this invocation; None = no limit
    progress: bool = True
    plot: bool = True
    log: Callable[[str], None] = print


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ------------------------------------------------------------------- helpers


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise XnorpipeError("--device cuda: no CUDA device is available "
                                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "cpu":
        return torch.device("cpu")
    raise XnorpipeError(f"unknown device {name!r}; use auto, cpu or cuda")


def dist_from_env() -> Dist:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise XnorpipeError("WORLD_SIZE/RANK/LOCAL_RANK must be integers") from None
    return Dist(rank, world, local_rank)


def milestones(epochs: int) -> list[int]:
    # At least 1: a milestone at 0 would cut the lr before the first epoch of a short run.
    return [max(1, int(epochs * f)) for f in LR_MILESTONES]


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def make_scheduler(optimizer, epochs: int) -> torch.optim.lr_scheduler.MultiStepLR:
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones(epochs), gamma=LR_GAMMA)


def scheduler_state(scheduler) -> dict:
    """MultiStepLR's state with its Counter as a plain dict (torch.load(weights_only) refuses Counter)."""
    state = dict(scheduler.state_dict())
    state["milestones"] = {int(k): int(v) for k, v in state["milestones"].items()}
    return state


def load_scheduler_state(scheduler, state: dict) -> None:
    state = dict(state)
    state["milestones"] = Counter({int(k): int(v) for k, v in state["milestones"].items()})
    scheduler.load_state_dict(state)


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], images, labels, *,
             batch_size: int = BATCH_SIZE, device: torch.device | str | None = None,
             memory_format=torch.contiguous_format, amp_dtype: torch.dtype | None = None,
             dist: Dist | None = None, image_size: tuple[int, int] | None = None) -> dict[str, float]:
    """Top-1 (percent) and mean cross-entropy of `model` on uint8 images.

    images: (N, 3, 32, 32) uint8 tensor or (N, 32, 32, 3) uint8 numpy; labels: int64.
    `model` is any callable from normalised float batches to logits (an nn.Module is put in
    eval mode). `image_size` (H, W): batches are resized to it first (data.resize_batch), for a
    model whose input is not the images' size. Under DDP every rank scores every world-th image
    and the sums are reduced.
    """
    dist = dist or Dist()
    if device is None:
        device = next(model.parameters()).device if isinstance(model, nn.Module) else torch.device("cpu")
    device = torch.device(device)
    if isinstance(images, np.ndarray):
        images = to_tensor(images, device)
    labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
    images = images.to(device)
    if isinstance(model, nn.Module):
        model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    mine = torch.arange(dist.rank, len(labels), dist.world, device=device)
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        batch = images.index_select(0, idx)
        if image_size is not None:
            batch = resize_batch(batch, image_size)
        x = normalize(batch, memory_format)
        y = labels.index_select(0, idx)
        with _autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    totals = torch.stack([loss_sum, correct.double()])
    if dist.enabled:
        torch.distributed.all_reduce(totals)
    n = len(labels)
    loss_total, correct_total = totals.tolist()
    return {"top1": 100.0 * correct_total / max(n, 1), "loss": loss_total / max(n, 1),
            "n": n, "correct": int(round(correct_total))}


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str, *, batch_size: int = BATCH_SIZE,
                        device: str = "auto", test_subset: int | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Load a checkpoint and score it on the test split of `data` (the `xnorpipe eval` body)."""
    dev = resolve_device(device)
    _check_positive("--test-subset", test_subset)
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model().to(dev)
    dataset = load_cifar10(data, progress=progress)
    check_classes(dataset.classes, model.num_classes, ckpt.classes, data, ckpt.path)
    images, labels = dataset.test_images[:test_subset], dataset.test_labels[:test_subset]
    result = evaluate(model, to_tensor(images, dev), torch.from_numpy(labels),
                      batch_size=batch_size, device=dev, image_size=_rgb_spec(ckpt.arch).image_size)
    return {**result, "arch": ckpt.arch, "checkpoint": str(checkpoint), "epoch": ckpt.epoch,
            "model_kwargs": ckpt.model_kwargs, "device": str(dev)}


def _rgb_spec(arch: str):
    """`arch`'s ModelSpec; it must take RGB images (CIFAR-10's), of any size (resized to it)."""
    spec = get_model_spec(arch)
    if spec.input_shape[0] != 3:
        raise XnorpipeError(f"{arch} takes {spec.input_shape[0]}-channel images; CIFAR-10's are RGB")
    return spec


def check_classes(dataset_classes: Sequence[str], num_classes: int,
                  checkpoint_classes: Sequence[str] | None, data, checkpoint) -> None:
    """The dataset's classes must be the model's: same count and, when the checkpoint recorded
    them, the same names in the same label order (else the scores would be meaningless)."""
    if len(dataset_classes) != num_classes:
        raise XnorpipeError(f"{data}: {len(dataset_classes)} classes, but {checkpoint} scores "
                            f"{num_classes} classes")
    if checkpoint_classes is not None and tuple(checkpoint_classes) != tuple(dataset_classes):
        diff = next(i for i, (a, b) in enumerate(zip(checkpoint_classes, dataset_classes)) if a != b)
        raise XnorpipeError(f"{data}: class {diff} is {dataset_classes[diff]!r}, but {checkpoint} "
                            f"was trained with {checkpoint_classes[diff]!r} there")


# ------------------------------------------------------------------- training


def _check_positive(flag: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise XnorpipeError(f"{flag} must be positive, got {value}")


@dataclass
class _Recipe:
    epochs: int
    lr: float
    batch_size: int
    seed: int
    subset: int | None
    test_subset: int | None
    model_kwargs: dict[str, Any]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _resolve_recipe(opts: TrainOptions, stored: dict | None) -> _Recipe:
    """Explicit options win over the checkpoint's recipe (which wins over the seed's defaults);
    a resumed run may not change what would make it differ from an uninterrupted one."""
    spec = get_model_spec(opts.arch)
    base = stored or {}
    given_kwargs, flags = _given_model_kwargs(opts, spec)
    model_kwargs = given_kwargs
    if stored is not None:
        for name in ("epochs", "lr", "batch_size", "seed", "subset", "test_subset"):
            given = getattr(opts, name)
            if given is not None and given != stored.get(name):
                raise XnorpipeError(f"--resume: --{name.replace('_', '-')} {given} differs from "
                                    f"the checkpoint's {stored.get(name)}; drop it to continue")
        model_kwargs = stored_model_kwargs(stored, "--resume")
        for key, value in given_kwargs.items():
            if key not in model_kwargs or model_kwargs[key] != value:
                raise XnorpipeError(f"--resume: {flags[key]} {value} differs from the checkpoint's "
                                    f"{model_kwargs.get(key, 'default')}")

    def pick(name, default):
        given = getattr(opts, name)
        return given if given is not None else base.get(name, default)

    if opts.seed is not None:
        seed = opts.seed
    elif "seed" in base:
        seed = base["seed"]
    else:
        seed = 0 if opts.deterministic else secrets.randbelow(2 ** 31)
    return _Recipe(epochs=int(pick("epochs", spec.epochs)), lr=float(pick("lr", spec.lr)),
                   batch_size=int(pick("batch_size", BATCH_SIZE)), seed=int(seed),
                   subset=pick("subset", None), test_subset=pick("test_subset", None),
                   model_kwargs=model_kwargs)


def _given_model_kwargs(opts: TrainOptions, spec) -> tuple[dict[str, Any], dict[str, str]]:
    """opts.model_kwargs plus --cfg/--groups, and the flag that gave each (for messages)."""
    kwargs = plain_model_kwargs(dict(opts.model_kwargs or {}), "--model-arg")
    flags = {k: f"--model-arg {k}" for k in kwargs}
    for name in ("cfg", "groups"):
        value = getattr(opts, name)
        if value is None:
            continue
        if name not in spec.defaults:
            raise XnorpipeError(f"--{name} is for the NIN archs; {spec.name} takes "
                                f"{', '.join(spec.defaults) or 'no model arguments'}")
        if name in kwargs:
            raise XnorpipeError(f"--{name} and --model-arg {name} both given")
        kwargs[name], flags[name] = [int(v) for v in value], f"--{name}"
    unknown = [k for k in kwargs if k not in spec.defaults]
    if unknown:
        raise XnorpipeError(f"--model-arg {unknown[0]}: {spec.name} takes "
                            f"{', '.join(spec.defaults) or 'no model arguments'}")
    return kwargs, flags


def _validate(opts: TrainOptions) -> None:
    _rgb_spec(opts.arch)
    if opts.epochs is not None and opts.epochs < 1:
        raise XnorpipeError(f"--epochs must be at least 1, got {opts.epochs}")
    _check_positive("--lr", opts.lr)
    _check_positive("--batch-size", opts.batch_size)
    _check_positive("--subset", opts.subset)
    _check_positive("--test-subset", opts.test_subset)
    _check_positive("--time-limit", opts.time_limit)
    if opts.seed is not None and opts.seed < 0:
        raise XnorpipeError(f"--seed must be non-negative, got {opts.seed}")


@contextlib.contextmanager
def _determinism(deterministic: bool, device: torch.device):
    """Set the global determinism switches for one run, then restore them (library callers)."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    _configure_determinism(deterministic, device)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def _configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        # cuBLAS needs this before its first handle for deterministic GEMMs.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = device.type == "cuda"


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"data": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict, generator: torch.Generator, device: torch.device) -> None:
    generator.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _read_log(path: Path, upto_epoch: int) -> list[dict]:
    """Log records of epochs <= upto_epoch (a crash may have logged an epoch it never saved)."""
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except OSError as e:
        raise XnorpipeError(f"{path}: cannot read the training log: {os_error_reason(e)}") from None
    except UnicodeDecodeError:
        raise XnorpipeError(f"{path}: the training log is not text") from None
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("epoch", 0) <= upto_epoch:
                records.append(rec)
    return records


def train(opts: TrainOptions) -> dict[str, Any]:
    """Run (or resume) training; returns the final metrics and the files written."""
    started = time.monotonic()  # the --time-limit clock: data loading counts too
    _validate(opts)
    dist = dist_from_env()
    device = resolve_device(opts.device, dist.local_rank)
    if opts.amp and device.type != "cuda":
        raise XnorpipeError("--amp needs a CUDA device (mixed precision on CPU would only be slower)")
    out = Path(opts.out)
    last_path = checkpoint_path(opts.arch, out)
    best_path = checkpoint_path(opts.arch, out, best=True)
    log_path = out / f"cifar10_{arch_file_stem(opts.arch)}_log.jsonl"
    plot_path = out / f"cifar10_{arch_file_stem(opts.arch)}_curves.png"

    ckpt = None
    if opts.resume is not None:
        resume_path = last_path if opts.resume == "auto" else Path(opts.resume)
        if not resume_path.is_file():
            raise XnorpipeError(f"--resume: no checkpoint at {resume_path}")
        ckpt = load_checkpoint(resume_path, arch=opts.arch)
        for key in ("optimizer", "scheduler", "rng", "recipe"):
            if key not in ckpt.state:
                raise XnorpipeError(f"{resume_path}: holds no training state ({key}); "
                                    "cannot resume from it")
    recipe = _resolve_recipe(opts, ckpt.state["recipe"] if ckpt else None)
    _check_positive("--batch-size", recipe.batch_size)
    if recipe.batch_size % dist.world:
        raise XnorpipeError(f"--batch-size {recipe.batch_size} is not divisible by the "
                            f"{dist.world} processes")
    if ckpt is not None and ckpt.epoch >= recipe.epochs:
        raise XnorpipeError(f"--resume: {ckpt.path} already finished all {recipe.epochs} epochs")

    if dist.enabled:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        _init_process_group(device)
    stack = contextlib.ExitStack()
    try:
        if dist.enabled:
            # A random seed must be rank 0's everywhere: the global shuffle depends on it.
            shared = [recipe.seed]
            torch.distributed.broadcast_object_list(shared, src=0)
            recipe.seed = int(shared[0])
        stack.enter_context(_determinism(opts.deterministic, device))
        torch.manual_seed(recipe.seed)
        model = build_model(opts.arch, **recipe.model_kwargs)

        if dist.enabled and not dist.is_main:
            torch.distributed.barrier()  # rank 0 decodes and caches first; the rest read the cache
        dataset = load_cifar10(opts.data, progress=opts.progress and dist.is_main)
        if dist.enabled and dist.is_main:
            torch.distributed.barrier()
        for flag, n, total in (("--subset", recipe.subset, len(dataset.train_labels)),
                               ("--test-subset", recipe.test_subset, len(dataset.test_labels))):
            if n is not None and n > total:
                raise XnorpipeError(f"{flag} {n} exceeds the {total} images of {opts.data}")
        if ckpt is not None:
            check_classes(dataset.classes, model.num_classes, ckpt.classes, opts.data, ckpt.path)
        elif len(dataset.classes) != model.num_classes:
            raise XnorpipeError(f"{opts.data}: {len(dataset.classes)} classes, the model has "
                                f"{model.num_classes}")
        dataset = dataset.subset(recipe.subset, recipe.test_subset)
        result = _train_loop(opts, recipe, dist, device, model, dataset, ckpt,
                             last_path, best_path, log_path, plot_path, started)
        if dist.enabled:
            # Rank 0 may still be writing the last checkpoint: no rank leaves before it is done.
            torch.distributed.all_reduce(torch.zeros(1, device=device), async_op=True).wait()
        return result
    finally:
        stack.close()
        if dist.enabled and torch.distributed.is_initialized():
            _destroy_process_group()


def _init_process_group(device: torch.device) -> None:
    # torch.distributed.nn.functional binds `group.WORLD` as a default argument when imported;
    # torch._dynamo imports it, and the optimizer imports torch._dynamo lazily. Imported after
    # init_process_group, those defaults would hold the group past destroy_process_group():
    # import them while WORLD is still None.
    import torch._dynamo  # noqa: F401
    import torch.distributed.nn  # noqa: F401

    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def _destroy_process_group() -> None:
    """Tear the group down for real: its last reference dropped, gloo's worker threads joined.

    DistributedDataParallel's reducer holds the group; while anything does,
    destroy_process_group() only unregisters it, gloo's worker threads live on, and one of them
    may release the last collective's Work while the interpreter is finalizing: the thread is
    killed mid-destructor and the C++ runtime aborts ("terminate called without an active
    exception", SIGABRT, after a successful run). _train_loop drops the DDP wrapper on the way
    out; collecting its reference cycles here lets the group's destructor join the threads now.
    """
    gc.collect()
    torch.distributed.destroy_process_group()
    gc.collect()


def _train_loop(opts, recipe: _Recipe, dist: Dist, device, model, dataset: Cifar10, ckpt,
                last_path: Path, best_path: Path, log_path: Path, plot_path: Path,
                started: float) -> dict:
    from tqdm import tqdm

    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    optimizer = make_optimizer(model, recipe.lr)
    scheduler = make_scheduler(optimizer, recipe.epochs)
    amp_dtype = _amp_dtype(device, opts.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(recipe.seed)
    start_epoch, best_acc1 = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt.state["model"])
        optimizer.load_state_dict(ckpt.state["optimizer"])
        load_scheduler_state(scheduler, ckpt.state["scheduler"])
        if "scaler" in ckpt.state and scaler.is_enabled():
            scaler.load_state_dict(ckpt.state["scaler"])
        _restore_rng(ckpt.state["rng"], generator, device)
        start_epoch, best_acc1 = ckpt.epoch, ckpt.best_acc1

    train_images = to_tensor(dataset.train_images, device)
    train_labels = torch.from_numpy(dataset.train_labels).to(device)
    test_images = to_tensor(dataset.test_images, device)
    test_labels = torch.from_numpy(dataset.test_labels).to(device)
    image_size = get_model_spec(opts.arch).image_size
    batches = BatchIterator(train_images, train_labels, recipe.batch_size, train=True,
                            generator=generator, rank=dist.rank, world=dist.world,
                            memory_format=memory_format, image_size=image_size)
    n_train = sum(batches.global_batch_sizes())

    net: nn.Module | None = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if opts.compile:
        net = torch.compile(net)

    records = _read_log(log_path, start_epoch) if (ckpt is not None and dist.is_main) else []
    if dist.is_main:
        # A fresh run starts a fresh log; a resumed one drops epochs past its checkpoint.
        atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in records))
        kwargs = ", ".join(f"{k}={v}" for k, v in recipe.model_kwargs.items())
        opts.log(f"{opts.arch}{f' ({kwargs})' if kwargs else ''}: {len(dataset.train_labels)} train / "
                 f"{len(dataset.test_labels)} "
                 f"test images on {device}"
                 f"{f' x {dist.world} processes' if dist.enabled else ''}, epochs "
                 f"{start_epoch + 1}..{recipe.epochs}, batch {recipe.batch_size}, lr {recipe.lr}, "
                 f"seed {recipe.seed}{', deterministic' if opts.deterministic else ''}"
                 f"{f', time limit {opts.time_limit:g} s' if opts.time_limit else ''}")

    epoch = saved_epoch = start_epoch
    metrics: dict[str, Any] = {}
    epoch_seconds: list[float] = []  # wall time of each epoch of this invocation
    stopped = None
    try:
        for epoch in range(start_epoch, recipe.epochs):
            if epoch_seconds and opts.time_limit is not None:
                stopped = _time_limit_stop(opts.time_limit, started, epoch_seconds, dist, device)
                if stopped is not None:
                    break
            epoch_started = time.monotonic()
            lr = optimizer.param_groups[0]["lr"]
            bar = tqdm(total=n_train, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="img",
                       unit_scale=True, disable=not (opts.progress and dist.is_main),
                       leave=False, dynamic_ncols=True, mininterval=progress_interval())
            t0 = time.perf_counter()
            train_loss, train_correct = _train_epoch(net, batches, optimizer, scaler, device,
                                                     amp_dtype, dist, bar)
            seconds = time.perf_counter() - t0
            bar.close()
            scheduler.step()

            if dist.enabled:
                # Score rank 0's BN statistics, the ones the checkpoint holds.
                for buf in model.buffers():
                    torch.distributed.broadcast(buf, 0)
            test = evaluate(model, test_images, test_labels, batch_size=recipe.batch_size,
                            device=device, memory_format=memory_format, amp_dtype=amp_dtype,
                            dist=dist, image_size=image_size)
            is_best = test["top1"] > best_acc1
            best_acc1 = max(best_acc1, test["top1"])
            metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss / n_train,
                       "train_top1": 100.0 * train_correct / n_train,
                       "test_loss": test["loss"], "test_top1": test["top1"],
                       "best_top1": best_acc1, "seconds": round(seconds, 3),
                       "images_per_s": round(n_train / seconds, 1)}
            if dist.is_main:
                records.append(metrics)
                append_text(log_path, json.dumps(metrics) + "\n")
                state = {"arch": opts.arch, "model_kwargs": recipe.model_kwargs,
                         "classes": list(dataset.classes),
                         "epoch": epoch + 1, "best_acc1": best_acc1,
                         # NCHW copies: channels_last strides would leak into export/deploy code.
                         "model": {k: v.contiguous() for k, v in model.state_dict().items()},
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler_state(scheduler),
                         "rng": _rng_state(generator, device), "recipe": recipe.as_dict(),
                         "test_top1": test["top1"]}
                if scaler.is_enabled():
                    state["scaler"] = scaler.state_dict()
                with _signals_deferred():
                    save_checkpoint(last_path, state)
                    if is_best:
                        save_checkpoint(best_path, state)
                    saved_epoch = epoch + 1
                if opts.plot:
                    from xnorpipe.plotting import plot_curves

                    plot_curves(records, plot_path, title=f"CIFAR-10 {opts.arch}")
                opts.log(f"epoch {epoch + 1}/{recipe.epochs} lr {lr:.4g}  train loss "
                         f"{metrics['train_loss']:.4f} top1 {metrics['train_top1']:.2f}  test loss "
                         f"{test['loss']:.4f} top1 {test['top1']:.2f} (best {best_acc1:.2f})  "
                         f"{seconds:.1f}s {metrics['images_per_s']:.0f} img/s")
            epoch_seconds.append(time.monotonic() - epoch_started)
    except KeyboardInterrupt:
        if not dist.is_main:
            raise
        where = (f"checkpoint of epoch {saved_epoch} in {last_path}; continue with --resume"
                 if saved_epoch > 0 else "no epoch completed, nothing saved")
        raise TrainingInterrupted(f"interrupted during epoch {epoch + 1}: {where}") from None
    finally:
        # The DDP wrapper holds the process group: drop it here, even when unwinding (a
        # traceback keeps this frame, not the binding), so _destroy_process_group can end it.
        net = None
        if opts.compile and dist.enabled:
            torch._dynamo.reset()  # compiled code and guards reference the DDP module too
    done = epoch if stopped is not None else recipe.epochs
    if stopped is not None and dist.is_main:
        opts.log(f"time limit {opts.time_limit:g} s: stopped after epoch {done} of {recipe.epochs} "
                 f"({stopped}); best test top-1 {best_acc1:.2f} %; checkpoint {last_path}, "
                 "continue with --resume")
    return {**metrics, "best_top1": best_acc1, "checkpoint": str(last_path),
            "best_checkpoint": str(best_path), "log": str(log_path), "plot": str(plot_path),
            "seed": recipe.seed, "epochs": recipe.epochs, "epochs_done": done,
            "stopped": "time_limit" if stopped is not None else None}


def _train_epoch(net: nn.Module, batches: BatchIterator, optimizer, scaler, device, amp_dtype,
                 dist: Dist, bar) -> tuple[float, float]:
    """One pass over the training batches; (summed loss, correct count) over all ranks."""
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    sizes = batches.global_batch_sizes()
    for step, (x, y) in enumerate(batches):
        with _autocast(device, amp_dtype):
            logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        # Accumulated on the device: no host sync per step.
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        bar.update(sizes[step])
    totals = torch.stack([loss_sum, correct.double()])
    if dist.enabled:
        torch.distributed.all_reduce(totals)
    train_loss, train_correct = totals.tolist()  # the epoch's one sync
    return train_loss, train_correct


def _time_limit_stop(limit: float, started: float, epoch_seconds: list[float], dist: Dist,
                     device) -> str | None:
    """Why to stop before the next epoch (it would likely overrun `limit`), or None to go on.

    Every rank must take the same decision: a rank that expects to overrun stops them all.
    """
    elapsed = time.monotonic() - started
    expected = sum(epoch_seconds) / len(epoch_seconds)
    stop = elapsed + expected > limit
    if dist.enabled:
        flag = torch.tensor([1.0 if stop else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = bool(flag.item())
    if not stop:
        return None
    return f"{elapsed:.0f} s used of {limit:g} s, an epoch takes about {expected:.0f} s"
