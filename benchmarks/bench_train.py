"""Training throughput per arch, and the data pipeline against the seed's per-image one.

    python benchmarks/bench_train.py --data ../shared/data/cifar10-jpeg.tar.gz [--device cpu|cuda|all]
        [--steps N] [--archs nin,nin_xnornet] [--markdown FILE]

Measures, per device:
  * data pipeline alone: xnorpipe's whole-batch augmentation (crop+flip+normalise as tensor ops
    on the device) vs a seed-style torch DataLoader doing PIL crop/flip/ToTensor/Normalize per
    image in Python (0 and 2 workers), in images/s;
  * training step (forward+backward+SGD) per arch at batch 100, in images/s, and the share of a
    step spent producing its batch with each pipeline (serial: data time / (data + compute)).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xnorpipe.data import MEAN, STD, BatchIterator, load_cifar10, to_tensor  # noqa: E402
from xnorpipe.models import ARCHS, build_model, get_model_spec  # noqa: E402
from xnorpipe.train import make_optimizer  # noqa: E402

BATCH = 100


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SeedStyleDataset(torch.utils.data.Dataset):
    """What the seed did: per image, PIL RandomCrop(32, padding=4) + flip + ToTensor + Normalize."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 0):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image, ImageOps

        img = ImageOps.expand(Image.fromarray(self.images[i]), border=4, fill=0)
        x, y = self.rng.integers(0, 9, 2)
        img = img.crop((x, y, x + 32, y + 32))
        if self.rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
        return (t - self.mean) / self.std, int(self.labels[i])


def median_rate(times: list[float]) -> float:
    """Images/s from the median batch time: shared machines make single samples swing 10x."""
    return BATCH / float(np.median(times))


def bench_seed_loader(images, labels, workers: int, n_batches: int) -> float:
    loader = torch.utils.data.DataLoader(SeedStyleDataset(images, labels), batch_size=BATCH,
                                         shuffle=True, num_workers=workers,
                                         persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up is not per-batch cost
    times = []
    for _ in range(n_batches):
        t = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t)
    return median_rate(times)


def bench_batch_pipeline(images_t, labels_t, device, n_batches: int) -> float:
    it = BatchIterator(images_t, labels_t, BATCH, train=True, generator=torch.Generator().manual_seed(0))
    batches = iter(it)
    t = time.perf_counter()
    next(batches)
    sync(device)
    # The first batch pays the epoch's permutation and augmentation draw: spread it over the epoch.
    per_epoch = (time.perf_counter() - t) / len(it)
    times = []
    for _ in range(n_batches):
        t = time.perf_counter()
        next(batches)
        sync(device)
        times.append(time.perf_counter() - t + per_epoch)
    return median_rate(times)


def bench_train_step(arch, device, steps, warmup, channels_last) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(arch).to(device=device, memory_format=fmt).train()
    opt = make_optimizer(model, 0.01)
    x = torch.randn(BATCH, *get_model_spec(arch).input_shape, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10, (BATCH,), device=device)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)  # per-step sync only here, to time single steps
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return median_rate(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("XNORPIPE_DATA",
                    str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz")))
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--steps", type=int, default=None,
                    help="timed train steps per arch [default: 5 on CPU, 300 on CUDA]")
    ap.add_argument("--data-batches", type=int, default=None,
                    help="batches for the data-pipeline timing [default: 100 on CPU, 500 on CUDA]")
    ap.add_argument("--markdown", default=None, help="write the results as markdown here")
    args = ap.parse_args()

    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            sys.exit("no CUDA device")
    t = time.perf_counter()
    data = load_cifar10(args.data)
    print(f"dataset loaded in {time.perf_counter() - t:.1f}s (cached after the first run)")
    archs = args.archs.split(",")
    lines = [f"Command: `python benchmarks/bench_train.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
             f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
             + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""), ""]

    seed_rates = {}
    n_seed = 100
    for workers in (0, 2):
        seed_rates[workers] = bench_seed_loader(data.train_images, data.train_labels, workers, n_seed)
        print(f"seed-style DataLoader, {workers} workers: {seed_rates[workers]:,.0f} img/s")

    for device in devices:
        cpu = device.type == "cpu"
        steps = args.steps or (5 if cpu else 300)
        n_data = args.data_batches or (100 if cpu else 500)
        images_t = to_tensor(data.train_images, device)
        labels_t = torch.from_numpy(data.train_labels).to(device)
        bench_batch_pipeline(images_t, labels_t, device, 5)  # warm-up
        ours = bench_batch_pipeline(images_t, labels_t, device, n_data)
        print(f"[{device}] whole-batch augmentation: {ours:,.0f} img/s")
        lines += [f"## {device.type.upper()}", "",
                  "| data pipeline (batch 100, crop+flip+normalise) | images/s (median batch) |", "|---|---|",
                  f"| seed-style DataLoader, PIL per image, 0 workers | {seed_rates[0]:,.0f} |",
                  f"| seed-style DataLoader, PIL per image, 2 workers | {seed_rates[2]:,.0f} |",
                  f"| xnorpipe whole-batch tensor ops on {device.type} | {ours:,.0f} |", "",
                  f"Train step (forward+backward+SGD, batch 100, {steps} timed steps, median):", "",
                  "| arch | layout | train images/s | data share, xnorpipe | data share, seed 0 workers |"
                  " data share, seed 2 workers |",
                  "|---|---|---|---|---|---|"]
        for arch in archs:
            for channels_last in (False, True):
                rate = bench_train_step(arch, device, steps, 2 if cpu else 20, channels_last)
                step = BATCH / rate

                def share(data_rate, step=step):
                    d = BATCH / data_rate
                    return f"{100 * d / (d + step):.2f} %"

                layout = "channels_last" if channels_last else "NCHW"
                print(f"[{device}] {arch:15s} {layout:13s} {rate:8.1f} img/s  data share: ours "
                      f"{share(ours)}, seed {share(seed_rates[0])} / {share(seed_rates[2])}", flush=True)
                lines.append(f"| {arch} | {layout} | {rate:,.1f} | {share(ours)} | "
                             f"{share(seed_rates[0])} | {share(seed_rates[2])} |")
        lines.append("")
    lines += ["Data share = time to produce a batch / (that + one train step), the pipeline run "
              "serially before each step. The seed-style loader runs on the CPU whatever the "
              "training device; its worker numbers assume the workers have free cores."]
    if args.markdown:
        from xnorpipe.utils import atomic_write_text

        atomic_write_text(args.markdown, "# Training throughput\n\n" + "\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
