"""Figures of a search: Pareto front, per-unit ratios, search progress, layer sensitivity.

Each function draws one PNG (150 dpi) and returns its path. Figures are built with
:class:`matplotlib.figure.Figure` directly, never ``pyplot``, so no GUI backend or global
figure state is involved and plotting is safe in worker threads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from autoprune.graph.policy import Policy
from autoprune.objective.metrics import Evaluation
from autoprune.search.base import pareto_front

DPI = 150
FEASIBLE = "tab:blue"
INFEASIBLE = "0.65"
FAILED = "tab:red"
FRONT = "tab:orange"

_METRIC_LABELS = {"latency": "latency (fraction of dense)", "macs": "MACs (fraction of dense)"}


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _usable(history: Iterable[Evaluation]) -> list[Evaluation]:
    return [e for e in history if not e.metrics.failed and math.isfinite(e.metrics.value) and math.isfinite(e.metrics.accuracy)]


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _label(ax, xlabel: str, ylabel: str, title: str, **legend: object) -> None:
    """Axis labels, title and a light grid; a legend (with ``legend`` options) when something is labelled."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**legend)


def plot_pareto(
    history: Sequence[Evaluation],
    path: str | Path,
    *,
    target: float | None,
    dense: tuple[float, float] | None = None,
    uniform: tuple[float, float] | None = None,
    metric: str = "latency",
) -> Path:
    """Accuracy against the budget metric for every evaluation, with the Pareto front.

    Args:
        history: Evaluations of the search (failed ones are skipped).
        path: PNG to write.
        target: The budget as a fraction of dense (a vertical line), or None.
        dense: ``(metric, accuracy)`` of the dense model, usually ``(1.0, dense_acc)``.
        uniform: ``(metric, accuracy)`` of the uniform-ratio baseline, or None.
        metric: ``latency`` or ``macs`` (the x-axis label).
    """
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    points = [e for e in _usable(history) if not e.cached]
    feasible = [e for e in points if e.metrics.feasible]
    infeasible = [e for e in points if not e.metrics.feasible]
    if infeasible:
        ax.scatter([e.metrics.value for e in infeasible], [e.metrics.accuracy for e in infeasible],
                   s=18, color=INFEASIBLE, label=f"over budget ({len(infeasible)})", zorder=2)
    if feasible:
        ax.scatter([e.metrics.value for e in feasible], [e.metrics.accuracy for e in feasible],
                   s=18, color=FEASIBLE, label=f"within budget ({len(feasible)})", zorder=3)
    front = pareto_front(points)
    if front:
        ax.step([e.metrics.value for e in front], [e.metrics.accuracy for e in front], where="post",
                color=FRONT, lw=1.8, label="Pareto front", zorder=4)
        best = max(feasible, key=lambda e: e.metrics.reward, default=None)
        if best is not None:
            ax.scatter([best.metrics.value], [best.metrics.accuracy], s=120, facecolors="none", edgecolors="k",
                       lw=1.5, label=f"best (episode {best.index})", zorder=5)
    if target is not None:
        ax.axvline(target, color="tab:red", ls="--", lw=1.2, label=f"target {target:.2f}")
    if dense is not None:
        ax.scatter([dense[0]], [dense[1]], marker="*", s=220, color="tab:green", edgecolors="k", label="dense", zorder=6)
    if uniform is not None:
        ax.scatter([uniform[0]], [uniform[1]], marker="D", s=60, color="tab:purple", edgecolors="k",
                   label="uniform ratio", zorder=6)
    if not points:
        _empty(ax, "no successful evaluations")
    _label(ax, _METRIC_LABELS.get(metric, metric), "validation accuracy (proxy)", "Accuracy vs. budget metric of every evaluated policy",
           loc="lower right", fontsize=8)  # fmt: skip
    return _save(fig, path)


