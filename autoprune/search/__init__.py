"""Searchers: one protocol (:class:`Searcher`), one module each, looked up by name in :data:`SEARCHERS`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autoprune.registry import Registry
from autoprune.search.base import Searcher, SearchResult, pareto_front

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
    return SEARCHERS.get(name)(params, **kwargs)


__all__ = ["SEARCHERS", "SearchResult", "Searcher", "get_searcher", "pareto_front", "register_searcher"]
