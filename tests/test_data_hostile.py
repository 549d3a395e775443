"""Hostile and odd datasets: code-running pickles, wrong pixel types, in-place edits behind the
cache, 16-bit and transparent PNGs, debris of killed writers, full and read-only disks."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import CLASSES, ROOT, write_image_tree, write_pickle_folder

from xnorpipe import data
from xnorpipe.checkpoint import save_checkpoint
from xnorpipe.cli import cli
from xnorpipe.data import load_cifar10
from xnorpipe.errors import XnorpipeError
from xnorpipe.utils import STALE_TMP_SECONDS, WriteError, atomic_write_text

PICKLE_FILES = [*data.PICKLE_TRAIN, data.PICKLE_TEST, "batches.meta"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, match: str):
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], result.stderr


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------- Python 2 pickles


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for cifar-10-batches-py: every str/bytes as a py2
    `str` (BINSTRING), numpy's reconstructor under its numpy-1 name numpy.core.multiarray."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        n = len(raw)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + raw if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        names = {id(_reconstruct()): b"numpy.core.multiarray\n_reconstruct\n",
                 id(np.ndarray): b"numpy\nndarray\n", id(np.dtype): b"numpy\ndtype\n"}
        self.write(pickle.GLOBAL + names[id(obj)])
        self.memoize(obj)


def py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_py2_pickle_folder(root: Path, n: int = 12, seed: int = 3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [*data.PICKLE_TRAIN, data.PICKLE_TEST]:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        (folder / name).write_bytes(py2_dumps({
            "batch_label": f"batch {name}", "labels": labels,
            "data": images.transpose(0, 3, 1, 2).reshape(n, 3072),  # R, G, B planes per image
            "filenames": [f"img_{i}.png" for i in range(n)]}))
        batches[name] = (images, np.array(labels))
    (folder / "batches.meta").write_bytes(py2_dumps(
        {"num_cases_per_batch": n, "label_names": list(CLASSES), "num_vis": 3072}))
    return folder, batches


def test_python2_layout_pickles_load_exactly(tmp_path):
    folder, batches = write_py2_pickle_folder(tmp_path)
    raw = (folder / "data_batch_1").read_bytes()
    # The layout of the real files: py2 strings, and these three globals only.
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    assert {arg for name, arg in ops if name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert not any(name.endswith("UNICODE") for name, _ in ops)
    d = load_cifar10(folder)
    np.testing.assert_array_equal(d.train_images, np.concatenate([batches[n][0] for n in data.PICKLE_TRAIN]))
    np.testing.assert_array_equal(d.train_labels, np.concatenate([batches[n][1] for n in data.PICKLE_TRAIN]))
    np.testing.assert_array_equal(d.test_images, batches["test_batch"][0])
    assert d.classes == CLASSES and d.train_labels.dtype == np.int64


def test_numpy2_spelling_and_python3_protocol2_load(pickle_folder):
    # conftest writes with Python 3's pickle: numpy._core names and _codecs.encode for bytes.
    raw = (pickle_folder.path / "data_batch_1").read_bytes()
    globals_ = {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert "_codecs encode" in globals_
    d = load_cifar10(pickle_folder.path)
    np.testing.assert_array_equal(d.train_images, pickle_folder.train_images)


# ------------------------------------------------------- code-running pickles


class Payload:
    """Unpickling calls func(*args): what an attacker's batch file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, Payload]:
    import builtins

    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "subprocess.check_call": Payload(subprocess.check_call, ["touch", str(marker)]),
        "builtins.eval": Payload(builtins.eval, code),
        "builtins.exec": Payload(builtins.exec, code),
    }


@pytest.mark.parametrize("kind", ["os.system", "subprocess.check_call", "builtins.eval", "builtins.exec"])
@pytest.mark.parametrize("target", PICKLE_FILES)
def test_malicious_pickle_never_runs(tmp_path, target, kind):
    folder = write_pickle_folder(tmp_path / "pickles", n_per_batch=4, n_test=4).path
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    if target == "batches.meta":
        # The attack that used to work silently: run code, still return a valid dict.
        obj = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072, b"x": payload}
    else:
        good = pickle.loads((folder / target).read_bytes(), encoding="bytes")
        obj = {**good, b"data": payload}
    (folder / target).write_bytes(pickle.dumps(obj, protocol=2, fix_imports=False))
    with pytest.raises(XnorpipeError) as info:
        load_cifar10(folder)
    assert not marker.exists(), "the pickle ran code"
    msg = one_line(info)
    forbidden = {"os.system": os.system.__module__ + ".system"}.get(kind, kind)  # posix.system on Linux
    assert msg.startswith(f"{folder / target}: refused: the pickle references {forbidden},"), msg


