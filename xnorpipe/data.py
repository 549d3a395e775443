"""CIFAR-10 loading, caching, and whole-batch augmentation on the training device.

Sources (`load_cifar10(spec)`):
  * the standard pickle folder `cifar-10-batches-py` (or its parent);
  * an image-folder tree `train/<class>/*`, `test/<class>/*` (jpg/png), or a `.tar.gz`/`.tgz`/`.tar`
    of one, read straight from the archive; decoded once on all cores, then cached as uint8
    arrays in `$XNORPIPE_CACHE` (default `~/.cache/xnorpipe`);
  * `download:DIR`: torchvision's downloader into DIR (optional dependency, needs internet).

Image-folder samples are ordered round-robin over the classes (image 0 of every class, then
image 1, ...), so "the first N images" (`--subset`) is class-balanced like the pickle order.

Augmentation and normalisation work on whole uint8 NCHW batches as tensor ops (one gather per
batch), with all randomness drawn per epoch from one torch.Generator: no per-image Python.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from xnorpipe.errors import XnorpipeError
from xnorpipe.utils import atomic_path, progress_interval

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
IMAGE_SIZE = 32
PADDING = 4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_VERSION = 1


@dataclass
class Cifar10:
    """uint8 images (N, 32, 32, 3) and int64 labels (N,) for train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    source: str = ""

    def subset(self, train: int | None = None, test: int | None = None) -> "Cifar10":
        """The first `train` training and first `test` test images (None = all)."""
        return Cifar10(self.train_images[:train], self.train_labels[:train],
                       self.test_images[:test], self.test_labels[:test], self.classes, self.source)


# ---------------------------------------------------------------- loading


def cache_dir() -> Path:
    return Path(os.environ.get("XNORPIPE_CACHE") or Path.home() / ".cache" / "xnorpipe")


def load_cifar10(spec: str | os.PathLike, *, progress: bool = True, use_cache: bool = True) -> Cifar10:
    """Load CIFAR-10 from a pickle folder, an image-folder tree, an archive of one, or `download:DIR`."""
    spec_str = str(spec)
    if spec_str.startswith("download:"):
        return _download(spec_str[len("download:"):] or ".")
    path = Path(spec_str).expanduser()
    if not path.exists():
        raise XnorpipeError(f"dataset not found: {path}")
    if path.is_dir():
        pickle_dir = _find_pickle_dir(path)
        if pickle_dir is not None:
            return _load_pickle_dir(pickle_dir)
        if (path / "train").is_dir() and (path / "test").is_dir():
            return _cached(path, lambda: _decode_image_tree(path, progress), use_cache)
        raise XnorpipeError(f"{path}: not a CIFAR-10 folder (expected cifar-10-batches-py/ "
                            "or train/<class>/ and test/<class>/)")
    if path.is_file() and _is_tar_name(path.name):
        return _cached(path, lambda: _decode_tar(path, progress), use_cache)
    raise XnorpipeError(f"{path}: unsupported dataset file (expected a folder or a .tar.gz)")


def _is_tar_name(name: str) -> bool:
    return name.endswith((".tar.gz", ".tgz", ".tar"))


