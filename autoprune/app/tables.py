"""What each command shows: its result as rich tables and text lines, ready for the CLI to print.

Every function returns a list of renderables (rich tables or strings); nothing here prints.
A table comparing the dense model with another is built from :class:`Row` objects (the
values unrounded, and how they are shown), which tests check exactly: :func:`search_rows`
for ``autoprune search``, :func:`final_rows` for the dense-vs-pruned table of ``run`` and
``evaluate``; ``estimate``'s table is built from its :class:`~autoprune.app.estimate.EstimateRow`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from autoprune.app.commands import EstimateReport, TrainReport, TransferReport
from autoprune.app.decoder_estimate import DecoderEstimateReport
from autoprune.app.decoder_run import DecoderRunResult
from autoprune.app.experiment import SearchRun
from autoprune.app.model_files import ApplyReport, EvaluateReport, ExportReport, FinetuneReport
from autoprune.app.pipeline import RunResult
from autoprune.measure.backends import backend_class, settings_label
from autoprune.measure.compare import speed_words
from autoprune.search import SearchResult

#: Renderables: rich tables (printed at least this wide) and plain lines.
Shown = list[Any]

#: A cell's value: a number (kept unrounded), text, or None for an empty cell.
Value = float | int | str | None


@dataclass(frozen=True)
class Row:
    """One line of a table of the dense model against another: the values as numbers, and how they are shown.

    Attributes:
        label: The first column.
        dense, other: The dense and the other model's values, unrounded (text where the cell is a
            word, e.g. ``met``; None: an empty cell).
        change: From dense to the other model: a factor or points (shown with ``change_fmt``), a
            remark, or None.
        ci: The 95% confidence interval of ``other`` (shown after it, in its format).
        fmt: How a number is shown, after division by ``scale`` (``"{:.3f}"``, ``"{:,}"``, ``"{:.2f} M"``).
        scale: Divides numbers before ``fmt`` (1e6 for MACs in millions, 1024 for KiB).
        change_fmt: How a numeric change is shown: a format (``"{:+.2f} pts"``, ``"{:.2f}x fewer"``) or a
            function of it (:func:`~autoprune.measure.compare.speed_words` for a speed-up: ``"1.01x slower"``
            below 1, never a speed-up below 1).
    """

    label: str
    dense: Value
    other: Value
    change: Value = None
    ci: tuple[float, float] | None = None
    fmt: str = "{:.3f}"
    scale: float = 1.0
    change_fmt: str | Callable[[float], str] = "{:.2f}x"

    def show(self, value: Value) -> str:
        """One value as shown in this row."""
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        return self.fmt.format(value / self.scale if self.scale != 1 else value)

    def cells(self) -> tuple[str, str, str, str]:
        """``(label, dense, other [ci], change)`` as printed."""
        other = self.show(self.other) + (f" [{self.show(self.ci[0])}, {self.show(self.ci[1])}]" if self.ci is not None else "")
        change = self.change
        if change is not None and not isinstance(change, str):
            change = self.change_fmt(change) if callable(self.change_fmt) else self.change_fmt.format(change)
        return self.label, self.show(self.dense), other, change or ""


def rows_table(title: str, columns: Sequence[str], rows: Sequence[Row], *, label_style: str | None = None,
               label_justify: str = "right", no_wrap: bool = True) -> Table:
    """A rich table of ``rows`` under ``columns``: the label column first, then right-aligned values (as many as ``columns``)."""
    table = Table(title=title)
    table.add_column(columns[0], style=label_style, justify=label_justify, no_wrap=no_wrap)
    for col in columns[1:]:
        table.add_column(col, justify="right", no_wrap=no_wrap)
    for row in rows:
        table.add_row(*row.cells()[: len(columns)])
    return table


def train_table(r: TrainReport) -> Shown:
    """The baseline's accuracy, size and checkpoint."""
    table = Table(title=f"{r.model} on {r.data}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("val accuracy", f"{r.val_accuracy:.4f}")
    table.add_row("test accuracy", f"{r.test_accuracy:.4f}")
    table.add_row("parameters", f"{r.params:,}")
    table.add_row("checkpoint", f"{r.checkpoint} ({r.status})")
    return [table]


def estimate_table(r: EstimateReport | DecoderEstimateReport) -> Shown:
    """One row per variant (dense, uniform channel ratios, unstructured masks): size, speed-up on the backend (and eager), proxy accuracy.

    A decoder's config gives its rows per unit kind (:func:`decoder_estimate_table`)."""
    if isinstance(r, DecoderEstimateReport):
        return decoder_estimate_table(r)
    cfg = r.config
    backend = cfg.latency.backend
    on_torch = backend_class(backend).eager  # a per-layer sum: the eager lookup table's prediction is shown
    table = Table(title=f"{cfg.model.name} on {r.data}: uniform channels vs unstructured masks, timed on {backend} "
                        f"(batch {r.batch_size}, {cfg.latency.threads} threads)")
    cols = ["pruning", "nonzero params", "MACs", "size", f"ms {backend}", "speed [95% CI]", "predicted" if on_torch else "eager", "proxy acc"]
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True)
    for row in r.rows:
        table.add_row(
            row.label, f"{row.nonzero_params:,}", f"{row.macs / 1e6:.2f} M", f"{row.size_bytes / 1024:.0f} KiB", f"{row.latency_ms:.3f}",
            f"{speed_words(1 / row.latency_ratio)} [{1 / row.latency_ci[1]:.2f}-{1 / row.latency_ci[0]:.2f}x]",
            speed_words(1 / row.predicted_ratio) if on_torch else speed_words(1 / row.eager_ratio), f"{row.proxy_accuracy:.4f}",
        )
    secs = {k: sum(row.seconds[k] for row in r.rows) for k in ("prune", "accuracy", "latency")}
    notes = [f"backend: {r.rows[0].backend}" if r.rows else f"backend: {backend}",
             f"speed = dense latency / variant latency on {backend}, measured paired (dense and variant calls interleaved); "
             "below 1 it reads as slower, the interval is of dense / variant"
             + ("; predicted = eager lookup table" if on_torch else "; eager = the same speed-up on eager PyTorch") + ".",
             "uniform channels: every unit loses that share of its channels (Torch-Pruning surgery: tensors shrink). "
             "unstructured masks: the smallest-magnitude conv/linear weights set to zero (torch.nn.utils.prune, global L1), "
             "as many as the largest channel row removes; every shape, so size and MACs, stays dense.",
             "proxy acc = validation accuracy after BN re-estimation; "
             + "; ".join(f"{k} {v:.1f} s" for k, v in secs.items()) + "."]
    return [table, "\n".join(notes)]


