"""Folding: thresholds reproduce sign(bn(x)) bit for bit; the deploy module equals the trained model."""

import numpy as np
import pytest
import torch
from conftest import assert_outputs_depend_on_input

from xnorpipe.deploy import ir
from xnorpipe.deploy.fold import bn_thresholds, fold_model
from xnorpipe.deploy.module import DeployModule
from xnorpipe.deploy.packing import unpack_weights
from xnorpipe.errors import XnorpipeError
from xnorpipe.models import ARCHS, build_model
from xnorpipe.models.nin import BinaryBlock
from xnorpipe.nn import ChannelShuffle, sign
from xnorpipe.sources import load_source_model

SMALL = {  # narrower widths keep the tests fast; 40 and 48 are not multiples of 32
    "nin": ([40, 48, 32, 40, 40, 32, 48, 40], None),
    "nin_xnornet": ([40, 48, 32, 40, 40, 32, 48, 40], None),
    "nin_gc": ([64, 64, 64, 128, 128, 128, 256, 256], None),
    "nin_gc_xnornet": ([64, 64, 64, 128, 128, 128, 256, 256], None),
}


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics with negative and exactly zero gammas (both signs of beta)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.randn(c, generator=g) * 2
            m.weight.data[::9] = 0.0
            m.bias.data = torch.randn(c, generator=g) * 0.5
            m.running_mean.data = torch.randn(c, generator=g) * 0.5
            m.running_var.data = torch.rand(c, generator=g) * 2 + 0.05
    return model.eval()


def calibrated_random_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """BN statistics measured on standard-normal inputs (cumulative average), then random gammas
    (negative and exactly zero ones) and betas: the thresholds lie inside the activations' range,
    so the logits depend on the input (with random statistics, `randomise_bn`, they often do not)."""
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    g = torch.Generator().manual_seed(seed)
    for m in norms:
        c = m.num_features
        m.weight.data = torch.randn(c, generator=g) * 2
        m.weight.data[::9] = 0.0
        m.bias.data = torch.randn(c, generator=g) * 0.5
        m.momentum = 0.1
    return model.eval()


def test_thresholds_reproduce_bn_sign_at_and_around_the_boundary():
    c = 97
    bn = randomise_bn(torch.nn.Sequential(torch.nn.BatchNorm2d(c)), seed=3)[0]
    thr, invert = bn_thresholds(bn)
    assert invert.any() and (bn.weight.detach().numpy() == 0).any()
    gamma = bn.weight.detach().numpy()
    assert np.all(np.isinf(thr[gamma == 0]))
    assert not invert[gamma == 0].any()
    # Probes per channel: the threshold, its float neighbours, the textbook tau and its
    # neighbours, and random values; laid out as a real 8x8 feature map.
    finite = np.where(np.isfinite(thr), thr, 0).astype(np.float32)
    tau = (bn.running_mean - bn.bias * torch.sqrt(bn.running_var + bn.eps) / bn.weight).detach().numpy()
    tau = np.where(np.isfinite(tau), tau, 0).astype(np.float32)
    probes = [finite, np.nextafter(finite, np.float32(np.inf)), np.nextafter(finite, np.float32(-np.inf)),
              tau, np.nextafter(tau, np.float32(np.inf)), np.nextafter(tau, np.float32(-np.inf))]
    rng = np.random.default_rng(0)
    probes += [rng.standard_normal(c).astype(np.float32) for _ in range(64 - len(probes))]
    x = torch.from_numpy(np.stack(probes, axis=1).reshape(1, c, 8, 8))
    with torch.no_grad():
        trained_positive = (sign(bn(x)) > 0).numpy()[0]
    deployed_bit = x.numpy()[0] >= thr[:, None, None]
    expected_bit = trained_positive ^ invert[:, None, None]
    assert np.array_equal(deployed_bit, expected_bit)


def test_gamma_zero_channel_is_constant_sign_of_beta():
    bn = torch.nn.BatchNorm2d(4).eval()
    bn.weight.data = torch.tensor([0.0, -0.0, 0.0, 1.0])
    bn.bias.data = torch.tensor([0.5, -0.5, 0.0, 0.0])
    thr, invert = bn_thresholds(bn)
    assert thr[0] == -np.inf and thr[1] == np.inf and thr[2] == -np.inf
    assert thr[3] == 0.0 and not invert.any()


