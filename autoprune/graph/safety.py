"""The safety net: one function that builds a model's graph and checks every unit before anything is pruned.

:func:`verified_graph` is what every entry point (estimate, search, run, apply, transfer, check,
worker, the benchmarks) gets its graph from. It builds the
:class:`~autoprune.graph.prunable.PrunableGraph`, then checks every unit:

1. **surgery is exact**: the pruned model equals the masked dense model (float64, 1e-5; the
   differential check of :mod:`autoprune.graph.check`), cut alone and together with the others;
2. **it runs forward** at the data's shape (the same check runs the pruned model on a batch of
   the example input's shape; a forward that raises fails the unit);
3. **its MACs are counted**: the MACs the graph predicts for the cut
   (:meth:`~autoprune.graph.prunable.PrunableGraph.macs_for`, what the MAC budget uses) equal the
   MACs counted on the really pruned model;
4. **it exports to the serving runtime**: an ``export_check`` callable injected by the caller
   (``graph/`` does not know the runtimes) is run on the pruned model.

A unit that fails any check is left dense, with one warning line naming it and the reason
(:meth:`~autoprune.graph.prunable.PrunableGraph.exclude`). A model with no unit and no droppable
block left is refused in one line.

**Before baseline training.** Every check depends on the architecture and the input shape only,
not on the weights: call :func:`verified_graph` on the freshly built, untrained model to refuse a
model or learn its left-dense units in seconds, before any training. The verdicts are cached by
the model's fingerprint (architecture, units, input shape, the export check's label), so the call
on the trained model reads them. The cheapest part, :class:`PrunableGraph` itself (tracing, opaque
modules, attention layouts, unit constraints; well under a second on small models), refuses
structural problems alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import AutopruneError, ModelError, one_line
from autoprune.graph.check import CheckReport, cache_key, verify_graph
from autoprune.graph.layers import ExampleInput, count_macs, record_layer_specs
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import prune_channels

log = logging.getLogger(__name__)

#: ``export_check(pruned_model, example_input)``: raises when the model cannot be exported to and run
#: by the serving runtime. A ``label`` attribute (else its qualified name) keys the cached verdict; a
#: ``runtime`` attribute (else "the serving runtime") is what a failure names, e.g. ``"onnxruntime (latency.backend)"``.
ExportCheck = Callable[[nn.Module, ExampleInput], None]

_VERSION = 1


@dataclass
class SafetyReport:
    """What :func:`verified_graph` found.

    Attributes:
        exact: Units that passed every check, in graph order.
        left_dense: ``{unit: why}``: every channel group that is not offered, with its one-line
            reason (found when the graph was built, or failed a check).
        failed: The part of ``left_dense`` that failed a check, by check: ``{"surgery" | "macs" |
            "export": {unit: why}}``.
        opaque: ``{module: why}`` of the modules hidden from tracing (their channels are kept).
        blocks: Droppable blocks offered.
        max_diff: ``{unit: largest output difference}`` of the surgery check (float64).
        cached: Whether the check verdicts came from the cache.
    """

    exact: list[str] = field(default_factory=list)
    left_dense: dict[str, str] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    opaque: dict[str, str] = field(default_factory=dict)
    blocks: list[str] = field(default_factory=list)
    max_diff: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def _label(export_check: ExportCheck | None) -> str:
    if export_check is None:
        return ""
    return str(getattr(export_check, "label", None) or getattr(export_check, "__qualname__", type(export_check).__name__))


def _runtime(export_check: ExportCheck) -> str:
    return str(getattr(export_check, "runtime", None) or "the serving runtime")


def _why(e: BaseException, limit: int) -> str:
    """An export failure in one line: autoprune's own errors as they are, others with their type."""
    return one_line(e, limit) if isinstance(e, AutopruneError) else f"{type(e).__name__}: {one_line(e, limit)}"