def decoder_estimate_table(r: DecoderEstimateReport) -> Shown:
    """One row per decoder variant (dense; per ratio, query heads, KV groups, MLP width, layers): sizes, KL, perplexity, paired latency."""
    decode = r.mode == "decode"
    what = f"decode {r.new_tokens} tokens after a {r.prompt_tokens}-token prompt" if decode else f"prefill {r.prompt_tokens} tokens"
    table = Table(title=f"{r.model}: each unit kind pruned uniformly, timed on eager PyTorch ({what}, batch 1)")
    cols = ["pruning", "params", "heads/KV/MLP/layers", "KL (val)", "perplexity (test)", "ms", "speed-up [95% CI]"] + (["tok/s"] if decode else [])
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True)
    for row in r.rows:
        q, kv, mlp, n = row.sizes
        cells = [row.label, f"{row.params:,}", f"{q}/{kv}/{mlp}/{n}", f"{row.kl:.4f}", f"{row.perplexity:.2f}", f"{row.ms:.1f}",
                 f"{1 / row.latency_ratio:.2f}x [{1 / row.latency_ci[1]:.2f}-{1 / row.latency_ci[0]:.2f}]"]
        table.add_row(*cells, *([f"{row.tokens_per_s:.1f}"] if decode else []))
    notes = ("heads/KV/MLP are those of the first kept layer (every layer is pruned alike). KL = mean per-token KL divergence from the dense "
             f"next-token distribution on validation fortunes, perplexity on test fortunes (blocks of {r.seq_len} tokens); no recovery. "
             "Speed-up = dense / variant latency, measured paired on eager PyTorch; eager decode is noisy.")
    return [table, notes]


