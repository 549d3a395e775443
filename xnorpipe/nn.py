"""xnorpipe's public layers: build a binary model from these and `xnorpipe.export` deploys it.

XNOR-Net binarization as the seed trains it (sign convention everywhere: x >= 0 -> +1).
BinaryConv2d's `scaling` picks the weight binarization: "xnor" (the seed's, default) or "none"
(plain sign(w), no scale: for nets with a BatchNorm right after the conv, which absorbs any
per-filter scale anyway).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else -1 (torch.sign would give 0 at 0; a bit has no zero)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _SignActivation(torch.autograd.Function):
    """Forward sign; backward passes the gradient where |x| < 1 and zeroes it elsewhere."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() < 1).to(grad.dtype)


class _SignWeight(torch.autograd.Function):
    """Forward sign; identity straight-through backward."""

    @staticmethod
    def forward(ctx, w):
        return sign(w)

    @staticmethod
    def backward(ctx, grad):
        return grad


def binarize_activation(x: torch.Tensor) -> torch.Tensor:
    return _SignActivation.apply(x)


SCALINGS = ("xnor", "none")


def binarize_weight(w: torch.Tensor, scaling: str = "xnor") -> torch.Tensor:
    """Seed weight binarization ("xnor"): alpha * sign(clamp(w - mean_over_in_channels(w), -1, 1)).

    alpha is the mean |w| of each output filter over (in/groups)*kH*kW, not detached.
    "none": sign(w), exactly +-1, straight-through gradient.
    """
    if scaling == "none":
        return _SignWeight.apply(w)
    if scaling != "xnor":
        raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    centred = (w - w.mean(dim=1, keepdim=True)).clamp(-1.0, 1.0)
    alpha = centred.abs().mean(dim=(1, 2, 3), keepdim=True)
    return _SignWeight.apply(centred) * alpha


class BinaryActivation(nn.Module):
    def forward(self, x):
        return binarize_activation(x)


class BinaryConv2d(nn.Conv2d):
    """Conv2d whose weights are binarized on every forward: `scaling="xnor"` (default) the seed's
    centred sign with per-filter scale alpha, `scaling="none"` plain sign(w) (see binarize_weight).

    A subclass of Conv2d so it carries the same hyper-parameters; complexity.py counts its
    MACs separately as binary MACs (the seed's ptflops silently skipped them).
    """

    def __init__(self, *args, scaling: str = "xnor", **kwargs):
        if not isinstance(scaling, str) or scaling not in SCALINGS:
            raise ValueError(f"BinaryConv2d scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
        super().__init__(*args, **kwargs)
        self.scaling = scaling

    def binary_weight(self) -> torch.Tensor:
        return binarize_weight(self.weight, self.scaling)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.scaling == "xnor" else f"{s}, scaling={self.scaling!r}"

    def forward(self, x):
        return F.conv2d(x, self.binary_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: view(B, g, C/g, H, W) -> transpose(1, 2) -> view(B, C, H, W)."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self):
        return f"groups={self.groups}"
