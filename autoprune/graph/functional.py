"""Multiply-accumulates of functional calls that no layer module makes: ``q @ k^T``, ``attn @ v``, ``torch.einsum``, SDPA.

Hand-written attention computes its scores and context with tensor products outside any
``nn.Module`` leaf, so forward hooks never see them. :class:`FunctionalRecorder` is a
``TorchFunctionMode`` (the ``__torch_function__`` protocol of PyTorch) that records each such call
with its operand shapes while :func:`autoprune.graph.layers.record_layer_specs` runs the model,
so the MAC budget counts them. Calls made inside a module whose own spec already counts its
products (``nn.MultiheadAttention``, a recognised self-attention) are not recorded twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

#: Kinds of recorded functional calls (each a ``LayerSpec`` kind whose MACs the spec carries).
FUNCTIONAL_KINDS = frozenset({"matmul", "einsum", "scaled_dot_product_attention"})


@dataclass(frozen=True)
class FunctionalCall:
    """One recorded call.

    Attributes:
        kind: One of :data:`FUNCTIONAL_KINDS`.
        module_name: The innermost module whose forward made the call (``""``: the model's own forward).
        operands: Shapes of the tensor operands.
        output: Shape of the result.
        equation: The ``einsum`` equation (empty for other kinds).
        macs: Multiply-accumulates of the whole call (all batch rows).
    """

    kind: str
    module_name: str
    operands: tuple[tuple[int, ...], ...]
    output: tuple[int, ...]
    equation: str
    macs: int


def matmul_macs(a: tuple[int, ...], b: tuple[int, ...], out: tuple[int, ...]) -> int:
    """MACs of ``a @ b``: every output element is a dot product over ``a``'s last dimension."""
    return math.prod(out) * (a[-1] if a else 1) if len(b) > 0 else 0


def einsum_macs(equation: str, operands: tuple[tuple[int, ...], ...]) -> int:
    """MACs of ``torch.einsum(equation, *operands)``: the product of every index's size (one multiply-add per combination).

    For one operand (a sum or a transpose) it is 0. Ellipses are read as their dimensions.
    """
    if len(operands) < 2:
        return 0
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for letters, shape in zip(inputs, operands):
        if "..." in letters:
            head, tail = letters.split("...")
            middle = len(shape) - len(head) - len(tail)
            letters = head + "".join(chr(0x100 + i) for i in range(middle)) + tail
        for ch, n in zip(letters, shape):
            sizes[ch] = max(sizes.get(ch, 1), int(n))
    return math.prod(sizes.values()) * (len(operands) - 1)


def sdpa_macs(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> int:
    """MACs of ``scaled_dot_product_attention(q, k, v)``: ``Q·Kᵀ`` (``L*S*E`` per head) plus ``attn·V`` (``L*S*Ev``)."""
    rows = math.prod(q[:-1])
    return rows * k[-2] * q[-1] + rows * k[-2] * v[-1]


def _shape(t: object) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape) if isinstance(t, torch.Tensor) else ()


class FunctionalRecorder(TorchFunctionMode):
    """Records matmul, bmm, einsum and SDPA calls (see the module docstring).

    Args:
        where: Callable returning the name of the module running now, or ``None`` inside a module
            whose own spec already counts its products.
        sink: Called with each recorded :class:`FunctionalCall`, in call order.
    """

    def __init__(self, where: Callable[[], str | None], sink: Callable[[FunctionalCall], None]) -> None:
        super().__init__()
        self.where, self.sink = where, sink

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in ("matmul", "bmm", "mm", "__matmul__", "einsum", "scaled_dot_product_attention"):
            module = self.where()
            if module is not None:
                self._record(name, module, args, kwargs, out)
        return out

    def _record(self, name: str, module: str, args: tuple, kwargs: dict, out: object) -> None:
        if name == "einsum":
            equation = args[0] if args and isinstance(args[0], str) else ""
            tensors = args[1:] if len(args) > 2 else (tuple(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
            shapes = tuple(_shape(t) for t in tensors if isinstance(t, torch.Tensor))
            call = FunctionalCall("einsum", module, shapes, _shape(out), equation, einsum_macs(equation, shapes))
        elif name == "scaled_dot_product_attention":
            q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")[len(args):]])[:3]
            shapes = (_shape(q), _shape(k), _shape(v))
            call = FunctionalCall(name, module, shapes, _shape(out), "", sdpa_macs(*shapes))
        else:
            a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
            shapes = (_shape(a), _shape(b))
            call = FunctionalCall("matmul", module, shapes, _shape(out), "", matmul_macs(shapes[0], shapes[1], _shape(out)))
        if call.macs > 0:
            self.sink(call)


__all__ = ["FUNCTIONAL_KINDS", "FunctionalCall", "FunctionalRecorder", "einsum_macs", "matmul_macs", "sdpa_macs"]