def search_summary(run: SearchRun) -> Shown:
    """Dense model against the best policy (:func:`search_rows`); the files written."""
    res = run.result
    if res.best is None:
        return ["no successful evaluation"]
    title = f"{res.searcher}: {res.episodes} episodes in {res.seconds:.0f} s ({60 * res.episodes / max(res.seconds, 1e-9):.1f}/min)"
    table = rows_table(title, ("", "dense", "best policy"), search_rows(run), label_style="bold", label_justify="left", no_wrap=False)
    return [table, *budget_lines(run), f"policy: {run.policy_path}\nhistory: {run.history_path}"]


def budget_lines(run: SearchRun) -> list[str]:
    """One line when the budget is not met: the backend was too noisy (naming the setting), or the best reachable interval."""
    res, ev = run.result, run.evaluator
    if res.best is None or res.best.metrics.feasible:
        return []
    if "latency_warning" in res.extras:
        return [res.extras["latency_warning"]]
    if ev.budget.metric != "latency":
        return []
    ok = [e for e in res.history if not e.metrics.failed]
    fastest = min(ok, key=lambda e: e.metrics.latency_ci[1], default=res.best).metrics.latency
    return [f"budget.target: {ev.target:.3f} of dense latency is not reached under the conservative estimate (the interval's upper "
            f"end); the best reachable ratio is {fastest.show()}; raise budget.target or pruning.max_ratio"]


def search_rows(run: SearchRun) -> list[Row]:
    """The rows of the search summary: proxy, latency ratio and ms, MACs, params, budget, reward, blocks dropped.

    The latency ratio is the best policy's estimate (:attr:`Metrics.latency`): re-measured in a
    fresh process when the search chose its finalist there (both figures are in the result's
    ``extras["finalists"]``). Both "latency ms" values use one dense figure, that of the process
    that measured the ratio (:func:`best_latency_ms`), so they agree with the ratio beside them.
    """
    ev, best = run.evaluator, run.result.best
    if best is None:
        return []
    m, backend, scorer = best.metrics, ev.latency.backend, getattr(ev, "scorer", None)
    est = m.latency
    where = "fresh process" if est.source == "fresh" else "search"
    return [
        Row(f"proxy {getattr(scorer, 'label', None) or getattr(scorer, 'metric', 'accuracy')} (val)", ev.dense_accuracy, m.accuracy, fmt="{:.4f}"),
        Row(f"latency ratio (paired, {backend}, {where}, {est.n} rounds)", 1.0, est.mean, ci=(est.low, est.high)),
        Row(f"latency ms ({backend})", dense_ms_of(run), best_latency_ms(run)),
        Row("MAC ratio", 1.0, m.macs_ratio),
        Row("params", ev.dense_params, m.params, fmt="{:,}"),
        Row(f"budget ({ev.budget.metric} <= {ev.target:.3f}{', upper end of the interval' if ev.budget.metric == 'latency' else ''})",
            None, "met" if m.feasible else "NOT met"),
        Row("reward", None, m.reward, fmt="{:.4f}"),
        Row("blocks dropped", None, ", ".join(best.policy.drop) or "-"),
    ]


def dense_ms_of(run: SearchRun) -> float:
    """The dense ms of the process that measured the best policy's ratio: the finalists' fresh process, or this one."""
    return float(run.result.extras.get("finalist_dense_ms", run.evaluator.dense_ms))


def best_latency_ms(run: SearchRun) -> float:
    """The best policy's latency in ms against :func:`dense_ms_of` (NaN without a best or a ratio)."""
    best = run.result.best
    ratio = best.metrics.latency_ratio if best is not None else math.nan
    return float(ratio) * dense_ms_of(run) if ratio is not None else math.nan


