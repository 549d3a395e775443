"""CIFAR-10 loading, caching, and whole-batch augmentation on the training device.

Sources (`load_cifar10(spec)`):
  * the standard pickle folder `cifar-10-batches-py` (or its parent), read by a restricted
    unpickler that builds only what those files hold (dicts, lists, strings, numbers, numpy
    arrays) and refuses any other global: a pickle cannot run code;
  * an image-folder tree `train/<class>/*`, `test/<class>/*` (PNG/JPEG), or a `.tar.gz`/`.tgz`/
    `.tar` of one, read straight from the archive; decoded once on all cores, then cached as
    uint8 arrays in `$XNORPIPE_CACHE` (default `~/.cache/xnorpipe`) under a key made from the
    content (the archive's sha256, or a sha256 over every image file's path and bytes);
  * `download:DIR`: torchvision's downloader into DIR (optional dependency, needs internet).

Image-folder samples are ordered round-robin over the classes (image 0 of every class, then
image 1, ...), so "the first N images" (`--subset`) is class-balanced like the pickle order.

Pixel policy for image files (`_to_rgb8`): RGB as is; grayscale (L, 1) repeated to RGB; palette
looked up; 16-bit (I;16*, or I within 0..65535) scaled to 8 bits by `v >> 8` (the high byte, as
Pillow decodes 16-bit RGB PNGs); an alpha channel (RGBA, LA, PA, tRNS) is dropped when every
pixel is opaque and refused otherwise (no background to composite on is "right"); float (F)
and any other mode refused. Only PNG and JPEG content is decoded, whatever the file name says.

Augmentation and normalisation work on whole uint8 NCHW batches as tensor ops (one gather per
batch), with all randomness drawn per epoch from one torch.Generator: no per-image Python.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xnorpipe.errors import XnorpipeError
from xnorpipe.utils import atomic_path, os_error_reason, progress_interval, sha256_file

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
IMAGE_SIZE = 32
PADDING = 4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_FORMATS = ("PNG", "JPEG", "MPO")  # MPO: the JPEG variant some cameras write
# 2: content-addressed keys, 16-bit and alpha decoding policy.
CACHE_VERSION = 2


@dataclass
class Cifar10:
    """uint8 images (N, 32, 32, 3) and int64 labels (N,) for train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    source: str = ""

    def subset(self, train: int | None = None, test: int | None = None) -> Cifar10:
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
            return _load_image_tree(path, progress, use_cache)
        raise XnorpipeError(f"{path}: not a CIFAR-10 folder (expected cifar-10-batches-py/ "
                            "or train/<class>/ and test/<class>/)")
    if path.is_file() and _is_tar_name(path.name):
        return _load_tar(path, progress, use_cache)
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
PIXELS_PER_IMAGE = 3 * IMAGE_SIZE * IMAGE_SIZE


