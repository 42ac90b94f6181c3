"""Structural pruning: apply a :class:`Policy` to a copy of a model, really shrinking its tensors.

Importance scores are computed once per criterion on the dense model (see
:meth:`PrunableGraph.importance`), so applying a policy is a deep copy plus a few
index selections: fast enough to run inside a search loop. The caller's model is
never modified.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Iterable

import torch
from torch import nn

from autoprune.errors import PolicyError
from autoprune.graph.importance import DEFAULT_IMPORTANCE, IMPORTANCES
from autoprune.graph.prunable import PrunableGraph, kept_channels
from autoprune.graph.policy import Policy

log = logging.getLogger(__name__)

HISTORY_ATTR = "_autoprune_history"

BatchSource = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def pruning_history(model: nn.Module) -> list[dict]:
    """The stages of surgery applied to ``model`` by :func:`apply_policy` (empty for a dense model)."""
    return list(getattr(model, HISTORY_ATTR, []))


def apply_policy(
    model: nn.Module,
    policy: Policy,
    *,
    graph: PrunableGraph | None = None,
    example_input: torch.Tensor | None = None,
    importance: str = DEFAULT_IMPORTANCE,
    round_to: int | None = None,
    batches: BatchSource | None = None,
) -> nn.Module:
    """Return a pruned copy of ``model``: channel ratios per unit, then the listed blocks dropped.

    Args:
        model: The dense model; it is not modified.
        policy: Ratios per unit name and blocks to drop.
        graph: A :class:`PrunableGraph` built on ``model`` (built here if omitted; pass it in loops).
        example_input: Needed when ``graph`` is omitted.
        importance: A name in :data:`autoprune.graph.importance.IMPORTANCES` (``l1``, ``l2``,
            ``taylor`` (needs ``batches``), ``bn_scale``) or a ``"package.module:Class"`` criterion.
        round_to: Keep channel counts at multiples of this.
        batches: Training batches for the Taylor criterion.

    Raises:
        ConfigError: an unknown importance criterion (the message lists the allowed ones).
        PolicyError: unknown unit/block names, ratios outside [0, 1), or a ratio removing every channel.
    """
    IMPORTANCES.check(importance)
    if graph is None:
        if example_input is None:
            raise PolicyError("apply_policy needs either a graph or an example_input")
        graph = PrunableGraph(model, example_input)
    elif graph.model is not model:
        raise PolicyError("the graph was built on a different model object than the one passed to apply_policy")
    graph.validate_policy(policy.ratios, policy.drop)
    kept = graph.kept(policy.ratios, round_to)
    scores = graph.importance(importance, batches)
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    history: list[list] = []
    for unit in graph.units:
        n = unit.features.channels
        n_prune = n - kept[unit.name]
        if n_prune <= 0:
            continue
        idxs = torch.argsort(scores[unit.name], stable=True)[:n_prune].tolist()
        idxs.sort()
        for mname, handler, dim, ix in graph.pruning_plan(unit.name, idxs):
            handler.__self__.pruning_dim = dim
            handler(modules[mname], ix)
        history.append([unit.name, True, idxs])
    for block in policy.drop:
        _set_submodule(pruned, block, nn.Identity())
    setattr(pruned, HISTORY_ATTR, pruning_history(model) + [{"prune": history, "drop": list(policy.drop)}])
    return pruned


def apply_iteratively(
    model: nn.Module,
    policy: Policy,
    *,
    example_input: torch.Tensor,
    steps: int,
    recover: Callable[[nn.Module], None] | None = None,
    importance: str = DEFAULT_IMPORTANCE,
    round_to: int | None = None,
    batches: BatchSource | None = None,
) -> nn.Module:
    """Prune in ``steps`` stages, calling ``recover(model)`` (e.g. a short fine-tune) after each.

    The kept channel count of every unit moves linearly from dense to the policy's target;
    importance is re-estimated on the recovered model at each stage. Blocks are dropped at the
    first stage.
    """
    if steps < 1:
        raise PolicyError(f"iterative steps: {steps!r} must be >= 1")
    dense_graph = PrunableGraph(model, example_input)
    dense_graph.validate_policy(policy.ratios, policy.drop)
    target = dense_graph.kept(policy.ratios, round_to)
    dense_n = {u.name: u.features.channels for u in dense_graph.units}
    current = model
    for step in range(1, steps + 1):
        graph = dense_graph if step == 1 else PrunableGraph(current, example_input, drop_blocks=False)
        ratios = {}
        for u in graph.units:
            if u.name not in target:
                continue
            want = dense_n[u.name] - (dense_n[u.name] - target[u.name]) * step / steps
            have = u.features.channels
            want_int = max(target[u.name], int(round(want)))
            ratios[u.name] = max(0.0, 1.0 - want_int / have) if have > 0 else 0.0
        drop = policy.drop if step == 1 else ()
        # ratios computed from integer counts: round_to applies only at the final stage
        current = apply_policy(
            current, Policy(ratios, tuple(drop)), graph=graph, importance=importance,
            round_to=round_to if step == steps else None, batches=batches,
        )
        if recover is not None and step < steps:
            recover(current)
        log.info("iterative pruning: stage %d/%d done", step, steps)
    return current


def replay_history(model: nn.Module, history: list[dict], example_input: torch.Tensor) -> nn.Module:
    """Replay recorded surgery on a fresh dense ``model`` (in place), so saved weights fit it again."""
    import torch_pruning as tp  # local: only needed when loading

    for stage in history:
        if stage.get("prune"):
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
            dg.load_pruning_history([[n, bool(o), list(ix)] for n, o, ix in stage["prune"]])
        for block in stage.get("drop", []):
            _set_submodule(model, block, nn.Identity())
    setattr(model, HISTORY_ATTR, list(history))
    return model


__all__ = ["apply_iteratively", "apply_policy", "kept_channels", "pruning_history", "replay_history"]
