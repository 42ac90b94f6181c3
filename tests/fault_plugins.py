"""Fault injection for the safety net: plug-ins that break one unit, named ``"fault_plugins:build_..."`` in configs.

Each model is a digits-sized network (``build(in_channels, num_classes, input_size)``) with one
unit whose pruning goes wrong in a way Torch-Pruning cannot know about, beside units that prune
correctly; :func:`autoprune.graph.safety.verified_graph` must leave the broken unit dense, name it,
and keep the others.

- :func:`build_corrupting`: ``x.flip(1)`` between two convs. Torch-Pruning takes the flip as
  element-wise, so cutting channel ``i`` of the first conv removes input ``i`` of the second
  instead of input ``C-1-i``: surgery silently corrupts the network;
- :func:`build_raising`: a guard module that raises once its input has lost channels: the
  pruned model's forward raises;
- :func:`build_mispredicted`: a product contracting over every *pair* of one unit's channels (its
  ``C * C`` outer products flattened): cutting that unit is exact, but the matmul's MACs grow with
  the square of its width, which the prediction (linear in each width,
  :mod:`autoprune.graph.product_widths`) gets wrong;
- :class:`MultipleOfEightRuntime`: an export check whose runtime refuses conv widths that are
  not multiples of 8 (a unit of 24 channels cut in half fails, one of 16 passes);
- :func:`build_unexportable`: a ``torch.sinc`` activation (SincNet-style audio front ends) between
  two convs: every unit prunes exactly, but torch 2.13's ONNX exporter has no ``aten::sinc``, so
  no ONNX runtime can serve even the dense model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cbr(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class _Head(nn.Module):
    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Corrupting(nn.Module):
    """stem -> flip(channels) -> mid -> out -> head: the stem's unit is silently mis-pruned by Torch-Pruning."""

    def __init__(self, c: int = 1, n: int = 10) -> None:
        super().__init__()
        self.stem, self.mid, self.out = _cbr(c, 16), _cbr(16, 16), _cbr(16, 16)
        self.head = _Head(16, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.out(self.mid(self.stem(x).flip(1))))


class ChannelGuard(nn.Module):
    """Raises unless its input has exactly ``channels`` channels (a model that hard-codes a width)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise RuntimeError(f"expected {self.channels} channels, got {x.shape[1]}")
        return x


class Raising(nn.Module):
    """stem -> guard(16) -> mid -> out -> head: pruning the stem makes the forward raise."""

    def __init__(self, c: int = 1, n: int = 10) -> None:
        super().__init__()
        self.stem, self.guard, self.mid, self.out = _cbr(c, 16), ChannelGuard(16), _cbr(16, 16), _cbr(16, 16)
        self.head = _Head(16, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.out(self.mid(self.guard(self.stem(x)))))


class Mispredicted(nn.Module):
    """a -> b -> c -> head, scaled by a statistic over every pair of b's pooled channels (a ``C * C`` contraction).

    Cutting b's channels leaves the output equal to the masked dense model's (a cut channel adds
    0 to every product) but shrinks the matmul's contraction with the square of b's width.
    """

    def __init__(self, c: int = 1, n: int = 10) -> None:
        super().__init__()
        self.a, self.b, self.c = _cbr(c, 16), _cbr(16, 16), _cbr(16, 16)
        self.head = _Head(16, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(self.a(x))
        s = h.mean((2, 3))  # (N, C)
        pairs = (s[:, :, None] * s[:, None, :]).flatten(1)  # (N, C * C): every pair of b's channels
        energy = (pairs @ pairs.transpose(0, 1)).diagonal()  # contracts over C * C: MACs grow with b's width squared
        return self.head(self.c(h)) * energy[:, None].detach()  # a gain, not a channel coupling


class Mixed(nn.Module):
    """Conv widths 16 and 24: cut in half (8 and 12), only the 24-wide unit breaks a multiple-of-8 runtime."""

    def __init__(self, c: int = 1, n: int = 10) -> None:
        super().__init__()
        self.a, self.b, self.c = _cbr(c, 16), _cbr(16, 24), _cbr(24, 16)
        self.head = _Head(16, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c(self.b(self.a(x))))


class Sinc(nn.Module):
    """``sin(pi x) / (pi x)`` element-wise: torch runs it, the TorchScript ONNX exporter cannot export it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sinc(x)


class Unexportable(nn.Module):
    """a -> act (Sinc) -> b -> head: prunable everywhere, exportable nowhere."""

    def __init__(self, c: int = 1, n: int = 10) -> None:
        super().__init__()
        self.a, self.act, self.b = _cbr(c, 16), Sinc(), _cbr(16, 16)
        self.head = _Head(16, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.act(self.a(x))))


class MultipleOfEightRuntime:
    """An export check (``export_check(model, example_input)``): a runtime that refuses conv widths not a multiple of 8."""

    label = "multiple-of-8 runtime"

    def __call__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and m.out_channels % 8:
                raise RuntimeError(f"{name}: {m.out_channels} output channels; this runtime needs multiples of 8")
        model(example_input)


def build_corrupting(in_channels: int = 1, num_classes: int = 10, input_size: int = 8) -> nn.Module:
    return Corrupting(in_channels, num_classes)


def build_raising(in_channels: int = 1, num_classes: int = 10, input_size: int = 8) -> nn.Module:
    return Raising(in_channels, num_classes)


def build_mispredicted(in_channels: int = 1, num_classes: int = 10, input_size: int = 8) -> nn.Module:
    return Mispredicted(in_channels, num_classes)


def build_mixed(in_channels: int = 1, num_classes: int = 10, input_size: int = 8) -> nn.Module:
    return Mixed(in_channels, num_classes)


def build_unexportable(in_channels: int = 1, num_classes: int = 10, input_size: int = 8) -> nn.Module:
    return Unexportable(in_channels, num_classes)
