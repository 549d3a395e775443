"""`xnorpipe eval` and the reusable evaluate() loop."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import CLASSES, write_image_tree

from xnorpipe.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from xnorpipe.cli import cli
from xnorpipe.train import evaluate

SMALL_CFG = "16,16,16,32,32,32,32,32"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, match):
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def trained(train_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-run")
    r = invoke("train", "--arch", "nin_xnornet", "--data", train_tree.path, "--cfg", SMALL_CFG,
               "--epochs", 2, "--batch-size", 20, "--out", out, "--deterministic", "-q", "--no-plot")
    assert r.exit_code == 0, r.output
    log = [json.loads(x) for x in (out / "cifar10_nin_xnornet_log.jsonl").read_text().splitlines()]
    return out, log


def test_eval_json_matches_training_log(trained, train_tree):
    out, log = trained
    best = checkpoint_path("nin_xnornet", out, best=True)
    r = invoke("eval", "--checkpoint", best, "--data", train_tree.path, "--json", "--batch-size", 7)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert {"top1", "loss", "n", "arch", "checkpoint"} <= result.keys()
    assert result["n"] == 100 and result["arch"] == "nin_xnornet" and result["checkpoint"] == str(best)
    # Batch size must not change the score: same as the log's best epoch (batch 20).
    best_rec = max(log, key=lambda rec: rec["test_top1"])
    assert result["top1"] == pytest.approx(best_rec["test_top1"])
    assert result["loss"] == pytest.approx(best_rec["test_loss"], rel=1e-5)


def test_eval_text_and_default_checkpoint(trained, train_tree, monkeypatch):
    out, _ = trained
    monkeypatch.chdir(out.parent)
    (out.parent / "checkpoints").mkdir(exist_ok=True)
    src = checkpoint_path("nin_xnornet", out, best=True)
    (out.parent / "checkpoints" / src.name).write_bytes(src.read_bytes())
    r = invoke("eval", "--arch", "nin_xnornet", "--data", train_tree.path, "--test-subset", 30)
    assert r.exit_code == 0, r.output
    assert "nin_xnornet" in r.stdout and "test top-1" in r.stdout and "on 30 images" in r.stdout


def test_evaluate_known_logits():
    """Constant logits favour class 0: top-1 = share of label 0, loss = ln 10."""
    images = np.zeros((50, 32, 32, 3), np.uint8)
    labels = np.array([0] * 15 + [3] * 35)

    def model(x):
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        return torch.zeros(len(x), 10)

    result = evaluate(model, images, labels, batch_size=8)
    assert result["n"] == 50 and result["correct"] == 15
    assert result["top1"] == pytest.approx(30.0)
    assert result["loss"] == pytest.approx(math.log(10))


def test_eval_errors(trained, train_tree, tmp_path):
    out, _ = trained
    best = checkpoint_path("nin_xnornet", out, best=True)
    r = invoke("eval", "--checkpoint", tmp_path / "missing.pth.tar", "--data", train_tree.path)
    assert_one_line_error(r, "checkpoint not found")
    truncated = tmp_path / "t.pth.tar"
    truncated.write_bytes(best.read_bytes()[:-100])
    r = invoke("eval", "--checkpoint", truncated, "--data", train_tree.path)
    assert_one_line_error(r, "not a readable checkpoint")
    foreign = tmp_path / "f.pth.tar"
    foreign.write_bytes(b"PK\x03\x04 not really a zip")
    r = invoke("eval", "--checkpoint", foreign, "--data", train_tree.path)
    assert_one_line_error(r, "checkpoint")
    r = invoke("eval", "--checkpoint", best, "--arch", "nin", "--data", train_tree.path)
    assert_one_line_error(r, "checkpoint is for arch 'nin_xnornet', not 'nin'")
    r = invoke("eval", "--checkpoint", best, "--data", tmp_path / "nodata")
    assert_one_line_error(r, "dataset not found")
    r = invoke("eval", "--data", train_tree.path)
    assert_one_line_error(r, "give --checkpoint")


@pytest.mark.parametrize("classes", [CLASSES[:3], (*CLASSES, "unicorn", "zebra")], ids=["3-class", "12-class"])
def test_eval_refuses_a_dataset_with_other_classes(trained, tmp_path, classes):
    """A 3-class tree would score a meaningless 33 %; a 12-class one used to crash in the loss."""
    out, _ = trained
    tree = write_image_tree(tmp_path / "tree", n_train=1, n_test=2, classes=classes)
    r = invoke("eval", "--checkpoint", checkpoint_path("nin_xnornet", out, best=True),
               "--data", tree.path, "-q")
    assert_one_line_error(r, f"{len(classes)} classes, but")
    assert "scores 10 classes" in r.stderr


def test_eval_checks_class_names_and_order(trained, tmp_path):
    out, _ = trained
    renamed = tuple(sorted(CLASSES))[:-1] + ("zebra",)  # 10 classes, the last one another
    tree = write_image_tree(tmp_path / "tree", n_train=1, n_test=1, classes=renamed)
    r = invoke("eval", "--checkpoint", checkpoint_path("nin_xnornet", out, best=True),
               "--data", tree.path, "-q")
    assert_one_line_error(r, "class 9 is 'zebra'")
    assert "'truck'" in r.stderr


def test_eval_of_a_checkpoint_without_class_names(trained, train_tree, tmp_path):
    """Checkpoints from before classes were recorded still evaluate (count checked only)."""
    out, log = trained
    ckpt = load_checkpoint(checkpoint_path("nin_xnornet", out, best=True))
    assert ckpt.classes == tuple(sorted(CLASSES))
    state = {k: v for k, v in ckpt.state.items() if k not in ("format", "classes")}
    old = tmp_path / "old.pth.tar"
    save_checkpoint(old, state)
    assert load_checkpoint(old).classes is None
    r = invoke("eval", "--checkpoint", old, "--data", train_tree.path, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["top1"] == pytest.approx(max(rec["test_top1"] for rec in log))
    tree = write_image_tree(tmp_path / "tree3", n_train=1, n_test=1, classes=CLASSES[:3])
    r = invoke("eval", "--checkpoint", old, "--data", tree.path, "-q")
    assert_one_line_error(r, "3 classes, but")


def test_eval_names_the_cause_of_an_unreadable_checkpoint(trained, train_tree, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    out, _ = trained
    locked = tmp_path / "locked.pth.tar"
    locked.write_bytes(checkpoint_path("nin_xnornet", out, best=True).read_bytes())
    locked.chmod(0)
    r = invoke("eval", "--checkpoint", locked, "--data", train_tree.path)
    assert_one_line_error(r, "permission denied")