def test_malicious_pickle_through_the_cli_is_one_line(tmp_path):
    folder = write_pickle_folder(tmp_path / "pickles", n_per_batch=4, n_test=4).path
    marker = tmp_path / "pwned"
    (folder / "batches.meta").write_bytes(pickle.dumps(_payloads(marker)["os.system"], protocol=2))
    r = invoke("train", "--arch", "nin", "--data", folder, "--out", tmp_path / "o", "--epochs", 1, "-q")
    assert_one_line_error(r, "refused")
    assert not marker.exists() and not (tmp_path / "o" / "cifar10_nin_checkpoint.pth.tar").exists()


@pytest.mark.parametrize("module, name", [("_codecs", "decode"), ("numpy", "load"), ("numpy", "frombuffer"),
                                          ("torch", "load"), ("copyreg", "_reconstructor")])
def test_any_other_global_is_refused(pickle_folder, module, name):
    # GLOBAL 'module name', then an empty tuple and REDUCE: the smallest call of a global.
    raw = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    (pickle_folder.path / "test_batch").write_bytes(raw)
    with pytest.raises(XnorpipeError, match=f"references {module}.{name},"):
        load_cifar10(pickle_folder.path)


def test_codecs_encode_only_as_latin1(pickle_folder):
    raw = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    (pickle_folder.path / "test_batch").write_bytes(raw)
    with pytest.raises(XnorpipeError, match="_codecs.encode with str, 'rot13'"):
        load_cifar10(pickle_folder.path)


# ------------------------------------------------------- pixel and label types


def _rewrite(folder: Path, name: str, **changes):
    d = pickle.loads((folder / name).read_bytes(), encoding="bytes")
    d.update({k.encode(): v for k, v in changes.items()})
    (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    return d


def test_float_pixels_are_refused_not_wrapped(pickle_folder):
    d = pickle.loads((pickle_folder.path / "data_batch_2").read_bytes(), encoding="bytes")
    _rewrite(pickle_folder.path, "data_batch_2", data=d[b"data"].astype(np.float64) * 1.5)
    with pytest.raises(XnorpipeError) as info:
        load_cifar10(pickle_folder.path)
    assert "data_batch_2: 'data' is float64" in one_line(info) and "expected uint8" in str(info.value)


def test_integer_pixels_in_range_convert_exactly(pickle_folder):
    d = pickle.loads((pickle_folder.path / "test_batch").read_bytes(), encoding="bytes")
    _rewrite(pickle_folder.path, "test_batch", data=d[b"data"].astype(np.int64))
    np.testing.assert_array_equal(load_cifar10(pickle_folder.path).test_images, pickle_folder.test_images)
    _rewrite(pickle_folder.path, "test_batch", data=d[b"data"].astype(np.int64) + 200)  # up to 455
    with pytest.raises(XnorpipeError, match="'data' is int64 values .*expected uint8 pixels 0..255"):
        load_cifar10(pickle_folder.path)


@pytest.mark.parametrize("changes, match", [
    ({"data": np.zeros((20, 3000), np.uint8)}, r"'data' has shape \(20, 3000\), expected \(N, 3072\)"),
    ({"data": np.zeros((20, 32, 32, 3), np.uint8)}, r"'data' has shape \(20, 32, 32, 3\)"),
    ({"data": [[0] * 3072] * 20}, "'data' is a list, expected a uint8 array"),
    ({"labels": [0] * 19}, "20 images but 19 labels"),
    ({"labels": [0.5] * 20}, "'labels' is not a list of integers"),
    ({"labels": ["cat"] * 20}, "'labels' is not a list of integers"),
    ({"labels": [12] * 20}, "labels outside 0..9"),
])
def test_wrong_shapes_and_labels(pickle_folder, changes, match):
    _rewrite(pickle_folder.path, "data_batch_4", **changes)
    with pytest.raises(XnorpipeError, match=match) as info:
        load_cifar10(pickle_folder.path)
    one_line(info)


def test_bad_label_names(pickle_folder):
    (pickle_folder.path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [1, 2]}, protocol=2))
    with pytest.raises(XnorpipeError, match="'label_names' is not a list of names"):
        load_cifar10(pickle_folder.path)


# ----------------------------------------------------------- the cache key


