"""Multi-fidelity selection: the proxy screens, a short fine-tune of the few best feasible candidates chooses.

A search scores every candidate with the cheap proxy (one episode each). The policy the user
gets is then fine-tuned, and the proxy's order can be the opposite of the fine-tuned order
(issue 21). :func:`select_on_higher_fidelity` takes the ``finalists`` feasible candidates with the
highest reward (distinct policies; the search's own choice always among them), scores each at a
higher fidelity (by default :func:`autoprune.training.screen.short_finetune_accuracy`: a fraction of
an epoch of distillation, on the validation split) and returns the result with the best of them
as ``best``. This is the last two rungs of successive halving (Jamieson & Talwalkar 2016,
"Non-stochastic Best Arm Identification and Hyperparameter Optimization"), the proxy being the
first.

The score is passed in (``score(policy) -> float``) because fine-tuning lives in
:mod:`autoprune.training`, a sibling of this package; the application joins the two.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from tqdm.auto import tqdm

from autoprune.errors import ConfigError
from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import Evaluation
from autoprune.search.base import SearchResult

log = logging.getLogger(__name__)

#: The name of the higher fidelity level in :attr:`SearchResult.finetuned` and the history CSV.
LEVEL = "short_finetune"


@dataclass(frozen=True)
class SelectionSettings:
    """How the final choice is made (``search.finalists``, ``search.finalist_steps``).

    Attributes:
        finalists: Feasible candidates, best reward first, given the short fine-tune (0: choose on
            the proxy alone; 1: only the search's own choice is fine-tuned, so the choice is the proxy's).
        finalist_steps: Optimiser steps of each finalist's short fine-tune (at the fine-tune's
            batch size; e.g. 60 steps of 128 are about a seventh of an epoch of Fashion-MNIST).
    """

    finalists: int = 3
    finalist_steps: int = 60

    def __post_init__(self) -> None:
        for name in ("finalists", "finalist_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "finalists" else 1):
                raise ConfigError(f"search.{name}: {v!r} is not allowed; allowed: an integer >= {0 if name == 'finalists' else 1}")


def finalists(result: SearchResult, count: int) -> list[Evaluation]:
    """The ``count`` feasible evaluations with the highest reward, one per policy, ``result.best`` first among equals.

    ``result.best`` is always included when it is feasible (the search may have chosen it on a
    re-measured latency rather than on the reward), in place of the last of the others.
    """
    if count < 1 or result.best is None:
        return []
    feasible = [e for e in result.history if not e.metrics.failed and not e.cached and e.metrics.feasible]
    unique = sorted({e.policy.key(): e for e in reversed(feasible)}.values(), key=lambda e: e.metrics.reward, reverse=True)
    chosen = [e for e in unique if e.policy.key() != result.best.policy.key()]
    if result.best.metrics.feasible:
        chosen = [result.best, *chosen]
    return chosen[:count]


def select_on_higher_fidelity(result: SearchResult, score: Callable[[Policy], float], settings: SelectionSettings,
                              *, progress: bool = True) -> SearchResult:
    """``result`` with ``best`` chosen among its :func:`finalists` by ``score`` (higher is better).

    Args:
        result: A finished search.
        score: The higher-fidelity figure of a policy, e.g. its validation accuracy after a short fine-tune.
        settings: How many finalists, how long each fine-tune.
        progress: Show a progress bar over the finalists.

    Returns:
        A copy of ``result`` whose ``finetuned`` maps each finalist's episode index to its score,
        whose ``best`` is the finalist with the highest score (ties: the higher reward), and whose
        ``extras["selection"]`` records the level, steps, finalists and both choices. Unchanged
        (but for an empty ``finetuned``) with fewer than two finalists.
    """
    pool = finalists(result, settings.finalists)
    if len(pool) < 2:
        return result
    scores: dict[int, float] = {}
    for e in tqdm(pool, desc=LEVEL, unit="policy", disable=not progress, dynamic_ncols=True):
        scores[e.index] = float(score(e.policy))
    best = max(pool, key=lambda e: (scores[e.index], e.metrics.reward))
    if best is not result.best:
        log.info("%s: episode %d (proxy %.4f, %s %.4f) replaces the proxy's choice, episode %d (proxy %.4f, %s %.4f)",
                 LEVEL, best.index, best.metrics.accuracy, LEVEL, scores[best.index],
                 result.best.index, result.best.metrics.accuracy, LEVEL, scores.get(result.best.index, float("nan")))
    record = {"level": LEVEL, "steps": settings.finalist_steps, "proxy_choice": result.best.index, "chosen": best.index,
              "finalists": [{"episode": e.index, "proxy": e.metrics.accuracy, "reward": e.metrics.reward, LEVEL: scores[e.index]}
                            for e in pool]}
    return dataclasses.replace(result, best=best, finetuned=scores, extras={**result.extras, "selection": record})
