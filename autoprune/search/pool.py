"""The baselines every search's pool starts with: uniform, Torch-Pruning global and layer dropping at the target.

A learned searcher should never return a policy worse, on its own selection metric, than the
one-line heuristics it is meant to beat. :func:`baseline_pool` gives those heuristics' policies
predicted (by the latency table or the exact MAC count, no measurement) to just meet the budget;
:meth:`autoprune.search.base.Searcher.search` evaluates them into the pool (``seeds``), so the
best of them is always a candidate. ``search.seed_baselines`` (on by default) turns this off.

* ``uniform``: one ratio for every unit (Torch-Pruning's ``MetaPruner`` with one
  ``pruning_ratio``); surgery rounds channel counts to the evaluator's ``round_to``, which
  ``pruning.round_to: auto`` sets to the backend's SIMD block (``channel_multiple()``), as
  Torch-Pruning's ``round_to=8`` does.
* ``global``: Torch-Pruning's global magnitude pruning (:mod:`autoprune.search.global_pruning`),
  with a magnitude ``pruning.importance`` only.
* ``layer_drop``: depth only, every unit at ratio 0 and the fewest blocks dropped that meet the
  predicted target, largest predicted saving first. The ``layer_drop`` *searcher* orders blocks
  by measured proxy accuracy instead (about ``k * B`` episodes for ``k`` of ``B`` blocks); the
  seed costs one episode.
"""

from __future__ import annotations

from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search.baselines import predicted_baseline, uniform_family
from autoprune.search.global_pruning import MAGNITUDE_CRITERIA, global_family


def depth_only(evaluator: PolicyEvaluator) -> Policy | None:
    """Every unit at ratio 0, the fewest blocks dropped that meet the predicted target; None if none do.

    Blocks are added one at a time, each time the one whose drop lowers the predicted value most
    (ties go to the deeper block), like :meth:`PolicyEvaluator.drops_to_reach` at ratio 0.
    """
    if not evaluator.block_names:
        return None
    zero = {u: 0.0 for u in evaluator.unit_names}
    order = {b: i for i, b in enumerate(evaluator.block_names)}
    drop: tuple[str, ...] = ()
    while evaluator.predicted_value(zero, drop) > evaluator.target:
        left = [b for b in evaluator.block_names if b not in drop]
        if not left:
            return None
        drop = (*drop, min(left, key=lambda b: (round(evaluator.predicted_value(zero, (*drop, b)), 9), -order[b])))
    prefixes = tuple(b + "." for b in drop)
    return Policy({u: 0.0 for u in evaluator.unit_names if not u.startswith(prefixes)}, drop)


def baseline_pool(evaluator: PolicyEvaluator) -> dict[str, Policy]:
    """``{"uniform": ..., "global": ..., "layer_drop": ...}``: each baseline predicted to just meet the budget.

    A baseline is left out when it cannot reach the target (``layer_drop`` on a model whose
    blocks alone do not reach it, or without droppable blocks), when it is not defined for the
    evaluator (``global`` with a non-magnitude ``pruning.importance``), or when it repeats an
    earlier one (same :meth:`Policy.key`). No evaluation is made.
    """
    seeds: dict[str, Policy | None] = {"uniform": predicted_baseline(evaluator, uniform_family(evaluator), evaluator.max_ratio)}
    if evaluator.importance in MAGNITUDE_CRITERIA:
        seeds["global"] = predicted_baseline(evaluator, global_family(evaluator), 1.0)
    seeds["layer_drop"] = depth_only(evaluator)
    pool: dict[str, Policy] = {}
    for name, policy in seeds.items():
        if policy is not None and all(policy.key() != p.key() for p in pool.values()):
            pool[name] = policy
    return pool