def _download(root: str) -> Cifar10:
    try:
        from torchvision.datasets import CIFAR10  # optional: only for fetching the pickles
    except ImportError:
        raise XnorpipeError("download: needs torchvision (pip install torchvision); "
                            "or pass --data with a local copy") from None
    try:
        CIFAR10(root, train=True, download=True)
    except Exception as e:  # network errors come in many types
        raise XnorpipeError(f"download into {root} failed: {type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    return _load_pickle_dir(Path(root) / "cifar-10-batches-py")


# ------------------------------------------------ pickle folder (cifar-10-batches-py)

PICKLE_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
PICKLE_TEST = "test_batch"


def _find_pickle_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / PICKLE_TEST).is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    return None


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise XnorpipeError(f"{path.parent}: incomplete CIFAR-10 pickle folder, missing {path.name}")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise XnorpipeError(f"{path}: unreadable CIFAR-10 pickle ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise XnorpipeError(f"{path}: not a CIFAR-10 batch (a {type(obj).__name__})")
    # Python-2-era pickles have bytes keys; normalise to str.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _pickle_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path)
    try:
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
        images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    except (KeyError, ValueError) as e:
        raise XnorpipeError(f"{path}: not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if len(images) != len(labels):
        raise XnorpipeError(f"{path}: {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def _load_pickle_dir(folder: Path) -> Cifar10:
    train = [_pickle_batch(folder / name) for name in PICKLE_TRAIN]
    test_images, test_labels = _pickle_batch(folder / PICKLE_TEST)
    classes = CLASSES
    if (folder / "batches.meta").is_file():
        names = _read_pickle(folder / "batches.meta").get("label_names")
        if names:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    data = Cifar10(np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
                   test_images, test_labels, classes, str(folder))
    _check_labels(data, folder)
    return data


def _check_labels(data: Cifar10, where: Path) -> None:
    for labels in (data.train_labels, data.test_labels):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(data.classes)):
            raise XnorpipeError(f"{where}: labels outside 0..{len(data.classes) - 1}")


# ------------------------------------------------------ image folders and archives


def _decode_one(item: tuple[str, bytes]) -> np.ndarray:
    from PIL import Image

    name, blob = item
    try:
        with Image.open(io.BytesIO(blob)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        raise ValueError(f"{name}: unreadable image ({type(e).__name__})") from None
    if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"{name}: image is {arr.shape[1]}x{arr.shape[0]}, expected 32x32")
    return arr


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group: let the parent handle it, not print worker tracebacks.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_chunk(items: list[tuple[str, bytes]]) -> np.ndarray | str:
    # Errors go back as strings: exceptions crossing the pool boundary lose their message shape.
    try:
        return np.stack([_decode_one(item) for item in items])
    except ValueError as e:
        return str(e)


def _decode_all(items: list[tuple[str, bytes]], where: str, progress: bool) -> np.ndarray:
    """Decode (name, encoded bytes) pairs to (N, 32, 32, 3) uint8, on all cores."""
    from tqdm import tqdm

    if not items:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    workers = max(1, min(os.cpu_count() or 1, 16))
    chunk = 1000
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    bar = tqdm(total=len(items), desc=f"decoding {Path(where).name}", unit="img",
               disable=not progress, leave=False, mininterval=progress_interval())
    out: list[np.ndarray] = []
    try:
        if workers == 1 or len(chunks) == 1:
            results = map(_decode_chunk, chunks)
            pool = None
        else:
            pool = ProcessPoolExecutor(workers, initializer=_ignore_sigint)
            results = pool.map(_decode_chunk, chunks)
        for res in results:
            if isinstance(res, str):
                raise XnorpipeError(f"{where}: {res}")
            out.append(res)
            bar.update(len(res))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return np.concatenate(out)


def _index_samples(entries: Sequence[tuple[str, str, str]], where: str
                   ) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]:
    """(split, class, name) entries -> classes, and per split a round-robin (key, label) order."""
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for split, cls, key in entries:
        by_split[split].setdefault(cls, []).append(key)
    classes = tuple(sorted(by_split["train"]))
    if not classes:
        raise XnorpipeError(f"{where}: no images under train/<class>/")
    if not by_split["test"]:
        raise XnorpipeError(f"{where}: no images under test/<class>/")
    unknown = sorted(set(by_split["test"]) - set(classes))
    if unknown:
        raise XnorpipeError(f"{where}: test classes {unknown} not among the train classes")
    index = {cls: i for i, cls in enumerate(classes)}
    ordered: dict[str, list[tuple[str, int]]] = {}
    for split, per_class in by_split.items():
        lists = [(sorted(keys), index[cls]) for cls, keys in sorted(per_class.items())]
        order = []
        for rank in range(max(len(keys) for keys, _ in lists)):
            order.extend((keys[rank], label) for keys, label in lists if rank < len(keys))
        ordered[split] = order
    return classes, ordered


def _split_member(name: str) -> tuple[str, str, str] | None:
    """'[prefix/]train/cat/0001.jpg' -> ('train', 'cat', name); None for other files."""
    parts = Path(name).parts
    if len(parts) < 3 or parts[-3] not in ("train", "test"):
        return None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES) or parts[-1].startswith("."):
        return None
    return parts[-3], parts[-2], name


