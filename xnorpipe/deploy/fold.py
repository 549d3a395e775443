"""Fold a trained NIN-family model (eval mode) into the deploy IR (docs/XNORCONV2D.md).

Binary blocks `relu(conv(sign(bn(x)), alpha * sign(w)) + b)` become `BinaryConv` layers:
a per-input-channel threshold, packed sign bits, per-filter scale alpha and bias b.

The threshold is not the textbook `mu - beta * sqrt(var + eps) / gamma`: PyTorch evaluates
bn(x) in float32 and a bit decided there can differ from `x >= tau` for inputs within a few
ulps of tau. bn(x) in float32 is monotone in x (each rounding step is), so the exact decision
boundary is a single float32 that we find by bisection over the float32 line, evaluating the
model's own BatchNorm. `x >= threshold` then reproduces sign(bn(x)) for every finite x.

Folding is pure: it reads a model (xnorpipe.sources loads checkpoints and random inits) and
refuses non-finite weights or BatchNorm statistics, on which the forms may disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from xnorpipe.deploy import ir
from xnorpipe.deploy.packing import pack_weights, unpack_weights
from xnorpipe.errors import XnorpipeError
from xnorpipe.models.binary import BinaryActivation, BinaryConv2d
from xnorpipe.models.nin import BinaryBlock, ChannelShuffle, FloatBlock

# Evaluate candidates in blocks of this many pixels so BatchNorm takes the same vectorised
# CPU path as in a real layer (a 1x1 map could take a scalar tail with different rounding).
_PROBE_PIXELS = 64


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pads(padding) -> tuple[int, int, int, int]:
    if isinstance(padding, str):
        raise XnorpipeError(f"cannot fold conv padding={padding!r}; use explicit integers")
    ph, pw = _pair(padding)
    return (ph, pw, ph, pw)


def _float_keys_to_values(keys: np.ndarray) -> np.ndarray:
    """Inverse of _float_keys: ordered int64 keys -> float32 values."""
    keys = keys.astype(np.int64)
    bits = np.where(keys >= 0, keys, (-keys - 1) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def _float_keys(values: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys whose order is the float order (-0.0 sorts just below +0.0)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.int64)
    negative = bits >= 0x80000000
    return np.where(negative, -(bits & 0x7FFFFFFF) - 1, bits)


def _bn_sign_positive(bn: nn.BatchNorm2d, x: np.ndarray) -> np.ndarray:
    """sign(bn(x)) == +1 for one candidate value per channel, as the trained model computes it."""
    c = x.shape[0]
    probe = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    probe = probe.view(1, c, 1, 1).expand(1, c, 1, _PROBE_PIXELS).contiguous()
    with torch.no_grad():
        y = F.batch_norm(probe, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                         False, 0.0, bn.eps)
    return (y >= 0).all(dim=(0, 2, 3)).numpy()


def _smallest_true(predicate, lo_keys: np.ndarray, hi_keys: np.ndarray) -> np.ndarray:
    """Per channel, the smallest float32 in [lo, hi] where a monotone predicate turns true.

    predicate(lo) must be False and predicate(hi) True (checked by the caller).
    """
    lo, hi = lo_keys.copy(), hi_keys.copy()
    while np.any(hi - lo > 1):
        mid = lo + (hi - lo) // 2
        ok = predicate(_float_keys_to_values(mid))
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    return _float_keys_to_values(hi)


def bn_thresholds(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Per input channel: threshold and whether the channel's weights must be inverted.

    gamma > 0: sign(bn(x)) = +1 iff x >= threshold (smallest x with bn(x) >= 0).
    gamma < 0: bn is decreasing, sign = +1 iff x <= t. We invert that channel's weight bits
      and binarize with bit = (x >= threshold), threshold = smallest x with bn(x) < 0, so
      bit = NOT sign exactly, also at equality (x == t gives bn >= 0, original +1, bit -1).
    gamma == 0: bn is the constant beta: threshold -inf (always +1) if beta >= 0, else +inf.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise XnorpipeError("cannot fold a BatchNorm without running statistics")
    gamma = (bn.weight.detach() if bn.weight is not None else torch.ones(bn.num_features)).float().numpy()
    beta = (bn.bias.detach() if bn.bias is not None else torch.zeros(bn.num_features)).float().numpy()
    c = gamma.shape[0]
    invert = gamma < 0
    flat = gamma == 0

    def bit(x: np.ndarray) -> np.ndarray:
        positive = _bn_sign_positive(bn, x)
        return np.where(invert, ~positive, positive)

    lo = np.full(c, _float_keys(np.float32(-np.inf)), dtype=np.int64)
    hi = np.full(c, _float_keys(np.float32(np.inf)), dtype=np.int64)
    # Search the finite floats only: bn(+-inf) may be NaN.
    lo_vals = _float_keys_to_values(lo + 1)
    hi_vals = _float_keys_to_values(hi - 1)
    bit_lo, bit_hi = bit(lo_vals), bit(hi_vals)
    threshold = np.empty(c, dtype=np.float32)
    # Channels whose bit is constant over all finite floats (saturation): -inf or +inf.
    always = bit_lo & ~flat
    never = ~bit_hi & ~flat
    search = ~flat & ~always & ~never
    if np.any(search):
        found = _smallest_true(bit, lo + 1, hi - 1)
        threshold[search] = found[search]
    threshold[always] = -np.inf
    threshold[never] = np.inf
    threshold[flat] = np.where(beta[flat] >= 0, -np.inf, np.inf)
    invert[flat] = False
    return threshold.astype(np.float32), invert


def _fold_float(block: FloatBlock) -> ir.FloatConv:
    conv, bn = block.conv, block.bn
    with torch.no_grad():
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
        k = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = (w * k.view(-1, 1, 1, 1)).float().numpy()
        bias = ((b - bn.running_mean.double()) * k + beta).float().numpy()
    return ir.FloatConv(weight=weight, bias=bias, strides=_pair(conv.stride), pads=_pads(conv.padding),
                        dilations=_pair(conv.dilation), group=conv.groups, relu=True)


def _fold_binary(block: BinaryBlock) -> ir.BinaryConv:
    conv: BinaryConv2d = block.conv
    threshold, invert = bn_thresholds(block.bn)
    with torch.no_grad():
        wb = conv.binary_weight().detach().float()  # alpha_m * sign, sign(0) = +1
    m, cg = wb.shape[:2]
    positive = (wb >= 0).numpy()
    # alpha is |wb| of any tap; taking the max is robust to a filter whose alpha is 0.
    scale = wb.abs().reshape(m, -1).amax(dim=1).numpy().astype(np.float32)
    # Invert the bits of inverted input channels: group-local channel j of filter m belongs
    # to global input channel g*cg + j, g = m // (M / group).
    group = conv.groups
    per_group = m // group
    global_channel = (np.arange(m)[:, None] // per_group) * cg + np.arange(cg)[None, :]
    flip = invert[global_channel]  # [M, cg]
    positive = positive ^ flip[:, :, None, None]
    bias = (conv.bias.detach().float().numpy() if conv.bias is not None
            else np.zeros(m, dtype=np.float32))
    return ir.BinaryConv(weight_bits=pack_weights(positive), threshold=threshold, scale=scale,
                         bias=bias.astype(np.float32), kernel_shape=_pair(conv.kernel_size),
                         strides=_pair(conv.stride), pads=_pads(conv.padding),
                         dilations=_pair(conv.dilation), group=group, relu=True)


def _fold_layer(module: nn.Module, path: str, problems: list[str]) -> list[ir.Layer]:
    """The IR layers of `module` (at module path `path`); folded non-finite values go to `problems`."""
    if isinstance(module, BinaryBlock):
        return [_checked(_fold_binary(module), path, problems)]
    if isinstance(module, FloatBlock):
        return [_checked(_fold_float(module), path, problems)]
    if isinstance(module, ChannelShuffle):
        return [ir.ChannelShuffle(groups=module.groups)]
    if isinstance(module, nn.MaxPool2d):
        if module.ceil_mode or _pair(module.dilation) != (1, 1):
            raise XnorpipeError("cannot fold MaxPool2d with ceil_mode or dilation")
        return [ir.MaxPool(kernel_shape=_pair(module.kernel_size),
                           strides=_pair(module.stride or module.kernel_size),
                           pads=_pads(module.padding))]
    if isinstance(module, nn.AvgPool2d):
        if module.ceil_mode or not module.count_include_pad or module.divisor_override:
            raise XnorpipeError("cannot fold AvgPool2d other than count_include_pad=True, floor mode")
        return [ir.AvgPool(kernel_shape=_pair(module.kernel_size),
                           strides=_pair(module.stride or module.kernel_size),
                           pads=_pads(module.padding))]
    if isinstance(module, nn.Sequential):
        return [layer for name, child in module.named_children()
                for layer in _fold_layer(child, f"{path}.{name}", problems)]
    if isinstance(module, (nn.Identity, BinaryActivation)):
        return []
    raise XnorpipeError(f"cannot fold layer {type(module).__name__}")


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names (module path . tensor) of the float parameters and buffers holding NaN or inf."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _describe_nonfinite(model: nn.Module, name: str) -> str:
    t = dict([*model.named_parameters(), *model.named_buffers()])[name].detach()
    layer, _, tensor = name.rpartition(".")
    kind = type(model.get_submodule(layer)).__name__ if layer else type(model).__name__
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return f"layer {layer or '<model>'} ({kind}), tensor {tensor}: {nan} NaN and {inf} inf of {t.numel()} values"


# What a folded layer may hold: thresholds may be +-inf (saturated or gamma == 0 channels),
# nothing may be NaN, and weights, scales and biases are finite.
_FINITE_FIELDS = {ir.FloatConv: ("weight", "bias"), ir.BinaryConv: ("scale", "bias")}


def _checked(layer: ir.FloatConv | ir.BinaryConv, path: str, problems: list[str]) -> ir.FloatConv | ir.BinaryConv:
    """Finite source tensors can still fold to non-finite ones (a negative running_var, an
    overflowing gamma / sqrt(var + eps)); `fold_model` reports them like non-finite sources."""
    bad = [f for f in _FINITE_FIELDS[type(layer)] if not np.isfinite(getattr(layer, f)).all()]
    if isinstance(layer, ir.BinaryConv) and np.isnan(layer.threshold).any():
        bad.append("threshold")
    if bad:
        problems.append(f"layer {path}: folded {', '.join(bad)} not finite (running_var < 0, "
                        "or gamma / sqrt(running_var + eps) overflows float32?)")
    return layer


# ------------------------------------------------------------------------- channel shuffles

# Layers a channel permutation passes through unchanged: they act on each channel alone.
_CHANNELWISE = (ir.MaxPool, ir.AvgPool)


def _permute_outputs(layer: ir.FloatConv | ir.BinaryConv, order: np.ndarray):
    """`layer` (group 1) whose output channel c is the old channel order[c]."""
    if isinstance(layer, ir.FloatConv):
        return dataclasses.replace(layer, weight=layer.weight[order], bias=layer.bias[order])
    return dataclasses.replace(layer, weight_bits=layer.weight_bits[order], scale=layer.scale[order],
                               bias=layer.bias[order])


def _permute_inputs(layer: ir.FloatConv | ir.BinaryConv, order: np.ndarray):
    """`layer` (group 1) that reads input channel order[c] where it read channel c: its input
    channel order[c] takes the weights (and threshold) of its old channel c."""
    inverse = np.argsort(order)
    if isinstance(layer, ir.FloatConv):
        return dataclasses.replace(layer, weight=layer.weight[:, inverse])
    positive = unpack_weights(layer.weight_bits, layer.in_channels)[:, inverse] > 0
    return dataclasses.replace(layer, weight_bits=pack_weights(positive), threshold=layer.threshold[inverse])


def _conv_before(layers: list, i: int) -> int | None:
    """Index of the conv whose output reaches layers[i] through channel-wise layers only."""
    j = i - 1
    while j >= 0 and isinstance(layers[j], _CHANNELWISE):
        j -= 1
    return j if j >= 0 and isinstance(layers[j], (ir.FloatConv, ir.BinaryConv)) else None


def _conv_after(layers: list, i: int) -> int | None:
    """Index of the conv that reads layers[i]'s output through channel-wise layers only."""
    j = i + 1
    while j < len(layers) and isinstance(layers[j], _CHANNELWISE):
        j += 1
    return j if j < len(layers) and isinstance(layers[j], (ir.FloatConv, ir.BinaryConv)) else None