def _save_png(path: Path, pixels: np.ndarray):
    from PIL import Image

    # Uncompressed: the file size depends on the dimensions only, so an edit keeps the size.
    Image.fromarray(pixels).save(path, compress_level=0)


def test_tree_edited_in_place_with_mtime_restored_is_decoded_again(tmp_path):
    tree = write_image_tree(tmp_path / "tree", n_train=2, n_test=1)
    victim = tree.path / "train" / "cat" / "0001.png"
    _save_png(victim, np.zeros((32, 32, 3), np.uint8))
    before = load_cifar10(tree.path, progress=False)
    index = [i for i, lab in enumerate(before.train_labels) if before.classes[lab] == "cat"][1]
    assert (before.train_images[index] == 0).all()

    st, size = victim.stat(), victim.stat().st_size
    parent = victim.parent.stat()
    _save_png(victim, np.full((32, 32, 3), 200, np.uint8))
    assert victim.stat().st_size == size
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(victim.parent, ns=(parent.st_atime_ns, parent.st_mtime_ns))
    after = load_cifar10(tree.path, progress=False)
    assert (after.train_images[index] == 200).all(), "served the old pixels from the cache"


def test_tree_cache_hit_does_not_decode(tmp_path, monkeypatch):
    tree = write_image_tree(tmp_path / "tree", n_train=2, n_test=1)
    first = load_cifar10(tree.path, progress=False)
    assert data.cache_file(tree.path).is_file()

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_decode_all", no_decode)
    again = load_cifar10(tree.path, progress=False)
    np.testing.assert_array_equal(again.train_images, first.train_images)
    # Same content elsewhere is the same entry: the key is the content, not the path.
    os.rename(tree.path, tmp_path / "moved")
    load_cifar10(tmp_path / "moved", progress=False)


def test_uncompressed_tar_edited_in_place_is_decoded_again(tmp_path):
    import tarfile

    tree = write_image_tree(tmp_path / "tree", n_train=2, n_test=1)
    victim = tree.path / "test" / "dog" / "0000.png"
    tar_path = tmp_path / "cifar.tar"

    def pack():
        with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for split in ("train", "test"):
                for f in sorted((tree.path / split).rglob("*.png")):
                    info = tar.gettarinfo(f, arcname=str(f.relative_to(tree.path)))
                    info.mtime = 0
                    with open(f, "rb") as fh:
                        tar.addfile(info, fh)
        os.utime(tar_path, ns=(1, 1))

    _save_png(victim, np.zeros((32, 32, 3), np.uint8))
    pack()
    size = tar_path.stat().st_size
    before = load_cifar10(tar_path, progress=False)
    _save_png(victim, np.full((32, 32, 3), 99, np.uint8))
    pack()
    assert tar_path.stat().st_size == size and tar_path.stat().st_mtime_ns == 1
    after = load_cifar10(tar_path, progress=False)
    changed = ~(before.test_images == after.test_images).all(axis=(1, 2, 3))
    assert changed.sum() == 1 and (after.test_images[changed] == 99).all()


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    tree = write_image_tree(tmp_path / "tree", n_train=2, n_test=1)
    good = load_cifar10(tree.path, progress=False)
    entry = data.cache_file(tree.path)
    with open(entry, "wb") as f:  # a valid npz with the wrong dtype
        np.savez(f, train_images=good.train_images.astype(np.float32), train_labels=good.train_labels,
                 test_images=good.test_images, test_labels=good.test_labels, classes=np.array(good.classes))
    again = load_cifar10(tree.path, progress=False)
    assert again.train_images.dtype == np.uint8
    np.testing.assert_array_equal(again.train_images, good.train_images)


# ------------------------------------------------------------ pixel policy


