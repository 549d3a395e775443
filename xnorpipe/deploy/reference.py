"""Reference of the `xnorpipe::XnorConv2d` v1 contract (shared/docs/XNORCONV2D.md) in PyTorch.

Slow and obviously right: every runtime (ONNX function, C++ and CUDA kernels) is tested
bit-exactly against it. The integer tap sum is computed exactly in float64, then
`scale * sum + bias` in float32 as two separate roundings (kernels must not fuse them).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xnorpipe.deploy.packing import unpack_weights


def binarize_input(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """+1 where x >= threshold[c], else -1 (NaN compares false -> -1)."""
    return torch.where(x >= threshold.view(1, -1, 1, 1), 1.0, -1.0).to(x.dtype)


def xnor_conv2d_pm1(
    x: torch.Tensor,
    w_pm1: torch.Tensor,
    threshold: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    relu: bool = False,
) -> torch.Tensor:
    """The contract on weights already unpacked to +-1 [M, C/group, kH, kW].

    The tap sum runs in w_pm1's dtype: exact in float64, and in float32 while |sum| < 2**24.
    """
    xb = binarize_input(x, threshold).to(w_pm1.dtype)
    top, left, bottom, right = pads
    xb = F.pad(xb, (left, right, top, bottom))  # zero padding of the +-1 tensor
    s = F.conv2d(xb, w_pm1, stride=tuple(strides), dilation=tuple(dilations), groups=group).float()
    y = s * scale.view(1, -1, 1, 1)
    y = y + bias.view(1, -1, 1, 1)  # a separate rounding: no fused multiply-add
    return torch.clamp_min(y, 0.0) if relu else y


def xnor_conv2d(
    x: torch.Tensor,
    w_packed: np.ndarray,
    threshold: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    relu: bool = False,
) -> torch.Tensor:
    """X float32 [N, C, H, W] -> Y float32 [N, M, Ho, Wo]; pads are [top, left, bottom, right]."""
    x = torch.as_tensor(x, dtype=torch.float32)
    c = x.shape[1]
    if c % group:
        raise ValueError(f"channels {c} not divisible by group {group}")
    wb = torch.from_numpy(unpack_weights(np.asarray(w_packed), c // group)).double()
    return xnor_conv2d_pm1(x, wb, torch.as_tensor(threshold, dtype=torch.float32),
                           torch.as_tensor(scale, dtype=torch.float32),
                           torch.as_tensor(bias, dtype=torch.float32), strides=strides, pads=pads,
                           dilations=dilations, group=group, relu=relu)
