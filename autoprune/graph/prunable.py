"""``PrunableGraph``: the model seen as an ordered list of prunable units and droppable blocks.

Torch-Pruning's dependency graph (DepGraph, Fang et al. 2023) is built once. Each
dependency group (all layers whose channels must be pruned together, e.g. every conv
that writes into one residual stream) becomes one :class:`~autoprune.graph.units.PrunableUnit`,
named after the module path of its root layer: a *unit* is our handle on one Torch-Pruning group
(:meth:`PrunableGraph.dependency_group` returns the group itself). Residual blocks whose input and
output shapes match become :class:`~autoprune.graph.units.DroppableBlock` s: dropping one replaces it
by its shortcut. Transformer encoders add attention-head units (named after their attention module),
FFN units and droppable encoder layers (:mod:`autoprune.graph.transformer`). Finding them is
:mod:`autoprune.graph.discovery`'s job; their kinds are :class:`~autoprune.graph.units.UnitKind`.

The graph also knows, for every layer, which unit owns its input and output
channels, so the layer shapes (and hence the latency) of any policy can be
predicted without touching the model; and it answers the questions asked of the
model's structure afterwards (policy checks, kept channels, importance, pruning plans).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import ModelError, PolicyError
from autoprune.graph.constraints import kept_channels
from autoprune.graph.discovery import find_blocks, find_units
from autoprune.graph.hooks import model_copy
from autoprune.graph.layers import FUNCTIONAL_KINDS, MAC_LAYER_KINDS, ExampleInput, LayerSpec, count_macs, input_shapes, record_layer_specs
from autoprune.graph.opaque import opaque_modules, trace
from autoprune.graph.product_widths import ProductWidth, batch_of, probe_product_widths, resized_product
from autoprune.graph.scoring import BatchSource, LossFn, unit_scores
from autoprune.graph.transformer import head_layouts, split_attention_heads, unknown_head_layouts
from autoprune.graph.units import DroppableBlock, PrunableUnit
from autoprune.graph.visibility import invisible_layers, units_feeding

__all__ = ["PrunableGraph", "kept_channels"]

log = logging.getLogger(__name__)


def _width(dense: int, shares: dict[str, int], kept: dict[str, int], channels: dict[str, int]) -> int:
    """A layer dimension of ``dense`` channels after each unit sharing it keeps ``kept`` of its ``channels``."""
    return dense - sum(share * (channels[u] - kept[u]) // channels[u] for u, share in shares.items() if u in kept and channels[u])


def _inside(name: str, containers: Sequence[str]) -> bool:
    """Whether module ``name`` is one of ``containers`` or inside one."""
    return any(name == c or name.startswith(c + ".") for c in containers)


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
        ignored: Module names not to prune (besides the classifier output, always ignored). A layer
            Torch-Pruning prunes (conv, linear, norm, embedding, attention) keeps its output channels;
            any other module (a container, a custom layer) is opaque: hidden from tracing and hooks,
            its input and output channels kept (:mod:`autoprune.graph.opaque`).
        drop_blocks: Whether to look for droppable residual blocks.
        split_heads: Split every ``nn.MultiheadAttention`` (outside ``ignored``; not one with
            ``bias_k`` or ``add_zero_attn``) into an equivalent
            :class:`~autoprune.graph.transformer.SplitHeadAttention` in :attr:`network`, so its heads
            are a unit of their own (``False``: its heads stay tied to the width around it).

    Attributes:
        model: The model given (never modified).
        network: The network the units are found on (``model``, or a copy with its attention heads split).
        opaque: ``{module name: why}`` of the modules hidden from tracing: scripted or compiled
            submodules, recurrent and custom parametrised layers, ``ignored`` containers, modules
            holding an operation Torch-Pruning cannot trace.
        skipped: ``{unit name: why}`` of each channel group that is not a unit (never empty when
            there is no unit).

    Raises:
        ModelError: an ``ignored`` name is not a module, the model fails on ``example_input``, has no
            conv/linear/attention layer, holds attention heads in a layout it cannot split (e.g. a
            fused QKV projection), or cannot be traced because of an operation in its own forward
            (naming the operation).
    """

    #: A policy found on another architecture can be mapped onto this graph (``autoprune transfer``, ``--warm-start``).
    transferable = True

    def __init__(
        self,
        model: nn.Module,
        example_input: ExampleInput,
        *,
        ignored: Sequence[str] = (),
        drop_blocks: bool = True,
        split_heads: bool = True,
    ) -> None:
        self.model = model
        self.example_input = example_input
        given = dict(model.named_modules())
        unknown = [n for n in ignored if n not in given]
        if unknown:
            names = [n for n, m in model.named_modules() if n and not list(m.children())]
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            raise ModelError(f"model.ignore: {unknown} are not modules of the model; its layers are: {shown}")
        #: ``{module name: why}`` of the modules hidden from tracing (:mod:`autoprune.graph.opaque`).
        self.opaque: dict[str, str] = opaque_modules(model, ignored)
        hidden_names = (*ignored, *self.opaque)
        unknown_heads = [h for h in unknown_head_layouts(model) if not _inside(h.split(" ")[0], hidden_names)]
        if unknown_heads:
            raise ModelError(
                f"attention {unknown_heads[0]}: autoprune cannot split its heads (expected nn.MultiheadAttention or "
                "query/key/value Linear children with num_attention_heads and attention_head_size); add it to model.ignore"
            )
        #: ``nn.MultiheadAttention`` modules split into :class:`~autoprune.graph.transformer.SplitHeadAttention` in :attr:`network`.
        self.split_heads: tuple[str, ...] = tuple(
            n for n, m in given.items()
            if split_heads and isinstance(m, nn.MultiheadAttention) and m.bias_k is None and not m.add_zero_attn and not _inside(n, hidden_names)
        )  # fmt: skip
        #: The network the units are found on: ``model`` itself, or a copy with :attr:`split_heads` split (same function).
        self.network = self.dense_copy(model) if self.split_heads else model
        self._module_by_name = dict(self.network.named_modules())
        self.head_layouts = {n: h for n, h in head_layouts(self.network).items() if not _inside(n, hidden_names)}
        try:
            self.dense_specs = record_layer_specs(self.network, example_input)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:  # the model's forward fails on this input
            first = " ".join(str(e).split())[:300]
            raise ModelError(
                f"the model fails on an input of shape {input_shapes(example_input)} ({type(e).__name__}: {first}); "
                "build it for the data's channels, classes and input size"
            ) from e
        if not any(s.kind in MAC_LAYER_KINDS for s in self.dense_specs):
            raise ModelError("the model has no Conv, ConvTranspose, Linear or MultiheadAttention layer to prune")
        for name, why in self.opaque.items():
            (log.info if name in ignored else log.warning)("module %r is opaque (%s): its input and output channels are kept", name, why)
        traced = trace(self.network, example_input, self.opaque)
        self.dg, self.opaque = traced.dg, traced.opaque
        layers = [s.module_name for s in self.dense_specs if s.kind not in FUNCTIONAL_KINDS and s.module_name in self._module_by_name]
        # Layers that run but that autograd tracing cannot see (e.g. fed a detached tensor); not those hidden on purpose.
        self.invisible = [n for n in invisible_layers(self.network, self.dg, layers) if not _inside(n, tuple(self.opaque))]
        # The classifier: the last executed conv/linear the graph can see (not a detached probe).
        param_specs = [s for s in self.dense_specs if s.kind in MAC_LAYER_KINDS and s.module_name not in self.invisible]
        if not param_specs:
            raise ModelError("the model has no Conv or Linear layer to prune that autograd tracing can see")
        self.output_layer = param_specs[-1].module_name
        kept = [n for n in (*ignored, self.output_layer) if not _inside(n, tuple(self.opaque))]
        ignored_modules = [m for n in kept for m in self._module_by_name[n].modules()]  # a container: all inside
        self.skipped: dict[str, str] = {}
        self.head_dims = {n: m.head_dim for n, m in self.network.named_modules() if isinstance(m, nn.MultiheadAttention)}
        self.head_dims.update({n: h.head_dim for n, h in self.head_layouts.items()})
        found = find_units(self.network, self.dg, self.dense_specs, example_input, self.head_layouts, ignored_modules, traced.blocked)
        self.units: list[PrunableUnit] = found.units
        self._groups: dict[str, tp.dependency.Group] = found.groups
        self.out_owner, self.in_owner = found.out_owner, found.in_owner  # layer name -> unit owning its output / input channels
        self.out_share, self.in_share = found.out_share, found.in_share  # layer name -> {unit: channels of it the unit's are}
        for name, reason, warn in found.skipped:
            self._skip(name, reason, warn=warn)
        for layer in self.invisible:
            kind = type(self._module_by_name[layer]).__name__
            for unit in units_feeding(self, layer):
                self.exclude(unit, f"its channels feed {layer!r} ({kind}), which runs outside the dependency graph (e.g. on a detached tensor)")
        if not self.units and not self.skipped:
            outside = f" outside the opaque module(s) {', '.join(map(repr, self.opaque))}" if self.opaque else ""
            self.skipped[self.output_layer] = f"the model's output layer, never pruned, is its only conv/linear channel group{outside}"
        self.blocks: list[DroppableBlock] = find_blocks(self.network, example_input, self.dense_specs, self.units) if drop_blocks else []
        self._importance_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._channels = {u.name: u.features.channels for u in self.units}
        self._product_widths: dict[int, list[ProductWidth]] | None = None  # probed on first use (product_widths.py)

    def dense_copy(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` (the dense model or one equal to it) laid out like :attr:`network`: its :attr:`split_heads` split."""
        copied = model_copy(model)
        split_attention_heads(copied, [n for n in self.split_heads if isinstance(copied.get_submodule(n), nn.MultiheadAttention)])
        return copied

    # ----------------------------------------------------------------- discovery
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
        for shares in (self.out_share, self.in_share):
            for per_unit in shares.values():
                per_unit.pop(name, None)
        self._groups.pop(name, None)
        self.blocks = [replace(b, units_inside=tuple(n for n in b.units_inside if n != name)) for b in getattr(self, "blocks", [])]
        for scores in getattr(self, "_importance_cache", {}).values():
            scores.pop(name, None)
        self._skip(name, reason, warn=True)

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
        products = self._products()
        for i, s in enumerate(self.dense_specs):
            if dropped and s.module_name.startswith(dropped):
                continue
            if i in products:  # a q @ kᵀ, attn @ v, einsum or SDPA whose operands shrink with the units feeding them
                specs.append(resized_product(s, products[i], kept, self._channels, batch_of(self.example_input)))
                specs[-1] = specs[-1].with_batch(batch_size) if batch_size is not None else specs[-1]
                continue
            out_unit = self.out_owner.get(s.module_name)
            in_unit = self.in_owner.get(s.module_name)
            in_c = _width(s.in_channels, self.in_share.get(s.module_name, {}), kept, self._channels)
            out_c = _width(s.out_channels, self.out_share.get(s.module_name, {}), kept, self._channels)
            norm = "norm" in s.kind  # batchnorm*, layernorm, groupnorm, instancenorm*: in == out
            if (norm or s.kind == "multiheadattention") and out_unit in kept:  # one width in and out
                in_c = out_c
            if s.kind not in MAC_LAYER_KINDS and s.kind not in FUNCTIONAL_KINDS and not norm and out_unit is None and in_unit is None:
                if current is not None and len(s.input_shape) > 1 and s.in_channels == s.out_channels:
                    in_c = out_c = current
            new = s.with_channels(in_c, out_c) if (in_c, out_c) != (s.in_channels, s.out_channels) else s
            if batch_size is not None:
                new = new.with_batch(batch_size)
            specs.append(new)
            current = new.out_channels
        return specs

    def _products(self) -> dict[int, list[ProductWidth]]:
        """Per dense spec index, the product dimensions tied to units (:func:`~autoprune.graph.product_widths.probe_product_widths`)."""
        if self._product_widths is None:
            self._product_widths = {}
            for w in probe_product_widths(self):
                self._product_widths.setdefault(w.spec, []).append(w)
        return self._product_widths

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
            mname = self.dg._module2name.get(dep.target.module)
            if mname is None or mname not in self._module_by_name:
                continue
            plain = tp._helpers.to_plain_idxs(ix)
            plan.append((mname, dep.handler, dep.target.pruning_dim, [int(i) for i in plain]))
        return plan
