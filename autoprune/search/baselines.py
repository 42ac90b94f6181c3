"""Classical baselines every learned searcher must beat: random, uniform, layer dropping and sensitivity-based ratios.

* ``random``: ratios drawn uniformly, blocks dropped at random, pushed into the budget.
* ``uniform``: one ratio for every unit, no block dropped (the usual "prune x% everywhere").
* ``layer_drop``: whole blocks (residual blocks, transformer layers) dropped greedily, least
  harmful first, and nothing else pruned (the depth-only baseline of layer-dropping studies,
  e.g. Sajjad et al. 2023, "On the Effect of Dropping Layers of Pre-trained Transformer Models").
* ``sensitivity``: prune each unit alone at a few ratios, then give every unit the largest
  ratio whose accuracy drop stays under one global threshold (Li et al. 2017, "Pruning
  Filters for Efficient ConvNets", https://arxiv.org/abs/1608.08710).

Budgets are met with the evaluator's cheap prediction; measured evaluations are the episodes.
:func:`bisect_knob` sets the one knob of a family of policies (uniform's ratio, the ``global``
searcher's global ratio) to just meet the budget, predicted then measured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autoprune.errors import ConfigError
from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search.base import Searcher

log = logging.getLogger(__name__)

Curves = dict[str, list[tuple[float, float]]]


def _without_dropped(ratios: dict[str, float], drop: Sequence[str]) -> dict[str, float]:
    """Ratios of the units that survive: units inside dropped blocks have nothing left to prune."""
    prefixes = tuple(b + "." for b in drop)
    return {u: r for u, r in ratios.items() if not (prefixes and u.startswith(prefixes))}


def make_feasible(evaluator: PolicyEvaluator, ratios: dict[str, float], drop: Sequence[str], rng: np.random.Generator | None = None) -> Policy:
    """Push a policy into the predicted budget: blend every ratio toward ``max_ratio`` as little as needed.

    If even every ratio at ``max_ratio`` misses the target, more blocks are dropped first (in random
    order with ``rng``, else in order). The result is predicted feasible whenever the target is reachable.
    """
    drop = list(drop)
    top = evaluator.max_ratio

    def blended(alpha: float) -> dict[str, float]:
        return _without_dropped({u: r + alpha * (top - r) for u, r in ratios.items()}, drop)

    def value(alpha: float) -> float:
        return evaluator.predicted_value(blended(alpha), tuple(drop))

    if value(0.0) <= evaluator.target:
        return Policy(blended(0.0), tuple(drop))
    rest = [b for b in evaluator.block_names if b not in drop]
    if rng is not None:
        rest = list(rng.permutation(rest))
    while value(1.0) > evaluator.target and rest:
        drop.append(str(rest.pop(0)))
    lo, hi = 0.0, 1.0
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if value(mid) <= evaluator.target else (mid, hi)
    return Policy(blended(hi), tuple(drop))


class RandomSearcher(Searcher):
    """Random policies: each ratio uniform in [0, max_ratio], each block dropped with ``drop_prob``.

    Hyper-parameters (``params``):
        drop_prob: Probability of dropping each droppable block.
        repair: Push every sample into the predicted budget (see :func:`make_feasible`).
    """

    name = "random"
    defaults = {"drop_prob": 0.3, "repair": True}
    seeded = False  # a baseline

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The names, then ``drop_prob`` in [0, 1].

        Raises:
            ConfigError: naming the hyper-parameter, its value and what is allowed.
        """
        p = super().check_params(params)
        drop_prob = p["drop_prob"]
        if isinstance(drop_prob, bool) or not isinstance(drop_prob, (int, float)) or not 0 <= drop_prob <= 1:
            raise ConfigError(f"search.params.drop_prob: {drop_prob!r} is out of range; allowed: 0 <= drop_prob <= 1")
        return p

    def _run(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> None:
        drop_prob = self.params["drop_prob"]
        rng = np.random.default_rng(seed)
        for _ in range(n_episodes):
            ratios = {u: float(rng.uniform(0.0, evaluator.max_ratio)) for u in evaluator.unit_names}
            drop = [b for b in evaluator.block_names if rng.random() < drop_prob]
            if self.params["repair"]:
                policy = make_feasible(evaluator, ratios, drop, rng)
            else:
                policy = Policy(_without_dropped(ratios, drop), tuple(drop))
            self.evaluate(policy)


def refine_params(params: dict[str, Any]) -> tuple[float, int]:
    """The ``tolerance`` and ``max_evals`` hyper-parameters of a one-knob searcher, checked.

    Raises:
        ConfigError: ``tolerance`` is not a number >= 0 or ``max_evals`` not an integer >= 1.
    """
    tol, max_evals = params["tolerance"], params["max_evals"]
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
        raise ConfigError(f"search.params.tolerance: {tol!r} is not allowed; allowed: a number >= 0")
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
        raise ConfigError(f"search.params.max_evals: {max_evals!r} is not allowed; allowed: an integer >= 1")
    return float(tol), max_evals


def predicted_knob(evaluator: PolicyEvaluator, family: Callable[[float, tuple[str, ...]], Policy], top: float,
                   drop: tuple[str, ...]) -> float:
    """The smallest knob of ``family`` (at ``drop``) whose *predicted* budget metric meets the target (bisection, 20 steps).

    0.0 when the unpruned member already meets it; ``top`` when none does.
    """
    def predicted(x: float) -> float:
        p = family(x, drop)
        return evaluator.predicted_value(p.ratios, p.drop)

    lo, hi = 0.0, top
    if predicted(0.0) <= evaluator.target:
        return 0.0
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if predicted(mid) <= evaluator.target else (mid, hi)
    return hi


def predicted_baseline(evaluator: PolicyEvaluator, family: Callable[[float, tuple[str, ...]], Policy], top: float) -> Policy | None:
    """The member of a one-knob family predicted to just meet the budget, with the fewest drops needed; no evaluation.

    None when the target is unreachable. Seeds searches with the classical baselines
    (:func:`autoprune.search.pool.baseline_pool`).
    """
    drop = evaluator.drops_to_reach()
    if drop is None:
        return None
    return family(predicted_knob(evaluator, family, top, drop), drop)


def uniform_family(evaluator: PolicyEvaluator) -> Callable[[float, tuple[str, ...]], Policy]:
    """``uniform``'s policies: one ratio for every unit left outside the dropped blocks."""
    units = evaluator.unit_names

    def family(r: float, drop: tuple[str, ...]) -> Policy:
        return Policy.uniform(units, r, drop=drop)

    return family


def bisect_knob(
    searcher: Searcher,
    evaluator: PolicyEvaluator,
    family: Callable[[float, tuple[str, ...]], Policy],
    top: float,
    n_episodes: int,
) -> tuple[float, tuple[str, ...]]:
    """Set the one knob of a family of policies so that it just meets the budget: predicted, then measured.

    ``family(x, drop)`` is the policy at knob ``x`` in ``[0, top]`` (more pruning as ``x`` grows;
    ``family(top, drop)`` is every unit at ``max_ratio``). No block is dropped unless even ``top``
    misses the predicted target; then the fewest blocks that make it reachable are
    (:meth:`PolicyEvaluator.drops_to_reach`). The knob is bisected on the predicted budget metric,
    then refined on the measured one (each measurement an episode of ``searcher``) until it is
    within ``tolerance`` below the target, in at most ``max_evals`` (and ``n_episodes``)
    evaluations. With a MAC budget the prediction is exact and one evaluation suffices.

    Args:
        searcher: Evaluates the policies (its ``tolerance`` and ``max_evals`` params are used).
        evaluator: The shared evaluator.
        family: Policy at a knob value and a set of dropped blocks.
        top: Largest knob value.
        n_episodes: Episodes available.

    Returns:
        ``(knob, drop)``: the largest-scoring feasible knob found (else the last one tried) and
        the dropped blocks (``()`` when channels alone reach the target).

    Raises:
        ConfigError: bad ``tolerance`` or ``max_evals``.
    """
    tol, max_evals = refine_params(searcher.params)
    target, limit = evaluator.target, min(n_episodes, max_evals)

    # () when channels alone can reach the target, else the fewest blocks that make it reachable
    reachable = evaluator.drops_to_reach()
    if reachable is None:
        log.warning("%s: even every unit at %.2f misses the target %.3f and no blocks can be dropped", searcher.name, evaluator.max_ratio, target)
        searcher.evaluate(family(top, ()))
        return top, ()
    drop: tuple[str, ...] = reachable
    if drop:
        log.info("%s: every unit at %.2f misses the target %.3f; dropping %d block(s): %s",
                 searcher.name, evaluator.max_ratio, target, len(drop), list(drop))

    hi = predicted_knob(evaluator, family, top, drop)
    exact = evaluator.budget.metric == "macs"
    knob, step = hi, 0.05
    feasible_at: float | None = None
    infeasible_at: float | None = None
    for _ in range(limit):
        m = searcher.evaluate(family(knob, drop))
        if not m.failed and m.feasible:
            feasible_at = knob
            if exact or target - m.value <= tol:
                break
        else:
            infeasible_at = knob
        if infeasible_at is None:
            knob = max(0.0, knob - step)
        elif feasible_at is None:
            knob = min(top, knob + step)
        else:
            knob = (infeasible_at + feasible_at) / 2
        step *= 2
        if knob in (feasible_at, infeasible_at) or (
            feasible_at is not None and infeasible_at is not None and abs(feasible_at - infeasible_at) < 1e-3
        ):
            break
    return (feasible_at if feasible_at is not None else knob), drop


class UniformSearcher(Searcher):
    """One ratio for every unit, set to just meet the budget (:func:`bisect_knob`).

    No block is dropped unless even ``max_ratio`` everywhere misses the target; then the
    fewest blocks that make it reachable are dropped (:meth:`PolicyEvaluator.drops_to_reach`).

    The ratio is found by bisection on the predicted budget metric, then refined by bisection on
    the measured one (each measurement is an episode) until it is within ``tolerance`` below the
    target. With a MAC budget the prediction is exact and one evaluation suffices.

    Hyper-parameters (``params``):
        tolerance: Stop once the measured metric is within this fraction of dense below the target.
        max_evals: At most this many evaluations (and at most the episodes given).
    """

    name = "uniform"
    defaults = {"tolerance": 0.01, "max_evals": 8}
    compared_with_uniform = False  # it is the uniform baseline
    seeded = False

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The names, then ``tolerance`` and ``max_evals`` (:func:`refine_params`).

        Raises:
            ConfigError: naming the hyper-parameter, its value and what is allowed.
        """
        p = super().check_params(params)
        refine_params(p)
        return p

    def _run(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> dict[str, Any]:
        ratio, drop = bisect_knob(self, evaluator, uniform_family(evaluator), evaluator.max_ratio, n_episodes)
        return {"ratio": ratio, "drop": list(drop)}


class SensitivitySearcher(Searcher):
    """Per-unit sensitivity analysis, then one accuracy-drop threshold for the whole network.

    Each unit is pruned alone at each of ``levels`` and each block is dropped alone (one episode
    each). A threshold ``tau`` then gives every unit the largest ratio whose (interpolated)
    accuracy drop is at most ``tau`` and drops every block whose drop costs at most ``tau``; the
    smallest ``tau`` meeting the predicted budget is evaluated, then up to ``neighbours`` variants
    (the same allocation without block drops, and a larger ``tau``) if episodes remain.

    Hyper-parameters (``params``):
        levels: Ratios measured per unit (capped at the evaluator's ``max_ratio``). With too few
            episodes, fewer levels are used and a warning is logged.
        neighbours: Extra policies evaluated after the chosen one.

    ``extras["sensitivity"]`` maps each unit to ``[(ratio, accuracy), ...]`` starting at the dense
    point; ``extras["block_sensitivity"]`` maps each block to its accuracy when dropped alone.
    """

    name = "sensitivity"
    defaults = {"levels": [0.2, 0.4, 0.6, 0.8], "neighbours": 2}
    seeded = False  # a baseline

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The names, then ``levels`` (ratios in (0, 1)) and ``neighbours`` (an integer >= 0).

        Raises:
            ConfigError: naming the hyper-parameter, its value and what is allowed.
        """
        p = super().check_params(params)
        raw, neighbours = p["levels"], p["neighbours"]
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
            raise ConfigError(f"search.params.neighbours: {neighbours!r} is not allowed; allowed: an integer >= 0")
        if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(x, (int, float)) and 0 < x < 1 for x in raw):
            raise ConfigError(f"search.params.levels: {raw!r} is not allowed; expected a list of ratios in (0, 1), e.g. [0.2, 0.4]")
        return p

    def _levels(self, evaluator: PolicyEvaluator, n_episodes: int) -> list[float]:
        raw = self.params["levels"]
        levels = sorted({min(float(x), evaluator.max_ratio) for x in raw})
        units, blocks = len(evaluator.unit_names), len(evaluator.block_names)
        fit = (n_episodes - blocks - 1) // max(1, units)
        if fit < 1:
            raise ConfigError(
                f"search.episodes: {n_episodes} is too few for sensitivity analysis of {units} units and {blocks} blocks; "
                f"allowed: at least {units + blocks + 1} (one per unit, one per block, one final policy)"
            )
        if fit < len(levels):
            keep = np.unique(np.round(np.linspace(len(levels) - 1, 0, fit)).astype(int))
            log.warning("sensitivity: %d episodes allow only %d of the %d levels per unit; using %s",
                        n_episodes, fit, len(levels), [levels[i] for i in sorted(keep)])
            levels = [levels[i] for i in sorted(keep)]
        return levels

    def _run(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> dict[str, Any]:
        levels = self._levels(evaluator, n_episodes)
        dense = float(evaluator.dense_accuracy)
        curves: Curves = {}
        for unit in evaluator.unit_names:
            curves[unit] = [(0.0, dense)] + [(r, self._accuracy(Policy({unit: r}))) for r in levels]
        blocks = {b: self._accuracy(Policy(drop=(b,))) for b in evaluator.block_names}
        block_drops = {b: dense - a for b, a in blocks.items()}

        def allocate(tau: float, with_blocks: bool = True) -> Policy:
            drop = [b for b, d in block_drops.items() if with_blocks and d <= tau]
            ratios = {u: largest_ratio(c, dense - tau) for u, c in curves.items()}
            return Policy(_without_dropped(ratios, drop), tuple(drop))

        def threshold(with_blocks: bool) -> float:
            """Smallest tau whose allocation meets the predicted budget (``top`` if none does)."""
            lo, hi = 0.0, top
            for _ in range(30):
                mid = (lo + hi) / 2
                p = allocate(mid, with_blocks)
                lo, hi = (lo, mid) if evaluator.predicted_value(p.ratios, p.drop) <= evaluator.target else (mid, hi)
            return hi

        def feasible(policy: Policy) -> Policy:
            return make_feasible(evaluator, policy.ratios, policy.drop)

        drops = [dense - a for c in curves.values() for _, a in c] + list(block_drops.values())
        top = max([d for d in drops if d == d] + [0.0]) + 1e-6
        tau = threshold(True)
        candidates = [feasible(allocate(tau))]
        if evaluator.block_names:
            candidates.append(feasible(allocate(threshold(False), False)))
        if evaluator.budget.metric != "macs":
            candidates.append(feasible(allocate(tau + 0.25 * (top - tau))))
        remaining = n_episodes - len(evaluator.unit_names) * len(levels) - len(blocks)
        seen: set[tuple] = set()
        for policy in candidates[: 1 + int(self.params["neighbours"])]:
            if remaining <= 0:
                break
            if policy.key() not in seen:
                seen.add(policy.key())
                self.evaluate(policy)
                remaining -= 1
        return {"sensitivity": curves, "block_sensitivity": blocks, "threshold": tau}

    def _accuracy(self, policy: Policy) -> float:
        m = self.evaluate(policy)
        return float("nan") if m.failed else float(m.accuracy)


def largest_ratio(curve: list[tuple[float, float]], floor: float) -> float:
    """Largest ratio whose accuracy, linearly interpolated along ``curve``, stays at or above ``floor``.

    The curve is made monotone first (accuracy never recovers with more pruning) and NaN points
    (failed evaluations) count as zero accuracy.
    """
    pts, running = [], float("inf")
    for r, a in curve:
        running = min(running, 0.0 if a != a else a)
        pts.append((r, running))
    if pts[0][1] < floor:
        return 0.0
    for (r0, a0), (r1, a1) in zip(pts, pts[1:]):
        if a1 < floor:
            return r0 + (r1 - r0) * (a0 - floor) / (a0 - a1)
    return pts[-1][0]


class LayerDropSearcher(Searcher):
    """Depth only: drop whole blocks, one at a time, each time the one whose drop keeps the proxy highest.

    Every unit keeps ratio 0. Each step measures every remaining block dropped next to the
    blocks chosen so far (one episode each) and keeps the one with the best proxy; steps stop
    once the kept policy's *measured* budget value meets the target, or no episodes or blocks
    are left (then the best policy may be infeasible). With ``B`` blocks and ``k`` dropped this
    costs about ``k * B - k * (k - 1) / 2`` episodes.

    ``extras["order"]`` lists the dropped blocks in the order chosen; ``extras["steps"]`` the
    proxy and measured value after each step.

    Raises:
        ConfigError: the model has no droppable block.
    """

    name = "layer_drop"
    defaults: dict[str, Any] = {}
    needs_blocks = True
    seeded = False  # a baseline

    def _run(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> dict[str, Any]:
        blocks = list(evaluator.block_names)  # not empty: needs_blocks
        zero = {n: 0.0 for n in evaluator.unit_names}
        drop: tuple[str, ...] = ()
        steps: list[dict[str, Any]] = []
        used = 0
        while len(drop) < len(blocks) and used < n_episodes:
            tried = []
            for b in blocks:
                if b in drop or used >= n_episodes:
                    continue
                m = self.evaluate(Policy(dict(zero), (*drop, b)))
                used += 1
                tried.append((m.accuracy, b, m))
            if not tried:
                break
            acc, best_block, m = max(tried, key=lambda t: (t[0], -blocks.index(t[1])))
            drop = (*drop, best_block)
            steps.append({"drop": list(drop), "proxy": acc, "value": m.value})
            if m.feasible:  # measured: the fewest blocks that meet the target on the backend
                break
        return {"order": list(drop), "steps": steps}

