"""Named registries: the one list of names for searchers, samplers, importance criteria and latency backends.

A :class:`Registry` maps a name to a ``"package.module:attr"`` reference (imported lazily,
so heavy extras load only when used) or to an object registered from Python. Anywhere a
name is accepted, a ``"package.module:Class"`` reference to the user's own class is accepted
too, the way models are named. The config schema validates names by asking the registry,
so a name registered from Python can be chosen in a config.
"""

from __future__ import annotations

import importlib
from typing import Any, Generic, TypeVar

from autoprune.errors import ConfigError, describe

T = TypeVar("T")


def is_reference(name: str) -> bool:
    """True when ``name`` looks like a ``package.module:attr`` reference rather than a registered name."""
    return ":" in name


def import_reference(ref: str, *, field: str) -> Any:
    """Import ``package.module`` and return its attribute ``attr`` (dotted attributes allowed).

    Raises:
        ConfigError: malformed reference, a module that cannot be imported, or a missing attribute;
            the message names ``field`` and ``ref``.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{field}: {ref!r} is not a valid reference; expected 'package.module:attr'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the user's module raising at import time
        raise ConfigError(f"{field}: cannot import module {module_name!r} from {ref!r} ({type(e).__name__}: {describe(e)})") from e
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{field}: module {module_name!r} has no attribute {attr!r} (from {ref!r})")
        target = getattr(target, part)
    return target


class Registry(Generic[T]):
    """Names of one kind of plug-in, each bound to a lazy reference or an object.

    Args:
        kind: What is registered, for messages (``"latency backend"``).
        field: The config field that names one (``"latency.backend"``), for messages.
        entries: Built-in ``name -> "package.module:attr"`` references.
        extras: ``name -> pip extra`` for built-ins whose import needs an optional extra; a
            missing module then names the extra to install.
    """

    def __init__(self, kind: str, field: str, entries: dict[str, str] | None = None, *, extras: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.field = field
        self._entries: dict[str, str | T] = dict(entries or {})
        self._builtin = frozenset(self._entries)
        self._extras = dict(extras or {})

    def register(self, name: str, target: str | T) -> None:
        """Make ``target`` (an object, or a ``"module:attr"`` reference) available as ``name``.

        Raises:
            ConfigError: ``name`` is empty or contains ``:`` (reserved for references).
        """
        if not name or ":" in name:
            raise ConfigError(f"{self.field}: cannot register {self.kind} {name!r}; names are non-empty and have no ':'")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        """Forget ``name`` (registered from Python); built-in names cannot be removed.

        Raises:
            ConfigError: ``name`` is a built-in entry, or is not registered.
        """
        if name in self._builtin or name not in self._entries:
            raise ConfigError(f"{self.field}: cannot unregister {self.kind} {name!r}; registered from Python: "
                              f"{', '.join(repr(n) for n in self._entries if n not in self._builtin) or 'none'}")
        del self._entries[name]

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def allowed(self) -> str:
        """The registered names and the reference form, quoted as the model names are: ``'a', 'b' or 'package.module:Class'``."""
        return ", ".join(repr(n) for n in self._entries) + " or 'package.module:Class'"

    def check(self, name: str) -> str:
        """Return ``name`` if it is registered or is a reference (not imported here).

        Raises:
            ConfigError: neither a registered name nor a ``module:attr`` reference.
        """
        if name in self._entries or is_reference(name):
            return name
        raise ConfigError(f"{self.field}: unknown {self.kind} {name!r}; allowed: {self.allowed()}")

    def get(self, name: str) -> T:
        """The object behind ``name`` (a registered name or a ``module:attr`` reference), imported if needed.

        Raises:
            ConfigError: unknown name, or its module cannot be imported (naming the extra to
                install when one is declared).
        """
        self.check(name)
        target = self._entries.get(name, name)
        if not isinstance(target, str):
            return target
        try:
            return import_reference(target, field=self.field)
        except ConfigError as e:
            if name in self._extras and isinstance(e.__cause__, ImportError):
                raise ConfigError(
                    f"{self.field}: {self.kind} {name!r} needs the optional extra: pip install 'autoprune[{self._extras[name]}]'"
                ) from e
            raise


__all__ = ["Registry", "import_reference", "is_reference"]
