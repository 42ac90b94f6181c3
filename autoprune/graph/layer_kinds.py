"""How one layer call becomes the fields of a :class:`~autoprune.graph.layers.LayerSpec`, per layer kind.

:func:`spec_fields` is called by :func:`autoprune.graph.layers.record_layer_specs` from a forward
hook on each recorded module: convolutions (any dimensionality, transposed too), linear layers,
attention, embeddings, the norms (batch, instance, group, layer), PReLU, pools, flatten, and any
other module as a shape-preserving call with its constructor-like attributes
(:func:`plain_options`), so the latency table can rebuild it with its arguments.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from autoprune.graph.transformer import attention_width

#: ``LayerSpec``'s leading fields, in order (the positional arguments of :func:`_fields`).
_ORDER = ("module_name", "kind", "in_channels", "out_channels", "input_shape", "output_shape", "kernel_size", "stride", "padding", "dilation", "groups", "bias")


def _fields(*args: object, **kwargs: object) -> dict:
    return {**dict(zip(_ORDER, args)), **kwargs}

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

def _tuple(value: object) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)  # type: ignore[union-attr]


def _per_dim(value: object, dims: int) -> tuple[int, ...]:
    values = _tuple(value)
    return values * dims if len(values) == 1 and dims > 1 else values


def spec_fields(
    name: str, module: nn.Module, args: tuple, kwargs: dict, output: object, previous: object | None
) -> dict | None:
    """The ``LayerSpec`` fields of one call (keyword arguments), or None when the call has no tensor input.

    ``previous`` is the spec of the call before (its ``output_shape`` and ``channel_axis`` are read).

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
        return _fields(
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
        return _fields(
            name, kind, module.in_channels, module.out_channels, shape, out_shape,
            _tuple(module.kernel_size), _tuple(module.stride), _tuple(padding), _tuple(module.dilation),
            module.groups, module.bias is not None,
        )  # fmt: skip
    if isinstance(module, nn.Linear):
        return _fields(
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
        return _fields(
            name, kind, module.embed_dim, module.embed_dim, shape, out_shape, groups=module.num_heads,
            bias=module.in_proj_bias is not None, channel_axis=len(shape) - 1, key_length=key_length,
            kv_channels=(int(module.kdim), int(module.vdim)),
        )  # fmt: skip
    if isinstance(module, nn.Embedding):  # ids (N, L) -> (N, L, E): its channels are the embedding width
        return _fields(name, kind, module.num_embeddings, module.embedding_dim, shape, out_shape, channel_axis=len(out_shape) - 1)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _fields(name, kind, module.num_features, module.num_features, shape, out_shape, bias=module.affine)
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return _fields(name, kind, channels, channels, shape, out_shape, bias=module.affine)
    if isinstance(module, nn.GroupNorm):
        return _fields(name, kind, module.num_channels, module.num_channels, shape, out_shape, groups=module.num_groups, bias=module.affine)
    if isinstance(module, nn.PReLU):
        return _fields(name, kind, channels, channels, shape, out_shape, groups=module.num_parameters)
    if isinstance(module, nn.LayerNorm):
        features = int(module.normalized_shape[-1])
        return _fields(
            name, kind, features, features, shape, out_shape, bias=module.elementwise_affine, channel_axis=len(shape) - 1
        )
    if isinstance(module, _POOL):
        dims = max(1, len(shape) - 2)
        kernel = _per_dim(module.kernel_size, dims)
        stride = _per_dim(module.stride, dims) if module.stride else kernel
        return _fields(name, kind, channels, channels, shape, out_shape, kernel, stride, _per_dim(module.padding, dims))
    if isinstance(module, _ADAPTIVE_POOL):
        size = module.output_size
        dims = max(1, len(shape) - 2)
        sizes = _per_dim(size, dims) if isinstance(size, int) else tuple(
            s if s is not None else d for s, d in zip(size, shape[2:])
        )
        return _fields(name, kind, channels, channels, shape, out_shape, kernel_size=_tuple(sizes))
    if isinstance(module, nn.Flatten):
        flat = out_shape[1] if len(out_shape) > 1 else math.prod(shape[1:])
        return _fields(name, kind, channels, int(flat), shape, out_shape)
    axis = 1
    if previous is not None and previous.output_shape == shape and len(shape) > previous.channel_axis:
        axis = previous.channel_axis
        channels = shape[axis]
    out_channels = out_shape[axis] if len(out_shape) > axis and len(out_shape) == len(shape) else channels
    return _fields(name, kind, channels, int(out_channels), shape, out_shape, channel_axis=axis, options=plain_options(module))


_PLAIN = (bool, int, float, str, type(None))


def plain_options(module: nn.Module) -> tuple[tuple[str, object], ...]:
    """The constructor-like attributes of a parameter-free module (``scale_factor``, ``mode``, ``p``, ``dim``, ...).

    Plain public attributes (numbers, strings, ``None`` and tuples of them) of a module without
    parameters, sorted by name, with ``("class", "package.module:QualName")`` first for a class
    outside ``torch.nn``, so the latency table can rebuild it (``DropPath(drop_prob=0.1)``). Empty
    for a module with parameters (the table times it in place) and for one of no such attribute.
    """
    if next(module.parameters(recurse=False), None) is not None:
        return ()
    items = []
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or key == "training":
            continue
        if isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)):
            items.append((key, value))
    cls = type(module)
    if not cls.__module__.startswith("torch.nn."):  # a layer of PyTorch's own is rebuilt by its class name
        items.insert(0, ("class", f"{cls.__module__}:{cls.__qualname__}"))
    return tuple(items)



__all__ = ["ATTENTION_CORE", "plain_options", "spec_fields"]
