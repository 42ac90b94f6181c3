"""The ``global`` baseline: Torch-Pruning's global magnitude pruning, its ratio set to just meet the budget.

Follows Torch-Pruning's ``MetaPruner(..., global_pruning=True)`` (Fang et al., "DepGraph: Towards
Any Structural Pruning", CVPR 2023, https://arxiv.org/abs/2301.12900): every channel of every
dependency group is scored by ``GroupMagnitudeImportance`` (the group's weights reduced per
channel, then divided by the group's mean score, so groups of different widths and scales are
comparable), and one threshold over all channels of all groups removes the lowest-scored
fraction ``g`` of them. Layers with small normalised weights lose more channels than others, so
the per-unit ratios differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from autoprune.errors import ConfigError
from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search.base import Searcher
from autoprune.search.baselines import bisect_knob, refine_params

log = logging.getLogger(__name__)

#: Criteria that are Torch-Pruning's ``GroupMagnitudeImportance`` (mean-normalised per group).
MAGNITUDE_CRITERIA = ("l1", "l2")


def global_ratios(scores: dict[str, torch.Tensor], g: float, max_ratio: float) -> dict[str, float]:
    """Per-unit ratios of Torch-Pruning's global pruning at global channel ratio ``g``.

    Like ``MetaPruner._prune`` with ``global_pruning=True``: the scores of all units are
    concatenated, ``n = total - int(total * (1 - g))`` channels are to go, and every channel
    scored at or below the ``n``-th smallest score goes (ties may remove a few more).

    Args:
        scores: ``{unit: importance}``, each a float tensor of shape ``(channels,)``, already
            normalised per group (higher: keep).
        g: Global ratio in [0, 1]: the fraction of all channels to remove.
        max_ratio: Cap of every unit's ratio (Torch-Pruning's ``max_pruning_ratio``).

    Returns:
        ``{unit: removed / channels}`` for every unit in ``scores``, each at most ``max_ratio``.
    """
    if not scores:
        return {}
    flat = torch.cat([s.flatten() for s in scores.values()])
    total = flat.numel()
    n_pruned = total - int(total * (1.0 - g))
    if n_pruned <= 0:
        return {u: 0.0 for u in scores}
    threshold = torch.kthvalue(flat, min(n_pruned, total)).values
    return {u: min(max_ratio, int((s <= threshold).sum()) / s.numel()) for u, s in scores.items()}


def global_family(evaluator: PolicyEvaluator) -> Callable[[float, tuple[str, ...]], Policy]:
    """``global``'s policies: :func:`global_ratios` at a global ratio ``g`` over the units outside the dropped blocks.

    Raises:
        ConfigError: ``pruning.importance`` is not a magnitude criterion (``l1``, ``l2``).
    """
    if evaluator.importance not in MAGNITUDE_CRITERIA:
        raise ConfigError(
            f"pruning.importance: {evaluator.importance!r} is not allowed with search.searcher 'global' "
            f"(Torch-Pruning's global magnitude pruning); allowed: {', '.join(MAGNITUDE_CRITERIA)}"
        )
    scores = evaluator.graph.importance(evaluator.importance)
    top = evaluator.max_ratio

    def family(g: float, drop: tuple[str, ...]) -> Policy:
        inside = tuple(b + "." for b in drop)  # units inside dropped blocks have nothing left to prune
        alive = {u: scores[u] for u in evaluator.unit_names if not (inside and u.startswith(inside))}
        return Policy(global_ratios(alive, g, top), drop)

    return family


class GlobalSearcher(Searcher):
    """Torch-Pruning's global magnitude pruning, its global ratio bisected to just meet the budget.

    Channels are ranked across all units by the evaluator's magnitude criterion
    (``pruning.importance`` ``l1`` or ``l2``: Torch-Pruning's ``GroupMagnitudeImportance(p)``,
    normalised per group by its mean), and one threshold removes a global fraction ``g`` of all
    channels (:func:`global_ratios`). The resulting per-unit ratios form a policy that goes through
    the same evaluator, surgery, fine-tune and export as every other searcher. ``g`` is found like
    the ``uniform`` ratio (:func:`autoprune.search.baselines.bisect_knob`): bisection on the
    predicted budget metric, then on the measured one, each measurement an episode.

    What differs from Torch-Pruning's pruner:

    * each unit's ratio is capped at the evaluator's ``max_ratio`` (Torch-Pruning's
      ``max_pruning_ratio`` only stops a group being pruned further in later iterative steps);
    * the number of channels kept is rounded to the unit's allowed counts (``round_to``, grouped
      layouts) by surgery, after the ranking, and one-shot (no iterative steps);
    * the budget sets ``g`` (Torch-Pruning takes it as given); when even every unit at
      ``max_ratio`` misses the target, the fewest blocks that make it reachable are dropped, as
      for ``uniform``;
    * units inside dropped blocks take no part in the ranking.

    Hyper-parameters (``params``):
        tolerance: Stop once the measured metric is within this fraction of dense below the target.
        max_evals: At most this many evaluations (and at most the episodes given).

    ``extras``: ``global_ratio`` (``g``), ``ratios`` (the per-unit ratios at ``g``) and ``drop``.

    Raises:
        ConfigError: ``pruning.importance`` is not a magnitude criterion, or bad hyper-parameters.
    """

    name = "global"
    defaults = {"tolerance": 0.01, "max_evals": 8}
    seeded = False  # a baseline

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The names, then ``tolerance`` and ``max_evals`` (:func:`autoprune.search.baselines.refine_params`).

        Raises:
            ConfigError: naming the hyper-parameter, its value and what is allowed.
        """
        p = super().check_params(params)
        refine_params(p)
        return p

    def _run(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> dict[str, Any]:
        family = global_family(evaluator)
        g, drop = bisect_knob(self, evaluator, family, 1.0, n_episodes)
        ratios = family(g, drop).ratios
        log.info("global: ratio %.3f of all channels; per unit %.2f..%.2f", g, min(ratios.values(), default=0.0), max(ratios.values(), default=0.0))
        return {"global_ratio": g, "ratios": ratios, "drop": list(drop)}
