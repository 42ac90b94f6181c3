"""The short fine-tune of a candidate policy: the higher fidelity level of multi-fidelity selection.

The search's proxy (adaptive-BN accuracy on a validation subset, no training) is cheap but
ranks policies poorly against what the user gets after fine-tuning (issue 21: it scored uniform
pruning 0.31 and the searched policy 0.59, which fine-tuned to 91.95% and 91.73%). A few
hundred optimiser steps of distillation already separate policies that recover well from
those that do not (the low-fidelity levels of successive halving, Jamieson & Talwalkar 2016;
Li et al. 2018, Hyperband). :func:`short_finetune_accuracy` is that level; the choice among the
proxy's finalists is :mod:`autoprune.search.selection`'s.
"""

from __future__ import annotations

import dataclasses
import math

from autoprune.graph.policy import Policy
from autoprune.graph.surgery import apply_policy
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.objective.proxy import accuracy, recalibrate_bn
from autoprune.training.finetune import FinetuneSettings, finetune


def steps_as_epochs(steps: int, n_train: int, batch_size: int) -> float:
    """The fraction of an epoch (or more) that ``steps`` optimiser steps of ``batch_size`` are on ``n_train`` samples."""
    return steps / max(1, math.ceil(n_train / batch_size))


def short_finetune_accuracy(evaluator: PolicyEvaluator, policy: Policy, settings: FinetuneSettings, steps: int) -> float:
    """Validation accuracy in [0, 1] of ``policy`` after ``steps`` optimiser steps of fine-tuning with distillation.

    The pruned model is built as the search built it (the evaluator's graph, criterion, rounding
    and calibration batches), its BatchNorm statistics re-estimated as the proxy does
    (``proxy.bn_batches``), then trained on the training split with ``settings`` (optimiser,
    learning rate, batch size; distillation from the evaluator's dense model forced on) for
    ``steps`` steps, and scored on the whole validation split. Nothing of the evaluator changes.

    Raises:
        ValueError: ``steps`` < 1.
        PolicyError: the policy does not fit the evaluator's model.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    data = evaluator.data
    pruned = apply_policy(evaluator.model, policy, graph=evaluator.graph, importance=evaluator.importance,
                          round_to=evaluator.round_to, batches=evaluator.calibration_batches, loss=evaluator.scorer.loss)
    proxy = evaluator.proxy
    recalibrate_bn(pruned, data.train, batches=proxy.bn_batches, batch_size=proxy.bn_batch_size, seed=evaluator.seed)
    short = dataclasses.replace(settings, epochs=steps_as_epochs(steps, len(data.train), settings.batch_size), distill=True)
    history = finetune(pruned, data, short, teacher=evaluator.model, progress=False)
    return float(history[-1]["val_accuracy"]) if history else accuracy(pruned, data.val)
