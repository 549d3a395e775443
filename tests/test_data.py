"""CIFAR-10 loading (pickles, image trees, archives, cache) and the batch augmentation."""

from __future__ import annotations

import gzip
import os
import tarfile

import numpy as np
import pytest
import torch
from conftest import write_image_tree, write_tarball

from xnorpipe import data
from xnorpipe.data import CLASSES, MEAN, STD, BatchIterator, augment, load_cifar10, normalize, to_tensor
from xnorpipe.errors import XnorpipeError

# ---------------------------------------------------------------- formats


def test_pickle_folder_and_its_parent(pickle_folder):
    for path in (pickle_folder.path, pickle_folder.path.parent):
        d = load_cifar10(path)
        assert d.train_images.dtype == np.uint8 and d.train_labels.dtype == np.int64
        assert d.train_images.shape == (100, 32, 32, 3) and d.test_images.shape == (20, 32, 32, 3)
        np.testing.assert_array_equal(d.train_images, pickle_folder.train_images)
        np.testing.assert_array_equal(d.train_labels, pickle_folder.train_labels)
        np.testing.assert_array_equal(d.test_images, pickle_folder.test_images)
        np.testing.assert_array_equal(d.test_labels, pickle_folder.test_labels)
        assert d.classes == CLASSES


def test_png_tree_is_exact_and_round_robin(image_tree):
    d = load_cifar10(image_tree.path)
    np.testing.assert_array_equal(d.train_images, image_tree.train_images)
    np.testing.assert_array_equal(d.test_images, image_tree.test_images)
    # class index = sorted class names; order: image 0 of every class, then image 1, ...
    assert d.classes == tuple(sorted(CLASSES))
    assert d.train_labels[:10].tolist() == list(range(10))
    assert np.bincount(d.train_labels).tolist() == [4] * 10


def test_mixed_png_jpg_tree(tmp_path):
    tree = write_image_tree(tmp_path / "mixed", n_train=4, n_test=2, fmt="mixed")
    assert sorted({p.suffix for p in (tmp_path / "mixed").rglob("*.*")}) == [".jpg", ".png"]
    d = load_cifar10(tree.path)
    np.testing.assert_array_equal(d.train_labels, tree.train_labels)
    png = np.arange(len(d.train_labels)) // 10 % 2 == 0  # ranks 0, 2 are PNG: exact
    np.testing.assert_array_equal(d.train_images[png], tree.train_images[png])
    # JPEG is lossy on the noise but keeps each picture's colour
    got, want = d.train_images[~png].astype(float), tree.train_images[~png].astype(float)
    assert not np.array_equal(got, want)
    np.testing.assert_allclose(got.mean(axis=(1, 2)), want.mean(axis=(1, 2)), atol=3)