def _one_image_tree(root: Path, write) -> Path:
    """A 1-class tree whose train/c/0.png is written by `write(path)`; test/c/0.png is plain RGB."""
    from PIL import Image

    for split in ("train", "test"):
        (root / split / "c").mkdir(parents=True)
    write(root / "train" / "c" / "0.png")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "test" / "c" / "0.png")
    return root


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA by the channel count), written by hand:
    Pillow reads them but only writes 16-bit grayscale."""
    h, w, c = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _decoded(root: Path) -> np.ndarray:
    return load_cifar10(root, progress=False, use_cache=False).train_images[0]


def test_16bit_grayscale_png_is_scaled_not_saturated(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (32, 32), dtype=np.uint16)
    sixteen = eight * 256 + rng.integers(0, 256, (32, 32), dtype=np.uint16)  # any low byte
    sixteen[0, :4] = [0, 257 * 17, 257 * 200, 65535]  # 8-bit values stored as 16 bits: exact
    eight[0, :4] = [0, 17, 200, 255]

    def write(path):
        im = Image.fromarray(sixteen)
        assert im.mode == "I;16"
        im.save(path)
        assert Image.open(path).mode == "I;16"

    got = _decoded(_one_image_tree(tmp_path / "t", write))
    assert (got == 255).mean() < 0.01  # convert("RGB") used to clip 99.6 % of them to 255
    for ch in range(3):
        np.testing.assert_array_equal(got[..., ch], (sixteen >> 8).astype(np.uint8))
    np.testing.assert_array_equal(got[..., 0], eight)


@pytest.mark.parametrize("channels", [3, 4, 2], ids=["RGB16", "RGBA16-opaque", "LA16-opaque"])
def test_16bit_colour_pngs_keep_the_high_byte(tmp_path, channels):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 65536, (32, 32, channels), dtype=np.uint32)
    if channels in (2, 4):
        pixels[..., -1] = 65535  # opaque
    got = _decoded(_one_image_tree(tmp_path / "t", lambda p: p.write_bytes(_png16(pixels))))
    colour = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    np.testing.assert_array_equal(got, (colour >> 8).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "P", "1", "RGBA", "LA"])
def test_8bit_modes(tmp_path, mode):
    from PIL import Image

    rgb = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert(mode)
    expected = np.asarray(im.convert("RGB"))
    got = _decoded(_one_image_tree(tmp_path / "t", im.save))
    np.testing.assert_array_equal(got, expected)
    if mode in ("L", "1", "LA"):  # grey repeated over R, G, B
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


@pytest.mark.parametrize("kind", ["RGBA", "LA", "P-tRNS", "RGBA16", "I;16-tRNS"])
def test_transparent_pixels_are_refused(tmp_path, kind):
    from PIL import Image

    def write(path):
        if kind == "RGBA16":
            pixels = np.full((32, 32, 4), 40000, np.uint32)
            pixels[5, 5, 3] = 0
            path.write_bytes(_png16(pixels))
            return
        if kind == "I;16-tRNS":  # a 16-bit grey level marked transparent
            grey = np.full((32, 32), 30000, np.uint16)
            grey[7, 7] = 1234
            Image.fromarray(grey).save(path, transparency=1234)
            assert Image.open(path).info.get("transparency") == 1234
            return
        if kind == "P-tRNS":  # a palette entry marked transparent
            im = Image.new("P", (32, 32), 0)
            im.putpalette([10, 20, 30, 40, 50, 60])
            im.putpixel((3, 4), 1)
            im.save(path, transparency=1)
            assert Image.open(path).info.get("transparency") is not None
            return
        im = Image.new(kind, (32, 32), (10, 20, 30, 255) if kind == "RGBA" else (10, 255))
        im.putpixel((3, 4), (10, 20, 30, 128) if kind == "RGBA" else (10, 0))
        im.save(path)

    with pytest.raises(XnorpipeError) as info:
        _decoded(_one_image_tree(tmp_path / "t", write))
    assert "0.png: " in one_line(info) and "transparent pixels" in str(info.value)


def test_content_other_than_png_or_jpeg_is_refused(tmp_path):
    from PIL import Image

    def write(path):  # a TIFF named .png
        Image.new("F", (32, 32), 0.5).save(path, format="TIFF")

    with pytest.raises(XnorpipeError, match=r"0\.png: unreadable image"):
        _decoded(_one_image_tree(tmp_path / "t", write))


def test_oversized_image_is_refused_before_decoding(tmp_path):
    from PIL import Image

    with pytest.raises(XnorpipeError, match="image is 4000x3000, expected 32x32"):
        _decoded(_one_image_tree(tmp_path / "t", lambda p: Image.new("L", (4000, 3000)).save(p)))


# ------------------------------------------- temp files of killed writers

WRITER = """
import sys, time
from xnorpipe.utils import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 100000)
    print("writing", flush=True)
    time.sleep(120)
