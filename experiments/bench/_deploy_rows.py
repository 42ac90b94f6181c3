"""Deployment rows of ``runtimes.py``: which policy is best *on the serving runtime*, after fine-tuning.

One setting = (model, batch, serving backend). Four policies at ``--target`` of the dense
latency, each from its own search on the validation proxy:

- ``searched on <backend>``: Optuna-TPE with the reward measured on the serving backend;
- ``searched on eager PyTorch``: the same search on eager latency (the old default), re-measured on the backend;
- ``uniform``: one ratio everywhere, bisected on measured latency on the backend;
- ``global``: Torch-Pruning global magnitude pruning, its global ratio bisected the same way.

Each is applied, BN-recalibrated and fine-tuned with the same budget (distillation on), then
scored on the test split; exported to ONNX (fp32) and static QDQ int8 (the pipeline's
``decide_int8``). Latency is re-measured in a **fresh process**
(:func:`autoprune.measure.fresh.remeasure_in_fresh_process`): paired against the dense model on
the serving backend (fp32), int8 against dense fp32 on the runtime that would serve it, and the
deployed artifact against the dense model in eager PyTorch (the user's starting point, timed in a
fresh process of its own). One JSON per setting under ``experiments/results/runtimes_rows/``, so
settings can be run one at a time and the section is rebuilt from all of them:

    python -m experiments.bench._deploy_rows section                  # rebuild the section of runtimes.md
    python -m experiments.bench._deploy_rows refresh ROWS_JSON        # re-run only its fresh-process measurement
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

from ._common import Goal, command, git_commit, goals_report, table, zoo_model

RESULTS = Path(__file__).resolve().parents[1] / "results"
ROWS_DIR = RESULTS / "runtimes_rows"
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "torch": "eager PyTorch"}


def _overrides(model: str, batch: int, backend: str, episodes: int, epochs: float, target: float) -> list[str]:
    return [
        f"model.name={model}", f"latency.batch_size={batch}", f"latency.backend={backend}", f"budget.target={target}",
        f"search.episodes={episodes}", f"finetune.epochs={max(1, round(epochs))}", "finetune.distill=true", "export.quantize=true",
        "proxy.bn_batches=2", "proxy.bn_batch_size=256",
    ]


def run_setting(model: str, batch: int, backend: str, *, episodes: int, epochs: float, target: float, threads: int = 2) -> dict[str, Any]:
    """Search, fine-tune, export and re-measure the four policies of one setting; returns (and writes) its JSON."""
    from autoprune.app.experiment import build_evaluator, load_baseline
    from autoprune.app.pipeline import apply_best, decide_int8
    from autoprune.config.loading import load_config
    from autoprune.config.settings import finetune_settings, round_to
    from autoprune.formats.onnx import export_onnx
    from autoprune.formats.pruned import save_pruned
    from autoprune.measure.backends import backend_class
    from autoprune.objective.proxy import split_metrics
    from autoprune.search import get_searcher
    from autoprune.training.finetune import finetune

    torch.set_num_threads(threads)
    base_over = _overrides(model, batch, backend, episodes, epochs, target) + [f"latency.threads={threads}"]
    cfg = load_config(DEMO, base_over)
    baseline = load_baseline(cfg, progress=False)
    dense = baseline.model.eval()
    tmp = Path(tempfile.mkdtemp(prefix="ap-rows-"))
    zoo = zoo_model(cfg, baseline)
    save = {"model_name": zoo.name, "in_channels": zoo.in_channels, "num_classes": zoo.num_classes, "input_size": zoo.input_size}
    save_pruned(tmp / "dense.pt", dense, **save)  # pickle-free: the fresh process (and refresh) rebuild it
    dense_test = split_metrics(dense, baseline.data.test)["accuracy"]
    label = LABELS[backend]
    tpe = {"sampler": "tpe", "n_startup_trials": 15}
    # (row, searcher, its params, its episodes, the backend it searches on)
    specs = [
        (f"searched on {label}", "optuna", tpe, episodes, backend),
        ("searched on eager PyTorch", "optuna", tpe, episodes, "torch"),
        ("uniform", "uniform", {}, min(episodes, 8), backend),
        ("global (Torch-Pruning)", "global", {}, min(episodes, 8), backend),
    ]
    if backend_class(backend).eager:
        specs.pop(1)
    rows = []
    for name, searcher, params, row_episodes, search_backend in specs:
        row_cfg = load_config(DEMO, base_over + [f"latency.backend={search_backend}", f"search.searcher={searcher}"])
        ev = build_evaluator(row_cfg, baseline)
        t0 = time.perf_counter()
        res = get_searcher(searcher, params, progress=False).search(ev, row_episodes, seed=0)
        search_s = time.perf_counter() - t0
        best = res.best
        pruned = apply_best(row_cfg, baseline, best.policy, evaluator=ev)
        t0 = time.perf_counter()
        finetune(pruned, baseline.data, dataclasses.replace(finetune_settings(row_cfg), epochs=epochs), teacher=dense, progress=False)
        ft_s = time.perf_counter() - t0
        pruned.eval()
        acc = split_metrics(pruned, baseline.data.test)["accuracy"]
        slug = "eager" if backend_class(search_backend).eager and not backend_class(backend).eager else name.split()[0]
        (tmp / slug).mkdir(exist_ok=True)
        save_pruned(tmp / f"{slug}.pt", pruned, **save)
        export_onnx(pruned, baseline.data.example_input(batch), tmp / f"{slug}.onnx")
        int8 = decide_int8(cfg, baseline, tmp / f"{slug}.onnx", acc, tmp / slug, keep_rejected=True)
        rows.append({
            "policy": name, "slug": slug, "searcher": searcher, "search_backend": search_backend, "round_to": round_to(row_cfg),
            "episodes": len(res.history), "search_s": search_s, "episodes_per_min": 60 * len(res.history) / search_s,
            "search_measured_ratio": best.metrics.value, "proxy_accuracy": best.metrics.accuracy, "blocks_dropped": len(best.policy.drop),
            "finetune_s": ft_s, "test_accuracy": acc, "int8_test_accuracy": int8["test_accuracy"], "int8_kept": int8["kept"],
            "int8_decision": int8["reason"], "model": str(tmp / f"{slug}.pt"), "onnx": str(tmp / f"{slug}.onnx"), "int8_onnx": int8["path"],
        })
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("model", "onnx", "int8_onnx")}), file=sys.stderr, flush=True)
    fresh = remeasure(tmp, rows, backend=backend, batch=batch, threads=threads, options=dict(cfg.latency.backend_options or {}))
    for row, m in zip(rows, fresh.pop("rows")):
        row.update(m)
    result = {
        "model": model, "batch": batch, "backend": backend, "target": target, "episodes": episodes, "finetune_epochs": epochs,
        "threads": threads, "dense_test_accuracy": dense_test, **fresh, "rows": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": open("/proc/loadavg").read().split()[:3],
        "command": command(),
        "commit": git_commit(),
    }
    ROWS_DIR.mkdir(parents=True, exist_ok=True)
    (ROWS_DIR / f"{model}-b{batch}-{backend}.json").write_text(json.dumps(result, indent=1))
    return result


def remeasure(tmp: Path, rows: list[dict], *, backend: str, batch: int, threads: int, options: dict) -> dict[str, Any]:
    """The rows' fresh-process figures: fp32 and int8 against dense where served, and dense in eager PyTorch.

    Two new processes (:func:`autoprune.measure.fresh.remeasure_in_fresh_process`): dense alone on eager
    PyTorch (no runtime session has ever run in it), then every row's fp32 model against dense on
    ``backend`` (5 + 40 paired rounds) and its int8 file against dense fp32 on the runtime that would
    serve it (``backend`` when it opens ONNX files, else ONNX Runtime).

    Returns:
        ``{"rows": [per-row figures], "dense_backend_ms", "dense_eager_ms", "int8_dense_ms", "backend_settings"}``.
    """
    from autoprune.formats.pruned import load_pruned
    from autoprune.measure.fresh import remeasure_in_fresh_process

    spec = load_pruned(tmp / "dense.pt")[1]["model"]
    shape = (batch, spec["in_channels"], spec["input_size"], spec["input_size"])
    eager = remeasure_in_fresh_process(tmp / "dense.pt", [], shape, backend="torch", threads=threads)
    served = remeasure_in_fresh_process(tmp / "dense.pt", [r["model"] for r in rows], shape, backend=backend, threads=threads,
                                        backend_options=options, rounds=40, int8_files=[r["int8_onnx"] for r in rows])
    int8_runtime = served.int8.settings["backend"]
    out_rows = [{"fresh_ratio": fp32.ratio, "fresh_ci": [fp32.ci_low, fp32.ci_high], "fresh_ms": fp32.ms, "fresh_int8_ratio": int8.ratio,
                 "fresh_int8_ms": int8.ms, "int8_runtime": int8_runtime} for fp32, int8 in zip(served.ratios, served.int8.ratios)]
    return {"rows": out_rows, "dense_backend_ms": served.dense_ms, "dense_eager_ms": eager.dense_ms, "int8_dense_ms": served.int8.reference_ms,
            "backend_settings": served.settings}


def section() -> str:
    """The markdown section built from every setting's JSON under ``runtimes_rows/``."""
    files = sorted(ROWS_DIR.glob("*.json"))
    if not files:
        return ""
    text = ("## Which policy is fastest where it is served (searched on the runtime vs eager vs uniform vs global)\n\n"
            "Each policy from its own search on the validation proxy at the setting's target; then the same "
            "BN re-estimation and fine-tuning (distillation from the dense model, T=4, alpha 0.7, SGD cosine), test split "
            "accuracy, ONNX export and static QDQ int8 (kept only if faster and within 1.0 point). **fresh ratio**: "
            "latency / dense on the serving backend, re-measured in a new process (40 paired rounds); int8 is timed against "
            "dense fp32 on the runtime that would serve it (the backend itself for ONNX Runtime and OpenVINO). **deployed**: the "
            "faster of fp32 and int8 if int8 was kept; its speed-up is against the dense model in eager PyTorch at the same batch, "
            "measured in a fresh process in which no serving-runtime session has run.\n\n")
    goals = []
    for f in files:
        s = json.loads(f.read_text())
        label = LABELS[s["backend"]]
        text += (f"### {s['model']}, batch {s['batch']}, served on {label}: target {s['target']} of dense\n\n"
                 f"- command: `{s['command']}` (commit {s.get('commit', 'before seeding')}); date {s['date']}"
                 + (f" (load average at the end {' '.join(s['load_average'])})" if "load_average" in s else "")
                 + f"; {s['threads']} threads; search {s['episodes']} episodes (Optuna-TPE; "
                 f"uniform/global at most 8 measured evaluations); fine-tune {s['finetune_epochs']} epoch(s) with distillation\n"
                 f"- dense: test accuracy {s['dense_test_accuracy']:.4f}; {s['dense_backend_ms']:.3f} ms on {label}, "
                 f"{s['dense_eager_ms']:.3f} ms in eager PyTorch ({s['dense_eager_ms'] / s['dense_backend_ms']:.1f}x); backend `{s['backend_settings']}`\n\n")
        rows = []
        for r in s["rows"]:
            r.setdefault("fresh_int8_ratio", r.get("fresh_int8_ratio_on_ort"))
            r.setdefault("fresh_int8_ms", r.get("fresh_int8_ms_on_ort"))
            r.setdefault("int8_runtime", "onnxruntime")
            deployed_ms = min(r["fresh_ms"], r["fresh_int8_ms"]) if r["int8_kept"] else r["fresh_ms"]
            deployed_acc = r["int8_test_accuracy"] if r["int8_kept"] and r["fresh_int8_ms"] < r["fresh_ms"] else r["test_accuracy"]
            r["deployed_ms"], r["deployed_acc"] = deployed_ms, deployed_acc
            rows.append((r["policy"], r["round_to"] or "-", r["episodes"], f"{r['episodes_per_min']:.1f}", r["search_measured_ratio"],
                         r["fresh_ratio"], f"[{r['fresh_ci'][0]:.3f}, {r['fresh_ci'][1]:.3f}]", r["blocks_dropped"], r["proxy_accuracy"],
                         r["test_accuracy"], f"{100 * (r['test_accuracy'] - s['dense_test_accuracy']):+.2f}",
                         f"{r['fresh_int8_ratio']:.3f} ({LABELS[r['int8_runtime']]})", r["int8_test_accuracy"], "yes" if r["int8_kept"] else "no",
                         f"{deployed_ms:.3f}", f"{s['dense_eager_ms'] / deployed_ms:.1f}x"))
        text += table(["policy", "round_to", "episodes", "episodes/min", "ratio in search", "fresh ratio", "95% CI", "blocks dropped",
                       "proxy acc", "test acc", "vs dense (pts)", "int8 / dense fp32 (same runtime)", "int8 test acc", "int8 kept",
                       "deployed ms", "deployed vs dense eager"], rows) + "\n"
        goals += _goals(s)
    text += goals_report(goals, "### Goals (issue 13)")
    return text


