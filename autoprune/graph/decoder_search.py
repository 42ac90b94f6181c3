"""A decoder LLM as the searchers see a model: :class:`DecoderSearchGraph`, the :class:`~autoprune.graph.decoder.DecoderGraph` with the records of a ``PrunableGraph``.

Every searcher (Optuna, PPO's environment, the baselines, the policy file's fingerprint) reads a
model through the same few things: the units with their :class:`~autoprune.graph.units.UnitFeatures`,
the droppable blocks, the dense MACs and a prediction of a policy's MACs without surgery.
:class:`DecoderSearchGraph` gives them for a decoder, from its structure
(:mod:`autoprune.graph.decoder`: KV groups and query heads per group of kind ``heads``, SwiGLU
width of kind ``ffn``, whole layers of kind ``layer``), so no searcher needs to know it prunes a
decoder.

MACs here are **per token** of the linear layers (the ``q/k/v/o`` projections, the SwiGLU MLP and
the LM head; attention's ``q k^T`` and ``attn v`` grow with the context and are left out): at
batch 1 decoding each weight is used once per token, so this is also the weights read per token.
:func:`decoder_macs` of a pruned model equals :meth:`DecoderSearchGraph.macs_for` of its policy.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.graph.constraints import ChannelConstraint
from autoprune.graph.decoder import DecoderGraph, DecoderLayerShape, DecoderPlan, DecoderScores, decoder_layers, layer_shape
from autoprune.graph.decoder_importance import magnitude_scores
from autoprune.graph.importance import make_importance, needs_data
from autoprune.graph.policy import Policy
from autoprune.graph.units import DroppableBlock, PrunableUnit, UnitFeatures, UnitKind


def layer_macs(s: DecoderLayerShape, hidden: int) -> int:
    """MACs per token of one decoder layer's linear layers: ``q``/``o`` (query heads), ``k``/``v`` (KV heads) and 3 SwiGLU matrices."""
    return hidden * s.head_dim * (2 * s.query_heads + 2 * s.kv_heads) + 3 * hidden * s.mlp


def _head_macs(model: nn.Module) -> int:
    head = getattr(model, "lm_head", None)
    return int(head.in_features * head.out_features) if isinstance(head, nn.Linear) else 0


def decoder_macs(model: nn.Module) -> int:
    """MACs per token of a (pruned) decoder's linear layers and LM head, read from its weights (see the module docstring)."""
    layers = decoder_layers(model)
    hidden = int(layers[0].self_attn.q_proj.in_features)
    return sum(layer_macs(layer_shape(layer), hidden) for layer in layers) + _head_macs(model)


