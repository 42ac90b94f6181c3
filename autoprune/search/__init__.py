"""Searchers: one protocol (:class:`Searcher`), one module each, looked up by name."""

from __future__ import annotations

import importlib
from typing import Any

from autoprune.errors import ConfigError
from autoprune.search.base import SearchResult, Searcher, pareto_front

_REGISTRY = {
    "ppo": "autoprune.search.ppo:PPOSearcher",
    "optuna": "autoprune.search.optuna_search:OptunaSearcher",
    "ddpg": "autoprune.search.ddpg:DDPGSearcher",
    "random": "autoprune.search.baselines:RandomSearcher",
    "uniform": "autoprune.search.baselines:UniformSearcher",
    "sensitivity": "autoprune.search.baselines:SensitivitySearcher",
}
SEARCHER_NAMES = tuple(_REGISTRY)


def get_searcher(name: str, params: dict[str, Any] | None = None, **kwargs: Any) -> Searcher:
    """Instantiate a searcher by name (imported lazily).

    Raises:
        ConfigError: unknown name or hyper-parameter.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"search.searcher: unknown searcher {name!r}; allowed: {', '.join(SEARCHER_NAMES)}")
    module, _, cls = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)(params, **kwargs)


__all__ = ["SEARCHER_NAMES", "SearchResult", "Searcher", "get_searcher", "pareto_front"]