#: Where the rows section starts in ``runtimes.md``; :func:`write_section` replaces everything after it.
MARKER = "\n---\n\n<!-- deployment rows: rebuilt from experiments/results/runtimes_rows/*.json -->\n"
CAVEAT = ("**Read with care.** These rows ran on a 2-core machine shared with other jobs (load average 5-8 for the settings "
          "that do not record it; later ones state it in their header line). The fresh-process ratios carry their 95% CIs; the "
          "eager-PyTorch milliseconds (hence 'deployed vs dense eager') suffer most from contention (dense eager ResNet-20 is "
          "about 1.06 ms on a quiet core). The OpenVINO setting ran before Optuna's baseline seeding existed; its fresh-process "
          "figures were re-taken with `python experiments/bench/_deploy_rows.py refresh experiments/results/runtimes_rows/resnet20-b1-openvino.json`. "
          "An earlier ResNet-20/ONNX Runtime run without seeding, on a less loaded machine, is kept in `runtimes_rows/pre-seeding/` "
          "(searched 0.9065 test at 0.455 fresh ratio; eager-searched 0.8688 at 0.481; uniform 0.8542 at 0.332; global 0.9186 at 0.521).\n\n")


def write_section(path: Path = RESULTS / "runtimes.md") -> Path:
    """Replace the rows section of ``runtimes.md`` (everything after :data:`MARKER`) with :func:`section`; the one writer of it."""
    text = path.read_text() if path.exists() else ""
    if MARKER in text:
        text = text[: text.index(MARKER)]
    path.write_text(text.rstrip("\n") + "\n" + MARKER + "\n# Serving runtimes: deployment rows\n\n" + CAVEAT + section())
    return path


