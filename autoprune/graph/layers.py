"""``LayerSpec``: the shape of one layer call, the unit of the latency lookup table and of MAC counting.

One recorder, :func:`record_layer_specs`, runs a model once with forward hooks and returns one
spec per leaf-layer call. The prunable graph records the dense model with it
(:class:`autoprune.graph.prunable.PrunableGraph` then rewrites the specs for a candidate policy
without surgery), and the latency table (:mod:`autoprune.measure.table`) keys its entries by
:meth:`LayerSpec.key` of the same specs, so a layer has one key everywhere.

**MAC convention.** Every function here and above that returns MACs returns *multiply-accumulates
per input sample* (the batch size of the recorded input divides out). Only the layers that do the
multiply-accumulates are counted, exactly: Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear (over every
leading token dimension), ``nn.MultiheadAttention`` (its Q, K, V and output projections and the
``Q·Kᵀ`` and ``attn·V`` matmuls of every head) and the functional products no layer makes
(``q @ k.transpose(-2, -1)``, ``attn @ v``, ``torch.einsum``, ``F.scaled_dot_product_attention``,
recorded by :mod:`autoprune.graph.functional`). Bias additions, normalisation, activations,
pooling and embedding lookups count 0. The layers inside a scripted or compiled submodule cannot
be hooked and are not counted. See :func:`spec_macs` for the formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from autoprune.graph.functional import FUNCTIONAL_KINDS, FunctionalCall, FunctionalRecorder
from autoprune.graph.hooks import hookable_modules, is_unhookable
from autoprune.graph.layer_kinds import ATTENTION_CORE, spec_fields
from autoprune.graph.transformer import attention_width

ExampleInput = torch.Tensor | tuple[torch.Tensor, ...]
"""What a model is called with: one batch-first tensor (``(N, C, H, W)``, ``(N, C, L)``, ``(N, F)``,
``(N, L, F)``), or a tuple of them (``model(*inputs)``), all with the same batch size ``N``.
A transformer encoder takes ``(input_ids, attention_mask)``, both int64 of shape ``(N, L)``
(sequence length ``L``); see :func:`as_args` and :func:`with_batch_size`."""



def as_args(example_input: ExampleInput) -> tuple[torch.Tensor, ...]:
    """The positional arguments a model is called with: ``model(*as_args(x))``."""
    return example_input if isinstance(example_input, tuple) else (example_input,)


def input_shapes(example_input: ExampleInput) -> object:
    """The shape of an example input (a tuple of shapes for a tuple of tensors), for messages."""
    if isinstance(example_input, tuple):
        return tuple(tuple(t.shape) for t in example_input)
    return tuple(example_input.shape)


def with_batch_size(example_input: ExampleInput, batch_size: int, *, generator: torch.Generator | None = None) -> ExampleInput:
    """An input like ``example_input`` with ``batch_size`` rows, same dtypes.

    Floating tensors are drawn from a standard normal (``generator`` for repeatability); integer
    tensors (token ids, attention masks) repeat the example's first row, so ids stay valid.
    A tuple keeps its layout: e.g. ``(input_ids, attention_mask)``, both ``(N, L)`` int64.
    """
    def one(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return torch.randn((batch_size, *t.shape[1:]), generator=generator, dtype=t.dtype)
        return t[:1].repeat(batch_size, *([1] * (t.dim() - 1)))

    return tuple(one(t) for t in example_input) if isinstance(example_input, tuple) else one(example_input)


#: Layer kinds that hold weights over channels: the layers a unit is rooted at and that do MACs.
MAC_LAYER_KINDS = frozenset(
    {"conv1d", "conv2d", "conv3d", "convtranspose1d", "convtranspose2d", "convtranspose3d", "linear", "multiheadattention"}
)


@dataclass(frozen=True)
class LayerSpec:
    """One layer call: everything that determines its cost, plus its name.

    Attributes:
        module_name: Dotted path of the module in the model (``layer1.0.conv1``).
        kind: Lower-cased class name: ``conv2d``, ``conv1d``, ``convtranspose2d``, ``linear``,
            ``multiheadattention``, ``batchnorm2d``, ``relu``, ``maxpool2d``, ``identity``, ...
        in_channels: Channels (or features) of the input.
        out_channels: Channels (or features) of the output.
        input_shape: Input shape, batch first: ``(N, C, *spatial)`` for convs, norms and pools;
            ``(N, ..., F)`` for Linear and LayerNorm; ``(N, L, E)`` for attention (a
            ``batch_first=False`` call is recorded batch first).
        output_shape: Output shape, batch first, laid out like ``input_shape``.
        kernel_size, stride, padding, dilation: Per spatial dimension, for convs and pools
            (empty otherwise). For adaptive pools ``kernel_size`` holds the output size.
        groups: Conv groups; for attention, the number of heads. 1 otherwise.
        bias: Whether the layer has a bias (BatchNorm: whether it is affine).
        channel_axis: Index of the channel dimension in ``input_shape`` and ``output_shape``
            (1 for convs and norms over ``(N, C, ...)``, the last for Linear, LayerNorm and attention).
        key_length: Attention only: sequence length of keys and values.
        kv_channels: Attention only: ``(kdim, vdim)``, features of keys and values.
        options: The constructor arguments of a layer the latency table rebuilds generically
            (``(("scale_factor", 2.0), ("mode", "nearest"), ...)`` for ``nn.Upsample``, the plain
            attributes of a parameter-free module), and for a functional call (``matmul``,
            ``einsum``, ``scaled_dot_product_attention``) its ``macs`` per sample and ``operands``
            shapes. Part of the key only when not empty.
        module: The module instance the spec was recorded from (not part of the key): the latency
            table times a layer it cannot rebuild on this instance, at the recorded shape.
    """

    module_name: str
    kind: str
    in_channels: int
    out_channels: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] = ()
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = False
    channel_axis: int = 1
    key_length: int = 0
    kv_channels: tuple[int, ...] = ()
    options: tuple[tuple[str, object], ...] = ()
    module: object = field(default=None, compare=False, repr=False)

    def key(self) -> tuple:
        """Everything that determines latency (all fields but the name and the instance): the lookup-table key."""
        base = (
            self.kind, self.in_channels, self.out_channels, self.input_shape, self.output_shape, self.kernel_size,
            self.stride, self.padding, self.dilation, self.groups, self.bias, self.channel_axis, self.key_length,
            self.kv_channels,
        )  # fmt: skip
        return (*base, self.options) if self.options else base

    @property
    def batch_size(self) -> int:
        """``N``, the first dimension of ``input_shape`` (1 for a scalar-shaped call)."""
        return int(self.input_shape[0]) if self.input_shape else 1

    def with_channels(self, in_channels: int, out_channels: int) -> LayerSpec:
        """A copy with new channel counts, and shapes to match.

        Depthwise convs keep ``groups == in_channels``; attention keeps its number of heads
        and, as Torch-Pruning's ``MultiheadAttentionPruner`` does, sets ``kdim = vdim = embed_dim``.
        """
        groups, kv = self.groups, self.kv_channels
        if self.kind.startswith("conv") and 1 < self.groups == self.in_channels:
            groups = in_channels
            out_channels = in_channels * (self.out_channels // self.in_channels)
        if self.kind == "multiheadattention":
            out_channels = in_channels
            kv = (in_channels, in_channels)
        if self.kind == ATTENTION_CORE:  # whole heads: head_dim kept, the number of heads follows the width
            out_channels = in_channels
            groups = max(1, in_channels // max(1, self.in_channels // max(1, self.groups)))
        return replace(
            self,
            in_channels=in_channels,
            out_channels=out_channels,
            groups=groups,
            kv_channels=kv,
            input_shape=_set_axis(self.input_shape, self.channel_axis, in_channels),
            output_shape=_set_axis(self.output_shape, self.channel_axis, out_channels),
        )

    def with_batch(self, batch_size: int) -> LayerSpec:
        """A copy with a different batch size ``N`` (a functional call's operands too, where their first dimension is ``N``)."""
        out = (batch_size, *self.output_shape[1:]) if self.output_shape else ()
        options = self.options
        if self.kind in FUNCTIONAL_KINDS:
            n = self.batch_size
            opts = dict(options)
            opts["operands"] = tuple((batch_size, *o[1:]) if o and o[0] == n else o for o in opts.get("operands", ()))
            options = tuple(opts.items())
        return replace(self, input_shape=(batch_size, *self.input_shape[1:]), output_shape=out, options=options)


def _set_axis(shape: tuple[int, ...], axis: int, value: int) -> tuple[int, ...]:
    if len(shape) <= axis:
        return shape
    return (*shape[:axis], value, *shape[axis + 1 :])


def spec_macs(spec: LayerSpec) -> int:
    """Multiply-accumulates **per input sample** of one layer call (the batch size divides out).

    With ``k`` the product of the kernel size, ``groups`` the conv groups:

    * Conv1d/2d/3d: ``out_channels * in_channels / groups * k * prod(output spatial)``;
    * ConvTranspose1d/2d/3d: ``in_channels * out_channels / groups * k * prod(input spatial)``
      (every input value is scattered through the kernel once);
    * Linear: ``in_features * out_features * prod(leading token dims)``;
    * MultiheadAttention (embed dim ``E``, query length ``Lq``, key length ``Lk``, ``kdim``, ``vdim``):
      projections ``Lq*E*E + Lk*kdim*E + Lk*vdim*E + Lq*E*E`` plus per head ``Lq*Lk*d`` for ``Q·Kᵀ``
      and ``Lq*Lk*d`` for ``attn·V`` (``d = E / heads``), i.e. ``2*Lq*Lk*E`` over all heads;
    * the dot-product core of a Hugging Face self-attention (``dotproductattention``, width
      ``W = heads * head_dim``, sequence length ``L``): ``2*L*L*W`` (its projections are Linear specs);
    * a functional product (``matmul``, ``einsum``, ``scaled_dot_product_attention``): the MACs
      recorded with it (:mod:`autoprune.graph.functional`);
    * every other kind: 0.

    Args:
        spec: A recorded or predicted layer spec.

    Returns:
        MACs per sample (an integer).
    """
    kind = spec.kind
    if kind in ("conv1d", "conv2d", "conv3d"):
        per_position = spec.out_channels * (spec.in_channels // spec.groups) * math.prod(spec.kernel_size)
        return per_position * math.prod(spec.output_shape[2:])
    if kind in ("convtranspose1d", "convtranspose2d", "convtranspose3d"):
        per_position = spec.in_channels * (spec.out_channels // spec.groups) * math.prod(spec.kernel_size)
        return per_position * math.prod(spec.input_shape[2:])
    if kind == "linear":
        return spec.in_channels * spec.out_channels * math.prod(spec.input_shape[1:-1])
    if kind == "multiheadattention":
        e, lq, lk = spec.in_channels, spec.input_shape[1], spec.key_length
        kdim, vdim = spec.kv_channels or (e, e)
        return 2 * lq * e * e + lk * (kdim + vdim) * e + 2 * lq * lk * e
    if kind == ATTENTION_CORE:
        return 2 * spec.input_shape[1] * spec.key_length * spec.in_channels
    if kind in FUNCTIONAL_KINDS:
        return int(dict(spec.options).get("macs", 0))
    return 0


def count_macs(specs: list[LayerSpec] | tuple[LayerSpec, ...]) -> int:
    """MACs per input sample of a whole model: :func:`spec_macs` summed over its layer calls."""
    return sum(spec_macs(s) for s in specs)

class _Passthrough(nn.Module):
    """Stands in for a module that cannot be hooked (scripted, compiled) while specs are recorded."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)

    def forward(self, *args: object, **kwargs: object) -> object:
        return self.inner(*args, **kwargs)


def _inner_kind(module: nn.Module) -> str:
    """``torchscript:<class>`` or ``compiled:<class>``: a kind no builder rebuilds (the latency table times it in place)."""
    inner = getattr(module, "_orig_mod", module)
    how = "compiled" if inner is not module else "torchscript"
    return f"{how}:{str(getattr(inner, 'original_name', type(inner).__name__)).lower()}"


def _recorded_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules, attention modules (whose ``out_proj`` child is used functionally, never called), and
    scripted or compiled modules as one call each (they cannot be hooked; their inside is not seen)."""
    inside_attention: list[str] = []
    chosen = []
    unhookable = {n for n, m in model.named_modules() if n and is_unhookable(m)}
    for name, module in hookable_modules(model):
        if any(name.startswith(a + ".") for a in inside_attention):
            continue
        if isinstance(module, nn.MultiheadAttention):
            inside_attention.append(name)
            chosen.append((name, module))
        elif attention_width(module) is not None:  # its linears are called as modules: record them too
            chosen.append((name, module))
        elif next(module.children(), None) is None:
            chosen.append((name, module))
    outer = [n for n in unhookable if not any(n.startswith(o + ".") for o in unhookable if o != n)]
    chosen += [(n, model.get_submodule(n)) for n in sorted(outer)]
    return chosen


def _counts_its_products(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or attention_width(module) is not None


def record_layer_specs(model: nn.Module, example_input: ExampleInput) -> list[LayerSpec]:
    """Run ``model`` once and return a :class:`LayerSpec` for every leaf-layer call, in call order.

    This is the one recorder: the prunable graph, the MAC counter and the latency table all use
    it, so a layer has the same spec (and lookup-table key) everywhere. ``module_name`` is the
    name in ``named_modules()``; a module called twice yields two specs. Element-wise functional
    ops (``F.relu``, ``torch.cat``, residual additions) are not seen; the tensor products no layer
    makes (``@``, ``torch.matmul``/``bmm``/``einsum``, ``F.scaled_dot_product_attention``) are
    recorded as specs of kind ``matmul``, ``einsum`` or ``scaled_dot_product_attention`` named
    after the innermost module that makes them (:mod:`autoprune.graph.functional`), except inside
    ``nn.MultiheadAttention`` and recognised self-attention modules, whose own spec counts them. A
    scripted or compiled submodule is recorded as one call of kind ``torchscript:<class>`` or
    ``compiled:<class>`` (its inside cannot be hooked, its MACs are not counted). The model runs
    once in eval mode under ``torch.inference_mode``; its training flag is restored.

    Args:
        model: Any ``nn.Module``.
        example_input: A batch-first tensor (``(N, C, H, W)``, ``(N, F)``, ...) or a tuple of
            them passed as ``model(*example_input)``.

    Returns:
        The specs, in call order.

    Raises:
        RuntimeError: the model's forward fails on ``example_input`` (e.g. a shape mismatch); other
            exceptions of the forward pass propagate unchanged.
            :class:`~autoprune.graph.prunable.PrunableGraph` turns them into a ``ModelError``.
    """
    specs: list[LayerSpec] = []
    stack: list[tuple[str, bool]] = []
    args = as_args(example_input)
    batch = int(args[0].shape[0]) if args and args[0].dim() else 1

    def hook_for(name: str, kind: str | None = None) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            target = module.inner if isinstance(module, _Passthrough) else module
            fields = spec_fields(name, target, args, kwargs, output, specs[-1] if specs else None)
            if fields is not None:
                if kind is not None:  # a scripted or compiled module: one call of its class, rebuilt by nothing
                    fields.update(kind=kind, options=())
                specs.append(LayerSpec(**fields, module=target))

        return hook

    def where() -> str | None:
        if any(counted for _, counted in stack):
            return None
        return stack[-1][0] if stack else ""

    def functional(call: FunctionalCall) -> None:
        a = call.operands[0] if call.operands else ()
        spec = LayerSpec(
            call.module_name, call.kind, int(a[-1]) if a else 0, int(call.output[-1]) if call.output else 0, a, call.output,
            channel_axis=max(0, len(a) - 1), options=(("macs", call.macs // max(1, batch)), ("operands", call.operands), ("equation", call.equation)),
        )  # fmt: skip
        specs.append(spec)

    recorded = _recorded_modules(model)
    swapped = {n: m for n, m in recorded if n and is_unhookable(m)}
    for n, m in swapped.items():
        _set_module(model, n, _Passthrough(m))
    handles = []
    try:
        for n, m in recorded:
            hooked = model.get_submodule(n) if n in swapped else m
            kind = _inner_kind(m) if n in swapped else None
            handles.append(hooked.register_forward_hook(hook_for(n, kind), with_kwargs=True))
        def enter(module: nn.Module, _args: tuple, name: str) -> None:
            stack.append((name, _counts_its_products(module)))

        def leave(_module: nn.Module, _args: tuple, _output: object) -> None:
            if stack:
                stack.pop()

        for n, m in hookable_modules(model):
            handles.append(m.register_forward_pre_hook(lambda module, a, n=n: enter(module, a, n)))
            handles.append(m.register_forward_hook(leave))
        was_training = model.training
        try:
            model.eval()
            with torch.inference_mode(), FunctionalRecorder(where, functional):
                model(*args)
        finally:
            model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
        for n, m in swapped.items():
            _set_module(model, n, m)
    return specs


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


__all__ = [
    "ATTENTION_CORE", "FUNCTIONAL_KINDS", "MAC_LAYER_KINDS", "ExampleInput", "LayerSpec", "as_args", "count_macs", "input_shapes",
    "record_layer_specs", "spec_macs", "with_batch_size",
]
