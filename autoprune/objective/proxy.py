"""Accuracy: a fast proxy for search (adaptive BN + validation subset) and full split metrics.

After pruning, BatchNorm running statistics no longer match the surviving
channels' activations. Re-estimating them on a few training batches (adaptive
BN, as in EagleEye, Li et al. 2020) makes accuracy right after pruning a far
better predictor of accuracy after fine-tuning than the raw pruned model.

Batches are batch-first: images ``(N, C, H, W)`` (or features ``(N, F)``) with integer class
labels ``(N,)``; models return logits ``(N, num_classes)``.
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
        metric: ``accuracy`` (top-1 of a classifier, after adaptive BN), ``fidelity`` (a
            sentence encoder's embeddings against the dense model's, label-free:
            :class:`autoprune.objective.proxies.FidelityProxy`), or None: the one the data calls
            for (fidelity for tokenised text).
        neighbours: ``fidelity``: nearest neighbours compared per sentence (``k``).
    """

    bn_batches: int = 8
    bn_batch_size: int = 64
    val_samples: int | None = 1000
    eval_batch_size: int = 500
    metric: str | None = None
    neighbours: int = 10


def recalibrate_bn(model: nn.Module, split: Split, *, batches: int, batch_size: int, seed: int = 0) -> None:
    """Adaptive BN (Li et al. 2020, EagleEye): reset BN running statistics and re-estimate them.

    The statistics become the cumulative average over ``batches`` shuffled batches of ``split``,
    run in train mode without gradients; weights are untouched and each layer's momentum and
    the model's training flag are restored. A model without BatchNorm, or ``batches <= 0``,
    is left as it is.

    Args:
        model: The (pruned) model; its BN buffers are modified in place.
        split: Where the batches come from (the training split in search).
        batches: How many batches to average over.
        batch_size: Samples per batch.
        seed: Shuffling seed, so the same policy gets the same statistics.
    """
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
    """Top-1 accuracy of ``model`` on ``split``, in eval mode (the training flag is restored).

    Returns:
        The fraction of correctly classified samples in [0, 1] (0 for an empty split).
    """
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in split.batches(batch_size):
            correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(1, len(split))


def proxy_accuracy(model: nn.Module, data: DataBundle, settings: ProxySettings = ProxySettings(), *, seed: int = 0) -> float:
    """The search's accuracy proxy: adaptive BN on the training split, then accuracy on a validation subset.

    Follows EagleEye (Li et al. 2020). Modifies ``model``'s BN buffers.

    Args:
        model: A pruned model, not fine-tuned.
        data: The data bundle; only ``train`` (BN statistics) and ``val`` are read, never ``test``.
        settings: Batch counts and the validation subset size.
        seed: Seed of the BN-recalibration batches.

    Returns:
        Top-1 accuracy in [0, 1] on the first ``settings.val_samples`` validation samples.
    """
    recalibrate_bn(model, data.train, batches=settings.bn_batches, batch_size=settings.bn_batch_size, seed=seed)
    return accuracy(model, data.val.subset(settings.val_samples), batch_size=settings.eval_batch_size)


def split_metrics(model: nn.Module, split: Split, *, batch_size: int = 500) -> dict[str, float]:
    """Accuracy and mean cross-entropy loss of ``model`` over a whole split (e.g. the test split).

    Not the policy evaluation (:meth:`autoprune.objective.evaluator.PolicyEvaluator.evaluate`) nor
    the ``evaluate`` CLI command, which reports these metrics for a saved model. Runs in eval mode
    without touching BN statistics; the training flag is restored.

    Returns:
        ``{"accuracy": top-1 in [0, 1], "loss": mean cross-entropy per sample (nats)}``.
    """
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
