"""Bi-Real-Net-18 (Liu et al., "Bi-Real Net", ECCV 2018): ResNet-18 with every 3x3 conv binary
and each given its own real-valued shortcut.

Written as a user would write it, from torch.nn and xnorpipe.nn layers only:
  stem (float) -> 4 stages of 2 basic blocks (widths w, 2w, 4w, 8w) -> AdaptiveAvgPool -> Linear.
A basic block is two units; a unit is `out = bn(conv(sign(x))); return out + shortcut(x)`: no
BatchNorm before the sign, the binary 3x3 conv's BatchNorm after it. The first unit of stages
2-4 halves the size and doubles the width, and its shortcut is AvgPool2d(2, 2) + float 1x1 conv +
BatchNorm (Bi-Real-Net's own code; the real-valued shortcut keeps the information that a
stride-2 binary conv alone would lose). 16 binary convs in all.
  birealnet18:       ImageNet stem, 224x224 input: Conv 7x7/2 (3->w) + BN + MaxPool 3/2.
  birealnet18_cifar: CIFAR stem, 32x32 input: Conv 3x3/1 (3->w) + BN.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from xnorpipe.models import register_model
from xnorpipe.nn import BinaryActivation, BinaryConv2d

MAX_WIDTH = 4096
MAX_CLASSES = 100_000

# Recipe for the existing trainer (SGD momentum 0.9, wd 1e-4, batch 100, lr x0.1 at 50/75 %).
# The paper trains with Adam from a real-valued initialisation; see the README for why lr 0.1.
RECIPE = dict(binary=True, epochs=200, lr=0.1)

NOTE_224 = (
    "the paper (ImageNet, 224x224, 1000 classes) gives 1.68e9 BOPs, 1.39e8 FLOPs, 1.63e8 OPs. BOPs: "
    "1.676e9 here too (the 16 binary 3x3 convs). FLOPs at 1000 classes (--model-arg num_classes=1000): "
    "7x7 stem conv 1.180e8 + three 1x1 shortcut convs 1.93e7 + Linear 5.1e5 = 1.378e8, 0.9 % under "
    "the paper's; counting its 1.5e6 shortcut additions too would give 1.393e8, but the paper's OPs "
    "(1.63e8, not 1.39e8 + 1.68e9/64 = 1.65e8) imply ~1.37e8 FLOPs, so its three figures do not agree "
    "to three digits and we count layers only. With the default 10 classes the Linear is 5.1e3: 1.373e8.")


def _positive_int(name: str, value, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise ValueError(f"{name} must be an integer in 1..{limit}, got {value!r}")
    return value


class BiRealUnit(nn.Module):
    """sign -> binary 3x3 conv -> BN, plus a real-valued shortcut (identity, or AvgPool2d(2, 2) +
    1x1 conv + BN where the size halves and the width changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, scaling: str = "xnor"):
        super().__init__()
        self.sign = BinaryActivation()
        self.conv = BinaryConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, scaling=scaling)
        self.bn = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            pool = [nn.AvgPool2d(2, 2)] if stride != 1 else []
            self.shortcut = nn.Sequential(*pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(self.sign(x)))
        return out + self.shortcut(x)


class BiRealBlock(nn.Module):
    """ResNet's basic block, each of its two 3x3 convs a unit with its own shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, scaling: str = "xnor"):
        super().__init__()
        self.unit1 = BiRealUnit(cin, cout, stride, scaling)
        self.unit2 = BiRealUnit(cout, cout, 1, scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit2(self.unit1(x))


class BiRealNet18(nn.Module):
    def __init__(self, stem: str, num_classes: int = 10, width: int = 64, scaling: str = "xnor"):
        super().__init__()
        _positive_int("num_classes", num_classes, MAX_CLASSES)
        _positive_int("width", width, MAX_WIDTH)
        self.num_classes, self.width = num_classes, width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        widths = [width, 2 * width, 4 * width, 8 * width]
        cin = width
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            stage = nn.Sequential(BiRealBlock(cin, cout, stride, scaling), BiRealBlock(cout, cout, 1, scaling))
            self.add_module(f"layer{i + 1}", stage)
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("birealnet18", input_shape=(3, 224, 224), note=NOTE_224, **RECIPE)
def birealnet18(*, num_classes: int = 10, width: int = 64, scaling: str = "xnor") -> BiRealNet18:
    """Bi-Real-Net-18 with the ImageNet stem; CIFAR images are resized to 224x224 for it."""
    return BiRealNet18("imagenet", num_classes, width, scaling)


@register_model("birealnet18_cifar", input_shape=(3, 32, 32), **RECIPE)
def birealnet18_cifar(*, num_classes: int = 10, width: int = 64, scaling: str = "xnor") -> BiRealNet18:
    """Bi-Real-Net-18 with a CIFAR stem (3x3/1 conv, no max-pool) on 32x32 images."""
    return BiRealNet18("cifar", num_classes, width, scaling)
