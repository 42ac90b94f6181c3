"""Recover a pruned decoder LLM by distillation to the dense decoder's next-token distribution on training text.

No labels are used: the loss of each batch of blocks is the KL divergence from the dense
(teacher) to the pruned (student) next-token distribution at every position, softened by the
temperature ``T`` and scaled by ``T**2`` (Hinton et al. 2015,
:func:`autoprune.training.finetune.distillation_loss`, with every token a sample). This is the
logit distillation Minitron recovers its pruned LLMs with (Muralidharan et al. 2024: distillation
to the teacher's logits alone beats training on the labels). The teacher runs under
``torch.no_grad`` on the same batch. After each epoch (or the last, partial one when
``finetune.steps`` stops first) the student's KL and perplexity on validation blocks are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from autoprune.objective.lm_fidelity import NextTokenKL
from autoprune.training.finetune import FinetuneSettings, distillation_loss, train_loop
from autoprune.zoo.lm_text import TokenBlocks


def _blocks(train: TokenBlocks, batch_size: int, seed: int) -> Iterable[torch.Tensor]:
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(train), batch_size):
        yield train.input_ids[order[start : start + batch_size]]


def distill_decoder(
    model: nn.Module,
    teacher: nn.Module,
    train: TokenBlocks,
    settings: FinetuneSettings = FinetuneSettings(),
    *,
    val: NextTokenKL | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train the pruned decoder ``model`` in place to reproduce ``teacher``'s next-token distributions on the training blocks.

    Args:
        model: The pruned causal LM, ``model(input_ids).logits`` ``(B, L, vocab)``.
        teacher: The dense causal LM (never modified; same vocabulary).
        train: Training blocks ``(N, L)`` of token ids, visited in a random order per epoch.
        settings: ``epochs`` (fractions allowed) or ``steps`` (optimiser steps in all), ``lr``,
            ``batch_size`` (blocks per step), ``optimizer`` (``adamw`` suits transformers),
            ``schedule``, ``weight_decay``, ``temperature``, ``seed``. The label and augmentation
            settings do not apply.
        val: KL and perplexity on validation blocks reported after each epoch (None: not reported).
        progress: Show a progress bar (tqdm).
        on_epoch: Called with ``(epoch, metrics)`` after each epoch (e.g. MLflow logging).

    Returns:
        Per-epoch ``{"train_loss": mean T^2-scaled KL per token, "val_kl", "val_perplexity"}`` (the
        last two only with ``val``); empty when ``epochs`` is 0 and no ``steps`` are set.

    Raises:
        ValueError: the student's vocabulary differs from the teacher's.
    """
    if (settings.epochs <= 0 and not settings.steps) or len(train) == 0:
        return []
    teacher.eval()
    use_cache = {"use_cache": False}

    def batches(epoch: int) -> Iterable[torch.Tensor]:
        return _blocks(train, settings.batch_size, settings.seed * 1000 + epoch)

    def loss_of(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        with torch.no_grad():
            target = teacher(input_ids=ids, **use_cache).logits.float()
        logits = model(input_ids=ids, **use_cache).logits.float()
        if logits.shape != target.shape:
            raise ValueError(f"student logits {tuple(logits.shape)} differ from the teacher's {tuple(target.shape)}")
        vocab = logits.shape[-1]
        return distillation_loss(logits.reshape(-1, vocab), target.reshape(-1, vocab), settings.temperature), int(ids.numel())

    def validate() -> tuple[dict[str, float], dict[str, str]]:
        if val is None:
            return {}, {}
        fid = val.fidelity(model)
        return {"val_kl": fid.kl, "val_perplexity": fid.perplexity}, {"val_kl": f"{fid.kl:.4f}"}

    return train_loop(model, settings, len(train), batches, loss_of, validate, desc="distill", progress=progress, on_epoch=on_epoch)


__all__ = ["distill_decoder"]
