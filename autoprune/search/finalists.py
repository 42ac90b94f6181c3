"""Choose the returned policy on figures re-measured in a fresh process, not on the search's lowest noisy one.

A search keeps the best-rewarded candidate whose latency interval is within the target. Among
hundreds of noisy figures the ones that look best are partly lucky (the winner's curse), and a
search process's figures are also biased by its own warm sessions and pools. So before a
latency-budgeted search returns, :func:`choose_finalist` re-measures its best feasible candidates
in a new interpreter (:func:`autoprune.measure.fresh.remeasure_in_fresh_process`), in batches of
``top`` down the ranking, with more rounds than the search used, and returns the best-rewarded
one whose fresh interval is within the target. Both figures of every finalist are recorded.

When the child cannot rebuild the models (no zoo name for modules and a backend that does not
open ONNX files) or fails (e.g. a backend registered at run time, unknown to it), the finalists
are re-measured in this process instead, with the same rounds, recorded with source ``search``
(one warning line says why).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.errors import AutopruneError, one_line
from autoprune.measure.backends import backend_class
from autoprune.measure.fresh import FRESH_PROCESSES, MAX_FRESH_PROCESSES, remeasure_in_fresh_process
from autoprune.measure.schedule import PairedSchedule
from autoprune.measure.uncertainty import LatencyEstimate
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.objective.metrics import Evaluation

log = logging.getLogger(__name__)

#: The fewest paired rounds of a finalist's re-measure (with ``latency.rounds`` above 15: twice that).
FINAL_ROUNDS = 30
#: Batches of ``top`` finalists re-measured, down the ranking, before giving up on finding one within the target.
FINAL_BATCHES = 3


@dataclass(frozen=True)
class Finalists:
    """What :func:`choose_finalist` found.

    Attributes:
        best: The returned evaluation: the policy, with its metrics carrying the re-measured latency
            (``Metrics.latency_source`` ``fresh`` when a new process measured it).
        records: One per finalist: ``episode``, ``reward``, the search's and the re-measured
            estimates (:meth:`LatencyEstimate.as_dict`), and ``met``.
        dense_ms: The dense model's milliseconds per call in the re-measuring process.
        warning: One line when the re-measure was too noisy to confirm the budget (naming the setting to change), else None.
    """

    best: Evaluation
    records: list[dict[str, Any]]
    dense_ms: float
    warning: str | None = None


def final_rounds(evaluator: PolicyEvaluator) -> int:
    """Rounds of a finalist's re-measure: :data:`FINAL_ROUNDS`, or twice ``latency.rounds`` when that is more."""
    return max(FINAL_ROUNDS, 2 * evaluator.latency.rounds)


def _pruned(evaluator: PolicyEvaluator, e: Evaluation) -> nn.Module:
    return evaluator.prune(e.policy).eval()


def remeasure(evaluator: PolicyEvaluator, models: list[nn.Module], rounds: int) -> tuple[list[LatencyEstimate], float]:
    """``(estimates, dense ms)`` of ``models`` against the dense model: in a fresh process when it can rebuild them, else here."""
    s = evaluator.latency
    served_file = backend_class(s.backend).artifact == "onnx"
    if evaluator.zoo is not None or served_file:
        try:
            with tempfile.TemporaryDirectory(prefix="autoprune-finalists-") as tmp:
                dense: Any = evaluator.model
                cands: list[Any] = list(models)
                if evaluator.zoo is None:  # the runtime opens ONNX files: the child needs no zoo name
                    from autoprune.formats.onnx import export_onnx

                    x = evaluator.example_input
                    dense = export_onnx(evaluator.model, x, Path(tmp) / "dense.onnx")["path"]
                    cands = [export_onnx(m, x, Path(tmp) / f"c{i}.onnx")["path"] for i, m in enumerate(models)]
                fresh = remeasure_in_fresh_process(dense, cands, evaluator.example_input, backend=s.backend, threads=s.threads,
                                                   backend_options=s.options(), rounds=rounds, warmup_rounds=s.warmup, zoo=evaluator.zoo,
                                                   processes=FRESH_PROCESSES, max_processes=MAX_FRESH_PROCESSES, rel_ci=s.rel_ci)
            return [LatencyEstimate(r.ratio, r.ci_low, r.ci_high, r.rounds, r.ratio, source="fresh") for r in fresh.ratios], fresh.dense_ms
        except (AutopruneError, RuntimeError) as e:  # e.g. a backend registered at run time, unknown to the child
            log.warning("finalists re-measured in this process, not a fresh one: %s", one_line(e, None))
    lm = evaluator.latency_model
    found = [LatencyEstimate.of_measurement(lm.measure(m, PairedSchedule(warmup=s.warmup, rounds=rounds))) for m in models]
    return found, lm.dense_ms


