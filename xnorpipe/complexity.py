"""Parameters, MACs and deployed size: the seed's counts, and binary/float ops as papers count them.

The seed used ptflops, which counts only module types it knows: a conv's MACs include one per
output for the bias; an affine BatchNorm costs 2 per input element; ReLU 1 per output element;
a pool 1 per input element; a Linear in*out plus out for the bias. BinaryConv2d was silently
skipped; we report its MACs separately as `binary_macs`, by the same rule as ptflops' conv (one
MAC per output for the bias).

The binary-network papers (XNOR-Net, Bi-Real-Net) count differently: `binary_ops` (their BOPs)
are the weight MACs of the binary convs, `float_ops` (their FLOPs) the weight MACs of the float
Conv2d and Linear layers (no biases; BatchNorm folds into those at deployment; pooling, additions
and activations are not counted), and `ops` = float_ops + binary_ops / 64 (64 binary MACs per
64-bit XNOR + popcount). Works for any model made of these layers, by forward hooks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from xnorpipe.deploy.packing import num_words
from xnorpipe.nn import BinaryConv2d


@dataclass
class Complexity:
    arch: str
    params: int
    macs_seed: int  # what the seed's ptflops printed
    binary_macs: int  # 1-bit MACs of the binary convs, which the seed omitted
    float32_bytes: int  # all parameters as float32
    packed_bytes: int  # deployed: BN folded, binary weights as 32-bit words + threshold/scale/bias
    binary_ops: int = 0  # the papers' BOPs: weight MACs of the binary convs
    float_ops: int = 0  # the papers' FLOPs: weight MACs of the float convs and linears
    input_shape: tuple[int, int, int] = (3, 32, 32)

    @property
    def ops(self) -> float:
        """The papers' OPs: float ops + binary ops / 64."""
        return self.float_ops + self.binary_ops / 64

    def as_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["ops"] = self.ops
        d["params_seed"] = format_params(self.params)
        d["macs_seed_str"] = format_macs(self.macs_seed)
        return d


def format_params(n: int) -> str:
    if n >= 10**6:
        return f"{round(n / 1e6, 2)} M"
    if n >= 10**3:
        return f"{round(n / 1e3, 2)} k"
    return str(n)


def format_macs(n: int) -> str:
    # The seed printed its float nets in GMac and its xnor nets in MMac.
    if n >= 10**8:
        return f"{round(n / 1e9, 2)} GMac"
    if n >= 10**6:
        return f"{round(n / 1e6, 2)} MMac"
    return f"{round(n / 1e3, 2)} KMac"


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    per_output = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    return out.numel() * per_output


def count(model: nn.Module, arch: str, input_shape=(3, 32, 32)) -> Complexity:
    """Counts of one image of `input_shape` (C, H, W) through `model`."""
    seed_macs = binary_macs = binary_ops = float_ops = 0

    def hook(m, inputs, out):
        nonlocal seed_macs, binary_macs, binary_ops, float_ops
        x = inputs[0]
        if isinstance(m, nn.Conv2d):
            weight_macs = _conv_macs(m, out)
            macs = weight_macs + (out.numel() if m.bias is not None else 0)
            if isinstance(m, BinaryConv2d):
                binary_macs += macs
                binary_ops += weight_macs
            else:
                seed_macs += macs
                float_ops += weight_macs
        elif isinstance(m, nn.Linear):
            weight_macs = x.numel() * m.out_features
            seed_macs += weight_macs + (m.out_features if m.bias is not None else 0)
            float_ops += weight_macs
        elif isinstance(m, nn.BatchNorm2d):
            seed_macs += x.numel() * (2 if m.affine else 1)
        elif isinstance(m, nn.ReLU):
            seed_macs += out.numel()
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            seed_macs += x.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Complexity(arch, params, seed_macs, binary_macs, params * 4, _packed_bytes(model),
                      binary_ops, float_ops, tuple(input_shape))


def _packed_bytes(model: nn.Module) -> int:
    """Bytes of the folded deploy weights: BN disappears into conv weights or thresholds."""
    total = 0
    for m in model.modules():
        if isinstance(m, BinaryConv2d):
            words = m.out_channels * m.kernel_size[0] * m.kernel_size[1] * num_words(m.in_channels // m.groups)
            total += 4 * (words + m.in_channels + 2 * m.out_channels)  # bits, threshold, scale, bias
        elif isinstance(m, nn.Conv2d):
            total += 4 * (m.weight.numel() + m.out_channels)  # BN folded into weight and bias
        elif isinstance(m, nn.Linear):
            total += 4 * (m.weight.numel() + m.out_features)
    return total
