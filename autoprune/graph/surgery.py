"""Structural pruning: apply a :class:`Policy` to a copy of a model, really shrinking its tensors.

Importance scores are computed once per criterion on the dense model (see
:meth:`PrunableGraph.importance`); each unit's constraint turns a ratio into an allowed count and
chooses the channels (group-consistent for grouped convs and GroupNorm, whole heads for attention).
The caller's model is never modified.

Surgery is correct by construction: a unit whose channels meet another unit's (a concat, a split,
one layer dimension cut by both) is cut through a Torch-Pruning dependency group queried on the
*current*, partly pruned copy (``DependencyGraph.get_pruning_group`` on a graph rebuilt for it), so
concat offsets and split sizes are those of the model being cut. Every other unit replays the
dense model's group: its layers and dimensions are cut by no other unit, so the dense indices are
exactly what a fresh query would return. Those units are cut first, on a copy still equal to the
dense model along their dimensions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from autoprune.errors import PolicyError
from autoprune.graph.importance import DEFAULT_IMPORTANCE, IMPORTANCES
from autoprune.graph.layers import ExampleInput
from autoprune.graph.opaque import build_dependency_graph
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph, kept_channels
from autoprune.graph.scoring import BatchSource, LossFn
from autoprune.graph.transformer import fix_head_counts, head_layouts, shortcut_for, split_attention_heads

log = logging.getLogger(__name__)

HISTORY_ATTR = "_autoprune_history"


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
    example_input: ExampleInput | None = None,
    importance: str = DEFAULT_IMPORTANCE,
    round_to: int | None = None,
    batches: BatchSource | None = None,
    loss: LossFn | None = None,
) -> nn.Module:
    """Return a pruned copy of ``model``: channel ratios per unit, then the listed blocks dropped.

    A unit of attention heads keeps whole heads (the ratio rounds to heads, at least one is kept) and
    its attention module's head count is updated; a dropped encoder layer becomes a
    :class:`~autoprune.graph.transformer.SkipLayer`, any other dropped block an ``nn.Identity``.

    Args:
        model: The dense model; it is not modified.
        policy: Ratios per unit name and blocks to drop.
        graph: A :class:`PrunableGraph` built on ``model`` (built here if omitted; pass it in loops).
        example_input: Needed when ``graph`` is omitted.
        importance: A name in :data:`autoprune.graph.importance.IMPORTANCES` (``l1``, ``l2``,
            ``taylor`` and ``activation`` (need ``batches``), ``bn_scale``) or a ``"package.module:Class"`` criterion.
        round_to: Keep channel counts at multiples of this (when the unit's layout allows it).
        batches: Calibration batches ``(inputs, target)`` for the Taylor and activation criteria.
        loss: ``loss(output, target)`` for the Taylor criterion (default cross-entropy).

    Returns:
        The pruned copy; every unit keeps an allowed count (at least one channel, a multiple of its
        groups/heads), see :class:`~autoprune.graph.constraints.ChannelConstraint`.

    Raises:
        ConfigError: an unknown importance criterion (the message lists the allowed ones).
        PolicyError: unknown unit/block names or ratios outside [0, 1).
    """
    IMPORTANCES.check(importance)
    if graph is None:
        if example_input is None:
            raise PolicyError("apply_policy needs either a graph or an example_input")
        graph = PrunableGraph(model, example_input)
    elif model is not graph.model and model is not graph.network:
        raise PolicyError("the graph was built on a different model object than the one passed to apply_policy")
    graph.validate_policy(policy.ratios, policy.drop)
    kept = graph.kept(policy.ratios, round_to)
    scores = graph.importance(importance, batches, loss)
    cuts = {
        u.name: u.constraint.choose(scores[u.name], kept[u.name])
        for u in graph.units if kept[u.name] < u.features.channels
    }
    pruned = prune_channels(model, graph, cuts)
    for block in policy.drop:
        _set_submodule(pruned, block, shortcut_for(pruned.get_submodule(block)))
    history = getattr(pruned, HISTORY_ATTR)
    history[-1]["drop"] = list(policy.drop)
    return pruned


def _cut_fresh(model: nn.Module, unit: str, idxs: list[int], example_input: ExampleInput, opaque: list[str]) -> None:
    """Cut ``idxs`` of the unit rooted at layer ``unit`` through a group queried on ``model`` as it is now (``opaque`` modules hidden)."""
    dg = build_dependency_graph(model, example_input, opaque)
    root = model.get_submodule(unit)
    pruner = dg.get_pruner_of_module(root)
    dg.get_pruning_group(root, pruner.prune_out_channels, idxs).prune(record_history=False)


def _fix_heads(model: nn.Module, head_dims: dict[str, int]) -> None:
    """Whole heads were cut: keep each attention layer's head size and lower its head count.

    Torch-Pruning's ``MultiheadAttentionPruner`` keeps ``num_heads`` and shrinks ``head_dim``,
    which changes the attention scale; with whole heads cut the head size must stay. Hugging Face
    attention modules get ``num_attention_heads`` and ``all_head_size`` from their query width.
    """
    for name, head_dim in head_dims.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:  # inside a dropped layer
            continue
        if isinstance(m, nn.MultiheadAttention) and m.embed_dim % head_dim == 0:
            m.num_heads, m.head_dim = m.embed_dim // head_dim, head_dim
    fix_head_counts(model, head_dims)


def prune_channels(model: nn.Module, graph: PrunableGraph, cuts: dict[str, list[int]]) -> nn.Module:
    """Return a copy of ``model`` with the given channels of each unit removed (exact surgery).

    Args:
        model: The dense model ``graph`` was built on; it is not modified.
        graph: Its :class:`PrunableGraph`.
        cuts: Per unit name, the indices of its channels to remove (root-layer coordinates,
            e.g. chosen by the unit's :class:`~autoprune.graph.constraints.ChannelConstraint`).

    Returns:
        The pruned copy (laid out like ``graph.network``: its attention heads split), with its
        surgery recorded (see :func:`pruning_history`: the heads split, the opaque modules and the
        cuts, so :func:`replay_history` repeats them on a fresh dense model).

    Raises:
        PolicyError: an unknown unit name.
    """
    by_name = {u.name: u for u in graph.units}
    unknown = sorted(set(cuts) - set(by_name))
    if unknown:
        raise PolicyError(f"unknown units {unknown}; units of this model: {', '.join(graph.unit_names)}")
    pruned = graph.dense_copy(model)
    modules = dict(pruned.named_modules())
    opaque = sorted(graph.opaque)
    history: list[list] = []
    order = [u for u in graph.units if cuts.get(u.name) and not u.requery] + [u for u in graph.units if cuts.get(u.name) and u.requery]
    for unit in order:
        idxs = sorted(int(i) for i in cuts[unit.name])
        if unit.requery:
            _cut_fresh(pruned, unit.root, idxs, graph.example_input, opaque)
        else:
            for mname, handler, dim, ix in graph.pruning_plan(unit.name, idxs):
                handler.__self__.pruning_dim = dim
                handler(modules[mname], ix)
        history.append([unit.root, True, idxs])  # the root layer: what replay_history cuts again
    _fix_heads(pruned, graph.head_dims)
    stage = {"prune": history, "drop": []}
    if graph.split_heads:
        stage["split"] = list(graph.split_heads)
    if opaque:
        stage["opaque"] = opaque
    setattr(pruned, HISTORY_ATTR, pruning_history(model) + [stage])
    return pruned


def apply_iteratively(
    model: nn.Module,
    policy: Policy,
    *,
    example_input: ExampleInput,
    steps: int,
    recover: Callable[[nn.Module], None] | None = None,
    importance: str = DEFAULT_IMPORTANCE,
    round_to: int | None = None,
    batches: BatchSource | None = None,
    loss: LossFn | None = None,
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
            round_to=round_to if step == steps else None, batches=batches, loss=loss,
        )
        if recover is not None and step < steps:
            recover(current)
        log.info("iterative pruning: stage %d/%d done", step, steps)
    return current


def replay_history(model: nn.Module, history: list[dict], example_input: ExampleInput) -> nn.Module:
    """Replay recorded surgery on a fresh dense ``model`` (in place), so saved weights fit it again."""
    for stage in history:
        split_attention_heads(model, stage.get("split", []))
        head_dims = {n: m.head_dim for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
        head_dims.update({n: h.head_dim for n, h in head_layouts(model).items()})
        for name, _out, idxs in stage.get("prune", []):
            _cut_fresh(model, name, list(idxs), example_input, list(stage.get("opaque", [])))
        _fix_heads(model, head_dims)
        for block in stage.get("drop", []):
            _set_submodule(model, block, shortcut_for(model.get_submodule(block)))
    setattr(model, HISTORY_ATTR, list(history))
    return model


__all__ = ["apply_iteratively", "apply_policy", "kept_channels", "prune_channels", "pruning_history", "replay_history"]