def _noisy_line(worst: LatencyEstimate, rel_ci: float, rounds: int) -> str:
    return (f"latency: too noisy to confirm the budget: the re-measured 95% interval is +-{worst.rel_halfwidth:.1%} after {rounds} rounds "
            f"in up to {MAX_FRESH_PROCESSES} fresh processes, "
            f"wider than latency.rel_ci {rel_ci:g}; raise latency.rounds (re-measure rounds = max({FINAL_ROUNDS}, 2 x rounds)) "
            f"or run on a quieter machine")


def choose_finalist(evaluator: PolicyEvaluator, feasible: list[Evaluation], top: int) -> Finalists:
    """Re-measure the best feasible candidates and return the best-rewarded one whose re-measured interval is within the target.

    Candidates are ranked by the search's reward (distinct policies) and re-measured ``top`` at a
    time (at most :data:`FINAL_BATCHES` batches) with :func:`final_rounds` rounds. A finalist is
    met only when its re-measured interval's upper end is within the target and that interval is
    no wider than ``latency.rel_ci`` (else the backend was too noisy to tell, and nothing is
    reported met). When no finalist is met, the one with the lowest upper end is returned (not met).

    Args:
        evaluator: The search's evaluator (its budget, reward, dense model and latency settings).
        feasible: The search's feasible evaluations.
        top: Finalists per batch (>= 1).

    Returns:
        The chosen evaluation (metrics carrying the re-measured latency) and one record per finalist.
    """
    ranked = sorted({e.policy.key(): e for e in feasible}.values(), key=lambda e: e.metrics.reward, reverse=True)
    rounds, rel_ci = final_rounds(evaluator), evaluator.latency.rel_ci
    records: list[dict[str, Any]] = []
    judged: list[Evaluation] = []
    noisy: list[LatencyEstimate] = []
    dense_ms = evaluator.dense_ms
    for start in range(0, min(len(ranked), top * FINAL_BATCHES), top):
        batch = ranked[start:start + top]
        found, dense_ms = remeasure(evaluator, [_pruned(evaluator, e) for e in batch], rounds)
        for e, est in zip(batch, found):
            metrics = evaluator.remeasured(e.metrics, est, dense_ms=dense_ms)
            too_noisy = rel_ci is not None and est.rel_halfwidth > rel_ci
            if too_noisy:
                noisy.append(est)
                metrics = dataclasses.replace(metrics, feasible=False)
            records.append({"episode": e.index, "reward": e.metrics.reward, "search": e.metrics.latency.as_dict(), "remeasured": est.as_dict(),
                            "met": metrics.feasible, "too_noisy": too_noisy})
            judged.append(Evaluation(e.index, e.policy, metrics, e.cached))
        met = [j for j in judged if j.metrics.feasible]
        if met:
            best = max(met, key=lambda j: j.metrics.reward)
            log.info("finalist: episode %d, latency %s (search: %s)", best.index, best.metrics.latency.show(),
                     next(r["search"] for r in records if r["episode"] == best.index))
            return Finalists(best, records, dense_ms)
    warning = _noisy_line(max(noisy, key=lambda x: x.rel_halfwidth), rel_ci, rounds) if noisy and rel_ci is not None else None
    if warning:
        log.warning("%s", warning)
    return Finalists(min(judged, key=lambda j: j.metrics.latency_ci[1]), records, dense_ms, warning)


__all__ = ["FINAL_BATCHES", "FINAL_ROUNDS", "Finalists", "choose_finalist", "final_rounds", "remeasure"]
