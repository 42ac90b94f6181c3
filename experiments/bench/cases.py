"""Every entry point on every pattern case: exit code, the last stderr line, tracebacks, and whether the delivered network is the policy's.

Each case folder (``model.py`` with ``model:build``, ``config.yaml``, the digits configs as shipped)
gets a fresh cache (``AUTOPRUNE_CACHE``) and a fresh working folder (its MLflow store, output
folders), and its commands run as a user runs them, each in its own process with
``PYTHONPATH=<case>:<checkout>``:

- ``check model:build --data digits`` (with the config's ``model.ignore``);
- ``estimate config.yaml`` (ratios 0.1, 0.3, 0.5; it trains the baseline the others reuse);
- ``search config.yaml``, then ``run config.yaml`` (each in its own output folder);
- ``apply --policy <search's policy.json> --model model:build --data digits``;
  when ``search`` is refused (exit 2), apply and transfer use the policy of the same search at
  ``budget.target`` :data:`FALLBACK_TARGET`, and say so;
- ``transfer config.yaml --policy <search's policy.json>`` (onto the same model);
- ``worker`` on an SQLite study published with the case's config (2 episodes, ``--n-trials 1``),
  as ``autoprune search`` publishes one for workers (no PostgreSQL needed).

A command is **ok** when it exits 0 without a traceback, or exits 2 with one line
``autoprune: error: ...`` last on stderr and no traceback. For exit-0 runs the delivered network is
checked against its policy, in a separate process (the case's ``model`` module is importable
there only): ``run``'s ``model.pt`` against its ``policy.json`` and ``apply``'s output against the
search's policy: every layer's input/output channel counts of the delivered model (recorded by
forward hooks) equal those the policy predicts on the dense model's verified graph
(:meth:`~autoprune.graph.prunable.PrunableGraph.specs_for`); the policies of ``search`` and
``transfer`` must name only units of that graph. Writes ``experiments/results/cases.md``.

    python -m experiments.bench.cases [--cases ../shared/cases] [--only a,b] [--commands check,run] [--timeout 1800] [--append]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ._common import git_commit, header, table, write

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("check", "estimate", "search", "run", "apply", "transfer", "worker")
ERROR_PREFIX = "autoprune: error: "
#: When the config's search is refused (e.g. its budget is unreachable once units are left dense),
#: apply and transfer get the policy of the same search at this budget, so they run on the case too.
FALLBACK_TARGET = 0.95


@dataclass
class Outcome:
    """One command on one case."""

    code: int | None
    last: str
    traceback: bool
    network: str  # "matches", "differs: ...", "-" (nothing delivered), "not built"
    seconds: float

    @property
    def ok(self) -> bool:
        if self.code is None and self.last.startswith("skipped"):
            return True
        if self.traceback or self.code not in (0, 2) or self.network.startswith(("differs", "error")):
            return False
        return self.code == 0 or self.last.startswith(ERROR_PREFIX)

    def cell(self) -> str:
        if self.code is None:
            return self.last or "**timeout**"
        what = "exit 0" if self.code == 0 else f"exit {self.code}"
        if self.traceback:
            what += ", **traceback**"
        elif self.code == 2:
            what += ", one line" if self.last.startswith(ERROR_PREFIX) else ", **no error line**"
        elif self.code != 0:
            what += ", **not a user error**"
        if self.network.startswith("- "):
            what += self.network[1:]
        elif self.network != "-":
            what += f", network {self.network}" if self.network.startswith("matches") else f", **network {self.network}**"
        return what


def _env(case: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(case), str(ROOT)])
    env["AUTOPRUNE_CACHE"] = str(cache)
    env.setdefault("COLUMNS", "200")
    return env


def _last_line(err: str) -> str:
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _run(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float, log: Path) -> tuple[int | None, str, str, float]:
    start = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-m", "autoprune", *argv], env=env, cwd=cwd, capture_output=True, text=True,
                             timeout=timeout)
        code, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = None, str(e.stdout or ""), str(e.stderr or "")
    seconds = time.perf_counter() - start
    log.write_text(f"$ autoprune {' '.join(argv)}\n# exit {code}, {seconds:.0f} s\n--- stdout\n{out}\n--- stderr\n{err}\n")
    return code, out, err, seconds


def _verify(env: dict[str, str], cwd: Path, *args: str) -> str:
    """``matches`` / ``differs: ...`` from a checker process (:func:`check_delivered`)."""
    res = subprocess.run([sys.executable, "-m", "experiments.bench.cases", "--verify", *args], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        return f"error: {_last_line(res.stderr)}"
    return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "error: no verdict"


def _publish_worker_study(config: Path, out: Path, storage: str) -> None:
    """An SQLite study holding the case's config, as ``autoprune search`` publishes one for workers (2 episodes)."""
    import optuna
    import yaml

    from autoprune.config.loading import parse_config
    from autoprune.search.distributed import publish_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = yaml.safe_load(config.read_text())
    raw["output_dir"] = str(out)
    study = optuna.create_study(storage=storage, study_name="cases", direction="maximize")
    publish_study(study, parse_config(raw).model_dump(mode="json"), 2)