def _block_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[BinaryBlock, torch.Tensor]:
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.__setitem__(mod, args[0].clone()))
             for m in model.modules() if isinstance(m, BinaryBlock)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_deploy_module_equals_trained_model(arch):
    cfg, groups = SMALL[arch]
    torch.manual_seed(1)
    model = calibrated_random_bn(build_model(arch, cfg, groups), seed=1)
    deploy = fold_model(model, arch=arch)
    module = DeployModule(deploy)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = model(x), module(x)
    assert_outputs_depend_on_input(want.numpy())
    assert got.shape == (16, 10)
    assert torch.equal(want.argmax(1), got.argmax(1))
    assert torch.allclose(want, got, rtol=1e-4, atol=1e-4)
    binary = [layer for layer in deploy.layers if isinstance(layer, ir.BinaryConv)]
    assert len(binary) == (7 if ARCHS[arch].binary else 0)
    # the channel shuffles fold away in the binary nets; the float nin_gc keeps the 6 of its 7 that
    # sit between two grouped convs (the last one moves into conv8)
    shuffles = sum(isinstance(layer, ir.ChannelShuffle) for layer in deploy.layers)
    assert shuffles == (6 if arch == "nin_gc" else 0)


@pytest.mark.parametrize("arch", ["nin_xnornet", "nin_gc_xnornet"])
def test_every_binary_block_matches_with_inputs_exactly_at_thresholds(arch):
    """Block by block, on the trained model's own activations with some set to the thresholds:
    one flipped bit would move an output by about 2 * alpha, far above the tolerance."""
    cfg, groups = SMALL[arch]
    model = randomise_bn(build_model(arch, cfg, groups), seed=4)
    deploy = fold_model(model, arch=arch)
    module = DeployModule(deploy)
    blocks = [m for m in model.modules() if isinstance(m, BinaryBlock)]
    deployed = [m for m in module.layers if type(m).__name__ == "_BinaryConv"]
    inputs = _block_inputs(model, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    rng = np.random.default_rng(6)
    for block, layer in zip(blocks, deployed, strict=True):
        x = inputs[block]
        thr = layer.threshold.view(-1)
        finite = torch.where(torch.isfinite(thr), thr, torch.zeros_like(thr))
        n, c, h, w = x.shape
        for dh, dw, value in [(0, 0, finite), (h - 1, w - 1, finite),  # corners meet the padding
                              (1, 1, torch.from_numpy(np.nextafter(finite.numpy(), np.float32(np.inf)))),
                              (1, 2, torch.from_numpy(np.nextafter(finite.numpy(), np.float32(-np.inf))))]:
            x[:, :, dh, dw] = value
        mask = torch.from_numpy(rng.random(x.shape) < 0.2)
        x = torch.where(mask, finite.view(1, -1, 1, 1).expand_as(x), x)
        with torch.no_grad():
            want, got = block(x.clone()), layer(x.clone())
        if layer.shuffle is not None:  # a channel shuffle after the block, folded into the layer
            want = ChannelShuffle(layer.group)(want)
        alpha = float(layer.scale.min())
        assert torch.allclose(want, got, rtol=0, atol=max(alpha * 1e-3, 1e-6)), arch


def test_packed_weights_are_the_binarized_weights():
    model = randomise_bn(build_model("nin_gc_xnornet", *SMALL["nin_gc_xnornet"]), seed=7)
    deploy = fold_model(model, arch="nin_gc_xnornet")
    blocks = [m for m in model.modules() if isinstance(m, BinaryBlock)]
    layers = [layer for layer in deploy.layers if isinstance(layer, ir.BinaryConv)]
    for block, layer in zip(blocks, layers, strict=True):
        _, invert = bn_thresholds(block.bn)
        cg = layer.in_channels // layer.group
        pm1 = unpack_weights(layer.weight_bits, cg)
        m = pm1.shape[0]
        channel = (np.arange(m)[:, None] // (m // layer.group)) * cg + np.arange(cg)[None, :]
        pm1 = np.where(invert[channel][:, :, None, None], -pm1, pm1)  # undo the gamma < 0 fold
        want = block.conv.binary_weight().detach().numpy()
        np.testing.assert_allclose(pm1 * layer.scale[:, None, None, None], want, rtol=1e-6, atol=0)
        np.testing.assert_array_equal(layer.bias, block.conv.bias.detach().numpy())


def test_random_init_source_is_reproducible_calibrated_and_checkpoints_are_checked(tmp_path):
    a, meta = load_source_model("nin_xnornet", random_init=True)
    b, _ = load_source_model("nin_xnornet", random_init=True)
    assert meta["xnorpipe.random_init"] == "true" and meta["xnorpipe.random_calibration"] == "synthetic:0"
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert not a.training
    # calibrated: the statistics are measured, and the logits depend on the image
    bn = a.features[1].bn
    assert bn.momentum == 0.1 and not torch.all(bn.running_mean == 0) and not torch.all(bn.running_var == 1)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = a(x), DeployModule(fold_model(a, arch="nin_xnornet"))(x)
    assert_outputs_depend_on_input(want.numpy())
    assert torch.equal(want.argmax(1), got.argmax(1)) and torch.allclose(want, got, rtol=1e-4, atol=1e-4)
    with pytest.raises(XnorpipeError, match="--random-init"):
        load_source_model("nin_xnornet", tmp_path / "missing.pth.tar")