def run_tables(res: RunResult | DecoderRunResult) -> Shown:
    """The search summary, then dense against pruned on the test split, and where the results went."""
    if isinstance(res, DecoderRunResult):
        return decoder_run_tables(res)
    cfg = res.config
    threads = f", {cfg.latency.threads} threads" if cfg is not None else ""
    title = f"{cfg.name if cfg else 'run'}: dense vs pruned (test split, batch {cfg.latency.batch_size if cfg else 1}{threads})"
    return [*search_summary(res.search), dense_vs_pruned(title, res.dense, res.pruned, res.report), *deployment_lines(res.report),
            *table_cache_lines(res.report), f"pruned model: {res.model_path}" + (f"\nonnx: {res.onnx['path']}" if res.onnx else "")
            + (f"\ntokenizer: {res.onnx['tokenizer']}" if res.onnx and "tokenizer" in res.onnx else ""),
            f"MLflow run {res.run_id}: see it with 'autoprune ui'"]


def decoder_run_tables(res: DecoderRunResult) -> Shown:
    """A decoder's run: the search summary, dense against pruned (KL and perplexity before -> after distillation, prefill ms,
    decode tokens/s, parameters, budget), the two greedy completions, and where the results went."""
    r, cfg = res.report, res.config
    rows = [Row(f"{split} {what}", r[f"dense_{split}_{what}"], f"{r[f'pruned_{split}_{what}_before_distill']:.4f} -> "
                f"{r[f'pruned_{split}_{what}_after_distill']:.4f}", "before -> after distillation", fmt="{:.4f}")
            for split in ("val", "test") for what in ("kl", "perplexity")]
    rows += [
        Row(f"prefill ms ({r['prompt_tokens']} tokens, paired)", r["dense_prefill_ms"], r["pruned_prefill_ms"], r["prefill_speedup"],
            change_fmt=speed_words),
        Row(f"decode tokens/s ({r['new_tokens']} new, paired)", r["dense_decode_tokens_per_s"], r["pruned_decode_tokens_per_s"],
            r["decode_speedup"], fmt="{:.1f}", change_fmt=speed_words),
        Row("params", r["dense_params"], r["pruned_params"], r["dense_params"] / max(1, r["pruned_params"]), fmt="{:,}", change_fmt="{:.2f}x fewer"),
        Row(f"budget ({'latency in ' + r['latency_mode'] + ' mode' if r['budget_metric'] == 'latency' else 'MACs per token'} "
            f"<= {r['budget_target']:.3f})", None,
            "met" if r["budget_met"] else "NOT met"),
    ]
    title = f"{cfg.name if cfg else 'run'}: dense vs pruned decoder (eager PyTorch, {cfg.latency.threads if cfg else 1} threads)"
    return [*search_summary(res.search), rows_table(title, ("", "dense", "pruned", "change"), rows),
            f"{r['completion_prompt']!r}\n  dense:  {r['dense_completion']!r}\n  pruned: {r['pruned_completion']!r}",
            f"pruned decoder: {res.model_path} (reload: model.name hf:{res.model_path})", f"MLflow run {res.run_id}: see it with 'autoprune ui'"]


def dense_vs_pruned(title: str, d: Any, p: Any, report: dict[str, Any] | None = None) -> Table:
    """Dense against pruned (:func:`final_rows`) as a table."""
    return rows_table(title, ("", "dense", "pruned", "change"), final_rows(d, p, report))