class DecoderSearchGraph:
    """The prunable structure of a decoder LLM with the attributes searchers read from a ``PrunableGraph``.

    Args:
        model: A Hugging Face Llama-family causal LM (dense; not modified).

    Attributes:
        model: The dense model.
        decoder: Its :class:`~autoprune.graph.decoder.DecoderGraph` (plans the cuts).
        units: One :class:`~autoprune.graph.units.PrunableUnit` per decoder unit (``features.channels``
            is what a ratio counts: KV groups, query heads per group or MLP channels).
        blocks: One :class:`~autoprune.graph.units.DroppableBlock` (kind ``layer``) per decoder layer but the first:
            layer 0 turns the embeddings into the residual stream, and a search must never drop every layer
            (dropping only layer 0 of SmolLM2-135M takes its perplexity from 29.75 to 45,705; issue 23's scout, §3.3).
        skipped: Units left dense (none: every unit of a decoder is cut by slicing), for the messages of a ``PrunableGraph``.

    Raises:
        ModelError: the model does not have the Llama-family layout.
    """

    #: A policy of another architecture is not mapped onto a decoder (``autoprune transfer`` works on Torch-Pruning graphs).
    transferable = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.decoder = DecoderGraph(model)
        self.hidden = int(decoder_layers(model)[0].self_attn.q_proj.in_features)
        self.skipped: dict[str, str] = {}
        n = len(self.decoder.shapes)
        self.units: list[PrunableUnit] = []
        for u in self.decoder.units:
            s = self.decoder.shapes[u.layer]
            prefix = f"model.layers.{u.layer}"
            attn = [f"{prefix}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")] if u.role == "kv_groups" else [f"{prefix}.self_attn.q_proj"]
            outs, ins = ((tuple(attn), (f"{prefix}.self_attn.o_proj",)) if u.role != "mlp" else
                         ((f"{prefix}.mlp.gate_proj", f"{prefix}.mlp.up_proj"), (f"{prefix}.mlp.down_proj",)))
            macs = (self.hidden * s.head_dim * (2 * s.query_heads + (2 * s.kv_heads if u.role == "kv_groups" else 0)) if u.role != "mlp"
                    else 3 * self.hidden * s.mlp)
            features = UnitFeatures(kind=u.kind, channels=u.size, in_channels=self.hidden, kernel=1, stride=1, macs=macs, params=macs,
                                    depth=(u.layer + 0.5) / n, resolution=1.0, coupled=False, n_layers=len(outs) + len(ins),
                                    heads=s.query_heads if u.kind == UnitKind.HEADS else 0)
            self.units.append(PrunableUnit(u.name, features, outs, ins, ChannelConstraint(u.size)))
        self.blocks = [
            DroppableBlock(f"model.layers.{i}", layer_macs(s, self.hidden), self._layer_params(i), i / n,
                           tuple(u.name for u in self.decoder.units if u.layer == i), UnitKind.LAYER)
            for i, s in enumerate(self.decoder.shapes) if i > 0
        ]
        self._by_name = {u.name: u for u in self.units}
        self._importance: dict[str, dict[str, torch.Tensor]] = {}

    def _layer_params(self, i: int) -> int:
        return sum(p.numel() for p in decoder_layers(self.model)[i].parameters())

    @property
    def unit_names(self) -> list[str]:
        return [u.name for u in self.units]

    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def unit(self, name: str) -> PrunableUnit:
        """The unit called ``name``.

        Raises:
            PolicyError: no such unit (listing what units look like).
        """
        self.decoder.unit(name)
        return self._by_name[name]

    @property
    def dense_macs(self) -> int:
        """MACs per token of the dense decoder (:func:`decoder_macs`)."""
        return decoder_macs(self.model)

    def validate_policy(self, ratios: dict[str, float], drop: Iterable[str] = ()) -> None:
        """Check a policy against the decoder without surgery.

        Raises:
            PolicyError: an unknown unit or layer, a ratio outside ``[0, 1]``, or a policy that removes every KV
                group, every query head of a group, every MLP channel of a layer, or every layer.
        """
        self.decoder.kept(Policy(dict(ratios), tuple(drop)))

    def macs_for(self, ratios: dict[str, float], drop: Iterable[str] = (), *, round_to: int | None = None) -> int:
        """Predicted MACs per token of the decoder pruned by a policy (``round_to`` does not apply: heads and channels are cut one by one).

        Raises:
            PolicyError: as :meth:`validate_policy`.
        """
        shapes = self.decoder.kept(Policy(dict(ratios), tuple(drop)))
        return sum(layer_macs(s, self.hidden) for s in shapes if s is not None) + _head_macs(self.model)

    def plan(self, policy: Policy, scores: DecoderScores | None) -> DecoderPlan:
        """The cuts of ``policy`` (:meth:`DecoderGraph.plan <autoprune.graph.decoder.DecoderGraph.plan>`)."""
        return self.decoder.plan(policy, scores)

    def importance(self, criterion: str, batches: object = None, loss: object = None) -> dict[str, torch.Tensor]:
        """Per-element scores of every unit from weight magnitude, each normalised by its mean (as Torch-Pruning's group magnitude).

        A KV group scores the sum of its query heads' scores, a query-head position the sum over
        the KV groups, an MLP channel its own (:func:`~autoprune.graph.decoder_importance.magnitude_scores`).
        Used by the ``global`` searcher; ``criterion`` must not need data.

        Raises:
            ConfigError: a criterion that needs gradients or activations.
        """
        if needs_data(make_importance(criterion)):
            raise ConfigError(f"pruning.importance: {criterion!r} ranks channels from data; the global ranking of a decoder takes a magnitude criterion")
        if criterion not in self._importance:
            scores = magnitude_scores(self.model).layers
            out = {}
            for u in self.decoder.units:
                q = scores[u.layer].query.view(self.decoder.shapes[u.layer].kv_heads, -1)
                v = q.sum(1) if u.role == "kv_groups" else q.sum(0) if u.role == "query_heads" else scores[u.layer].mlp
                out[u.name] = (v / v.mean().clamp_min(1e-12)).float()
            self._importance[criterion] = out
        return self._importance[criterion]


__all__ = ["DecoderSearchGraph", "decoder_macs", "layer_macs"]
