"""Resolve ``"package.module:factory"`` references to user-supplied callables."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from autoprune.errors import ConfigError


def is_reference(name: str) -> bool:
    """True when ``name`` looks like a ``module:factory`` reference rather than a zoo name."""
    return ":" in name


def resolve_reference(ref: str, *, field: str) -> Callable[..., Any]:
    """Import ``module`` and return its attribute ``factory``.

    Args:
        ref: ``"package.module:factory"``.
        field: Name of the config field the reference came from, for error messages.

    Raises:
        ConfigError: if the reference is malformed, the module cannot be imported,
            or the attribute is missing or not callable.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{field}: {ref!r} is not a valid reference; expected 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the user's module raising at import time
        raise ConfigError(f"{field}: cannot import module {module_name!r} from {ref!r} ({type(e).__name__}: {e})") from e
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{field}: module {module_name!r} has no attribute {attr!r} (from {ref!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{field}: {ref!r} is not callable")
    return target


def call_factory(ref: str, *, field: str, **kwargs: Any) -> Any:
    """Resolve ``ref`` and call it with ``kwargs``, turning its exceptions into a ConfigError."""
    factory = resolve_reference(ref, field=field)
    try:
        return factory(**kwargs)
    except TypeError:
        # Retry without keyword arguments the factory does not accept.
        try:
            return factory()
        except Exception as e2:
            raise ConfigError(f"{field}: factory {ref!r} raised {type(e2).__name__}: {e2}") from e2
    except Exception as e:
        raise ConfigError(f"{field}: factory {ref!r} raised {type(e).__name__}: {e}") from e