def final_rows(d: Any, p: Any, report: dict[str, Any] | None = None) -> list[Row]:
    """Dense against pruned (:class:`~autoprune.app.pipeline.ModelReport`): test accuracy (or an encoder's fidelity, from
    ``report``), latency on the serving backend and, beside a non-eager one, on eager PyTorch, MACs, params, size."""
    r = report or {}
    if r.get("proxy_metric") == "fidelity":
        rows = [
            Row("test fidelity (cosine+10-NN)/2", d.test_accuracy, f"{r['pruned_test_fidelity_before_finetune']:.4f} -> {p.test_accuracy:.4f}",
                "before -> after distillation", fmt="{:.4f}"),
            Row("test cosine / 10-NN agreement", "1.0000 / 1.0000", f"{r['pruned_test_cosine_after_finetune']:.4f} / "
                f"{r['pruned_test_neighbour_agreement_after_finetune']:.4f}", "after distillation"),
        ]
    else:
        rows = [Row("test accuracy", d.test_accuracy, p.test_accuracy, 100 * (p.test_accuracy - d.test_accuracy), fmt="{:.4f}",
                    change_fmt="{:+.2f} pts")]
    if getattr(p, "latency", None) is not None:
        est = p.latency
        rows.append(Row(f"latency ratio on {p.backend} ({'fresh process' if est.source == 'fresh' else 'paired'}, {est.n} rounds)",
                        1.0, est.mean, ci=(est.low, est.high)))
    rows.append(Row(f"latency ms on {p.backend} [95% CI]", d.latency_ms, p.latency_ms, d.latency_ms / p.latency_ms,
                    ci=tuple(p.latency_ci_ms), change_fmt=speed_words))
    if "budget_met" in r:  # judged on this final measurement, not on the search's
        rows.append(Row(f"budget ({r['budget_metric']} <= {r['budget_target']:.3f}, final measurement)", None,
                        f"{r['budget_value']:.3f}" + (f" (upper end of its 95% CI {r['final_latency_high']:.3f})"
                                                       if r["budget_metric"] == "latency" and r.get("final_latency_high") is not None else "")
                        + ": " + ("met" if r["budget_met"] else "NOT met")))
    if not backend_class(p.backend).eager:
        rows.append(Row("latency ms on torch eager", d.eager_latency_ms, p.eager_latency_ms, d.eager_latency_ms / p.eager_latency_ms,
                        change_fmt=speed_words))
    return [
        *rows,
        Row("MACs", d.macs, p.macs, d.macs / max(1, p.macs), fmt="{:.2f} M", scale=1e6, change_fmt="{:.2f}x fewer"),
        Row("params", d.params, p.params, d.params / max(1, p.params), fmt="{:,}", change_fmt="{:.2f}x fewer"),
        Row("size", d.size_bytes, p.size_bytes, d.size_bytes / max(1, p.size_bytes), fmt="{:.0f} KiB", scale=1024, change_fmt="{:.2f}x smaller"),
    ]


def deployment_lines(report: dict[str, Any]) -> Shown:
    """The int8 decision and the total speed-up, dense eager PyTorch -> deployed artifact, as lines."""
    lines: Shown = []
    if "int8_decision" in report:
        lines.append(report["int8_decision"])
    if "total_speedup" in report:
        lines.append(f"total: dense eager PyTorch {report['dense_eager_latency_ms']:.3f} ms -> deployed {report['deployed_artifact']} "
                     f"{report['deployed_latency_ms']:.3f} ms: {speed_words(report['total_speedup'])}")
    return lines


def table_cache_lines(report: dict[str, Any]) -> Shown:
    """What the latency-table cache gave (``latency_table_*`` entries of a report), as one line; none without them."""
    if "latency_table_reused" not in report:
        return []
    r = report
    saved = r["latency_table_seconds_saved"]
    saved_words = f"{saved:.3g} s of measurement saved" if isinstance(saved, (int, float)) and math.isfinite(saved) else "time saved not recorded"
    return [f"latency table cache ({r['latency_table_unit']}): {r['latency_table_reused']} reused "
            f"({saved_words}), {r['latency_table_measured']} measured"]


def worker_line(res: SearchResult, study: str) -> Shown:
    """How many trials this worker ran, and the study's best so far."""
    mine = res.extras.get("trial_numbers", [])
    best = res.best
    return [f"worker done: ran {len(mine)} trial(s) of study {study!r} ({res.episodes} finished in all); "
            + (f"best reward so far {best.metrics.reward:.4f} (trial {best.index})" if best else "no successful trial")]


def apply_lines(r: ApplyReport) -> Shown:
    """What pruning saved and where the model went."""
    lines = [f"pruned {r.model}: params {r.dense_params:,} -> {r.params:,}, MACs {r.dense_macs / 1e6:.2f} M -> {r.macs / 1e6:.2f} M; "
             f"test accuracy {r.test_accuracy:.4f}; written to {r.out}"]
    if r.ignored:
        lines.append(f"layers left unpruned, as in the policy's search: {', '.join(r.ignored)}")
    if r.run_id:
        lines.append(f"MLflow run {r.run_id} (experiment 'apply')")
    return lines


