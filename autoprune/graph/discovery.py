"""Finding a model's units and droppable blocks: Torch-Pruning's dependency groups become units, residual blocks and encoder layers droppable blocks.

:class:`~autoprune.graph.prunable.PrunableGraph` calls these once, when it is built, and keeps
what they find. Every dependency group of Torch-Pruning's ``DependencyGraph`` (DepGraph, Fang et
al. 2023) rooted at a conv or linear layer becomes one :class:`~autoprune.graph.units.PrunableUnit`
unless its channels cannot be cut (they index a bare parameter, they are an encoder's hidden
width, or no smaller channel count is allowed); the reason is kept. A module whose input and
output shapes match and that is residual (flagged, traced, or an encoder layer) becomes a
:class:`~autoprune.graph.units.DroppableBlock`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch_pruning as tp
from torch import nn

from autoprune.graph.constraints import MULTI_SOURCE_OPS, UnsupportedUnit, constraint_of
from autoprune.graph.hooks import hookable_modules
from autoprune.graph.layers import ExampleInput, LayerSpec, as_args, spec_macs
from autoprune.graph.opaque import OpaqueBox
from autoprune.graph.residual import not_residual_because
from autoprune.graph.transformer import HeadLayout, SplitHeadAttention, head_role, is_transformer_layer
from autoprune.graph.units import DroppableBlock, PrunableUnit, UnitFeatures, block_kind, unit_kind

log = logging.getLogger(__name__)

#: Layers a unit may be rooted at (whose output channels index it): Torch-Pruning's roots plus embeddings.
ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding)


@dataclass
class FoundUnits:
    """What :func:`find_units` found.

    Attributes:
        units: The units in execution order of their root layers.
        groups: Torch-Pruning's dependency group behind each unit, by unit name.
        out_owner, in_owner: Per layer name, the unit whose channels are its output / input channels.
        out_share, in_share: Per layer name, ``{unit: how many of its output / input channels the
            unit's channels are}`` (several units share the input of a layer after a concat; one
            conv channel is ``H*W`` input features of a linear layer after a flatten).
        skipped: ``(name, reason, warn)`` of each group that is not a unit (``warn``: worth a warning).
    """

    units: list[PrunableUnit]
    groups: dict[str, tp.dependency.Group] = field(default_factory=dict)
    out_owner: dict[str, str] = field(default_factory=dict)
    in_owner: dict[str, str] = field(default_factory=dict)
    out_share: dict[str, dict[str, int]] = field(default_factory=dict)
    in_share: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[tuple[str, str, bool]] = field(default_factory=list)


def find_units(
    model: nn.Module,
    dg: tp.DependencyGraph,
    dense_specs: Sequence[LayerSpec],
    example_input: ExampleInput,
    head_layouts: dict[str, HeadLayout],
    ignored_modules: list[nn.Module],
    blocked: dict[object, str] | None = None,
) -> FoundUnits:
    """The units of ``model``: one per dependency group of ``dg`` whose channels can be cut.

    Args:
        model: The dense model ``dg`` was built on.
        dg: Its Torch-Pruning dependency graph.
        dense_specs: Its layer specs in call order (:func:`autoprune.graph.layers.record_layer_specs`).
        example_input: The input ``dg`` was traced with (its spatial size is the resolution 1.0).
        head_layouts: Its recognised self-attentions (:func:`autoprune.graph.transformer.head_layouts`).
        ignored_modules: Modules whose output channels are never cut.
        blocked: Graph nodes no unit may cross, with why (:attr:`autoprune.graph.opaque.TraceResult.blocked`).

    A group is rooted at a convolution of any dimensionality (transposed too), a linear layer or an
    embedding. One that reaches an opaque module (:class:`~autoprune.graph.opaque.OpaqueBox`) or a
    blocked node is not a unit; its reason names the module.
    """
    def name_of(module: object) -> str | None:
        return dg._module2name.get(module)

    modules = dict(model.named_modules())
    exec_order = {s.module_name: i for i, s in enumerate(dense_specs)}
    layer_by_name = {s.module_name: s for s in dense_specs}
    n_layers = max(1, len(dense_specs) - 1)
    first = example_input[0] if isinstance(example_input, tuple) else example_input
    input_hw = first.shape[-1] if first.dim() >= 3 else 1
    found = FoundUnits([])
    projections = {p: (h.name, h.heads) for h in head_layouts.values() for p in h.projections}
    encoder_layers = [n + "." for n, m in model.named_modules() if n and is_transformer_layer(m)]
    blocked = blocked or {}
    # a stream rooted inside a split nn.MultiheadAttention (its out_proj) keeps the name it had before the split
    split_attentions = [n + "." for n, m in modules.items() if isinstance(m, SplitHeadAttention)]
    seen_out: set = set()
    for group in dg.get_all_groups(ignored_layers=ignored_modules, root_module_types=ROOT_TYPES):
        if any(str(name_of(group[0].dep.target.module)).startswith(a) for a in split_attentions):
            group = _rooted_first(dg, group, exec_order, set(ignored_modules))
        root = group[0].dep.target.module
        name = name_of(root)
        seen_out.update(d.target.module for d, _ in group if dg.is_out_channel_pruning_fn(d.handler))
        if name is None:
            continue
        n = len(group[0][1])
        walls = [d.target.module for d, _ in group if isinstance(d.target.module, OpaqueBox) or d.target.module in blocked]
        if walls:
            wall = walls[0]
            why = f"{wall.name!r}, which is opaque" if isinstance(wall, OpaqueBox) else blocked[wall]
            found.skipped.append((name, f"its channels reach {why} (Torch-Pruning cannot see into it); they are kept", False))
            continue
        params_hit = [dg._param_to_name.get(dep.target.module, "?") for dep, _ in group if dep.target.type == tp.ops.OPTYPE.PARAMETER]
        if params_hit:
            # channels also indexing a bare nn.Parameter outside any supported layer: cannot be cut
            found.skipped.append((name, f"its channels also index parameter(s) {params_hit} outside any supported layer", False))
            continue
        attention, stream = head_role([(name_of(d.target.module), d.target.module, dg.is_out_channel_pruning_fn(d.handler)) for d, _ in group], head_layouts)
        if stream:
            found.skipped.append((name, "the encoder's hidden width (residual stream, embeddings) is the width of its output and is kept", False))
            continue
        root_layer, name = (name, attention) if attention else ("", name)
        try:
            constraint = constraint_of(group, name_of, n, projections)
        except UnsupportedUnit as e:
            found.skipped.append((name, str(e), True))
            continue
        if not constraint.prunable:
            found.skipped.append((name, f"its {n} channel(s) cannot lose any (allowed counts: {constraint.allowed() or [n]})", False))
            continue
        if attention:  # the attention's own spec (its Q·Kᵀ and attn·V matmuls) has the heads' width
            found.out_owner[attention] = found.in_owner[attention] = name
            found.out_share.setdefault(attention, {})[name] = found.in_share.setdefault(attention, {})[name] = n
        outs, ins, depthwise = [], [], False
        reached: dict[tuple[str, bool], set[int]] = {}
        for dep, idxs in group:
            mname = name_of(dep.target.module)
            if mname is None or mname not in modules:
                continue
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            reached.setdefault((mname, is_out), set()).update(int(i) for i in tp._helpers.to_plain_idxs(idxs))
            if is_out:
                outs.append(mname)
                found.out_owner[mname] = name
            else:
                ins.append(mname)
                found.in_owner[mname] = name
            m = dep.target.module
            if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and m.groups > 1 and m.groups == m.in_channels:
                depthwise = True
                found.in_owner[mname] = name
                reached.setdefault((mname, False), set()).update(reached[(mname, is_out)])
        for (mname, is_out), idx in reached.items():
            (found.out_share if is_out else found.in_share).setdefault(mname, {})[name] = len(idx)
        requery = any(dep.target.type in MULTI_SOURCE_OPS for dep, _ in group)
        found.groups[name] = group
        root_spec = layer_by_name.get(root_layer or name)
        touched = {n for n in outs + ins if n in layer_by_name}
        macs = sum(spec_macs(layer_by_name[n]) for n in touched)
        params = sum(p.numel() for n in touched for p in modules[n].parameters(recurse=False))
        in_encoder_layer = any(all(t.startswith(p) for t in touched) for p in encoder_layers)
        conv_outs = [n for n in outs if isinstance(modules[n], ROOT_TYPES)]
        res = 1.0
        if root_spec is not None and len(root_spec.input_shape) >= 3 and isinstance(modules.get(root_spec.module_name), nn.modules.conv._ConvNd):
            res = root_spec.input_shape[-1] / input_hw
        features = UnitFeatures(
            kind=unit_kind(root, depthwise=depthwise, whole_heads=constraint.whole, in_encoder_layer=in_encoder_layer),
            channels=n,
            in_channels=root_spec.in_channels if root_spec else 0,
            kernel=root_spec.kernel_size[0] if root_spec and root_spec.kernel_size else 1,
            stride=root_spec.stride[0] if root_spec and root_spec.stride else 1,
            macs=int(macs),
            params=int(params),
            depth=exec_order.get(root_layer or name, 0) / n_layers,
            resolution=float(res),
            coupled=len(conv_outs) > 1,
            n_layers=len(touched),
            heads=constraint.segments if constraint.whole else 0,
        )
        found.units.append(PrunableUnit(name, features, tuple(outs), tuple(ins), constraint, requery, root_layer))
    found.skipped += _frozen_by_kept_layers(dg, seen_out, set(ignored_modules))
    found.units.sort(key=lambda u: exec_order.get(u.root, 0))
    # A layer dimension cut by two units (e.g. the input of a conv after a concat): the second
    # unit's dense indices are stale once the first is cut, so both are re-queried.
    users: dict[tuple[str, bool], set[str]] = {}
    for u in found.units:
        for layer in u.out_layers:
            users.setdefault((layer, True), set()).add(u.name)
        for layer in u.in_layers:
            users.setdefault((layer, False), set()).add(u.name)
    shared = {n for names in users.values() if len(names) > 1 for n in names}
    found.units = [replace(u, requery=True) if u.name in shared else u for u in found.units]
    return found


def _frozen_by_kept_layers(dg: tp.DependencyGraph, seen_out: set, ignored: set) -> list[tuple[str, str, bool]]:
    """``(layer, why, False)`` for each root layer whose group Torch-Pruning dropped because it also holds a kept layer's outputs."""
    skipped = []
    for m in list(dg.module2node):
        name = dg._module2name.get(m)
        if name is None or not isinstance(m, ROOT_TYPES) or m in ignored or m in seen_out:
            continue
        pruner = dg.get_pruner_of_module(m)
        group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        outs = [d.target.module for d, _ in group if dg.is_out_channel_pruning_fn(d.handler)]
        seen_out.update(outs)
        kept = sorted({dg._module2name.get(o, "?") for o in outs if o in ignored})
        skipped.append((name, f"its channels are also the output channels of {kept} (model.ignore or the model's output layer), which are kept", False))
    return skipped