def plot_ratios(policy: Policy, path: str | Path, *, unit_order: Sequence[str]) -> Path:
    """Bar chart of the policy's ratio per unit, in graph order; units in dropped blocks are marked.

    Args:
        policy: The policy to show.
        path: PNG to write.
        unit_order: Unit names in graph order; units of the policy not listed are appended.
    """
    names = list(unit_order) + [n for n in policy.ratios if n not in set(unit_order)]
    ratios = [float(policy.ratios.get(n, 0.0)) for n in names]
    dropped = [any(n == b or n.startswith(b + ".") for b in policy.drop) for n in names]
    fig = Figure(figsize=(max(6.0, 0.32 * len(names) + 2), 4.5))
    ax = fig.add_subplot()
    if names:
        # a unit inside a dropped block loses all its channels, whatever its ratio says
        heights = [1.0 if d else r for r, d in zip(ratios, dropped)]
        colors = ["0.85" if d else FEASIBLE for d in dropped]
        bars = ax.bar(range(len(names)), heights, color=colors, edgecolor="k", lw=0.4)
        for bar, d in zip(bars, dropped):
            if d:
                bar.set_hatch("//")
                ax.text(bar.get_x() + bar.get_width() / 2, 0.5, "dropped", rotation=90, ha="center", va="center",
                        fontsize=7, color="0.2", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_ylim(0, 1.05)
        if any(dropped):
            ax.bar([0], [0], color="0.85", hatch="//", edgecolor="k", lw=0.4, label="in a dropped block (removed)")
            ax.legend(loc="upper right", fontsize=8)
    else:
        _empty(ax, "no prunable units")
    blocks = f"; dropped blocks: {', '.join(policy.drop)}" if policy.drop else ""
    ax.set_title(f"Pruning ratio per unit{blocks}", fontsize=10)
    ax.set_xlabel("unit (graph order)")
    ax.set_ylabel("fraction of channels removed")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_search_curve(history: Sequence[Evaluation], path: str | Path) -> Path:
    """Reward of every episode (dots coloured by feasibility) and the best feasible reward so far.

    Args:
        history: Evaluations in order.
        path: PNG to write.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    groups = {
        "within budget": ([], FEASIBLE, "o"),
        "over budget": ([], INFEASIBLE, "o"),
        "failed": ([], FAILED, "x"),
    }
    steps, best_so_far, best = [], [], -math.inf
    for e in history:
        m = e.metrics
        key = "failed" if m.failed else ("within budget" if m.feasible else "over budget")
        groups[key][0].append((e.index, m.reward))
        if not m.failed and m.feasible and m.reward > best:
            best = m.reward
        if best > -math.inf:
            steps.append(e.index)
            best_so_far.append(best)
    for label, (pts, color, marker) in groups.items():
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color=color, marker=marker, label=f"{label} ({len(pts)})")
    if steps:
        ax.step(steps, best_so_far, where="post", color="k", lw=1.5, label="best within budget so far")
    if not history:
        _empty(ax, "no evaluations")
    _label(ax, "episode", "reward", "Search progress", loc="best", fontsize=8)
    return _save(fig, path)


def plot_sensitivity(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    blocks: Mapping[str, float] | None = None,
) -> Path:
    """Accuracy against pruning ratio, one line per unit (each pruned alone), as a PNG.

    The curves are what the sensitivity searcher (Li et al. 2017) measures; it returns them in
    ``SearchResult.extras`` and this layer draws them.

    Args:
        curves: ``extras["sensitivity"]``: ``{unit: [(ratio, proxy accuracy), ...]}``.
        path: PNG to write; parent folders are created.
        blocks: ``extras["block_sensitivity"]``: ``{block: proxy accuracy with the block dropped}``,
            drawn as dotted horizontal lines.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    styles = ("-", "--", ":", "-.")
    for i, (name, pts) in enumerate(curves.items()):
        pts = sorted((float(r), float(a)) for r, a in pts)
        if pts:  # the colour cycle has 10 colours: change the line style after each 10 units
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1, ls=styles[i // 10 % len(styles)], label=name)
    for name, acc in (blocks or {}).items():
        if math.isfinite(float(acc)):
            ax.axhline(float(acc), linestyle=":", linewidth=0.8, color="grey")
            ax.annotate(f"drop {name}", (0.0, float(acc)), fontsize=6, color="grey")
    if not curves:
        _empty(ax, "no sensitivity curves")
    _label(ax, "pruning ratio of the unit (others dense)", "validation accuracy (proxy)", "Sensitivity of each unit to pruning",
           loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, ncol=1 if len(curves) <= 20 else 2)  # fmt: skip
    return _save(fig, path)


__all__ = ["plot_pareto", "plot_ratios", "plot_search_curve", "plot_sensitivity"]
