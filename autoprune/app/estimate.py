"""What uniform channel pruning really saves on a runtime, and what unstructured masks do not: the library of ``autoprune estimate``.

Each variant of the dense model (dense, every unit pruned by one ratio with Torch-Pruning, and
the smallest-magnitude weights set to zero) is scored by the search's proxy and timed against
the dense model by :func:`autoprune.measure.compare.compare_to_dense`, on the serving backend
and on eager PyTorch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.app.experiment import Baseline
from autoprune.errors import ConfigError, ModelError
from autoprune.graph.hooks import model_copy
from autoprune.graph.importance import DEFAULT_IMPORTANCE
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.backends import backend_class, settings_label
from autoprune.measure.compare import compare_to_dense
from autoprune.measure.fresh import ZooModel
from autoprune.measure.fresh_compare import compare_in_fresh_process
from autoprune.measure.latency import count_macs_params, model_size_bytes
from autoprune.measure.settings import LatencySettings
from autoprune.measure.table import LatencyTable
from autoprune.objective.proxies import make_proxy
from autoprune.objective.proxy import ProxySettings


@dataclass
class EstimateRow:
    """One line of ``autoprune estimate``: one variant of the dense model, measured on the latency backend.

    Attributes:
        label: ``dense``, ``uniform channels 30%`` or ``unstructured masks 75%``.
        kind: ``dense``, ``channels`` (Torch-Pruning surgery, tensors really shrink) or ``masks``
            (smallest-magnitude weights set to zero, shapes unchanged).
        ratio: The channel ratio of every unit (``channels``), the fraction of conv/linear weights
            set to zero (``masks``), or 0 (``dense``).
        params: Parameters stored; ``nonzero_params``: those not zero.
        macs: Multiply-accumulates per input sample, counted from the shapes.
        size_bytes: The serialised ``state_dict``.
        latency_ms: Milliseconds per call at the timed batch size on the backend (ratio x dense ms).
        latency_ratio, latency_ci: Paired latency ratio to dense on the backend, and its 95% CI.
        eager_latency_ms, eager_ratio: The same on eager PyTorch (equal to the above on an eager backend).
        predicted_ratio: The eager lookup table's prediction (eager backends only, where latency is a
            per-layer sum; NaN on others).
        proxy_accuracy: Validation accuracy after BatchNorm re-estimation (the search's proxy).
        seconds: Time spent per step (``prune``, ``accuracy``; ``latency``: the rows' timing shared equally).
        backend: The backend and its settings that timed the row (``onnxruntime(threads=2, ...)``).
    """

    ratio: float
    params: int
    macs: int
    size_bytes: int
    latency_ms: float
    latency_ratio: float
    latency_ci: tuple[float, float]
    predicted_ratio: float
    proxy_accuracy: float
    seconds: dict[str, float]
    label: str = "dense"
    kind: str = "dense"
    nonzero_params: int = 0
    eager_latency_ms: float = float("nan")
    eager_ratio: float = float("nan")
    backend: str = LatencySettings.backend


def _maskable(model: nn.Module, ignored: tuple[str, ...]) -> list[tuple[nn.Module, str]]:
    """The ``(module, "weight")`` pairs of every conv and linear layer outside ``ignored`` (and their children)."""
    def skipped(name: str) -> bool:
        return any(name == i or name.startswith(i + ".") for i in ignored)

    return [(m, "weight") for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and not skipped(name)]


def magnitude_masked(model: nn.Module, n_zero: int, *, ignored: tuple[str, ...] = ()) -> nn.Module:
    """A copy of ``model`` with its ``n_zero`` smallest-magnitude conv/linear weights set to zero.

    Global unstructured magnitude pruning (Han et al. 2015) through PyTorch's own
    ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``, made permanent with
    ``prune.remove``: the weights are plain tensors again, of the same shapes, with zeros in them.

    Args:
        model: The dense model (not modified).
        n_zero: How many weights to zero, over all conv/linear weights together.
        ignored: Module names left untouched (``model.ignore``).

    Returns:
        The masked copy, in eval mode.
    """
    from torch.nn.utils import prune

    masked = model_copy(model)
    params = _maskable(masked, ignored)
    if params and n_zero > 0:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured,
                                  amount=min(int(n_zero), sum(m.weight.numel() for m, _ in params)))
        for m, name in params:
            prune.remove(m, name)
    return masked.eval()


def _weights(model: nn.Module, ignored: tuple[str, ...] = ()) -> int:
    return sum(m.weight.numel() for m, _ in _maskable(model, ignored))


def estimate(
    baseline: Baseline,
    graph: PrunableGraph,
    ratios: list[float],
    *,
    latency: LatencySettings = LatencySettings(),
    proxy: ProxySettings = ProxySettings(),
    importance: str = DEFAULT_IMPORTANCE,
    round_to: int | None = None,
    ignored: tuple[str, ...] = (),
    masks: bool = True,
    rounds: int = 20,
    zoo: ZooModel | None = None,
) -> list[EstimateRow]:
    """Measure what uniform channel pruning at each ratio really saves on a runtime, and what masks do not.

    The first row is the dense model (ratio 0, timed against a second copy of itself: the noise
    floor). Each uniform row prunes every unit by the same ratio with Torch-Pruning. With
    ``masks``, a last row zeroes as many conv/linear weights as the largest ratio's channel
    pruning removed (:func:`magnitude_masked`): the same count of non-zero weights, so its
    accuracy is comparable, with unchanged shapes, so its latency ratio stays near 1.

    Every row is timed paired against the dense model by
    :func:`~autoprune.measure.compare.compare_to_dense` (a warm-up pass, then ``rounds`` rounds)
    on ``latency.backend`` and then on eager PyTorch. On an eager backend the eager lookup
    table's prediction is shown beside the measurement.

    Args:
        baseline: The dense model and its data.
        graph: Its graph from the safety net (:func:`autoprune.app.experiment.experiment_graph`):
            the uniform rows prune its units, the ones every other command prunes.
        ratios: Channel ratios in [0, 1).
        latency: The backend, its options, the timed batch size and threads (``latency`` section).
        proxy: Accuracy proxy settings (BN re-estimation, validation subset).
        importance, round_to, ignored: Channel selection as in the search (``pruning`` and ``model.ignore``).
        masks: Add the row of unstructured magnitude masks.
        rounds: Paired rounds per row and runtime.
        zoo: How a fresh process rebuilds the model: then every row is timed in fresh processes
            (:func:`~autoprune.measure.fresh_compare.compare_in_fresh_process`), the protocol of ``autoprune run``'s
            final table and of a search's finalists, so the three report one kind of figure; None: in this process.

    Returns:
        The rows, dense first and masks last.

    Raises:
        ConfigError: a ratio out of range, an unknown backend or option, or a missing extra.
        ModelError: a model the backend cannot run (e.g. the ONNX export fails), or a graph with
            no unit (its droppable blocks are searched, not pruned uniformly), naming why.
    """
    for r in ratios:
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"--ratios: {r!r} is out of range; allowed: 0 <= ratio < 1")
    if not graph.units and any(r > 0 for r in ratios):
        why = "; ".join(f"{n}: {w}" for n, w in list(graph.skipped.items())[:3]) or "the model has no channel group Torch-Pruning can cut"
        raise ModelError(f"estimate: no unit to prune uniformly ({why}); only droppable blocks, which `autoprune search` tries")
    model, data = baseline.model, baseline.data
    x1 = data.example_input(1)
    scorer = make_proxy(model, data, proxy)  # accuracy after adaptive BN, or an encoder's fidelity
    dense_weights = _weights(model, ignored)
    variants: list[tuple[str, float]] = [("dense", 0.0), *(("channels", r) for r in ratios if r > 0)]
    if masks and any(r > 0 for r in ratios):
        variants.append(("masks", max(ratios)))
    removed_by: dict[float, int] = {}  # channel ratio -> conv/linear weights it removed
    built: list[tuple[str, float, Policy, nn.Module, float, dict[str, float]]] = []
    for kind, r in variants:
        t0 = time.perf_counter()
        pol = Policy.uniform(graph.unit_names, r if kind == "channels" else 0.0)
        if kind == "channels":
            pruned = apply_policy(model, pol, graph=graph, importance=importance, round_to=round_to,  # as the search prunes
                                  batches=scorer.calibration_batches, loss=scorer.loss)
            removed_by[r] = dense_weights - _weights(pruned, ignored)
        elif kind == "masks":  # as many zeros as the largest channel row removed weights
            pruned = magnitude_masked(model, removed_by[r], ignored=ignored)
            r = removed_by[r] / max(1, dense_weights)
        else:
            pruned = model_copy(model)
        t1 = time.perf_counter()
        acc = scorer.score(pruned) if kind != "dense" else scorer.dense_score()
        built.append((kind, r, pol, pruned, acc, {"prune": t1 - t0, "accuracy": time.perf_counter() - t1}))
    t2 = time.perf_counter()
    x = data.example_input(latency.batch_size)
    models = [b[3] for b in built]
    timed = (compare_in_fresh_process(models, model, x, latency, zoo=zoo, rounds=rounds) if zoo is not None
             else compare_to_dense(models, model, x, latency, rounds=rounds))
    latency_s = (time.perf_counter() - t2) / len(built)
    predict = None
    if backend_class(latency.backend).eager:  # a per-layer sum: the micro-benchmark table applies
        predict = _eager_prediction(graph, round_to, latency.batch_size, latency.threads, timed[0].eager_dense_ms)
    rows: list[EstimateRow] = []
    for (kind, r, pol, pruned, acc, seconds), t in zip(built, timed):
        macs, params = count_macs_params(pruned, x1)
        name = {"dense": "dense", "channels": f"uniform channels {r:.0%}", "masks": f"unstructured masks {r:.0%}"}[kind]
        rows.append(
            EstimateRow(
                ratio=r, params=int(params), macs=int(macs), size_bytes=model_size_bytes(pruned),
                latency_ms=t.serving_ms, latency_ratio=t.serving.ratio, latency_ci=(t.serving.ci_low, t.serving.ci_high),
                predicted_ratio=predict(pol) if predict is not None else float("nan"), proxy_accuracy=acc,
                seconds={**seconds, "latency": latency_s},
                label=name, kind=kind, nonzero_params=sum(int(torch.count_nonzero(p)) for p in pruned.parameters()),
                eager_latency_ms=t.eager_ms, eager_ratio=t.eager.ratio, backend=settings_label(t.settings),
            )
        )
    return rows


def _eager_prediction(graph: PrunableGraph, round_to: int | None, batch_size: int, threads: int,
                      dense_ms: float) -> Callable[[Policy], float]:
    """The eager lookup table's ratio for a policy, without surgery (a micro-benchmark table fitted on the dense model)."""
    dense_specs = graph.specs_for({}, (), batch_size=batch_size)
    table = LatencyTable(threads=threads)
    table.fit([(dense_specs, dense_ms)])
    return lambda pol: table.predict_ratio(graph.specs_for(pol.ratios, (), round_to=round_to, batch_size=batch_size), dense_specs)


__all__ = ["EstimateRow", "estimate", "magnitude_masked"]
