"""Residual blocks found by tracing: a block ``y = f(x) + x`` can be dropped (replaced by its shortcut).

:class:`autoprune.graph.prunable.PrunableGraph` asks this for every module whose input and output
shapes match and that does not say so itself with a ``residual`` attribute.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
from torch import nn


def is_residual_by_trace(module: nn.Module) -> bool:
    """True if torch.fx shows the module returns ``input + f(input)`` (optionally through an activation).

    A module that cannot be traced symbolically, or takes more than one input, is not residual.
    """
    return not not_residual_because(module)


def not_residual_because(module: nn.Module) -> str:
    """Why tracing does not show ``module`` as ``y = f(x) + x`` (``""`` when it does), in one phrase.

    E.g. ``"torch.fx cannot trace its forward (data-dependent control flow: TraceError: ...)"``.
    """
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "not found by tracing"
        text = " ".join(str(e).split())[:120]
        flow = "data-dependent control flow: " if "control flow" in text or isinstance(e, torch.fx.proxy.TraceError) else ""
        return f"torch.fx cannot trace its forward ({flow}{type(e).__name__}: {text})"
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return f"its forward takes {len(placeholders)} inputs, not one"
    x = placeholders[0]
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if not isinstance(out, torch.fx.Node):
        return "its output is not one tensor"
    node = out
    # Skip one trailing activation: relu(x + f(x)).
    if node.op in ("call_function", "call_method", "call_module") and len(node.args) >= 1 and not _is_add(node):
        node = node.args[0] if isinstance(node.args[0], torch.fx.Node) else node
    if not _is_add(node) or not any(a is x or _is_identity_of(a, x, gm) for a in node.args):
        return "its output is not input + f(input)"
    return ""


def _is_add(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (operator.add, torch.add)) or (
        node.op == "call_method" and node.target == "add"
    )


def _is_identity_of(node: object, x: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    if not isinstance(node, torch.fx.Node) or node.op != "call_module":
        return False
    sub = gm.get_submodule(str(node.target))
    return isinstance(sub, nn.Identity) and node.args and node.args[0] is x


__all__ = ["is_residual_by_trace", "not_residual_because"]