def _finish(where: str, classes, ordered, blobs: dict[str, bytes], progress: bool) -> Cifar10:
    arrays = {}
    for split in ("train", "test"):
        items = [(key, blobs[key]) for key, _ in ordered[split]]
        arrays[split] = (_decode_all(items, where, progress),
                         np.array([label for _, label in ordered[split]], dtype=np.int64))
    return Cifar10(*arrays["train"], *arrays["test"], classes, where)


def _decode_image_tree(root: Path, progress: bool) -> Cifar10:
    entries = []
    for split in ("train", "test"):
        for cls_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for f in cls_dir.iterdir():
                entry = _split_member(str(f.relative_to(root)))
                if entry is not None and f.is_file():
                    entries.append(entry)
    classes, ordered = _index_samples(entries, str(root))
    blobs = {}
    for split in ("train", "test"):
        for key, _ in ordered[split]:
            try:
                blobs[key] = (root / key).read_bytes()
            except OSError as e:
                raise XnorpipeError(f"{root / key}: unreadable ({e.strerror})") from None
    return _finish(str(root), classes, ordered, blobs, progress)


def _decode_tar(path: Path, progress: bool) -> Cifar10:
    entries, blobs = [], {}
    try:
        # Stream mode ("r|*"): one sequential pass over the gzip stream, no seeks, no extraction.
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                entry = _split_member(member.name)
                if entry is None:
                    continue
                f = tar.extractfile(member)
                blobs[member.name] = f.read() if f is not None else b""
                entries.append(entry)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise XnorpipeError(f"{path}: unreadable archive (truncated or not a tar?): "
                            f"{type(e).__name__}") from None
    if not entries:
        raise XnorpipeError(f"{path}: archive holds no train/<class>/ or test/<class>/ images")
    classes, ordered = _index_samples(entries, str(path))
    return _finish(str(path), classes, ordered, blobs, progress)


# --------------------------------------------------------------------- cache


def _cache_key(path: Path) -> str:
    """Resolved path + size + mtime; for a tree also its split and class folders (where files land)."""
    path = path.resolve()
    parts = [f"v{CACHE_VERSION}", str(path)]
    stats = [path]
    if path.is_dir():
        for split in ("train", "test"):
            stats.append(path / split)
            stats.extend(sorted(p for p in (path / split).iterdir() if p.is_dir()))
    for p in stats:
        st = p.stat()
        parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def cache_file(path: str | os.PathLike) -> Path:
    return cache_dir() / f"cifar10-{_cache_key(Path(path))}.npz"


def _cached(path: Path, decode, use_cache: bool) -> Cifar10:
    target = cache_file(path) if use_cache else None
    if target is not None and target.is_file():
        try:
            with np.load(target, allow_pickle=False) as z:
                return Cifar10(z["train_images"], z["train_labels"], z["test_images"],
                               z["test_labels"], tuple(str(c) for c in z["classes"]), str(path))
        except Exception:
            pass  # a damaged cache entry is just rebuilt
    data = decode()
    _check_labels(data, path)
    if target is not None:
        try:
            with atomic_path(target) as tmp, open(tmp, "wb") as f:
                # Uncompressed: loading 184 MB of raw uint8 beats inflating it every run.
                np.savez(f, train_images=data.train_images, train_labels=data.train_labels,
                         test_images=data.test_images, test_labels=data.test_labels,
                         classes=np.array(data.classes))
        except OSError:
            pass  # a read-only cache dir only costs speed
    return data


# ---------------------------------------------------------- tensors and batches


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 32, 32, 3) uint8 numpy -> (N, 3, 32, 32) contiguous uint8 tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


