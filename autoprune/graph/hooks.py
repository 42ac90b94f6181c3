"""Which modules can take forward hooks: everything but the inside of scripted and compiled modules.

Every forward hook autoprune registers (layer specs, droppable blocks, activation importance, memory
checks) goes through :func:`hookable_modules`, so a ``torch.jit.script`` or ``torch.compile``
submodule, which cannot be hooked, is skipped instead of crashing the caller, and a module the
caller hides (an opaque one) is seen as one leaf.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator

import torch
from torch import jit, nn


def is_unhookable(module: nn.Module) -> str:
    """Why ``module`` cannot take forward hooks or be traced into (``""`` when it can)."""
    if isinstance(module, jit.ScriptModule):
        return "a TorchScript module (torch.jit.script/trace)"
    if type(module).__module__.startswith("torch._dynamo"):
        return "compiled by torch.compile"
    return ""


def hookable_modules(model: nn.Module, hidden: Iterable[str] = ()) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every module of ``model`` that can take forward hooks, in ``named_modules`` order.

    Scripted and compiled modules are skipped with everything inside them; a ``hidden`` module is
    yielded itself but not its inside.
    """
    hidden = set(hidden)
    skip: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if is_unhookable(m):
            skip.append(name)
            continue
        if name and name in hidden:
            skip.append(name)
        yield name, m


def hookable_leaves(model: nn.Module, hidden: Iterable[str] = ()) -> list[nn.Module]:
    """Leaf modules that can take forward hooks; a ``hidden`` module counts as one leaf (see :func:`hookable_modules`)."""
    hidden = set(hidden)
    return [m for name, m in hookable_modules(model, hidden) if name in hidden or next(m.children(), None) is None]


def model_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters are leaf tensors, as an optimizer needs them.

    Deep-copying a TorchScript submodule while autograd records gives parameters that are outputs
    of a copy op (not leaves: ``torch.optim`` raises "can't optimize a non-leaf Tensor"); copying
    without recording keeps each parameter a leaf (a scripted one loses its ``requires_grad``
    then, so it is set again from the original's).
    """
    with torch.no_grad():
        copied = copy.deepcopy(model)
    wanted = dict(model.named_parameters(remove_duplicate=False))
    for name, p in copied.named_parameters(remove_duplicate=False):
        if name in wanted and p.requires_grad != wanted[name].requires_grad:
            p.requires_grad_(wanted[name].requires_grad)
    return copied


__all__ = ["hookable_leaves", "hookable_modules", "is_unhookable", "model_copy"]
