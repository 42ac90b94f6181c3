"""Recover a pruned sentence encoder by distillation to the dense encoder's embeddings on training text.

No labels: the loss of each batch is ``1 - cosine`` between the pruned (student) and dense
(teacher) sentence embeddings (:func:`autoprune.objective.proxies.embedding_loss`; on unit
vectors half the mean squared error), the embedding distillation of Reimers & Gurevych 2020
("Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation"). The
teacher runs under ``torch.no_grad`` on the same batch. After each epoch the student's fidelity
(:mod:`autoprune.objective.fidelity`) on validation sentences is reported.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from autoprune.objective.proxies import FidelityProxy, embedding_loss
from autoprune.training.finetune import FinetuneSettings
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
    torch.manual_seed(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True, weight_decay=settings.weight_decay)
    total = max(1, int(round(settings.epochs * math.ceil(len(corpus.train) / settings.batch_size))))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total) if settings.schedule == "cosine" else None
    teacher.eval()
    history: list[dict[str, float]] = []
    bar = tqdm(total=total, desc="distill", unit="batch", disable=not progress, dynamic_ncols=True)
    step, epoch = 0, 0
    while step < total:
        model.train()
        running, n = 0.0, 0
        for ids, mask in corpus.train.batches(settings.batch_size, shuffle=True, by_length=True, seed=settings.seed * 1000 + epoch):
            with torch.no_grad():
                target = teacher(ids, mask)
            loss = embedding_loss(model(ids, mask), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            running += loss.item() * len(ids)
            n += len(ids)
            step += 1
            bar.update(1)
            if step >= total:
                break
        epoch += 1
        metrics = {"train_loss": running / max(1, n)}
        if val is not None:
            fid = val.fidelity(model)
            metrics.update(val_cosine=fid.cosine, val_neighbour_agreement=fid.neighbour_agreement)
            bar.set_postfix(epoch=epoch, val_cos=f"{fid.cosine:.4f}")
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    bar.close()
    model.eval()
    return history


__all__ = ["distill_encoder"]
