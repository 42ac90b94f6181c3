"""Re-fit a mapped policy to the budget, propose cuts of other depths, and keep the best measured candidate.

:func:`refit_to_budget` scales the ratios uniformly so the predicted budget metric just meets
the target; :func:`drop_candidates` proposes shallower and deeper cuts around the mapped drop
set; :func:`fit_measured` re-fits one drop set until its measurement uses the budget (tighter
channels when over it, looser when far under, a shallower drop set when the drops alone are far
under, :func:`shallower_drop`); :func:`transfer` does it all for the CLI, measuring each
candidate and keeping the best (:func:`candidate_rank`: feasible first, then by reward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from autoprune.errors import BudgetError, PolicyError
from autoprune.graph.policy import Policy, model_fingerprint
from autoprune.graph.units import UnitKind

if TYPE_CHECKING:
    from autoprune.objective.evaluator import PolicyEvaluator

from autoprune.transfer.mapping import Candidate, MappingRow, TransferResult, transfer_policy


# ----------------------------------------------------------------- refit
def refit_to_budget(
    policy: Policy, evaluator: PolicyEvaluator, *, tol: float = 0.01, max_iter: int = 30
) -> tuple[Policy, float, float]:
    """Scale the ratios uniformly so the predicted budget metric just meets the evaluator's target.

    Ratios become ``clip(s * r, 0, max_ratio)``; dropped blocks are kept. The smallest
    ``s`` whose :meth:`PolicyEvaluator.predicted_value` is at most ``evaluator.target`` is
    found by bisection (stopping once the value is within ``tol`` below the target), so an
    over-pruned policy is scaled down (``s < 1``) and a loose one up. Units the policy
    leaves at 0 stay unpruned; only when even every pruned unit at ``max_ratio`` misses the
    target are the other units pruned too, blending towards ``max_ratio`` everywhere (the
    returned scale is then ``s_max * (1 + t)``, ``s_max`` being the scale at which every
    pruned unit reaches ``max_ratio`` and ``t`` in [0, 1] the blend). When even every unit at
    ``max_ratio`` misses the target, the fewest more blocks are dropped that make it reachable
    (:meth:`PolicyEvaluator.drops_to_reach`). A policy without any pruned unit is scaled as a
    uniform policy (``s`` is then the uniform ratio).

    Args:
        policy: A policy for ``evaluator``'s model.
        evaluator: Supplies the graph, ``max_ratio``, the target and the predictor.
        tol: Stop once ``target - tol <= value <= target``.
        max_iter: Bisection steps at most.

    Returns:
        ``(policy, scale, predicted value)``; the policy lists every unit of the model.

    Raises:
        PolicyError: the policy names units or blocks the model (or the evaluator) does not have.
        BudgetError: the target is unreachable even with every unit at ``max_ratio`` and every droppable block dropped.
    """
    graph, max_ratio, target = evaluator.graph, float(evaluator.max_ratio), float(evaluator.target)
    graph.validate_policy(policy.ratios, ())
    unknown_drop = sorted(set(policy.drop) - set(evaluator.block_names))
    if unknown_drop:
        why = "block dropping is off for this evaluator" if not evaluator.block_names else f"droppable blocks: {evaluator.block_names}"
        raise PolicyError(f"policy drops blocks this model cannot drop: {unknown_drop}; {why}")
    names = list(evaluator.unit_names)
    base = {n: max(0.0, float(policy.ratios.get(n, 0.0))) for n in names}
    drop = tuple(policy.drop)
    if not any(base.values()):
        base = {n: 1.0 for n in names}
    s_max = max_ratio / min(r for r in base.values() if r > 0)
    saturated = {n: min(max_ratio, s_max * r) for n, r in base.items()}

    def ratios_at(s: float) -> dict[str, float]:
        if s <= s_max:
            return {n: min(max_ratio, s * r) for n, r in base.items()}
        t = min(1.0, s / s_max - 1.0)
        return {n: (1.0 - t) * saturated[n] + t * max_ratio for n in names}  # exactly max_ratio at t = 1

    def value(s: float) -> float:
        return float(evaluator.predicted_value(ratios_at(s), drop))

    lo, hi = 0.0, s_max
    v_lo = value(lo)
    if v_lo <= target:
        return Policy(ratios_at(0.0), drop), 0.0, v_lo
    v_hi = value(hi)
    if v_hi > target:
        hi = 2.0 * s_max
        v_hi = value(hi)
        if v_hi > target:  # channels alone cannot reach the target: drop more blocks
            more = evaluator.drops_to_reach(drop)
            if more is None:
                raise BudgetError(
                    f"budget.target: {target:.3f} of dense {evaluator.budget.metric} is unreachable for this policy: with every "
                    f"unit at max_ratio {max_ratio} and every droppable block dropped the model misses it (predicted); "
                    f"raise the target or pruning.max_ratio"
                )
            drop = more
            v_hi = value(hi)
        lo = s_max
    for _ in range(max_iter):
        if target - v_hi <= tol:
            break
        mid = 0.5 * (lo + hi)
        v_mid = value(mid)
        if v_mid <= target:
            hi, v_hi = mid, v_mid
        else:
            lo = mid
    return Policy(ratios_at(hi), drop), hi, v_hi


# A measured (or predicted) value this far (fraction of dense) below the target wastes budget.
SLACK = 0.03
# After a measurement over the target, re-fit to this much (fraction of dense) below it: latency noise.
MARGIN = 0.01


def shallower_drop(drop: Sequence[str], evaluator: PolicyEvaluator, *, slack: float = SLACK) -> tuple[str, ...]:
    """``drop`` minus the fewest blocks that bring the drops alone to within ``slack`` of the target.

    A drop set whose blocks alone (no channel pruned) already predict more than ``slack`` under
    the target leaves budget unused: channels cannot be relaxed below a ratio of 0. Blocks are
    put back one at a time, each time the one saving the least predicted budget, until the
    unpruned model with the remaining drops predicts at least ``target - slack``, and never so
    far that the target becomes unreachable (:meth:`PolicyEvaluator.drops_to_reach`).

    Args:
        drop: Dropped block names.
        evaluator: Supplies the target and the predictor (latency ratio or MAC ratio to dense).
        slack: How far (fraction of dense) under the target the drops alone may be.

    Returns:
        The shallower drop set, in ``drop``'s order (``drop`` itself when it leaves channels work to do).
    """
    unpruned = {u: 0.0 for u in evaluator.unit_names}
    value = lambda d: evaluator.predicted_value(unpruned, d)  # noqa: E731
    current = tuple(drop)
    while current and value(current) < evaluator.target - slack:
        back = min(current, key=lambda b: value(tuple(x for x in current if x != b)))
        fewer = tuple(x for x in current if x != back)
        if evaluator.drops_to_reach(fewer) != fewer:
            break
        current = fewer
    return current


def drop_candidates(policy: Policy, evaluator: PolicyEvaluator, n: int) -> list[tuple[str, ...]]:
    """Up to ``n`` drop sets around the mapped one, trading depth against width.

    The best split between dropping blocks and pruning channels differs between architectures
    (and measured batch-1 latency favours dropping blocks on models whose layers are small), so
    the mapped drop set is one point on a chain: removing mapped drops, the one saving the least
    predicted budget first, or adding blocks, the one saving the most first. Candidates are
    spaced a quarter of the droppable blocks apart along it, the first being the mapped set (or
    the fewest more drops that make the target reachable, :meth:`PolicyEvaluator.drops_to_reach`;
    or, when the mapped drops alone are already more than ``SLACK`` under the target, the
    shallower set of :func:`shallower_drop`). Deeper cuts whose drops alone are more than
    ``SLACK`` under the target are not proposed: they could not use the budget.

    Args:
        policy: The mapped policy (its ratios weigh the chain; its drop set is the centre).
        evaluator: Supplies the droppable blocks, the target and the predictor.
        n: Drop sets wanted.

    Returns:
        Up to ``n`` distinct drop sets, the centre first.
    """
    blocks = list(evaluator.block_names)
    first = shallower_drop(evaluator.drops_to_reach(policy.drop) or tuple(policy.drop), evaluator)
    if n <= 1 or not blocks:
        return [first]
    value = lambda drop: evaluator.predicted_value(policy.ratios, drop)  # noqa: E731
    unpruned = {u: 0.0 for u in evaluator.unit_names}
    up, current = [], tuple(first)
    while len(current) < len(blocks):
        current = (*current, min((b for b in blocks if b not in current), key=lambda b: value((*current, b))))
        if evaluator.predicted_value(unpruned, current) < evaluator.target - SLACK:
            break  # the drops alone are far under the target: a deeper cut only wastes budget
        up.append(current)
    down, current = [], tuple(first)
    reachable = evaluator.drops_to_reach
    while current:
        current = tuple(b for b in current if b != min(current, key=lambda b: value(tuple(x for x in current if x != b))))
        if reachable(current) != current:  # fewer drops than this cannot reach the target
            break
        down.append(current)
    chain = [*reversed(down), tuple(first), *up]
    centre, step = len(down), max(1, round(len(blocks) / 4))
    picked: list[int] = []
    for j in range(len(chain)):
        for i in ([centre] if j == 0 else [centre - j * step, centre + j * step]):
            if 0 <= i < len(chain) and i not in picked and len(picked) < n:
                picked.append(i)
    return [chain[i] for i in picked]


# ----------------------------------------------------------------- presentation
def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def mapping_table(rows: Sequence[MappingRow]) -> str:
    """A markdown table of the mapping, one line per target unit and block."""
    header = ["target", "kind", "depth", "stage", "coupled", "from", "ratio", "refit", "how"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        src = ", ".join(r.sources[:2]) + (f" +{len(r.sources) - 2}" if len(r.sources) > 2 else "") if r.sources else "-"
        if r.kind == UnitKind.BLOCK:
            ratio = refit = "drop" if r.dropped else "keep"
        else:
            ratio, refit = _fmt(r.ratio), _fmt(r.refit)
        stage = "-" if r.stage is None else f"{r.stage:g}"
        cells = [r.name, r.kind, f"{r.depth:.2f}", stage, "yes" if r.coupled else "no", src, ratio, refit, r.how]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _after_refit(row: MappingRow, policy: Policy) -> MappingRow:
    """``row`` with the refitted ratio, or, for a block the re-fit dropped on top of the mapping, marked so."""
    if row.kind != UnitKind.BLOCK:
        return replace(row, refit=float(policy.ratios.get(row.name, 0.0)))
    if row.name in policy.drop and not row.dropped:
        return replace(row, dropped=True, how="drop: added by the re-fit (a deeper cut than the mapping)")
    if row.dropped and row.name not in policy.drop:
        return replace(row, dropped=False, how="keep: kept by the re-fit (a shallower cut than the mapping)")
    return row


def candidate_table(result: TransferResult) -> str:
    """A markdown table of the re-fitted drop sets tried, the kept one marked."""
    lines = ["| blocks dropped | scale | predicted | measured | proxy accuracy | feasible | kept |", "|---|---|---|---|---|---|---|"]
    for c in result.candidates:
        m = c.metrics or {}
        lines.append(f"| {len(c.policy.drop)} | {c.scale:.3f} | {c.predicted_value:.3f} | {_fmt(m.get('value'))} | "
                     f"{_fmt(m.get('accuracy'), 4)} | {'-' if not m else 'yes' if m.get('feasible') else 'no'} | "
                     f"{'yes' if c.policy == result.policy else ''} |")
    return "\n".join(lines)


# ----------------------------------------------------------------- one call for the CLI
def transfer(
    policy: Policy, payload: dict, evaluator: PolicyEvaluator, *, refit: bool = True, measure: bool = False, candidates: int = 1
) -> TransferResult:
    """Map a loaded policy onto ``evaluator``'s model and (by default) refit it to the evaluator's budget.

    Args:
        policy: The source policy, as returned by :func:`autoprune.app.uris.load_policy`.
        payload: The whole source policy file (its ``fingerprint`` describes the source model).
        evaluator: Evaluator over the target model, holding the budget and ``max_ratio``.
        refit: Scale the mapped ratios so the predicted budget metric just meets the target.
        measure: Evaluate the result for real (surgery, measured latency, proxy accuracy). With
            ``refit``, a candidate measured over the target (or ``SLACK`` under it) is re-fitted
            at its drop set to a target corrected by measured / predicted (see :func:`fit_measured`).
        candidates: With ``refit``, re-fit this many drop sets (:func:`drop_candidates`); with
            ``measure`` the best measured one (by reward) is kept, else the mapped drop set.

    Returns:
        The mapped policy, mapping rows (with refitted ratios), scale, predicted value and the
        target model's fingerprint.

    Raises:
        PolicyError: the payload has no (or a malformed) fingerprint.
        BudgetError: with ``refit``, the target is unreachable.
        ConfigError: ``candidates`` < 1.
    """
    from autoprune.errors import ConfigError

    if not isinstance(payload, dict):
        raise PolicyError("the policy payload must be a JSON object")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ConfigError(f"candidates: {candidates!r} is not allowed; allowed: an integer >= 1")
    allow_drop = bool(evaluator.block_names)
    mapped, rows = transfer_policy(policy, payload.get("fingerprint"), evaluator.graph,
                                   max_ratio=evaluator.max_ratio, allow_drop=allow_drop)
    identity = all(r.how == "same name" for r in rows if r.kind != UnitKind.BLOCK)
    if refit:
        tried = _fit_candidates(mapped, evaluator, 1 if identity else candidates, measure)
        chosen = tried[0]
        if measure:
            chosen = max(tried, key=candidate_rank)
    else:
        predicted = float(evaluator.predicted_value(mapped.ratios, mapped.drop))
        chosen = Candidate(mapped, 1.0, predicted, evaluator.evaluate(mapped).as_dict() if measure else None)
        tried = [chosen]
    rows = [_after_refit(r, chosen.policy) for r in rows]
    src = {k: payload.get(k) for k in ("model", "data", "searcher", "budget")}
    src["arch_hash"] = (payload.get("fingerprint") or {}).get("arch_hash")
    return TransferResult(
        policy=chosen.policy, rows=rows, scale=float(chosen.scale), predicted_value=float(chosen.predicted_value),
        metric=evaluator.budget.metric, target=float(evaluator.target), identity=identity,
        fingerprint=model_fingerprint(evaluator.graph), source=src, metrics=chosen.metrics, candidates=tried,
    )


def candidate_rank(candidate: Candidate) -> tuple[bool, bool, float, float]:
    """Sort key of measured candidates (higher is better).

    Evaluated without failure first, then feasible, then by reward (so a near-chance accuracy
    far under the budget beats a good candidate over it until that one is re-fitted to the
    budget, see :func:`fit_measured`), then by the budget used (measured value).

    Args:
        candidate: A candidate with (or without) measured metrics.

    Returns:
        ``(evaluated, feasible, reward, value)``; unmeasured or failed candidates get ``-inf``.
    """
    m = candidate.metrics or {}
    ok = bool(m) and not m.get("failed")
    if not ok:
        return False, False, -math.inf, -math.inf
    return True, bool(m.get("feasible")), float(m["reward"]), float(m.get("value") or 0.0)


def _variant_rank(candidate: Candidate, target: float) -> tuple:
    """Sort key of the re-fits of one drop set: like :func:`candidate_rank`, but a feasible variant
    within ``SLACK`` of the target beats one further under it (looser channels at the same drop
    set; a higher proxy accuracy of the tighter one is noise, not a reason to leave budget unused)."""
    ok, feasible, reward, value = candidate_rank(candidate)
    return ok, feasible, feasible and target - value <= SLACK, reward, value


def _next_goal(seen: list[tuple[float, float]], target: float, feasible: bool) -> float:
    """The goal target for the next re-fit, from the (goal target, measured value) pairs so far.

    Once one measurement is under the target and one over it, the goal is interpolated between
    the closest two (regula falsi, kept off the ends): the lookup table's error is not a constant
    factor, so scaling alone can jump from far under to over and back. Before that, the last
    goal is scaled by target / measured (aiming ``MARGIN`` below the target after a measurement
    over it).
    """
    under = [p for p in seen if p[1] <= target]
    over = [p for p in seen if p[1] > target]
    if under and over:
        gu, mu = max(under, key=lambda p: p[1])
        go, mo = min(over, key=lambda p: p[1])
        if gu < go and mo > mu:
            g = gu + (target - MARGIN - mu) * (go - gu) / (mo - mu)
            return min(go, max(gu, g))
    g, m = seen[-1]
    aim = target - (0.0 if feasible else MARGIN)
    return min(0.99, g * aim / max(m, 1e-9))


def _fit_candidates(mapped: Policy, evaluator: PolicyEvaluator, n: int, measure: bool) -> list[Candidate]:
    """Re-fit ``n`` drop sets of ``mapped`` (:func:`drop_candidates`); with ``measure``, each is measured.

    The lookup table's error is corrected by measurement (:func:`fit_measured`): the first
    candidate's corrections calibrate the target the other drop sets are planned and fitted
    against. A correction that lands on a depth already tried replaces that candidate when it
    ranks higher (it is not thrown away).
    """
    tried: list[Candidate] = []

    def keep(fitted: Candidate) -> None:
        same = next((i for i, c in enumerate(tried) if len(c.policy.drop) == len(fitted.policy.drop)), None)
        if same is None:
            tried.append(fitted)
        elif measure and candidate_rank(fitted) > candidate_rank(tried[same]):
            tried[same] = fitted

    first, goal = fit_measured(Policy(mapped.ratios, drop_candidates(mapped, evaluator, 1)[0]), evaluator, measure=measure)
    keep(first)
    fits = 1
    for drop in drop_candidates(mapped, goal, len(evaluator.block_names) + 1):
        if len(tried) == n or fits > n:  # one spare fit for a correction that lands on a tried depth
            break
        # Cuts of another depth are the point: skip a drop set whose count (once the re-fit has
        # added what the target needs, or put back what wastes it) was already tried.
        planned = shallower_drop(goal.drops_to_reach(drop) or drop, goal)
        if any(len(c.policy.drop) == len(planned) for c in tried):
            continue
        fitted, goal = fit_measured(Policy(mapped.ratios, drop), evaluator, goal=goal, measure=measure)
        fits += 1
        keep(fitted)
    return tried


def fit_measured(
    policy: Policy, evaluator: PolicyEvaluator, *, goal: PolicyEvaluator | None = None, measure: bool = True,
    measurements: int = 3,
) -> tuple[Candidate, PolicyEvaluator]:
    """Re-fit ``policy`` to the budget, measure it, and re-fit again until the measurement uses the budget.

    The policy is re-fitted (:func:`refit_to_budget`) to ``goal``'s target, its drop set first
    made no deeper than the target can use (:func:`shallower_drop`). Each measurement that is
    over ``evaluator``'s target, or more than ``SLACK`` under it, calibrates the goal: its
    target is multiplied by target / measured (aiming ``MARGIN`` below the target after a
    measurement over it), or, once measurements lie on both sides of the target, interpolated
    between them, and the policy is re-fitted at the *same* drop set: tighter channels
    when over (blocks are added only when channels alone cannot reach the calibrated target),
    looser channels when under (blocks put back only when the drops alone are far under it).
    The cut of every re-fit starts from the last one.

    Args:
        policy: Ratios and drop set to fit (typically the mapped policy with one candidate drop set).
        evaluator: Measures (``evaluate``) and judges feasibility against its own target.
        goal: Evaluator whose target the lookup table is fitted to (a calibrated variant of
            ``evaluator``, :meth:`PolicyEvaluator.with_budget`); default ``evaluator``.
        measure: Evaluate for real; without it the first re-fit is returned unmeasured.
        measurements: Evaluations at most.

    Returns:
        The best measured variant (feasible first, then one using the budget, then by reward) and
        the last goal (the calibrated target).

    Raises:
        BudgetError: the first re-fit cannot reach the goal's target even with every block dropped.
    """
    from autoprune.objective.budget import Budget

    goal = evaluator if goal is None else goal
    ratios = policy.ratios

    def refit(drop: Sequence[str], at: PolicyEvaluator) -> tuple[Policy, float, float]:
        return refit_to_budget(Policy(ratios, shallower_drop(drop, at)), at)

    current, scale, predicted = refit(policy.drop, goal)
    if not measure:
        return Candidate(current, scale, predicted), goal
    best: Candidate | None = None
    target = float(evaluator.target)
    seen: list[tuple[float, float]] = []  # (goal target, measured value) of each measurement
    for attempt in range(measurements):
        m = evaluator.evaluate(current)
        here = Candidate(current, scale, predicted, m.as_dict())
        if best is None or _variant_rank(here, target) > _variant_rank(best, target):
            best = here
        close = m.feasible and target - m.value <= SLACK
        exact = abs(m.value - predicted) < 1e-6 and abs(goal.target - target) < 1e-9
        if m.failed or close or exact or attempt == measurements - 1:
            break  # exact: prediction and goal are right, the channel steps cannot get closer here
        seen.append((float(goal.target), float(m.value)))
        goal = evaluator.with_budget(Budget(metric=evaluator.budget.metric, target=_next_goal(seen, target, m.feasible)))
        try:
            current, scale, predicted = refit(current.drop, goal)
        except BudgetError:
            break
    assert best is not None
    return best, goal


__all__ = [
    "MARGIN", "SLACK", "candidate_rank", "candidate_table", "drop_candidates", "fit_measured", "mapping_table",
    "refit_to_budget", "shallower_drop", "transfer",
]
