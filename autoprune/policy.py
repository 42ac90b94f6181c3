"""``Policy``: a pruning ratio per unit name, plus the residual blocks to drop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


POLICY_FORMAT = "autoprune-policy/1"


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
) -> dict:
    """The one JSON form of a found policy: ratios and drops at the top, plus where it came from.

    Written by ``autoprune search`` (``policy.json``) and logged to MLflow; read by :func:`load_policy`
    (and by :meth:`Policy.from_dict`, which only looks at ``ratios`` and ``drop``).
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
    }


def load_policy(source: str, *, tracking_uri: str | None = None) -> tuple[Policy, dict]:
    """Read a policy from a JSON file or a ``runs:/<run_id>/policy.json`` artifact.

    Accepts the file ``autoprune search`` writes (``{"format": "autoprune-policy/1", "policy": ...}``)
    or a bare ``{"ratios": ..., "drop": ...}``. Returns the policy and the whole payload.

    Raises:
        PolicyError: unreadable, truncated or malformed file, or a wrong format version.
        ConfigError: a missing file or unknown MLflow URI.
    """
    import json
    from pathlib import Path

    from autoprune.errors import ConfigError, PolicyError

    path = Path(source)
    if source.startswith("runs:/"):
        import mlflow

        from autoprune.tracking import resolve_tracking_uri

        try:
            mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
            path = Path(mlflow.artifacts.download_artifacts(source))
        except Exception as e:  # MlflowException and friends: the URI does not resolve
            raise ConfigError(f"--policy: cannot download {source!r} ({str(e).splitlines()[0][:200]})") from e
        if path.is_dir():
            path = path / "policy.json"
    if not path.is_file():
        raise ConfigError(f"--policy: file {source!r} does not exist")
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PolicyError(f"--policy: {source!r} is not valid JSON ({e})") from e
    if not isinstance(payload, dict):
        raise PolicyError(f"--policy: {source!r} must hold a JSON object")
    fmt = payload.get("format")
    if fmt is not None and fmt != POLICY_FORMAT:
        raise PolicyError(f"--policy: {source!r} has format {fmt!r}; this version reads {POLICY_FORMAT!r}")
    body = payload.get("policy", payload)
    if not isinstance(body, dict) or not isinstance(body.get("ratios", {}), dict) or not isinstance(body.get("drop", []), list):
        raise PolicyError(f"--policy: {source!r} has no valid 'ratios' mapping / 'drop' list")
    try:
        return Policy.from_dict(body), payload
    except (TypeError, ValueError) as e:
        raise PolicyError(f"--policy: {source!r} holds a non-numeric ratio ({e})") from e
