"""`xnorpipe train`: learning on real CIFAR, determinism, resume, Ctrl-C, DDP, error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT

from xnorpipe.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from xnorpipe.cli import cli
from xnorpipe.models import build_model
from xnorpipe.train import TrainingInterrupted, TrainOptions, train

SMALL_CFG = "16,16,16,32,32,32,32,32"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, match: str):
    assert result.exit_code != 0, result.output
    # A SystemExit means click handled it; anything else would be a traceback for the user.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert match in lines[0], lines[0]


def same_tensors(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def resume_equals_straight(data, out, straight, keys) -> None:
    """`train --resume` in `out` finishes the 3-epoch run with the same `keys` of state as the
    uninterrupted run in `straight`."""
    r = invoke("train", "--arch", "nin", "--data", data, "--out", out, "--resume", "-q", "--no-plot")
    assert r.exit_code == 0, r.output
    a = load_checkpoint(checkpoint_path("nin", straight)).state
    b = load_checkpoint(checkpoint_path("nin", out)).state
    assert b["epoch"] == 3
    for key in keys:
        assert same_tensors(a[key], b[key]), key


def train_args(data, out, arch="nin_xnornet", epochs=2, *extra):
    return ["train", "--arch", arch, "--data", data, "--cfg", SMALL_CFG, "--epochs", epochs,
            "--batch-size", 20, "--out", out, "--deterministic", "-q", "--no-plot", *extra]


# ----------------------------------------------------------- real learning


@pytest.mark.slow
def test_short_training_on_real_cifar_beats_chance(cifar_tarball, tmp_path):
    out = tmp_path / "run"
    r = invoke("train", "--arch", "nin", "--data", cifar_tarball, "--cfg", "32,32,32,64,64,64,64,64",
               "--epochs", 3, "--lr", 0.05, "--subset", 5000, "--test-subset", 1000, "--out", out,
               "--deterministic", "-q")
    assert r.exit_code == 0, r.output
    log = [json.loads(line) for line in (out / "cifar10_nin_log.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in log] == [1, 2, 3]
    assert {"lr", "train_loss", "train_top1", "test_loss", "test_top1", "seconds",
            "images_per_s"} <= log[0].keys()
    best = max(rec["test_top1"] for rec in log)
    assert best > 25.0, log  # chance is 10 %
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    ckpt = load_checkpoint(checkpoint_path("nin", out, best=True), arch="nin")
    assert ckpt.best_acc1 == pytest.approx(best) and ckpt.model_kwargs == {"cfg": [32, 32, 32, 64, 64, 64, 64, 64]}
    assert (out / "cifar10_nin_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # eval of the best checkpoint reproduces the logged test top-1 on the same 1000 images
    r = invoke("eval", "--checkpoint", checkpoint_path("nin", out, best=True), "--data", cifar_tarball,
               "--test-subset", 1000, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["n"] == 1000 and result["arch"] == "nin"
    assert result["top1"] == pytest.approx(best)


# ------------------------------------------------- determinism and resume


def test_deterministic_runs_are_bit_identical(train_tree, tmp_path):
    for name in ("a", "b"):
        r = invoke(*train_args(train_tree.path, tmp_path / name, "nin_xnornet", 2))
        assert r.exit_code == 0, r.output
    a = load_checkpoint(checkpoint_path("nin_xnornet", tmp_path / "a")).state
    b = load_checkpoint(checkpoint_path("nin_xnornet", tmp_path / "b")).state
    assert a["epoch"] == 2 and a["recipe"]["seed"] == 0
    assert same_tensors(a["model"], b["model"]) and same_tensors(a["optimizer"], b["optimizer"])
    # ... and the weights really moved away from the seeded init
    r = invoke(*train_args(train_tree.path, tmp_path / "c", "nin_xnornet", 1, "--lr", 1e-9))
    c = load_checkpoint(checkpoint_path("nin_xnornet", tmp_path / "c")).state
    assert not same_tensors(a["model"], c["model"])


@pytest.fixture(scope="module")
def straight_run(train_tree, tmp_path_factory):
    """An uninterrupted 3-epoch deterministic nin run: what every resumed run must equal."""
    straight = tmp_path_factory.mktemp("straight")
    r = invoke(*train_args(train_tree.path, straight, "nin", 3))
    assert r.exit_code == 0, r.output
    return straight


def test_interrupt_then_resume_equals_uninterrupted(train_tree, tmp_path, straight_run):
    straight = straight_run

    # Ctrl-C right after epoch 1 completed (the per-epoch log line is the hook).
    def ctrl_c_after_epoch_1(msg):
        if msg.startswith("epoch 1/"):
            raise KeyboardInterrupt

    split = tmp_path / "split"
    opts = TrainOptions(arch="nin", data=str(train_tree.path), epochs=3, batch_size=20,
                        deterministic=True, cfg=[int(c) for c in SMALL_CFG.split(",")],
                        out=str(split), progress=False, plot=False, log=ctrl_c_after_epoch_1)
    with pytest.raises(TrainingInterrupted) as info:
        train(opts)
    assert info.value.exit_code == 130
    assert "checkpoint of epoch 1" in str(info.value) and "\n" not in str(info.value)
    assert load_checkpoint(checkpoint_path("nin", split)).epoch == 1
    assert not list(split.glob(".*.tmp"))  # no half-written file

    resume_equals_straight(train_tree.path, split, straight, ("model", "optimizer", "scheduler", "rng", "best_acc1"))
    log = [json.loads(x)["epoch"] for x in (split / "cifar10_nin_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]


# ------------------------------------------------------------------- DDP


# Runs the CLI like cli.py, then reports the gloo worker threads still alive in the process.
DDP_DRIVER = """
import os, sys
from xnorpipe.cli import main
main(sys.argv[1:])
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(f"rank {os.environ['RANK']}: gloo worker threads after train: {threads.count('pt_gloo_runloop')}",
      file=sys.stderr)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")
