"""Hostile and broken input through the real CLI, each case in its own process.

Every case asserts what a user (or an attacker) would check: a non-zero exit that is not a
signal, exactly one line on stderr and no traceback, no code run from the input (a marker file
a payload would create stays absent), and nothing left in the output folder. The kernels' own
extreme-attribute cases are in test_native_hostile.py; this file drives whole commands.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_tree, write_pickle_folder

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs `touch marker`: what a hostile dataset or checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class MetaPayload:
    """Runs code and still returns a valid batches.meta dict, so nothing would look wrong."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        code = (f"__import__('pathlib').Path({str(self.marker)!r}).touch() or "
                "{b'label_names': [b'airplane', b'automobile', b'bird', b'cat', b'deer', b'dog', "
                "b'frog', b'horse', b'ship', b'truck']}")
        return (eval, (code,))


def run_cli(*args: str, cwd: Path, threads: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(ROOT))
    env.pop("XNORPIPE_DEBUG", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run([sys.executable, "-m", "xnorpipe.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def tree_listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def assert_refused(r: subprocess.CompletedProcess, *, says: str | None = None) -> None:
    """Non-zero exit (not a signal), one stderr line, no traceback."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    detail = f"exit {r.returncode}, stderr:\n{r.stderr[-2000:]}"
    assert r.returncode > 0, detail  # negative: killed by a signal
    assert "Traceback" not in r.stderr, detail
    assert len(lines) == 1, detail
    assert lines[0].startswith("Error:"), detail
    if says is not None:
        assert says.lower() in lines[0].lower(), detail


# ------------------------------------------------------------------------------- data


def _pickle_folder_with(root: Path, name: str, obj) -> Path:
    write_pickle_folder(root)
    folder = root / "cifar-10-batches-py"
    (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return folder


def _hostile_batch(tmp: Path, marker: Path) -> Path:
    return _pickle_folder_with(tmp / "d", "data_batch_1", Payload(marker))


def _hostile_meta(tmp: Path, marker: Path) -> Path:
    return _pickle_folder_with(tmp / "d", "batches.meta", MetaPayload(marker))


def _hostile_nested(tmp: Path, marker: Path) -> Path:
    # The payload hides inside an otherwise valid batch dict.
    n = 4
    batch = {b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n, b"filenames": [Payload(marker)] * n}
    return _pickle_folder_with(tmp / "d", "test_batch", batch)


def _float_pickle(tmp: Path, marker: Path) -> Path:
    n = 4
    data = np.random.default_rng(0).random((n, 3072)) * 300.0  # float pixels would wrap in uint8
    return _pickle_folder_with(tmp / "d", "data_batch_2", {b"data": data, b"labels": [1] * n})


def _corrupt_jpeg(tmp: Path, marker: Path) -> Path:
    tree = write_image_tree(tmp / "tree", n_train=2, n_test=1, fmt="jpg")
    victim = next((tree.path / "train" / "cat").iterdir())
    victim.write_bytes(victim.read_bytes()[:40])
    return tree.path


def _truncated_tarball(tmp: Path, marker: Path) -> Path:
    from conftest import write_tarball

    tree = write_image_tree(tmp / "tree", n_train=2, n_test=1)
    tar = write_tarball(tree.path, tmp / "c.tar.gz")
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    return tar


def _png16(tmp: Path, marker: Path) -> Path:
    from PIL import Image

    tree = write_image_tree(tmp / "tree", n_train=2, n_test=1)
    victim = next((tree.path / "test" / "dog").iterdir())
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(victim)  # mode I;16
    return tree.path


DATA_CASES = {
    "pickle_payload_in_batch": _hostile_batch,
    "pickle_payload_in_meta": _hostile_meta,
    "pickle_payload_nested": _hostile_nested,
    "float_pickle_data": _float_pickle,
    "corrupt_jpeg": _corrupt_jpeg,
    "truncated_tarball": _truncated_tarball,
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_train_refuses_hostile_data(tmp_path, case):
    marker = tmp_path / "pwned"
    data = DATA_CASES[case](tmp_path, marker)
    out = tmp_path / "out"
    r = run_cli("train", "--arch", "nin", "--data", str(data), "--epochs", "1", "--out", str(out),
                "-q", "--no-plot", cwd=tmp_path)
    assert not marker.exists(), "the dataset ran code"
    assert_refused(r)
    assert tree_listing(out) == []


def test_sixteen_bit_png_is_not_saturated(tmp_path):
    """A 16-bit PNG either decodes to its real 8-bit value or is refused in one line."""
    data = _png16(tmp_path, tmp_path / "m")
    r = subprocess.run([sys.executable, "-c",
                        "import sys, xnorpipe.data as d\n"
                        "c = d.load_cifar10(sys.argv[1], progress=False, use_cache=False)\n"
                        "i = list(c.test_labels).index(c.classes.index('dog'))\n"
                        "print(int(c.test_images[i].max()))", str(data)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    if r.returncode == 0:
        assert int(r.stdout.strip()) == round(40000 / 257), r.stdout  # not 255
    else:
        assert "Traceback" not in r.stderr and "16" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real one-epoch nin checkpoint (10 classes) on a tiny synthetic tree."""
    tmp = tmp_path_factory.mktemp("ckpt")
    tree = write_image_tree(tmp / "tree", n_train=2, n_test=1)
    r = run_cli("train", "--arch", "nin", "--data", str(tree.path), "--epochs", "1", "--out",
                str(tmp / "ck"), "-q", "--no-plot", "--deterministic", cwd=tmp)
    assert r.returncode == 0, r.stderr
    return tmp / "ck" / "cifar10_nin_best.pth.tar"


@pytest.mark.parametrize("n_classes", [3, 12])
def test_eval_refuses_a_dataset_with_other_classes(tmp_path, checkpoint, n_classes):
    classes = tuple(f"class{i:02d}" for i in range(n_classes))
    tree = write_image_tree(tmp_path / "tree", n_train=1, n_test=1, classes=classes)
    r = run_cli("eval", "--checkpoint", str(checkpoint), "--data", str(tree.path), "-q", cwd=tmp_path)
    assert_refused(r, says="class")


# ------------------------------------------------------------------------- checkpoints


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    import torch

    torch.save({"format": "xnorpipe-checkpoint/1", "arch": "nin", "model": Payload(marker)}, path)


def _truncated_checkpoint(path: Path, marker: Path, good: Path) -> None:
    path.write_bytes(good.read_bytes()[:1000])


def _nonfinite_checkpoint(path: Path, marker: Path, good: Path) -> None:
    import torch

    state = torch.load(good, weights_only=True)
    key = next(k for k in state["model"] if k.endswith("weight") and state["model"][k].dim() == 4)
    state["model"][key].view(-1)[0] = float("nan")
    torch.save(state, path)


@pytest.mark.parametrize("case", ["malicious", "truncated", "random_bytes", "nonfinite"])
@pytest.mark.parametrize("command", ["export", "eval"])
def test_hostile_checkpoints(tmp_path, checkpoint, case, command):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pth.tar"
    if case == "malicious":
        _malicious_checkpoint(bad, marker)
    elif case == "truncated":
        _truncated_checkpoint(bad, marker, checkpoint)
    elif case == "random_bytes":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
    else:
        if command == "eval":
            pytest.skip("NaN weights are legal to score; export is what must refuse them")
        _nonfinite_checkpoint(bad, marker, checkpoint)
    out = tmp_path / "exports"
    if command == "export":
        r = run_cli("export", "--arch", "nin", "--checkpoint", str(bad), "-o", str(out), cwd=tmp_path)
    else:
        tree = write_image_tree(tmp_path / "tree", n_train=1, n_test=1)
        r = run_cli("eval", "--checkpoint", str(bad), "--data", str(tree.path), "-q", cwd=tmp_path)
    assert not marker.exists(), "the checkpoint ran code"
    assert_refused(r, says="non-finite" if case == "nonfinite" else None)
    assert tree_listing(out) == []


# ------------------------------------------------------------------------------- ONNX


def _hostile_node_model(path: Path, op: str) -> None:
    """A model whose one xnorpipe node has attributes that overflow 32-bit sizes."""
    import onnx
    from onnx import TensorProto, helper

    big = 2 ** 30
    if op == "ConvBinarize":
        attrs = dict(kernel_shape=[3, 3], pads=[0, big, 0, big], strides=[1, big])
        inits = [helper.make_tensor("W", TensorProto.FLOAT, [32, 3, 3, 3], [0.1] * (32 * 27)),
                 helper.make_tensor("B", TensorProto.FLOAT, [32], [0.0] * 32),
                 helper.make_tensor("T", TensorProto.FLOAT, [32], [0.0] * 32)]
        inputs = ["X", "W", "B", "T"]
    else:
        attrs = dict(kernel_shape=[1, big], pads=[0, big - 1, 0, big - 1], strides=[1, big])
        inits = [helper.make_tensor("T", TensorProto.FLOAT, [3], [0.0] * 3)]
        inputs = ["X", "T"]
    channels = 32 if op == "ConvBinarize" else 3
    inits += [helper.make_tensor("Wb", TensorProto.INT32, [10, 1, 1, 1], list(range(10))),
              helper.make_tensor("S", TensorProto.FLOAT, [10], [1.0] * 10),
              helper.make_tensor("Bb", TensorProto.FLOAT, [10], [0.0] * 10)]
    # A well-formed binary layer after the hostile node, so the model is what ort-xnor runs.
    nodes = [helper.make_node(op, inputs, ["bits"], domain="xnorpipe", **attrs),
             helper.make_node("XnorConv2dBits", ["bits", "Wb", "S", "Bb"], ["y"], domain="xnorpipe",
                              kernel_shape=[1, 1], channels=channels),
             helper.make_node("GlobalAveragePool", ["y"], ["p"]),
             helper.make_node("Flatten", ["p"], ["Y"])]
    graph = helper.make_graph(nodes, "hostile",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("xnorpipe", 1)])
    onnx.save(m, path)


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("op", ["ConvBinarize", "AvgPoolBinarize"])
def test_hostile_custom_node_is_an_error_not_a_crash(tmp_path, op, threads):
    import xnorpipe

    try:
        xnorpipe.ort_library_path()
    except Exception as e:  # noqa: BLE001 - any reason the library is absent
        pytest.skip(f"xnorpipe ONNX Runtime library not built: {e}")
    model = tmp_path / "hostile.onnx"
    _hostile_node_model(model, op)
    r = run_cli("bench", "--onnx", str(model), "--engine", "ort-xnor", "--batch-size", "4",
                "--threads", str(threads), "--iters", "1", "--warmup", "0", cwd=tmp_path)
    assert_refused(r, says=op)


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory, checkpoint) -> Path:
    out = tmp_path_factory.mktemp("exp")
    r = run_cli("export", "--arch", "nin", "--checkpoint", str(checkpoint), "--form", "portable",
                "-o", str(out), cwd=out)
    assert r.returncode == 0, r.stderr
    return out / "nin.portable.onnx"


@pytest.mark.parametrize("case", ["random_bytes", "truncated", "empty", "not_a_model"])
def test_bench_refuses_broken_onnx(tmp_path, packed_file, case):
    bad = tmp_path / "bad.onnx"
    if case == "random_bytes":
        bad.write_bytes(np.random.default_rng(1).bytes(4096))
    elif case == "truncated":
        bad.write_bytes(packed_file.read_bytes()[: packed_file.stat().st_size // 3])
    elif case == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_text("hello")
    r = run_cli("bench", "--onnx", str(bad), "--engine", "ort", "--iters", "1", "--warmup", "0", cwd=tmp_path)
    assert_refused(r)


def test_export_refuses_an_opset_onnx_runtime_cannot_run(tmp_path):
    out = tmp_path / "exports"
    r = run_cli("export", "--arch", "nin_xnornet", "--random-init", "--opset", "99", "-o", str(out), cwd=tmp_path)
    assert_refused(r, says="opset")
    assert tree_listing(out) == []