def _cut(graph: PrunableGraph, units: Sequence[str], ratio: float, gen: torch.Generator) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Ratios and random channels (of the counts those ratios keep) for ``units``."""
    ratios = {u: ratio for u in units}
    kept = graph.kept(ratios)
    cuts = {}
    for name in units:
        u = graph.unit(name)
        if kept[name] < u.features.channels:
            cuts[name] = u.constraint.choose(torch.rand(u.features.channels, generator=gen, dtype=torch.float64), kept[name])
    return ratios, cuts


def _macs_problem(graph: PrunableGraph, units: Sequence[str], ratio: float, gen: torch.Generator) -> str:
    """``""`` if the MACs predicted for cutting ``units`` equal those counted on the pruned model, else why."""
    ratios, cuts = _cut(graph, units, ratio, gen)
    try:
        pruned = prune_channels(graph.model, graph, cuts)
        counted = count_macs(record_layer_specs(pruned, _one(graph.example_input)))
        predicted = graph.macs_for(ratios)
    except Exception as e:  # noqa: BLE001 - any failure fails the unit, never the caller
        return f"its MACs cannot be counted ({type(e).__name__}: {one_line(e, 160)})"
    if predicted != counted:
        return f"its MACs are mispredicted ({predicted} predicted, {counted} counted on the pruned model): the MAC budget would be wrong"
    return ""


def _export_problem(graph: PrunableGraph, units: Sequence[str], ratio: float, gen: torch.Generator, export_check: ExportCheck) -> str:
    """``""`` if the model with ``units`` cut exports to the serving runtime, else why."""
    _, cuts = _cut(graph, units, ratio, gen)
    try:
        pruned = prune_channels(graph.model, graph, cuts).eval()
        export_check(pruned, graph.example_input)
    except Exception as e:  # noqa: BLE001 - any failure fails the unit, never the caller
        return f"the pruned model does not export to {_runtime(export_check)} ({_why(e, 200)})"
    return ""


def _one(x: ExampleInput) -> ExampleInput:
    return tuple(t[:1] for t in x) if isinstance(x, tuple) else x[:1]


def _check_each(graph: PrunableGraph, problem: Callable[[Sequence[str]], str]) -> dict[str, str]:
    """Units failing ``problem``: all together first; if that fails, each alone, then added one at a time."""
    names = graph.unit_names
    if not names or not problem(names):
        return {}
    failed = {n: why for n in names if (why := problem([n]))}
    kept: list[str] = []
    for n in names:
        if n in failed:
            continue
        why = problem([*kept, n])
        if why:
            failed[n] = f"cut together with {sorted(kept) or 'no other unit'}: {why}"
        else:
            kept.append(n)
    return failed


def _read(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and data.get("version") == _VERSION else None
    except (OSError, ValueError):
        return None


def _write(path: Path | None, data: dict) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": _VERSION, **data}))
        tmp.replace(path)
    except OSError as e:
        log.debug("safety verdict not cached (%s)", e)


def verified_graph(
    model: nn.Module,
    example_input: ExampleInput,
    *,
    ignored: Sequence[str] = (),
    drop_blocks: bool = True,
    export_check: ExportCheck | None = None,
    cache_dir: str | os.PathLike | None = None,
    ratio: float = 0.5,
    seed: int = 0,
) -> tuple[PrunableGraph, SafetyReport]:
    """The graph of ``model`` with every unit checked; units that fail a check are left dense.

    Args:
        model: The dense model (trained or not: no check depends on the weights); not modified.
        example_input: One batch shaped like the data, e.g. ``(1, C, H, W)`` (see
            :data:`~autoprune.graph.layers.ExampleInput`).
        ignored: ``model.ignore``: modules never pruned (containers and custom layers are opaque).
        drop_blocks: Whether droppable blocks are offered too.
        export_check: Raises when a pruned model cannot be exported to and run by the serving
            runtime (e.g. an ONNX export and one ONNX Runtime call); ``None``: not checked.
        cache_dir: Folder of cached verdicts (``None``: none), e.g.
            :func:`~autoprune.graph.check.default_cache_dir`.
        ratio: Pruning ratio of the MAC and export checks (the surgery check also cuts each unit
            to its smallest allowed count).
        seed: Seed of the random channels and inputs.

    Returns:
        ``(graph, report)``: the graph offers only the units that passed (and the droppable blocks).

    The graph's warnings (units left dense, opaque modules) are logged when the graph is returned;
    a refused model shows only its one line (the reasons stay at INFO level, ``-v``).

    Raises:
        ModelError: the model cannot be pruned at all, in one line: a structural refusal of
            :class:`PrunableGraph` (naming the module and the operation), a dense model that does
            not export to the serving runtime, or no unit and no droppable block left (naming why).
    """
    with _warnings_held_back():
        return _verified_graph(model, example_input, ignored=ignored, drop_blocks=drop_blocks, export_check=export_check,
                               cache_dir=cache_dir, ratio=ratio, seed=seed)


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _warnings_held_back() -> Iterator[None]:
    """Hold the graph's log records back until the verdict: a refused model's warnings become INFO (its one line says why).

    On success every record is logged as it was; on a refusal the warnings are logged at INFO
    (shown at ``-v``), so the refusal is the one line the user sees by default.
    """
    graph_log = logging.getLogger("autoprune.graph")
    held, propagate = _Held(), graph_log.propagate
    graph_log.addHandler(held)
    graph_log.propagate = False
    refused = False
    try:
        yield
    except ModelError:
        refused = True
        raise
    finally:
        graph_log.removeHandler(held)
        graph_log.propagate = propagate
        for record in held.records:
            if refused and record.levelno == logging.WARNING:
                record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)


def _verified_graph(
    model: nn.Module, example_input: ExampleInput, *, ignored: Sequence[str], drop_blocks: bool, export_check: ExportCheck | None,
    cache_dir: str | os.PathLike | None, ratio: float, seed: int,
) -> tuple[PrunableGraph, SafetyReport]:
    graph = PrunableGraph(model, example_input, ignored=ignored, drop_blocks=drop_blocks)
    if export_check is not None:
        try:
            export_check(graph.dense_copy(model).eval(), example_input)
        except Exception as e:
            raise ModelError(f"the dense model does not export to {_runtime(export_check)}: {_why(e, 300)}") from e
    surgery: CheckReport = verify_graph(graph, cache_dir=cache_dir, seed=seed)
    report = SafetyReport(failed={"surgery": dict(surgery.failed)}, opaque=dict(graph.opaque), max_diff=dict(surgery.max_diff),
                          cached=surgery.cached)
    key = hashlib.sha256(f"{cache_key(graph, (ratio,), seed)}|{_label(export_check)}".encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"safety-{key}.json" if cache_dir is not None else None
    verdict = _read(path)
    if verdict is None:
        gen = torch.Generator().manual_seed(seed)
        macs = _check_each(graph, lambda units: _macs_problem(graph, units, ratio, gen))
        for name, why in macs.items():
            graph.exclude(name, why)
        export = {}
        if export_check is not None:
            export = _check_each(graph, lambda units: _export_problem(graph, units, ratio, gen, export_check))
            for name, why in export.items():
                graph.exclude(name, why)
        _write(path, {"macs": macs, "export": export})
        report.cached = False
    else:
        macs, export = dict(verdict.get("macs", {})), dict(verdict.get("export", {}))
        for name, why in {**macs, **export}.items():
            graph.exclude(name, why)
    report.failed.update(macs=macs, export=export)
    report.exact, report.left_dense, report.blocks = graph.unit_names, dict(graph.skipped), graph.block_names
    if not graph.units and not (drop_blocks and graph.blocks):
        raise ModelError(nothing_to_prune(graph))
    return graph, report


def nothing_to_prune(graph: PrunableGraph) -> str:
    """The one line refusing a graph with no unit and no droppable block: why its first channel groups are left dense."""
    why = "; ".join(f"{n}: {r}" for n, r in list(graph.skipped.items())[:3]) or "the model has no channel group Torch-Pruning can cut"
    return f"the model has nothing to prune: no unit passes the checks ({why}) and no droppable block"


__all__ = ["ExportCheck", "SafetyReport", "nothing_to_prune", "verified_graph"]
