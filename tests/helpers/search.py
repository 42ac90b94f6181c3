"""Run one searcher quietly, as the searcher tests do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.objective.metrics import Evaluation
from autoprune.search import get_searcher
from autoprune.search.base import SearchResult


def search(name: str, evaluator: PolicyEvaluator, episodes: int, *, seed: int = 0,
           callback: Callable[[Evaluation], None] | None = None, seeds: dict[str, Policy] | None = None,
           **params: Any) -> SearchResult:
    """Searcher ``name`` with hyper-parameters ``params``, ``episodes`` evaluations on ``evaluator``, no progress bar.

    ``callback`` is the searcher's per-episode callback (e.g. ``calls.append`` to count them); ``seeds``
    the policies evaluated into the pool first (none, unlike ``autoprune search``).
    """
    return get_searcher(name, params, progress=False, callback=callback).search(evaluator, episodes, seed=seed, seeds=seeds)
