"""Built-in networks.

Every convolution and linear layer here reads a non-negative input (the image scaled to [0, 1], or the
output of a ReLU / max-pool / average-pool of a ReLU), so the `unsigned` operand formats can carry every
activation without clipping. BatchNorm follows a convolution directly (conv -> BN -> ReLU) so that
`dse.models.fold_batchnorm` can fold it into the convolution before quantization, as hardware does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 one-channel digits: 2 conv + 2 fc (about 0.2 M MACs)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * (image_size // 2) ** 2, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        out: torch.Tensor = self.fc2(x)
        return out


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 inputs (first conv padded by 2, as for MNIST), ReLU and max-pooling."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = (image_size // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


class PadShortcut(nn.Module):
    """He et al.'s option A shortcut: identity, subsampled by `stride`, the extra channels zero (no weights)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """He et al.'s CIFAR block; where the shape changes, a 1x1 conv + BN shortcut (option B, default) or
    the parameter-free zero-padding identity (option A, as in the paper's CIFAR ResNets)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if (stride != 1 or in_planes != planes) and shortcut == "A":
            self.shortcut = PadShortcut(in_planes, planes, stride)
        elif stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 (or 28x28) images (He et al. 2016, §4.2): 16/32/64 channels, n blocks per
    stage; `shortcut` "B" (1x1 projection convs where the shape changes: 6n+1 + 2 convs) or "A" (the
    paper's zero-padding identity: 6n+1 convs, e.g. ResNet-20 = 19 convolutions + 1 linear layer)."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, shortcut: str = "B") -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        out: torch.Tensor = self.fc(torch.flatten(x, 1))
        return out


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=False),
    )


class MobileNetTiny(nn.Module):
    """A small MobileNet-v1-style network: a stem conv, then depthwise-separable blocks
    (3x3 depthwise conv, groups = channels -> 1x1 pointwise conv), global average pool, fc."""

    # (output channels, stride) of each depthwise-separable block
    BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, width, 3)
        blocks, c = [], width
        for cout, stride in self.BLOCKS:
            blocks.append(nn.Sequential(_conv_bn(c, c, 3, stride, groups=c), _conv_bn(c, cout, 1)))
            c = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1)
        out: torch.Tensor = self.fc(torch.flatten(x, 1))
        return out
