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
import logging
from collections.abc import Sequence

import torch
from torch import nn

from autoprune.errors import ModelError
from autoprune.graph.check import TOLERANCE, CheckReport
from autoprune.graph.decoder import DecoderGraph, DecoderPlan, DecoderScores, LayerScores, decoder_layers, layer_shape
from autoprune.graph.policy import Policy
from autoprune.zoo.pruned_decoder import CONFIG_KEY

log = logging.getLogger(__name__)


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


def layer_signature(layer: nn.Module) -> tuple:
    """What a decoder layer's surgery depends on: the classes of the layer, its attention and MLP, and its shape.

    Layers of one signature run the same code on the same shapes, so one masked-equivalence check
    stands for all of them.
    """
    return (type(layer).__qualname__, type(layer.self_attn).__qualname__, type(layer.mlp).__qualname__, layer_shape(layer))


def check_decoder(model: nn.Module, *, ratios: tuple[float, ...] = (0.5,), seed: int = 0, tokens: int = 12, batch: int = 2,
                  per_signature: bool = False) -> CheckReport:
    """Masked-equivalence check of every decoder unit and layer, alone at ``ratios`` and at its smallest size, then all together.

    Runs on a float64 copy of ``model`` with random token ids and random choices of heads and channels.

    Args:
        per_signature: Check the units and the layer of the first layer of each :func:`layer_signature`
            only, and give each verdict to the same unit of every layer of that signature (a 30-layer
            model of one layer class is checked in 3 + 1 trials instead of 90 + 30).

    Returns:
        A :class:`~autoprune.graph.check.CheckReport` (``failed`` says why per unit or layer).
    """
    dense = copy.deepcopy(model).double().eval()
    graph = DecoderGraph(dense)
    gen = torch.Generator().manual_seed(seed)
    vocab = int(dense.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, tokens), generator=gen)
    report = CheckReport()
    layers = decoder_layers(dense)
    first: dict[tuple, int] = {}
    stands_for = {i: first.setdefault(layer_signature(layer), i) if per_signature else i for i, layer in enumerate(layers)}
    trials: list[tuple[str, list[Policy]]] = []
    for u in graph.units:
        if stands_for[u.layer] == u.layer:
            rs = sorted({*ratios, 1.0 - 1.0 / u.size})
            trials.append((u.name, [Policy({u.name: r}) for r in rs if u.kept(r) >= 1]))
    if len(graph.block_names) > 1:
        trials += [(f"model.layers.{i}", [Policy({}, (f"model.layers.{i}",))]) for i in range(len(layers)) if stands_for[i] == i]
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
    checked = {n for n, _ in trials}
    for name in [*graph.unit_names, *(graph.block_names if len(graph.block_names) > 1 else [])]:
        if name not in checked:  # the verdict of the same unit (or the layer) of the layer standing for it
            i = int(name.split(".")[2])
            rep = f"model.layers.{stands_for[i]}" + name[len(f"model.layers.{i}"):]
            if rep in report.failed:
                report.failed[name] = report.failed[rep]
            report.max_diff[name] = report.max_diff.get(rep, 0.0)
    passed = [u.name for u in graph.units if u.name not in report.failed]
    droppable = [b for b in graph.block_names if b not in report.failed]
    drop = tuple(droppable[1:2]) if len(droppable) > 2 else ()
    together = Policy({n: ratios[0] for n in passed if graph.unit(n).kept(ratios[0]) >= 1}, drop)
    if passed and not _difference(dense, graph.plan(together, _random_scores(graph, gen)), ids) <= TOLERANCE:
        report.failed["(all together)"] = "cut together, the pruned logits differ from the masked dense model"
    report.passed = [n for n in [*graph.unit_names, *graph.block_names] if n in report.max_diff and n not in report.failed]
    return report


def verified_decoder_graph(model: nn.Module, *, seed: int = 0) -> tuple[DecoderGraph, CheckReport]:
    """The decoder's graph with every unit and layer checked (:func:`check_decoder`, per layer signature); failures left dense.

    The decoder counterpart of :func:`autoprune.graph.safety.verified_graph`: a unit (or layer)
    whose pruned logits differ from the masked dense model's, or whose surgery or forward raises,
    is left out of the graph (:meth:`~autoprune.graph.decoder.DecoderGraph.exclude`), with one
    warning line per reason naming the units.

    Returns:
        ``(graph, report)``: the graph offers only the units and layers that passed.

    Raises:
        ModelError: the model has no Llama-family layout, or nothing passes the check (naming why),
            or the units pass alone but not together.
    """
    graph = DecoderGraph(model)
    report = check_decoder(model, seed=seed, per_signature=True)
    if "(all together)" in report.failed:
        raise ModelError(f"decoder {type(model).__name__}: every unit passes the surgery check alone, but {report.failed['(all together)']}")
    by_reason: dict[str, list[str]] = {}
    for name, why in report.failed.items():
        graph.exclude(name, why)
        by_reason.setdefault(why, []).append(name)
    for why, names in by_reason.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        log.warning("decoder %s %s not pruned: surgery check failed: %s", shown, "is" if len(names) == 1 else "are", why)
    if not graph.units and not graph.block_names:
        why = next(iter(report.failed.values()), "no unit of more than one head or channel")
        raise ModelError(f"decoder {type(model).__name__}: nothing to prune: no unit or layer passes the surgery check ({why})")
    return graph, report


__all__ = ["check_decoder", "decoder_sizes", "layer_signature", "masked_decoder", "prune_decoder", "verified_decoder_graph"]
