"""Unit constraints: which channel counts a unit may keep, and which channels to cut for a count.

A unit's channels may be laid out in equal segments that must stay consistent after pruning:

- **aligned** segments (grouped convolutions, ``GroupNorm``, an even ``torch.chunk``): every
  segment loses the channels at the *same relative positions*, so each group keeps the same
  membership and size (Torch-Pruning's grouped-conv pruner assumes exactly this layout, cf.
  ``BasePruner._get_channel_groups`` which averages importance across groups);
- **whole** segments (the heads of ``nn.MultiheadAttention``): segments are removed whole, so the
  head dimension (and the attention scale ``1/sqrt(head_dim)``) is unchanged.

The allowed kept counts are then the multiples of one step (the number of aligned segments, or
the size of a whole segment), from one step up to every channel: at least one channel always
survives, so no ratio proposed by a searcher can empty a unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import PolicyError

# Torch-Pruning node types whose index mapping depends on the sizes of other units' channels.
MULTI_SOURCE_OPS = (tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.EXPAND)


@dataclass(frozen=True)
class ChannelConstraint:
    """The layout rule of a unit's ``channels``.

    Attributes:
        channels: Channels of the unit (dense).
        segments: Number of equal contiguous segments (1: no layout rule).
        whole: ``True``: segments are removed whole (attention heads); ``False``: every segment
            loses the channels at the same relative positions (groups).
        because: The layers that impose the rule (for messages), e.g. ``("g.0 (groups=4)",)``.
    """

    channels: int
    segments: int = 1
    whole: bool = False
    because: tuple[str, ...] = ()

    @property
    def step(self) -> int:
        """Allowed kept counts are multiples of this."""
        return self.channels // self.segments if self.whole else self.segments

    def allowed(self) -> list[int]:
        """Every channel count the unit may keep, ascending (at least one channel, at most all)."""
        return list(range(self.step, self.channels + 1, self.step)) if self.channels >= self.step > 0 else []

    @property
    def prunable(self) -> bool:
        """Whether more than one count is allowed (a unit with a single allowed count cannot be cut)."""
        return len(self.allowed()) > 1

    def kept(self, ratio: float, round_to: int | None = None) -> int:
        """The allowed count nearest to ``channels * (1 - ratio)``, at least one step.

        ``round_to`` (a user's hardware multiple) is honoured when it is compatible with the
        layout (the unit's channels are a multiple of both); otherwise the layout wins.

        Raises:
            PolicyError: if ``ratio`` is outside [0, 1).
        """
        if not isinstance(ratio, (int, float)) or not (0.0 <= float(ratio) < 1.0):
            raise PolicyError(f"pruning ratio {ratio!r} is out of range; allowed: 0 <= ratio < 1")
        n = self.channels
        if ratio == 0.0 or n == 0:
            return n
        step = self.step
        if round_to and round_to > 1 and n > round_to:
            both = math.lcm(step, round_to)
            if n % both == 0:
                step = both
        keep = int(round(n * (1.0 - float(ratio)) / step)) * step
        return int(min(n, max(step, keep)))

    def choose(self, scores: torch.Tensor, keep: int) -> list[int]:
        """The channel indices to remove so that ``keep`` survive, least important first.

        Args:
            scores: Importance per channel, shape ``(channels,)`` (higher = more important).
            keep: An allowed count (see :meth:`allowed`).

        Returns:
            Sorted indices into the unit's channels (root-layer coordinates).

        Raises:
            PolicyError: if ``keep`` is not an allowed count.
        """
        n = self.channels
        if keep == n:
            return []
        if keep not in self.allowed():
            raise PolicyError(f"cannot keep {keep} of {n} channels; allowed counts: {self.allowed()}")
        scores = scores.detach().flatten().double()
        if self.segments == 1:
            idxs = torch.argsort(scores, stable=True)[: n - keep].tolist()
        elif self.whole:
            size = n // self.segments
            per_segment = scores.view(self.segments, size).sum(1)
            cut = torch.argsort(per_segment, stable=True)[: (n - keep) // size].tolist()
            idxs = [s * size + i for s in cut for i in range(size)]
        else:
            size = n // self.segments
            per_position = scores.view(self.segments, size).sum(0)
            cut = torch.argsort(per_position, stable=True)[: (n - keep) // self.segments].tolist()
            idxs = [s * size + p for s in range(self.segments) for p in cut]
        return sorted(int(i) for i in idxs)


def kept_channels(n: int, ratio: float, round_to: int | None = None, *, constraint: ChannelConstraint | None = None) -> int:
    """How many of ``n`` channels survive pruning by ``ratio``: the nearest allowed count, at least one.

    Args:
        n: Channels of the unit.
        ratio: Fraction to remove, in [0, 1).
        round_to: Keep a multiple of this when the layout allows it.
        constraint: The unit's layout rule (none: every count from 1 to ``n`` is allowed).

    Returns:
        The kept count (``n`` for ratio 0).

    Raises:
        PolicyError: if the ratio is outside [0, 1).
    """
    return (constraint or ChannelConstraint(n)).kept(ratio, round_to)


class UnsupportedUnit(Exception):
    """A unit whose channels cannot be cut exactly; the message says which layer and why."""


def _identity_cover(idxs: Iterable[int], root_idxs: Iterable[int], size: int) -> bool:
    """True if the unit's channel ``i`` is the layer's channel ``i`` for every channel of the layer."""
    plain, root = list(idxs), list(root_idxs)
    return len(plain) == size and plain == root == list(range(size))


def constraint_of(group: tp.dependency.Group, name_of, n: int, head_layers: dict[str, tuple[str, int]] | None = None) -> ChannelConstraint:
    """The layout rule a Torch-Pruning dependency group (with all its channels) imposes.

    Args:
        group: The unit's dense group (``DependencyGraph.get_pruning_group`` over every channel).
        name_of: Callable giving a module's dotted name (or ``None``).
        n: Channels of the unit.
        head_layers: ``{projection layer name: (attention module name, heads)}`` for the query, key
            and value linears of recognised Hugging Face self-attention modules
            (:func:`autoprune.graph.transformer.head_layouts`): their output channels are cut in whole heads.

    Returns:
        The combined rule (aligned segments: their least common multiple).

    Raises:
        UnsupportedUnit: naming the layer, when the layout cannot be kept exactly (a grouped layer
            reached by only part of the unit's channels, a depthwise conv with a channel multiplier,
            heads together with groups, or segment counts that do not divide the unit).
    """
    aligned, whole, because = 1, 0, []
    for item in group:
        dep, idxs = item.dep, item.idxs
        m = dep.target.module
        root = getattr(item, "root_idxs", idxs)
        label = name_of(m) or type(m).__name__
        segments, is_whole = 1, False
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1:
            if m.groups == m.in_channels and m.out_channels != m.in_channels:
                raise UnsupportedUnit(f"depthwise conv {label!r} has a channel multiplier ({m.in_channels} -> {m.out_channels})")
            if m.groups == m.in_channels == m.out_channels:
                continue  # depthwise: every channel is its own group, Torch-Pruning cuts in and out together
            size = m.out_channels if group._DG.is_out_channel_pruning_fn(dep.handler) else m.in_channels
            segments, because_text = m.groups, f"{label} (groups={m.groups})"
        elif isinstance(m, nn.GroupNorm):
            size, segments, because_text = m.num_channels, m.num_groups, f"{label} (GroupNorm num_groups={m.num_groups})"
        elif isinstance(m, nn.MultiheadAttention):
            size, segments, is_whole = m.embed_dim, m.num_heads, True
            because_text = f"{label} (num_heads={m.num_heads})"
        elif head_layers and label in head_layers and group._DG.is_out_channel_pruning_fn(dep.handler):
            attention, heads = head_layers[label]
            size, segments, is_whole = m.out_features, heads, True
            because_text = f"{attention} (num_attention_heads={heads})"
        elif dep.target.type == tp.ops.OPTYPE.SPLIT:
            offsets = list(getattr(m, "offsets", None) or [])
            sizes = [b - a for a, b in zip(offsets, offsets[1:])]
            if len(sizes) < 2 or len(set(sizes)) != 1:
                continue  # unequal split: left to the differential check
            size, segments, because_text = offsets[-1], len(sizes), f"split into {len(sizes)} equal parts"
        else:
            continue
        if segments <= 1:
            continue
        if not _identity_cover(idxs, root, size):
            raise UnsupportedUnit(f"its channels reach only part of {because_text}; the layout across units cannot be kept")
        if because_text not in because:  # query, key and value of one attention name it once
            because.append(because_text)
        if is_whole:
            whole = math.lcm(whole, segments) if whole else segments
        else:
            aligned = math.lcm(aligned, segments)
    if whole and aligned > 1:
        raise UnsupportedUnit(f"attention heads and channel groups on the same channels ({', '.join(because)})")
    segments = whole or aligned
    if segments > 1 and n % segments:
        raise UnsupportedUnit(f"{n} channels do not split into {segments} equal segments ({', '.join(because)})")
    return ChannelConstraint(n, segments, bool(whole), tuple(because))


__all__ = ["ChannelConstraint", "MULTI_SOURCE_OPS", "UnsupportedUnit", "constraint_of", "kept_channels"]
