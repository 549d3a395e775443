"""`xnorpipe export` and `xnorpipe bench`: outputs, JSON, parity columns, one-line error paths."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from xnorpipe.bench import format_table, measure_latency, parity, read_engine_list
from xnorpipe.checkpoint import save_checkpoint
from xnorpipe.errors import XnorpipeError
from xnorpipe.models import build_model
from xnorpipe.utils import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "XNORPIPE_DEBUG"}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def write_checkpoint(path, arch):
    torch.manual_seed(3)
    model = build_model(arch)
    save_checkpoint(path, {"arch": arch, "cfg": model.cfg, "groups": model.groups, "epoch": 1,
                           "best_acc1": 10.0, "model": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A checkpoint-based and a random-init export of nin_xnornet, through the CLI."""
    d = tmp_path_factory.mktemp("exp")
    ckpt = write_checkpoint(d / "ckpt.pth.tar", "nin_xnornet")
    r = cli("export", "--arch", "nin_xnornet", "--checkpoint", ckpt, "-o", d / "ckpt")
    assert r.returncode == 0, r.stderr
    r2 = cli("export", "--arch", "nin_xnornet", "--random-init", "-o", d / "rand", "--form", "packed")
    assert r2.returncode == 0, r2.stderr
    return d, ckpt, r.stdout


def test_export_writes_every_form_with_table_and_provenance(exported):
    d, ckpt, stdout = exported
    assert sorted(p.name for p in (d / "ckpt").iterdir()) == ["nin_xnornet.packed-bits-inline.onnx",
                                                              "nin_xnornet.packed-bits.onnx",
                                                              "nin_xnornet.packed-inline.onnx",
                                                              "nin_xnornet.packed.onnx",
                                                              "nin_xnornet.portable.onnx"]
    for word in ("portable", "packed", "packed-bits", "XnorConv2d nodes", "bit ops", "KiB"):
        assert word in stdout
    row = next(line.split() for line in stdout.splitlines() if line.startswith("packed-bits "))
    assert row[4:6] == ["7", "3"]  # 7 XnorConv2d-family nodes; ConvBinarize, BitMaxPool, Binarize
    bits = onnx.load(str(d / "ckpt" / "nin_xnornet.packed-bits.onnx"))
    assert {p.key: p.value for p in bits.metadata_props}["xnorpipe.form"] == "packed-bits"
    meta = {p.key: p.value for p in onnx.load(str(d / "ckpt" / "nin_xnornet.packed.onnx")).metadata_props}
    assert meta["xnorpipe.checkpoint_sha256"] == sha256_file(ckpt)
    assert meta["xnorpipe.random_init"] == "false"
    rand = {p.key: p.value for p in onnx.load(str(d / "rand" / "nin_xnornet.packed.onnx")).metadata_props}
    assert rand["xnorpipe.random_init"] == "true"
    assert sorted(p.name for p in (d / "rand").iterdir()) == ["nin_xnornet.packed.onnx"]


