"""Shared fixtures: the real CIFAR-10 tarball (skips when absent) and tiny synthetic datasets."""

from __future__ import annotations

import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Decoded datasets go to a per-session cache, never the developer's ~/.cache."""
    old = os.environ.get("XNORPIPE_CACHE")
    os.environ["XNORPIPE_CACHE"] = str(tmp_path_factory.mktemp("xnorpipe-cache"))
    yield
    if old is None:
        os.environ.pop("XNORPIPE_CACHE", None)
    else:
        os.environ["XNORPIPE_CACHE"] = old


def require_ort_library() -> str:
    """Path of libxnorpipe_ort.so; skips the calling test, with the reason, when it is not built."""
    from xnorpipe.errors import XnorpipeError
    from xnorpipe.native import ort_library_path

    try:
        return ort_library_path()
    except XnorpipeError as e:
        pytest.skip(f"libxnorpipe_ort.so is not built ({e}); build it with `make native`")


@pytest.fixture(scope="session")
def cifar_tarball() -> Path:
    """The real CIFAR-10 JPEG tarball: $XNORPIPE_TEST_DATA or ../shared/data/cifar10-jpeg.tar.gz."""
    path = Path(os.environ.get("XNORPIPE_TEST_DATA")
                or ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
    if not path.is_file():
        pytest.skip(f"real CIFAR-10 tarball not found at {path} (set XNORPIPE_TEST_DATA)")
    return path


def assert_outputs_depend_on_input(outputs) -> None:
    """A parity check proves something only if the model's outputs vary with its input (a random
    init's BatchNorm statistics give a binary net the same logits for every image): the outputs
    of most inputs must differ from each other, by more than rounding."""
    y = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    assert len(y) >= 2, "needs the outputs of at least two inputs"
    spread = float(np.ptp(y, axis=0).max())
    assert spread > 1e-3 * max(1.0, float(np.abs(y).max())), f"outputs do not depend on the input (spread {spread:.3g})"
    assert len(np.unique(y, axis=0)) > len(y) // 2, "most inputs give the same outputs"


@dataclass
class SyntheticCifar:
    """A written dataset and the arrays it should load as (train/test in the loader's order)."""

    path: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


def synthetic_images(n_per_class: int, seed: int, classes=CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: a per-class colour plus noise; round-robin class order like the loader."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(1234).integers(0, 256, (len(classes), 3))
    labels = np.tile(np.arange(len(classes)), n_per_class)
    noise = rng.integers(-40, 41, (len(labels), 32, 32, 3))
    images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_image_tree(root: Path, n_train: int = 4, n_test: int = 2, fmt: str = "png",
                     classes=CLASSES) -> SyntheticCifar:
    """train/<class>/NNNN.<fmt>, test/<class>/NNNN.<fmt>; fmt "mixed" alternates png and jpg."""
    from PIL import Image

    arrays = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_images(n, seed, classes)
        for i, (img, label) in enumerate(zip(images, labels)):
            rank = i // len(classes)
            ext = fmt if fmt != "mixed" else ("png" if rank % 2 == 0 else "jpg")
            target = root / split / classes[label] / f"{rank:04d}.{ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(target, quality=95) if ext == "jpg" else Image.fromarray(img).save(target)
        arrays[split] = (images, labels)
    return SyntheticCifar(root, *arrays["train"], *arrays["test"], tuple(classes))


def write_tarball(tree: Path, target: Path, prefix: str = "cifar") -> Path:
    with tarfile.open(target, "w:gz") as tar:
        tar.add(tree / "train", arcname=f"{prefix}/train")
        tar.add(tree / "test", arcname=f"{prefix}/test")
    return target


def write_pickle_folder(root: Path, n_per_batch: int = 20, n_test: int = 20) -> SyntheticCifar:
    """The real `cifar-10-batches-py` layout: data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)

    def batch(n):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int64)
        # The pickles store each image as 3 planes of 1024 bytes (R, G, B), bytes keys.
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
        return images, labels, {b"batch_label": b"x", b"labels": labels.tolist(), b"data": data,
                                b"filenames": [b"f%d.png" % i for i in range(n)]}

    train = []
    for i in range(1, 6):
        images, labels, d = batch(n_per_batch)
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(d, protocol=2))
        train.append((images, labels))
    test_images, test_labels, d = batch(n_test)
    (folder / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return SyntheticCifar(folder, np.concatenate([t[0] for t in train]),
                          np.concatenate([t[1] for t in train]), test_images, test_labels, CLASSES)


@pytest.fixture
def image_tree(tmp_path) -> SyntheticCifar:
    """A 10-class PNG image-folder tree: 4 train and 2 test images per class."""
    return write_image_tree(tmp_path / "tree")


@pytest.fixture
def pickle_folder(tmp_path) -> SyntheticCifar:
    return write_pickle_folder(tmp_path / "pickles")


@pytest.fixture(scope="session")
def train_tree(tmp_path_factory) -> SyntheticCifar:
    """A learnable 10-class PNG tree for short training runs: 30 train / 10 test per class."""
    return write_image_tree(tmp_path_factory.mktemp("train-tree"), n_train=30, n_test=10)


def binary_conv_inputs(layer, reads_bits: bool = False) -> dict:
    """An IR BinaryConv's tensors as the inputs after X of a one-node model
    (`deploy_onnx.single_node_model`): `XnorConv2d`'s W, threshold, scale and bias, or with
    `reads_bits` `XnorConv2dBits`' W, scale and bias."""
    tensors = {"W": layer.weight_bits, "threshold": layer.threshold, "scale": layer.scale, "bias": layer.bias}
    if reads_bits:
        del tensors["threshold"]
    return tensors


def bit_links(model, kind=None) -> dict[int, int]:
    """A chain model's packed-bits links: node index of each producer (of `kind`, default
    BinaryConv) whose output is bits -> index of the binary layer reading them (through a MaxPool)."""
    from xnorpipe.deploy import ir
    from xnorpipe.deploy import onnx as deploy_onnx

    kind = kind or ir.BinaryConv
    bits, consumers, nodes = deploy_onnx.bit_tensors(model), model.consumers(), model.nodes
    links = {}
    for i, n in enumerate(nodes):
        if isinstance(n.op, kind) and n.output in bits:
            j = consumers[n.output][0]
            if isinstance(nodes[j].op, ir.MaxPool):
                j = consumers[nodes[j].output][0]
            links[i] = j
    return links
