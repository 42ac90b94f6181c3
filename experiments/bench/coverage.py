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
4. **injected faults** (``tests/fault_plugins.py``): each must be caught by the check named.

Sections 2-4 list the exact units, the units left dense, the opaque modules, a refusal, and
whether the MACs predicted for a uniform 50% policy equal those counted on the pruned model. Every
reason is listed below the tables. Writes ``experiments/results/coverage.md``.

    python -m experiments.bench.coverage [--episodes 8] [--batch 32]
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

from ._common import header, table, write

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


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    export = onnx_runtime_check()
    backend = "onnxruntime" if export is not None else "torch"
    data = load_data("digits")
    x = data.example_input(1)
    rows, notes = patterns_section(args, data, backend, export)

    kinds, kind_notes = [], []
    layer_kinds = catalogue("test_layer_kinds")
    for name in layer_kinds.KINDS:
        kinds.append(verdict(name, lambda name=name: layer_kinds.build(name), x, export, notes=kind_notes))
        print(kinds[-1], flush=True)
    opaque, opaque_notes = [], []
    opaque_cat = catalogue("test_opaque")
    for name, (make, ignored) in opaque_cat.OPAQUE.items():
        opaque.append(verdict(name, make, x, export, ignored=ignored, notes=opaque_notes))
        print(opaque[-1], flush=True)
    faults, fault_notes = [], []
    safety = catalogue("test_safety_net")
    for name, (make, unit, check, _words, fault_export) in safety.FAULTS.items():
        row = verdict(name, make, x, fault_export or export, notes=fault_notes)
        caught = f"{unit} by the {check} check" if unit not in row[1].split(", ") else "NOT CAUGHT"
        faults.append((*row, caught))
        print(faults[-1], flush=True)

    text = header("Model coverage: the safety net on patterns, layer kinds, opaque modules and faults", threads=1)
    runtime = "ONNX Runtime (export checked against PyTorch)" if export is not None else "no export check (onnxruntime not installed)"
    text += (
        f"Every model on digits (1x8x8, random weights) through `verified_graph`: surgery equals the masked dense model "
        f"(float64, 1e-5), the pruned forward runs, MACs are predicted exactly, and the pruned model exports to {runtime}.\n\n"
        f"## Patterns\n\nexact = units passing every check / all channel groups, then their names; left dense = units that fail a "
        f"check (each reason below); refused = the model refused in one line; search = candidates built / evaluated by a "
        f"random search of {args.episodes} under a MAC budget (target); MAC ratio of the best policy (measured on the pruned "
        f"model); speed-up = dense / pruned latency on {backend}, batch {args.batch}, 1 thread, paired interleaved timing "
        f"({args.rounds} rounds; the machine is shared, so read ratios, not absolute times).\n\n"
    )
    text += table(["pattern", "exact units", "left dense", "refused", "search built", "MAC target", "MAC ratio", "speed-up"], rows)
    text += "\nUnits left dense and refusals, with the reason autoprune gives:\n\n" + ("\n".join(notes) or "None.") + "\n"
    columns = ["model", "exact units", "left dense", "opaque", "refused", "MACs at 50%: predicted vs counted"]
    for title, section, section_notes, extra in (
        ("Layer kinds", kinds, kind_notes, []),
        ("Opaque modules", opaque, opaque_notes, []),
        ("Injected faults", faults, fault_notes, ["caught"]),
    ):
        text += f"\n## {title}\n\n" + table(columns + extra, section)
        text += "\n" + ("\n".join(section_notes) or "Nothing left dense.") + "\n"
    print(write("coverage.md", text))


if __name__ == "__main__":
    main()
