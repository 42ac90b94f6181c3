"""Modules autoprune cannot see into: opaque to tracing and hooks, their channels fixed, everything around them pruned.

Torch-Pruning builds its dependency graph by tracing autograd (DepGraph, Fang et al. 2023). Some
modules cannot be traced that way, or not correctly:

- **scripted or compiled** submodules (``torch.jit.script``, ``torch.compile``): they cannot take
  forward hooks, and their autograd nodes are fused;
- **layers Torch-Pruning 1.6 has no correct pruner for**: recurrent layers (``nn.LSTM``'s pruner
  cuts the gate weights inconsistently; ``nn.GRU`` and ``nn.RNN`` have none) and custom leaf layers
  with parameters of their own;
- modules listed in ``model.ignore`` that are not one layer Torch-Pruning prunes (a container, a
  custom layer): the user asked for them to be left alone;
- modules holding an operation Torch-Pruning cannot map (e.g. ``torch.cat`` over a non-channel
  dimension, as in a rotary embedding's ``rotate_half``), found when tracing fails, and modules
  calling a custom ``torch.autograd.Function`` that changes the channel count.

Each is *opaque*: while the graph is traced it is replaced by an :class:`OpaqueBox` whose output is
one autograd node fed by its inputs (:class:`_OpaqueCall`), registered with Torch-Pruning as a
layer whose input and output channels are separate and never cut (:class:`_FixedPruner`). A unit
whose channels reach an opaque module is therefore not offered (its reason names the module), and
every other unit is found as usual. The same opaque set is used whenever the model is traced
again (surgery re-queries groups on the partly pruned copy; a saved model replays them).
"""

from __future__ import annotations

import contextlib
import logging
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from autoprune.errors import ModelError
from autoprune.graph.hooks import hookable_modules, is_unhookable
from autoprune.graph.layers import ExampleInput

log = logging.getLogger(__name__)

#: Recurrent layers: Torch-Pruning 1.6 prunes none of them correctly.
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)
_MAX_RETRIES = 8


def _tp_layer(module: nn.Module) -> bool:
    """Whether Torch-Pruning 1.6 prunes ``module`` as one layer (conv, linear, norms, PReLU, embedding, attention)."""
    return tp.ops.module2type(module) not in (tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.LSTM)


def opaque_modules(model: nn.Module, ignored: Sequence[str] = ()) -> dict[str, str]:
    """The modules of ``model`` that are opaque from the start, outermost only: ``{name: why}``.

    Scripted and compiled modules, recurrent layers, leaf layers with parameters that Torch-Pruning
    has no pruner for, and every ``ignored`` module that is not one layer Torch-Pruning prunes.
    """
    found: dict[str, str] = {}
    for name, m in model.named_modules():
        if not name or any(name.startswith(o + ".") for o in found):
            continue
        why = is_unhookable(m)
        if not why and isinstance(m, RECURRENT):
            why = f"{type(m).__name__}: Torch-Pruning 1.6 cannot prune recurrent layers correctly"
        if not why and name in ignored and not _tp_layer(m):
            why = "listed in model.ignore"
        if not why and next(m.children(), None) is None and list(m.parameters(recurse=False)) and not _tp_layer(m):
            why = f"{type(m).__name__} has parameters of its own that Torch-Pruning has no pruner for"
        if why:
            found[name] = why
    return found


def _channels_of(shape: Sequence[int]) -> int | None:
    """The channel count Torch-Pruning reads off a shape: dim 1 of (N, C) and (N, C, ...), the last of tokens (N, L, F)."""
    if len(shape) < 2:
        return None
    return int(shape[-1] if len(shape) == 3 else shape[1])


def _channels(t: object) -> int | None:
    return _channels_of(tuple(t.shape)) if isinstance(t, torch.Tensor) else None


class _OpaqueCall(torch.autograd.Function):
    """One autograd node from an opaque module's tensor inputs to its floating outputs (used for tracing only)."""

    @staticmethod
    def forward(ctx, run, *tensors):
        return run(*tensors)

    @staticmethod
    def backward(ctx, *grads):
        return (None, *(None for _ in range(len(ctx.needs_input_grad) - 1)))


