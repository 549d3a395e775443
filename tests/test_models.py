"""The seed's four architectures and its binarization, forward and backward."""

import pytest
import torch

from xnorpipe.errors import XnorpipeError
from xnorpipe.models import ARCHS, build_model
from xnorpipe.models.binary import BinaryConv2d, binarize_activation, binarize_weight, sign
from xnorpipe.models.nin import BinaryBlock, ChannelShuffle, FloatBlock

SEED_PARAMS = {"nin": 969822, "nin_gc": 722462, "nin_xnornet": 674910, "nin_gc_xnornet": 589854}
SEED_LAYER_PARAMS = {  # conv weight + bias per block, from SEED.md
    "nin": [14592, 30880, 15456, 460992, 37056, 37056, 331968, 37056, 1930],
    "nin_xnornet": [14592, 30880, 15456, 166080, 37056, 37056, 331968, 37056, 1930],
    "nin_gc": [19456, 33024, 33024, 205312, 66048, 66048, 148480, 132096, 10250],
    "nin_gc_xnornet": [19456, 33024, 33024, 74240, 66048, 66048, 148480, 132096, 10250],
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_param_counts_match_seed(arch):
    model = build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == SEED_PARAMS[arch]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.weight.numel() + m.bias.numel() for m in convs] == SEED_LAYER_PARAMS[arch]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_block_structure(arch):
    model = build_model(arch)
    blocks = [m for m in model.modules() if isinstance(m, (FloatBlock, BinaryBlock))]
    assert len(blocks) == 9
    kinds = ["B" if isinstance(b, BinaryBlock) else "F" for b in blocks]
    assert "".join(kinds) == ("FBBBBBBBF" if ARCHS[arch].binary else "F" * 9)
    # layer 3 is 5x5 in the float nets, 3x3 in the xnor nets
    assert blocks[3].conv.kernel_size == ((3, 3) if ARCHS[arch].binary else (5, 5))
    # binary blocks normalise their *input*, float blocks their output
    for b in blocks:
        if isinstance(b, BinaryBlock):
            assert b.bn.num_features == b.conv.in_channels
            assert isinstance(b.conv, BinaryConv2d)
        else:
            assert b.bn.num_features == b.conv.out_channels
    shuffles = [m.groups for m in model.modules() if isinstance(m, ChannelShuffle)]
    groups = ARCHS[arch].groups
    assert shuffles == [g for g in groups[:-1] if g > 1]
    out = model.eval()(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10) and (out >= 0).all()  # ReLU on the logits, as the seed


def test_channel_shuffle_matches_definition():
    x = torch.arange(2 * 6 * 1 * 1, dtype=torch.float32).view(2, 6, 1, 1)
    y = ChannelShuffle(2)(x)
    assert y[0, :, 0, 0].tolist() == [0, 3, 1, 4, 2, 5]


def test_sign_convention_zero_is_plus_one():
    x = torch.tensor([-1.5, -0.0, 0.0, 1e-30, -1e-30])
    assert sign(x).tolist() == [-1, 1, 1, 1, -1]
    assert binarize_activation(x).tolist() == [-1, 1, 1, 1, -1]


def test_activation_gradient_zero_where_abs_ge_1():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.999, 1.0, 3.0], requires_grad=True)
    binarize_activation(x).backward(torch.full_like(x, 2.0))
    assert x.grad.tolist() == [0, 0, 2, 2, 2, 0, 0]


def test_weight_binarization_forward():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3) * 2
    wb = binarize_weight(w)
    centred = (w - w.mean(1, keepdim=True)).clamp(-1, 1)
    alpha = centred.abs().mean((1, 2, 3))
    for m in range(4):
        vals = wb[m].unique()
        assert set(vals.tolist()) <= {alpha[m].item(), -alpha[m].item()}
        assert torch.equal(wb[m] > 0, centred[m] >= 0)


def test_weight_binarization_backward_straight_through_with_alpha():
    torch.manual_seed(0)
    w = (torch.rand(2, 4, 1, 1) - 0.5).requires_grad_()  # inside [-1, 1]: clamp passes
    g = torch.randn(2, 4, 1, 1)
    binarize_weight(w).backward(g)
    # autograd of alpha * ste_sign(c), c = w - mean_c(w): d/dc = g * alpha + sign(c) * sum(g*sign(c)) / n
    wd = w.detach()
    c = wd - wd.mean(1, keepdim=True)
    s = sign(c)
    alpha = c.abs().mean((1, 2, 3), keepdim=True)
    dc = g * alpha + s * (g * s).sum((1, 2, 3), keepdim=True) / 4
    expected = dc - dc.mean(1, keepdim=True)
    torch.testing.assert_close(w.grad, expected)


def test_binary_conv_uses_binarized_weights():
    torch.manual_seed(0)
    conv = BinaryConv2d(8, 4, 3, padding=1)
    x = torch.randn(1, 8, 5, 5)
    ref = torch.nn.functional.conv2d(x, binarize_weight(conv.weight), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), ref)


def test_unknown_arch_and_bad_groups():
    with pytest.raises(XnorpipeError, match="unknown arch"):
        build_model("resnet")
    with pytest.raises(XnorpipeError, match="divisible"):
        build_model("nin_gc", groups=[1, 3, 1, 1, 1, 1, 1, 1, 1])