def test_ddp_two_cpu_processes(train_tree, tmp_path):
    out = tmp_path / "ddp"
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(driver), *map(str, train_args(train_tree.path, out, "nin", 1))]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x 2 processes" in r.stderr
    assert r.stderr.count("epoch 1/1") == 1  # only rank 0 reports
    ckpt = load_checkpoint(checkpoint_path("nin", out), arch="nin")
    assert ckpt.epoch == 1 and ckpt.state["recipe"]["batch_size"] == 20
    log = (out / "cifar10_nin_log.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["images_per_s"] > 0
    # The process group really ended inside train(): its worker threads were joined. Left
    # running (DDP's reducer, or a module imported after init, holding the group), one of them
    # could free the last collective's work during interpreter shutdown and abort the process.
    for rank in (0, 1):
        assert f"rank {rank}: gloo worker threads after train: 0" in r.stderr, r.stderr[-3000:]


# ------------------------------------------------------------ error paths


def test_unknown_arch(train_tree, tmp_path):
    r = invoke("train", "--arch", "resnet", "--data", train_tree.path, "--out", tmp_path / "o")
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output and "'resnet' is not one of" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, match", [
    (["--subset", 0], "--subset must be positive"),
    (["--test-subset", -5], "--test-subset must be positive"),
    (["--epochs", -1], "--epochs must be at least 1"),
    (["--lr", "nan"], "--lr must be positive"),
    (["--cfg", "16,x"], "--cfg wants comma-separated integers"),
    (["--cfg", "16,16"], "NIN needs 8 cfg widths"),
    (["--amp", "--device", "cpu"], "--amp needs a CUDA device"),
    (["--subset", 10 ** 6], "--subset 1000000 exceeds"),
])
def test_impossible_options(train_tree, tmp_path, extra, match):
    out = tmp_path / "o"
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", out, "-q", *extra)
    assert_one_line_error(r, match)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_cuda(train_tree, tmp_path):
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--device", "cuda",
               "--out", tmp_path / "o")
    assert_one_line_error(r, "no CUDA device")


def test_missing_and_corrupt_dataset(tmp_path):
    r = invoke("train", "--arch", "nin", "--data", tmp_path / "nope", "--out", tmp_path / "o")
    assert_one_line_error(r, "dataset not found")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\0" * 50)
    r = invoke("train", "--arch", "nin", "--data", bad, "--out", tmp_path / "o", "-q")
    assert_one_line_error(r, "unreadable archive")
    assert not list((tmp_path / "o").glob("*.pth.tar"))