_MEAN_STD: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device: building them every step would be a host-to-device copy per batch.
    if device not in _MEAN_STD:
        _MEAN_STD[device] = (torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
                             torch.tensor(STD, device=device).view(1, 3, 1, 1))
    return _MEAN_STD[device]


def normalize(batch: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """uint8 NCHW -> float32, scaled to [0, 1] and normalised by MEAN/STD (ToTensor + Normalize)."""
    mean, std = _mean_std(batch.device)
    x = batch.to(dtype=torch.float32, memory_format=memory_format)
    return (x / 255.0 - mean) / std


def draw_augmentation(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image crop offsets (n, 2) in [0, 2*PADDING] and flip flags (n,), on the CPU generator."""
    offsets = torch.randint(0, 2 * PADDING + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    return offsets, flips


def augment(batch: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """RandomCrop(32, padding=4) with zero padding + horizontal flip, on a uint8 NCHW batch.

    Crop and flip are one gather over each padded image: output pixel (i, j) of image b reads
    padded pixel (offsets[b, 0] + i, offsets[b, 1] + (w-1-j if flips[b] else j)).
    torch.gather is ~5x faster than the equivalent 4-tensor advanced indexing on CPU.
    """
    b, c, h, w = batch.shape
    dev = batch.device
    offsets, flips = offsets.to(dev, non_blocking=True), flips.to(dev, non_blocking=True)
    padded = torch.nn.functional.pad(batch, (PADDING, PADDING, PADDING, PADDING))
    padded_w = w + 2 * PADDING
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offsets[:, 0:1] + ar_h  # (B, H)
    cols = offsets[:, 1:2] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    flat = (rows[:, :, None] * padded_w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(padded.view(b, c, -1), 2, flat).view(b, c, h, w)


class BatchIterator:
    """Epochs of (uint8 or normalised) batches from tensors already on the training device.

    Every epoch draws one permutation and per-image augmentation from `generator` (a CPU
    torch.Generator, the same on every rank), so shuffling is global and reproducible; rank r
    of `world` takes every world-th image of each global batch. Under DDP the last global
    batch is cut to a multiple of `world` so every rank steps the same number of times.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 train: bool, generator: torch.Generator | None = None, rank: int = 0,
                 world: int = 1, memory_format=torch.contiguous_format):
        if train and generator is None:
            raise ValueError("a training iterator needs a generator")
        if batch_size % world:
            raise XnorpipeError(f"batch size {batch_size} is not divisible by the "
                                f"{world} processes")
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.generator = batch_size, train, generator
        self.rank, self.world, self.memory_format = rank, world, memory_format

    def __len__(self) -> int:
        """Steps per epoch on this rank."""
        n = len(self.labels)
        full, rest = divmod(n, self.batch_size)
        rest -= rest % self.world
        return full + (1 if rest else 0)

    def global_batch_sizes(self) -> list[int]:
        n = len(self.labels)
        sizes = [self.batch_size] * (n // self.batch_size)
        rest = n % self.batch_size
        rest -= rest % self.world
        return sizes + ([rest] if rest else [])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        dev = self.images.device
        if self.train:
            order = torch.randperm(n, generator=self.generator)
            offsets, flips = draw_augmentation(n, self.generator)
            order = order.to(dev, non_blocking=True)
            offsets, flips = offsets.to(dev, non_blocking=True), flips.to(dev, non_blocking=True)
        else:
            order = None
        start = 0
        for size in self.global_batch_sizes():
            # This rank's images of the global batch [start, start + size).
            local = torch.arange(start + self.rank, start + size, self.world, device=dev)
            start += size
            if order is not None:
                idx = order.index_select(0, local)
                batch = augment(self.images.index_select(0, idx), offsets.index_select(0, idx),
                                flips.index_select(0, idx))
            else:
                idx = local
                batch = self.images.index_select(0, idx)
            yield normalize(batch, self.memory_format), self.labels.index_select(0, idx)
