"""Importance of a decoder's parts: weight magnitude, activations (Minitron) and, for whole layers, block influence (ShortGPT).

Width scores are :class:`~autoprune.graph.decoder.DecoderScores` (per query head and per MLP
channel; a KV group scores the sum of its query heads), used by
:meth:`~autoprune.graph.decoder.DecoderGraph.plan` to keep the highest:

- :func:`magnitude_scores`: weight norms, no data;
- :func:`activation_scores`: the mean absolute activation each head and channel feeds its
  consumer (``o_proj`` / ``down_proj``) on calibration text, the width criterion of Minitron
  (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation").

:func:`block_influence` scores each decoder layer by ``1 - cos(input, output)`` of its hidden
states averaged over tokens (Men et al. 2024, "ShortGPT"): a layer that barely turns the
residual stream is the first to drop.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from autoprune.graph.decoder import DecoderScores, LayerScores, decoder_layers


def magnitude_scores(model: nn.Module) -> DecoderScores:
    """Weight-magnitude importance: a query head scores the L2 norm of its ``q_proj`` rows and ``o_proj`` columns;
    an MLP channel the norm of its ``gate_proj`` and ``up_proj`` rows times that of its ``down_proj`` column.

    Returns:
        float64 scores per layer of ``model``.
    """
    out = []
    for layer in decoder_layers(model):
        a, m, d = layer.self_attn, layer.mlp, int(layer.self_attn.head_dim)
        with torch.no_grad():
            q = a.q_proj.weight.double().view(-1, d, a.q_proj.in_features).pow(2).sum((1, 2))
            o = a.o_proj.weight.double().view(a.o_proj.out_features, -1, d).pow(2).sum((0, 2))
            gate_up = (m.gate_proj.weight.double().pow(2).sum(1) + m.up_proj.weight.double().pow(2).sum(1)).sqrt()
            down = m.down_proj.weight.double().pow(2).sum(0).sqrt()
        out.append(LayerScores((q + o).sqrt(), gate_up * down))
    return DecoderScores(out)


def activation_scores(model: nn.Module, batches: Iterable[torch.Tensor]) -> DecoderScores:
    """Minitron's activation importance on calibration text: per query head the mean L2 norm (over tokens) of its
    attention output entering ``o_proj``, per MLP channel the mean absolute value entering ``down_proj``.

    Args:
        model: The decoder (run in eval mode without gradients; the training flag is restored).
        batches: ``(B, L)`` token-id batches of real text (e.g. ``LMCorpus.train.batches(4)``).

    Returns:
        float64 scores per layer.
    """
    layers = decoder_layers(model)
    sums = [[torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)] for _ in layers]
    count = [0]

    def hook(i: int, part: int, head_dim: int | None):
        def pre(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().double().flatten(0, -2)  # (tokens, features)
            v = x.view(x.shape[0], -1, head_dim).norm(dim=-1).sum(0) if head_dim else x.abs().sum(0)
            sums[i][part] = v if sums[i][part].numel() == 0 else sums[i][part] + v
            if i == 0 and part == 0:
                count[0] += x.shape[0]
        return pre

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(hook(i, 0, int(layer.self_attn.head_dim))))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(hook(i, 1, None)))
    _calibration_pass(model, batches, handles)
    n = max(count[0], 1)
    return DecoderScores([LayerScores(q / n, m / n) for q, m in sums])


def _calibration_pass(model: nn.Module, batches: Iterable[torch.Tensor], handles: list) -> None:
    """Run ``model`` in eval mode, without a KV cache, over token-id batches; then remove the hooks ``handles`` and restore its mode."""
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was)


def block_influence(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[float]:
    """ShortGPT's block influence of each decoder layer: ``1 - cos(h_in, h_out)`` per token, averaged over calibration text.

    Returns:
        One score per layer, in ``[0, 2]``; the lowest are dropped first.
    """
    layers = decoder_layers(model)
    total, count = [0.0] * len(layers), [0] * len(layers)

    def hook(i: int):
        def post(_m: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
            h_in = (args[0] if args else kwargs["hidden_states"]).detach().double()
            h_out = (out[0] if isinstance(out, tuple) else out).detach().double()
            cos = nn.functional.cosine_similarity(h_in.flatten(0, -2), h_out.flatten(0, -2), dim=-1)
            total[i] += float((1.0 - cos).sum())
            count[i] += cos.numel()
        return post

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    _calibration_pass(model, batches, handles)
    return [t / max(c, 1) for t, c in zip(total, count)]


__all__ = ["activation_scores", "block_influence", "magnitude_scores"]
