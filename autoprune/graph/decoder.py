"""Decoder LLMs in the graph: GQA-aware attention heads, SwiGLU MLP width and whole layers, found by structure.

Torch-Pruning's dependency graph is not used for decoders: on grouped-query attention with
rotary positions it hangs (Torch-Pruning #527, and here on a tiny Llama with 2 query heads per KV
head). The structure of a Hugging Face Llama-family decoder is regular enough to read directly:
``model.layers[i]`` holds ``self_attn`` (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
``head_dim``) and ``mlp`` (``gate_proj``, ``up_proj``, ``down_proj``). Per decoder layer there are
three units and one droppable block:

- ``model.layers.{i}.self_attn.kv_groups`` (kind ``heads``): whole KV groups, each its key and
  value head with every query head that reads it; ``o_proj`` inputs follow;
- ``model.layers.{i}.self_attn.query_heads`` (kind ``heads``): query heads *per KV group*, the
  same number cut in every group, so the ratio of query heads to KV heads stays an integer
  (``repeat_kv`` needs it); ``o_proj`` inputs follow. Pruning heads of GQA models this way keeps
  the attention kernel's layout (Muralidharan et al. 2024, Minitron);
- ``model.layers.{i}.mlp`` (kind ``ffn``): the SwiGLU width, ``gate_proj``/``up_proj`` outputs
  and ``down_proj`` inputs coupled;
- the block ``model.layers.{i}`` (kind ``layer``): the whole decoder layer, dropped by deleting it
  (ShortGPT, Men et al. 2024, drops decoder layers this way).

Left intact: the token embedding and the tied LM head, every RMSNorm (they act on the hidden
stream, which is not pruned), the rotary embedding (``head_dim`` is kept), Qwen3's per-head
``q_norm``/``k_norm``. Cuts are decided here (:class:`DecoderPlan`);
:mod:`autoprune.graph.decoder_surgery` applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.errors import ModelError, PolicyError
from autoprune.graph.policy import Policy
from autoprune.graph.units import UnitKind

_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class DecoderLayerShape:
    """One decoder layer as it is now: ``query_heads`` (a multiple of ``kv_heads``), ``kv_heads``, ``head_dim``, MLP width ``mlp``."""

    query_heads: int
    kv_heads: int
    head_dim: int
    mlp: int

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.query_heads // self.kv_heads

    def sizes(self) -> dict[str, int]:
        """The per-layer config fields: ``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``."""
        return {"num_attention_heads": self.query_heads, "num_key_value_heads": self.kv_heads, "intermediate_size": self.mlp}


@dataclass(frozen=True)
class DecoderUnit:
    """A searchable width of one decoder layer.

    Attributes:
        name: ``model.layers.{i}.self_attn.kv_groups``, ``...query_heads`` or ``model.layers.{i}.mlp``.
        kind: ``heads`` (both attention units) or ``ffn``.
        layer: Index of the decoder layer.
        role: ``kv_groups``, ``query_heads`` (per KV group) or ``mlp``.
        size: What a ratio counts: KV groups, query heads per group, or MLP channels.
    """

    name: str
    kind: UnitKind
    layer: int
    role: str
    size: int

    def kept(self, ratio: float) -> int:
        """What a ratio keeps: ``floor(size * (1 - ratio) + 0.5)`` (half rounds up, so 0.5 of 3 keeps 2 and of 5 keeps 3), at
        least one for any ratio below 1 (as a CNN unit keeps a channel: no ratio a searcher proposes in ``[0, 1)`` empties a
        unit); ratio 1 keeps none, which :meth:`DecoderGraph.kept` refuses."""
        n = math.floor(self.size * (1.0 - ratio) + 0.5 + 1e-9)
        return max(1, n) if ratio < 1.0 else n


@dataclass(frozen=True)
class LayerCut:
    """What one decoder layer keeps, in dense indices.

    Attributes:
        kv_keep: KV groups kept (sorted).
        q_keep: Per kept KV group, the positions of the query heads kept inside it (``0 ..
            group - 1``); every entry has the same length.
        mlp_keep: MLP channels kept (sorted).
    """

    kv_keep: tuple[int, ...]
    q_keep: tuple[tuple[int, ...], ...]
    mlp_keep: tuple[int, ...]

    def query_heads(self, group: int) -> list[int]:
        """Dense indices of the query heads kept, in order (KV group ``g`` owns heads ``g * group ..``)."""
        return [kv * group + j for kv, js in zip(self.kv_keep, self.q_keep) for j in js]


@dataclass(frozen=True)
class DecoderPlan:
    """Cuts of a decoder: a :class:`LayerCut` per changed layer, and the layers to delete (dense indices)."""

    layers: dict[int, LayerCut] = field(default_factory=dict)
    drop: tuple[int, ...] = ()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM (``model.model.layers``), checked to have the Llama-family layout.

    Raises:
        ModelError: naming the class, when the layout is not found.
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    ok = isinstance(layers, nn.ModuleList) and len(layers) > 0
    for layer in layers if ok else ():
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        ok = ok and all(isinstance(getattr(attn, p, None), nn.Linear) for p in _ATTENTION) and isinstance(getattr(attn, "head_dim", None), int)
        ok = ok and all(isinstance(getattr(mlp, p, None), nn.Linear) for p in _MLP)
    if not ok:
        raise ModelError(f"model: {type(model).__name__} has no Llama-family decoder layers (model.layers[i].self_attn.q_proj/k_proj/v_proj/o_proj, mlp.gate_proj/up_proj/down_proj)")
    return layers


def layer_shape(layer: nn.Module) -> DecoderLayerShape:
    """The :class:`DecoderLayerShape` of one decoder layer, read from its weights."""
    a, d = layer.self_attn, int(layer.self_attn.head_dim)
    return DecoderLayerShape(a.q_proj.out_features // d, a.k_proj.out_features // d, d, layer.mlp.gate_proj.out_features)


class DecoderGraph:
    """The prunable structure of a decoder LLM: per layer its KV groups, query heads per group and MLP width, and the layer itself.

    Args:
        model: A Hugging Face ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` or ``MistralForCausalLM``
            (or another module with the same layout); not modified.

    Attributes:
        shapes: :class:`DecoderLayerShape` per layer, as the model is now.
        units: :class:`DecoderUnit` s in layer order (a unit of size 1 is left out: nothing to cut).
        block_names: The droppable layers, ``model.layers.{i}``.
        skipped: Units and layers left dense by :meth:`exclude`, with the reason.

    Raises:
        ModelError: the model does not have the layout (:func:`decoder_layers`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.shapes = [layer_shape(layer) for layer in decoder_layers(model)]
        self.units: list[DecoderUnit] = []
        for i, s in enumerate(self.shapes):
            prefix = f"model.layers.{i}"
            for role, kind, size in (("kv_groups", UnitKind.HEADS, s.kv_heads), ("query_heads", UnitKind.HEADS, s.group), ("mlp", UnitKind.FFN, s.mlp)):
                if size > 1:
                    name = f"{prefix}.mlp" if role == "mlp" else f"{prefix}.self_attn.{role}"
                    self.units.append(DecoderUnit(name, kind, i, role, size))
        self.block_names = [f"model.layers.{i}" for i in range(len(self.shapes))]
        self._by_name = {u.name: u for u in self.units}
        self.skipped: dict[str, str] = {}

    def exclude(self, name: str, reason: str) -> None:
        """Leave a unit or a droppable layer dense (it fails a check): it is no longer offered; ``skipped`` records why.

        ``(all together)`` and names the graph does not offer are ignored.
        """
        if name in self._by_name:
            del self._by_name[name]
            self.units = [u for u in self.units if u.name != name]
        elif name in self.block_names:
            self.block_names = [b for b in self.block_names if b != name]
        else:
            return
        self.skipped[name] = reason

    @property
    def unit_names(self) -> list[str]:
        return [u.name for u in self.units]

    def unit(self, name: str) -> DecoderUnit:
        """The unit called ``name``.

        Raises:
            PolicyError: no such unit.
        """
        if name not in self._by_name:
            raise PolicyError(f"unknown decoder unit {name!r}; units look like 'model.layers.0.self_attn.kv_groups', '...query_heads', 'model.layers.0.mlp'")
        return self._by_name[name]

    def kept(self, policy: Policy) -> list[DecoderLayerShape | None]:
        """Per dense layer, its shape under ``policy`` (None for a dropped layer), predicted without surgery.

        A ratio of a unit keeps :meth:`DecoderUnit.kept`.

        Raises:
            PolicyError: an unknown unit or block, a ratio outside ``[0, 1]``, a policy that removes
                every KV group or every query head of a group in a layer, or every layer.
        """
        unknown = sorted(set(policy.drop) - set(self.block_names))
        if unknown:
            raise PolicyError(f"policy drops layers the decoder does not have: {unknown}; droppable: model.layers.0 .. model.layers.{len(self.shapes) - 1}")
        if len(set(policy.drop)) >= len(self.shapes):
            raise PolicyError(f"policy drops every layer of the decoder ({len(self.shapes)}); keep at least one")
        counts: dict[tuple[int, str], int] = {}
        for name, r in policy.ratios.items():
            u = self.unit(name)
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
                raise PolicyError(f"ratio of unit {name!r} is {r!r}; allowed: 0 <= ratio < 1")
            keep = u.kept(float(r))
            if keep < 1:
                what = "every KV group" if u.role == "kv_groups" else "every query head of each KV group" if u.role == "query_heads" else "every MLP channel"
                raise PolicyError(f"ratio {r!r} of unit {name!r} removes {what} of layer {u.layer} (of {u.size}); keep at least one, or drop the layer 'model.layers.{u.layer}'")
            counts[(u.layer, u.role)] = keep
        out: list[DecoderLayerShape | None] = []
        for i, s in enumerate(self.shapes):
            if f"model.layers.{i}" in policy.drop:
                out.append(None)
                continue
            kv, group, mlp = counts.get((i, "kv_groups"), s.kv_heads), counts.get((i, "query_heads"), s.group), counts.get((i, "mlp"), s.mlp)
            out.append(DecoderLayerShape(kv * group, kv, s.head_dim, mlp))
        return out

    def plan(self, policy: Policy, scores: DecoderScores | None = None) -> DecoderPlan:
        """The cuts of ``policy``: per unit, the most important KV groups, query heads and MLP channels are kept.

        Args:
            policy: Ratios per unit name, layers to drop.
            scores: Importance of the dense model's parts (:mod:`autoprune.graph.decoder_importance`); None keeps
                the lowest indices.

        Raises:
            PolicyError: as :meth:`kept`.
        """
        shapes = self.kept(policy)
        layers: dict[int, LayerCut] = {}
        for i, (dense, now) in enumerate(zip(self.shapes, shapes)):
            if now is None or now == dense:
                continue
            s = scores.layers[i] if scores is not None else None
            kv_score = s.query.view(dense.kv_heads, dense.group).sum(1) if s is not None else -torch.arange(dense.kv_heads, dtype=torch.float64)
            kv_keep = _top(kv_score, now.kv_heads)
            q_keep = []
            for kv in kv_keep:
                q = s.query.view(dense.kv_heads, dense.group)[kv] if s is not None else -torch.arange(dense.group, dtype=torch.float64)
                q_keep.append(tuple(_top(q, now.group)))
            mlp = s.mlp if s is not None else -torch.arange(dense.mlp, dtype=torch.float64)
            layers[i] = LayerCut(tuple(kv_keep), tuple(q_keep), tuple(_top(mlp, now.mlp)))
        drop = tuple(sorted(int(b.rsplit(".", 1)[1]) for b in set(policy.drop)))
        return DecoderPlan(layers, drop)


def _top(score: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest scores, sorted (ties broken by the lower index)."""
    order = sorted(range(len(score)), key=lambda i: (-float(score[i]), i))
    return sorted(order[:k])


@dataclass(frozen=True)
class LayerScores:
    """Importance of one layer's parts: ``query`` per query head ``(query_heads,)``, ``mlp`` per channel ``(mlp,)``; higher is kept."""

    query: torch.Tensor
    mlp: torch.Tensor


@dataclass(frozen=True)
class DecoderScores:
    """:class:`LayerScores` per decoder layer; a KV group scores the sum of its query heads."""

    layers: list[LayerScores]


__all__ = [
    "DecoderGraph", "DecoderLayerShape", "DecoderPlan", "DecoderScores", "DecoderUnit", "LayerCut", "LayerScores", "decoder_layers",
    "layer_shape",
]  # fmt: skip
