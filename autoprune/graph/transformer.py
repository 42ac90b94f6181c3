"""Transformer encoders in the graph: attention-head layouts, head counts after surgery, droppable layers.

Three unit kinds make a BERT-family encoder prunable with the same graph abstraction as a CNN:

- **attention heads, per layer**: the Torch-Pruning dependency group that couples the output
  channels of ``query``, ``key`` and ``value`` with the input channels of the attention's output
  projection (DepGraph finds it by tracing, Fang et al. 2023) is one unit whose channels are cut
  in whole heads (``head_dim`` is kept, the number of heads changes; the rule is a
  :class:`~autoprune.graph.constraints.ChannelConstraint` with ``whole=True``). After surgery
  :func:`fix_head_counts` sets ``num_attention_heads`` and ``all_head_size`` so the Hugging Face
  module still runs. Cutting whole heads by their Q/K/V/O slices is the structure of Michel et al.
  2019 ("Are Sixteen Heads Really Better than One?") and of Torch-Pruning's ``prune_num_heads``;
- **FFN intermediate width, per layer**: the ordinary group of ``intermediate.dense`` (output
  channels) and ``output.dense`` (input channels);
- **whole layers**: an encoder layer (one self-attention plus its feed-forward block, same input
  and output shape) is a droppable block, replaced by :class:`SkipLayer` (it returns its hidden
  states unchanged), as in layer-dropping studies of pre-trained transformers (Sajjad et al. 2023).

The hidden width of the encoder (its residual stream, shared with the embeddings and every
``LayerNorm``) is not a unit: it is the width of the output embeddings.

A head layout is recognised by duck typing, so any BERT-family encoder (BERT, RoBERTa, MiniLM,
ELECTRA, ...) works without importing ``transformers``: a module with ``num_attention_heads`` and
``attention_head_size`` attributes and ``nn.Linear`` children ``query``, ``key``, ``value``.
A module that has a head count but not that layout (e.g. a fused QKV projection) is refused.
``torch.nn.MultiheadAttention`` keeps its own rule (see :mod:`autoprune.graph.constraints`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: Attribute names that say a module holds attention heads.
_HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")


@dataclass(frozen=True)
class HeadLayout:
    """One recognised self-attention module.

    Attributes:
        name: Dotted path of the attention module (``encoder.layer.0.attention.self``).
        heads: Number of heads (dense).
        head_dim: Channels per head (kept by pruning).
        projections: Dotted paths of its ``query``, ``key`` and ``value`` linears.
    """

    name: str
    heads: int
    head_dim: int
    projections: tuple[str, str, str]


def _is_bert_attention(m: nn.Module) -> bool:
    return (
        isinstance(getattr(m, "num_attention_heads", None), int)
        and isinstance(getattr(m, "attention_head_size", None), int)
        and all(isinstance(getattr(m, p, None), nn.Linear) for p in ("query", "key", "value"))
    )


def head_layouts(model: nn.Module) -> dict[str, HeadLayout]:
    """The self-attention modules of ``model`` whose heads the graph can split, by module name.

    Args:
        model: Any model (a Hugging Face encoder, or one without attention: then ``{}``).

    Returns:
        ``{attention module name: HeadLayout}`` in module order.
    """
    out = {}
    for name, m in model.named_modules():
        if _is_bert_attention(m):
            heads, size = int(m.num_attention_heads), int(m.attention_head_size)
            out[name] = HeadLayout(name, heads, size, tuple(f"{name}.{p}" if name else p for p in ("query", "key", "value")))
    return out


def unknown_head_layouts(model: nn.Module) -> list[str]:
    """Modules that hold attention heads in a layout the graph cannot split, as ``"name (Class, heads=H)"``.

    A module counts when it has a head-count attribute (``num_attention_heads``, ``num_heads``, ...),
    owns ``nn.Linear`` children, and is neither ``nn.MultiheadAttention`` nor a recognised
    query/key/value layout (:func:`head_layouts`).
    """
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) or _is_bert_attention(m):
            continue
        heads = next((getattr(m, a) for a in _HEAD_COUNT_ATTRS if isinstance(getattr(m, a, None), int)), None)
        if heads is None or heads < 1:
            continue
        if any(isinstance(c, nn.Linear) for c in m.children()):
            found.append(f"{name or '<model>'} ({type(m).__name__}, heads={heads})")
    return found


def fix_head_counts(model: nn.Module, head_dims: dict[str, int]) -> None:
    """After whole heads were cut, set each attention module's head count from its projections' width.

    Args:
        model: The pruned model (modified in place).
        head_dims: ``{attention module name: head_dim}`` of the dense model (kept by pruning).
    """
    for name, head_dim in head_dims.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:  # inside a dropped layer
            continue
        if _is_bert_attention(m) and m.query.out_features % head_dim == 0:
            m.num_attention_heads = m.query.out_features // head_dim
            m.all_head_size = m.query.out_features


def attention_width(m: nn.Module) -> tuple[int, int] | None:
    """``(all_head_size, heads)`` of a recognised self-attention module as it is now (``None`` otherwise)."""
    if not _is_bert_attention(m):
        return None
    width = int(m.query.out_features)
    return width, width // int(m.attention_head_size)


class SkipLayer(nn.Module):
    """A dropped encoder layer: returns its hidden states (the first argument) unchanged.

    Accepts and ignores the masks and keyword arguments an encoder passes to its layers.
    """

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:  # noqa: D102
        return hidden_states


def is_transformer_layer(module: nn.Module) -> bool:
    """True for an encoder layer: exactly one self-attention inside (recognised or ``nn.MultiheadAttention``),
    a feed-forward linear beside it and a ``LayerNorm``.

    The caller also checks that the layer maps a tensor to a tensor of the same shape.
    """
    if not any(isinstance(m, nn.LayerNorm) for m in module.modules()):
        return False
    attentions = [n for n, m in module.named_modules() if n and (_is_bert_attention(m) or isinstance(m, nn.MultiheadAttention))]
    if len(attentions) != 1:
        return False
    inside = attentions[0] + "."
    return any(isinstance(m, nn.Linear) and n and not n.startswith(inside) for n, m in module.named_modules())


def shortcut_for(module: nn.Module) -> nn.Module:
    """What replaces a dropped block: :class:`SkipLayer` for an encoder layer, ``nn.Identity`` otherwise."""
    return SkipLayer() if is_transformer_layer(module) else nn.Identity()


__all__ = [
    "HeadLayout", "SkipLayer", "attention_width", "fix_head_counts", "head_layouts", "is_transformer_layer",
    "shortcut_for", "unknown_head_layouts",
]  # fmt: skip