def _find_pickle_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / PICKLE_TEST).is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    return None


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle referenced a global outside the CIFAR-10 allow-list."""


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as Python 3 writes bytes in protocol-2 pickles; latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ForbiddenGlobal(f"_codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin-1")


def _reconstruct_ndarray(subtype, shape, typecode):
    """numpy's `_reconstruct`, limited to what ndarray.__reduce__ emits: (ndarray, (0,), b'b')."""
    if subtype is not np.ndarray or tuple(shape) != (0,):
        raise ForbiddenGlobal("numpy _reconstruct of anything but an empty ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2 (also the name 2.x pickles use)
    except ImportError:
        from numpy.core.multiarray import scalar  # numpy 1.x
    return scalar


# Everything the real cifar-10-batches-py files reference (Python 2 pickles of dicts whose
# b'data' is a uint8 ndarray: numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype),
# numpy 2's spelling of the same, numpy scalars, and Python 3's protocol-2 spelling of bytes.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _reconstruct_ndarray,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _reconstruct_ndarray,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class CifarUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, str/bytes, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        make = _ALLOWED_GLOBALS.get((module, name))
        if make is None:
            raise ForbiddenGlobal(f"{module}.{name}")
        return make()

    def persistent_load(self, pid):
        raise ForbiddenGlobal("a persistent id")


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise XnorpipeError(f"{path.parent}: incomplete CIFAR-10 pickle folder, missing {path.name}")
    try:
        with open(path, "rb") as f:
            obj = CifarUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobal as e:
        raise XnorpipeError(f"{path}: refused: the pickle references {e}, which no CIFAR-10 "
                            "file holds (only dicts, lists, strings, numbers, numpy arrays)") from None
    except OSError as e:
        raise XnorpipeError(f"{path}: cannot read: {os_error_reason(e)}") from None
    except Exception as e:  # any malformed pickle (truncated, wrong opcodes, bad numpy state)
        raise XnorpipeError(f"{path}: unreadable CIFAR-10 pickle ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise XnorpipeError(f"{path}: not a CIFAR-10 batch (a {type(obj).__name__})")
    # Python-2-era pickles have bytes keys; normalise to str.
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _pickle_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) int64 labels of one batch file, checked exactly."""
    d = _read_pickle(path)
    missing = [k for k in ("data", "labels") if k not in d]
    if missing:
        raise XnorpipeError(f"{path}: not a CIFAR-10 batch (no {' or '.join(missing)})")
    data, labels = d["data"], d["labels"]
    if not isinstance(data, np.ndarray):
        raise XnorpipeError(f"{path}: 'data' is a {type(data).__name__}, expected a uint8 array")
    if data.ndim != 2 or data.shape[1] != PIXELS_PER_IMAGE:
        raise XnorpipeError(f"{path}: 'data' has shape {data.shape}, expected (N, {PIXELS_PER_IMAGE})")
    if data.dtype != np.uint8:
        # Integers within 0..255 convert losslessly; anything else would wrap or truncate.
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            what = (f"{data.dtype} values {data.min()}..{data.max()}" if data.dtype.kind in "iuf" and data.size
                    else str(data.dtype))
            raise XnorpipeError(f"{path}: 'data' is {what}, expected uint8 pixels 0..255")
        data = data.astype(np.uint8)
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError, OverflowError):
        raise XnorpipeError(f"{path}: 'labels' is not a list of integers") from None
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise XnorpipeError(f"{path}: 'labels' is not a list of integers "
                            f"({labels.dtype}, shape {labels.shape})")
    if len(labels) != len(data):
        raise XnorpipeError(f"{path}: {len(data)} images but {len(labels)} labels")
    images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _label_names(path: Path) -> tuple[str, ...] | None:
    names = _read_pickle(path).get("label_names")
    if names is None:
        return None
    if (not isinstance(names, (list, tuple)) or not names
            or not all(isinstance(n, (str, bytes)) for n in names)):
        raise XnorpipeError(f"{path}: 'label_names' is not a list of names")
    names = tuple(n.decode("latin-1") if isinstance(n, bytes) else n for n in names)
    if len(set(names)) != len(names):
        raise XnorpipeError(f"{path}: 'label_names' repeats a name")
    return names


def _load_pickle_dir(folder: Path) -> Cifar10:
    train = [_pickle_batch(folder / name) for name in PICKLE_TRAIN]
    test_images, test_labels = _pickle_batch(folder / PICKLE_TEST)
    classes = CLASSES
    if (folder / "batches.meta").is_file():
        classes = _label_names(folder / "batches.meta") or CLASSES
    data = Cifar10(np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
                   test_images, test_labels, classes, str(folder))
    _check_labels(data, folder)
    return data


def _check_labels(data: Cifar10, where: Path | str) -> None:
    for labels in (data.train_labels, data.test_labels):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(data.classes)):
            raise XnorpipeError(f"{where}: labels outside 0..{len(data.classes) - 1}")


# ------------------------------------------------------ image folders and archives


class ImageRefused(ValueError):
    """A readable image that the pixel policy refuses (transparency, float pixels, ...)."""


def _to_rgb8(im) -> np.ndarray:
    """A decoded PIL image -> (H, W, 3) uint8 by the module's pixel policy; ImageRefused if refused."""
    mode = im.mode
    transparent = f"{mode} image with transparent pixels: refusing to guess a background (flatten it to RGB)"
    if "transparency" in im.info and mode in ("L", "RGB", "P", "1", "I", "I;16", "I;16B", "I;16L"):
        if mode.startswith("I"):  # a transparent grey level (tRNS); Pillow has no 16-bit alpha mode
            if (np.asarray(im) == im.info["transparency"]).any():
                raise ImageRefused(transparent)
        else:
            im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"))
        if (rgba[..., 3] != 255).any():
            raise ImageRefused(transparent)
        return np.ascontiguousarray(rgba[..., :3])
    if mode in ("RGB", "L", "1", "P", "CMYK", "YCbCr"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        v = np.asarray(im)
        if v.size and (v.min() < 0 or v.max() > 65535):
            raise ImageRefused(f"{mode} pixels outside 0..65535: no defined 8-bit scaling")
        gray = (v.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    raise ImageRefused(f"unsupported pixel mode {mode} (expected RGB, grayscale, palette, 16-bit "
                       "or opaque RGBA)")


def _decode_one(item: tuple[str, bytes]) -> np.ndarray:
    from PIL import Image

    name, blob = item
    try:
        with Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS) as im:
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):  # checked before decoding: no pixel bombs
                raise ImageRefused(f"image is {im.size[0]}x{im.size[1]}, expected 32x32")
            im.load()
            arr = _to_rgb8(im)
    except ImageRefused as e:
        raise ValueError(f"{name}: {e}") from None
    except Exception as e:
        raise ValueError(f"{name}: unreadable image ({type(e).__name__})") from None
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


def _read_image_tree(root: Path) -> tuple[list[tuple[str, str, str]], dict[str, bytes]]:
    """Every image file of train/<class>/ and test/<class>/: (split, class, key) entries and bytes.

    os.scandir and raw reads: on a cache hit this walk is most of the load time (60k files).
    """
    entries, blobs = [], {}
    for split in ("train", "test"):
        where = root / split
        try:
            with os.scandir(where) as it:
                class_dirs = sorted((e.name, e.path) for e in it if e.is_dir())
            for cls, cls_path in class_dirs:
                where = Path(cls_path)
                with os.scandir(cls_path) as it:
                    names = sorted(e.name for e in it if e.is_file())
                for name in names:
                    if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                        continue
                    key = f"{split}/{cls}/{name}"
                    where = root / key
                    blobs[key] = _read_file(os.path.join(cls_path, name))
                    entries.append((split, cls, key))
        except OSError as e:
            raise XnorpipeError(f"{where}: cannot read: {os_error_reason(e)}") from None
    return entries, blobs


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _tree_key(blobs: dict[str, bytes]) -> str:
    """sha256 over every image file's relative path, size and bytes (mtimes are no evidence)."""
    h = hashlib.sha256()
    for key in sorted(blobs):
        blob = blobs[key]
        h.update(f"{key}\0{len(blob)}\0".encode())
        h.update(blob)
    return f"tree-{h.hexdigest()}"


def _load_image_tree(root: Path, progress: bool, use_cache: bool) -> Cifar10:
    # One read of every file serves both the key and (on a miss) the decode: what is decoded is
    # exactly what was hashed.
    entries, blobs = _read_image_tree(root)
    classes, ordered = _index_samples(entries, str(root))
    return _cached(root, _tree_key(blobs) if use_cache else None,
                   lambda: _finish(str(root), classes, ordered, blobs, progress))


def _tar_key(path: Path) -> str:
    try:
        return f"tar-{sha256_file(path)}"
    except OSError as e:
        raise XnorpipeError(f"{path}: cannot read: {os_error_reason(e)}") from None


def _load_tar(path: Path, progress: bool, use_cache: bool) -> Cifar10:
    key = _tar_key(path) if use_cache else None

    def decode() -> Cifar10:
        data = _decode_tar(path, progress)
        if key is not None and _tar_key(path) != key:
            raise XnorpipeError(f"{path}: the archive changed while it was read; run again")
        return data

    return _cached(path, key, decode)


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
    except PermissionError as e:
        raise XnorpipeError(f"{path}: cannot read: {os_error_reason(e)}") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise XnorpipeError(f"{path}: unreadable archive (truncated or not a tar?): "
                            f"{type(e).__name__}") from None
    if not entries:
        raise XnorpipeError(f"{path}: archive holds no train/<class>/ or test/<class>/ images")
    classes, ordered = _index_samples(entries, str(path))
    return _finish(str(path), classes, ordered, blobs, progress)


# --------------------------------------------------------------------- cache


def cache_file(path: str | os.PathLike) -> Path:
    """Where the decoded arrays of the image tree or archive at `path` are cached (reads it all)."""
    path = Path(path)
    if path.is_dir():
        key = _tree_key(_read_image_tree(path)[1])
    else:
        key = _tar_key(path)
    return _cache_path(key)


def _cache_path(key: str) -> Path:
    digest = hashlib.sha256(f"v{CACHE_VERSION}\n{key}".encode()).hexdigest()[:32]
    return cache_dir() / f"cifar10-v{CACHE_VERSION}-{digest}.npz"


def _read_cache(target: Path, source: Path) -> Cifar10 | None:
    try:
        with np.load(target, allow_pickle=False) as z:
            data = Cifar10(z["train_images"], z["train_labels"], z["test_images"],
                           z["test_labels"], tuple(str(c) for c in z["classes"]), str(source))
    except Exception:
        return None  # a damaged cache entry is just rebuilt
    for images, labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        if (images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3)
                or labels.dtype != np.int64 or labels.shape != images.shape[:1]):
            return None
    if not data.classes or any(len(labels) and (labels.min() < 0 or labels.max() >= len(data.classes))
                               for labels in (data.train_labels, data.test_labels)):
        return None
    return data