def test_export_all_on_float_arch_writes_portable_only(tmp_path):
    r = cli("export", "--arch", "nin", "--random-init", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "only the portable form" in r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["nin.portable.onnx"]


def test_export_form_both_is_portable_and_packed(tmp_path):
    r = cli("export", "--arch", "nin_gc_xnornet", "--random-init", "--form", "both", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nin_gc_xnornet.packed.onnx",
                                                          "nin_gc_xnornet.portable.onnx"]


@pytest.mark.parametrize("case", ["missing", "other_arch", "packed_float"])
def test_export_errors_are_one_line_and_leave_nothing(case, tmp_path):
    out = tmp_path / "out"
    if case == "missing":
        r = cli("export", "--arch", "nin_xnornet", "-o", out, cwd=tmp_path)  # no checkpoints/ here
        assert_one_line_error(r, "checkpoint not found", "xnorpipe train", "--random-init")
    elif case == "other_arch":
        ckpt = write_checkpoint(tmp_path / "nin.pth.tar", "nin")
        r = cli("export", "--arch", "nin_xnornet", "--checkpoint", ckpt, "-o", out)
        assert_one_line_error(r, "'nin'", "nin_xnornet")
    else:
        r = cli("export", "--arch", "nin", "--random-init", "--form", "packed", "-o", out)
        assert_one_line_error(r, "float arch", "portable")
    assert not out.exists() or list(out.iterdir()) == []


def test_bench_json_per_engine_with_parity_on_real_images(exported, cifar_tarball):
    d, ckpt, _ = exported
    r = cli("bench", "--onnx", d / "ckpt" / "nin_xnornet.packed.onnx", "--checkpoint", ckpt,
            "--engine", "ort", "--engine", "torch", "--data", cifar_tarball, "--test-subset", 100,
            "--batch-size", 50, "--iters", 3, "--warmup", 1, "--threads", 1, "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["engine"] for row in rows] == ["ort", "torch"]
    for row in rows:
        assert row["images"] == 100 and row["batch_size"] == 50 and row["threads"] == 1
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["images_per_s"] > 0
        assert row["agreement"] >= 99.0 and row["median_abs_diff"] <= 1e-4
        assert 0 <= row["top1"] <= 100 and row["reference_top1"] == rows[0]["reference_top1"]
    assert rows[0]["xnor_nodes"] == 7  # the packed file, through its function body on stock ORT


def test_bench_arch_table_and_random_init_onnx_rebuilds_reference(exported, cifar_tarball):
    d, _, _ = exported
    r = cli("bench", "--arch", "nin_gc_xnornet", "--random-init", "--engine", "torch,ort",
            "--iters", 3, "--warmup", 0)
    assert r.returncode == 0, r.stderr
    assert "p50 ms" in r.stdout and "ort" in r.stdout and "torch" in r.stdout
    # a random-init export still gets parity: the seed is in its metadata
    r = cli("bench", "--onnx", d / "rand" / "nin_xnornet.packed.onnx", "--engine", "ort",
            "--data", cifar_tarball, "--test-subset", 20, "--batch-size", 20, "--iters", 2, "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["agreement"] == 100.0 and row["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("case", ["not_onnx", "truncated", "unknown_engine", "portable_for_xnor",
                                  "missing_onnx", "float_arch_for_xnor", "packed_bits_for_trt"])
def test_bench_errors_are_one_line(case, exported, tmp_path):
    d, _, _ = exported
    if case == "not_onnx":
        bad = tmp_path / "model.onnx"
        bad.write_text("this is not a protobuf\n")
        r = cli("bench", "--onnx", bad, "--engine", "ort", "--iters", 1)
        assert_one_line_error(r, "model.onnx")
    elif case == "truncated":
        good = (d / "ckpt" / "nin_xnornet.portable.onnx").read_bytes()
        bad = tmp_path / "cut.onnx"
        bad.write_bytes(good[: len(good) // 2])
        r = cli("bench", "--onnx", bad, "--engine", "ort", "--iters", 1)
        assert_one_line_error(r, "cut.onnx")
    elif case == "unknown_engine":
        r = cli("bench", "--arch", "nin_xnornet", "--random-init", "--engine", "ort,warp-drive")
        assert_one_line_error(r, "warp-drive", "ort-xnor")
    elif case == "portable_for_xnor":
        r = cli("bench", "--onnx", d / "ckpt" / "nin_xnornet.portable.onnx", "--engine", "ort-xnor",
                "--iters", 1)
        assert_one_line_error(r, "ort-xnor")
    elif case == "float_arch_for_xnor":
        r = cli("bench", "--arch", "nin", "--random-init", "--engine", "ort-xnor", "--xnor-form", "packed-bits",
                "--iters", 1)
        assert_one_line_error(r, "ort-xnor", "float arch")
    elif case == "packed_bits_for_trt":  # refused before TensorRT is imported: no GPU needed
        r = cli("bench", "--onnx", d / "ckpt" / "nin_xnornet.packed-bits.onnx", "--engine", "trt",
                "--gpu-kernels", "cuda", "--iters", 1)
        assert_one_line_error(r, "bit-packed activations", "XnorConv2d only", "--form packed")
    else:
        r = cli("bench", "--onnx", tmp_path / "nope.onnx", "--engine", "ort")
        assert_one_line_error(r, "nope.onnx")


def test_library_pieces():
    calls = []
    stats = measure_latency(lambda x: calls.append(x.shape), np.zeros((4, 3, 32, 32), np.float32),
                            iters=7, warmup=2)
    assert len(calls) == 9 and stats["p50_ms"] <= stats["p99_ms"] and stats["images_per_s"] > 0
    logits = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]], np.float32)
    ref = logits + np.array([[0.0, 0.0], [0.0, 0.0], [4.0, 0.0]], np.float32)
    p = parity(logits, np.array([1, 0, 0]), ref)
    assert p["top1"] == pytest.approx(200 / 3) and p["reference_top1"] == 100.0
    assert p["agreement"] == pytest.approx(200 / 3) and p["median_abs_diff"] == 0.0 and p["max_abs_diff"] == 4.0
    assert read_engine_list(["torch,ort", "ort-xnor"]) == ["torch", "ort", "ort-xnor"]
    with pytest.raises(XnorpipeError):
        read_engine_list(["tpu"])
    assert "p50 ms" in format_table([{"engine": "x", "p50_ms": 1.0}])


def test_bench_xnor_form_reaches_ort_xnor():
    """--xnor-form picks the form ort-xnor runs (and only ort-xnor); the table and JSON show it."""
    from test_cpu_kernels import _library

    from xnorpipe.deploy.onnx import BIT_OPS, CONV_OPS
    from xnorpipe.runtime.ort_engine import _library_implements

    library = _library()  # skips where the library is not built
    common = ("bench", "--arch", "nin_xnornet", "--random-init", "--engine", "ort,ort-xnor", "--iters", 2,
              "--warmup", 0, "--threads", 1)
    r = cli(*common, "--xnor-form", "packed", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["form"] for row in rows] == ["portable", "packed"]
    assert rows[1]["model"].endswith("nin_xnornet.packed.onnx") and rows[1]["xnor_nodes"] == 7
    r = cli(*common)  # default: packed-bits
    if all(_library_implements(library, op) for op in CONV_OPS + BIT_OPS):
        assert r.returncode == 0, r.stderr
        header, *lines = [line.split() for line in r.stdout.splitlines()[1:]]
        assert header[:2] == ["engine", "form"]
        assert [line[:2] for line in lines] == [["ort", "portable"], ["ort-xnor", "packed-bits"]]
    else:  # a library without the bit ops is refused, not silently helped by function bodies
        assert_one_line_error(r, "does not implement", "--xnor-form packed")
