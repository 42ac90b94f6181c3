"""``DecoderEvaluator``: the :class:`~autoprune.objective.evaluator.PolicyEvaluator` of a decoder LLM, so every searcher runs on it unchanged.

What differs from a CNN's evaluator, and nothing else:

- **the graph** is the decoder's structure (:class:`~autoprune.graph.decoder_search.DecoderSearchGraph`:
  KV groups and query heads per group of kind ``heads``, SwiGLU width ``ffn``, whole layers
  ``layer``), not Torch-Pruning's dependency graph, which hangs on grouped-query attention
  with rotary positions (Torch-Pruning #527);
- **surgery** (:meth:`DecoderEvaluator.prune`) slices the kept heads and channels
  (:func:`~autoprune.graph.decoder_surgery.prune_decoder`), chosen once on the dense model by
  ``pruning.importance``: a criterion that needs activations (``activation``, the default)
  ranks heads and channels by Minitron's activation importance on training text (Muralidharan
  et al. 2024), a magnitude criterion (``l1``, ``l2``) by weight norms;
- **the proxy** is :class:`~autoprune.objective.lm_fidelity.KLProxy`: ``1 / (1 + KL)`` of the
  next-token distribution to the dense model's on validation blocks, a fidelity in ``(0, 1]``
  (1 for the dense model) that takes the place of accuracy in the reward (the logit-matching
  view of Hinton et al. 2015: a pruned model is as good as it predicts what the dense one did);
- **latency** is :class:`~autoprune.measure.decoder_latency_model.DecoderLatencyModel`: eager
  PyTorch in ``latency.mode`` (``prefill`` or ``decode``), paired against the dense model, a
  candidate's estimate the cost model's prediction updated by the measurement, the budget met
  on the interval's upper end (:meth:`~autoprune.objective.budget.Budget.met`) as for every model;
- **depth** is ranked by ShortGPT's block influence (Men et al. 2024) on training text
  (:attr:`block_importance`): the baselines drop the layers of least influence first, and
  Optuna's proposals are moved onto the predicted target with no more layers dropped than the
  target needs (:attr:`searches_at_target`, :mod:`autoprune.search.at_target`);
- **MACs** are per token (:func:`~autoprune.graph.decoder_search.decoder_macs`), exact for a
  ``macs`` budget.

The reward, the budget, the cache, the history and every method the searchers call are the
base class's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from autoprune.errors import ConfigError, ModelError
from autoprune.graph.decoder import DecoderScores
from autoprune.graph.decoder_importance import activation_scores, block_influence, magnitude_scores
from autoprune.graph.decoder_search import DecoderSearchGraph, decoder_macs
from autoprune.graph.decoder_surgery import prune_decoder
from autoprune.graph.importance import make_importance, needs_activations, needs_gradients
from autoprune.graph.policy import Policy
from autoprune.measure.decoder_latency_model import DecoderLatencyModel
from autoprune.measure.settings import LatencySettings
from autoprune.objective.budget import Budget, Reward
from autoprune.objective.evaluator import DEFAULT_MAX_RATIO, PolicyEvaluator
from autoprune.objective.proxies import make_proxy
from autoprune.objective.proxy import ProxySettings
from autoprune.zoo.lm_text import LMCorpus

#: Training blocks the activation importance is computed on.
IMPORTANCE_BLOCKS = 8


def decoder_scores(model: nn.Module, importance: str, corpus: LMCorpus) -> DecoderScores:
    """Importance of the dense decoder's heads and channels by the criterion ``importance`` (what it declares it needs decides how).

    Raises:
        ConfigError: a criterion that needs gradients (not available for decoders yet), or an unknown one.
    """
    scorer = make_importance(importance)
    if needs_gradients(scorer):
        raise ConfigError(f"pruning.importance: {importance!r} needs gradients, which decoder pruning does not compute yet; "
                          "allowed for a decoder: a criterion that needs activations ('activation', Minitron) or none ('l1', 'l2')")
    if needs_activations(scorer):
        return activation_scores(model, list(corpus.train.subset(IMPORTANCE_BLOCKS).batches(2)))
    return magnitude_scores(model)


class DecoderEvaluator(PolicyEvaluator):
    """Evaluate pruning policies of one dense decoder LLM against one budget (see the module docstring).

    Args:
        model: The dense decoder (never modified).
        data: Its text blocks (:func:`~autoprune.zoo.lm_text.lm_corpus`): ``train`` for importance and
            the timed prompt, ``val`` for the KL proxy.
        budget, reward: As for :class:`~autoprune.objective.evaluator.PolicyEvaluator`.
        proxy: ``val_samples`` caps the validation blocks scored
            (:data:`~autoprune.objective.lm_fidelity.KL_BLOCKS` at most).
        latency: ``mode``, ``prompt_tokens``, ``new_tokens``, threads and the paired schedule.
        importance: How heads and channels are ranked (:func:`decoder_scores`).
        max_ratio: Largest per-unit ratio searchers may use.
        allow_drop: Whether policies may drop decoder layers.
        seed: Seed of the proxy's batches.

    Raises:
        ConfigError: a bad ratio limit, budget, importance, latency mode or prompt.
        ModelError: the model has no Llama-family layout or its dense output is not finite.
    """

    def __init__(self, model: nn.Module, data: LMCorpus, *, budget: Budget = Budget(), reward: Reward = Reward(),
                 proxy: ProxySettings = ProxySettings(), latency: LatencySettings = LatencySettings(), importance: str = "activation",
                 max_ratio: float = DEFAULT_MAX_RATIO, allow_drop: bool = True, seed: int = 0) -> None:
        if not 0.0 < max_ratio < 1.0:
            raise ConfigError(f"pruning.max_ratio: {max_ratio!r} is out of range; allowed: 0 < max_ratio < 1")
        self.model, self.data, self.budget, self.reward_fn, self.proxy, self.latency = model.eval(), data, budget, reward, proxy, latency
        self.importance, self.round_to, self.max_ratio, self.seed, self.zoo = importance, None, max_ratio, seed, None
        self.graph = DecoderSearchGraph(model)
        self.allow_drop = allow_drop and bool(self.graph.blocks)
        self.unit_names = self.graph.unit_names
        self.block_names = self.graph.block_names if self.allow_drop else []
        budget.target_ratio(1.0)
        self.dense_macs, self.dense_params = self.cost(model)
        self.scorer = make_proxy(model, data, proxy, seed=seed)
        self.dense_accuracy = self.scorer.dense_score()
        if not self.scorer.dense_output_finite():
            raise ModelError("the dense decoder's next-token distribution on the validation text is not finite (NaN); check its weights")
        self.scores = decoder_scores(model, importance, data)
        influence = block_influence(model, list(data.train.subset(IMPORTANCE_BLOCKS).batches(2)))
        self.block_importance = {f"model.layers.{i}": v for i, v in enumerate(influence)}
        self.example_input = prompt_of(data, latency.prompt_tokens)
        self.latency_model = DecoderLatencyModel.build(model, self.graph, latency, prompt=self.example_input, max_ratio=max_ratio,
                                                       unit_names=self.unit_names, block_names=self.block_names, scores=self.scores)
        self.target = budget.target_ratio(self.dense_ms)
        self._cache: dict[tuple, object] = {}
        self.history = []
        self.calibration_batches = self.scorer.calibration_batches

    def prune(self, policy: Policy) -> nn.Module:
        """The pruned copy a policy gives: the heads and channels kept by :attr:`scores`, sliced (layers deleted).

        Raises:
            PolicyError: an unknown unit or layer, or a policy that removes every KV group, every query head of a
                group, every MLP channel of a layer, or every layer.
        """
        return prune_decoder(self.model, self.graph.plan(policy, self.scores))

    def cost(self, pruned: nn.Module) -> tuple[int, int]:
        """``(MACs per token, parameters)`` of a decoder (the tied LM head counted once)."""
        return decoder_macs(pruned), sum(p.numel() for p in pruned.parameters())

    def tokens_per_s(self, ratio: float) -> float:
        """Decode tokens per second at ``ratio`` of the dense latency (0 in prefill mode)."""
        return self.latency_model.tokens_per_s(ratio) if math.isfinite(ratio) else 0.0


def prompt_of(corpus: LMCorpus, tokens: int) -> torch.Tensor:
    """The ``(1, tokens)`` prompt latency is timed on: the start of the first training block."""
    return corpus.train.input_ids[:1, :tokens]


__all__ = ["IMPORTANCE_BLOCKS", "DecoderEvaluator", "decoder_scores", "prompt_of"]
