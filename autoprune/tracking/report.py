"""What a run's results become in MLflow: finite scalar metrics, JSON-safe values, a search's summary and files, ``report.md``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoprune.paths import write_json_atomic


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number or a bool (1.0/0.0), else None (MLflow refuses NaN and text)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None, mappings' keys as strings, tuples as lists and anything else as its ``str``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def flat_scalars(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numeric entries of ``data``, nested mappings flattened with ``_`` (``{"a": {"b": 1}}`` -> ``{"a_b": 1.0}``)."""
    out: dict[str, float] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_scalars(v, f"{key}_"))
        elif (f := finite(v)) is not None:
            out[key] = f
    return out


def search_summary(result: Any) -> dict[str, float]:
    """Summary metrics of a finished search (:class:`autoprune.search.SearchResult`): episodes, feasibility, the best's metrics.

    The tracker logs them under ``search/`` (``search/episodes``, ``search/best_accuracy``, ...).
    """
    history = list(result.history)
    summary: dict[str, Any] = {
        "seconds": result.seconds,
        "episodes": len(history),
        "feasible_episodes": sum(1 for e in history if not e.metrics.failed and e.metrics.feasible),
        "failed_episodes": sum(1 for e in history if e.metrics.failed),
        "pareto_size": len(result.pareto),
    }
    if result.best is not None:
        m = result.best.metrics
        summary.update({
            "best_episode": result.best.index, "best_reward": m.reward, "best_accuracy": m.accuracy,
            "best_value": m.value, "best_latency_ratio": m.latency_ratio, "best_latency_ms": m.latency_ms,
            "best_predicted_ratio": m.predicted_ratio, "best_macs_ratio": m.macs_ratio,
            "best_params_ratio": m.params_ratio, "best_feasible": m.feasible,
        })
    return summary


def write_search_files(result: Any, info: Mapping[str, Any], root: Path) -> dict[str, Path]:
    """Write what describes a finished search into ``root``: ``search_info.json`` and the plots under ``plots/``.

    Args:
        result: A :class:`autoprune.search.SearchResult`.
        info: What the plots need (see :meth:`autoprune.tracking.tracker.Tracker.log_search_result`),
            stored with the searcher's name as ``search_info.json``.
        root: The folder (created).

    Returns:
        The written files by artifact name (``search_info.json``, ``plots/pareto.png``, ...).
    """
    from autoprune.tracking import plots  # matplotlib: only when results are written

    root.mkdir(parents=True, exist_ok=True)
    best, history = result.best, list(result.history)
    files = {"search_info.json": write_json_atomic(root / "search_info.json", json_safe({"searcher": result.searcher, **info}))}
    pdir = root / "plots"
    dense_acc = info.get("dense_accuracy")
    files["plots/pareto.png"] = plots.plot_pareto(
        history, pdir / "pareto.png", target=info.get("target"), metric=info.get("metric", "latency"),
        dense=(1.0, float(dense_acc)) if dense_acc is not None else None,
        uniform=tuple(info["uniform"]) if info.get("uniform") is not None else None,
    )
    files["plots/search_curve.png"] = plots.plot_search_curve(history, pdir / "search_curve.png")
    if best is not None:
        order = info.get("unit_order") or list(best.policy.ratios)
        files["plots/ratios.png"] = plots.plot_ratios(best.policy, pdir / "ratios.png", unit_order=order)
    if result.extras.get("sensitivity"):
        files["plots/sensitivity.png"] = plots.plot_sensitivity(
            result.extras["sensitivity"], pdir / "sensitivity.png", blocks=result.extras.get("block_sensitivity")
        )
    return files


def render_report(report: Mapping[str, Any], title: str = "autoprune report") -> str:
    """Markdown: a table of the scalar entries, then one JSON block per structured entry."""
    lines = [f"# {title}", ""]
    scalars = {k: v for k, v in report.items() if isinstance(v, (str, int, float, bool)) or v is None}
    if scalars:
        lines += ["| item | value |", "| --- | --- |"]
        for k, v in scalars.items():
            shown = f"{v:.4g}" if isinstance(v, float) else str(v)
            lines.append(f"| {k} | {shown.replace('|', '/')} |")
        lines.append("")
    for k, v in report.items():
        if k not in scalars:
            lines += [f"## {k}", "", "```json", json.dumps(json_safe(v), indent=2), "```", ""]
    return "\n".join(lines)


__all__ = ["finite", "flat_scalars", "json_safe", "render_report", "search_summary", "write_search_files"]
