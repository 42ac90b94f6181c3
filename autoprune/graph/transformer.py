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
``torch.nn.MultiheadAttention`` ties its heads to its embedding width (its heads are cut with the
width around it, see :mod:`autoprune.graph.constraints`); :func:`split_attention_heads` replaces it
by the equivalent :class:`SplitHeadAttention`, whose heads are a unit of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
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


def head_role(items: Iterable[tuple[str | None, nn.Module, bool]], layouts: dict[str, HeadLayout]) -> tuple[str | None, bool]:
    """What a dependency group's channels are to the attention modules.

    Args:
        items: Per layer of the group: ``(layer name, module, whether its output channels are cut)``.
        layouts: :func:`head_layouts` of the model.

    Returns:
        ``(attention, stream)``: the attention module whose heads the channels are (they cut its
        query/key/value outputs), and whether they are an encoder's hidden stream (they cut the
        query/key/value inputs and a token embedding), which is the width of its output and kept.
    """
    projection = {p: h.name for h in layouts.values() for p in h.projections}
    attention, feeds, embedded = None, False, False
    for name, module, is_out in items:
        embedded |= isinstance(module, nn.Embedding)
        if name in projection:
            if is_out:
                attention = projection[name]
            else:
                feeds = True
    return attention, feeds and embedded


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


class SplitHeadAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate ``query``/``key``/``value`` projections, so whole heads can be cut.

    PyTorch's module requires ``embed_dim == num_heads * head_dim``: its heads can only shrink with
    the embedding width around it. This module computes the same function (same call signature and
    outputs: ``(output, weights or None)``) with an inner width ``num_attention_heads *
    attention_head_size`` of its own, in the Hugging Face layout :func:`head_layouts` recognises, so
    each attention becomes a unit of whole heads independent of the width it reads and writes.
    Built by :func:`split_attention_heads`.

    Attributes:
        num_attention_heads, attention_head_size, all_head_size: Heads, head dim, their product.
        query, key, value: ``nn.Linear`` from the query/key/value inputs to ``all_head_size``.
        out_proj: ``nn.Linear`` from ``all_head_size`` to the embedding width.
        batch_first: As in ``nn.MultiheadAttention``.
    """

    _qkv_same_embed_dim = False  # tells nn.TransformerEncoder(Layer) to skip its fused fast path
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e, h = mha.embed_dim, mha.num_heads
        self.num_attention_heads, self.attention_head_size, self.all_head_size = h, e // h, e
        self.batch_first, self.dropout = bool(mha.batch_first), float(mha.dropout)
        bias = mha.in_proj_bias is not None
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().chunk(3)
        else:
            weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        biases = mha.in_proj_bias.detach().chunk(3) if bias else (None, None, None)
        for name, w, b in zip(("query", "key", "value"), weights, biases):
            lin = nn.Linear(w.shape[1], e, bias=bias, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            setattr(self, name, lin)
        self.out_proj = nn.Linear(e, e, bias=mha.out_proj.bias is not None, device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
        self.out_proj.load_state_dict(mha.out_proj.state_dict())

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True, attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like ``nn.MultiheadAttention.forward``; inputs ``(N, L, E)`` (``batch_first``), ``(L, N, E)`` or unbatched ``(L, E)``.

        Raises:
            ValueError: a 3-D ``attn_mask`` whose first dimension is not ``N * num_attention_heads``.
        """
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, lq, ls, d = query.shape[0], query.shape[1], key.shape[1], self.attention_head_size
        q = self.query(query).view(n, lq, -1, d).transpose(1, 2)
        k = self.key(key).view(n, ls, -1, d).transpose(1, 2)
        v = self.value(value).view(n, ls, -1, d).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) * d**-0.5  # (N, H, Lq, Ls)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(lq, ls, dtype=torch.bool, device=q.device).triu(1)
        for mask in (attn_mask, key_padding_mask.view(n, 1, 1, ls) if key_padding_mask is not None else None):
            if mask is None:
                continue
            if mask.dim() == 3:
                if mask.shape[0] != n * q.shape[1]:
                    raise ValueError(f"attn_mask of shape {tuple(mask.shape)}: expected ({n * q.shape[1]}, {lq}, {ls}) for {q.shape[1]} heads")
                mask = mask.view(n, q.shape[1], lq, ls)
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = scores.softmax(-1)
        if self.training and self.dropout > 0:
            probs = nn.functional.dropout(probs, self.dropout)
        out = self.out_proj((probs @ v).transpose(1, 2).reshape(n, lq, -1))
        weights = (probs.mean(1) if average_attn_weights else probs) if need_weights else None
        if unbatched:
            return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
        return (out if self.batch_first else out.transpose(0, 1)), weights


def split_attention_heads(model: nn.Module, names: Iterable[str] | None = None) -> list[str]:
    """Replace ``nn.MultiheadAttention`` modules by equivalent :class:`SplitHeadAttention` s, in place.

    Afterwards each attention is a unit of whole heads (``kind == "heads"``) whose head count can
    change while the width around it stays, exactly as for a Hugging Face encoder. Attention with
    ``bias_k``/``bias_v`` or ``add_zero_attn`` is left as it is (its heads stay tied to its width).

    Args:
        model: The model (modified in place; it computes the same function, up to float rounding).
        names: Module names to convert (default: every ``nn.MultiheadAttention``).

    Returns:
        The names converted.

    Raises:
        KeyError: a name in ``names`` that is not an ``nn.MultiheadAttention`` of the model.
    """
    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    wanted = list(found) if names is None else list(names)
    missing = [n for n in wanted if n not in found]
    if missing:
        raise KeyError(f"not nn.MultiheadAttention modules of the model: {missing}; those are: {sorted(found)}")
    done = []
    for name in wanted:
        m = found[name]
        if m.bias_k is not None or m.add_zero_attn:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, SplitHeadAttention(m).train(m.training))
        done.append(name)
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder) and done:
            m.use_nested_tensor = False  # its nested-tensor fast path reads the fused in_proj weights
    return done


class AttentionCore(nn.Module):
    """The dot-product core of self-attention alone, for timing a ``dotproductattention`` layer spec.

    Input ``(N, L, heads * head_dim)`` is used as queries, keys and values of ``heads`` heads;
    output ``softmax(Q·Kᵀ / sqrt(head_dim))·V`` of the same shape (``F.scaled_dot_product_attention``).
    """

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = int(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        h = x.view(n, length, self.heads, width // self.heads).transpose(1, 2)
        return nn.functional.scaled_dot_product_attention(h, h, h).transpose(1, 2).reshape(n, length, width)


class SkipLayer(nn.Module):
    """A dropped encoder layer: returns its hidden states (the first argument) unchanged.

    Accepts and ignores the masks and keyword arguments an encoder passes to its layers.
    """

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
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
    "AttentionCore", "HeadLayout", "SkipLayer", "SplitHeadAttention", "attention_width", "fix_head_counts", "head_layouts", "head_role", "is_transformer_layer",
    "shortcut_for", "split_attention_heads", "unknown_head_layouts",
]  # fmt: skip
