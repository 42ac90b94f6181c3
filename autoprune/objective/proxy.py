"""Accuracy: a fast proxy for search (adaptive BN + validation subset) and full evaluation.

After pruning, BatchNorm running statistics no longer match the surviving
channels' activations. Re-estimating them on a few training batches (adaptive
BN, as in EagleEye, Li et al. 2020) makes accuracy right after pruning a far
better predictor of accuracy after fine-tuning than the raw pruned model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autoprune.zoo import DataBundle, Split


@dataclass(frozen=True)
class ProxySettings:
    """Sizes of the fast accuracy proxy.

    Attributes:
        bn_batches: Training batches used to re-estimate BN statistics (0 disables adaptive BN).
        bn_batch_size: Size of those batches.
        val_samples: Validation samples scored (None: the whole validation split).
        eval_batch_size: Batch size for scoring.
    """

    bn_batches: int = 8
    bn_batch_size: int = 64
    val_samples: int | None = 1000
    eval_batch_size: int = 500


def recalibrate_bn(model: nn.Module, split: Split, *, batches: int, batch_size: int, seed: int = 0) -> None:
    """Reset BN running statistics and re-estimate them (cumulative average) on ``batches`` batches of ``split``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(split.batches(batch_size, shuffle=True, seed=seed)):
            if i >= batches:
                break
            model(x)
    for m, mom in saved:
        m.momentum = mom
    model.train(was_training)


def accuracy(model: nn.Module, split: Split, *, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in split.batches(batch_size):
            correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(1, len(split))


def proxy_accuracy(model: nn.Module, data: DataBundle, settings: ProxySettings = ProxySettings(), *, seed: int = 0) -> float:
    """Validation accuracy right after pruning, with BN re-estimated; modifies ``model``'s BN buffers."""
    recalibrate_bn(model, data.train, batches=settings.bn_batches, batch_size=settings.bn_batch_size, seed=seed)
    return accuracy(model, data.val.subset(settings.val_samples), batch_size=settings.eval_batch_size)


def evaluate(model: nn.Module, split: Split, *, batch_size: int = 500) -> dict[str, float]:
    """Full evaluation: accuracy and mean cross-entropy loss on ``split``."""
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    with torch.inference_mode():
        for x, y in split.batches(batch_size):
            out = model(x)
            correct += int((out.argmax(1) == y).sum())
            loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            n += len(y)
    model.train(was_training)
    return {"accuracy": correct / max(1, n), "loss": loss / max(1, n)}