def fold_shuffles(model: ir.DeployModel) -> ir.DeployModel:
    """The model with its channel shuffles folded into the convolutions around them.

    A shuffle is a permutation of channels, and pools act on each channel alone, so it moves
    into, in this order of preference:
    - a group-1 producer: its filters, scales and biases are permuted (exact);
    - a grouped binary producer with as many groups as the shuffle: `shuffle_output`, the
      packed-bits ops' output shuffle (exact: the same values, written in shuffled order). No
      permutation of filters can do this: a consumer group reads channels of every producer
      group, so no channel order makes both layers' groups contiguous;
    - a group-1 consumer: its input channels (weights, and a binary layer's thresholds) are
      permuted. Exact for a binary consumer (integer sums); a float consumer adds the same
      products in another order, a float rounding difference.
    Any other shuffle stays. The binary layers then pass bits to each other (packed-bits).
    """
    layers = list(model.layers)
    i = 0
    while i < len(layers):
        shuffle = layers[i]
        if not isinstance(shuffle, ir.ChannelShuffle):
            i += 1
            continue
        before, after = _conv_before(layers, i), _conv_after(layers, i)
        producer = layers[before] if before is not None else None
        consumer = layers[after] if after is not None else None
        channels = (producer.out_channels if producer is not None
                    else consumer.in_channels if consumer is not None else None)
        order = ir.shuffle_order(channels, shuffle.groups) if channels is not None else None
        if producer is not None and producer.group == 1:
            layers[before] = _permute_outputs(producer, order)
        elif (isinstance(producer, ir.BinaryConv) and producer.group == shuffle.groups
              and not producer.shuffle_output):
            layers[before] = dataclasses.replace(producer, shuffle_output=True)
        elif consumer is not None and consumer.group == 1:
            layers[after] = _permute_inputs(consumer, order)
        else:
            i += 1
            continue
        del layers[i]
    return dataclasses.replace(model, layers=layers, metadata=dict(model.metadata))