def _rooted_first(dg: tp.DependencyGraph, group: tp.dependency.Group, exec_order: dict[str, int], ignored: set) -> tp.dependency.Group:
    """The same group rooted at its first-executed layer, so a unit is named after it, not after a layer Torch-Pruning happened to visit first.

    Only a layer whose output channels are exactly the group's channels (same count, same order)
    can become the root; otherwise the group is returned as it is.
    """
    root = group[0].dep.target.module
    n = len(group[0].idxs)
    order = {m: exec_order.get(dg._module2name.get(m), len(exec_order)) for m in (d.target.module for d, _ in group)}
    best = root
    for item in group:
        m = item.dep.target.module
        if m in ignored or not isinstance(m, ROOT_TYPES) or not dg.is_out_channel_pruning_fn(item.dep.handler):
            continue
        plain = [int(i) for i in tp._helpers.to_plain_idxs(item.idxs)]
        roots = list(getattr(item, "root_idxs", plain))
        if plain == roots == list(range(n)) and dg.get_out_channels(m) == n and order[m] < order[best]:
            best = m
    if best is root:
        return group
    pruner = dg.get_pruner_of_module(best)
    return dg.get_pruning_group(best, pruner.prune_out_channels, list(range(n)))


def find_blocks(model: nn.Module, example_input: ExampleInput, dense_specs: Sequence[LayerSpec], units: Sequence[PrunableUnit]) -> list[DroppableBlock]:
    """The droppable blocks of ``model``, outermost first where they nest, sorted by depth.

    A module is one when one forward pass on ``example_input`` shows the same input and output
    shape, it has layers inside, and it is residual: its ``residual`` attribute says so (``False``
    refuses), or it is an encoder layer, or tracing finds ``y = f(x) + x``
    (:func:`autoprune.graph.residual.is_residual_by_trace`).
    """
    modules = dict(model.named_modules())
    exec_order = {s.module_name: i for i, s in enumerate(dense_specs)}
    blocks: list[DroppableBlock] = []
    shapes: dict[str, tuple[tuple, tuple]] = {}
    handles = []
    for name, m in hookable_modules(model):
        if name and len(list(m.children())):
            def hook(mod, inp, out, name=name):
                if inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    shapes[name] = (tuple(inp[0].shape), tuple(out.shape))
            handles.append(m.register_forward_hook(hook))
    try:
        model.eval()
        with torch.inference_mode():
            model(*as_args(example_input))
    finally:
        for h in handles:
            h.remove()
    n_layers = max(1, len(dense_specs) - 1)
    for name, (ishape, oshape) in shapes.items():
        m = modules[name]
        if ishape != oshape:
            continue
        inside = [s for s in dense_specs if s.module_name.startswith(name + ".")]
        if not inside or any(name.startswith(b.name + ".") for b in blocks):
            continue
        flagged = getattr(m, "residual", None)
        why = "its residual attribute is False" if flagged is False else ""
        if not why and flagged is not True and not is_transformer_layer(m):
            why = not_residual_because(m)
        if why:
            log.info("block %r (%s) is not offered as droppable: %s", name, type(m).__name__, why)
            continue
        blocks.append(
            DroppableBlock(
                name=name,
                macs=sum(spec_macs(s) for s in inside),
                params=sum(p.numel() for p in m.parameters()),
                depth=exec_order[inside[0].module_name] / n_layers,
                units_inside=tuple(u.name for u in units if u.name.startswith(name + ".")),
                kind=block_kind(m),
            )
        )
    blocks.sort(key=lambda b: b.depth)
    return blocks


__all__ = ["ROOT_TYPES", "FoundUnits", "find_blocks", "find_units"]
