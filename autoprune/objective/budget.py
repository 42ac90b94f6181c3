"""What a pruned model must meet and how a candidate is scored: :class:`Budget` and :class:`Reward`.

A latency budget is checked against the upper end of the latency estimate's interval
(:meth:`Budget.met`): a candidate whose interval crosses the target is never met.

Rewards (``acc`` is the proxy accuracy in [0, 1], ``c`` the budget metric as a fraction of
dense: measured latency ratio, or MAC ratio; ``t`` the target):

* ``hard``: ``acc - penalty * max(0, c / t - 1)``. Anything within budget is
  scored by accuracy alone; every 1% of overshoot costs ``penalty`` points of
  accuracy (default 2.0: 1% over costs 2 points).
* ``soft``: ``acc * (c / t) ** w`` with ``w = exponent`` (default -0.07), the
  MnasNet trade-off (Tan et al. 2019): faster than target earns a little, slower loses a little.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from autoprune.errors import ConfigError


@dataclass(frozen=True)
class Budget:
    """What the pruned model must meet: ``metric`` at most ``target`` x dense (or ``target_ms``).

    Attributes:
        metric: ``latency`` (measured latency ratio to dense) or ``macs`` (MACs per sample, ratio to dense).
        target: The allowed fraction of dense, in (0, 1].
        target_ms: An absolute latency target in milliseconds (latency only); overrides ``target``.

    ``target`` 0.5 is the one default budget (the config's ``budget`` section reads it).
    """

    metric: Literal["latency", "macs"] = "latency"
    target: float | None = 0.5
    target_ms: float | None = None

    def target_ratio(self, dense_ms: float) -> float:
        """The target as a fraction of the dense model.

        Args:
            dense_ms: The dense model's latency in milliseconds (used with ``target_ms``).

        Raises:
            ConfigError: ``target_ms`` with the ``macs`` metric, or ``target`` outside (0, 1].
        """
        if self.target_ms is not None:
            if self.metric != "latency":
                raise ConfigError("budget.target_ms: only allowed with budget.metric 'latency'")
            return self.target_ms / dense_ms
        if self.target is None or not 0 < self.target <= 1:
            raise ConfigError(f"budget.target: {self.target!r} is out of range; allowed: 0 < target <= 1")
        return float(self.target)

    def met(self, value: float, high: float, target: float) -> bool:
        """Whether a candidate meets the budget: conservatively for a measured latency, exactly for MACs.

        A latency ratio is an estimate with an interval (:class:`~autoprune.measure.uncertainty.LatencyEstimate`);
        a candidate whose interval crosses the target is never met, so only ``high <= target`` is.
        A MAC ratio is counted, not measured: ``value <= target``.

        Args:
            value: The budget metric's estimate (fraction of dense).
            high: The upper end of its ~95% interval (ignored for MACs).
            target: :meth:`target_ratio`.
        """
        if self.metric == "macs":
            return value <= target
        return high <= target

    def verdict(self, target: float, latency: Any, latency_ratio: float, macs_ratio: float) -> dict[str, Any]:
        """The budget judged on a delivered model's final figures, as report entries.

        Args:
            target: :meth:`target_ratio`.
            latency: The final :class:`~autoprune.measure.uncertainty.LatencyEstimate` (None: only ``latency_ratio``).
            latency_ratio: Its point ratio to dense when there is no estimate.
            macs_ratio: Pruned over dense MACs.

        Returns:
            ``budget_metric``, ``budget_target``, ``latency_ratio`` (fraction of dense), ``budget_value``
            and ``budget_met`` (latency: the interval's upper end within the target; MACs: the count).
        """
        ratio = latency.mean if latency is not None else latency_ratio
        value = ratio if self.metric == "latency" else macs_ratio
        met = (latency.high if latency is not None and self.metric == "latency" else value) <= target
        return {"budget_metric": self.metric, "budget_target": target, "latency_ratio": ratio, "budget_value": value, "budget_met": met}

    @property
    def field(self) -> str:
        """The config field the target was set with: ``budget.target_ms`` or ``budget.target``."""
        return "budget.target_ms" if self.target_ms is not None else "budget.target"

    def describe(self, ratio: float, dense_ms: float) -> str:
        """The target as the user set it, for messages: ``budget.target: 0.500 of dense latency``, or
        ``budget.target_ms: 0.0001 ms (0.0000812 of dense's 1.23 ms)``.

        Args:
            ratio: The target as a fraction of dense (:meth:`target_ratio`).
            dense_ms: The dense model's latency in milliseconds.
        """
        if self.target_ms is not None:
            return f"budget.target_ms: {self.target_ms:g} ms ({ratio:.3g} of dense's {dense_ms:.3g} ms)"
        return f"budget.target: {ratio:.3f} of dense {self.metric}"


@dataclass(frozen=True)
class Reward:
    """How accuracy and the budget metric combine into one scalar (see module docstring).

    Attributes:
        kind: ``hard`` (penalty over budget only) or ``soft`` (MnasNet, Tan et al. 2019: ``acc * (c/t)**w`` always).
        penalty: ``hard``: accuracy points lost per unit of relative overshoot.
        exponent: ``soft``: the MnasNet exponent ``w`` (negative).
    """

    kind: Literal["hard", "soft"] = "hard"
    penalty: float = 2.0
    exponent: float = -0.07

    def __call__(self, acc: float, value: float, target: float) -> float:
        """Reward of proxy accuracy ``acc`` at budget-metric ``value`` for ``target`` (both fractions of dense).

        Raises:
            ConfigError: ``kind`` is neither ``hard`` nor ``soft``.
        """
        if self.kind == "hard":
            return acc - self.penalty * max(0.0, value / target - 1.0)
        if self.kind == "soft":
            return acc * (value / target) ** self.exponent
        raise ConfigError(f"reward.kind: {self.kind!r} is not allowed; allowed: 'hard', 'soft'")


__all__ = ["Budget", "Reward"]
