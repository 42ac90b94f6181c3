"""The widths of the functional products (``q @ kᵀ``, ``attn @ v``, ``torch.einsum``, SDPA) of a pruned model, predicted.

A product no layer module makes has no owner among the units, yet its operands shrink when the
projections feeding them are pruned (a hand-written attention's scores and mix shrink with its
query, key and value widths). Each unit is probed once: a copy of the model cut to the unit's
smallest allowed count (its dependency group's plan, as the surgery applies it) is recorded,
and every operand or output dimension of a product that shrank is tied to that unit by how many
entries it lost per removed channel. A policy's products then get their dimensions from the kept
counts and their MACs are recomputed from those shapes, so the MAC budget and the latency table
see the products the pruned model computes.

Only shapes are read from the probe (which channels went does not matter). A unit whose probe
fails ties nothing: its products keep their dense widths, and the safety net's MAC check
(:mod:`autoprune.graph.safety`) leaves the unit dense if that mispredicts its MACs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from autoprune.graph.functional import FUNCTIONAL_KINDS, einsum_macs, matmul_macs, sdpa_macs
from autoprune.graph.layers import ExampleInput, LayerSpec, as_args, record_layer_specs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProductWidth:
    """One dimension of a functional product tied to a unit.

    Attributes:
        spec: Index of the product's spec in the graph's dense specs.
        shape: Which shape: an operand's index, or the number of operands for the output.
        axis: The dimension within that shape.
        unit: The unit whose pruning shrinks it.
        lost: Entries the dimension lost in the probe, ...
        removed: ... when the probe removed this many of the unit's channels.
    """

    spec: int
    shape: int
    axis: int
    unit: str
    lost: int
    removed: int


class _Graph(Protocol):  # what a PrunableGraph offers (prunable.py imports this module, not the other way round)
    model: nn.Module
    example_input: ExampleInput
    dense_specs: list[LayerSpec]
    units: list

    def dense_copy(self, model: nn.Module) -> nn.Module: ...
    def pruning_plan(self, unit_name: str, idxs: list[int]) -> list: ...


def _shapes(spec: LayerSpec) -> list[tuple[int, ...]]:
    return [tuple(o) for o in dict(spec.options).get("operands", ())] + [tuple(spec.output_shape)]


def _probe(graph: _Graph, unit, removed: list[int]) -> list[LayerSpec]:
    """The product specs of a copy of the model with ``removed`` channels of ``unit`` cut (its group's plan)."""
    pruned = graph.dense_copy(graph.model)
    modules = dict(pruned.named_modules())
    for name, handler, dim, idxs in graph.pruning_plan(unit.name, removed):
        handler.__self__.pruning_dim = dim
        handler(modules[name], idxs)
    return [s for s in record_layer_specs(pruned, graph.example_input) if s.kind in FUNCTIONAL_KINDS]


def probe_product_widths(graph: _Graph) -> tuple[ProductWidth, ...]:
    """Every product dimension that a unit's pruning shrinks (see the module docstring); ``()`` for a model without products."""
    dense = [(i, s) for i, s in enumerate(graph.dense_specs) if s.kind in FUNCTIONAL_KINDS]
    if not dense:
        return ()
    found: list[ProductWidth] = []
    for unit in graph.units:
        channels = unit.features.channels
        below = [c for c in unit.allowed if c < channels]
        if not below:
            continue
        keep = below[0]  # the smallest count: the MAC check (at another ratio) then tests that the widths are linear
        removed = sorted(int(i) for i in unit.constraint.choose(torch.arange(channels, dtype=torch.float64), keep)) \
            if unit.constraint is not None else list(range(channels - keep))
        try:
            probed = _probe(graph, unit, removed)
        except Exception as e:  # noqa: BLE001 - the safety net's checks judge this unit
            log.debug("products of unit %s not probed (%s: %s)", unit.name, type(e).__name__, e)
            continue
        if len(probed) != len(dense):
            continue
        for (i, d), p in zip(dense, probed):
            for j, (a, b) in enumerate(zip(_shapes(d), _shapes(p))):
                found += [ProductWidth(i, j, ax, unit.name, x - y, len(removed)) for ax, (x, y) in enumerate(zip(a, b)) if x != y]
    return tuple(found)


def product_macs(kind: str, operands: tuple[tuple[int, ...], ...], output: tuple[int, ...], equation: str) -> int:
    """MACs of one whole functional call (all batch rows) from its shapes, as :mod:`autoprune.graph.functional` counts them."""
    if kind == "einsum":
        return einsum_macs(equation, operands)
    if kind == "scaled_dot_product_attention":
        return sdpa_macs(*operands[:3])
    return matmul_macs(operands[0], operands[1], output)


def resized_product(spec: LayerSpec, widths: list[ProductWidth], kept: dict[str, int], channels: dict[str, int],
                    batch: int) -> LayerSpec:
    """The spec of a product after each unit of ``widths`` keeps ``kept`` of its ``channels``: shapes and MACs per sample.

    Args:
        spec: The dense product spec.
        widths: Its tied dimensions (:func:`probe_product_widths`).
        kept, channels: Kept and dense channel counts per unit.
        batch: The batch size the spec was recorded at (its MACs are per sample).
    """
    shapes = [list(s) for s in _shapes(spec)]
    for w in widths:
        if w.unit in kept:
            shapes[w.shape][w.axis] -= w.lost * (channels[w.unit] - kept[w.unit]) // w.removed
    *operands, output = (tuple(s) for s in shapes)
    opts = dict(spec.options)
    macs = product_macs(spec.kind, tuple(operands), output, str(opts.get("equation", "")))
    opts.update(macs=macs // max(1, batch), operands=tuple(operands))
    first = operands[0] if operands else ()
    return replace(spec, in_channels=int(first[-1]) if first else 0, out_channels=int(output[-1]) if output else 0,
                   input_shape=first, output_shape=output, options=tuple(opts.items()))


def batch_of(example_input: ExampleInput) -> int:
    """The batch size of an example input (its first tensor's first dimension)."""
    args = as_args(example_input)
    return int(args[0].shape[0]) if args and args[0].dim() else 1


__all__ = ["ProductWidth", "batch_of", "probe_product_widths", "product_macs", "resized_product"]