"""


def _start_writer(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "writing", proc.communicate()[1]
    return proc


def _temps(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def test_sigkilled_writer_debris_is_removed_but_a_live_writers_temp_is_not(tmp_path):
    target = tmp_path / "cifar10-cache.npz"
    killed = _start_writer(target)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    debris = _temps(target)
    assert len(debris) == 1 and f"-{killed.pid}." in debris[0].name and debris[0].stat().st_size == 100000

    live = _start_writer(target)
    try:
        live_temp = [p for p in _temps(target) if f"-{live.pid}." in p.name]
        assert len(live_temp) == 1
        atomic_write_text(target, "new")
        assert target.read_text() == "new"
        assert not debris[0].exists(), "a SIGKILLed writer's temp file survived the next write"
        assert live_temp[0].exists(), "removed the temp file of a writer that is still running"
    finally:
        live.kill()
        live.wait(timeout=30)
    atomic_write_text(target, "newer")
    assert _temps(target) == [] and target.read_text() == "newer"


def test_old_pidless_temps_are_removed_only_when_stale(tmp_path):
    target = tmp_path / "model.onnx"
    stale = tmp_path / ".model.onnx.k2j4h_9a.tmp"  # the pre-PID naming (mkstemp's 8 characters)
    fresh = tmp_path / ".model.onnx.abcdefgh.tmp"
    unrelated = tmp_path / ".model.onnx.notours.tmp"
    for p in (stale, fresh, unrelated):
        p.write_bytes(b"x")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(unrelated, (old, old))
    atomic_write_text(target, "x")
    assert not stale.exists() and fresh.exists() and unrelated.exists()


# ----------------------------------------------------- disk full, read-only


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs mount rights: root in a container that allows it)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_checkpoint_on_a_full_disk_says_so(tiny_tmpfs):
    target = tiny_tmpfs / "ckpt.pth.tar"
    atomic_write_text(target, "previous")
    with pytest.raises(WriteError) as info:
        save_checkpoint(target, {"arch": "nin", "model": {"w": torch.zeros(200_000)}})
    assert one_line(info) == f"no space left on device writing {target}"
    assert target.read_text() == "previous"  # the old file, not half of the new one
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["ckpt.pth.tar"]


def test_training_on_a_full_disk_is_one_line(tiny_tmpfs, train_tree):
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", tiny_tmpfs / "run",
               "--cfg", "16,16,16,32,32,32,32,32", "--epochs", 1, "--batch-size", 50, "--subset", 50,
               "--test-subset", 10, "-q", "--no-plot")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), repr(r.exception)
    last = r.stderr.strip().splitlines()[-1]  # after the run's header line
    assert last == f"Error: no space left on device writing {tiny_tmpfs / 'run' / 'cifar10_nin_checkpoint.pth.tar'}"
    assert "Traceback" not in r.output and "inline_container" not in r.output
    assert not list((tiny_tmpfs / "run").glob(".*.tmp"))
    assert not (tiny_tmpfs / "run" / "cifar10_nin_checkpoint.pth.tar").exists()


def test_dataset_cache_on_a_full_disk_only_warns(tiny_tmpfs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XNORPIPE_CACHE", str(tiny_tmpfs / "cache"))
    tree = write_image_tree(tmp_path / "tree", n_train=10, n_test=2)  # 120 images: ~370 KB decoded
    d = load_cifar10(tree.path, progress=False)
    np.testing.assert_array_equal(d.train_images, tree.train_images)
    assert "no space left on device writing" in capsys.readouterr().err
    assert not list((tiny_tmpfs / "cache").iterdir())


def test_read_only_and_missing_folders_are_named(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
    try:
        if r.returncode == 0:
            with pytest.raises(WriteError, match=f"^read-only file system writing {ro / 'f'}$"):
                atomic_write_text(ro / "f", "x")
        blocker = tmp_path / "file"
        blocker.write_text("")
        with pytest.raises(WriteError, match="a parent is not a directory writing "):
            atomic_write_text(blocker / "sub" / "f", "x")
        if os.geteuid() != 0:
            locked = tmp_path / "locked"
            locked.mkdir(mode=0o555)
            with pytest.raises(WriteError, match="permission denied writing "):
                atomic_write_text(locked / "f", "x")
    finally:
        if r.returncode == 0:
            subprocess.run(["umount", "-l", str(ro)], check=False)


def test_cli_out_under_a_file_is_one_line(train_tree, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", blocker / "run",
               "--cfg", "16,16,16,32,32,32,32,32", "--epochs", 1, "-q", "--no-plot")
    assert_one_line_error(r, "a parent is not a directory writing ")


def test_unreadable_dataset_names_the_cause(pickle_folder, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    (pickle_folder.path / "data_batch_1").chmod(0)
    with pytest.raises(XnorpipeError, match="data_batch_1: cannot read: permission denied"):
        load_cifar10(pickle_folder.path)
