"""``Policy``: a pruning ratio per unit name, plus the residual blocks to drop; the model fingerprint.

The fingerprint of a model is an architecture hash and, per unit and droppable block, the
features :mod:`autoprune.transfer` needs to map a policy onto another architecture. The policy
*file* is :mod:`autoprune.formats.policy_file`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from autoprune.graph.prunable import PrunableGraph

@dataclass(frozen=True)
class Policy:
    """What to prune: ``ratios[unit] in [0, 1)`` and the names of blocks to drop.

    Units missing from ``ratios`` are not pruned.
    """

    ratios: dict[str, float] = field(default_factory=dict)
    drop: tuple[str, ...] = ()

    @classmethod
    def uniform(cls, unit_names: Iterable[str], ratio: float, drop: Iterable[str] = ()) -> Policy:
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
    def from_dict(cls, d: dict) -> Policy:
        """Inverse of :meth:`to_dict`."""
        return cls({str(k): float(v) for k, v in d.get("ratios", {}).items()}, tuple(d.get("drop", ())))


# ----------------------------------------------------------------- fingerprint
def architecture_hash(model: nn.Module) -> str:
    """A short hash of the module tree: names, layer types and parameter shapes (not the values)."""
    h = hashlib.sha256()
    for name, m in model.named_modules():
        shapes = [tuple(p.shape) for p in m.parameters(recurse=False)]
        h.update(f"{name}:{type(m).__name__}:{shapes};".encode())
    return h.hexdigest()[:16]


def model_fingerprint(graph: PrunableGraph) -> dict[str, Any]:
    """What a policy needs to know about the model it was found on.

    Returns:
        ``{"arch_hash", "dense_macs", "units": [{name, kind, channels, depth, resolution, coupled, ...}],
        "blocks": [{name, depth, resolution, macs, units_inside}]}``, JSON-ready. MACs are per input
        sample (:func:`autoprune.graph.layers.spec_macs`).
    """
    units = [{"name": u.name, **asdict(u.features)} for u in graph.units]
    by_depth = sorted(graph.units, key=lambda u: u.features.depth)

    def resolution_at(depth: float) -> float:
        later = [u for u in by_depth if u.features.depth >= depth]
        return (later[0] if later else by_depth[-1]).features.resolution if by_depth else 1.0

    blocks = [
        {"name": b.name, "depth": b.depth, "resolution": resolution_at(b.depth), "macs": b.macs, "units_inside": list(b.units_inside)}
        for b in graph.blocks
    ]
    return {"arch_hash": architecture_hash(graph.model), "dense_macs": int(graph.dense_macs), "units": units, "blocks": blocks}


def check_policy_fits(policy: Policy, graph: PrunableGraph, *, fingerprint: dict | None = None, source: str = "policy") -> None:
    """Refuse a policy found on another architecture (map it with ``autoprune transfer`` instead).

    With the source model's ``fingerprint``, its unit and block names must be this model's; without
    one (a bare ``{"ratios": ...}`` file), every name the policy uses must exist here.

    Raises:
        PolicyError: naming the units and blocks that are missing here and those that are extra.
    """
    from autoprune.errors import PolicyError

    units, blocks = set(graph.unit_names), set(graph.block_names)
    if fingerprint is not None:
        theirs = {u["name"] for u in fingerprint.get("units", [])}
        their_blocks = {b["name"] for b in fingerprint.get("blocks", [])}
    else:
        theirs, their_blocks = set(policy.ratios), set(policy.drop)
    extra = sorted(theirs - units) + sorted(their_blocks - blocks)
    missing = sorted(units - theirs) + sorted(blocks - their_blocks) if fingerprint is not None else []
    extra += sorted((set(policy.ratios) - units - set(extra)) | (set(policy.drop) - blocks - set(extra)))
    if extra or missing:
        def show(names: list[str]) -> str:
            return ", ".join(names[:6]) + (f" ... ({len(names)} in all)" if len(names) > 6 else "")

        raise PolicyError(
            f"{source}: was found on another architecture: units/blocks it has that this model lacks: [{show(extra)}]; "
            f"units/blocks of this model it does not know: [{show(missing)}]; map it with `autoprune transfer`"
        )


__all__ = ["Policy", "architecture_hash", "check_policy_fits", "model_fingerprint"]
