"""XNOR-Net binarization as the seed trains it (sign convention everywhere: x >= 0 -> +1)."""

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


def binarize_weight(w: torch.Tensor) -> torch.Tensor:
    """Seed weight binarization: alpha * sign(clamp(w - mean_over_in_channels(w), -1, 1)).

    alpha is the mean |w| of each output filter over (in/groups)*kH*kW, not detached.
    """
    centred = (w - w.mean(dim=1, keepdim=True)).clamp(-1.0, 1.0)
    alpha = centred.abs().mean(dim=(1, 2, 3), keepdim=True)
    return _SignWeight.apply(centred) * alpha


class BinaryActivation(nn.Module):
    def forward(self, x):
        return binarize_activation(x)


class BinaryConv2d(nn.Conv2d):
    """Conv2d whose weights are binarized (with per-filter scale alpha) on every forward.

    A subclass of Conv2d so it carries the same hyper-parameters; complexity.py counts its
    MACs separately as binary MACs (the seed's ptflops silently skipped them).
    """

    def binary_weight(self) -> torch.Tensor:
        return binarize_weight(self.weight)

    def forward(self, x):
        return F.conv2d(x, self.binary_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)