def test_tarball_matches_tree_and_caches(image_tree, tmp_path, monkeypatch):
    tgz = write_tarball(image_tree.path, tmp_path / "cifar.tar.gz")
    from_tree = load_cifar10(image_tree.path)
    d = load_cifar10(tgz)
    for a, b in [(d.train_images, from_tree.train_images), (d.train_labels, from_tree.train_labels),
                 (d.test_images, from_tree.test_images), (d.test_labels, from_tree.test_labels)]:
        np.testing.assert_array_equal(a, b)
    assert data.cache_file(tgz).is_file()

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_decode_tar", no_decode)
    again = load_cifar10(tgz)
    np.testing.assert_array_equal(again.train_images, d.train_images)
    assert again.classes == d.classes
    # The key is the content: a touched archive still hits, changed bytes miss.
    os.utime(tgz, ns=(1, 1))
    load_cifar10(tgz)
    with gzip.open(tgz, "ab") as f:  # a second gzip member: same tar, different bytes
        f.write(b"\0" * 1024)
    os.utime(tgz, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        load_cifar10(tgz)


def test_real_cifar_tarball(cifar_tarball):
    d = load_cifar10(cifar_tarball, progress=False)
    assert d.train_images.shape == (50000, 32, 32, 3) and d.test_images.shape == (10000, 32, 32, 3)
    assert d.classes == CLASSES
    assert np.bincount(d.train_labels).tolist() == [5000] * 10
    assert np.bincount(d.test_labels).tolist() == [1000] * 10
    # The published CIFAR-10 channel means, which MEAN hard-codes.
    np.testing.assert_allclose(d.train_images.mean(axis=(0, 1, 2)) / 255, MEAN, atol=2e-3)


# ----------------------------------------------------------------- errors


def test_missing_path():
    with pytest.raises(XnorpipeError, match="not found"):
        load_cifar10("/nonexistent/cifar")


def test_wrong_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(XnorpipeError, match="not a CIFAR-10 folder"):
        load_cifar10(tmp_path)


def test_empty_and_truncated_tar(image_tree, tmp_path):
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(XnorpipeError, match="no train/<class>/"):
        load_cifar10(empty)
    good = write_tarball(image_tree.path, tmp_path / "good.tar.gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(XnorpipeError, match="truncated"):
        load_cifar10(cut)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(XnorpipeError):
        load_cifar10(junk)


def test_unreadable_image(image_tree):
    (image_tree.path / "train" / "cat" / "0001.png").write_bytes(b"garbage")
    with pytest.raises(XnorpipeError, match="0001.png: unreadable image"):
        load_cifar10(image_tree.path)


def test_wrong_image_size(image_tree):
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image_tree.path / "test" / "dog" / "0000.png")
    with pytest.raises(XnorpipeError, match="expected 32x32"):
        load_cifar10(image_tree.path)


def test_incomplete_pickle_folder(pickle_folder):
    (pickle_folder.path / "data_batch_3").unlink()
    with pytest.raises(XnorpipeError, match="missing data_batch_3"):
        load_cifar10(pickle_folder.path)
    (pickle_folder.path / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(XnorpipeError, match="unreadable CIFAR-10 pickle"):
        load_cifar10(pickle_folder.path)


def test_download_without_torchvision_is_a_clean_error():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(XnorpipeError, match="needs torchvision"):
            load_cifar10("download:/tmp/nowhere")
    else:
        pytest.skip("torchvision is installed; download would hit the network")


# ----------------------------------------------------------- augmentation


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def test_crop_offsets_select_the_zero_padded_window():
    x = _batch()
    offsets = torch.tensor([[0, 0], [8, 8], [4, 4], [0, 8], [3, 5], [8, 1]])
    flips = torch.zeros(6, dtype=torch.bool)
    out = augment(x, offsets, flips)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i, (oy, ox) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, oy:oy + 32, ox:ox + 32])
    assert torch.equal(out[2], x[2])  # centre = no shift
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, :, :4] == 0).all()  # zero pad, not reflect
    assert (out[0, :, 4:, 4:] > 0).all()


def test_flip_really_flips():
    x = _batch()
    centre = torch.full((6, 2), 4)
    out = augment(x, centre, torch.tensor([True, False, True, False, True, True]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    # flip and crop compose as crop-then-flip of the padded image
    out = augment(x, torch.tensor([[2, 7]] * 6), torch.ones(6, dtype=torch.bool))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    assert torch.equal(out[3], padded[3, :, 2:34, 7:39].flip(-1))


def test_normalize_uses_mean_and_std():
    mean_image = torch.tensor([round(m * 255) for m in MEAN], dtype=torch.uint8).view(1, 3, 1, 1)
    z = normalize(mean_image.expand(2, 3, 32, 32).contiguous())
    assert z.dtype == torch.float32 and z.abs().max() < 0.01
    one = normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten()
    torch.testing.assert_close(one, torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)]))


def _epoch(images, labels, seed, batch=4, rank=0, world=1):
    it = BatchIterator(images, labels, batch, train=True, generator=torch.Generator().manual_seed(seed),
                       rank=rank, world=world)
    return list(it)


def test_batches_are_reproducible_and_seed_dependent(image_tree):
    d = load_cifar10(image_tree.path)
    images, labels = to_tensor(d.train_images), torch.from_numpy(d.train_labels)
    a, b, c = _epoch(images, labels, 0), _epoch(images, labels, 0), _epoch(images, labels, 1)
    assert len(a) == 10  # 40 images / 4
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    # every image once per epoch
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(labels.tolist())
    assert a[0][0].shape == (4, 3, 32, 32) and a[0][0].dtype == torch.float32


def test_ranks_split_the_same_global_shuffle(image_tree):
    d = load_cifar10(image_tree.path)
    images, labels = to_tensor(d.train_images), torch.from_numpy(d.train_labels)
    single = _epoch(images, labels, 3, batch=6)
    r0 = _epoch(images, labels, 3, batch=6, rank=0, world=2)
    r1 = _epoch(images, labels, 3, batch=6, rank=1, world=2)
    assert len(r0) == len(r1) == len(single) == 7  # 40 = 6*6 + 4, the 4 split 2/2
    for (x, _), (x0, _), (x1, _) in zip(single, r0, r1):
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
    with pytest.raises(XnorpipeError, match="not divisible"):
        BatchIterator(images, labels, 5, train=True, generator=torch.Generator(), world=2)