def _cached(path: Path, key: str | None, decode: Callable[[], Cifar10]) -> Cifar10:
    target = _cache_path(key) if key is not None else None
    if target is not None and target.is_file():
        data = _read_cache(target, path)
        if data is not None:
            return data
    data = decode()
    _check_labels(data, path)
    if target is not None:
        try:
            with atomic_path(target) as tmp, open(tmp, "wb") as f:
                # Uncompressed: loading 184 MB of raw uint8 beats inflating it every run.
                np.savez(f, train_images=data.train_images, train_labels=data.train_labels,
                         test_images=data.test_images, test_labels=data.test_labels,
                         classes=np.array(data.classes))
        except OSError as e:  # a full or read-only cache dir only costs speed
            print(f"xnorpipe: warning: dataset cache not written ({e}); continuing without it",
                  file=sys.stderr)
    return data


# ---------------------------------------------------------- tensors and batches


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 32, 32, 3) uint8 numpy -> (N, 3, 32, 32) contiguous uint8 tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


def resize_batch(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 NCHW -> uint8 NCHW of spatial `size` (bilinear, rounded to uint8), for a model whose
    input is larger than CIFAR's 32x32 (an ImageNet stem). Rounded to uint8 so that training, the
    PyTorch reference and every engine (the integer first layer included) see the same pixels."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    x = torch.nn.functional.interpolate(batch.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


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
    `image_size` (H, W): batches are resized to it after augmentation (resize_batch), for a model
    whose input is larger than the images; None or the images' own size: no resize.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 train: bool, generator: torch.Generator | None = None, rank: int = 0,
                 world: int = 1, memory_format=torch.contiguous_format,
                 image_size: tuple[int, int] | None = None):
        if train and generator is None:
            raise ValueError("a training iterator needs a generator")
        if batch_size % world:
            raise XnorpipeError(f"batch size {batch_size} is not divisible by the "
                                f"{world} processes")
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.generator = batch_size, train, generator
        self.rank, self.world, self.memory_format = rank, world, memory_format
        self.image_size = image_size

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
            if self.image_size is not None:
                batch = resize_batch(batch, self.image_size)
            yield normalize(batch, self.memory_format), self.labels.index_select(0, idx)
