"""``Policy``: a pruning ratio per unit name, plus the residual blocks to drop; its versioned JSON file.

A policy file (``autoprune-policy/2``) carries, besides the ratios, the *fingerprint* of
the model it was found on: an architecture hash and, per unit and droppable block, the
features :mod:`autoprune.transfer` needs to map the policy onto another architecture.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from torch import nn

if TYPE_CHECKING:
    from autoprune.graph import PrunableGraph

POLICY_FORMAT = "autoprune-policy/2"
#: Earlier formats and why they are not read any more.
_OLD_FORMATS = {"autoprune-policy/1": "it has no model fingerprint; re-run the search (or strip 'format' to apply it by unit names)"}


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


# ----------------------------------------------------------------- fingerprint
def architecture_hash(model: nn.Module) -> str:
    """A short hash of the module tree: names, layer types and parameter shapes (not the values)."""
    h = hashlib.sha256()
    for name, m in model.named_modules():
        shapes = [tuple(p.shape) for p in m.parameters(recurse=False)]
        h.update(f"{name}:{type(m).__name__}:{shapes};".encode())
    return h.hexdigest()[:16]


def model_fingerprint(graph: "PrunableGraph") -> dict[str, Any]:
    """What a policy needs to know about the model it was found on.

    Returns:
        ``{"arch_hash", "dense_macs", "units": [{name, kind, channels, depth, resolution, coupled, ...}],
        "blocks": [{name, depth, resolution, macs, units_inside}]}``, JSON-ready.
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


def policy_document(
    policy: Policy,
    *,
    model: str,
    data: str,
    metric: str,
    target: float | None,
    backend: dict,
    searcher: str,
    episode: int | None = None,
    metrics: dict | None = None,
    fingerprint: dict | None = None,
) -> dict:
    """The one JSON form of a found policy: ratios and drops at the top, plus where it came from.

    Written by ``autoprune search`` (``policy.json``), ``autoprune transfer`` and logged to MLflow;
    read by :func:`load_policy` (and by :meth:`Policy.from_dict`, which only looks at ``ratios`` and ``drop``).
    """
    return {
        "format": POLICY_FORMAT,
        **policy.to_dict(),
        "model": model,
        "data": data,
        "budget": {"metric": metric, "target": target},
        "backend": backend,
        "searcher": searcher,
        "episode": episode,
        "metrics": metrics,
        "fingerprint": fingerprint,
    }


# ----------------------------------------------------------------- loading
def _local_policy_file(source: str, tracking_uri: str | None) -> Path:
    from autoprune.errors import ConfigError

    if source.startswith(("runs:/", "models:/")):
        from autoprune.artifacts import download_artifact_uri

        path = download_artifact_uri(source, tracking_uri=tracking_uri, option="--policy")
        if path.is_dir():
            found = sorted(path.rglob("policy.json"))
            if not found:
                raise ConfigError(f"--policy: {source!r} holds no policy.json")
            path = found[0]
        return path
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"--policy: file {source!r} does not exist")
    return path


def load_policy(source: str, *, tracking_uri: str | None = None) -> tuple[Policy, dict]:
    """Read a policy from a JSON file, ``runs:/<run_id>/policy.json`` or ``models:/<name>@<alias>``.

    Accepts the file ``autoprune search`` writes (``"format": "autoprune-policy/2"``) or a bare
    ``{"ratios": ..., "drop": ...}`` without a format (no fingerprint: it can only be applied by
    unit names). Returns the policy and the whole payload.

    Raises:
        PolicyError: unreadable, truncated or malformed file, or a wrong format version.
        ConfigError: a missing file or unknown MLflow URI.
    """
    from autoprune.errors import PolicyError

    path = _local_policy_file(source, tracking_uri)
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PolicyError(f"--policy: {source!r} is not valid JSON ({e})") from e
    if not isinstance(payload, dict):
        raise PolicyError(f"--policy: {source!r} must hold a JSON object")
    fmt = payload.get("format")
    if fmt is not None and fmt != POLICY_FORMAT:
        why = _OLD_FORMATS.get(fmt, "written by another version of autoprune?")
        raise PolicyError(f"--policy: {source!r} has format {fmt!r}; this version reads {POLICY_FORMAT!r} ({why})")
    body = payload.get("policy", payload)
    if not isinstance(body, dict) or not isinstance(body.get("ratios", {}), dict) or not isinstance(body.get("drop", []), list):
        raise PolicyError(f"--policy: {source!r} has no valid 'ratios' mapping / 'drop' list")
    fp = payload.get("fingerprint")
    if fp is not None and not (isinstance(fp, dict) and isinstance(fp.get("units"), list) and isinstance(fp.get("blocks", []), list)):
        raise PolicyError(f"--policy: {source!r} has a malformed 'fingerprint' (expected units and blocks lists)")
    try:
        policy = Policy.from_dict(body)
    except (TypeError, ValueError, AttributeError) as e:
        raise PolicyError(f"--policy: {source!r} holds a non-numeric ratio ({e})") from e
    bad = {k: v for k, v in policy.ratios.items() if not 0.0 <= v < 1.0}
    if bad:
        raise PolicyError(f"--policy: {source!r} holds ratios outside [0, 1): {bad}")
    return policy, payload


def check_policy_fits(policy: Policy, graph: "PrunableGraph", *, fingerprint: dict | None = None, source: str = "policy") -> None:
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


__all__ = ["POLICY_FORMAT", "Policy", "architecture_hash", "check_policy_fits", "load_policy", "model_fingerprint",
           "policy_document"]
