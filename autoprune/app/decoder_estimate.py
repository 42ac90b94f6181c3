"""``autoprune estimate`` on a decoder LLM: what each unit kind, pruned uniformly, saves in prefill or decode, and what it costs in KL and perplexity.

Rows: the dense model, then per ratio one row per kind, every layer pruned alike: query heads
per KV group, whole KV groups, SwiGLU MLP width (heads and channels chosen by Minitron's
activation importance on training text), and whole layers (the share of layers with the lowest
ShortGPT block influence deleted). Each row reports parameters, the KL divergence from the dense
next-token distribution on validation text, perplexity on test text, and latency in the chosen
mode (``prefill`` ms or ``decode`` tokens per second) measured paired against the dense model on
eager PyTorch (:mod:`autoprune.measure.decoder_latency`). The text is Debian's ``fortunes``
(:mod:`autoprune.zoo.lm_text`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from autoprune.errors import ConfigError
from autoprune.graph.decoder import DecoderGraph
from autoprune.graph.decoder_importance import activation_scores, block_influence
from autoprune.graph.decoder_surgery import prune_decoder, verified_decoder_graph
from autoprune.graph.policy import Policy
from autoprune.measure.backends import DEFAULT_THREADS
from autoprune.measure.decoder_latency import NEW_TOKENS, PROMPT_TOKENS, check_prompt, decoder_latency, decoder_mode
from autoprune.measure.latency import PairedTimer
from autoprune.measure.schedule import PairedSchedule
from autoprune.objective.lm_fidelity import KL_BLOCKS, NextTokenKL, perplexity
from autoprune.zoo.decoder import Decoder, load_decoder
from autoprune.zoo.lm_text import LMCorpus, lm_corpus
from autoprune.zoo.text import load_text_data

#: The unit kinds of a decoder estimate, in row order: (kind, label).
KINDS = (("query_heads", "query heads per group"), ("kv_groups", "KV groups"), ("mlp", "MLP width"), ("layers", "layers (lowest block influence)"))


@dataclass
class DecoderEstimateRow:
    """One line of a decoder estimate.

    Attributes:
        label: ``dense`` or e.g. ``KV groups 33%``.
        kind: ``dense``, ``query_heads``, ``kv_groups``, ``mlp`` or ``layers``.
        ratio: The ratio asked of every unit of the kind (of the layers for ``layers``).
        params: Parameters (the tied LM head counted once).
        sizes: ``(query heads, KV heads, MLP width, layers)`` of the first kept layer and the layer count.
        kl: Mean per-token KL divergence from the dense model on validation blocks (nats).
        perplexity: On test blocks.
        latency_ratio, latency_ci: Paired latency of a call over the dense model's, and its 95% CI.
        ms: Estimated milliseconds per call (ratio x dense).
        tokens_per_s: Decode speed (0 in prefill mode).
    """

    label: str
    kind: str
    ratio: float
    params: int
    sizes: tuple[int, int, int, int]
    kl: float
    perplexity: float
    latency_ratio: float
    latency_ci: tuple[float, float]
    ms: float
    tokens_per_s: float


@dataclass
class DecoderEstimateReport:
    """What ``autoprune estimate`` shows for a decoder."""

    model: str
    mode: str
    prompt_tokens: int
    new_tokens: int
    seq_len: int
    rows: list[DecoderEstimateRow] = field(default_factory=list)


def _policy(graph: DecoderGraph, kind: str, ratio: float, influence: list[float]) -> Policy | None:
    if kind == "layers":
        n = min(len(graph.shapes) - 1, math.floor(ratio * len(graph.shapes) + 0.5))
        droppable = {int(b.rsplit(".", 1)[1]) for b in graph.block_names}  # a layer that failed the check stays
        n = min(n, len(droppable))
        order = sorted(droppable, key=lambda i: (influence[i], i))
        return Policy({}, tuple(f"model.layers.{i}" for i in sorted(order[:n]))) if n > 0 else None
    units = [u for u in graph.units if u.role == kind and u.kept(ratio) < u.size]
    return Policy({u.name: ratio for u in units}) if units else None


def estimate_decoder(
    decoder: Decoder, corpus: LMCorpus, ratios: Sequence[float], *, mode: str = "decode", prompt_tokens: int = PROMPT_TOKENS,
    new_tokens: int = NEW_TOKENS, rounds: int = 5, threads: int = DEFAULT_THREADS,
) -> DecoderEstimateReport:
    """Measure each unit kind of a decoder pruned uniformly at each ratio (see the module docstring).

    Args:
        decoder: The dense decoder.
        corpus: Its text blocks (train: importance and the prompt; val: KL; test: perplexity).
        ratios: Ratios in [0, 1); a kind a ratio leaves unchanged (e.g. 10% of 3 query heads) has no row.
        mode: ``prefill`` or ``decode``.
        prompt_tokens: Prompt length timed (from the training text), at most ``corpus.seq_len``.
        new_tokens: Tokens decoded per call in ``decode`` mode.
        rounds: Paired rounds per row.

    Units and layers that fail the masked-equivalence check (:func:`~autoprune.graph.decoder_surgery.verified_decoder_graph`)
    are left dense in every row, with one warning line naming them.

    Raises:
        ConfigError: a bad mode, ratio or prompt length.
        ModelError: no unit or layer passes the check.
    """
    for r in ratios:
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"--ratios: {r!r} is out of range; allowed: 0 <= ratio < 1")
    if prompt_tokens > corpus.seq_len:
        raise ConfigError(f"latency.prompt_tokens: {prompt_tokens} is above the text's block length data.max_length {corpus.seq_len}")
    m = decoder_mode(mode, new_tokens=new_tokens)
    model = decoder.model
    prompt = corpus.train.input_ids[:1, :prompt_tokens]
    check_prompt(prompt, model, m)
    graph, _ = verified_decoder_graph(model)
    calibration = list(corpus.train.subset(4).batches(2))
    scores, influence = activation_scores(model, calibration), block_influence(model, calibration)
    kl = NextTokenKL(model, corpus.val.subset(KL_BLOCKS))
    test = corpus.test.subset(KL_BLOCKS)
    dense = decoder_latency(model, prompt, m, warmup=1, repeats=3, threads=threads)
    timer = PairedTimer(m.runner(model, prompt), prompt, threads=threads)
    schedule = PairedSchedule(warmup=1, rounds=rounds, min_rounds=min(rounds, 5), calls_per_round=1)
    report = DecoderEstimateReport(decoder.name, m.name, prompt_tokens, m.new_tokens, corpus.seq_len)
    variants = [("dense", "dense", 0.0, None)]
    for r in ratios:
        for kind, label in KINDS:
            policy = _policy(graph, kind, r, influence) if r > 0 else None
            if policy is not None:
                variants.append((f"{label} {r:.0%}", kind, r, policy))
    for label, kind, r, policy in variants:
        pruned = model if policy is None else prune_decoder(model, graph.plan(policy, scores))
        stats = timer.ratio(m.runner(pruned, prompt), schedule)
        fid = kl.fidelity(pruned)
        first = pruned.model.layers[0]
        sizes = (first.self_attn.q_proj.out_features // first.self_attn.head_dim, first.self_attn.k_proj.out_features // first.self_attn.head_dim,
                 first.mlp.gate_proj.out_features, len(pruned.model.layers))
        ms = stats.ratio * dense.stats.median_ms
        report.rows.append(DecoderEstimateRow(
            label, kind, r, sum(p.numel() for p in pruned.parameters()), sizes, fid.kl, perplexity(pruned, test), stats.ratio,
            (stats.ci_low, stats.ci_high), ms, m.tokens_per_call / (ms / 1000.0) if m.tokens_per_call and ms > 0 else 0.0,
        ))  # fmt: skip
    return report


def estimate_decoder_command(model: str, ratios: Sequence[float], *, mode: str | None = None, seq_len: int = PROMPT_TOKENS,
                             limit: int | None = 400, unused: dict[str, object] | None = None) -> DecoderEstimateReport:
    """``autoprune estimate --model smollm2|hf:/path``: load the decoder and Debian's fortunes (the default text), then :func:`estimate_decoder`.

    ``unused`` maps the command's other options (``--data``, ``--set``, ...) to their values: any
    given is refused, not silently ignored (the text, runtime and batch are fixed here; a config sets them).

    Raises:
        ConfigError: one of ``unused`` given, a missing extra, an unknown model, a bad mode, a block longer than the model's context.
        DataError: the fortunes are not installed.
        ModelError: an unknown architecture.
    """
    given = [flag for flag, value in (unused or {}).items() if value]
    if given:
        raise ConfigError(f"{given[0]}: does not apply to --model {model} alone (fortunes, eager PyTorch, batch 1); "
                          f"write a config with model.name: {model} and pass it to estimate instead")
    decoder = load_decoder(model)
    torch.manual_seed(0)
    corpus = lm_corpus(load_text_data("fortunes", limit=limit), decoder.tokenizer, seq_len=seq_len, max_positions=decoder.max_positions,
                       max_blocks=KL_BLOCKS)
    return estimate_decoder(decoder, corpus, ratios, mode=mode or "decode", prompt_tokens=seq_len)


__all__ = ["KINDS", "DecoderEstimateReport", "DecoderEstimateRow", "estimate_decoder", "estimate_decoder_command"]