class OpaqueBox(nn.Module):
    """Stands in for an opaque module while a model is traced: same outputs, one autograd node, no children.

    Attributes:
        name: Dotted path of the module it stands for.
        in_channels, out_channels: Channels of its first tensor input / output in the last call.
    """

    def __init__(self, inner: nn.Module, name: str) -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)  # not a child: its layers stay out of the graph
        self.name = name
        self.in_channels: int | None = None
        self.out_channels: int | None = None

    def forward(self, *args: object, **kwargs: object) -> object:
        """``inner(*args, **kwargs)``, its floating outputs made by one :class:`_OpaqueCall` node."""
        leaves, spec = tree_flatten((args, kwargs))
        where = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)]
        self.in_channels = _channels(leaves[where[0]]) if where else None
        made: dict[str, object] = {}

        def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            values = list(leaves)
            for i, t in zip(where, tensors):
                values[i] = t
            a, k = tree_unflatten(values, spec)
            out_leaves, out_spec = tree_flatten(self.inner(*a, **k))
            made.update(leaves=out_leaves, spec=out_spec)
            made["float"] = [i for i, v in enumerate(out_leaves) if isinstance(v, torch.Tensor) and v.is_floating_point()]
            return tuple(out_leaves[i].clone() for i in made["float"])

        outs = _OpaqueCall.apply(run, *(leaves[i] for i in where))
        outs = outs if isinstance(outs, tuple) else (outs,)
        values = list(made["leaves"])
        for i, t in zip(made["float"], outs):
            values[i] = t
        result = tree_unflatten(values, made["spec"])
        first = next((v for v in values if isinstance(v, torch.Tensor)), None)
        self.out_channels = _channels(first)
        return result


class _FixedPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's view of an :class:`OpaqueBox`: input and output channels unrelated, never cut."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    def get_out_channels(self, layer: nn.Module) -> int | None:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int | None:
        return layer.in_channels


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@contextlib.contextmanager
def hidden(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, OpaqueBox]]:
    """Replace the named modules of ``model`` by :class:`OpaqueBox` es (outermost only), restored on exit."""
    outer = [n for n in names if n and not any(n.startswith(o + ".") for o in names if o != n)]
    boxes: dict[str, OpaqueBox] = {}
    originals = {n: model.get_submodule(n) for n in outer}
    try:
        for n, m in originals.items():
            boxes[n] = OpaqueBox(m, n)
            _set(model, n, boxes[n])
        yield boxes
    finally:
        for n, m in originals.items():
            _set(model, n, m)


