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
* ``minitron``: width of the feed-forward units only (kind ``ffn``: a transformer's MLP), one
  ratio, heads and layers kept, as Minitron prunes an LLM's MLP width and keeps its heads and
  depth (Sreenivas et al. 2024); the least important blocks are dropped too only when the MLP
  alone cannot reach the target. Only for a model with ``ffn`` units and other units.
* ``layer_drop``: depth only, every unit at ratio 0 and the fewest blocks dropped that meet the
  predicted target, largest predicted saving first; among equal savings the least important by
  the evaluator's ``block_importance`` (a decoder's layers: ShortGPT's block influence, Men et
  al. 2024), then the deepest. The ``layer_drop`` *searcher* orders blocks by measured proxy
  accuracy instead (about ``k * B`` episodes for ``k`` of ``B`` blocks); the seed costs one episode.
"""

from __future__ import annotations

from collections.abc import Callable

from autoprune.graph.policy import Policy
from autoprune.graph.units import UnitKind
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search.baselines import predicted_baseline, predicted_knob, uniform_family
from autoprune.search.global_pruning import MAGNITUDE_CRITERIA, global_family

Family = Callable[[float, tuple[str, ...]], Policy]


def drops_for(evaluator: PolicyEvaluator, family: Family, top: float) -> tuple[str, ...] | None:
    """The fewest blocks that let ``family(top, drop)`` meet the predicted target; None if even every block misses it.

    Blocks are added one at a time, each time the one whose drop lowers the predicted value most
    (ties: :meth:`PolicyEvaluator.block_rank`, the least important, then the deepest), like
    :meth:`PolicyEvaluator.drops_to_reach` for every unit at ``max_ratio``.
    """
    def value(drop: tuple[str, ...]) -> float:
        p = family(top, drop)
        return evaluator.predicted_value(p.ratios, p.drop)

    drop: tuple[str, ...] = ()
    while value(drop) > evaluator.target:
        left = [b for b in evaluator.block_names if b not in drop]
        if not left:
            return None
        drop = (*drop, min(left, key=lambda b: (round(value((*drop, b)), 9), *evaluator.block_rank(b))))
    return drop


def depth_only(evaluator: PolicyEvaluator) -> Policy | None:
    """Every unit at ratio 0, the fewest blocks dropped that meet the predicted target (:func:`drops_for`); None if none do."""
    if not evaluator.block_names:
        return None
    zero = {u: 0.0 for u in evaluator.unit_names}
    drop = drops_for(evaluator, lambda _r, d: Policy(zero, d), 0.0)
    if drop is None:
        return None
    prefixes = tuple(b + "." for b in drop)
    return Policy({u: 0.0 for u in evaluator.unit_names if not u.startswith(prefixes)}, drop)


def minitron_family(evaluator: PolicyEvaluator) -> Family | None:
    """``minitron``'s policies: one ratio for the ``ffn`` units outside the dropped blocks, every other unit kept; None without ``ffn`` units."""
    ffn = [u for u in evaluator.unit_names if evaluator.graph.unit(u).features.kind == UnitKind.FFN]
    if not ffn or len(ffn) == len(evaluator.unit_names):
        return None

    def family(r: float, drop: tuple[str, ...]) -> Policy:
        prefixes = tuple(b + "." for b in drop)
        return Policy({u: r for u in ffn if not u.startswith(prefixes)}, drop)

    return family


def minitron(evaluator: PolicyEvaluator) -> Policy | None:
    """The ``minitron`` baseline predicted to just meet the budget (see the module docstring); None when it cannot or is not defined."""
    family = minitron_family(evaluator)
    drop = drops_for(evaluator, family, evaluator.max_ratio) if family is not None else None
    if family is None or drop is None:
        return None
    return family(predicted_knob(evaluator, family, evaluator.max_ratio, drop), drop)


def baseline_pool(evaluator: PolicyEvaluator) -> dict[str, Policy]:
    """``{"uniform": ..., "global": ..., "minitron": ..., "layer_drop": ...}``: each baseline predicted to just meet the budget.

    A baseline is left out when it cannot reach the target (``layer_drop`` on a model whose
    blocks alone do not reach it, or without droppable blocks), when it is not defined for the
    evaluator (``global`` with a non-magnitude ``pruning.importance``), or when it repeats an
    earlier one (same :meth:`Policy.key`). No evaluation is made.
    """
    seeds: dict[str, Policy | None] = {"uniform": predicted_baseline(evaluator, uniform_family(evaluator), evaluator.max_ratio)}
    if evaluator.importance in MAGNITUDE_CRITERIA:
        seeds["global"] = predicted_baseline(evaluator, global_family(evaluator), 1.0)
    seeds["minitron"] = minitron(evaluator)
    seeds["layer_drop"] = depth_only(evaluator)
    pool: dict[str, Policy] = {}
    for name, policy in seeds.items():
        if policy is not None and all(policy.key() != p.key() for p in pool.values()):
            pool[name] = policy
    return pool