def _goals(s: dict) -> list[Goal]:
    rows = {r["slug"]: r for r in s["rows"]}
    searched = rows["searched"]
    dense = s["dense_test_accuracy"]
    name = f"{s['model']} b{s['batch']} on {LABELS[s['backend']]}"
    gap = 100 * (dense - searched["test_accuracy"])
    out = [Goal(f"{name}: searched policy within 1.0 point of dense", f"{-gap:+.2f} pts", gap <= 1.0)]
    for other in ("uniform", "global"):
        if other in rows:
            d = 100 * (searched["test_accuracy"] - rows[other]["test_accuracy"])
            out.append(Goal(f"{name}: searched >= {other} + 1.0 point", f"{d:+.2f} pts", d >= 1.0))
    ratio = searched["fresh_ratio"] / s["target"]
    out.append(Goal(f"{name}: fresh-process latency <= 1.05 x target", f"{searched['fresh_ratio']:.3f} = {ratio:.2f} x target", ratio <= 1.05))
    if s["backend"] == "onnxruntime" and s["batch"] == 1:
        out.append(Goal(f"{name}: search >= 30 episodes/min", f"{searched['episodes_per_min']:.1f}", searched["episodes_per_min"] >= 30))
        speed = s["dense_eager_ms"] / searched.get("deployed_ms", searched["fresh_ms"])
        loss = 100 * (dense - searched.get("deployed_acc", searched["test_accuracy"]))
        out.append(Goal(f"{name}: deployed artifact >= 15x faster than dense eager at <= 1 point loss", f"{speed:.1f}x, {-loss:+.2f} pts",
                        speed >= 15 and loss <= 1.0))
    if "eager" in rows:
        out.append(Goal(f"{name}: the eager-searched policy re-measured here", f"{rows['eager']['fresh_ratio']:.3f} of dense (target {s['target']})", None))
    return out


def refresh(json_path: str) -> None:
    """Re-run only the fresh-process measurement of a saved setting (its models are still in the temporary folder)."""
    path = Path(json_path)
    s = json.loads(path.read_text())
    tmp = Path(s["rows"][0]["model"]).parent
    fresh = remeasure(tmp, s["rows"], backend=s["backend"], batch=s["batch"], threads=s["threads"], options={})
    for row, m in zip(s["rows"], fresh.pop("rows")):
        row.pop("fresh_int8_ratio_on_ort", None)
        row.pop("fresh_int8_ms_on_ort", None)
        row.update(m)
    s.update({**fresh, "remeasured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    path.write_text(json.dumps(s, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("section", help="rebuild the rows section of runtimes.md from runtimes_rows/*.json")
    again = sub.add_parser("refresh", help="re-run only the fresh-process measurement of one saved setting, then rebuild the section")
    again.add_argument("json", help="the setting's JSON under runtimes_rows/ (its pruned-model files must still exist)")
    args = parser.parse_args()
    if args.action == "refresh":
        refresh(args.json)
    print(f"wrote {write_section()}")


if __name__ == "__main__":
    main()
