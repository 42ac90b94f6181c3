"""Latency of a decoder LLM where it is served: prefill of a prompt, and decoding new tokens with a KV cache (eager PyTorch).

Two modes, each a :class:`DecoderMode` that turns a model and a prompt into a zero-argument
:data:`~autoprune.measure.backends.Runner`, so every timer of :mod:`autoprune.measure.latency`
(single :func:`~autoprune.measure.latency.measure_latency`, paired
:class:`~autoprune.measure.latency.PairedTimer`) times decoders the same way as other models:

- ``prefill``: one forward pass over the prompt (batch 1, 128 tokens by default) that fills a
  fresh KV cache, the time to first token;
- ``decode``: ``new_tokens`` greedy steps of one token each from a KV cache already holding the
  prompt (tokens per second = ``new_tokens / seconds``). The prompt is prefilled once, untimed;
  after each call the cache is cropped back to the prompt (``DynamicCache.crop``), so every call
  decodes the same tokens at the same positions.

Decode on CPU behaves as if bound by memory bandwidth (each step reads every weight), so the
two modes rank pruned models differently; ``latency.mode`` chooses which one a budget uses.
Eager timings of decode are noisy (per-op overhead): compare them paired against the dense model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.measure.backends import DEFAULT_THREADS, Runner
from autoprune.measure.latency import LatencyStats, measure_latency

#: Defaults of the issue: a 128-token prompt at batch 1, 32 new tokens.
PROMPT_TOKENS = 128
NEW_TOKENS = 32


def _cache(model: nn.Module) -> object:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


class DecoderMode:
    """How one latency mode runs a decoder; the attributes say what its time means.

    Attributes:
        name: ``prefill`` or ``decode``.
        tokens_per_call: Tokens a call produces (0: the figure is milliseconds, not a rate).
    """

    name: ClassVar[str] = ""

    def __init__(self, new_tokens: int = NEW_TOKENS) -> None:
        self.new_tokens = int(new_tokens)

    @property
    def tokens_per_call(self) -> int:
        return 0

    def runner(self, model: nn.Module, prompt: torch.Tensor) -> Runner:  # pragma: no cover - abstract
        raise NotImplementedError


class PrefillMode(DecoderMode):
    """One forward pass over the prompt into a fresh KV cache (time to first token)."""

    name = "prefill"

    def runner(self, model: nn.Module, prompt: torch.Tensor) -> Runner:
        model.eval()

        def run() -> object:
            with torch.inference_mode():
                return model(input_ids=prompt, cache=_cache(model), use_cache=True).logits[:, -1]

        return run


class DecodeMode(DecoderMode):
    """``new_tokens`` greedy one-token steps from a cache holding the prompt (prefilled once, cropped back after each call)."""

    name = "decode"

    @property
    def tokens_per_call(self) -> int:
        return self.new_tokens

    def runner(self, model: nn.Module, prompt: torch.Tensor) -> Runner:
        model.eval()
        cache, length = _cache(model), int(prompt.shape[1])
        with torch.inference_mode():
            first = model(input_ids=prompt, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)

        def run() -> object:
            token = first
            with torch.inference_mode():
                for step in range(self.new_tokens):
                    position = torch.tensor([[length + step]])
                    logits = model(input_ids=token, cache=cache, use_cache=True, position_ids=position).logits
                    token = logits[:, -1:].argmax(-1)
            cache.crop(-self.new_tokens)  # transformers 5: a negative count removes that many tokens
            return token

        return run


#: The latency modes by name (``latency.mode``).
DECODER_MODES: dict[str, type[DecoderMode]] = {m.name: m for m in (PrefillMode, DecodeMode)}


def decoder_mode(name: str, *, new_tokens: int = NEW_TOKENS) -> DecoderMode:
    """The :class:`DecoderMode` called ``name``.

    Raises:
        ConfigError: an unknown mode, or ``new_tokens`` < 1.
    """
    if name not in DECODER_MODES:
        raise ConfigError(f"latency.mode: {name!r} is not a decoder latency mode; allowed: {', '.join(DECODER_MODES)}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise ConfigError(f"latency.new_tokens: expected an integer >= 1, got {new_tokens!r}")
    return DECODER_MODES[name](new_tokens)


def check_prompt(prompt: torch.Tensor, model: nn.Module, mode: DecoderMode) -> None:
    """Refuse a prompt that is not ``(1, L)`` token ids or that, with the new tokens, exceeds the model's context.

    Raises:
        ConfigError: naming ``latency.prompt_tokens``, the value and the context.
    """
    if prompt.dim() != 2 or prompt.dtype != torch.int64:
        raise ConfigError(f"latency.prompt_tokens: the prompt must be (batch, tokens) int64 ids, got {tuple(prompt.shape)} {prompt.dtype}")
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    total = int(prompt.shape[1]) + mode.tokens_per_call
    if context and total > context:
        raise ConfigError(f"latency.prompt_tokens: {prompt.shape[1]} prompt + {mode.tokens_per_call} new tokens exceed the model's context ({context})")


@dataclass(frozen=True)
class DecoderLatency:
    """Latency of one decoder in one mode: ``stats`` of a call (ms), and ``tokens_per_s`` for decode (0 for prefill)."""

    mode: str
    stats: LatencyStats
    tokens_per_s: float


def decoder_latency(model: nn.Module, prompt: torch.Tensor, mode: str | DecoderMode = "decode", *, warmup: int = 1, repeats: int = 5,
                    threads: int = DEFAULT_THREADS) -> DecoderLatency:
    """Time a decoder in one mode on eager PyTorch: median of ``repeats`` calls after ``warmup`` (the scout's protocol: 5 after 1).

    Args:
        model: A Hugging Face causal LM (dense or pruned).
        prompt: ``(1, L)`` int64 token ids of real text.
        mode: ``prefill``, ``decode`` or a :class:`DecoderMode`.

    Raises:
        ConfigError: an unknown mode, a bad prompt, or bad counts.
    """
    m = decoder_mode(mode) if isinstance(mode, str) else mode
    check_prompt(prompt, model, m)
    stats = measure_latency(m.runner(model, prompt), prompt, warmup=warmup, repeats=repeats, threads=threads)
    rate = m.tokens_per_call / (stats.median_ms / 1000.0) if m.tokens_per_call and stats.median_ms > 0 else 0.0
    return DecoderLatency(m.name, stats, rate)


__all__ = [
    "DECODER_MODES", "NEW_TOKENS", "PROMPT_TOKENS", "DecodeMode", "DecoderLatency", "DecoderMode", "PrefillMode", "check_prompt", "decoder_latency",
    "decoder_mode",
]  # fmt: skip
