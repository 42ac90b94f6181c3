"""``Policy``: a pruning ratio per unit name, plus the residual blocks to drop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class Policy:
    """What to prune: ``ratios[unit] in [0, 1)`` and the names of blocks to drop.

    Units missing from ``ratios`` are not pruned.
    """

    ratios: dict[str, float] = field(default_factory=dict)
    drop: tuple[str, ...] = ()

    @classmethod
    def uniform(cls, unit_names: Iterable[str], ratio: float, drop: Iterable[str] = ()) -> "Policy":
        """The same ratio for every unit."""
        return cls({n: float(ratio) for n in unit_names}, tuple(drop))

    def key(self, decimals: int = 3) -> tuple:
        """A hashable key with ratios rounded to ``decimals`` (for caching evaluations)."""
        return (
            tuple(sorted((k, round(float(v), decimals)) for k, v in self.ratios.items() if round(float(v), decimals) > 0)),
            tuple(sorted(self.drop)),
        )

    def to_dict(self) -> dict:
        """Plain JSON-ready form."""
        return {"ratios": {k: float(v) for k, v in self.ratios.items()}, "drop": list(self.drop)}

    @classmethod
    def from_dict(cls, d: dict) -> "Policy":
        """Inverse of :meth:`to_dict`."""
        return cls({str(k): float(v) for k, v in d.get("ratios", {}).items()}, tuple(d.get("drop", ())))
