"""Section "Patterns from the issue's reports" of ``experiments/bench/coverage.py``: every figure computed here.

Built from the test catalogues (the project's own small models, never ``../shared/cases``):
``PATTERNS["c2f_chunk_concat"]`` (``tests/test_patterns.py``), ``OPAQUE["gqa_repeat_kv_*"]``
(``tests/test_opaque.py``) and ``HAND_MACS``, ``REBUILT``, ``NOT_DROPPABLE``, ``NOT_FASTER``
(``tests/test_reported.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from autoprune.app.pipeline import not_faster_warning
from autoprune.app.tables import final_rows
from autoprune.errors import ModelError
from autoprune.graph.layers import count_macs, record_layer_specs
from autoprune.graph.policy import Policy
from autoprune.graph.safety import verified_graph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.table import LatencyTable, _build

from ._common import table


def _c2f(patterns, x, export) -> str:
    """(a) The C2f block: exact and left-dense units with reasons, then uniform 30% built and its MACs predicted vs counted."""
    model = patterns.build("c2f_chunk_concat")
    graph, report = verified_graph(model, x, export_check=export)
    policy = Policy.uniform(graph.unit_names, 0.3)
    try:
        pruned = apply_policy(model, policy, graph=graph).eval()
        with torch.no_grad():
            built = "built, forward runs" if pruned(x).shape[0] == len(x) else "built, wrong output"
        counted = count_macs(record_layer_specs(pruned, x))
    except Exception as e:  # noqa: BLE001 - a failure is the result to report
        built, counted = f"FAILS ({type(e).__name__}: {e})", None
    predicted = graph.macs_for(policy.ratios)
    rows = [("c2f_chunk_concat", f"{len(report.exact)}/{len(report.exact) + len(report.left_dense)}: {', '.join(report.exact)}",
             ", ".join(report.left_dense) or "-", built, predicted, counted if counted is not None else "-",
             "equal" if predicted == counted else "DIFFERENT")]
    text = table(["pattern", "exact units", "left dense", "uniform 30%", "MACs predicted", "MACs counted", "predicted vs counted"], rows)
    return text + "\n" + "\n".join(f"- `{u}` left dense: {why}" for u, why in report.left_dense.items()) + "\n"


def _gqa(opaque, x, export) -> str:
    """(b) Grouped-query attention with rotary embeddings: the refusal without ``model.ignore``, then with it."""
    lines = []
    make, _ = opaque.OPAQUE["gqa_repeat_kv_refused"]
    try:
        verified_graph(opaque.build(make), x, export_check=export)
        lines.append("- without `model.ignore`: NOT refused")
    except ModelError as e:
        lines.append(f"- without `model.ignore`: refused in one line{' (several lines!)' if chr(10) in str(e) else ''}: `{e}`")
    make, ignored = opaque.OPAQUE["gqa_repeat_kv_ignored"]
    model = opaque.build(make)
    try:
        graph, report = verified_graph(model, x, ignored=ignored, export_check=export)
    except ModelError as e:
        return "\n".join([*lines, f"- with `model.ignore: {list(ignored)}`: refused: `{e}`"]) + "\n"
    policy = Policy.uniform(graph.unit_names, 0.5)
    pruned = apply_policy(model, policy, graph=graph)
    kept = graph.kept(policy.ratios)
    lines.append(f"- with `model.ignore: {list(ignored)}`: opaque {', '.join(f'`{m}` ({why})' for m, why in report.opaque.items())}; "
                 f"pruned {', '.join(f'`{u}` ({graph.unit(u).features.channels} -> {kept[u]} at 50%)' for u in graph.unit_names)}; "
                 f"MACs at 50% predicted {graph.macs_for(policy.ratios)}, counted {count_macs(record_layer_specs(pruned, x))}")
    lines += [f"- with `model.ignore`, `{u}` left dense: {why}" for u, why in report.left_dense.items()]
    return "\n".join(lines) + "\n"


def _not_faster(reported) -> str:
    """(c) A pruned model whose MACs fall but whose latency hardly does: the measured ratio and the words printed."""
    rows, notes = [], []
    for name in reported.NOT_FASTER:
        dense, pruned = reported.delivered_reports(name)
        words, line = final_rows(dense, pruned)[1].cells()[3], not_faster_warning(dense, pruned)
        below_one = bool(reported.SPEED_UP_BELOW_ONE.search(words + (line or "")))
        rows.append((name, dense.backend, f"{dense.macs / pruned.macs:.2f}x", f"{dense.latency_ms:.4f}",
                     f"{pruned.latency_ms:.4f} [{pruned.latency_ci_ms[0]:.4f}, {pruned.latency_ci_ms[1]:.4f}]",
                     f"{dense.latency_ms / pruned.latency_ms:.3f}", words, "yes" if line else "no (measurably faster)",
                     "YES" if below_one else "no"))
        notes.append(f"- `{name}` warning: {line or 'none: the pruned interval is below the dense latency'}")
    text = table(["model", "runtime", "MACs fell", "dense ms", "pruned ms [95% CI]", "dense / pruned", "words printed",
                  "not-faster warning", "'0.9x faster' printed"], rows)
    return text + "\n" + "\n".join(notes) + "\n"


def _rebuilt(reported, x) -> str:
    """(d) Layers with no builder in the latency table: rebuilt with their arguments, or timed in place; their ms."""
    rows = []
    latency = LatencyTable(threads=1, warmup=1, repeats=3, passes=2)
    for name, (make, _, _) in reported.REBUILT.items():
        spec = next(s for s in record_layer_specs(reported.build(make), x) if s.module_name == "1")
        rebuilt = _build(spec)
        args = ", ".join(f"{k}={getattr(rebuilt, k, v)!r}" for k, v in spec.options if k != "class")
        how = f"rebuilt as `{type(rebuilt).__name__}({args})`" if rebuilt is not None else f"timed in place (`{type(spec.module).__name__}`)"
        ms = latency.spec_ms(spec)
        rows.append((name, spec.kind, str(spec.input_shape), how, f"{ms:.4f}", "yes" if ms > 0 else "NO (0 ms)"))
    return table(["layer", "kind", "input", "how the latency table times it", "ms (fastest call)", "ms > 0"], rows)


def _not_droppable(reported, x) -> str:
    """(e) Same-shape residual blocks not offered as droppable, and the INFO line (``-v``) saying why."""
    rows = []
    for name, (make, block, _) in reported.NOT_DROPPABLE.items():
        graph, lines = reported.not_droppable_lines(reported.build(make), x)
        offered = block in graph.block_names
        rows.append((name, block, "offered" if offered else "not offered", lines.get(block, "NO REASON LOGGED")))
    return table(["block", "module", "droppable", "the line at -v (INFO)"], rows)


def _hand_macs(reported, x) -> str:
    """(f) Hand-written attention: MACs counted vs the hand count; predicted vs counted after pruning; the safety net's verdict."""
    rows = []
    for name, (make, hand, products, _) in reported.HAND_MACS.items():
        model = reported.build(make)
        specs = record_layer_specs(model, x)
        counted, in_products = count_macs(specs), reported.product_macs(specs)
        try:
            graph, report = verified_graph(model, x)
            policy = Policy.uniform(graph.unit_names, 0.5)
            pruned = count_macs(record_layer_specs(apply_policy(model, policy, graph=graph), x))
            verdict = f"exact: {', '.join(report.exact)}; at 50% predicted {graph.macs_for(policy.ratios)}, counted {pruned}"
        except ModelError as e:
            verdict = f"refused: {e}"
        rows.append((name, counted, hand, "equal" if counted == hand else "DIFFERENT", f"{in_products} ({in_products / counted:.0%})",
                     products, verdict))
    return table(["model", "MACs counted", "hand count", "counted vs hand", "of which products (share)", "products by hand",
                  "safety net"], rows)


def reported_section(catalogue: Callable[[str], object], x, export) -> str:
    """The section's markdown: (a)-(f) in order, from the catalogues ``catalogue(name)`` loads."""
    patterns, opaque, reported = catalogue("test_patterns"), catalogue("test_opaque"), catalogue("test_reported")
    parts = [
        ("C2f block (chunk + bottleneck + concat)", _c2f(patterns, x, export)),
        ("Grouped-query attention with rotary embeddings", _gqa(opaque, x, export)),
        ("A pruned model that is not faster", _not_faster(reported)),
        ("Layers the latency table has no builder for", _rebuilt(reported, x)),
        ("Blocks not offered as droppable", _not_droppable(reported, x)),
        ("MACs of hand-written attention", _hand_macs(reported, x)),
    ]
    for title, text in parts:
        print(title, "\n", text, flush=True)
    intro = ("Each pattern a user report of issue 22 showed, rebuilt from the project's own small models (the test catalogues "
             "`PATTERNS`, `OPAQUE`, `NOT_FASTER`, `REBUILT`, `NOT_DROPPABLE`, `HAND_MACS`); every figure below is computed by this run.\n")
    return intro + "".join(f"\n### {title}\n\n{text}" for title, text in parts)


__all__ = ["reported_section"]
