"""The seed's four architectures, the model registry and the binarization, forward and backward."""

import pytest
import torch

from xnorpipe.errors import XnorpipeError
from xnorpipe.models import (
    ARCHS,
    MAX_PARAMETERS,
    build_model,
    get_model_spec,
    model_names,
    plain_model_kwargs,
    register_model,
)
from xnorpipe.models.nin import NIN_GC_GROUPS, NIN_GROUPS, BinaryBlock, FloatBlock
from xnorpipe.nn import BinaryConv2d, ChannelShuffle, binarize_activation, binarize_weight, sign

SEED_PARAMS = {"nin": 969822, "nin_gc": 722462, "nin_xnornet": 674910, "nin_gc_xnornet": 589854}
SEED_LAYER_PARAMS = {  # conv weight + bias per block, from SEED.md
    "nin": [14592, 30880, 15456, 460992, 37056, 37056, 331968, 37056, 1930],
    "nin_xnornet": [14592, 30880, 15456, 166080, 37056, 37056, 331968, 37056, 1930],
    "nin_gc": [19456, 33024, 33024, 205312, 66048, 66048, 148480, 132096, 10250],
    "nin_gc_xnornet": [19456, 33024, 33024, 74240, 66048, 66048, 148480, 132096, 10250],
}


NIN_ARCHS = sorted(SEED_PARAMS)


@pytest.mark.parametrize("arch", NIN_ARCHS)
def test_param_counts_match_seed(arch):
    model = build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == SEED_PARAMS[arch]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.weight.numel() + m.bias.numel() for m in convs] == SEED_LAYER_PARAMS[arch]


@pytest.mark.parametrize("arch", NIN_ARCHS)
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
    groups = NIN_GC_GROUPS if arch.startswith("nin_gc") else NIN_GROUPS
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


# ------------------------------------------------------------ scaling="none"


def test_scaling_none_weights_are_exactly_sign_and_gradient_straight_through():
    torch.manual_seed(0)
    conv = BinaryConv2d(4, 3, 3, padding=1, bias=False, scaling="none")
    with torch.no_grad():
        conv.weight.mul_(3.0)  # some weights outside [-1, 1]: the gradient still passes there
        conv.weight[0, 0, 0, 0] = 0.0
    wb = conv.binary_weight()
    assert set(wb.unique().tolist()) == {-1.0, 1.0}
    assert wb[0, 0, 0, 0] == 1.0  # sign(0) = +1
    assert torch.equal(wb, torch.where(conv.weight >= 0, 1.0, -1.0))
    g = torch.randn_like(wb)
    wb.backward(g)
    assert torch.equal(conv.weight.grad, g)  # identity: no clamp, no scale, no centring
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, sign(conv.weight.detach()), padding=1))
    # ... unlike the default, whose weights are scaled by alpha
    xnor = BinaryConv2d(4, 3, 3, padding=1, bias=False)
    xnor.load_state_dict(conv.state_dict())
    assert not torch.equal(xnor.binary_weight().abs(), torch.ones_like(wb))


def test_scaling_validated_and_shown():
    assert "scaling" not in repr(BinaryConv2d(2, 2, 1))
    assert "scaling='none'" in repr(BinaryConv2d(2, 2, 1, scaling="none"))
    assert BinaryConv2d(2, 2, 1).scaling == "xnor"
    for bad in ("XNOR", "", None, 1):
        with pytest.raises(ValueError, match="scaling must be one of xnor, none"):
            BinaryConv2d(2, 2, 1, scaling=bad)
    with pytest.raises(ValueError, match="scaling must be one of"):
        binarize_weight(torch.ones(1, 1, 1, 1), "sign")


def test_default_scaling_is_the_seed_binarization():
    torch.manual_seed(1)
    conv = BinaryConv2d(6, 4, 3)
    assert torch.equal(conv.binary_weight(), binarize_weight(conv.weight))
    assert torch.equal(binarize_weight(conv.weight), binarize_weight(conv.weight, "xnor"))


# ------------------------------------------------------------------ registry


def test_registry_names_specs_and_recipes():
    names = model_names()
    assert names == sorted(ARCHS)
    assert {"nin", "nin_gc", "nin_xnornet", "nin_gc_xnornet", "birealnet18", "birealnet18_cifar"} <= set(names)
    assert list(ARCHS)[:4] == ["nin", "nin_gc", "nin_xnornet", "nin_gc_xnornet"]
    for arch, epochs in (("nin", 200), ("nin_gc", 200), ("nin_xnornet", 200), ("nin_gc_xnornet", 150)):
        spec = get_model_spec(arch)
        assert (spec.name, spec.input_shape, spec.epochs, spec.lr) == (arch, (3, 32, 32), epochs, 0.1)
        assert spec.binary == arch.endswith("xnornet")
        assert dict(spec.defaults) == {"cfg": None, "groups": None}
    spec = get_model_spec("birealnet18")
    assert spec.input_shape == (3, 224, 224) and spec.image_size == (224, 224) and spec.binary
    assert dict(spec.defaults) == {"num_classes": 10, "width": 64, "scaling": "xnor"}
    assert get_model_spec("birealnet18_cifar").input_shape == (3, 32, 32)


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(XnorpipeError) as info:
        get_model_spec("resnet18")
    assert "unknown arch 'resnet18'" in info.value.message and "birealnet18_cifar" in info.value.message
    with pytest.raises(XnorpipeError, match="unknown arch"):
        build_model("resnet18", width=3)


