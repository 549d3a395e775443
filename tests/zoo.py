"""Small binary models written as a user would, from xnorpipe.nn and torch.nn: the zoo the
generic fold is tested on (tests/test_zoo.py). Each builder returns a model for 3x16x16 images."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from xnorpipe.nn import BinaryActivation, BinaryConv2d, ChannelShuffle

INPUT_SHAPE = (3, 16, 16)


def bconv(cin, cout, k=3, stride=1, dilation=1, groups=1, scaling="xnor"):
    return BinaryConv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation,
                        groups=groups, bias=False, scaling=scaling)


class Head(nn.Module):
    def __init__(self, c, classes=10):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class Residual(nn.Module):
    """Bi-Real-Net units: sign -> binary conv -> BN, plus the float input (no BN before the sign)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.sign1, self.conv1, self.bn1 = BinaryActivation(), bconv(32, 32), nn.BatchNorm2d(32)
        self.sign2, self.conv2, self.bn2 = BinaryActivation(), bconv(32, 32), nn.BatchNorm2d(32)
        self.head = Head(32)

    def forward(self, x):
        x = self.stem(x)
        x = self.bn1(self.conv1(self.sign1(x))) + x
        x = torch.add(self.bn2(self.conv2(self.sign2(x))), x)
        return self.head(x)


class Downsample(nn.Module):
    """A strided binary unit whose shortcut is AvgPool + float 1x1 conv + BN."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.sign, self.conv, self.bn = BinaryActivation(), bconv(16, 32, stride=2), nn.BatchNorm2d(32)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.head = Head(32)

    def forward(self, x):
        x = self.stem(x)
        out = self.bn(self.conv(self.sign(x)))
        out += self.shortcut(x)
        return self.head(out)


class Concat(nn.Module):
    """Two binary branches concatenated on channels, then a binary conv reading the concat."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.BatchNorm2d(16), BinaryActivation(), bconv(16, 16, 3), nn.ReLU())
        self.b = nn.Sequential(nn.BatchNorm2d(16), BinaryActivation(), bconv(16, 24, 1), nn.ReLU())
        self.merge = nn.Sequential(nn.BatchNorm2d(40), BinaryActivation(), bconv(40, 32), nn.ReLU(),
                                   nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Conv2d(32, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.merge(torch.cat([self.a(x), self.b(x)], dim=1)))


class GroupedShuffle(nn.Module):
    """Grouped binary convs, shuffled once by hand (view/transpose/reshape) and once by the module."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.b1 = nn.Sequential(nn.BatchNorm2d(32), BinaryActivation(), bconv(32, 64, groups=4), nn.ReLU())
        self.b2 = nn.Sequential(nn.BatchNorm2d(64), BinaryActivation(), bconv(64, 64, 1, groups=4), nn.ReLU(),
                                ChannelShuffle(4))
        self.b3 = nn.Sequential(nn.BatchNorm2d(64), BinaryActivation(), bconv(64, 32), nn.ReLU())
        self.head = Head(32)

    def forward(self, x):
        x = self.b1(self.stem(x))
        b, c, h, w = x.shape
        x = x.view(b, 4, c // 4, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        return self.head(self.b3(self.b2(x)))


class SignWithoutBatchNorm(nn.Module):
    """Signs of Hardtanh'd and ReLU'd tensors, no BatchNorm before them; unscaled weights."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.Hardtanh())
        self.body = nn.Sequential(BinaryActivation(), bconv(32, 32, scaling="none"), nn.BatchNorm2d(32),
                                  nn.Hardtanh(), BinaryActivation(), bconv(32, 32), nn.ReLU())
        self.head = Head(32)

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


class BatchNormAfterBinary(nn.Module):
    """BN after each binary conv (folded into its scale and bias), then PReLU."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.PReLU(32))
        self.body = nn.Sequential(
            nn.BatchNorm2d(32), BinaryActivation(), bconv(32, 48), nn.BatchNorm2d(48), nn.PReLU(48),
            nn.BatchNorm2d(48), BinaryActivation(), bconv(48, 32), nn.BatchNorm2d(32), nn.PReLU())
        self.head = Head(32)

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


class LinearHead(nn.Module):
    """A flattened feature map into two Linear layers, with Dropout and Identity on the way."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.BatchNorm2d(32), BinaryActivation(), bconv(32, 32), nn.ReLU(), nn.AvgPool2d(2), nn.Identity())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class Dilated(nn.Module):
    """Binary convs with dilation 2; a global average pool written as a mean."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.body = nn.Sequential(nn.BatchNorm2d(32), BinaryActivation(), bconv(32, 32, dilation=2), nn.ReLU(),
                                  nn.BatchNorm2d(32), BinaryActivation(), bconv(32, 32, dilation=2), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


class Kernel5Stride2(nn.Module):
    """5x5 binary kernels, one of them with stride 2; F.relu in forward."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 5, padding=2), nn.BatchNorm2d(32))
        self.bn1, self.sign1, self.conv1 = nn.BatchNorm2d(32), BinaryActivation(), bconv(32, 40, 5, stride=2)
        self.bn2, self.sign2, self.conv2 = nn.BatchNorm2d(40), BinaryActivation(), bconv(40, 32, 5)
        self.head = Head(32)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.conv1(self.sign1(self.bn1(x))))
        x = self.conv2(self.sign2(self.bn2(x))).relu()
        return self.head(x)


ZOO = {cls.__name__: cls for cls in (Residual, Downsample, Concat, GroupedShuffle, SignWithoutBatchNorm,
                                     BatchNormAfterBinary, LinearHead, Dilated, Kernel5Stride2)}


def calibrated(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights; BatchNorm statistics measured on standard-normal images, then random gammas
    (a fifth negative) and betas: thresholds inside the activations' range, so the logits depend
    on the input."""
    torch.manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(32, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed)))
    g = torch.Generator().manual_seed(seed + 1)
    for m in norms:
        c = m.num_features
        sign = torch.where(torch.rand(c, generator=g) < 0.2, -1.0, 1.0)
        m.weight.data = sign * (0.5 + torch.rand(c, generator=g))
        m.bias.data = torch.randn(c, generator=g) * 0.2
        m.momentum = 0.1
    return model.eval()
