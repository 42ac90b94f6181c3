"""The policy file (``autoprune-policy/2``): its one JSON form, written atomically, and its reader.

A policy file carries, besides the ratios and dropped blocks, the *fingerprint* of the model it
was found on (:func:`autoprune.graph.policy.model_fingerprint`), the budget, the latency backend
and its settings, and the layers the search ignored. :func:`write_policy_file` is its one writer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError, PolicyError
from autoprune.graph.policy import Policy
from autoprune.paths import write_json_atomic

POLICY_FORMAT = "autoprune-policy/2"
POLICY_FILE = "policy.json"
#: Earlier formats and why they are not read any more.
_OLD_FORMATS = {"autoprune-policy/1": "it has no model fingerprint; re-run the search (or strip 'format' to apply it by unit names)"}


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
    ignore: Sequence[str] = (),
    pruning: dict | None = None,
) -> dict:
    """The one JSON form of a found policy: ratios and drops at the top, plus where it came from.

    Written by ``autoprune search`` (``policy.json``), ``autoprune transfer`` and logged to MLflow;
    read by :func:`read_policy_file` (and by :meth:`Policy.from_dict`, which only looks at ``ratios`` and ``drop``).

    Args:
        policy: The found policy.
        model, data: Names of the model and data set it was found on.
        metric, target: The budget (``latency`` or ``macs``; fraction of dense, None with ``target_ms``).
        backend: Where latency was measured (``name``, ``batch_size``, ``threads``), as the search used it.
        searcher: The searcher's name (``transfer`` for a transferred policy).
        episode: Index of the evaluation that found it.
        metrics: Its metrics (:meth:`autoprune.objective.metrics.Metrics.as_dict`).
        fingerprint: :func:`autoprune.graph.policy.model_fingerprint` of the model it was found on.
        ignore: Layers the search left unpruned (``model.ignore``); ``apply`` and ``transfer``
            ignore them again, so the policy's units match.
        pruning: How the policy was applied in the search (``importance``, ``round_to`` resolved
            to a number or None, ``iterative_steps``); ``apply`` applies it the same way, so it
            gives the channel counts the search measured.

    Returns:
        A JSON-ready dict.
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
        "ignore": list(ignore),
        "pruning": dict(pruning or {}),
    }


# ----------------------------------------------------------------- loading
def read_policy_file(path: str | Path, *, source: str | None = None, option: str = "--policy") -> tuple[Policy, dict]:
    """Read a policy file (local; ``runs:/`` and ``models:/`` URIs are resolved by :mod:`autoprune.app.uris`).

    Accepts the file ``autoprune search`` writes (``"format": "autoprune-policy/2"``) or a bare
    ``{"ratios": ..., "drop": ...}`` without a format (no fingerprint: it can only be applied by
    unit names). Returns the policy and the whole payload. ``option`` is the command-line option
    the file was given with, named by every message (``--policy``, ``--warm-start``).

    Raises:
        PolicyError: unreadable, truncated or malformed file, or a wrong format version.
        ConfigError: a missing file.
    """
    path = Path(path)
    source = str(path) if source is None else source
    if not path.is_file():
        raise ConfigError(f"{option}: file {source!r} does not exist")
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PolicyError(f"{option}: {source!r} is not valid JSON ({e})") from e
    if not isinstance(payload, dict):
        raise PolicyError(f"{option}: {source!r} must hold a JSON object")
    fmt = payload.get("format")
    if fmt is not None and fmt != POLICY_FORMAT:
        why = _OLD_FORMATS.get(fmt, "written by another version of autoprune?")
        raise PolicyError(f"{option}: {source!r} has format {fmt!r}; this version reads {POLICY_FORMAT!r} ({why})")
    body = payload.get("policy", payload)
    if not isinstance(body, dict) or not isinstance(body.get("ratios", {}), dict) or not isinstance(body.get("drop", []), list):
        raise PolicyError(f"{option}: {source!r} has no valid 'ratios' mapping / 'drop' list")
    fp = payload.get("fingerprint")
    if fp is not None and not (isinstance(fp, dict) and isinstance(fp.get("units"), list) and isinstance(fp.get("blocks", []), list)):
        raise PolicyError(f"{option}: {source!r} has a malformed 'fingerprint' (expected units and blocks lists)")
    ignore = payload.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(n, str) for n in ignore):
        raise PolicyError(f"{option}: {source!r} has a malformed 'ignore' (expected a list of layer names)")
    try:
        policy = Policy.from_dict(body)
    except (TypeError, ValueError, AttributeError) as e:
        raise PolicyError(f"{option}: {source!r} holds a non-numeric ratio ({e})") from e
    bad = {k: v for k, v in policy.ratios.items() if not 0.0 <= v < 1.0}
    if bad:
        full = [k for k, v in bad.items() if v == 1.0]
        hint = (f"; a ratio of 1.0 would remove every channel or head of {full[0]!r}: list its block or layer under 'drop' instead"
                if full else "")
        raise PolicyError(f"{option}: {source!r} holds ratios outside [0, 1): {bad}{hint}")
    return policy, payload


def write_policy_file(path: str | Path, document: dict[str, Any] | None) -> Path:
    """Write a :func:`policy_document` atomically (the one writer of ``policy.json``).

    Non-finite numbers (a failed measurement's NaN) are written as ``null``, so the file is strict
    JSON. ``None`` (a search without a successful evaluation) is written as ``null``.

    Raises:
        OSError: the folder cannot be written.
    """
    return write_json_atomic(path, _json_safe(document))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


__all__ = ["POLICY_FILE", "POLICY_FORMAT", "policy_document", "read_policy_file", "write_policy_file"]
