"""Recover a pruned sentence encoder by distillation to the dense encoder's embeddings on training text.

No labels: the loss of each batch is ``1 - cosine`` between the pruned (student) and dense
(teacher) sentence embeddings (:func:`autoprune.objective.proxies.embedding_loss`; on unit
vectors half the mean squared error), the embedding distillation of Reimers & Gurevych 2020
("Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation"). The
teacher runs under ``torch.no_grad`` on the same batch. After each epoch the student's fidelity
(:mod:`autoprune.objective.fidelity`) on validation sentences is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from autoprune.objective.proxies import FidelityProxy, embedding_loss
from autoprune.training.finetune import FinetuneSettings, train_loop
from autoprune.zoo.text import TokenizedCorpus


def distill_encoder(
    model: nn.Module,
    teacher: nn.Module,
    corpus: TokenizedCorpus,
    settings: FinetuneSettings = FinetuneSettings(),
    *,
    val: FidelityProxy | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train the pruned encoder ``model`` in place to reproduce ``teacher``'s embeddings of the training text.

    Args:
        model: The pruned sentence encoder, ``(input_ids, attention_mask)`` -> ``(N, hidden)``.
        teacher: The dense encoder (never modified).
        corpus: Trains on ``corpus.train``: batches of ``settings.batch_size`` sentences of similar length, in
            random order (length-grouped, :meth:`~autoprune.zoo.text.TokenSplit.batches`), so little compute goes to padding.
        settings: ``epochs`` (fractions allowed), ``lr``, ``batch_size``, ``optimizer``
            (``adamw`` suits transformers; ``sgd`` is Nesterov momentum 0.9), ``schedule``,
            ``weight_decay``, ``seed``. The label and temperature settings do not apply.
        val: Fidelity on validation sentences reported after each epoch (None: not reported).
        progress: Show a progress bar.
        on_epoch: Called with ``(epoch, metrics)`` after each epoch (e.g. MLflow logging).

    Returns:
        Per-epoch ``{"train_loss": mean 1 - cosine, "val_cosine", "val_neighbour_agreement"}``
        (the last two only with ``val``).
    """
    if settings.epochs <= 0 or len(corpus.train) == 0:
        return []
    teacher.eval()

    def batches(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return corpus.train.batches(settings.batch_size, shuffle=True, by_length=True, seed=settings.seed * 1000 + epoch)

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        ids, mask = batch
        with torch.no_grad():
            target = teacher(ids, mask)
        return embedding_loss(model(ids, mask), target), len(ids)

    def validate() -> tuple[dict[str, float], dict[str, str]]:
        if val is None:
            return {}, {}
        fid = val.fidelity(model)
        return {"val_cosine": fid.cosine, "val_neighbour_agreement": fid.neighbour_agreement}, {"val_cos": f"{fid.cosine:.4f}"}

    return train_loop(model, settings, len(corpus.train), batches, loss_of, validate, desc="distill", progress=progress, on_epoch=on_epoch)


__all__ = ["distill_encoder"]