def run_case(case: Path, commands: tuple[str, ...], timeout: float, logs: Path) -> dict[str, Outcome]:
    """Every command of ``commands`` on ``case``, in order (apply/transfer use the search's policy)."""
    import yaml

    config = case / "config.yaml"
    ignore = list((yaml.safe_load(config.read_text()).get("model") or {}).get("ignore") or [])
    work = Path(tempfile.mkdtemp(prefix=f"case-{case.name}-"))
    cache = work / "cache"
    cache.mkdir()
    env = _env(case, cache)
    policy = work / "search" / "policy.json"
    storage = f"sqlite:///{work / 'worker.db'}"
    argvs = {
        "check": ["check", "model:build", "--data", "digits", *(a for n in ignore for a in ("--ignore", n))],
        "estimate": ["estimate", str(config), "--set", f"output_dir={work / 'estimate'}"],
        "search": ["search", str(config), "--set", f"output_dir={work / 'search'}"],
        "run": ["run", str(config), "--set", f"output_dir={work / 'run'}"],
        "apply": ["apply", "--policy", str(policy), "--model", "model:build", "--data", "digits", "--out", str(work / "applied.pt")],
        "transfer": ["transfer", str(config), "--policy", str(policy), "--out", str(work / "transferred.json"),
                     "--set", f"output_dir={work / 'transfer'}"],
        "worker": ["worker", "--storage", storage, "--study", "cases", "--n-trials", "1"],
    }
    results: dict[str, Outcome] = {}
    for name in commands:
        if name in ("apply", "transfer") and not policy.is_file() and results.get("search") and results["search"].code == 2:
            fallback = ["search", str(config), "--set", f"output_dir={work / 'search'}", "--set", f"budget.target={FALLBACK_TARGET}"]
            _run(fallback, env=env, cwd=work, timeout=timeout, log=logs / f"{case.name}.search-fallback.log")
        if name in ("apply", "transfer") and not policy.is_file():
            results[name] = Outcome(None, "skipped (search wrote no policy)", False, "-", 0.0)
            continue
        if name == "worker":
            _publish_worker_study(config, work / "worker", storage)
        code, out, err, seconds = _run(argvs[name], env=env, cwd=work, timeout=timeout, log=logs / f"{case.name}.{name}.log")
        traceback = "Traceback (most recent call last)" in out + err
        network = "-"
        if code == 0 and not traceback:
            if name == "run":
                network = _verify(env, ROOT, "delivered", str(work / "run" / "model.pt"), str(work / "run" / "policy.json"))
            elif name == "apply":
                network = _verify(env, ROOT, "delivered", str(work / "applied.pt"), str(policy))
            elif name == "search":
                network = _verify(env, ROOT, "policy", str(policy))
            elif name == "transfer":
                network = _verify(env, ROOT, "policy", str(work / "transferred.json"))
        results[name] = Outcome(code, _last_line(err), traceback, network, seconds)
        if name in ("apply", "transfer") and results.get("search") and results["search"].code != 0:
            results[name].network += f" (policy of a search at budget.target={FALLBACK_TARGET})"
        print(f"{case.name:24s} {name:9s} {results[name].cell()} ({seconds:.0f} s)", flush=True)
    return results


# ------------------------------------------------------------------ the checker process


def _policy_graph(document: dict):
    """The verified graph of the policy's model (dense, untrained: the graph depends on the architecture only) and its example input."""
    from autoprune.config.loading import parse_config
    from autoprune.config.settings import latency_settings
    from autoprune.graph.check import default_cache_dir
    from autoprune.graph.safety import verified_graph
    from autoprune.zoo import build_model, load_data

    data = load_data(document.get("data") or "digits")
    backend = (document.get("backend") or {}).get("name")
    cfg = parse_config({"name": "cases", "model": {"name": document["model"]}, "data": {"name": document.get("data") or "digits"},
                        "latency": {"backend": backend} if backend else {}})
    model = build_model(document["model"], in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)
    x = data.example_input(1)
    graph, _ = verified_graph(model.eval(), x, ignored=tuple(document.get("ignore") or ()), export_check=latency_settings(cfg).serving_check(),
                              cache_dir=default_cache_dir())
    return graph, x


