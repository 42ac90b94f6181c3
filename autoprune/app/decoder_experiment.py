"""A decoder LLM as an experiment: its baseline (the pretrained model and its text blocks) and its evaluator, from a validated config.

:mod:`autoprune.app.experiment` calls these for a config whose ``proxy.metric`` is ``kl`` (the
schema sets it for ``smollm2`` and ``hf:/path`` decoders), so ``autoprune search`` and
``autoprune run`` run every searcher on a decoder without knowing it is one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from autoprune.app.stages import stage
from autoprune.config.schema import ExperimentConfig
from autoprune.config.settings import budget, latency_settings, proxy_settings, reward
from autoprune.graph.policy import Policy, check_policy_fits
from autoprune.objective.decoder_evaluator import DecoderEvaluator
from autoprune.zoo.decoder import load_decoder
from autoprune.zoo.lm_text import LMCorpus, lm_corpus
from autoprune.zoo.text import load_text_data


def load_decoder_parts(cfg: ExperimentConfig) -> tuple[nn.Module, LMCorpus, dict[str, Any], Path]:
    """``(model, corpus, meta, folder)``: the pretrained decoder as it is (no training) and its text as blocks of ``data.max_length`` tokens.

    The splits of ``data.name`` (:func:`autoprune.zoo.text.load_text_data`, ``data.limit``
    quotations each at most) are tokenised by the model's own tokenizer into contiguous blocks
    (:func:`autoprune.zoo.lm_text.lm_corpus`).

    Raises:
        ConfigError: the ``llm`` extra is missing, an unknown folder, or ``data.max_length`` above the model's context.
        DataError: the text files are missing (naming the Debian package) or too short for one block per split.
        ModelError: an architecture the decoder graph does not know (naming its class), or weights that do not load.
    """
    d = cfg.data
    stage("baseline", f"decoder {cfg.model.name}, text {d.name} in blocks of {d.max_length} tokens")
    decoder = load_decoder(cfg.model.name)
    text = load_text_data(d.name, data_dir=d.data_dir, val_fraction=d.val_fraction, limit=d.limit)
    corpus = lm_corpus(text, decoder.tokenizer, seq_len=d.max_length, max_positions=decoder.max_positions)
    meta = {"decoder": decoder.name, "folder": str(decoder.folder) if decoder.folder else None,
            "blocks": {"train": len(corpus.train), "val": len(corpus.val), "test": len(corpus.test)}, "seq_len": corpus.seq_len}
    return decoder.model.eval(), corpus, meta, decoder.folder or Path(cfg.model.name)


def checked_decoder_policy(policy: Policy, payload: dict[str, Any], evaluator: DecoderEvaluator) -> Policy:
    """A policy given to a decoder's search (``--warm-start``), checked against the decoder and capped at ``pruning.max_ratio``.

    A decoder's policy is not transferred from another architecture (its graph is not ``transferable``).

    Raises:
        PolicyError: one line: an unknown unit or layer, a policy that removes every KV group, every query head of a
            group or every MLP channel of a layer, or every layer; a policy found on another model; or one that drops
            layer 0 (which a search never drops).
    """
    evaluator.graph.validate_policy(policy.ratios, policy.drop)
    check_policy_fits(policy, evaluator.graph, fingerprint=payload.get("fingerprint"), source="--warm-start")
    return Policy({u: min(r, evaluator.max_ratio) for u, r in policy.ratios.items()}, policy.drop)


def decoder_evaluator(cfg: ExperimentConfig, model: nn.Module, corpus: LMCorpus) -> DecoderEvaluator:
    """The search's objective on a decoder: the config's budget, reward, proxy, latency (``latency.mode``) and pruning sections.

    Raises:
        ConfigError: a bad latency mode, prompt, importance or ratio limit.
        ModelError: a model without the Llama-family layout.
    """
    stage("objective", f"decoder units, dense KL reference and the latency model ({cfg.latency.mode} on {cfg.latency.backend})")
    p = cfg.pruning
    return DecoderEvaluator(model, corpus, budget=budget(cfg), reward=reward(cfg), proxy=proxy_settings(cfg), latency=latency_settings(cfg),
                            importance=p.importance, max_ratio=p.max_ratio, allow_drop=p.drop_blocks, seed=cfg.seed)


__all__ = ["checked_decoder_policy", "decoder_evaluator", "load_decoder_parts"]
