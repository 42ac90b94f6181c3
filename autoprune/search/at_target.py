"""Proposals moved onto the budget before they are evaluated, so a search compares candidates at equal cost.

A sampler that draws every ratio in ``[0, max_ratio]`` and every block's drop as a coin flip
proposes, on a deep model, policies far past the target: on a 30-layer decoder the coin flips
alone drop about 15 layers, where about 9 meet a budget of 0.7, and every such candidate is
feasible and worse than it needed to be (SmolLM2-135M, issue 23: 17 layers dropped, 0.44 of the
dense latency for a target of 0.7, test perplexity 77,256 against 83.65). The reward of a
feasible candidate is its proxy alone, so the search then ranks candidates that spend very
different budgets, and the ones that spend less of it lose for that reason, not for their shape.

:func:`at_target` keeps a proposal's *shape* and moves it onto the predicted target, as AMC
(He et al. 2018) limits each action so the episode meets its budget:

1. **Depth is scaled to what the target needs.** ``D`` (:func:`max_drops`) blocks alone meet the
   predicted target (the ``layer_drop`` baseline, :func:`autoprune.search.pool.depth_only`); a
   proposal that drops ``n`` of the ``B`` droppable blocks drops ``round(n D / B)`` of them, the
   least important (:meth:`~autoprune.objective.evaluator.PolicyEvaluator.block_rank`: a
   decoder's lowest block influence, ShortGPT). Coin flips then spend about half the budget on
   depth, not all of it twice over, and every proposal but the all-dropping ones keeps some
   width to choose.
2. **Width is scaled to the target.** Every ratio is multiplied by one factor ``alpha``
   (each capped at ``max_ratio``), the smallest whose predicted budget metric meets the target
   (bisection); the proposal's ratios say *where* to prune, ``alpha`` *how much*. A proposal
   that cannot reach the target at ``alpha``'s top drops the next least important blocks.

Only the prediction is used (the latency model or the exact MAC count): no measurement of the
proposal itself. On latency the prediction has the table's bias, learned from the candidates
measured so far, removed (:meth:`~autoprune.objective.evaluator.PolicyEvaluator.proposal_value`),
and the aim is :data:`~autoprune.objective.evaluator.LATENCY_AIM` of the target
(:attr:`~autoprune.objective.evaluator.PolicyEvaluator.aim`), so the measured interval's upper end
meets the target and the returned policy spends the budget it is given (issue 21: a search
that proposed ratios freely returned 0.41-0.47 of dense for a target of 0.5).
"""

from __future__ import annotations

from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search.pool import depth_only

#: Bisection steps on the width factor (2**-20 of its range).
STEPS = 20


def max_drops(evaluator: PolicyEvaluator) -> int:
    """The most blocks a proposal moved onto the target drops: the fewest that alone meet the predicted target, or every block."""
    depth = depth_only(evaluator)
    return len(depth.drop) if depth is not None else len(evaluator.block_names)


def at_target(evaluator: PolicyEvaluator, policy: Policy, *, most_drops: int) -> Policy:
    """``policy`` with its drops scaled to ``most_drops`` and its ratios scaled by one factor to just meet the predicted target.

    Args:
        evaluator: Gives the prediction (:meth:`~autoprune.objective.evaluator.PolicyEvaluator.predicted_value`),
            the target, ``max_ratio``, the droppable blocks and their order.
        policy: The proposal: ratios in ``[0, max_ratio]`` per unit, blocks to drop.
        most_drops: The blocks that alone meet the target (:func:`max_drops`): a proposal dropping
            every block drops this many, one dropping ``n`` of ``B`` blocks ``round(n * most_drops / B)``.

    Returns:
        The moved policy: its predicted value is at most the target, and the smallest factor on
        the proposal's ratios (all ratios equal when the proposal's are all 0) that reaches it; the
        proposal's blocks (capped) alone when they already meet it. When nothing reaches the
        target, every ratio at ``max_ratio`` with every block dropped (the search records it infeasible).

    Raises:
        PolicyError: a ratio or name the evaluator does not know.
    """
    rank = sorted(policy.drop, key=evaluator.block_rank)
    drop = tuple(rank[:round(len(rank) * most_drops / max(1, len(evaluator.block_names)))])
    shape = {u: policy.ratios.get(u, 0.0) for u in evaluator.unit_names}
    if not any(r > 0 for r in shape.values()):
        shape = dict.fromkeys(shape, 1.0)
    top = evaluator.max_ratio / min(r for r in shape.values() if r > 0)

    def scaled(alpha: float, d: tuple[str, ...]) -> Policy:
        return Policy({u: min(evaluator.max_ratio, alpha * r) for u, r in shape.items()}, d)

    def meets(p: Policy) -> bool:
        return evaluator.proposal_value(p.ratios, p.drop) <= evaluator.aim

    while not meets(scaled(top, drop)):
        left = sorted((b for b in evaluator.block_names if b not in drop), key=evaluator.block_rank)
        if not left:
            return scaled(top, drop)
        drop = (*drop, left[0])
    if meets(scaled(0.0, drop)):
        return scaled(0.0, drop)
    lo, hi = 0.0, top
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(scaled(mid, drop)) else (mid, hi)
    return scaled(hi, drop)


__all__ = ["STEPS", "at_target", "max_drops"]
