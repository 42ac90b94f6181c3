"""Transfer benchmark: reuse a ResNet-20 search on ResNet-32, ResNet-56 and a MobileNetV2-style net.

Source: on ResNet-20 / Fashion-MNIST at 50% of dense batch-1 latency, an Optuna-TPE search
(its policy file, with the model fingerprint) and a PPO search (its agent bundle).

For each target model, at the same latency target, side by side:

- ``uniform``: one ratio for every unit, bisected on measured latency (the classical baseline);
- ``policy transfer``: the source policy mapped by depth / type / stage / coupling, re-fitted
  to the budget by bisection on the lookup table for 3 drop sets (the mapped one, a shallower
  and a deeper cut), each measured, the best kept (``autoprune transfer --candidates 3``);
- ``zero-shot agent``: the PPO agent run on the new model's environment (best of 3 episodes,
  the first deterministic; ``autoprune search --agent ... --zero-shot``);
- ``transfer + warm TPE``: the transferred candidates enqueued as the first trials of a TPE
  search (``autoprune search --warm-start ...``); transfer and search together use 10% of the
  fresh search's evaluations;
- ``fresh TPE``: a full search on the target.

Reported per method: proxy accuracy (validation split, after BN re-estimation), the measured
latency ratio, the wall time of finding the policy, and the test accuracy after the same
short fine-tune (applied as ``autoprune run`` applies it: ``apply_best``, BN re-estimated). "share of gain" = (method - uniform) / (fresh - uniform). Baselines are
trained by ``autoprune train`` with a short schedule (see the results file).

    python -m experiments.bench.transfer [--episodes 100] [--seeds 3] [--finetune-epochs 0.2] [--targets resnet32,resnet56,mobilenetv2]

Each (target, seed)'s rows are kept in ``experiments/results/transfer.jsonl`` as they finish, so an
interrupted run goes on where it stopped when rerun; ``--fresh`` starts over (source searches too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autoprune.app.experiment import build_evaluator, load_baseline
from autoprune.app.pipeline import apply_best
from autoprune.config.loading import parse_config
from autoprune.formats.policy_file import policy_document
from autoprune.graph.policy import model_fingerprint
from autoprune.objective.proxy import split_metrics
from autoprune.search import get_searcher
from autoprune.training.finetune import FinetuneSettings, finetune
from autoprune.transfer import transfer

from ._common import RESULTS, Goal, goals_report, header, table, write

PARTS = RESULTS / "transfer.jsonl"
MIN_GAIN = 0.005
SOURCE_DIR = RESULTS / "transfer_source"


# The committed baselines. Named explicitly: without model.checkpoint, load_baseline trains a model it does not find.
CHECKPOINTS = RESULTS.parent / "checkpoints"


def checkpoint(model: str) -> Path:
    path = CHECKPOINTS / f"{model}-fashion_mnist.pt"
    if not path.is_file():
        raise SystemExit(f"no committed baseline {path}; train it with 'autoprune train --model {model} --data fashion_mnist'")
    return path


def setup(model: str, target: float, threads: int):
    cfg = parse_config({"name": f"bench-transfer-{model}", "model": {"name": model, "checkpoint": str(checkpoint(model))},
                        "data": {"name": "fashion_mnist"},
                        "budget": {"target": target}, "latency": {"threads": threads}})
    baseline = load_baseline(cfg, progress=False)
    return cfg, baseline, build_evaluator(cfg, baseline)


def source(episodes: int, target: float, threads: int) -> tuple[dict, Path, list[dict]]:
    """Search ResNet-20 with TPE (policy) and PPO (agent); cached in results/transfer_source/."""
    pol_path, agent_dir, rows_path = SOURCE_DIR / "policy.json", SOURCE_DIR / "agent", SOURCE_DIR / "rows.json"
    if pol_path.is_file() and (agent_dir / "agent.zip").is_file() and rows_path.is_file():
        return json.loads(pol_path.read_text()), agent_dir, json.loads(rows_path.read_text())
    SOURCE_DIR.mkdir(parents=True, exist_ok=True)
    _, baseline, ev = setup("resnet20", target, threads)
    rows = []
    t0 = time.perf_counter()
    tpe = get_searcher("optuna", {"sampler": "tpe", "n_startup_trials": 15}, progress=False).search(ev, episodes, seed=0)
    rows.append({"model": "resnet20", "method": "source TPE", "seconds": time.perf_counter() - t0, **_metrics(tpe.best)})
    doc = policy_document(tpe.best.policy, model="resnet20", data="fashion_mnist", metric="latency", target=ev.target,
                          backend={"name": "torch"}, searcher="optuna", metrics=tpe.best.metrics.as_dict(),
                          fingerprint=model_fingerprint(ev.graph))
    t0 = time.perf_counter()
    ppo = get_searcher("ppo", {"save_agent": str(agent_dir)}, progress=False).search(ev, episodes, seed=0)
    rows.append({"model": "resnet20", "method": "source PPO", "seconds": time.perf_counter() - t0, **_metrics(ppo.best)})
    if ppo.best.metrics.reward > tpe.best.metrics.reward:
        doc = policy_document(ppo.best.policy, model="resnet20", data="fashion_mnist", metric="latency", target=ev.target,
                              backend={"name": "torch"}, searcher="ppo", metrics=ppo.best.metrics.as_dict(),
                              fingerprint=model_fingerprint(ev.graph))
    pol_path.write_text(json.dumps(doc, indent=2))
    rows_path.write_text(json.dumps(rows))
    return doc, agent_dir, rows


def _metrics(best) -> dict:
    m = best.metrics
    return {"proxy_acc": m.accuracy, "latency_ratio": m.latency_ratio, "feasible": bool(m.feasible), "policy": best.policy.to_dict(),
            "drops": len(best.policy.drop)}


def run_target(model: str, doc: dict, agent_dir: Path, args, seed: int) -> list[dict]:
    """Every method once on ``model`` with ``seed``, on a fresh evaluator (no cache shared across seeds)."""
    from autoprune.errors import AutopruneError
    from autoprune.graph.policy import Policy

    cfg, baseline, ev = setup(model, args.target, args.threads)
    src = Policy.from_dict(doc)
    rows: list[dict] = []

    def timed(method: str, fn) -> dict:
        row = {"model": model, "seed": seed, "method": method}
        if method not in args.method_list:
            return row
        t0, n0 = time.perf_counter(), len(ev.history)
        try:
            best, extra = fn()
        except AutopruneError as e:  # a method that cannot produce a policy is a result, not a crash
            row.update(failed=True, error=str(e), seconds=time.perf_counter() - t0)
            print(f"  {model:12s} seed {seed} {method:22s} FAILED: {e}", flush=True)
            rows.append(row)
            return row
        fresh_evals = sum(not e.cached for e in ev.history[n0:])
        row.update(seconds=time.perf_counter() - t0, evaluations=fresh_evals, **_metrics(best), **extra)
        print(f"  {model:12s} seed {seed} {method:22s} proxy {best.metrics.accuracy:.4f} lat {best.metrics.latency_ratio:.3f} "
              f"evals {fresh_evals} {row['seconds']:.0f}s", flush=True)
        rows.append(row)
        return row

    timed("uniform", lambda: (get_searcher("uniform", {}, progress=False).search(ev, 10).best, {}))

    def do_transfer():
        res = transfer(src, doc, ev, refit=True, measure=True, candidates=args.candidates)
        best = next(e for e in reversed(ev.history) if e.policy.key() == res.policy.key())
        detail = [{"drops": len(c.policy.drop), "scale": c.scale, "value": (c.metrics or {}).get("value"),
                   "proxy_acc": (c.metrics or {}).get("accuracy"), "feasible": (c.metrics or {}).get("feasible"),
                   "kept": c.policy == res.policy} for c in res.candidates]
        return best, {"scale": res.scale, "candidates": [len(c.policy.drop) for c in res.candidates], "candidate_detail": detail,
                      "transferred": [res.policy.to_dict()] + [c.policy.to_dict() for c in res.candidates if c.policy != res.policy]}

    moved = timed("policy transfer", do_transfer)
    timed("zero-shot agent", lambda: (get_searcher("ppo", {"agent": str(agent_dir), "zero_shot": True}, progress=False)
                                      .search(ev, 3, seed=seed).best, {}))
    if "transfer + warm TPE" in args.method_list and not moved.get("failed"):
        # The transferred candidates are the first trials and their evaluations are the transfer's own
        # (cached): the whole method, the transfer's measurements included, costs 10% of the fresh
        # search's episodes.
        queued = list({Policy.from_dict(d).key(): d for d in moved["transferred"]}.values())  # distinct policies only
        warm_n = max(len(queued) + 1, args.episodes // 10 - moved["evaluations"] + len(queued))

        def warm():
            res = get_searcher("optuna", {"sampler": "tpe", "n_startup_trials": args.warm_startup,
                                          "enqueue": queued}, progress=False).search(ev, warm_n, seed=seed + 1)
            return res.best, {"episodes": warm_n}

        row = timed("transfer + warm TPE", warm)
        row["seconds"] += moved["seconds"]
        if not row.get("failed"):
            row["evaluations"] += moved["evaluations"]
    timed("fresh TPE", lambda: (get_searcher("optuna", {"sampler": "tpe", "n_startup_trials": 15}, progress=False)
                                .search(ev, args.episodes, seed=seed).best, {"episodes": args.episodes}))

    for method in (m for m in METHODS if m not in args.method_list):  # not rerun: the earlier run's row
        rows += [{**r, "reused_from": args.reuse.name} for r in args.reused
                 if r["model"] == model and r.get("seed", 0) == seed and r["method"] == method]
    for r in rows:
        r.pop("transferred", None)
        if r.get("reused_from"):
            continue
        if r.get("failed"):
            continue
        pol = Policy.from_dict(r["policy"])
        torch.manual_seed(seed)
        pruned = apply_best(cfg, baseline, pol, evaluator=ev)  # as `autoprune run` delivers it: BN re-estimated
        finetune(pruned, baseline.data, FinetuneSettings(epochs=args.finetune_epochs, seed=seed), teacher=None, progress=False)
        r["test_acc"] = split_metrics(pruned, baseline.data.test)["accuracy"]
    return rows


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def _pm(values: list[float], digits: int = 3) -> str:
    m, sd = _mean_sd(values)
    if m != m:
        return "-"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd == sd else "")


def _share(x: float, lo: float, hi: float) -> float:
    # A share of a gain under half a point is noise, not a ratio worth printing.
    return (x - lo) / (hi - lo) if hi - lo >= MIN_GAIN else float("nan")


METHODS = ("uniform", "policy transfer", "zero-shot agent", "transfer + warm TPE", "fresh TPE")
CHEAP = ("policy transfer", "zero-shot agent", "transfer + warm TPE")


def render(rows: list[dict], args, dense: dict[str, dict]) -> str:
    out = [header("Policy and agent transfer", threads=args.threads)]
    out.append(
        f"Source: ResNet-20 / Fashion-MNIST at {args.target:.0%} of dense batch-1 latency; fresh searches get "
        f"{args.episodes} episodes. Policy transfer re-fits {args.candidates} drop sets (mapped, shallower, deeper cut) and "
        f"measures each (a candidate measured over the target, or 3% of dense under it, is re-fitted at its drop set to the target scaled by target / measured, tighter or looser channels first, blocks added or put back only when channels cannot get there: 1 to 3 evaluations per candidate). Transfer + warm TPE gets "
        f"{args.episodes // 10} evaluations in all: the transfer's, then TPE episodes whose first trials are the transferred "
        f"candidates (cached). Every policy gets the same {args.finetune_epochs:g}-epoch "
        f"fine-tune (SGD, cosine) before its test accuracy is measured. Latency: paired, {args.threads} thread(s), batch 1. "
        "Proxy = validation accuracy after BN re-estimation. Each seed runs every method on a fresh evaluator (new latency "
        "table, empty cache); values are mean ± standard deviation over seeds. share of gain = (method - uniform) / "
        "(fresh TPE - uniform), from the means; cost = the method's evaluations (uncached: episodes plus the transfer's "
        "and bisection's measurements) / the fresh search's, and the same for wall time. The transferred policy is the "
        "better (by reward) of the two source searches' best.\n\n"
    )
    out.append("Baselines (trained with `autoprune train --epochs E`):\n\n")
    out.append(table(["model", "epochs", "val acc", "test acc"], [(m, d.get("epochs", "-"), d.get("val_accuracy", float("nan")),
                                                               d.get("test_accuracy", float("nan"))) for m, d in dense.items()]))
    out.append("\n")
    src = [r for r in rows if r["model"] == "resnet20"]
    if src:
        out.append("Source searches on ResNet-20:\n\n")
        out.append(table(["method", "proxy acc", "latency ratio", "wall s"], [(r["method"], r["proxy_acc"], r["latency_ratio"], r["seconds"]) for r in src]))
        out.append("\n")
    verdicts = []
    for model in dict.fromkeys(r["model"] for r in rows if r["model"] != "resnet20"):
        mine = [r for r in rows if r["model"] == model]
        seeds = sorted({r.get("seed", 0) for r in mine})
        ok_rows = {m: [r for r in mine if r["method"] == m and not r.get("failed")] for m in METHODS}
        failed = {m: [r for r in mine if r["method"] == m and r.get("failed")] for m in METHODS}
        mean = {m: {k: _mean_sd([r[k] for r in rs])[0] for k in ("proxy_acc", "test_acc", "evaluations", "seconds")} for m, rs in ok_rows.items() if rs}
        uni, fresh = mean.get("uniform"), mean.get("fresh TPE")
        body, per_seed = [], []
        for m in METHODS:
            rs = ok_rows[m]
            if not rs and not failed[m]:
                continue
            share_p = share_t = cost = cost_s = float("nan")
            if rs and uni and fresh:
                share_p = _share(mean[m]["proxy_acc"], uni["proxy_acc"], fresh["proxy_acc"])
                share_t = _share(mean[m]["test_acc"], uni["test_acc"], fresh["test_acc"])
                cost = mean[m]["evaluations"] / max(1.0, fresh["evaluations"])
                cost_s = mean[m]["seconds"] / fresh["seconds"]
            body.append((m, _pm([r["proxy_acc"] for r in rs]), _pm([r["test_acc"] for r in rs], 4),
                         _pm([r["latency_ratio"] for r in rs]), f"{sum(r['feasible'] for r in rs)}/{len(rs)}" + (f" ({len(failed[m])} failed)" if failed[m] else ""),
                         _pm([r["drops"] for r in rs], 1), _pm([r["evaluations"] for r in rs], 1), _pm([r["seconds"] for r in rs], 0),
                         share_p, share_t, cost, cost_s))
            if m in CHEAP and uni and fresh:
                if not rs:
                    verdicts.append(Goal(f"{model}, {m}", f"failed in every seed ({failed[m][0]['error']})", False))
                    continue
                for split, share in (("proxy", share_p), ("test", share_t)):
                    defined = share == share
                    value = (f"{share:.0%}" if defined else "undefined (fresh search <= uniform + 0.5 pt)") + \
                        f" at {cost:.1%} of the fresh search's evaluations ({cost_s:.1%} of its wall time)"
                    verdicts.append(Goal(f"{model}, {m}: share of the {split} gain >= 80% at <= 10% of the evaluations", value,
                                         share >= 0.8 and cost <= 0.10 + 1e-9 if defined else None))
            for seed in seeds:
                by = {r["method"]: r for r in mine if r.get("seed", 0) == seed and not r.get("failed")}
                if m in CHEAP and m in by and "uniform" in by and "fresh TPE" in by:
                    per_seed.append((m, seed, _share(by[m]["proxy_acc"], by["uniform"]["proxy_acc"], by["fresh TPE"]["proxy_acc"]),
                                     _share(by[m]["test_acc"], by["uniform"]["test_acc"], by["fresh TPE"]["test_acc"])))
        out.append(f"## {model} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})\n\n")
        reused = sorted({(r["method"], r["reused_from"]) for r in mine if r.get("reused_from")}, key=lambda x: METHODS.index(x[0]))
        if reused:
            out.append(f"Not rerun, rows copied from `{reused[0][1]}` (an earlier run, same target and seeds): "
                       f"{', '.join(m for m, _ in reused)}.\n\n")
        out.append(table(["method", "proxy acc", "test acc", "latency ratio", "feasible", "blocks dropped", "evaluations", "wall s",
                          "share of gain (proxy)", "share of gain (test)", "cost (evaluations)", "cost (wall)"], body))
        out.append("\n")
        for m in METHODS:
            for r in failed[m]:
                out.append(f"- {m} failed (seed {r.get('seed', 0)}): {r['error']}\n")
        moved = [r for r in ok_rows["policy transfer"] if r.get("candidate_detail")]
        if moved:
            out.append("\nPolicy transfer candidates (blocks dropped: proxy acc at measured latency ratio; * kept, ! over the target):\n\n")
            out.append(table(["seed", "candidates"], [
                (r.get("seed", 0), "; ".join(f"{c['drops']}: {c['proxy_acc']:.3f} at {c['value']:.3f}"
                                             f"{'!' if not c['feasible'] else ''}{'*' if c['kept'] else ''}"
                                             for c in r["candidate_detail"] if c.get("value") is not None))
                for r in moved]))
        if per_seed and len(seeds) > 1:
            out.append("\nShare of the same seed's fresh-search gain, per seed:\n\n")
            out.append(table(["method", "seed", "share (proxy)", "share (test)"], per_seed))
            out.append("\n")
    if verdicts:
        out.append(goals_report(verdicts, "## Goal: transfer or zero-shot reaches >= 80% of the fresh search's gain over uniform at <= 10% of its cost"))
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=100, help="Episodes of the source and of each fresh search.")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--finetune-epochs", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1, help="Latency-measurement threads (1 is steadier on 2 shared cores).")
    ap.add_argument("--targets", default="resnet32,resnet56,mobilenetv2")
    ap.add_argument("--seeds", type=int, default=3, help="Seeds per target: every method runs once per seed.")
    ap.add_argument("--candidates", type=int, default=3, help="Drop sets the policy transfer re-fits and measures.")
    ap.add_argument("--warm-startup", type=int, default=5,
                    help="n_startup_trials of the warm-started TPE, the transferred candidates included.")
    ap.add_argument("--fresh", action="store_true", help="Forget earlier parts and the cached source searches.")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="Methods to run (comma-separated, of: %(default)s); the others' rows of the same target and seed "
                         "are copied from --reuse (marked reused_from), e.g. to rerun only what a change to transfer affects.")
    ap.add_argument("--reuse", type=Path, default=RESULTS / "transfer_previous.jsonl",
                    help="Rows of an earlier run, for the methods not in --methods.")
    args = ap.parse_args()
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.method_list) - set(METHODS))
    if unknown:
        ap.error(f"--methods: {unknown} are not methods; allowed: {list(METHODS)}")
    if "transfer + warm TPE" in args.method_list and "policy transfer" not in args.method_list:
        ap.error("--methods: 'transfer + warm TPE' needs 'policy transfer'")
    missing = [m for m in METHODS if m not in args.method_list]
    if missing and not args.reuse.is_file():
        ap.error(f"--reuse: {args.reuse} does not exist; it must hold the rows of {missing}")
    args.reused = [json.loads(line) for line in args.reuse.read_text().splitlines()] if missing else []
    torch.set_num_threads(2)
    if args.fresh:
        PARTS.unlink(missing_ok=True)
        for f in SOURCE_DIR.rglob("*"):
            if f.is_file():
                f.unlink()
    doc, agent_dir, src_rows = source(args.episodes, args.target, args.threads)
    done = [json.loads(line) for line in PARTS.read_text().splitlines()] if PARTS.is_file() else []
    for model in [m for m in args.targets.split(",") if m]:
        for seed in range(args.seeds):
            if any(r["model"] == model and r.get("seed", 0) == seed for r in done):
                continue
            print(f"target {model} seed {seed}", flush=True)
            rows = run_target(model, doc, agent_dir, args, seed)
            with PARTS.open("a") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
            done += rows
    dense = {}
    for model in ["resnet20", *dict.fromkeys(r["model"] for r in done)]:
        from autoprune.training.baseline import load_model_weights
        from autoprune.zoo import build_model

        try:
            meta = load_model_weights(build_model(model, in_channels=1, num_classes=10, input_size=28), checkpoint(model))
            dense[model] = {"epochs": (meta.get("settings") or {}).get("epochs"), **{k: meta.get(k) for k in ("val_accuracy", "test_accuracy")}}
        except Exception:  # noqa: BLE001 - a missing checkpoint only leaves a blank row
            dense[model] = {}
    text = render(src_rows + done, args, dense)
    notes = RESULTS / "transfer_notes.md"
    if notes.is_file():
        text += "\n" + notes.read_text()
    path = write("transfer.md", text)
    print(path.read_text())


if __name__ == "__main__":
    tempfile.tempdir = tempfile.gettempdir()
    main()