def check_policy(path: str) -> str:
    """``matches`` when the policy names only units and blocks of its model's verified graph."""
    document = json.loads(Path(path).read_text())
    graph, _ = _policy_graph(document)
    foreign = sorted(set(document.get("ratios") or {}) - set(graph.unit_names)) + sorted(set(document.get("drop") or []) - set(graph.block_names))
    return f"differs: not units of the verified graph: {', '.join(foreign)}" if foreign else "matches"


def check_delivered(model_file: str, policy_path: str) -> str:
    """``matches`` when every layer of the saved model has the channel counts the policy predicts on the dense graph."""
    from autoprune.formats.pruned import load_pruned
    from autoprune.graph.layers import record_layer_specs

    document = json.loads(Path(policy_path).read_text())
    graph, x = _policy_graph(document)
    round_to = (document.get("pruning") or {}).get("round_to")
    predicted = graph.specs_for(document.get("ratios") or {}, document.get("drop") or [], round_to=round_to)
    delivered, _ = load_pruned(model_file)
    recorded = record_layer_specs(delivered, x)
    want = [(s.module_name, s.in_channels, s.out_channels) for s in predicted]
    got = [(s.module_name, s.in_channels, s.out_channels) for s in recorded if s.module_name in {w[0] for w in want}]
    wrong = [f"{w[0]} {w[1:]} vs {g[1:]}" for w, g in zip(want, got, strict=False) if w != g]
    if len(got) != len(want):
        wrong.insert(0, f"{len(got)} layer calls, predicted {len(want)}")
    return f"differs: {'; '.join(wrong[:3])}" if wrong else "matches"


# ------------------------------------------------------------------ report


def report(results: dict[str, dict[str, Outcome]], commands: tuple[str, ...], cases_dir: Path, *, appended: bool = False) -> str:
    text = header("Every entry point on every pattern case")
    if appended:  # a later run of some cases, below the first: its own header, one level down
        text = "\n#" + text
    text += (f"- commit: {git_commit()}\n- cases: `{cases_dir}` ({len(results)} folders), digits configs as shipped\n\n"
             "A cell is the exit code; for exit 2 whether the last stderr line is one `autoprune: error:` line; "
             "**traceback** when any was printed; for exit-0 `run`/`apply` whether the delivered network's channel counts "
             "equal those its policy predicts on the dense model's verified graph, for `search`/`transfer` whether "
             "the policy names only units of that graph. `worker` runs one trial of an SQLite study published with "
             "the case's config (no PostgreSQL needed).\n\n")
    rows = [[case, *(results[case][c].cell() if c in results[case] else "-" for c in commands)] for case in results]
    text += table(["case", *commands], rows)
    bad = [(case, c, o) for case, r in results.items() for c, o in r.items() if not o.ok]
    total = sum(len(r) for r in results.values())
    text += f"\n{total - len(bad)} of {total} commands ok (exit 0, or exit 2 with one line; no traceback; network as its policy).\n"
    errors = sorted({(c, o.last) for r in results.values() for c, o in r.items() if o.code == 2})
    if errors:
        text += "\n## The one-line refusals\n\n" + "".join(f"- `{c}`: {last}\n" for c, last in errors)
    if bad:
        text += "\n## Not ok\n\n" + "".join(f"- `{case}` `{c}`: {o.cell()}; last stderr line: {o.last[:300]}\n" for case, c, o in bad)
    return text


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--verify":
        kind, *args = sys.argv[2:]
        print(check_delivered(*args) if kind == "delivered" else check_policy(*args))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=ROOT.parent.parent / "shared" / "cases", help="Folder of case folders.")
    ap.add_argument("--only", default="", help="Comma-separated case names (default: every folder).")
    ap.add_argument("--commands", default=",".join(COMMANDS), help="Comma-separated entry points, in this order.")
    ap.add_argument("--timeout", type=float, default=1800, help="Seconds per command.")
    ap.add_argument("--out", default="cases.md", help="Result file in experiments/results.")
    ap.add_argument("--append", action="store_true", help="Append this run (e.g. of --only some cases) to the result file.")
    args = ap.parse_args()
    commands = tuple(c for c in COMMANDS if c in args.commands.split(","))
    only = set(filter(None, args.only.split(",")))
    cases = sorted(p for p in args.cases.iterdir() if (p / "config.yaml").is_file() and (not only or p.name in only))
    logs = Path(tempfile.mkdtemp(prefix="cases-logs-"))
    print(f"logs in {logs}", flush=True)
    results = {case.name: run_case(case, commands, args.timeout, logs) for case in cases}
    path = write(args.out, report(results, commands, args.cases, appended=args.append), append=args.append)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