def build_dependency_graph(model: nn.Module, example_input: ExampleInput, opaque: Sequence[str] = ()) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` with the ``opaque`` modules hidden (gradients on, warnings off).

    Raises:
        Exception: whatever Torch-Pruning raises (see :func:`trace` for the located, one-line form).
    """
    with hidden(model, list(opaque)), warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        dg = tp.DependencyGraph()
        dg.register_customized_layer(OpaqueBox, _FixedPruner())
        return dg.build_dependency(model, example_inputs=example_input, verbose=False)


@dataclass
class _Call:
    name: str
    inputs: set = field(default_factory=set)
    outputs: list = field(default_factory=list)


def _grad_fns(value: object) -> list:
    return [t.grad_fn for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor) and t.grad_fn is not None]


@contextlib.contextmanager
def _recording_calls(model: nn.Module, calls: list[_Call]) -> Iterator[None]:
    """Record every module call's input and output autograd nodes (to find which module made a node)."""
    stack: list[_Call] = []
    handles = []
    for name, m in hookable_modules(model):
        if not name:
            continue

        def pre(_m: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
            stack.append(_Call(name, set(_grad_fns((args, kwargs)))))

        def post(_m: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
            call = stack.pop()
            call.outputs = _grad_fns(out)
            calls.append(call)

        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _made_by(calls: list[_Call], target: object) -> str:
    """The innermost module whose call created autograd node ``target`` (``""``: the model's own forward)."""
    inside = []
    for call in calls:
        seen, todo = set(), list(call.outputs)
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen or fn in call.inputs:
                continue
            if fn is target:
                inside.append(call.name)
                break
            seen.add(fn)
            todo.extend(f for f, _ in getattr(fn, "next_functions", ()) if f is not None)
    return max(inside, key=lambda n: (n.count("."), len(n)), default="")


def _failing_node(e: BaseException) -> object | None:
    """The Torch-Pruning graph node whose index mapping raised ``e`` (innermost frame holding one)."""
    node_type = tp.dependency.Node
    found = None
    for frame, _ in traceback.walk_tb(e.__traceback__):
        for key in ("cat_node", "split_node", "node"):
            value = frame.f_locals.get(key)
            if isinstance(value, node_type):
                found = value
                break
    return found


def describe_op(grad_fn: object) -> str:
    """One phrase for the operation behind an autograd node: ``torch.cat over dim -1 (output (1, 4, 8, 8))``."""
    name = grad_fn.name() if hasattr(grad_fn, "name") else type(grad_fn).__name__
    base = name.removesuffix("Backward0").removesuffix("Backward1").removesuffix("Backward")
    op = {"Cat": "torch.cat", "Split": "torch.split", "SplitWithSizes": "torch.split", "Unbind": "torch.unbind",
          "Stack": "torch.stack"}.get(base)
    if op is None:
        op = f"the custom autograd function {base}" if isinstance(grad_fn, torch.autograd.function.BackwardCFunction) else f"the operation {base}"
    dim = getattr(grad_fn, "_saved_dim", None)
    if isinstance(dim, int):
        op += f" over dim {dim - 2**64 if dim >= 2**63 else dim}"
    meta = getattr(grad_fn, "_input_metadata", None)
    if meta:
        op += f" (output {tuple(meta[0].shape)})"
    return op


def _shape_changing_custom_fns(dg: tp.DependencyGraph) -> list[object]:
    """Nodes of custom ``autograd.Function`` s whose output channels differ from an input's (Torch-Pruning takes them as element-wise)."""
    found = []
    for node in dg.module2node.values():
        fn = node.grad_fn
        if node.type != tp.ops.OPTYPE.ELEMENTWISE or not isinstance(fn, torch.autograd.function.BackwardCFunction):
            continue
        if isinstance(node.module, OpaqueBox):
            continue
        out = list(fn._input_metadata[0].shape) if fn._input_metadata else []
        for f, i in fn.next_functions:
            meta = getattr(f, "_input_metadata", None) if f is not None and not hasattr(f, "variable") else None
            if meta and i < len(meta):
                shape = list(meta[i].shape)
                if _channels_of(shape) != _channels_of(out):
                    found.append(fn)
                    break
    return found


@dataclass
class TraceResult:
    """What :func:`trace` found.

    Attributes:
        dg: Torch-Pruning's dependency graph (opaque modules hidden).
        opaque: ``{module name: why}`` of every opaque module, those found while tracing included.
        blocked: ``{graph node module: why}``: nodes in the model's own forward that units must not cross.
    """

    dg: tp.DependencyGraph
    opaque: dict[str, str]
    blocked: dict[object, str] = field(default_factory=dict)


def trace(model: nn.Module, example_input: ExampleInput, opaque: Mapping[str, str]) -> TraceResult:
    """Build the dependency graph with ``opaque`` modules hidden; a module holding an operation Torch-Pruning cannot map becomes opaque too.

    When tracing fails, the failing operation is located in the innermost module that runs it; that
    module becomes opaque (one warning line naming it and the operation) and tracing is retried.
    A custom autograd function that changes the channel count makes its module opaque the same way.

    Args:
        model: The model (restored as it was, whatever happens).
        example_input: Its input.
        opaque: Modules opaque from the start (:func:`opaque_modules`).

    Raises:
        ModelError: the failing operation runs in the model's own forward (no module to hide), naming it.
    """
    opaque = dict(opaque)
    for _ in range(_MAX_RETRIES):
        calls: list[_Call] = []
        try:
            with _recording_calls(model, calls):
                dg = build_dependency_graph(model, example_input, list(opaque))
        except Exception as e:
            node = _failing_node(e)
            op = describe_op(node.grad_fn) if node is not None and node.grad_fn is not None else "an operation it cannot map"
            where = _made_by(calls, node.grad_fn) if node is not None else ""
            detail = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
            if not where or where in opaque:
                place = f"module {where!r}" if where else "the model's own forward"
                raise ModelError(
                    f"Torch-Pruning cannot trace the model: {op} in {place} ({detail}); "
                    "move that operation into a submodule and add it to model.ignore"
                ) from e
            opaque[where] = f"Torch-Pruning cannot trace {op} inside it ({detail})"
            log.warning("module %r is opaque: %s; its input and output channels are kept", where, opaque[where])
            continue
        blocked: dict[object, str] = {}
        retry = False
        for fn in _shape_changing_custom_fns(dg):
            where = _made_by(calls, fn)
            why = f"it calls {describe_op(fn)}, which changes the channel count"
            if where and where not in opaque:
                opaque[where] = why
                log.warning("module %r is opaque: %s; its input and output channels are kept", where, why)
                retry = True
            else:
                node = next(n for n in dg.module2node.values() if n.grad_fn is fn)
                blocked[node.module] = f"{describe_op(fn)} in the model's own forward, which changes the channel count"
        if not retry:
            return TraceResult(dg, opaque, blocked)
    raise ModelError(f"Torch-Pruning cannot trace the model even with {sorted(opaque)} hidden")


__all__ = [
    "OpaqueBox", "RECURRENT", "TraceResult", "build_dependency_graph", "describe_op", "hidden", "opaque_modules", "trace",
]
