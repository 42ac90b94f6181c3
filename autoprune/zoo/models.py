"""Built-in models: CIFAR-style ResNets, a small VGG, a MobileNetV2-style net, an MLP.

All take ``in_channels`` and ``num_classes`` and work for any input size at
least 8x8 (global average pooling before the classifier). Every ``forward`` maps a
batch-first image batch ``(N, in_channels, H, W)`` to logits ``(N, num_classes)``. Residual blocks carry a
``residual`` attribute that tells :mod:`autoprune.graph.prunable` whether the block can be
dropped (replaced by its identity shortcut).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a shortcut (1x1 conv when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.residual = stride == 1 and in_planes == planes
        if self.residual:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, section 4.2): depth = 6n + 2.

    Raises:
        ValueError: ``depth`` is not 6n + 2 with n >= 1.
    """

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n+2 (20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = [width, width * 2, width * 4]
        layers = []
        in_planes = width
        for i, p in enumerate(planes):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, p, stride))
                in_planes = p
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class VGGSmall(nn.Module):
    """A small VGG: conv-bn-relu stacks with max pooling, then a two-layer classifier."""

    cfg = (32, 32, "M", 64, 64, "M", 128, 128, "M")

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(c, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_planes * expand
        self.residual = stride == 1 and in_planes == out_planes
        self.expand = nn.Sequential(nn.Conv2d(in_planes, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True))
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileNetV2Small(nn.Module):
    """A MobileNetV2-style net (Sandler et al. 2018: inverted residuals, depthwise convs) sized for 28x28 / 32x32 inputs."""

    # (expand, out_channels, repeats, first stride)
    settings = ((1, 16, 1, 1), (4, 24, 2, 1), (4, 32, 3, 2), (4, 64, 2, 2), (4, 96, 1, 1))

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16, last: int = 256) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(inplace=True))
        blocks: list[nn.Module] = []
        c = width
        for expand, out, repeats, stride in self.settings:
            for i in range(repeats):
                blocks.append(InvertedResidual(c, out, stride if i == 0 else 1, expand))
                c = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True))
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class MLP(nn.Module):
    """A plain multi-layer perceptron on flattened inputs: ``(N, C, H, W)`` or ``(N, in_features)`` to ``(N, num_classes)``."""

    def __init__(self, in_features: int = 64, num_classes: int = 10, hidden: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        c = in_features
        for h in hidden:
            layers += [nn.Linear(c, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            c = h
        layers.append(nn.Linear(c, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _mlp(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return MLP(in_features=in_channels * input_size * input_size, num_classes=num_classes)


#: ``resnet<depth>``: a :class:`CifarResNet` of that depth, for any depth 6n + 2 (``resnet44``, ``resnet110``, ...).
_RESNET_NAME = re.compile(r"^resnet(\d+)$")


def resnet_depth(name: str) -> int | None:
    """The depth ``name`` asks of a CIFAR ResNet (``resnet44`` -> 44), or None for a name of another form."""
    match = _RESNET_NAME.match(name)
    return int(match.group(1)) if match else None


def resnet_depth_problem(name: str) -> str | None:
    """Why ``resnet<depth>`` names no CIFAR ResNet (its depth is not 6n + 2 with n >= 1), or None."""
    depth = resnet_depth(name)
    if depth is None or ((depth - 2) % 6 == 0 and depth >= 8):
        return None
    below, above = max(8, depth - (depth - 2) % 6), depth + (6 - (depth - 2) % 6)
    near = f"resnet{above}" if depth < 8 else f"resnet{below} or resnet{above}"
    return f"{name!r} is no CIFAR ResNet: the depth is 6n+2 (8, 14, 20, 26, 32, 44, 56, ..., 110, ...), not {depth}; e.g. {near}"


MODEL_FACTORIES: dict[str, Callable[[int, int, int], nn.Module]] = {
    "resnet20": lambda c, k, s: CifarResNet(20, c, k),
    "resnet32": lambda c, k, s: CifarResNet(32, c, k),
    "resnet56": lambda c, k, s: CifarResNet(56, c, k),
    "vgg_small": lambda c, k, s: VGGSmall(c, k),
    "mobilenetv2": lambda c, k, s: MobileNetV2Small(c, k),
    "mlp": _mlp,
}


def zoo_factory(name: str) -> Callable[[int, int, int], nn.Module] | None:
    """The built-in factory ``(in_channels, num_classes, input_size) -> model`` of ``name``: one of
    :data:`MODEL_FACTORIES` or ``resnet<6n+2>``; None when ``name`` is neither."""
    if name in MODEL_FACTORIES:
        return MODEL_FACTORIES[name]
    depth = resnet_depth(name)
    if depth is None or resnet_depth_problem(name) is not None:
        return None
    return lambda c, k, s: CifarResNet(depth, c, k)
