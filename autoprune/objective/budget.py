"""What a pruned model must meet and how a candidate is scored: :class:`Budget` and :class:`Reward`.

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
from typing import Literal

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
