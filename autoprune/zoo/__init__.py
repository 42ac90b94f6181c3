"""Built-in models and data sets, plus ``"module:factory"`` plugins for the user's own."""

from __future__ import annotations

import torch
from torch import nn

from autoprune.errors import ConfigError, ModelError
from autoprune.zoo.data import DATA_SHAPES, DATASET_NAMES, DataBundle, Split, load_data
from autoprune.zoo.hf import ENCODER_NAMES, Encoder, SentenceEncoder, is_encoder_name, load_encoder
from autoprune.zoo.models import MODEL_FACTORIES, resnet_depth_problem, zoo_factory
from autoprune.zoo.plugins import call_factory, is_reference
from autoprune.zoo.text import TEXT_DATASET_NAMES, TextCorpus, TokenizedCorpus, TokenSplit, load_text_data

#: The built-in models listed by name; any ``resnet<6n+2>`` (``resnet44``, ``resnet110``) is built too.
MODEL_NAMES = tuple(MODEL_FACTORIES)


def is_zoo_model(name: str) -> bool:
    """True for a built-in model: one of :data:`MODEL_NAMES` or a CIFAR ResNet ``resnet<6n+2>``."""
    return zoo_factory(name) is not None


def build_model(name: str, *, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    """Build a zoo model by name, or call a ``"module:factory"`` reference.

    A factory is called with ``in_channels=``, ``num_classes=`` and ``input_size=``
    (or with no arguments if it takes none) and must return an ``nn.Module``.

    Raises:
        ConfigError: unknown name (a ResNet depth that is not 6n+2 says so) or bad reference.
    """
    factory = zoo_factory(name)
    if factory is not None:
        return factory(in_channels, num_classes, input_size)
    if (why := resnet_depth_problem(name)) is not None:
        raise ConfigError(f"model.name: {why}")
    if is_reference(name):
        model = call_factory(name, field="model.name", in_channels=in_channels, num_classes=num_classes, input_size=input_size)
        if not isinstance(model, nn.Module):
            raise ModelError(f"model.name: factory {name!r} returned {type(model).__name__}, expected torch.nn.Module")
        return model
    raise ConfigError(f"model.name: unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}, resnet<6n+2> or 'package.module:factory'")


def check_model_fits(model: nn.Module, name: str, *, in_channels: int, num_classes: int, input_size: int) -> None:
    """One forward pass on zeros, so a model built for other data fails in one line, not mid-training.

    Call it on a freshly built model before training it (a ``"module:factory"`` plugin may
    ignore the shape it is given).

    Raises:
        ModelError: the forward pass fails or the output is not ``(batch, num_classes)``.
    """
    shape = (2, in_channels, input_size, input_size)
    given = f"built with in_channels={in_channels}, num_classes={num_classes}, input_size={input_size}"
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except Exception as e:  # the user's forward: any error is a mismatch with the data
        first = " ".join(str(e).split())[:300]
        raise ModelError(f"model.name: model {name!r} fails on an input of shape {shape} "
                         f"({type(e).__name__}: {first}); {given}") from e
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model.name: model {name!r} outputs {got} for an input of shape {shape}; "
                         f"expected (2, {num_classes}) logits; {given}")



def check_initial_weights(model: nn.Module, name: str) -> None:
    """Refuse a freshly built model whose weights are already NaN or infinite, before training blames the learning rate.

    Raises:
        ModelError: naming the model and its first non-finite tensors.
    """
    broken = [k for k, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        shown = ", ".join(broken[:3]) + (f" ... ({len(broken)} in all)" if len(broken) > 3 else "")
        raise ModelError(f"model.name: model {name!r} holds NaN or infinite weights as built, before any training ({shown}); "
                         "fix its initialisation")


__all__ = [
    "DATASET_NAMES", "DATA_SHAPES", "ENCODER_NAMES", "MODEL_NAMES", "TEXT_DATASET_NAMES", "DataBundle", "Encoder", "SentenceEncoder", "Split",
    "TextCorpus", "TokenSplit", "TokenizedCorpus", "build_model", "check_initial_weights", "check_model_fits", "is_encoder_name", "is_zoo_model", "load_data",
    "load_encoder", "load_text_data",
]  # fmt: skip