@pytest.mark.parametrize("arch, kwargs, match", [
    ("birealnet18_cifar", {"widht": 8}, "unknown model argument 'widht' (it takes num_classes, width, scaling)"),
    ("birealnet18_cifar", {"width": "8"}, "width must be an integer in 1..4096, got '8'"),
    ("birealnet18_cifar", {"width": True}, "width must be an integer"),
    ("birealnet18_cifar", {"width": 0}, "width must be an integer"),
    ("birealnet18_cifar", {"num_classes": 10 ** 9}, "num_classes must be an integer in 1..100000"),
    ("birealnet18_cifar", {"scaling": "binary"}, "scaling must be one of xnor, none"),
    ("birealnet18_cifar", {"width": 2048}, f"over the limit of {MAX_PARAMETERS:,}"),
    ("nin", {"cfg": [2 ** 20] * 8}, "parameters, over the limit"),
    ("nin", {"cfg": [16, "a"] + [16] * 6}, "NIN cfg must be positive integers"),
    ("nin", {"groups": [0] * 9}, "NIN groups must be positive integers"),
    ("nin", {"cfg": [16] * 3}, "NIN needs 8 cfg widths"),
    ("nin", {"width": 8}, "unknown model argument 'width' (it takes cfg, groups)"),
])
def test_bad_model_arguments_give_one_line(arch, kwargs, match):
    with pytest.raises(XnorpipeError) as info:
        build_model(arch, **kwargs)
    message = info.value.message
    assert message.startswith(f"{arch}: ") and match in message and "\n" not in message, message


def test_nin_positional_cfg_groups_still_work():
    cfg, groups = [16] * 8, [1, 2, 2, 2, 2, 2, 2, 2, 1]
    a = build_model("nin_gc_xnornet", cfg, groups)
    assert (a.cfg, a.groups) == (cfg, groups)
    b = build_model("nin_gc_xnornet", cfg=cfg, groups=groups)
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]
    assert build_model("nin", None, None).cfg == build_model("nin").cfg  # None: the seed's
    with pytest.raises(XnorpipeError, match="cfg given twice"):
        build_model("nin", cfg, cfg=cfg)
    with pytest.raises(XnorpipeError, match="unknown model argument 'cfg'"):
        build_model("birealnet18_cifar", cfg)


def test_building_draws_the_same_random_numbers_as_the_builder():
    """The parameter-count probe on the meta device must not consume the RNG: a seeded build is
    the builder's own init, bit for bit (NIN's weights as before the registry existed)."""
    for arch in ("nin_xnornet", "birealnet18_cifar"):
        torch.manual_seed(3)
        a = build_model(arch)
        torch.manual_seed(3)
        b = get_model_spec(arch).builder()
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture
def scratch_registry():
    """Registrations made by a test are removed after it."""
    before = dict(ARCHS)
    yield
    ARCHS.clear()
    ARCHS.update(before)


def test_register_a_user_model(scratch_registry):
    @register_model("tiny_binary", input_shape=(3, 16, 16), binary=True, epochs=3, lr=0.05)
    def tiny_binary(*, num_classes: int = 10, width: int = 8):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.BatchNorm2d(width),
                                    BinaryConv2d(width, num_classes, 3), torch.nn.AdaptiveAvgPool2d(1),
                                    torch.nn.Flatten())
        model.num_classes = num_classes
        return model

    spec = get_model_spec("tiny_binary")
    assert (spec.input_shape, spec.binary, spec.epochs, spec.lr) == ((3, 16, 16), True, 3, 0.05)
    assert dict(spec.defaults) == {"num_classes": 10, "width": 8}
    assert "tiny_binary" in model_names()
    model = build_model("tiny_binary", width=4, num_classes=5)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("tiny_binary", binary=True, epochs=1, lr=0.1)(tiny_binary)


def test_register_model_refuses_builders_it_cannot_record(scratch_registry):
    def positional_only(width):
        return torch.nn.Identity()

    def star_args(*layers):
        return torch.nn.Identity()

    for builder in (positional_only, star_args):
        with pytest.raises(ValueError, match="keywords with defaults"):
            register_model("x_" + builder.__name__, binary=False, epochs=1, lr=0.1)(builder)
    with pytest.raises(ValueError, match="input_shape"):
        register_model("x_shape", input_shape=(32, 32), binary=False, epochs=1, lr=0.1)(lambda: None)
    with pytest.raises(ValueError, match="recipe"):
        register_model("x_lr", binary=False, epochs=1, lr=float("nan"))(lambda: None)

    @register_model("x_no_classes", binary=False, epochs=1, lr=0.1)
    def no_classes():
        return torch.nn.Identity()

    with pytest.raises(XnorpipeError, match=r"output is not logits \[N, classes\] \(give it a num_classes"):
        build_model("x_no_classes")


def test_plain_model_kwargs():
    assert plain_model_kwargs({"width": 8, "cfg": (1, 2), "scaling": "none", "p": 0.5, "b": True}, "w") == \
        {"width": 8, "cfg": [1, 2], "scaling": "none", "p": 0.5, "b": True}
    for bad, match in [
        ([("width", 8)], "is a list, not a dict"),
        ({"width": torch.tensor(8)}, "'width' holds a Tensor"),
        ({"width": {"a": 1}}, "'width' holds a dict"),
        ({"cfg": [[1]]}, "'cfg' holds a list"),
        ({1: 2}, "has a key that is not a name"),
        ({"a b": 2}, "has a key that is not a name"),
        ({"cfg": list(range(5000))}, "list of 5000 items"),
        ({"p": float("nan")}, "'p' is not finite"),
        ({"s": "x" * 1000}, "string of 1000 characters"),
    ]:
        with pytest.raises(XnorpipeError) as info:
            plain_model_kwargs(bad, "ckpt.pth.tar")
        assert info.value.message.startswith("ckpt.pth.tar: model_kwargs ") and match in info.value.message
