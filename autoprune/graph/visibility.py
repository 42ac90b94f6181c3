"""Layers the dependency graph cannot see, and the units whose channels reach them.

Torch-Pruning builds its graph by tracing autograd, so a layer run on a detached tensor (a linear
probe, a monitor) is executed by the model but absent from the graph: cutting the channels it
reads would change its input without changing its weights. Such layers are found by comparing
the layers that run (forward hooks) with the graph's nodes, and each unit is then cut by one
allowed step on a copy to see whether that layer's input changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune.graph.hooks import model_copy


def invisible_layers(model: nn.Module, dg: tp.DependencyGraph, executed: Sequence[str]) -> list[str]:
    """Executed layers with parameters of their own that the dependency graph does not hold.

    Args:
        model: The dense model.
        dg: Torch-Pruning's dependency graph built on ``model``.
        executed: Dotted names of the leaf layers that ran, in call order.

    Returns:
        Their names, in call order.
    """
    modules = dict(model.named_modules())
    return [
        n for n in dict.fromkeys(executed)
        if list(modules[n].parameters(recurse=False)) and modules[n] not in dg.module2node
    ]


def input_shape(model: nn.Module, layer: str, example_input: torch.Tensor) -> tuple | None:
    """Shape of the first input ``layer`` receives when ``model`` runs (``None`` if it never runs).

    A failure of the forward pass after the layer was reached is ignored: the shape is what matters.
    """
    seen: list[tuple] = []

    def hook(_m: nn.Module, inputs: tuple) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor):
            seen.append(tuple(inputs[0].shape))

    handle = model.get_submodule(layer).register_forward_pre_hook(hook)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            try:
                model(*(example_input if isinstance(example_input, tuple) else (example_input,)))
            except Exception:  # noqa: BLE001 - the layer itself may fail on the changed input
                pass
    finally:
        handle.remove()
        model.train(was_training)
    return seen[0] if seen else None


def units_feeding(graph: Any, layer: str) -> list[str]:
    """Units of ``graph`` (a ``PrunableGraph``) whose channels reach ``layer``, a layer the dependency graph cannot see.

    Each unit is cut by one allowed step on a copy of the dense model, replaying its dense
    indices (exact for a single unit); it feeds ``layer`` when the input ``layer`` receives then
    differs in shape from the dense one.

    Returns:
        Unit names, in graph order.
    """
    dense = input_shape(graph.network, layer, graph.example_input)
    feeding = []
    for unit in graph.units:
        pruned = model_copy(graph.network)
        modules = dict(pruned.named_modules())
        n = unit.features.channels
        idxs = unit.constraint.choose(torch.arange(n, dtype=torch.float64), unit.allowed[-2])
        try:
            for mname, handler, dim, ix in graph.pruning_plan(unit.name, idxs):
                handler.__self__.pruning_dim = dim
                handler(modules[mname], ix)
            shape = input_shape(pruned, layer, graph.example_input)
        except Exception:  # noqa: BLE001 - a failure before the layer means the cut reaches it
            shape = None
        if shape != dense:
            feeding.append(unit.name)
    return feeding


__all__ = ["input_shape", "invisible_layers", "units_feeding"]
