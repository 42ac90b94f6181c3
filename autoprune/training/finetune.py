"""Fine-tune a pruned model, optionally distilling from the dense model (Hinton et al. 2015)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from autoprune.objective.proxy import accuracy
from autoprune.zoo import DataBundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning schedule.

    Attributes:
        epochs: Passes over the training split (fractions allowed, e.g. 0.5).
        lr: Peak learning rate.
        batch_size: Batch size.
        optimizer: ``sgd`` (Nesterov momentum 0.9) or ``adamw``.
        schedule: ``cosine`` (decay to 0) or ``constant``.
        weight_decay: L2 penalty on weights.
        distill: Use the dense model as a teacher.
        temperature: Softmax temperature of the distillation loss.
        alpha: Weight of the distillation loss; ``1 - alpha`` weighs the label loss.
        augment: Random crops and flips.
        seed: Shuffling seed.
        steps: Optimiser steps in all, overriding ``epochs`` (None: ``epochs`` decide), for a stated
            short budget (e.g. a decoder's distillation, where one epoch of real text is long).
    """

    epochs: float = 3
    lr: float = 0.01
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 5e-4
    distill: bool = False
    temperature: float = 4.0
    alpha: float = 0.7
    augment: bool = True
    seed: int = 0
    steps: int | None = None


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton et al. 2015): KL divergence between temperature-softened
    distributions, scaled by ``T**2`` so gradients keep their size.

    Args:
        student_logits: ``(N, num_classes)``.
        teacher_logits: ``(N, num_classes)``.
        temperature: ``T > 0``.

    Returns:
        A scalar tensor (mean over the batch).
    """
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean") * t * t


def finetune(
    model: nn.Module,
    data: DataBundle,
    settings: FinetuneSettings = FinetuneSettings(),
    *,
    teacher: nn.Module | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place; returns per-epoch metrics (train loss, val accuracy).

    Args:
        model: The pruned model, trained in place.
        data: Trains on ``train``, reports accuracy on ``val``.
        settings: Epochs, optimiser, learning rate, distillation.
        teacher: The dense model, required when ``settings.distill``.
        progress: Show a progress bar.
        on_epoch: Called with ``(epoch, metrics)`` after each epoch (e.g. MLflow logging).

    Raises:
        ValueError: ``settings.distill`` without a ``teacher``.
    """
    if settings.epochs <= 0:
        return []
    if settings.distill and teacher is None:
        raise ValueError("distillation needs the dense model as teacher")
    if teacher is not None:
        teacher.eval()

    def batches(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return data.train.batches(settings.batch_size, shuffle=True, seed=settings.seed * 1000 + epoch, augment=settings.augment and data.augment_ok)

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        out = model(x)
        loss = F.cross_entropy(out, y)
        if settings.distill and teacher is not None:
            with torch.no_grad():
                t_out = teacher(x)
            loss = (1 - settings.alpha) * loss + settings.alpha * distillation_loss(out, t_out, settings.temperature)
        return loss, len(y)

    def validate() -> tuple[dict[str, float], dict[str, str]]:
        acc = accuracy(model, data.val)
        return {"val_accuracy": acc}, {"val_acc": f"{acc:.4f}"}

    return train_loop(model, settings, len(data.train), batches, loss_of, validate, desc="finetune", progress=progress, on_epoch=on_epoch)


def make_optimizer(params: Iterable[nn.Parameter], settings: FinetuneSettings) -> torch.optim.Optimizer:
    """``settings.optimizer``: AdamW, or SGD with Nesterov momentum 0.9, at ``settings.lr`` with ``settings.weight_decay``."""
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True, weight_decay=settings.weight_decay)


def train_loop(
    model: nn.Module,
    settings: FinetuneSettings,
    n_train: int,
    batches: Callable[[int], Iterable[Any]],
    loss_of: Callable[[Any], tuple[torch.Tensor, int]],
    validate: Callable[[], tuple[dict[str, float], dict[str, str]]],
    *,
    desc: str,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """The training loop shared by :func:`finetune` and the encoder's distillation.

    ``round(settings.epochs * ceil(n_train / batch_size))`` optimiser steps (fractional epochs stop
    mid-epoch; ``settings.steps`` when set), :func:`make_optimizer`, cosine decay to 0 over those steps (or a constant rate),
    a progress bar, and after every (possibly partial) epoch ``validate()``.

    Args:
        model: Trained in place, then left in eval mode.
        settings: Epochs, batch size, optimiser, schedule, seed.
        n_train: Training samples (sets the steps per epoch).
        batches: ``batches(epoch)`` yields that epoch's batches.
        loss_of: ``loss_of(batch)`` returns the batch's loss (a scalar tensor) and its size.
        validate: Returns the epoch's metrics and the progress bar's short form of them.
        desc: The progress bar's label.
        progress: Show the progress bar.
        on_epoch: Called with ``(epoch, metrics)`` after each epoch (e.g. MLflow logging).

    Returns:
        Per-epoch metrics: ``train_loss`` (mean over the epoch's samples) and ``validate``'s.
    """
    torch.manual_seed(settings.seed)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], settings)
    total = settings.steps or max(1, int(round(settings.epochs * math.ceil(n_train / settings.batch_size))))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total) if settings.schedule == "cosine" else None
    history: list[dict[str, float]] = []
    bar = tqdm(total=total, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True)
    step, epoch = 0, 0
    while step < total:
        model.train()
        running, n = 0.0, 0
        for batch in batches(epoch):
            loss, size = loss_of(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            running += loss.item() * size
            n += size
            step += 1
            bar.update(1)
            if step >= total:
                break
        epoch += 1
        extra, shown = validate()
        metrics = {"train_loss": running / max(1, n), **extra}
        if shown:
            bar.set_postfix(epoch=epoch, **shown)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    bar.close()
    model.eval()
    return history
