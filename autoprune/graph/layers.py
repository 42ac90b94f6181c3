"""``LayerSpec``: the shape of one leaf layer call, the unit of the latency lookup table.

Specs are recorded on the dense model (see :func:`autoprune.measure.latency.extract_layer_specs`)
and rewritten for a candidate policy by :class:`autoprune.graph.prunable.PrunableGraph`
without touching the model, so latency can be predicted before any surgery.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

import torch

ExampleInput = Union[torch.Tensor, tuple[torch.Tensor, ...]]
"""What a model is called with: one batch-first tensor, or a tuple of them (``model(*inputs)``)."""


@dataclass(frozen=True)
class LayerSpec:
    """One leaf-module call.

    Attributes:
        module_name: Dotted path of the module in the model (``layer1.0.conv1``).
        kind: ``conv2d``, ``linear``, ``batchnorm1d``, ``batchnorm2d``, ``relu``, ``relu6``,
            ``maxpool2d``, ``avgpool2d``, ``identity``, ... (lower-cased class name).
        in_channels: Channels (or features) of the input.
        out_channels: Channels (or features) of the output.
        input_shape: Full input shape, batch first (``(N, C, H, W)`` or ``(N, F)``).
        kernel_size, stride, padding, groups: Conv/pool parameters ((1, 1), (1, 1), (0, 0), 1 otherwise).
        bias: Whether the layer has a bias.
    """

    module_name: str
    kind: str
    in_channels: int
    out_channels: int
    input_shape: tuple[int, ...]
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    bias: bool = False

    def key(self) -> tuple:
        """Everything that determines latency (not the name): the lookup-table key."""
        return (self.kind, self.in_channels, self.out_channels, self.input_shape, self.kernel_size, self.stride, self.padding, self.groups, self.bias)

    def with_channels(self, in_channels: int, out_channels: int) -> "LayerSpec":
        """A copy with new channel counts (depthwise convs keep groups == channels)."""
        groups = self.groups
        if self.kind == "conv2d" and self.groups > 1 and self.groups == self.in_channels:
            groups = in_channels
            out_channels = in_channels * (self.out_channels // self.in_channels)
        shape = (self.input_shape[0], in_channels, *self.input_shape[2:])
        return replace(self, in_channels=in_channels, out_channels=out_channels, groups=groups, input_shape=shape)

    def with_batch(self, batch_size: int) -> "LayerSpec":
        """A copy with a different batch size."""
        return replace(self, input_shape=(batch_size, *self.input_shape[1:]))
