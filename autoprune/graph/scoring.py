"""Importance scores of a graph's units: one score per channel, from weights, gradients or activations.

:meth:`autoprune.graph.prunable.PrunableGraph.importance` calls :func:`unit_scores`. A criterion
(:mod:`autoprune.graph.importance`) is a Torch-Pruning ``Importance`` called on each unit's
dependency group; this module prepares what some criteria read first:

- **gradients** (``taylor``, Molchanov et al. 2019): a few calibration batches are
  back-propagated through a loss the caller chooses (cross-entropy to labels by default; e.g.
  the mean squared error to a dense model's embeddings when distilling an encoder);
- **activations** (``activation``, the mean absolute activation per channel over calibration
  inputs, as Minitron ranks heads and neurons, Muralidharan et al. 2024): forward hooks record
  each unit's activation point (:func:`activation_points`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import ConfigError, PolicyError
from autoprune.graph.importance import make_importance, needs_activations, needs_data, needs_gradients
from autoprune.graph.layers import as_args
from autoprune.graph.units import UnitKind

#: ``batches()`` yields ``(inputs, target)``: ``inputs`` a tensor or a tuple of tensors passed as ``model(*inputs)``.
BatchSource = Callable[[], Iterable[tuple[Any, Any]]]
#: ``loss(model output, target)`` -> scalar tensor, for gradient criteria.
LossFn = Callable[[Any, Any], torch.Tensor]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _default_loss(output: Any, target: Any) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target)


def accumulate_gradients(model: nn.Module, batches: BatchSource, loss: LossFn | None = None) -> None:
    """Back-propagate ``loss(model(*inputs), target)`` of every batch into the parameters' ``.grad`` (eval mode).

    Args:
        model: The dense model (its gradients are zeroed first; its training flag is restored).
        batches: Callable returning ``(inputs, target)`` pairs.
        loss: ``loss(output, target)`` -> scalar; default cross-entropy to class labels.
    """
    loss = loss or _default_loss
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        for inputs, target in batches():
            loss(model(*as_args(inputs)), target).backward()
    finally:
        model.train(was_training)


def activation_points(graph: Any) -> dict[str, list[tuple[nn.Module, nn.Module, int]]]:
    """Where each unit's activation is read: ``{unit: [(hooked module, keyed module, channel axis)]}``.

    - attention heads of a Hugging Face layer: the attention's output (the heads' context vectors,
      before the output projection), keyed by its ``value`` projection (same channel order);
    - any other unit: the normalisation layers among its output layers (BatchNorm, LayerNorm,
      GroupNorm), else its conv/linear/attention output layers.

    Channels are on axis 1 for convs and BatchNorm/GroupNorm, on the last axis otherwise.
    """
    points: dict[str, list[tuple[nn.Module, nn.Module, int]]] = {}
    for u in graph.units:
        if u.features.kind == UnitKind.HEADS and u.name in graph.head_layouts:
            layout = graph.head_layouts[u.name]
            points[u.name] = [(graph.module(u.name), graph.module(layout.projections[2]), -1)]
            continue
        outs = [graph.module(n) for n in u.out_layers]
        chosen = [m for m in outs if isinstance(m, _NORMS)] or [
            m for m in outs if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention))
        ]
        points[u.name] = [(m, m, 1 if isinstance(m, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) else -1) for m in chosen]
    return points


def mean_abs_activations(model: nn.Module, points: Iterable[tuple[nn.Module, nn.Module, int]], batches: BatchSource) -> dict[nn.Module, torch.Tensor]:
    """Mean absolute activation per channel at each point, over every batch (eval mode, no gradients).

    Args:
        model: The dense model.
        points: ``(hooked module, keyed module, channel axis)`` triples (:func:`activation_points`).
        batches: Callable returning ``(inputs, target)`` pairs; only ``inputs`` are used.

    Returns:
        ``{keyed module: float64 tensor of shape (channels,)}``.

    Raises:
        PolicyError: ``batches`` yields nothing.
    """
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}
    handles = []
    for hooked, keyed, axis in {(h, k, a) for h, k, a in points}:
        def hook(_m: nn.Module, _inp: tuple, out: object, keyed: nn.Module = keyed, axis: int = axis) -> None:
            y = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(y, torch.Tensor) or y.dim() == 0:
                return
            y = y.detach().double().abs().movedim(axis, -1)
            flat = y.reshape(-1, y.shape[-1])
            sums[keyed] = sums.get(keyed, 0) + flat.sum(0)
            counts[keyed] = counts.get(keyed, 0) + flat.shape[0]
        handles.append(hooked.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for inputs, _target in batches():
                model(*as_args(inputs))
                seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        raise PolicyError("importance 'activation': the calibration batches are empty")
    return {k: sums[k] / counts[k] for k in sums}


def _fallback_l1(graph: Any, unit: Any) -> torch.Tensor:
    w = graph.module(unit.root).weight.detach()
    return w.transpose(0, 1).flatten(1).abs().sum(1) if getattr(graph.module(unit.root), "transposed", False) else w.flatten(1).abs().sum(1)


def unit_scores(graph: Any, criterion: str, batches: BatchSource | None = None, loss: LossFn | None = None) -> dict[str, torch.Tensor]:
    """Per-channel importance of every unit of ``graph`` (a ``PrunableGraph``) on its dense model.

    Args:
        graph: The graph.
        criterion: A name in :data:`autoprune.graph.importance.IMPORTANCES` or a ``"package.module:Class"``.
        batches: Calibration batches, for criteria that need gradients or activations.
        loss: ``loss(output, target)`` for gradient criteria (default: cross-entropy to labels).

    Returns:
        ``{unit name: float32 scores of shape (channels,)}`` (higher: keep).

    Raises:
        ConfigError: unknown criterion, or one that does not give one score per channel.
        PolicyError: a criterion that needs gradients or activations without ``batches``.
    """
    scorer = make_importance(criterion)
    grads, acts = needs_gradients(scorer), needs_activations(scorer)
    if needs_data(scorer) and batches is None:
        why = "training batches to compute gradients" if grads else "calibration batches to record activations"
        raise PolicyError(f"importance {criterion!r} needs {why}")
    if grads:
        accumulate_gradients(graph.network, batches, loss)
    if acts:
        points = activation_points(graph)
        scorer.activations = mean_abs_activations(graph.network, [p for ps in points.values() for p in ps], batches)
    scores = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for u in graph.units:
                group = graph.dependency_group(u.name)
                try:
                    s = scorer(group)
                    if s is None:  # e.g. BN scale on a group without BatchNorm: fall back to L1
                        s = tp.importance.GroupMagnitudeImportance(p=1)(group)
                except (IndexError, RuntimeError):  # a group Torch-Pruning maps wrongly (e.g. through a split)
                    s = _fallback_l1(graph, u)
                if not isinstance(s, torch.Tensor) or s.shape != (u.features.channels,):
                    got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                    raise ConfigError(f"pruning.importance: {criterion!r} gave {got} for unit {u.name!r}; "
                                      f"expected a 1-D tensor of {u.features.channels} scores")
                scores[u.name] = torch.nan_to_num(s.detach().float().clone(), nan=0.0)
    finally:
        if grads:
            graph.network.zero_grad(set_to_none=True)
    return scores


__all__ = ["BatchSource", "LossFn", "accumulate_gradients", "activation_points", "mean_abs_activations", "unit_scores"]