def transfer_lines(r: TransferReport) -> Shown:
    """The mapping table, the candidates tried, and the measured result."""
    res = r.result
    m = res.metrics or {}
    shown: Shown = [r.mapping]
    if len(res.candidates) > 1:
        shown.append("\n" + r.candidates + "\n")
    how = "same architecture: taken by unit name" if res.identity else f"from {r.source_model}"
    shown.append(f"{how}; scale {res.scale:.3f}; predicted {res.metric} {res.predicted_value:.3f}, measured "
                 f"{m.get('value', float('nan')):.3f} (target {res.target:.3f}, {'met' if m.get('feasible') else 'NOT met'}); "
                 f"proxy accuracy {m.get('accuracy', float('nan')):.4f} (dense {r.dense_accuracy:.4f}); written to {r.out}")
    shown += table_cache_lines({f"latency_table_{k}": v for k, v in r.table_cache.items()})
    if r.run_id:
        shown.append(f"MLflow run {r.run_id} (experiment 'transfer')")
    return shown


def finetune_lines(r: FinetuneReport) -> Shown:
    """The fine-tuned accuracy and file."""
    return [f"fine-tuned for {r.epochs:g} epochs: test accuracy {r.test_accuracy:.4f}; written to {r.out}"]


def evaluate_lines(r: EvaluateReport) -> Shown:
    """Accuracy of a saved model, then dense against it on the serving backend and eager PyTorch, then the total speed-up."""
    cfg = r.config
    d, p = r.dense, r.pruned
    title = f"{cfg.model.name}: dense baseline vs {r.source} (test split, batch {r.batch_size}, {cfg.latency.threads} threads)"
    return [f"{r.source}: test accuracy {r.test_accuracy:.4f} ({100 * (p.test_accuracy - d.test_accuracy):+.2f} pts vs dense), "
            f"{r.macs / 1e6:.2f} M MACs, {r.params:,} params",
            dense_vs_pruned(title, d, p), *deployment_lines(r.report),
            f"backend: {settings_label(r.report.get('backend_settings') or {'backend': cfg.latency.backend})}"]


def export_lines(r: ExportReport) -> Shown:
    """The files written."""
    lines = [f"wrote {r.onnx} (max |onnx - torch| = {r.max_abs_diff:.2e})"]
    if r.quantized is not None:
        lines.append(f"wrote {r.quantized}")
    return lines


def check_table(model: str, graph: Any, report: Any) -> Shown:
    """The safety net's verdict on every unit (``autoprune check``), the opaque modules, and a closing count.

    Args:
        graph, report: What :func:`autoprune.graph.safety.verified_graph` returned.
    """
    table = Table(title=f"{model}: the safety net (surgery vs masked dense model in float64 within 1e-5, forward, MACs, export)")
    for col in ("unit", "channels", "allowed step", "result"):
        table.add_column(col, no_wrap=False)
    for u in graph.units:
        diff = report.max_diff.get(u.name)
        table.add_row(u.name, str(u.features.channels), str(u.constraint.step), "exact" + (f" (max diff {diff:.1e})" if diff is not None else ""))
    failed = {name for by_check in report.failed.values() for name in by_check}
    for name, why in graph.skipped.items():
        table.add_row(name, "", "", f"left dense: {why}")
    for name, why in report.opaque.items():
        table.add_row(name, "", "", f"opaque (channels kept): {why}")
    return [table, f"{len(graph.units)} unit(s) exact, {len(failed)} failing a check and "
                   f"{len(graph.skipped) - len(failed)} not prunable (left dense in every command), "
                   f"{len(report.opaque)} opaque module(s), {len(graph.blocks)} droppable block(s)"]


__all__ = [
    "Row", "apply_lines", "best_latency_ms", "budget_lines", "check_table", "dense_ms_of", "dense_vs_pruned", "deployment_lines", "estimate_table", "evaluate_lines",
    "decoder_run_tables", "export_lines", "final_rows", "finetune_lines", "rows_table", "run_tables", "search_rows", "search_summary",
    "table_cache_lines", "train_table", "transfer_lines", "worker_line",
]  # fmt: skip
