"""Bi-Real-Net-18 (birealnet18, birealnet18_cifar): structure, forward, counts, training, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from xnorpipe.checkpoint import checkpoint_path, load_checkpoint
from xnorpipe.cli import cli
from xnorpipe.complexity import count
from xnorpipe.data import BatchIterator, resize_batch
from xnorpipe.models import build_model, get_model_spec
from xnorpipe.models.birealnet import BiRealBlock, BiRealUnit
from xnorpipe.nn import BinaryActivation, BinaryConv2d, sign
from xnorpipe.sources import calibrate_batchnorm, synthetic_calibration_images
from xnorpipe.train import TrainOptions, evaluate, train

# The paper's counts for Bi-Real-Net-18 at 224x224, 1000 classes, and ours (documented in
# xnorpipe/models/birealnet.py NOTE_224): BOPs exactly; FLOPs = stem + 1x1 shortcuts + Linear.
PAPER_BOPS, PAPER_FLOPS = 1.68e9, 1.39e8
BOPS_224 = 1_676_279_808
FLOPS_224 = {1000: 118_013_952 + 19_267_584 + 512_000, 10: 118_013_952 + 19_267_584 + 5_120}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def units(model):
    return [m for m in model.modules() if isinstance(m, BiRealUnit)]


# ------------------------------------------------------------------ structure


@pytest.mark.parametrize("arch", ["birealnet18", "birealnet18_cifar"])
def test_sixteen_binary_units_with_real_shortcuts(arch):
    width = 8
    model = build_model(arch, width=width)
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(binary) == 16 and len(units(model)) == 16
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) and m.bias is None and m.scaling == "xnor"
               for m in binary)
    # 4 stages x 2 basic blocks x 2 units, widths w, 2w, 4w, 8w
    for i, stage_width in enumerate([width, 2 * width, 4 * width, 8 * width]):
        stage = getattr(model, f"layer{i + 1}")
        assert len(stage) == 2 and all(isinstance(b, BiRealBlock) for b in stage)
        convs = [u.conv for b in stage for u in (b.unit1, b.unit2)]
        assert [c.out_channels for c in convs] == [stage_width] * 4
        assert [c.stride for c in convs] == [(1, 1) if i == 0 else (2, 2)] + [(1, 1)] * 3
    for unit in units(model):
        # sign -> binary conv -> BN (no BN before the sign); BN after the conv
        assert [name for name, _ in unit.named_children()] == ["sign", "conv", "bn", "shortcut"]
        assert isinstance(unit.sign, BinaryActivation) and unit.bn.num_features == unit.conv.out_channels
        if unit.conv.stride == (2, 2):
            pool, conv, bn = unit.shortcut
            assert isinstance(pool, nn.AvgPool2d) and (pool.kernel_size, pool.stride) == (2, 2)
            assert type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.bias is None
            assert (conv.in_channels, conv.out_channels) == (unit.conv.in_channels, unit.conv.out_channels)
            assert isinstance(bn, nn.BatchNorm2d)
        else:
            assert isinstance(unit.shortcut, nn.Identity)
    assert sum(isinstance(u.shortcut, nn.Sequential) for u in units(model)) == 3
    # float stem and head
    stem = model.conv1
    assert type(stem) is nn.Conv2d and stem.bias is None and isinstance(model.bn1, nn.BatchNorm2d)
    if arch == "birealnet18":
        assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7), (2, 2), (3, 3))
        assert isinstance(model.maxpool, nn.MaxPool2d)
    else:
        assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
        assert isinstance(model.maxpool, nn.Identity)
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.fc.in_features == 8 * width


def test_full_width_parameters():
    # torchvision's ResNet-18 has 11,689,512 parameters; Bi-Real-Net-18 the same layers (the
    # downsample 1x1 convs and BNs included), at 1000 classes.
    model = build_model("birealnet18", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512


@pytest.mark.parametrize("arch, size", [("birealnet18", 224), ("birealnet18_cifar", 32)])
def test_forward_shapes_and_input_dependence(arch, size):
    torch.manual_seed(0)
    model = build_model(arch, width=8, num_classes=7)
    assert get_model_spec(arch).input_shape == (3, size, size)
    calibrate_batchnorm(model, synthetic_calibration_images(n=16), image_size=(size, size))
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (4, 7) and torch.isfinite(out).all()
    assert (out[0] - out[1]).abs().max() > 1e-3  # logits depend on the image


def test_unit_adds_its_real_valued_shortcut():
    """out = bn(conv(sign(x))) + shortcut(x): the real-valued x reaches the output."""
    torch.manual_seed(0)
    model = build_model("birealnet18_cifar", width=8).eval()
    x = torch.randn(2, 8, 16, 16)
    identity_unit, down_unit = model.layer1[0].unit1, model.layer2[0].unit1
    with torch.no_grad():
        expected = identity_unit.bn(nn.functional.conv2d(sign(x), identity_unit.conv.binary_weight(), padding=1)) + x
        torch.testing.assert_close(identity_unit(x), expected)
        # Two inputs of the same signs give outputs that differ exactly by the difference of the inputs.
        y = x + 0.25 * x.sign() * (x.abs() > 0).float()
        torch.testing.assert_close(identity_unit(y) - identity_unit(x), y - x)
        pooled = nn.functional.avg_pool2d(x, 2)
        short = down_unit.shortcut[2](nn.functional.conv2d(pooled, down_unit.shortcut[1].weight))
        main = down_unit.bn(nn.functional.conv2d(sign(x), down_unit.conv.binary_weight(), stride=2, padding=1))
        torch.testing.assert_close(down_unit(x), main + short)


def test_scaling_none_reaches_every_binary_conv():
    model = build_model("birealnet18_cifar", width=8, scaling="none")
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert len(binary) == 16 and all(m.scaling == "none" for m in binary)
    assert all(set(m.binary_weight().unique().tolist()) == {-1.0, 1.0} for m in binary)


# ------------------------------------------------------------------ complexity


def test_counts_at_224_match_the_paper_as_documented():
    counts = {}
    for classes in (1000, 10):
        counts[classes] = count(build_model("birealnet18", num_classes=classes), "birealnet18", (3, 224, 224))
    c = counts[1000]
    assert c.binary_ops == BOPS_224 and f"{c.binary_ops:.2e}" == f"{PAPER_BOPS:.2e}"
    assert c.float_ops == FLOPS_224[1000] and abs(c.float_ops / PAPER_FLOPS - 1) < 0.01
    assert c.ops == pytest.approx(FLOPS_224[1000] + BOPS_224 / 64)
    assert counts[10].float_ops == FLOPS_224[10] and counts[10].binary_ops == BOPS_224
    # binary MACs (the seed's rule) are the same convs: no bias
    assert c.binary_macs == BOPS_224
    # a quarter of the width: a sixteenth of the binary ops
    assert count(build_model("birealnet18", width=16), "birealnet18", (3, 224, 224)).binary_ops == BOPS_224 // 16


def test_info_cli_for_birealnet(tmp_path):
    r = invoke("info", "--arch", "birealnet18", "--model-arg", "num_classes=1000", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["binary_ops"] == BOPS_224 and d["float_ops"] == FLOPS_224[1000]
    assert d["input_shape"] == [3, 224, 224] and d["model_kwargs"] == {"num_classes": 1000} and d["binary"]
    assert "cfg" not in d and "1.68e9" in d["note"]
    r = invoke("info", "--arch", "birealnet18_cifar", "--model-arg", "width=8")
    assert r.exit_code == 0, r.output
    assert "3x32x32" in r.stdout and "width=8" in r.stdout and "binary ops (BOPs)" in r.stdout
    for args, match in [(["--model-arg", "widht=8"], "unknown model argument 'widht'"),
                        (["--model-arg", "width"], "--model-arg wants KEY=VALUE"),
                        (["--model-arg", "width=8", "--model-arg", "width=9"], "given twice"),
                        (["--model-arg", "width=nan"], "not finite")]:
        r = invoke("info", "--arch", "birealnet18_cifar", *args)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code != 0 and len(lines) == 1 and match in lines[0], r.output


# ------------------------------------------------------- data at the model's size


def test_batch_iterator_resizes_after_augmentation(monkeypatch):
    import xnorpipe.data

    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(10)
    # uint8 batches out (normalize is the last step, and exact to compare before it)
    monkeypatch.setattr(xnorpipe.data, "normalize", lambda batch, memory_format=None: batch)

    def batches(size):
        it = BatchIterator(images, labels, 4, train=True, generator=torch.Generator().manual_seed(5),
                           image_size=size)
        return list(it)

    small, large = batches(None), batches((64, 48))
    assert [tuple(x.shape) for x, _ in large] == [(4, 3, 64, 48), (4, 3, 64, 48), (2, 3, 64, 48)]
    for (xs, ys), (x32, _), (xl, yl) in zip(small, batches((32, 32)), large):
        assert torch.equal(xs, x32)  # the images' own size: untouched
        # the same images and augmentation, resized
        assert torch.equal(ys, yl) and torch.equal(xl, resize_batch(xs, (64, 48)))
    assert not torch.equal(small[0][0], images[:4])  # augmented (shuffled, cropped, flipped)


def test_evaluate_resizes_to_the_model_size():
    seen = []

    def model(x):
        seen.append(tuple(x.shape[1:]))
        return torch.zeros(len(x), 10)

    images = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    result = evaluate(model, images, torch.zeros(6, dtype=torch.int64), batch_size=4, image_size=(224, 224))
    assert seen == [(3, 224, 224)] * 2 and result["top1"] == 100.0
    seen.clear()
    evaluate(model, images, torch.zeros(6, dtype=torch.int64), batch_size=4)
    assert seen == [(3, 32, 32)] * 2


# ------------------------------------------------------------------ training


def read_log(out, arch):
    return [json.loads(x) for x in (out / f"cifar10_{arch}_log.jsonl").read_text().splitlines()]


def test_small_birealnet18_cifar_learns(train_tree, tmp_path):
    out = tmp_path / "run"
    r = invoke("train", "--arch", "birealnet18_cifar", "--model-arg", "width=8", "--data", train_tree.path,
               "--epochs", 2, "--lr", 0.02, "--batch-size", 20, "--out", out, "--deterministic", "-q", "--no-plot")
    assert r.exit_code == 0, r.output
    log = read_log(out, "birealnet18_cifar")
    assert [rec["epoch"] for rec in log] == [1, 2]
    assert log[-1]["train_loss"] < log[0]["train_loss"] < 2.5, log
    assert log[-1]["train_top1"] > 40.0, log  # chance is 10 %
    assert max(rec["test_top1"] for rec in log) > 30.0, log
    ckpt = load_checkpoint(checkpoint_path("birealnet18_cifar", out), arch="birealnet18_cifar")
    assert ckpt.model_kwargs == {"width": 8} and ckpt.state["recipe"]["model_kwargs"] == {"width": 8}
    assert "cfg" not in ckpt.state and "groups" not in ckpt.state
    model = ckpt.build_model()
    assert model.width == 8 and model.fc.in_features == 64


def test_birealnet18_trains_and_evaluates_at_224(train_tree, tmp_path):
    """The 224x224 model on 32x32 images: batches resized in training and in evaluation, the
    model_kwargs (a string among them) round-trip through the checkpoint, and `eval` scores the
    checkpoint as training did."""
    out = tmp_path / "run224"
    seen = []
    result = train(TrainOptions(arch="birealnet18", data=str(train_tree.path), epochs=1, batch_size=10,
                                subset=20, test_subset=10, deterministic=True, out=str(out), progress=False,
                                plot=False, log=seen.append, model_kwargs={"width": 4, "scaling": "none"}))
    assert result["epochs_done"] == 1 and "birealnet18 (width=4, scaling=none): 20 train / 10 test images" in seen[0]
    ckpt = load_checkpoint(checkpoint_path("birealnet18", out), arch="birealnet18")
    assert ckpt.model_kwargs == {"width": 4, "scaling": "none"}
    model = ckpt.build_model()
    assert all(m.scaling == "none" for m in model.modules() if isinstance(m, BinaryConv2d))
    shapes = []
    model.conv1.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[1:])))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    assert shapes == [(3, 224, 224)]
    r = invoke("eval", "--checkpoint", checkpoint_path("birealnet18", out), "--data", train_tree.path,
               "--test-subset", 10, "--json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["top1"] == pytest.approx(result["test_top1"])
    assert json.loads(r.stdout)["model_kwargs"] == {"width": 4, "scaling": "none"}


def test_random_init_with_model_args_exports_and_rebuilds_its_reference(tmp_path, train_tree):
    """`export --random-init --model-arg width=8` records the arguments, and `bench --onnx` rebuilds
    that reference from them (synthetic calibration, no --data needed) for parity; hostile
    recorded arguments are refused in one line."""
    import onnx

    from xnorpipe.deploy import onnx as deploy_onnx

    r = invoke("export", "--arch", "birealnet18_cifar", "--random-init", "--model-arg", "width=8",
               "--form", "packed", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    path = tmp_path / "birealnet18_cifar.packed.onnx"
    assert deploy_onnx.model_metadata(onnx.load(str(path)))["xnorpipe.model_kwargs"] == '{"width": 8}'
    r = invoke("bench", "--onnx", path, "--engine", "ort,torch", "--iters", 1, "--warmup", 0, "--json",
               "--data", train_tree.path, "--batch-size", 20)
    assert r.exit_code == 0, r.output
    assert "parity is skipped" not in r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["engine"] for row in rows] == ["ort", "torch"]
    for row in rows:  # the reference rebuilt at width 8: the logits match (width 64 would not)
        assert row["agreement"] >= 98.0 and row["median_abs_diff"] < 1e-5, row
    m = onnx.load(str(path))
    onnx.helper.set_model_props(m, {**deploy_onnx.model_metadata(m), "xnorpipe.model_kwargs": '{"width": 1e400}'})
    onnx.save(m, str(path))
    r = invoke("bench", "--onnx", path, "--engine", "ort", "--iters", 1, "--warmup", 0)
    assert r.exit_code != 0 and "model_kwargs" in r.output and "Traceback" not in r.output, r.output
    r = invoke("export", "--arch", "birealnet18_cifar", "--checkpoint", tmp_path / "none.pth.tar", "--model-arg",
               "width=8", "--out", tmp_path)
    assert r.exit_code != 0 and "--model-arg applies to --random-init" in r.output, r.output
