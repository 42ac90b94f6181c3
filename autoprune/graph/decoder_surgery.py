"""Surgery on decoder LLMs: slice the weights of a :class:`~autoprune.graph.decoder.DecoderPlan`, delete layers, and check it.

:func:`prune_decoder` slices ``q_proj``/``k_proj``/``v_proj`` rows (and Qwen2's q/k/v biases),
``o_proj`` columns, ``gate_proj``/``up_proj`` rows and ``down_proj`` columns, sets each attention's
``num_key_value_groups`` (the only head count a Hugging Face Llama-family attention reads at run
time: ``repeat_kv``; it takes the head counts from the weight shapes), deletes dropped layers and
renumbers ``layer_idx`` (a pass-through layer would break cached decoding when layer 0 is dropped:
the cache length is read from layer 0), and records the per-layer sizes in
``config.autoprune`` (:data:`CONFIG_KEY`). The global config (``num_attention_heads``, ...) keeps
the dense, valid values; only ``num_hidden_layers`` (and ``layer_types``) follow the deletion.

:func:`check_decoder` is the masked-equivalence check of :mod:`autoprune.graph.check` for
decoders: a pruned model must give the logits of the dense model in which the cut heads and
channels are zeroed at their consumer (``o_proj`` / ``down_proj`` columns) and dropped layers pass
their hidden states through, in float64, within ``1e-5``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from autoprune.graph.check import TOLERANCE, CheckReport
from autoprune.graph.decoder import DecoderGraph, DecoderPlan, DecoderScores, LayerScores, decoder_layers, layer_shape
from autoprune.graph.policy import Policy
from autoprune.zoo.pruned_decoder import CONFIG_KEY


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if rows is not None:
        w, b = w[rows], (b[rows] if b is not None else None)
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new.train(lin.training)


def _channels(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + c for h in heads for c in range(head_dim)], dtype=torch.long)


def decoder_sizes(model: nn.Module) -> list[dict[str, int]]:
    """Per decoder layer: ``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``, read from the weights."""
    return [layer_shape(layer).sizes() for layer in decoder_layers(model)]


def prune_decoder(model: nn.Module, plan: DecoderPlan, *, inplace: bool = False) -> nn.Module:
    """Apply ``plan`` to a decoder by slicing its weights; ``generate`` with a KV cache works on the result.

    Args:
        model: A Hugging Face Llama-family causal LM (dense, or pruned before: indices are of its layers now).
        plan: The cuts (:meth:`~autoprune.graph.decoder.DecoderGraph.plan`).
        inplace: Modify ``model`` itself (default: a deep copy).

    Returns:
        The pruned model, with ``config.autoprune = {"layers": [per-layer sizes], "source_layers":
        [index in the original dense model of each layer]}``.
    """
    model = model if inplace else copy.deepcopy(model)
    layers = decoder_layers(model)
    for i, cut in plan.layers.items():
        layer = layers[i]
        a, s = layer.self_attn, layer_shape(layer)
        q = _channels(cut.query_heads(s.group), s.head_dim)
        kv = _channels(cut.kv_keep, s.head_dim)
        a.q_proj, a.o_proj = _slice_linear(a.q_proj, rows=q), _slice_linear(a.o_proj, cols=q)
        a.k_proj, a.v_proj = _slice_linear(a.k_proj, rows=kv), _slice_linear(a.v_proj, rows=kv)
        a.num_key_value_groups = len(cut.q_keep[0])
        keep = torch.tensor(cut.mlp_keep, dtype=torch.long)
        m = layer.mlp
        m.gate_proj, m.up_proj, m.down_proj = _slice_linear(m.gate_proj, rows=keep), _slice_linear(m.up_proj, rows=keep), _slice_linear(m.down_proj, cols=keep)
        if hasattr(m, "intermediate_size"):
            m.intermediate_size = len(keep)
    record = dict(getattr(model.config, CONFIG_KEY, None) or {})
    source = list(record.get("source_layers", range(len(layers))))
    drop = set(plan.drop)
    if drop:
        kept = [layer for i, layer in enumerate(layers) if i not in drop]
        model.model.layers = nn.ModuleList(kept)
        for i, layer in enumerate(kept):
            layer.self_attn.layer_idx = i
            if hasattr(layer, "layer_idx"):
                layer.layer_idx = i
        types = getattr(model.config, "layer_types", None)
        if types is not None:
            model.config.layer_types = [t for i, t in enumerate(types) if i not in drop]
        model.config.num_hidden_layers = len(kept)
        source = [s for i, s in enumerate(source) if i not in drop]
    setattr(model.config, CONFIG_KEY, {"layers": decoder_sizes(model), "source_layers": source})
    return model


class _PassThrough(nn.Module):
    """A dropped decoder layer in the masked reference: returns its hidden states."""

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


def masked_decoder(model: nn.Module, plan: DecoderPlan) -> nn.Module:
    """The dense model with ``plan``'s cuts switched off without changing a shape (a deep copy).

    Cut query heads (and every query head of a cut KV group) get zero ``o_proj`` columns, cut MLP
    channels zero ``down_proj`` columns, and dropped layers pass their input through. Use it
    without a KV cache (a pass-through layer 0 keeps no cache).
    """
    masked = copy.deepcopy(model)
    layers = decoder_layers(masked)
    with torch.no_grad():
        for i, cut in plan.layers.items():
            a, s = layers[i].self_attn, layer_shape(layers[i])
            keep = set(cut.query_heads(s.group))
            gone = [h for h in range(s.query_heads) if h not in keep]
            a.o_proj.weight[:, _channels(gone, s.head_dim)] = 0
            off = torch.ones(s.mlp, dtype=torch.bool)
            off[list(cut.mlp_keep)] = False
            layers[i].mlp.down_proj.weight[:, off] = 0
    for i in plan.drop:
        layers[i] = _PassThrough()
    return masked


def _random_scores(graph: DecoderGraph, gen: torch.Generator) -> DecoderScores:
    return DecoderScores([
        LayerScores(torch.rand(s.query_heads, generator=gen, dtype=torch.float64), torch.rand(s.mlp, generator=gen, dtype=torch.float64))
        for s in graph.shapes
    ])  # fmt: skip


def _difference(model: nn.Module, plan: DecoderPlan, ids: torch.Tensor) -> float:
    with torch.no_grad():
        ref = masked_decoder(model, plan)(input_ids=ids, use_cache=False).logits
        out = prune_decoder(model, plan)(input_ids=ids, use_cache=False).logits
    return float((ref - out).abs().max())


def check_decoder(model: nn.Module, *, ratios: tuple[float, ...] = (0.5,), seed: int = 0, tokens: int = 12, batch: int = 2) -> CheckReport:
    """Masked-equivalence check of every decoder unit and layer, alone at ``ratios`` and at its smallest size, then all together.

    Runs on a float64 copy of ``model`` with random token ids and random choices of heads and channels.

    Returns:
        A :class:`~autoprune.graph.check.CheckReport` (``failed`` says why per unit or layer).
    """
    dense = copy.deepcopy(model).double().eval()
    graph = DecoderGraph(dense)
    gen = torch.Generator().manual_seed(seed)
    vocab = int(dense.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, tokens), generator=gen)
    report = CheckReport()
    trials: list[tuple[str, list[Policy]]] = []
    for u in graph.units:
        rs = sorted({*ratios, 1.0 - 1.0 / u.size})
        trials.append((u.name, [Policy({u.name: r}) for r in rs if u.kept(r) >= 1]))
    if len(graph.block_names) > 1:
        trials += [(b, [Policy({}, (b,))]) for b in graph.block_names]
    for name, policies in trials:
        worst = 0.0
        try:
            for p in policies:
                worst = max(worst, _difference(dense, graph.plan(p, _random_scores(graph, gen)), ids))
            if not worst <= TOLERANCE:
                report.failed[name] = f"pruned logits differ from the masked dense model by {worst:.2g}"
        except Exception as e:  # noqa: BLE001 - any failure of surgery or forward fails the unit
            report.failed[name] = f"surgery fails ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        report.max_diff[name] = worst
    passed = [u.name for u in graph.units if u.name not in report.failed]
    drop = tuple(graph.block_names[1:2]) if len(graph.block_names) > 2 else ()
    together = Policy({n: ratios[0] for n in passed if graph.unit(n).kept(ratios[0]) >= 1}, drop)
    if passed and not _difference(dense, graph.plan(together, _random_scores(graph, gen)), ids) <= TOLERANCE:
        report.failed["(all together)"] = "cut together, the pruned logits differ from the masked dense model"
    report.passed = [n for n, _ in trials if n not in report.failed]
    return report


__all__ = ["check_decoder", "decoder_sizes", "masked_decoder", "prune_decoder"]