def test_resume_errors(train_tree, tmp_path):
    out = tmp_path / "o"
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", out, "--resume")
    assert_one_line_error(r, "no checkpoint at")

    assert invoke(*train_args(train_tree.path, out, "nin", 1)).exit_code == 0
    ckpt = checkpoint_path("nin", out)
    # another arch's checkpoint
    r = invoke("train", "--arch", "nin_xnornet", "--data", train_tree.path, "--out", out,
               "--resume", ckpt)
    assert_one_line_error(r, "checkpoint is for arch 'nin', not 'nin_xnornet'")
    # a finished run, and a changed recipe
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", out, "--resume")
    assert_one_line_error(r, "already finished all 1 epochs")
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", out, "--resume",
               "--lr", 0.5)
    assert_one_line_error(r, "--lr 0.5 differs")
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", out, "--resume",
               "--cfg", "8,8,8,8,8,8,8,8")
    assert_one_line_error(r, "--resume: --cfg [8, 8, 8, 8, 8, 8, 8, 8] differs from the checkpoint's [16, 16, 16,")
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", out, "--resume",
               "--model-arg", "groups=1,1,1,1,1,1,1,1,1")
    assert_one_line_error(r, "--model-arg groups [1, 1, 1, 1, 1, 1, 1, 1, 1] differs from the checkpoint's default")

    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", out, "--resume", truncated)
    assert_one_line_error(r, "not a readable checkpoint")

    foreign = tmp_path / "foreign.pth.tar"
    torch.save({"state_dict": {}}, foreign)
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", out, "--resume", foreign)
    assert_one_line_error(r, "not an xnorpipe checkpoint")

    weights_only = tmp_path / "weights.pth.tar"
    save_checkpoint(weights_only, {"arch": "nin", "cfg": [16] * 8, "groups": [1] * 9, "model": {}})
    r = invoke("train", "--arch", "nin", "--data", train_tree.path, "--out", out, "--resume", weights_only)
    assert_one_line_error(r, "holds no training state")


def test_checkpoint_loads_with_weights_only_and_builds(train_tree, tmp_path):
    out = tmp_path / "o"
    assert invoke(*train_args(train_tree.path, out, "nin_xnornet", 1)).exit_code == 0
    ckpt = load_checkpoint(checkpoint_path("nin_xnornet", out, best=True), arch="nin_xnornet")
    model = ckpt.build_model()
    assert model.cfg == [int(c) for c in SMALL_CFG.split(",")]
    assert ckpt.classes == tuple(sorted(train_tree.classes))  # recorded for eval's class check
    assert isinstance(ckpt.state["scheduler"]["milestones"], dict)
    assert {"data", "torch"} <= ckpt.state["rng"].keys()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_leaves_a_valid_checkpoint_and_one_line(train_tree, tmp_path, signame):
    """A real Ctrl-C (SIGINT), or a scheduler's SIGTERM, in the middle of a long run."""
    import signal
    import time

    out = tmp_path / "sig"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "cli.py", *map(str, train_args(train_tree.path, out, "nin", 10000))],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not checkpoint_path("nin", out).exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.1)
        proc.send_signal(getattr(signal, signame))
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted during epoch") and "--resume" in last, stderr
    ckpt = load_checkpoint(checkpoint_path("nin", out), arch="nin")
    assert ckpt.epoch >= 1
    assert not list(out.glob(".*.tmp"))


# ------------------------------------------------------------ time limit


