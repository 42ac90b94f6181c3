"""Resolve ``"package.module:factory"`` references to user-supplied callables."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from autoprune.errors import ConfigError
from autoprune.registry import import_reference, is_reference  # noqa: F401  (is_reference: part of this module's API)


def resolve_reference(ref: str, *, field: str) -> Callable[..., Any]:
    """Import ``module`` and return its callable attribute ``factory`` (:func:`autoprune.registry.import_reference`).

    Args:
        ref: ``"package.module:factory"``.
        field: Name of the config field the reference came from, for error messages.

    Raises:
        ConfigError: if the reference is malformed, the module cannot be imported,
            or the attribute is missing or not callable.
    """
    target = import_reference(ref, field=field)
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
