"""Model coverage: every pattern, layer kind, opaque module and injected fault through the safety net.

Every model goes through :func:`autoprune.graph.safety.verified_graph` (surgery equals the
masked dense model, the pruned forward runs, MACs predicted exactly, ONNX Runtime export when
installed), digits-sized, random weights (exactness and speed do not depend on training).

1. **patterns** (``tests/test_patterns.py``): exact units / all channel groups (named), the units left
   dense and a refusal (reasons listed below the table); a random search of
   ``--episodes`` candidates under a MAC budget (every unit's reachable minimum + 0.1) and how many
   were built; the best policy's MAC ratio (counted on the pruned model); its speed-up on the
   serving runtime (ONNX Runtime when installed, else torch), paired interleaved timing at batch
   ``--batch``, 1 thread;
2. **layer kinds** (``tests/test_layer_kinds.py``): one model per kind Torch-Pruning prunes;
3. **opaque modules** (``tests/test_opaque.py``): scripted/compiled submodules, custom autograd
   functions, ops Torch-Pruning cannot map, ``model.ignore``;
4. **injected faults** (``tests/fault_plugins.py``): each must be caught by the check named;
5. **patterns from the issue's reports** (``experiments/bench/_reported.py``): the C2f block, grouped-query
   attention with rotary embeddings (refused, then with ``model.ignore``), a pruned model that is not
   faster (measured ratio and the words printed), latency-table layers without a builder (how they
   are timed, ms), blocks not offered as droppable (the ``-v`` line), and hand-written attention MACs
   against a hand count.

Sections 2-4 list the exact units, the units left dense, the opaque modules, a refusal, and
whether the MACs predicted for a uniform 50% policy equal those counted on the pruned model. Every
reason is listed below the tables. Writes ``experiments/results/coverage.md``; with ``--only`` the
sections not run are kept from the file's previous run.

    python -m experiments.bench.coverage [--episodes 8] [--batch 32] [--only patterns,kinds,opaque,faults,reported]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
from pathlib import Path

import torch

from autoprune.errors import ModelError
from autoprune.graph.layers import count_macs, record_layer_specs
from autoprune.graph.policy import Policy
from autoprune.graph.safety import verified_graph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.compare import speed_words
from autoprune.measure.latency import PairedTimer, count_macs_params
from autoprune.measure.schedule import PairedSchedule
from autoprune.measure.settings import LatencySettings
from autoprune.objective.budget import Budget
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.objective.proxy import ProxySettings
from autoprune.search import get_searcher
from autoprune.zoo import load_data

from ._common import RESULTS, header, table, write
from ._reported import reported_section

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the catalogues import their plug-ins (fault_plugins) by name


def catalogue(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def onnx_runtime_check():
    """The export check every entry point uses on ONNX Runtime (``LatencySettings.serving_check``); None without it."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    return LatencySettings(backend="onnxruntime", threads=1).serving_check()


def verdict(name: str, make, x, export, *, ignored=(), notes: list[str]) -> tuple:
    """One row of sections 2-4: exact, left dense, opaque, refused, MAC prediction at uniform 50%."""
    torch.manual_seed(0)
    try:
        model = make()
        model.eval()
        graph, report = verified_graph(model, x, ignored=ignored, export_check=export)
    except ModelError as e:
        notes.append(f"- `{name}` refused: {e}")
        return name, "-", "-", "-", "refused", "-"
    policy = Policy.uniform(graph.unit_names, 0.5)
    pruned = apply_policy(model, policy, graph=graph)
    macs_ok = graph.macs_for(policy.ratios) == count_macs(record_layer_specs(pruned, x))
    notes += [f"- `{name}` / `{unit}` left dense: {why}" for unit, why in report.left_dense.items()]
    notes += [f"- `{name}` / `{module}` opaque: {why}" for module, why in report.opaque.items()]
    return (name, ", ".join(graph.unit_names) or "-", str(len(report.left_dense)), ", ".join(report.opaque) or "-", "no",
            "equal" if macs_ok else "DIFFERENT")


def patterns_section(args, data, backend, export) -> tuple[list, list]:
    cat = catalogue("test_patterns")
    rows, notes = [], []
    for name in cat.PATTERNS:
        model = cat.build(name)
        try:
            graph, report = verified_graph(model, data.example_input(1), export_check=export)
        except ModelError as e:
            notes.append(f"- `{name}` refused: {e}")
            rows.append((name, "-", "-", "refused", "-", "-", "-", "-"))
            continue
        n_all = len(graph.units) + len(report.left_dense)
        with tempfile.TemporaryDirectory() as tmp:
            ev = PolicyEvaluator(
                model, data, budget=Budget(metric="macs", target=1.0), proxy=ProxySettings(bn_batches=2, val_samples=100),
                latency=LatencySettings(rounds=3, min_rounds=3, warmup=1, threads=1, rel_ci=None), graph=graph, check=False,
                check_cache=tmp,
            )
        target = min(1.0, max(0.5, ev.min_reachable() + 0.1))
        ev = ev.with_budget(Budget(metric="macs", target=target))
        get_searcher("random", {}, progress=False).search(ev, args.episodes, seed=0)
        built = sum(not e.metrics.failed for e in ev.history)
        best = ev.best()
        pruned = apply_policy(model, best.policy, graph=ev.graph).eval()
        x1 = data.example_input(1)
        macs_ratio = count_macs_params(pruned, x1)[0] / count_macs_params(model, x1)[0]
        timer = PairedTimer(model, data.example_input(args.batch), backend=backend, threads=1)
        speed = 1.0 / timer.ratio(pruned, PairedSchedule(rounds=args.rounds)).ratio
        rows.append((
            name, f"{len(report.exact)}/{n_all}: {', '.join(report.exact) or '-'}", ", ".join(report.left_dense) or "-", "no",
            f"{built}/{len(ev.history)}", f"{target:.2f}", f"{macs_ratio:.2f}", speed_words(speed),
        ))
        notes += [f"- `{name}` / `{unit}` left dense: {why}" for unit, why in report.left_dense.items()]
        print(name, rows[-1], flush=True)
    return rows, notes


