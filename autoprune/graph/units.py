"""What a model's searchable decisions are: the one type of their kinds, its classifier, and the unit and block records.

A *unit* is the channels of one Torch-Pruning dependency group (its decision is a ratio); a
*droppable block* is a module replaced by its shortcut (its decision is keep or drop).
:class:`UnitKind` names every kind of either, and :func:`unit_kind` / :func:`block_kind` are the
one place that decides a kind. Everything that lists kinds derives the list from here: the
agent's one-hot features (:mod:`autoprune.search.env`) and the roles of policy transfer
(:mod:`autoprune.transfer.mapping`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from torch import nn

from autoprune.graph.constraints import ChannelConstraint
from autoprune.graph.transformer import is_transformer_layer


class UnitKind(StrEnum):
    """The kind of one searchable decision (a ``str``: it is written as its value in policy files).

    Channel kinds (a unit, pruned by a ratio), in the order the agent observes them:

    - ``conv``: output channels of a convolution (1-, 2- or 3-D, transposed too);
    - ``depthwise``: channels of a group that holds a depthwise convolution (coupled to the conv
      that expands into it);
    - ``linear``: output features of a linear layer, or the width of an embedding (a linear map of one-hot ids);
    - ``heads``: whole attention heads of one self-attention (``head_dim`` kept);
    - ``ffn``: the intermediate width of one encoder layer's feed-forward block.

    Droppable kinds (keep or drop):

    - ``block``: a residual block ``y = f(x) + x``, replaced by its shortcut;
    - ``layer``: a whole transformer encoder layer, replaced by
      :class:`~autoprune.graph.transformer.SkipLayer`.
    """

    CONV = "conv"
    DEPTHWISE = "depthwise"
    LINEAR = "linear"
    HEADS = "heads"
    FFN = "ffn"
    BLOCK = "block"
    LAYER = "layer"

    @property
    def droppable(self) -> bool:
        """True for the kinds of droppable blocks, False for channel kinds."""
        return self in DROPPABLE_KINDS

    @property
    def spatial(self) -> bool:
        """True for channels of a convolution (they have a resolution, hence a stage)."""
        return self in SPATIAL_KINDS


#: Kinds of droppable blocks.
DROPPABLE_KINDS: tuple[UnitKind, ...] = (UnitKind.BLOCK, UnitKind.LAYER)
#: Channel kinds of units, in declaration order.
CHANNEL_KINDS: tuple[UnitKind, ...] = tuple(k for k in UnitKind if k not in DROPPABLE_KINDS)
#: Channel kinds whose layers work on feature maps.
SPATIAL_KINDS: tuple[UnitKind, ...] = (UnitKind.CONV, UnitKind.DEPTHWISE)


def unit_kind(root: nn.Module, *, depthwise: bool, whole_heads: bool, in_encoder_layer: bool) -> UnitKind:
    """The kind of a unit, from its dependency group.

    Args:
        root: The layer the group is rooted at (whose output channels index the unit).
        depthwise: The group holds a depthwise convolution (``groups == in_channels > 1``).
        whole_heads: The unit's channels are cut in whole attention heads (its constraint's ``whole``).
        in_encoder_layer: Every layer the group touches is inside one transformer encoder layer.

    Returns:
        ``heads`` for whole heads; else ``depthwise``; else ``ffn`` for a linear unit inside an
        encoder layer, ``linear`` for another linear or embedding root; else ``conv``.
    """
    if whole_heads:
        return UnitKind.HEADS
    if depthwise:
        return UnitKind.DEPTHWISE
    if isinstance(root, nn.Embedding):
        return UnitKind.LINEAR
    if isinstance(root, nn.Linear):
        return UnitKind.FFN if in_encoder_layer else UnitKind.LINEAR
    return UnitKind.CONV


def block_kind(module: nn.Module) -> UnitKind:
    """The kind of a droppable block: ``layer`` for a transformer encoder layer, else ``block``."""
    return UnitKind.LAYER if is_transformer_layer(module) else UnitKind.BLOCK


@dataclass(frozen=True)
class UnitFeatures:
    """Model-size-invariant description of a unit, used as an agent's observation.

    Attributes:
        kind: Its :class:`UnitKind` (a channel kind).
        channels: Number of prunable channels in the group.
        in_channels: Input channels of the root layer.
        kernel: Kernel size of the root layer (1 for linear).
        stride: Stride of the root layer (1 for linear).
        macs: MACs per sample of every layer whose input or output channels this unit prunes.
        params: Parameters of those layers.
        depth: Relative position of the root layer in execution order, 0..1.
        resolution: Spatial size of the root layer's input relative to the model input, 0..1.
        coupled: Whether several layers write into these channels (e.g. a residual stream).
        n_layers: Layers whose channels this unit prunes (input or output side).
        heads: Attention heads the unit's channels form (0 when it holds no attention).
    """

    kind: UnitKind
    channels: int
    in_channels: int
    kernel: int
    stride: int
    macs: int
    params: int
    depth: float
    resolution: float
    coupled: bool
    n_layers: int
    heads: int = 0


@dataclass(frozen=True)
class PrunableUnit:
    """One searchable decision: the channels of one Torch-Pruning dependency group, named after its root layer.

    Attributes:
        name: Dotted path of the root layer (whose output channels the unit cuts); for the heads of a
            Hugging Face self-attention, the attention module's path (``encoder.layer.0.attention.self``).
        features: The agent's description of the unit.
        out_layers, in_layers: Layers whose output / input channels the unit cuts.
        constraint: Which channel counts the unit may keep, and how channels are chosen for one.
        requery: Whether its channels meet another unit's in a concat/split (or in one layer's
            dimension), so surgery must ask Torch-Pruning for its group on the partly pruned copy
            instead of replaying the dense model's indices.
        root_layer: The layer Torch-Pruning's group is rooted at, when it is not ``name`` (heads).
    """

    name: str
    features: UnitFeatures
    out_layers: tuple[str, ...]
    in_layers: tuple[str, ...]
    constraint: ChannelConstraint | None = None
    requery: bool = False
    root_layer: str = ""

    @property
    def root(self) -> str:
        """The layer whose output channels index the unit's channels (Torch-Pruning's root)."""
        return self.root_layer or self.name

    @property
    def allowed(self) -> list[int]:
        """Channel counts this unit may keep, ascending."""
        return (self.constraint or ChannelConstraint(self.features.channels)).allowed()


@dataclass(frozen=True)
class DroppableBlock:
    """A module that can be replaced by its shortcut: a residual block ``y = f(x) + x`` or an encoder layer.

    Attributes:
        name: Module path of the block.
        macs: MACs per sample of the layers inside it (saved by dropping it).
        params: Parameters inside it.
        depth: Relative position of its first layer in execution order, 0..1.
        units_inside: Units rooted inside the block.
        kind: ``block`` or ``layer`` (:func:`block_kind`).
    """

    name: str
    macs: int
    params: int
    depth: float
    units_inside: tuple[str, ...]
    kind: UnitKind = UnitKind.BLOCK


__all__ = [
    "CHANNEL_KINDS", "DROPPABLE_KINDS", "SPATIAL_KINDS", "DroppableBlock", "PrunableUnit", "UnitFeatures", "UnitKind",
    "block_kind", "unit_kind",
]
