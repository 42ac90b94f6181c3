"""``PrunableGraph``: the model seen as an ordered list of prunable units and droppable blocks.

Torch-Pruning's dependency graph (DepGraph, Fang et al. 2023) is built once. Each
dependency group (all layers whose channels must be pruned together, e.g. every conv
that writes into one residual stream) becomes one :class:`PrunableUnit`, named after
the module path of its root layer: a *unit* is our handle on one Torch-Pruning group
(:meth:`PrunableGraph.dependency_group` returns the group itself). Residual blocks whose input and output shapes match
become :class:`DroppableBlock` s: dropping one replaces it by its shortcut. Transformer encoders add
attention-head units (named after their attention module), FFN units and droppable encoder layers
(:mod:`autoprune.graph.transformer`).

The graph also knows, for every layer, which unit owns its input and output
channels, so the layer shapes (and hence the latency) of any policy can be
predicted without touching the model.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import ModelError, PolicyError
from autoprune.graph.constraints import MULTI_SOURCE_OPS, ChannelConstraint, UnsupportedUnit, constraint_of, kept_channels
from autoprune.graph.layers import MAC_LAYER_KINDS, ExampleInput, LayerSpec, as_args, count_macs, input_shapes, record_layer_specs, spec_macs
from autoprune.graph.residual import is_residual_by_trace
from autoprune.graph.scoring import BatchSource, LossFn, unit_scores
from autoprune.graph.transformer import head_layouts, head_role, is_transformer_layer, unknown_head_layouts
from autoprune.graph.visibility import invisible_layers, units_feeding

__all__ = ["DroppableBlock", "PrunableGraph", "PrunableUnit", "UnitFeatures", "kept_channels"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class UnitFeatures:
    """Model-size-invariant description of a unit, used as an agent's observation.

    Attributes:
        kind: ``conv``, ``depthwise`` (group holds a depthwise conv), ``linear``, ``heads`` (attention
            heads: channels cut in whole heads) or ``ffn`` (the intermediate width of one encoder layer's
            feed-forward block).
        channels: Number of prunable channels in the group.
        in_channels: Input channels of the root layer.
        kernel: Kernel size of the root layer (1 for linear).
        stride: Stride of the root layer (1 for linear).
        macs: MACs per sample of every layer whose input or output channels this unit prunes.
        params: Parameters of those layers.
        depth: Relative position of the root layer in execution order, 0..1.
        resolution: Spatial size of the root layer's input relative to the model input, 0..1.
        coupled: Whether several layers write into these channels (e.g. a residual stream).
        n_layers: Layers whose channels this unit prunes (input or output side).
        heads: Attention heads the unit's channels form (0 when it holds no attention).
    """

    kind: str
    channels: int
    in_channels: int
    kernel: int
    stride: int
    macs: int
    params: int
    depth: float
    resolution: float
    coupled: bool
    n_layers: int
    heads: int = 0


@dataclass(frozen=True)
class PrunableUnit:
    """One searchable decision: the channels of one Torch-Pruning dependency group, named after its root layer.

    Attributes:
        name: Dotted path of the root layer (whose output channels the unit cuts); for the heads of a
            Hugging Face self-attention, the attention module's path (``encoder.layer.0.attention.self``).
        features: The agent's description of the unit.
        out_layers, in_layers: Layers whose output / input channels the unit cuts.
        constraint: Which channel counts the unit may keep, and how channels are chosen for one.
        requery: Whether its channels meet another unit's in a concat/split (or in one layer's
            dimension), so surgery must ask Torch-Pruning for its group on the partly pruned copy
            instead of replaying the dense model's indices.
        root_layer: The layer Torch-Pruning's group is rooted at, when it is not ``name`` (heads).
    """

    name: str
    features: UnitFeatures
    out_layers: tuple[str, ...]
    in_layers: tuple[str, ...]
    constraint: ChannelConstraint | None = None
    requery: bool = False
    root_layer: str = ""

    @property
    def root(self) -> str:
        """The layer whose output channels index the unit's channels (Torch-Pruning's root)."""
        return self.root_layer or self.name

    @property
    def allowed(self) -> list[int]:
        """Channel counts this unit may keep, ascending."""
        return (self.constraint or ChannelConstraint(self.features.channels)).allowed()


@dataclass(frozen=True)
class DroppableBlock:
    """A residual block ``y = f(x) + x`` that can be replaced by its identity shortcut.

    Attributes:
        name: Module path of the block.
        macs: MACs per sample of the layers inside it (saved by dropping it).
        params: Parameters inside it.
        depth: Relative position of its first layer in execution order, 0..1.
        units_inside: Units rooted inside the block.
    """

    name: str
    macs: int
    params: int
    depth: float
    units_inside: tuple[str, ...]


class PrunableGraph:
    """The prunable structure of one model, built once and asked by everything else.

    Dependency groups come from Torch-Pruning's ``DependencyGraph`` (Fang et al. 2023, DepGraph);
    layer shapes from :func:`autoprune.graph.layers.record_layer_specs`, the same recorder the latency
    table and the MAC counter use.

    Args:
        model: The dense model (not modified; the graph keeps a reference to it).
        example_input: One batch shaped like the model's input, batch first: ``(N, C, H, W)`` for
            images, ``(N, F)`` for features, or a tuple of tensors passed as ``model(*example_input)``
            (an encoder: ``(input_ids, attention_mask)``, int64 ``(N, L)``). MACs are per sample.
        ignored: Module names not to prune (besides the classifier output, always ignored).
        drop_blocks: Whether to look for droppable residual blocks.

    Raises:
        ModelError: an ``ignored`` name is not a module, the model fails on ``example_input``, has no
            conv/linear/attention layer, holds a layer Torch-Pruning cannot handle, holds attention heads
            in a layout it cannot split (e.g. a fused QKV projection), or cannot be traced.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: ExampleInput,
        *,
        ignored: Sequence[str] = (),
        drop_blocks: bool = True,
    ) -> None:
        self.model = model
        self.example_input = example_input
        self._module_by_name = dict(model.named_modules())
        unknown = [n for n in ignored if n not in self._module_by_name]
        if unknown:
            names = [n for n, m in model.named_modules() if n and not list(m.children())]
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            raise ModelError(f"model.ignore: {unknown} are not modules of the model; its layers are: {shown}")
        self._check_supported_layers(set(ignored))
        unknown_heads = [h for h in unknown_head_layouts(model) if not any(h == i or h.startswith(i + " ") for i in ignored)]
        if unknown_heads:
            raise ModelError(
                f"attention {unknown_heads[0]}: autoprune cannot split its heads (expected nn.MultiheadAttention or "
                "query/key/value Linear children with num_attention_heads and attention_head_size); add it to model.ignore"
            )
        self.head_layouts = head_layouts(model)
        try:
            self.dense_specs = record_layer_specs(model, example_input)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:  # the model's forward fails on this input
            first = " ".join(str(e).split())[:300]
            raise ModelError(
                f"the model fails on an input of shape {input_shapes(example_input)} ({type(e).__name__}: {first}); "
                "build it for the data's channels, classes and input size"
            ) from e
        self._exec_order = {s.module_name: i for i, s in enumerate(self.dense_specs)}
        if not any(s.kind in MAC_LAYER_KINDS for s in self.dense_specs):
            raise ModelError("the model has no Conv, ConvTranspose, Linear or MultiheadAttention layer to prune")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_input, verbose=False
                )
        except Exception as e:
            raise ModelError(f"Torch-Pruning cannot trace the model ({type(e).__name__}: {e})") from e
        # Layers that run but that autograd tracing cannot see (e.g. fed a detached tensor).
        self.invisible = invisible_layers(model, self.dg, [s.module_name for s in self.dense_specs])
        # The classifier: the last executed conv/linear the graph can see (not a detached probe).
        param_specs = [s for s in self.dense_specs if s.kind in MAC_LAYER_KINDS and s.module_name not in self.invisible]
        if not param_specs:
            raise ModelError("the model has no Conv2d or Linear layer to prune that autograd tracing can see")
        self.output_layer = param_specs[-1].module_name
        ignored_modules = [m for n in (*ignored, self.output_layer) for m in self._module_by_name[n].modules()]  # a container: all inside
        self.skipped: dict[str, str] = {}
        self.head_dims = {n: m.head_dim for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
        self.head_dims.update({n: h.head_dim for n, h in self.head_layouts.items()})
        self._groups: dict[str, tp.dependency.Group] = {}
        self.units = self._collect_units(ignored_modules)
        for layer in self.invisible:
            kind = type(self._module_by_name[layer]).__name__
            for unit in units_feeding(self, layer):
                self.exclude(unit, f"its channels feed {layer!r} ({kind}), which runs outside the dependency graph (e.g. on a detached tensor)")
        self.blocks = self._collect_blocks() if drop_blocks else []
        self._importance_cache: dict[str, dict[str, torch.Tensor]] = {}

    # ----------------------------------------------------------------- discovery
    def _check_supported_layers(self, ignored: set[str]) -> None:
        for name, m in self.model.named_modules():
            if len(list(m.children())) or not list(m.parameters(recurse=False)):
                continue
            if name in ignored:
                continue
            if tp.ops.module2type(m) == tp.ops.OPTYPE.ELEMENTWISE or isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):
                raise ModelError(
                    f"layer {name!r} ({type(m).__name__}) is not supported by the pruning graph; "
                    f"add it to model.ignore or replace it with a supported layer (Conv, Linear, BatchNorm, LayerNorm, ...)"
                )

    def _name(self, module: object) -> str | None:
        return self.dg._module2name.get(module)

    def _collect_units(self, ignored_modules: list[nn.Module]) -> list[PrunableUnit]:
        layer_by_name = {s.module_name: s for s in self.dense_specs}
        n_layers = max(1, len(self.dense_specs) - 1)
        first = self.example_input[0] if isinstance(self.example_input, tuple) else self.example_input
        input_hw = first.shape[-1] if first.dim() == 4 else 1
        units = []
        self.out_owner: dict[str, str] = {}
        self.in_owner: dict[str, str] = {}
        projections = {p: (h.name, h.heads) for h in self.head_layouts.values() for p in h.projections}
        encoder_layers = [n + "." for n, m in self.model.named_modules() if n and is_transformer_layer(m)]
        for group in self.dg.get_all_groups(ignored_layers=ignored_modules, root_module_types=(nn.Conv2d, nn.Conv1d, nn.Linear)):
            root = group[0].dep.target.module
            name = self._name(root)
            if name is None:
                continue
            n = len(group[0][1])
            params_hit = [self.dg._param_to_name.get(dep.target.module, "?") for dep, _ in group if dep.target.type == tp.ops.OPTYPE.PARAMETER]
            if params_hit:
                # channels also indexing a bare nn.Parameter outside any supported layer: cannot be cut
                self._skip(name, f"its channels also index parameter(s) {params_hit} outside any supported layer")
                continue
            attention, stream = head_role([(self._name(d.target.module), d.target.module, self.dg.is_out_channel_pruning_fn(d.handler)) for d, _ in group], self.head_layouts)
            if stream:
                self._skip(name, "the encoder's hidden width (residual stream, embeddings) is the width of its output and is kept")
                continue
            root_layer, name = (name, attention) if attention else ("", name)
            try:
                constraint = constraint_of(group, self._name, n, projections)
            except UnsupportedUnit as e:
                self._skip(name, str(e), warn=True)
                continue
            if not constraint.prunable:
                self._skip(name, f"its {n} channel(s) cannot lose any (allowed counts: {constraint.allowed() or [n]})")
                continue
            if attention:  # the attention's own spec (its Q·Kᵀ and attn·V matmuls) has the heads' width
                self.out_owner[attention] = self.in_owner[attention] = name
            outs, ins, depthwise = [], [], False
            for dep, _ in group:
                mname = self._name(dep.target.module)
                if mname is None or mname not in self._module_by_name:
                    continue
                if self.dg.is_out_channel_pruning_fn(dep.handler):
                    outs.append(mname)
                    self.out_owner[mname] = name
                else:
                    ins.append(mname)
                    self.in_owner[mname] = name
                m = dep.target.module
                if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
                    depthwise = True
                    self.in_owner[mname] = name
            requery = any(dep.target.type in MULTI_SOURCE_OPS for dep, _ in group)
            self._groups[name] = group
            root_spec = layer_by_name.get(root_layer or name)
            touched = {n for n in outs + ins if n in layer_by_name}
            macs = sum(spec_macs(layer_by_name[n]) for n in touched)
            params = sum(p.numel() for n in touched for p in self._module_by_name[n].parameters(recurse=False))
            kind = "depthwise" if depthwise else ("linear" if isinstance(root, nn.Linear) else "conv")
            if constraint.whole:
                kind = "heads"
            elif kind == "linear" and any(all(t.startswith(p) for t in touched) for p in encoder_layers):
                kind = "ffn"
            conv_outs = [n for n in outs if isinstance(self._module_by_name[n], (nn.Conv2d, nn.Conv1d, nn.Linear))]
            res = 1.0
            if root_spec is not None and len(root_spec.input_shape) == 4:
                res = root_spec.input_shape[-1] / input_hw
            features = UnitFeatures(
                kind=kind,
                channels=n,
                in_channels=root_spec.in_channels if root_spec else 0,
                kernel=root_spec.kernel_size[0] if root_spec and root_spec.kernel_size else 1,
                stride=root_spec.stride[0] if root_spec and root_spec.stride else 1,
                macs=int(macs),
                params=int(params),
                depth=self._exec_order.get(root_layer or name, 0) / n_layers,
                resolution=float(res),
                coupled=len(conv_outs) > 1,
                n_layers=len(touched),
                heads=constraint.segments if constraint.whole else 0,
            )
            units.append(PrunableUnit(name, features, tuple(outs), tuple(ins), constraint, requery, root_layer))
        units.sort(key=lambda u: self._exec_order.get(u.root, 0))
        # A layer dimension cut by two units (e.g. the input of a conv after a concat): the second
        # unit's dense indices are stale once the first is cut, so both are re-queried.
        users: dict[tuple[str, bool], set[str]] = {}
        for u in units:
            for layer in u.out_layers:
                users.setdefault((layer, True), set()).add(u.name)
            for layer in u.in_layers:
                users.setdefault((layer, False), set()).add(u.name)
        shared = {n for names in users.values() if len(names) > 1 for n in names}
        return [replace(u, requery=True) if u.name in shared else u for u in units]

    def _skip(self, name: str, reason: str, *, warn: bool = False) -> None:
        self.skipped[name] = reason
        (log.warning if warn else log.info)("unit %r is not pruned: %s", name, reason)

    def exclude(self, name: str, reason: str) -> None:
        """Stop offering unit ``name`` (its channels stay dense), with one warning line saying why.

        Used by the differential check (:mod:`autoprune.graph.check`) for a unit whose surgery
        does not reproduce the masked dense model.
        """
        if name not in self.unit_names:
            return
        self.units = [u for u in self.units if u.name != name]
        self.out_owner = {k: v for k, v in self.out_owner.items() if v != name}
        self.in_owner = {k: v for k, v in self.in_owner.items() if v != name}
        self._groups.pop(name, None)
        self.blocks = [replace(b, units_inside=tuple(n for n in b.units_inside if n != name)) for b in getattr(self, "blocks", [])]
        for scores in getattr(self, "_importance_cache", {}).values():
            scores.pop(name, None)
        self._skip(name, reason, warn=True)

    def _collect_blocks(self) -> list[DroppableBlock]:
        blocks = []
        shapes: dict[str, tuple[tuple, tuple]] = {}
        handles = []
        for name, m in self.model.named_modules():
            if name and len(list(m.children())):
                def hook(mod, inp, out, name=name):
                    if inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
                        shapes[name] = (tuple(inp[0].shape), tuple(out.shape))
                handles.append(m.register_forward_hook(hook))
        try:
            self.model.eval()
            with torch.inference_mode():
                self.model(*as_args(self.example_input))
        finally:
            for h in handles:
                h.remove()
        n_layers = max(1, len(self.dense_specs) - 1)
        for name, (ishape, oshape) in shapes.items():
            m = self._module_by_name[name]
            if ishape != oshape:
                continue
            flagged = getattr(m, "residual", None)
            if flagged is False:
                continue
            if not (flagged is True or is_transformer_layer(m) or is_residual_by_trace(m)):
                continue
            if any(name.startswith(b.name + ".") for b in blocks):
                continue
            inside = [s for s in self.dense_specs if s.module_name.startswith(name + ".")]
            if not inside:
                continue
            blocks.append(
                DroppableBlock(
                    name=name,
                    macs=sum(spec_macs(s) for s in inside),
                    params=sum(p.numel() for p in m.parameters()),
                    depth=self._exec_order[inside[0].module_name] / n_layers,
                    units_inside=tuple(u.name for u in self.units if u.name.startswith(name + ".")),
                )
            )
        blocks.sort(key=lambda b: b.depth)
        return blocks

    # ------------------------------------------------------------------ queries
    @property
    def unit_names(self) -> list[str]:
        """Unit names in graph (execution) order."""
        return [u.name for u in self.units]

    @property
    def block_names(self) -> list[str]:
        """Droppable block names in execution order."""
        return [b.name for b in self.blocks]

    def unit(self, name: str) -> PrunableUnit:
        """The unit called ``name``.

        Raises:
            PolicyError: no unit has that name (the message lists the units).
        """
        for u in self.units:
            if u.name == name:
                return u
        raise PolicyError(f"unknown unit {name!r}; units of this model: {', '.join(self.unit_names)}")

    def module(self, name: str) -> nn.Module:
        """The dense model's module at dotted path ``name``.

        Raises:
            KeyError: ``name`` is not in the model's ``named_modules()``.
        """
        return self._module_by_name[name]

    def dependency_group(self, unit_name: str) -> tp.dependency.Group:
        """Torch-Pruning's dependency group behind a unit (on the dense model).

        A *unit* is our handle on one such group (see docs/architecture.md, "Terms").

        Raises:
            PolicyError: ``unit_name`` is not a unit of this model.
        """
        if unit_name not in self._groups:
            self.unit(unit_name)  # raises the PolicyError listing the units
        return self._groups[unit_name]

    @property
    def dense_macs(self) -> int:
        """MACs **per input sample** of the dense model (:func:`autoprune.graph.layers.spec_macs` convention).

        Equals :func:`autoprune.measure.latency.count_macs_params` of the dense model.
        """
        return count_macs(self.dense_specs)

    def validate_policy(self, ratios: dict[str, float], drop: Iterable[str] = ()) -> None:
        """Check that every unit and block name exists and every ratio is in [0, 1).

        Raises:
            PolicyError: naming the missing, extra or out-of-range entries.
        """
        extra = sorted(set(ratios) - set(self.unit_names))
        if extra:
            raise PolicyError(
                f"policy names units the model does not have: {extra}; model units: {self.unit_names} "
                f"(use 'autoprune transfer' for another architecture)"
            )
        bad_drop = sorted(set(drop) - set(self.block_names))
        if bad_drop:
            raise PolicyError(f"policy drops blocks the model does not have: {bad_drop}; droppable blocks: {self.block_names}")
        for name, r in ratios.items():
            if not isinstance(r, (int, float)) or not (0.0 <= float(r) < 1.0):
                block = next((b.name for b in self.blocks if name in b.units_inside), None)
                every = f" (it would remove every head; drop the layer {block!r} instead)" if self.unit(name).features.heads and block else ""
                raise PolicyError(f"ratio of unit {name!r} is {r!r}{every}; allowed: 0 <= ratio < 1")

    def kept(self, ratios: dict[str, float], round_to: int | None = None) -> dict[str, int]:
        """Surviving channel count per unit under ``ratios`` (missing units keep all channels).

        Args:
            ratios: Pruning ratio per unit name, each in [0, 1).
            round_to: Keep counts at multiples of this (see :func:`kept_channels`).

        Returns:
            ``{unit name: channels kept}`` for every unit.

        Raises:
            PolicyError: naming the unit whose ratio is out of range or would remove all its channels.
        """
        out = {}
        for u in self.units:
            r = float(ratios.get(u.name, 0.0))
            try:
                out[u.name] = kept_channels(u.features.channels, r, round_to, constraint=u.constraint)
            except PolicyError as e:
                raise PolicyError(f"unit {u.name!r}: {e}") from e
        return out

    def specs_for(
        self, ratios: dict[str, float], drop: Iterable[str] = (), *, round_to: int | None = None, batch_size: int | None = None
    ) -> list[LayerSpec]:
        """Layer specs of the model pruned by ``ratios`` and ``drop``, predicted without surgery.

        Each dense spec gets the kept channel counts of the units owning its input and output
        channels; layers inside dropped blocks are left out. The result equals
        :func:`autoprune.graph.layers.record_layer_specs` of the really pruned model (except that a
        dropped block's ``Identity`` call is not listed).

        Args:
            ratios: Pruning ratio per unit name (missing units stay dense).
            drop: Names of droppable blocks replaced by their shortcut.
            round_to: Keep channel counts at multiples of this.
            batch_size: Rewrite every spec's batch dimension ``N`` (default: the example input's).

        Returns:
            The specs in call order, keyed for the latency table like recorded ones.

        Raises:
            PolicyError: a ratio is out of range or would remove every channel of a unit.
        """
        kept = self.kept(ratios, round_to)
        dropped = tuple(b + "." for b in drop)
        specs: list[LayerSpec] = []
        current: int | None = None
        for s in self.dense_specs:
            if dropped and s.module_name.startswith(dropped):
                continue
            out_unit = self.out_owner.get(s.module_name)
            in_unit = self.in_owner.get(s.module_name)
            in_c = kept[in_unit] if in_unit in kept else s.in_channels
            out_c = kept[out_unit] if out_unit in kept else s.out_channels
            norm = "norm" in s.kind  # batchnorm*, layernorm, groupnorm, instancenorm*: in == out
            if (norm or s.kind == "multiheadattention") and out_unit in kept:  # one width in and out
                in_c = out_c
            if s.kind not in MAC_LAYER_KINDS and not norm and out_unit is None and in_unit is None:
                if current is not None and len(s.input_shape) > 1 and s.in_channels == s.out_channels:
                    in_c = out_c = current
            new = s.with_channels(in_c, out_c) if (in_c, out_c) != (s.in_channels, s.out_channels) else s
            if batch_size is not None:
                new = new.with_batch(batch_size)
            specs.append(new)
            current = new.out_channels
        return specs

    def macs_for(self, ratios: dict[str, float], drop: Iterable[str] = (), *, round_to: int | None = None) -> int:
        """Predicted MACs **per input sample** of the model pruned by a policy, without surgery.

        Counted like :func:`autoprune.measure.latency.count_macs_params` counts the really pruned model
        (every conv, transposed conv, linear and attention layer; see :func:`autoprune.graph.layers.spec_macs`).

        Raises:
            PolicyError: a ratio is out of range or would remove every channel of a unit.
        """
        return count_macs(self.specs_for(ratios, drop, round_to=round_to))

    # --------------------------------------------------------------- importance
    def importance(self, criterion: str, batches: BatchSource | None = None, loss: LossFn | None = None) -> dict[str, torch.Tensor]:
        """Per-channel importance of every unit on the dense model, computed once per criterion (and loss).

        Args:
            criterion: A name in :data:`autoprune.graph.importance.IMPORTANCES` (``l1``, ``l2``,
                ``taylor``, ``bn_scale``, ``activation``) or a ``"package.module:Class"`` Torch-Pruning importance.
            batches: Callable returning a few ``(inputs, target)`` calibration batches (``inputs`` a
                tensor or a tuple passed as ``model(*inputs)``), for criteria that need gradients
                (``taylor``) or activations (``activation``); called only for those.
            loss: ``loss(model output, target)`` -> scalar for gradient criteria; default
                cross-entropy to labels (e.g. pass the MSE to dense embeddings for an encoder).

        Returns:
            ``{unit name: scores}``, each a float tensor of shape ``(channels,)`` (higher: keep).
            A head unit's channels are its heads' ``heads * head_dim`` query/key/value rows.

        Raises:
            ConfigError: unknown criterion, or one that does not give one score per channel.
            PolicyError: a criterion that needs gradients or activations without ``batches``.
        """
        key = criterion if loss is None else (criterion, loss)
        if key not in self._importance_cache:
            self._importance_cache[key] = unit_scores(self, criterion, batches, loss)
        return self._importance_cache[key]

    def pruning_plan(self, unit_name: str, idxs: list[int]) -> list[tuple[str, Callable, int, list[int]]]:
        """What pruning ``idxs`` of a unit does, from Torch-Pruning's ``get_pruning_group``.

        Args:
            unit_name: The unit.
            idxs: Channel indices of the root layer to remove (dense coordinates).

        Returns:
            ``(module name, Torch-Pruning handler, pruning dim, plain indices)`` per touched layer.

        Raises:
            KeyError: ``unit_name`` is not a unit.
        """
        group = self._groups[unit_name]
        root = group[0].dep.target.module
        sub = self.dg.get_pruning_group(root, group[0].dep.handler, idxs)
        plan = []
        for dep, ix in sub:
            mname = self._name(dep.target.module)
            if mname is None or mname not in self._module_by_name:
                continue
            plain = tp._helpers.to_plain_idxs(ix)
            plan.append((mname, dep.handler, dep.target.pruning_dim, [int(i) for i in plain]))
        return plan