def test_time_limit_stops_at_an_epoch_boundary_and_resume_finishes(train_tree, tmp_path, straight_run):
    # A budget far below one epoch: the first epoch always runs, then the run stops cleanly.
    out = tmp_path / "limited"
    r = invoke(*train_args(train_tree.path, out, "nin", 3, "--time-limit", 1e-6))
    assert r.exit_code == 0, r.output
    assert "stopped after epoch 1 of 3" in r.stderr and "best test top-1" in r.stderr, r.stderr
    ckpt = load_checkpoint(checkpoint_path("nin", out), arch="nin")
    assert ckpt.epoch == 1
    # The lr schedule is the planned 3-epoch one (milestones at epochs 1 and 2), not a 1-epoch one.
    assert ckpt.state["scheduler"]["milestones"] == {1: 1, 2: 1}
    log = [json.loads(x) for x in (out / "cifar10_nin_log.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in log] == [1]
    assert not list(out.glob(".*.tmp"))

    resume_equals_straight(train_tree.path, out, straight_run, ("model", "optimizer", "scheduler", "best_acc1"))


def test_time_limit_must_be_positive(train_tree, tmp_path):
    r = invoke(*train_args(train_tree.path, tmp_path / "o", "nin", 1, "--time-limit", 0))
    assert_one_line_error(r, "--time-limit must be positive")


# ------------------------------------------------- model arguments, old checkpoints


TAKES = "birealnet18_cifar takes num_classes, width, scaling"


@pytest.mark.parametrize("arch, extra, match", [
    ("birealnet18_cifar", ["--cfg", SMALL_CFG], f"--cfg is for the NIN archs; {TAKES}"),
    ("birealnet18_cifar", ["--groups", "1,1"], "--groups is for the NIN archs"),
    ("birealnet18_cifar", ["--model-arg", "depth=3"], f"--model-arg depth: {TAKES}"),
    ("birealnet18_cifar", ["--model-arg", "width=-4"], "width must be an integer in 1..4096, got -4"),
    ("birealnet18_cifar", ["--model-arg", "scaling=sign"], "scaling must be one of xnor, none, got 'sign'"),
    ("birealnet18_cifar", ["--model-arg", "num_classes=7"], "10 classes, the model has 7"),
    ("birealnet18_cifar", ["--model-arg", "=3"], "--model-arg wants KEY=VALUE"),
    ("nin", ["--model-arg", "cfg=16,16"], "NIN needs 8 cfg widths"),
    ("nin", ["--model-arg", f"cfg={SMALL_CFG}", "--cfg", SMALL_CFG], "--cfg and --model-arg cfg both given"),
])
def test_impossible_model_arguments(train_tree, tmp_path, arch, extra, match):
    out = tmp_path / "o"
    r = invoke("train", "--arch", arch, "--data", train_tree.path, "--out", out, "-q", *extra)
    assert_one_line_error(r, match)
    assert not out.exists() or not any(out.iterdir())


def old_format(state: dict, cfg, groups) -> dict:
    """A checkpoint as written before model_kwargs existed: NIN's cfg and groups instead."""
    state = {k: v for k, v in state.items() if k != "model_kwargs"}
    state.update(cfg=list(cfg), groups=list(groups))
    if "recipe" in state:
        recipe = {k: v for k, v in state["recipe"].items() if k != "model_kwargs"}
        state["recipe"] = {**recipe, "cfg": list(cfg), "groups": list(groups)}
    return state


def test_old_checkpoint_without_model_kwargs_loads(tmp_path):
    torch.manual_seed(0)
    cfg, groups = [16, 16, 16, 32, 32, 32, 32, 32], [1, 2, 2, 2, 2, 2, 2, 2, 1]
    model = build_model("nin_gc_xnornet", cfg, groups).eval()
    path = tmp_path / "old.pth.tar"
    save_checkpoint(path, {"arch": "nin_gc_xnornet", "cfg": cfg, "groups": groups, "epoch": 4,
                           "best_acc1": 12.5, "model": model.state_dict()})
    ckpt = load_checkpoint(path, arch="nin_gc_xnornet")
    assert ckpt.model_kwargs == {"cfg": cfg, "groups": groups} and ckpt.epoch == 4
    loaded = ckpt.build_model()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    r = invoke("info", "--checkpoint", path, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["cfg"] == cfg and d["groups"] == groups and d["model_kwargs"] == {"cfg": cfg, "groups": groups}


def test_resume_from_an_old_format_checkpoint_equals_uninterrupted(train_tree, tmp_path, straight_run):
    out = tmp_path / "old"
    r = invoke(*train_args(train_tree.path, out, "nin", 3, "--time-limit", 1e-6))
    assert r.exit_code == 0 and "stopped after epoch 1 of 3" in r.stderr, r.output
    path = checkpoint_path("nin", out)
    new = load_checkpoint(path).state
    save_checkpoint(path, old_format(new, [int(c) for c in SMALL_CFG.split(",")], [1] * 9))
    assert "model_kwargs" not in torch.load(path, weights_only=True)
    resume_equals_straight(train_tree.path, out, straight_run, ("model", "optimizer", "scheduler", "best_acc1"))
    assert load_checkpoint(path).model_kwargs == {"cfg": [int(c) for c in SMALL_CFG.split(",")], "groups": [1] * 9}


@pytest.mark.parametrize("fields, match", [
    ({"model_kwargs": "width=8"}, "model_kwargs is a str, not a dict"),
    ({"model_kwargs": torch.ones(3)}, "model_kwargs is a Tensor, not a dict"),
    ({"model_kwargs": {"width": torch.tensor(8)}}, "model_kwargs 'width' holds a Tensor"),
    ({"model_kwargs": {"width": {"__reduce__": 1}}}, "model_kwargs 'width' holds a dict"),
    ({"model_kwargs": {"cfg": list(range(100_000))}}, "list of 100000 items"),
    ({"model_kwargs": {"width": 10 ** 12}}, "width must be an integer in 1..4096"),
    ({"model_kwargs": {"width": 1024, "num_classes": 100_000}}, "parameters, over the limit"),
    ({"model_kwargs": {"width": "8"}}, "width must be an integer in 1..4096, got '8'"),
    ({"model_kwargs": {"__class__": 1}}, "unknown model argument '__class__'"),
    ({"arch": "os.system"}, "unknown arch 'os.system'"),
    ({"arch": 5}, "checkpoint field 'arch' is not a name"),
    ({"cfg": "abc", "groups": None, "arch": "nin", "model_kwargs": None}, "model_kwargs is a NoneType"),
])
def test_hostile_model_kwargs_in_a_checkpoint(tmp_path, fields, match):
    path = tmp_path / "hostile.pth.tar"
    save_checkpoint(path, {"arch": "birealnet18_cifar", "epoch": 1, "best_acc1": 0.0, "model": {}, **fields})
    r = invoke("info", "--checkpoint", path)
    assert_one_line_error(r, match)
    assert str(path) in r.stderr
