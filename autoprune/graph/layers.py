"""``LayerSpec``: the shape of one layer call, the unit of the latency lookup table and of MAC counting.

One recorder, :func:`record_layer_specs`, runs a model once with forward hooks and returns one
spec per leaf-layer call. The prunable graph records the dense model with it
(:class:`autoprune.graph.prunable.PrunableGraph` then rewrites the specs for a candidate policy
without surgery), and the latency table (:mod:`autoprune.measure.table`) keys its entries by
:meth:`LayerSpec.key` of the same specs, so a layer has one key everywhere.

**MAC convention.** Every function here and above that returns MACs returns *multiply-accumulates
per input sample* (the batch size of the recorded input divides out). Only the layers that do the
multiply-accumulates are counted, exactly: Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear (over every
leading token dimension) and ``nn.MultiheadAttention`` (its Q, K, V and output projections and the
``Q·Kᵀ`` and ``attn·V`` matmuls of every head). Bias additions, normalisation, activations and
pooling count 0. See :func:`spec_macs` for the formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

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


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_POOL = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip

#: The scaled dot-product core of a Hugging Face self-attention module (``Q·Kᵀ`` and ``attn·V`` of every head),
#: recorded as one call beside its query/key/value/output linears; its channels are ``heads * head_dim``.
ATTENTION_CORE = "dotproductattention"

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

    def key(self) -> tuple:
        """Everything that determines latency (all fields but the name): the lookup-table key."""
        return (
            self.kind, self.in_channels, self.out_channels, self.input_shape, self.output_shape, self.kernel_size,
            self.stride, self.padding, self.dilation, self.groups, self.bias, self.channel_axis, self.key_length,
            self.kv_channels,
        )  # fmt: skip

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
        """A copy with a different batch size ``N``."""
        out = (batch_size, *self.output_shape[1:]) if self.output_shape else ()
        return replace(self, input_shape=(batch_size, *self.input_shape[1:]), output_shape=out)


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
    return 0


def count_macs(specs: list[LayerSpec] | tuple[LayerSpec, ...]) -> int:
    """MACs per input sample of a whole model: :func:`spec_macs` summed over its layer calls."""
    return sum(spec_macs(s) for s in specs)


def _tuple(value: object) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)  # type: ignore[union-attr]


def _per_dim(value: object, dims: int) -> tuple[int, ...]:
    values = _tuple(value)
    return values * dims if len(values) == 1 and dims > 1 else values


def _spec_of(
    name: str, module: nn.Module, args: tuple, kwargs: dict, output: object, previous: LayerSpec | None
) -> LayerSpec | None:
    """The spec of one call, or None when the call has no tensor input.

    A shape-preserving layer of no known kind (activation, dropout, ...) fed the previous call's
    output takes that call's channel axis, so after a Linear on tokens ``(N, L, F)`` its channels are ``F``.
    """
    x = args[0] if args else kwargs.get("input", kwargs.get("query", kwargs.get("hidden_states")))
    if not isinstance(x, torch.Tensor):
        return None
    core = attention_width(module)
    if core is not None and x.dim() == 3:  # (N, L, hidden) -> the heads' (N, L, heads * head_dim)
        width, heads = core
        n, length, key_length = int(x.shape[0]), int(x.shape[1]), int(x.shape[1])
        if getattr(module, "batch_first", None) is not None:  # SplitHeadAttention: (query, key, value) like nn.MultiheadAttention
            key = args[1] if len(args) > 1 else kwargs.get("key", x)
            if not module.batch_first:
                n, length = length, n
            key_length = int(key.shape[1 if module.batch_first else 0])
        return LayerSpec(
            name, ATTENTION_CORE, width, width, (n, length, width), (n, length, width), groups=heads, channel_axis=2,
            key_length=key_length,
        )
    kind = type(module).__name__.lower()
    shape = tuple(int(s) for s in x.shape)
    out = output[0] if isinstance(output, tuple) and output else output
    out_shape = tuple(int(s) for s in out.shape) if isinstance(out, torch.Tensor) else ()
    channels = shape[1] if len(shape) > 1 else (shape[0] if shape else 0)
    if isinstance(module, _CONV + _CONV_TRANSPOSE):
        dims = len(module.kernel_size)
        padding = module.padding
        if isinstance(padding, str):  # "valid" or "same"
            padding = (0,) * dims if padding == "valid" else tuple((k - 1) * d // 2 for k, d in zip(module.kernel_size, module.dilation))
        return LayerSpec(
            name, kind, module.in_channels, module.out_channels, shape, out_shape,
            _tuple(module.kernel_size), _tuple(module.stride), _tuple(padding), _tuple(module.dilation),
            module.groups, module.bias is not None,
        )  # fmt: skip
    if isinstance(module, nn.Linear):
        return LayerSpec(
            name, kind, module.in_features, module.out_features, shape, out_shape,
            bias=module.bias is not None, channel_axis=len(shape) - 1,
        )  # fmt: skip
    if isinstance(module, nn.MultiheadAttention):
        key = args[1] if len(args) > 1 else kwargs.get("key", x)
        batch_first = getattr(module, "batch_first", False)
        if not batch_first and x.dim() == 3:  # (L, N, E) -> (N, L, E)
            shape = (shape[1], shape[0], shape[2])
            out_shape = (out_shape[1], out_shape[0], out_shape[2]) if len(out_shape) == 3 else out_shape
        seq_axis = 1 if batch_first or key.dim() < 3 else 0
        key_length = int(key.shape[seq_axis]) if key.dim() >= 2 else 1
        return LayerSpec(
            name, kind, module.embed_dim, module.embed_dim, shape, out_shape, groups=module.num_heads,
            bias=module.in_proj_bias is not None, channel_axis=len(shape) - 1, key_length=key_length,
            kv_channels=(int(module.kdim), int(module.vdim)),
        )  # fmt: skip
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return LayerSpec(name, kind, module.num_features, module.num_features, shape, out_shape, bias=module.affine)
    if isinstance(module, nn.LayerNorm):
        features = int(module.normalized_shape[-1])
        return LayerSpec(
            name, kind, features, features, shape, out_shape, bias=module.elementwise_affine, channel_axis=len(shape) - 1
        )
    if isinstance(module, _POOL):
        dims = max(1, len(shape) - 2)
        kernel = _per_dim(module.kernel_size, dims)
        stride = _per_dim(module.stride, dims) if module.stride else kernel
        return LayerSpec(name, kind, channels, channels, shape, out_shape, kernel, stride, _per_dim(module.padding, dims))
    if isinstance(module, _ADAPTIVE_POOL):
        size = module.output_size
        dims = max(1, len(shape) - 2)
        sizes = _per_dim(size, dims) if isinstance(size, int) else tuple(
            s if s is not None else d for s, d in zip(size, shape[2:])
        )
        return LayerSpec(name, kind, channels, channels, shape, out_shape, kernel_size=_tuple(sizes))
    if isinstance(module, nn.Flatten):
        flat = out_shape[1] if len(out_shape) > 1 else math.prod(shape[1:])
        return LayerSpec(name, kind, channels, int(flat), shape, out_shape)
    axis = 1
    if previous is not None and previous.output_shape == shape and len(shape) > previous.channel_axis:
        axis = previous.channel_axis
        channels = shape[axis]
    return LayerSpec(name, kind, channels, channels, shape, out_shape, channel_axis=axis)


def _recorded_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules, and attention modules (whose ``out_proj`` child is used functionally, never called)."""
    inside_attention: list[str] = []
    chosen = []
    for name, module in model.named_modules():
        if any(name.startswith(a + ".") for a in inside_attention):
            continue
        if isinstance(module, nn.MultiheadAttention):
            inside_attention.append(name)
            chosen.append((name, module))
        elif attention_width(module) is not None:  # its linears are called as modules: record them too
            chosen.append((name, module))
        elif next(module.children(), None) is None:
            chosen.append((name, module))
    return chosen


def record_layer_specs(model: nn.Module, example_input: ExampleInput) -> list[LayerSpec]:
    """Run ``model`` once and return a :class:`LayerSpec` for every leaf-layer call, in call order.

    This is the one recorder: the prunable graph, the MAC counter and the latency table all use
    it, so a layer has the same spec (and lookup-table key) everywhere. ``module_name`` is the
    name in ``named_modules()``; a module called twice yields two specs. Functional ops
    (``F.relu``, ``torch.cat``, residual additions) are not seen. ``nn.MultiheadAttention`` is
    recorded as one call. The model runs once in eval mode under ``torch.inference_mode``;
    its training flag is restored.

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

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            spec = _spec_of(name, module, args, kwargs, output, specs[-1] if specs else None)
            if spec is not None:
                specs.append(spec)

        return hook

    handles = [m.register_forward_hook(hook_for(n), with_kwargs=True) for n, m in _recorded_modules(model)]
    args = as_args(example_input)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return specs


__all__ = [
    "ATTENTION_CORE", "MAC_LAYER_KINDS", "ExampleInput", "LayerSpec", "as_args", "count_macs", "input_shapes", "record_layer_specs", "spec_macs",
    "with_batch_size",
]
