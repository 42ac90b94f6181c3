"""Fidelity of a pruned decoder LLM: KL divergence from the dense model's next-token distribution, and perplexity.

* **KL** (the search's proxy, on calibration blocks of real text): the mean over every position of
  ``KL(p_dense || p_pruned)`` of the next-token distributions, in nats. It asks whether the pruned
  model predicts what the dense model predicted, on every token, which perplexity (one number
  per true token) does not; it is the distillation target of Minitron (Muralidharan et al. 2024)
  and the logit-matching loss of Hinton et al. 2015.
* **Perplexity** (reported, on held-out blocks): ``exp`` of the mean negative log-likelihood of
  each next token, the ``labels=input_ids`` loss of Hugging Face causal LMs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.zoo.lm_text import TokenBlocks

#: Blocks per forward pass.
LM_BATCH = 4


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


class _Eval:
    """Eval mode and no autograd for one scoring pass; the training flag is restored."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()
        self.grad = torch.inference_mode()
        self.grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.grad.__exit__(*exc)
        self.model.train(self.was)


def perplexity(model: nn.Module, blocks: TokenBlocks | Iterable[torch.Tensor], *, batch_size: int = LM_BATCH) -> float:
    """Perplexity of a causal LM on blocks of token ids: ``exp`` of the mean next-token negative log-likelihood.

    Args:
        model: ``model(input_ids).logits`` is ``(B, L, vocab)``.
        blocks: :class:`TokenBlocks` (or an iterable of ``(B, L)`` id batches).

    Returns:
        Perplexity (>= 1); ``inf`` when the loss overflows.
    """
    batches = blocks.batches(batch_size) if isinstance(blocks, TokenBlocks) else blocks
    nll, count = 0.0, 0
    with _Eval(model):
        for ids in batches:
            logits = _logits(model, ids)[:, :-1]
            nll += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
            count += ids[:, 1:].numel()
    mean = nll / max(count, 1)
    return math.exp(mean) if mean < 700 else math.inf


@dataclass(frozen=True)
class LMFidelity:
    """How close a decoder stays to the dense one: ``kl`` (nats per token, 0 for the dense model) and ``perplexity`` on the same blocks."""

    kl: float
    perplexity: float
    tokens: int


class NextTokenKL:
    """KL divergence from a dense decoder's next-token distribution on fixed blocks of text.

    The dense log-probabilities are computed once (``blocks x seq_len x vocab`` float32: 4 blocks of
    128 tokens of SmolLM2's 49,152-token vocabulary hold 100 MB); each candidate runs once.

    Args:
        dense: The dense decoder.
        blocks: The calibration blocks (``train`` or ``val`` of :func:`~autoprune.zoo.lm_text.lm_corpus`).
        batch_size: Blocks per forward pass.
    """

    def __init__(self, dense: nn.Module, blocks: TokenBlocks, *, batch_size: int = LM_BATCH) -> None:
        self.blocks, self.batch_size = blocks, batch_size
        with _Eval(dense):
            self.reference = [torch.log_softmax(_logits(dense, ids), -1) for ids in blocks.batches(batch_size)]

    def fidelity(self, model: nn.Module) -> LMFidelity:
        """Mean per-token ``KL(p_dense || p_model)`` and the perplexity of ``model`` on the blocks.

        Raises:
            ValueError: ``model``'s vocabulary differs from the dense one's.
        """
        kl, nll, count = 0.0, 0.0, 0
        with _Eval(model):
            for ids, ref in zip(self.blocks.batches(self.batch_size), self.reference):
                logp = torch.log_softmax(_logits(model, ids), -1)
                if logp.shape != ref.shape:
                    raise ValueError(f"model logits {tuple(logp.shape)} differ from the dense model's {tuple(ref.shape)}")
                kl += float((ref.exp() * (ref - logp)).sum())
                nll -= float(logp[:, :-1].gather(-1, ids[:, 1:, None]).sum())
                count += ids.numel()
        n_next = count - len(self.blocks)
        mean = nll / max(n_next, 1)
        return LMFidelity(kl / max(count, 1), math.exp(mean) if mean < 700 else math.inf, count)


#: Validation blocks the KL proxy scores by default (of ``data.max_length`` tokens each).
KL_BLOCKS = 8


class KLProxy:
    """The search's proxy for a decoder: ``1 / (1 + KL)`` of the dense next-token distribution on validation blocks (label-free).

    The score is in ``(0, 1]`` and 1.0 for the dense model, like the other proxies' "accuracy",
    and falls monotonically with the KL. ``exp(-KL)`` would too, but it is below ``1e-4`` from a
    KL of 9 nats on, where candidates of a tight budget are (SmolLM2-135M with a third of its
    layers dropped), so every one of them would score 0 and the reward could not rank them;
    ``1 / (1 + KL)`` still tells a KL of 10 (0.091) from one of 20 (0.048).
    :attr:`details` holds the ``kl`` (nats per token) and the ``perplexity`` of the last :meth:`score`.

    Args:
        model: The dense decoder.
        blocks: The validation blocks scored.
        calibration: Training blocks for importance criteria (None: ``blocks``).
    """

    metric = "kl"
    #: How its score is named in tables: it is a fidelity, not the KL itself.
    label = "1/(1+KL)"

    def __init__(self, model: nn.Module, blocks: TokenBlocks, *, calibration: TokenBlocks | None = None) -> None:
        self.model, self.calibration = model, calibration if calibration is not None else blocks
        self.kl = NextTokenKL(model, blocks)
        self.details: dict[str, float] = {}

    def dense_score(self) -> float:
        """1.0 by construction (KL of the dense model to itself is 0)."""
        return 1.0

    def dense_output_finite(self) -> bool:
        """False when the dense log-probabilities hold NaN (``-inf`` is a probability of 0)."""
        return not any(bool(torch.isnan(r).any()) for r in self.kl.reference)

    def score(self, pruned: nn.Module) -> float:
        """``1 / (1 + KL)`` of a pruned copy (0 for a KL that is not finite); ``kl`` and ``perplexity`` go to :attr:`details`."""
        fid = self.kl.fidelity(pruned)
        self.details = {"kl": fid.kl, "perplexity": fid.perplexity}
        return 1.0 / (1.0 + max(0.0, fid.kl)) if math.isfinite(fid.kl) else 0.0

    def calibration_batches(self) -> list[tuple[torch.Tensor, None]]:
        """``(input_ids, None)`` batches of training blocks (the target is the dense model's own next-token distribution)."""
        return [(ids, None) for ids in self.calibration.batches(LM_BATCH)][:4]


__all__ = ["KL_BLOCKS", "LM_BATCH", "KLProxy", "LMFidelity", "NextTokenKL", "perplexity"]