def _verdicts(catalog, items, x, export) -> tuple[list, list]:
    rows, notes = [], []
    for name, make, ignored in items(catalog):
        rows.append(verdict(name, make, x, export, ignored=ignored, notes=notes))
        print(rows[-1], flush=True)
    return rows, notes


def _faults(x, export) -> tuple[list, list]:
    rows, notes = [], []
    for name, (make, unit, check, _words, fault_export) in catalogue("test_safety_net").FAULTS.items():
        row = verdict(name, make, x, fault_export or export, notes=notes)
        rows.append((*row, f"{unit} by the {check} check" if unit not in row[1].split(", ") else "NOT CAUGHT"))
        print(rows[-1], flush=True)
    return rows, notes


COLUMNS = ["model", "exact units", "left dense", "opaque", "refused", "MACs at 50%: predicted vs counted"]
#: --only names -> section titles, in the order they are written
SECTIONS = {"patterns": "Patterns", "kinds": "Layer kinds", "opaque": "Opaque modules", "faults": "Injected faults",
            "reported": "Patterns from the issue's reports"}


def _section(key: str, args, data, backend, export) -> str:
    """One section's markdown (its ``## title`` included)."""
    x = data.example_input(1)
    if key == "patterns":
        rows, notes = patterns_section(args, data, backend, export)
        text = (f"exact = units passing every check / all channel groups, then their names; left dense = units that fail a "
                f"check (each reason below); refused = the model refused in one line; search = candidates built / evaluated by a "
                f"random search of {args.episodes} under a MAC budget (target); MAC ratio of the best policy (measured on the pruned "
                f"model); speed-up = dense / pruned latency on {backend}, batch {args.batch}, 1 thread, paired interleaved timing "
                f"({args.rounds} rounds; the machine is shared, so read ratios, not absolute times).\n\n")
        text += table(["pattern", "exact units", "left dense", "refused", "search built", "MAC target", "MAC ratio", "speed-up"], rows)
        text += "\nUnits left dense and refusals, with the reason autoprune gives:\n\n" + ("\n".join(notes) or "None.") + "\n"
    elif key == "reported":
        text = reported_section(catalogue, x, export)
    else:
        if key == "kinds":
            kinds = catalogue("test_layer_kinds")
            rows, notes = _verdicts(kinds, lambda c: [(n, lambda n=n: c.build(n), ()) for n in c.KINDS], x, export)
        elif key == "opaque":
            rows, notes = _verdicts(catalogue("test_opaque"), lambda c: [(n, m, i) for n, (m, i) in c.OPAQUE.items()], x, export)
        else:
            rows, notes = _faults(x, export)
        text = table(COLUMNS + (["caught"] if key == "faults" else []), rows) + "\n" + ("\n".join(notes) or "Nothing left dense.") + "\n"
    return f"## {SECTIONS[key]}\n\n{text}"


def _merge(old: str, new: dict[str, str]) -> str:
    """``old``'s sections with those in ``new`` (title -> text) replaced (or added), in :data:`SECTIONS` order."""
    parts = old.split("\n## ")
    kept = {p.split("\n", 1)[0]: "## " + p for p in parts[1:]}
    sections = {**kept, **new}
    order = [t for t in SECTIONS.values() if t in sections] + [t for t in sections if t not in SECTIONS.values()]
    return "\n".join(sections[t].rstrip("\n") + "\n" for t in order)


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"SECTION[,SECTION]: run only these ({', '.join(SECTIONS)}); "
                    "the other sections of coverage.md are kept from its last run")
    args = ap.parse_args()
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    if not only or set(only) - set(SECTIONS):
        ap.error(f"--only: expected names among {', '.join(SECTIONS)}, got {args.only!r}")
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    export = onnx_runtime_check()
    backend = "onnxruntime" if export is not None else "torch"
    data = load_data("digits")
    new = {SECTIONS[k]: _section(k, args, data, backend, export) for k in SECTIONS if k in only}

    text = header("Model coverage: the safety net on patterns, layer kinds, opaque modules and faults", threads=1)
    runtime = "ONNX Runtime (export checked against PyTorch)" if export is not None else "no export check (onnxruntime not installed)"
    text += (
        f"Every model on digits (1x8x8, random weights) through `verified_graph`: surgery equals the masked dense model "
        f"(float64, 1e-5), the pruned forward runs, MACs are predicted exactly, and the pruned model exports to {runtime}.\n"
    )
    path = RESULTS / "coverage.md"
    if set(only) != set(SECTIONS) and path.exists():
        text += f"\nThis run (`--only {','.join(only)}`) regenerated: {', '.join(new)}; the other sections are from the previous run.\n"
        body = _merge(path.read_text(), new)
    else:
        body = "\n".join(t.rstrip("\n") + "\n" for t in new.values())
    print(write("coverage.md", text + "\n" + body))


if __name__ == "__main__":
    main()
