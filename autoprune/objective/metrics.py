"""What one evaluation of a policy found: :class:`Metrics`, and its entry in a search's history, :class:`Evaluation`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from autoprune.graph.policy import Policy
from autoprune.measure.uncertainty import LatencyEstimate


@dataclass
class Metrics:
    """Everything measured about one policy.

    Attributes:
        accuracy: Proxy accuracy on the validation subset (after adaptive BN).
        latency_ratio: The estimated latency / dense latency: the lookup table's prediction updated by the
            paired measurement (:meth:`LatencyModel.estimate <autoprune.measure.latency_model.LatencyModel.estimate>`).
        latency_ci: ~95% interval of ``latency_ratio``; its upper end is what a latency budget is checked against.
        latency_ms: ``latency_ratio`` x the dense model's latency, in milliseconds per call at the latency batch size.
        predicted_ratio: Latency ratio predicted by the lookup table (no run).
        macs_ratio, params_ratio: Of the pruned model relative to dense (``macs_ratio`` is the MAC budget value).
        macs, params: Of the pruned model (MACs per input sample, :func:`autoprune.graph.layers.spec_macs`).
        value: The budget metric (estimated latency ratio or MAC ratio) the reward used.
        feasible: The budget is met (:meth:`Budget.met <autoprune.objective.budget.Budget.met>`): for
            latency the interval's upper end is at most the target, for MACs ``value <= target``.
        reward: :class:`~autoprune.objective.budget.Reward` of ``accuracy`` and ``value``.
        seconds: Time spent per step (prune, accuracy, latency, total).
        failed: The evaluation raised or produced NaN; ``error`` says why.
        backend: The latency backend and its settings that timed it (:func:`~autoprune.measure.backends.settings_label`).
        details: Parts of the proxy (fidelity: ``cosine`` and ``neighbour_agreement``; empty for accuracy).
        latency_rounds: Paired rounds measured behind ``latency_ratio``.
        measured_ratio: The paired measurement's own median ratio (before the update by the prediction).
        latency_source: ``search`` (measured in the search's process) or ``fresh`` (re-measured in a new process).
    """

    accuracy: float
    latency_ratio: float
    latency_ci: tuple[float, float]
    latency_ms: float
    predicted_ratio: float
    macs: int
    params: int
    macs_ratio: float
    params_ratio: float
    value: float
    feasible: bool
    reward: float
    seconds: dict[str, float] = field(default_factory=dict)
    failed: bool = False
    error: str | None = None
    backend: str = ""
    details: dict[str, float] = field(default_factory=dict)
    latency_rounds: int = 0
    measured_ratio: float = math.nan
    latency_source: str = "search"

    @property
    def latency(self) -> LatencyEstimate:
        """The latency ratio as one estimate (mean, interval, rounds): what every table shows."""
        return LatencyEstimate(self.latency_ratio, *self.latency_ci, self.latency_rounds, self.measured_ratio, self.predicted_ratio,
                               self.latency_source)

    def with_latency(self, estimate: LatencyEstimate, *, latency_ms: float, value: float, feasible: bool, reward: float) -> Metrics:
        """A copy carrying another latency estimate (e.g. a fresh-process re-measure), with the ms, budget value, verdict and reward it gives."""
        return dataclasses.replace(self, latency_ratio=estimate.mean, latency_ci=(estimate.low, estimate.high), latency_ms=latency_ms,
                                   value=value, feasible=feasible, reward=reward, latency_rounds=estimate.n,
                                   measured_ratio=estimate.measured, latency_source=estimate.source)

    def as_dict(self) -> dict[str, float | bool | str | None]:
        """Flat dict for CSV/MLflow."""
        d = {k: getattr(self, k) for k in (
            "accuracy", "latency_ratio", "latency_ms", "predicted_ratio", "macs", "params",
            "macs_ratio", "params_ratio", "value", "feasible", "reward", "failed", "error", "backend", "latency_rounds",
            "measured_ratio", "latency_source",
        )}
        d["latency_ci_low"], d["latency_ci_high"] = self.latency_ci
        d.update({f"seconds_{k}": v for k, v in self.seconds.items()})
        d.update({f"proxy_{k}": v for k, v in self.details.items()})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Metrics:
        """Inverse of :meth:`as_dict` (e.g. metrics stored with an Optuna trial by another worker)."""
        nan = float("nan")

        def num(key: str) -> float:
            v = d.get(key)
            return nan if v is None else float(v)

        return cls(
            accuracy=num("accuracy"), latency_ratio=num("latency_ratio"),
            latency_ci=(num("latency_ci_low"), num("latency_ci_high")), latency_ms=num("latency_ms"),
            predicted_ratio=num("predicted_ratio"), macs=int(d.get("macs") or 0), params=int(d.get("params") or 0),
            macs_ratio=num("macs_ratio"), params_ratio=num("params_ratio"), value=num("value"),
            feasible=bool(d.get("feasible")), reward=num("reward"),
            seconds={k.removeprefix("seconds_"): float(v) for k, v in d.items() if k.startswith("seconds_") and v is not None},
            failed=bool(d.get("failed")), error=d.get("error"), backend=str(d.get("backend") or ""),
            details={k.removeprefix("proxy_"): float(v) for k, v in d.items() if k.startswith("proxy_") and v is not None},
            latency_rounds=int(d.get("latency_rounds") or 0), measured_ratio=num("measured_ratio"),
            latency_source=str(d.get("latency_source") or "search"),
        )


@dataclass
class Evaluation:
    """One entry of the evaluator's history."""

    index: int
    policy: Policy
    metrics: Metrics
    cached: bool = False


__all__ = ["Evaluation", "Metrics"]
