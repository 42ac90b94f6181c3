"""Model coverage: for each pattern of the catalogue (tests/test_patterns.py), exact surgery, search, MACs, speed-up.

Per pattern (digits-sized model, random weights: exactness and speed do not depend on training):

- **exact**: units whose surgery equals the masked dense model (float64, 1e-5) / all units, and the
  units left dense with their one-line reason;
- **search**: a random search of ``--episodes`` candidates under a MAC budget (every unit's
  reachable minimum + 0.1); how many candidates were built;
- **MAC ratio** of the best policy (counted on the really pruned model);
- **speed-up** of that pruned model over the dense one on the serving runtime (ONNX Runtime when
  installed, else torch), paired interleaved timing at batch ``--batch``, 1 thread.

Writes ``experiments/results/coverage.md``.

    python -m experiments.bench.coverage [--episodes 8] [--batch 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import tempfile
from pathlib import Path

import torch

from autoprune.graph.check import check_units
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
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


def catalogue():
    spec = importlib.util.spec_from_file_location("test_patterns", ROOT / "tests" / "test_patterns.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    try:
        import onnxruntime  # noqa: F401
        backend = "onnxruntime"
    except ImportError:
        backend = "torch"
    cat = catalogue()
    data = load_data("digits")
    rows, notes = [], []
    for name in cat.PATTERNS:
        model = cat.build(name)
        graph = PrunableGraph(model, data.example_input(1))
        n_all = len(graph.units) + len(graph.skipped)
        report = check_units(graph, ratios=(0.3, 0.6))
        refused = {**graph.skipped, **report.failed}
        with tempfile.TemporaryDirectory() as tmp:
            ev = PolicyEvaluator(
                model, data, budget=Budget(metric="macs", target=1.0), proxy=ProxySettings(bn_batches=2, val_samples=100),
                latency=LatencySettings(rounds=3, min_rounds=3, warmup=1, threads=1, rel_ci=None), check_cache=tmp,
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
            name, f"{len(report.passed)}/{n_all}", f"{built}/{len(ev.history)}", f"{target:.2f}", f"{macs_ratio:.2f}", f"{speed:.2f}x",
        ))
        notes += [f"- `{name}` / `{unit}`: {why}" for unit, why in refused.items()]
        print(name, rows[-1], flush=True)
    text = header("Model coverage: pattern catalogue", threads=1)
    text += (
        f"Patterns of `tests/test_patterns.py` on digits (random weights). exact = units whose surgery equals the masked "
        f"dense model (float64, 1e-5) / all channel groups; search = candidates built / evaluated by a random search of "
        f"{args.episodes} under a MAC budget (target); MAC ratio of the best policy (measured on the pruned model); "
        f"speed-up = dense / pruned latency on {backend}, batch {args.batch}, 1 thread, paired interleaved timing "
        f"({args.rounds} rounds; the machine is shared, so read ratios, not absolute times).\n\n"
    )
    text += table(["pattern", "exact units", "search built", "MAC target", "MAC ratio", "speed-up"], rows)
    text += "\nUnits left dense, with the reason autoprune gives:\n\n" + "\n".join(notes) + "\n"
    print(write("coverage.md", text))


if __name__ == "__main__":
    main()
