"""Built-in models and data sets, plus ``"module:factory"`` plugins for the user's own."""

from __future__ import annotations

from torch import nn

from autoprune.errors import ConfigError, ModelError
from autoprune.zoo.data import DATASET_NAMES, DataBundle, Split, load_data
from autoprune.zoo.models import MODEL_FACTORIES
from autoprune.zoo.plugins import call_factory, is_reference

MODEL_NAMES = tuple(MODEL_FACTORIES)


def build_model(name: str, *, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    """Build a zoo model by name, or call a ``"module:factory"`` reference.

    A factory is called with ``in_channels=``, ``num_classes=`` and ``input_size=``
    (or with no arguments if it takes none) and must return an ``nn.Module``.

    Raises:
        ConfigError: unknown name or bad reference.
    """
    if name in MODEL_FACTORIES:
        return MODEL_FACTORIES[name](in_channels, num_classes, input_size)
    if is_reference(name):
        model = call_factory(name, field="model.name", in_channels=in_channels, num_classes=num_classes, input_size=input_size)
        if not isinstance(model, nn.Module):
            raise ModelError(f"model.name: factory {name!r} returned {type(model).__name__}, expected torch.nn.Module")
        return model
    raise ConfigError(f"model.name: unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)} or 'package.module:factory'")


__all__ = ["DATASET_NAMES", "MODEL_NAMES", "DataBundle", "Split", "build_model", "load_data"]
