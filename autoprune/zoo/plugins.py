"""Resolve ``"package.module:factory"`` references to user-supplied callables."""

from __future__ import annotations

import importlib
import inspect
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
    """Resolve ``ref`` and call it with ``kwargs`` (or with no arguments if it takes none of them).

    Raises:
        ConfigError: the factory's signature fits neither call, or the factory raised; the
            message names ``field``, ``ref`` and the factory's own error.
    """
    factory = resolve_reference(ref, field=field)
    args = _fitting_kwargs(factory, kwargs)
    if args is None:
        expected = ", ".join(f"{k}=" for k in kwargs)
        raise ConfigError(f"{field}: factory {ref!r} has signature {_signature(factory)}; it must accept {expected} or no arguments")
    try:
        return factory(**args)
    except Exception as e:  # the user's code: any error is theirs, named in one line
        raise ConfigError(f"{field}: factory {ref!r} raised {type(e).__name__}: {' '.join(str(e).split())}") from e


def _fitting_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """``kwargs`` if the factory accepts them, ``{}`` if it takes no arguments, None if neither fits.

    Decided from the signature, so a TypeError raised inside the factory is reported as it is
    rather than hidden by a retry without arguments.
    """
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature (some builtins): try the keywords
        return kwargs
    for candidate in (kwargs, {}):
        try:
            sig.bind(**candidate)
        except TypeError:
            continue
        return candidate
    return None


def _signature(factory: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):
        return "(?)"