def default_classes() -> tuple[str, ...]:
    try:
        from xnorpipe.data import CLASSES  # the data module's names, when it is installed
        return tuple(CLASSES)
    except ImportError:
        return ("airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck")


def fold_model(model: nn.Module, *, arch: str, classes: Iterable[str] | None = None,
               metadata: Mapping[str, str] | None = None, allow_nonfinite: bool = False,
               channel_shuffles: bool = True) -> ir.DeployModel:
    """Fold a NIN-family model (eval-mode semantics: BN running statistics) into the IR.

    `channel_shuffles` folds the channel shuffles into the layers around them (`fold_shuffles`);
    False keeps them as layers (the unfolded IR, for comparison).

    NaN or inf in a weight or a BatchNorm statistic (or a fold that overflows) is refused with
    one line naming the layer and the tensor: they are outside the contract's arithmetic (ONNX
    leaves Max/Relu of NaN open, a NaN weight has no sign bit), so forms and runtimes may
    disagree on them. `allow_nonfinite` folds them anyway and lists them in the
    `xnorpipe.nonfinite` metadata.
    """
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise XnorpipeError(f"{type(model).__name__}: expected a NIN-family model with .features")
    sources = nonfinite_tensors(model)
    if sources and not allow_nonfinite:
        more = f" (and {len(sources) - 1} more tensors)" if len(sources) > 1 else ""
        raise XnorpipeError(f"non-finite values in {_describe_nonfinite(model, sources[0])}{more}: the "
                            "exported forms may disagree on them; fix the model, or pass --allow-nonfinite")
    problems: list[str] = []
    layers = _fold_layer(features, "features", problems)
    if problems and not allow_nonfinite:
        more = f" (and {len(problems) - 1} more layers)" if len(problems) > 1 else ""
        raise XnorpipeError(f"{problems[0]}{more}; pass --allow-nonfinite to export anyway")
    layers.append(ir.Flatten())
    metadata = dict(metadata or {})
    if sources or problems:  # folded non-finite values from non-finite sources are no news
        metadata["xnorpipe.nonfinite"] = "; ".join(sources or problems)
    deploy = ir.DeployModel(arch=arch, layers=layers,
                            classes=tuple(classes) if classes is not None else default_classes(),
                            metadata=metadata)
    return fold_shuffles(deploy) if channel_shuffles else deploy
