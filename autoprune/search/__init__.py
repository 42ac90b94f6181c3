"""Searchers: one protocol (:class:`Searcher`), one module each, looked up by name in :data:`SEARCHERS`.

What a searcher can do (workers, warm start, saved agents, its experiment parameters) is asked
of its class (:func:`searcher_class`), never read from its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autoprune.errors import ConfigError
from autoprune.registry import Registry
from autoprune.search.base import ExperimentContext, Searcher, SearchResult, pareto_front

#: The searchers: the one list of their names (``search.searcher`` is checked against it). Each
#: entry is a :class:`Searcher` class, called as ``cls(params, progress=..., callback=...)``.
SEARCHERS: Registry[Callable[..., Searcher]] = Registry(
    "searcher",
    "search.searcher",
    {
        "ppo": "autoprune.search.ppo:PPOSearcher",
        "optuna": "autoprune.search.optuna_search:OptunaSearcher",
        "ddpg": "autoprune.search.ddpg:DDPGSearcher",
        "random": "autoprune.search.baselines:RandomSearcher",
        "uniform": "autoprune.search.baselines:UniformSearcher",
        "global": "autoprune.search.global_pruning:GlobalSearcher",
        "layer_drop": "autoprune.search.baselines:LayerDropSearcher",
        "sensitivity": "autoprune.search.baselines:SensitivitySearcher",
    },
)


#: The searcher ``--agent`` runs when the config's searcher does not load agents.
AGENT_SEARCHER = "ppo"
#: The classical baseline ``autoprune run`` shows beside a searcher that is ``compared_with_uniform``.
BASELINE_SEARCHER = "uniform"


def register_searcher(name: str, cls: Callable[..., Searcher] | str) -> None:
    """Make a searcher available to :func:`get_searcher` and to configs (``search.searcher: NAME``).

    Args:
        name: The name a config uses.
        cls: A :class:`Searcher` subclass (called as ``cls(params, **kwargs)``) or its
            ``"package.module:Class"`` reference.

    Raises:
        ConfigError: an empty name or one containing ``:``.
    """
    SEARCHERS.register(name, cls)


def get_searcher(name: str, params: dict[str, Any] | None = None, **kwargs: Any) -> Searcher:
    """Instantiate a searcher by registered name or ``"package.module:Class"`` (imported lazily).

    Args:
        name: A name in :data:`SEARCHERS` or a reference to a :class:`Searcher` subclass.
        params: Its hyper-parameters (``search.params``), validated by the searcher.
        **kwargs: Passed on (``progress``, ``callback``, ...).

    Raises:
        ConfigError: unknown name (listing the allowed ones), an import failure, or an unknown
            hyper-parameter.
    """
    return searcher_class(name)(params, **kwargs)


def searcher_class(name: str) -> type[Searcher]:
    """The :class:`Searcher` subclass behind a registered name or ``"package.module:Class"``, to ask what it can do.

    Raises:
        ConfigError: unknown name, an import failure, or an entry that is not a Searcher subclass.
    """
    cls = SEARCHERS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Searcher)):
        raise ConfigError(f"{SEARCHERS.field}: {name!r} is {cls!r}, not a subclass of autoprune.search.Searcher")
    return cls


def searchers_that(can: Callable[[type[Searcher]], bool]) -> list[str]:
    """The registered names whose searcher can do something, e.g. ``searchers_that(lambda s: s.supports_workers)``.

    For messages that say what is allowed; imports every registered searcher (those that do not
    import are left out).
    """
    names = []
    for name in SEARCHERS.names():
        try:
            if can(searcher_class(name)):
                names.append(name)
        except ConfigError:
            continue
    return names


__all__ = [
    "AGENT_SEARCHER", "BASELINE_SEARCHER", "SEARCHERS", "ExperimentContext", "SearchResult", "Searcher", "get_searcher", "pareto_front",
    "register_searcher", "searcher_class", "searchers_that",
]
