"""The commands on saved files: apply a policy file, fine-tune, evaluate and export a pruned model.

Each takes a local path or an MLflow ``runs:/`` / ``models:/`` URI; a downloaded artifact lives
in a temporary folder only while the command reads it.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.app.experiment import experiment_graph, load_baseline
from autoprune.app.pipeline import ModelReport, apply_best, measure_final, not_faster_warning, serving_report
from autoprune.app.uris import is_mlflow_uri, load_policy
from autoprune.config.loading import parse_config
from autoprune.config.machine import check_threads
from autoprune.config.schema import ExperimentConfig
from autoprune.errors import ConfigError
from autoprune.formats.pruned import load_pruned, save_pruned
from autoprune.graph.policy import check_policy_fits
from autoprune.measure.backends import DEFAULT_THREADS, get_backend
from autoprune.measure.latency import count_macs_params
from autoprune.objective.proxy import split_metrics
from autoprune.paths import writable_file
from autoprune.tracking.artifacts import download_model_uri
from autoprune.training.finetune import FinetuneSettings, finetune
from autoprune.zoo import load_data

log = logging.getLogger(__name__)


@contextlib.contextmanager
def opened_model(source: str | Path, *, tracking_uri: str | None = None) -> Iterator[tuple[nn.Module, dict, Path]]:
    """``(model, meta, local path)`` of a pruned model file or MLflow URI; a download is deleted on exit.

    Raises:
        ConfigError: a missing file or URI. ModelError: an unreadable pruned-model file.
    """
    with contextlib.ExitStack() as stack:
        dst = stack.enter_context(tempfile.TemporaryDirectory(prefix="autoprune-artifact-")) if is_mlflow_uri(source) else None
        path = download_model_uri(source, tracking_uri=tracking_uri, dst=dst)
        net, meta = load_pruned(path)
        yield net, meta, path


# ----------------------------------------------------------------- apply
@dataclass
class ApplyReport:
    """What ``autoprune apply`` shows."""

    model: str
    out: Path
    test_accuracy: float
    params: int
    macs: int
    dense_params: int
    dense_macs: int
    ignored: list[str]
    run_id: str | None = None


def apply_policy_file(
    policy: str,
    model: str,
    *,
    data: str | None = None,
    checkpoint: str | Path | None = None,
    out: str | Path = "pruned.pt",
    finetune_epochs: float = 0,
    distill: bool = False,
    track: bool = True,
    tracking_uri: str | None = None,
    progress: bool = True,
) -> ApplyReport:
    """Apply a saved policy to the same architecture, optionally fine-tune, save the pruned model, log it.

    The policy carries its context and is applied in it: the layers its search ignored (the
    file's ``ignore``), its data set, and its pruning (importance, the channel multiple it was
    rounded to, iterative steps: the file's ``pruning``), so it gives the channel counts the search
    measured; its graph goes through the same safety net with the export check of the backend the
    policy was found on (the file's ``backend``), so its units match. A policy found on another
    architecture is refused (map it with ``autoprune transfer``).

    Args:
        data: The data set (None: the one the policy was found on, else ``fashion_mnist``).

    Raises:
        ConfigError: a missing policy or checkpoint, an unwritable ``out``, or ``data`` other than
            the data set the policy records.
        PolicyError: a malformed policy, or one of another architecture.
        ModelError: an unreadable checkpoint, or a model with nothing to prune.
    """
    writable_file(out, "--out")
    pol, payload = load_policy(policy, tracking_uri=tracking_uri)
    data = recorded_data(data, payload.get("data"), f"the policy {policy}")
    pruning = {k: v for k, v in (payload.get("pruning") or {}).items() if k in ("importance", "round_to", "iterative_steps")}
    backend = payload.get("backend") if isinstance(payload.get("backend"), dict) else {}
    latency = {"backend": backend["name"], "backend_options": backend.get("options") or {}} if backend.get("name") else {}
    cfg = parse_config({"name": "apply", "model": {"name": model, "checkpoint": str(checkpoint) if checkpoint else None},
                        "data": {"name": data}, "pruning": pruning, "latency": latency,
                        "tracking": {"uri": tracking_uri, "register": False}}, source=f"--policy {policy}")
    baseline = load_baseline(cfg, progress=progress)
    modules = {name for name, _ in baseline.model.named_modules()}
    ignored = [n for n in payload.get("ignore") or [] if n in modules]  # an unknown name: the fingerprint check says why
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"ignore": ignored})})
    graph, _ = experiment_graph(cfg, baseline.model, baseline.data)
    check_policy_fits(pol, graph, fingerprint=payload.get("fingerprint"), source=f"--policy {policy}")
    pruned = apply_best(cfg, baseline, pol, graph=graph)
    if finetune_epochs > 0:
        finetune(pruned, baseline.data, FinetuneSettings(epochs=finetune_epochs, distill=distill),
                 teacher=baseline.model if distill else None, progress=progress)
    acc = split_metrics(pruned, baseline.data.test)["accuracy"]
    out = save_pruned(out, pruned, model_name=model, in_channels=baseline.data.in_channels, num_classes=baseline.data.num_classes,
                      input_size=baseline.data.input_size, extra={"policy": pol.to_dict(), "test_accuracy": acc, "ignore": ignored,
                             "context": {"data": data, "backend": payload.get("backend"), "pruning": pruning}})
    x1 = baseline.data.example_input(1)
    dense_macs, dense_params = count_macs_params(baseline.model, x1)
    macs, params = count_macs_params(pruned, x1)
    report = ApplyReport(model, out, acc, int(params), int(macs), int(dense_params), int(dense_macs), ignored)
    if track:
        from autoprune.tracking.tracker import Tracker

        with Tracker(cfg, run_name=f"apply-{model}") as tracker:
            tracker.client.set_tag(tracker.run_id, "policy_source", policy)
            tracker.log_metrics({"test_accuracy": acc, "params": params, "macs": macs, "dense_params": dense_params,
                                 "dense_macs": dense_macs, "finetune_epochs": finetune_epochs})
            tracker.log_pruned_model(out, test_accuracy=acc)
        report.run_id = tracker.run_id
    return report


def recorded_data(given: str | None, recorded: str | None, source: str, *, fallback: str = "fashion_mnist") -> str:
    """The data set a command runs on: ``--data`` if given, else the one recorded with the model or policy.

    Raises:
        ConfigError: ``--data`` names another data set than the one recorded (one line naming both).
    """
    if given is not None and recorded is not None and given != recorded:
        raise ConfigError(f"--data: {given!r}, but {source} was found on {recorded!r}; omit --data to use it, "
                          "or map it to another model with 'autoprune transfer'")
    return given or recorded or fallback


def model_context(meta: dict[str, Any]) -> dict[str, Any]:
    """What a pruned-model file records about where it was made: ``data``, ``backend`` (name, options, ...), ``pruning``."""
    return dict((meta.get("extra") or {}).get("context") or {})


# ----------------------------------------------------------------- fine-tune, evaluate, export
@dataclass
class FinetuneReport:
    """What ``autoprune finetune`` shows."""

    epochs: float
    test_accuracy: float
    out: Path


def finetune_file(
    source: str,
    *,
    data: str | None = None,
    epochs: float = 3,
    lr: float = 0.01,
    distill: bool = False,
    out: str | Path = "finetuned.pt",
    tracking_uri: str | None = None,
    progress: bool = True,
) -> FinetuneReport:
    """Fine-tune a saved pruned model (optionally distilling from its dense baseline) and save it.

    Args:
        data: The data set (None: the one recorded in the model file, else ``fashion_mnist``).

    Raises:
        ConfigError: a missing file or URI, or ``data`` other than the one the file records.
        ModelError: an unreadable pruned-model file.
    """
    out = writable_file(out, "--out")
    with opened_model(source, tracking_uri=tracking_uri) as (net, meta, _):
        spec = meta["model"]
        data = recorded_data(data, model_context(meta).get("data"), source)
        teacher = None
        if distill:
            base_cfg = parse_config({"model": {"name": spec["name"]}, "data": {"name": data}}, source="command line")
            teacher = load_baseline(base_cfg, progress=progress).model
        bundle = load_data(data)
        finetune(net, bundle, FinetuneSettings(epochs=epochs, lr=lr, distill=distill), teacher=teacher, progress=progress)
        acc = split_metrics(net, bundle.test)["accuracy"]
        extra = {**(meta.get("extra") or {}), "test_accuracy": acc}
        save_pruned(out, net, model_name=spec["name"], in_channels=spec["in_channels"], num_classes=spec["num_classes"],
                    input_size=spec["input_size"], extra=extra)
    return FinetuneReport(epochs, acc, out)


@dataclass
class EvaluateReport:
    """What ``autoprune evaluate`` shows: the saved model against its dense baseline.

    ``dense`` and ``pruned`` hold test accuracy and paired latency on the serving backend
    (``config.latency.backend``) and on eager PyTorch (:func:`autoprune.app.pipeline.measure_final`);
    ``report`` each runtime's speed-up and the total one, dense eager PyTorch -> the pruned model
    on the serving backend (:func:`autoprune.app.pipeline.serving_report`).
    """

    source: str
    test_accuracy: float
    batch_size: int
    macs: int
    params: int
    dense: ModelReport
    pruned: ModelReport
    report: dict[str, Any]
    config: ExperimentConfig


def evaluate_file(source: str, *, data: str | None = None, batch_size: int = 1, threads: int = DEFAULT_THREADS,
                  backend: str | None = None, checkpoint: str | Path | None = None, overrides: Sequence[str] = (),
                  tracking_uri: str | None = None, progress: bool = True) -> EvaluateReport:
    """Test accuracy and latency of a saved pruned model against its dense baseline, on the serving backend and eager PyTorch.

    Both models are timed paired (dense and pruned interleaved, 5 warm-up and 30 measured rounds)
    on ``latency.backend`` and then on eager PyTorch (:func:`autoprune.measure.compare.compare_to_dense`),
    exactly as ``autoprune run`` measures its final models.

    Args:
        source: A pruned-model file, ``runs:/`` or ``models:/`` URI.
        data: The data set (its test split is evaluated; None: the one recorded in the model file).
        batch_size: Batch size timed (``latency.batch_size``).
        threads: Intra-op threads while timing (``latency.threads``).
        backend: The serving backend (``latency.backend``; None: the one recorded in the model file,
            with its options, else the config default).
        checkpoint: The dense baseline's weights (default: the cached baseline of the model, trained if missing).
        overrides: ``key=value`` config overrides, e.g. ``latency.backend_options.spinning=false``.
        tracking_uri: Where ``runs:/`` and ``models:/`` sources are.

    Raises:
        ConfigError: more threads than this machine's CPUs, a missing file or URI, an unknown
            backend (naming ``latency.backend`` and the allowed ones) or its extra missing, or
            ``data`` other than the one the file records.
        ModelError: an unreadable pruned-model file or checkpoint, or a model the backend cannot run.
    """
    check_threads(threads, "--threads")  # before any work
    latency: dict[str, Any] = {"batch_size": batch_size, "threads": threads}
    sets = [*overrides, *([f"latency.backend={backend}"] if backend is not None else [])]
    with opened_model(source, tracking_uri=tracking_uri) as (net, meta, path):
        context = model_context(meta)
        data = recorded_data(data, context.get("data"), source)
        served = context.get("backend") or {}
        if backend is None and served.get("name"):  # timed where it was searched for, unless told otherwise
            latency.update(backend=served["name"], backend_options=served.get("options") or {})
        cfg = parse_config({"name": "evaluate", "model": {"name": meta["model"]["name"], "checkpoint": str(checkpoint) if checkpoint else None},
                            "data": {"name": data}, "latency": latency}, source="command line", overrides=sets)
        get_backend(cfg.latency.backend, threads=threads, **(cfg.latency.backend_options or {}))  # a bad backend fails before any work
        baseline = load_baseline(cfg, progress=progress)
        dense, pruned = measure_final(net.eval(), baseline.model, baseline, cfg)
        shown = str(path) if not is_mlflow_uri(source) else source
    report = serving_report(cfg, dense, pruned, None, pruned.backend_settings)
    report["deployed_artifact"] = f"{shown} on {cfg.latency.backend}"
    slower = not_faster_warning(dense, pruned)
    report["faster_than_dense"] = slower is None
    if slower is not None:
        log.warning("%s", slower)
    return EvaluateReport(shown, pruned.test_accuracy, batch_size, pruned.macs, pruned.params, dense, pruned, report, cfg)


@dataclass
class ExportReport:
    """What ``autoprune export`` shows."""

    onnx: Path
    max_abs_diff: float
    quantized: Path | None


def export_file(source: str, *, onnx: str | Path = "model.onnx", quantize: bool = False, tracking_uri: str | None = None) -> ExportReport:
    """Export a saved pruned model to ONNX (checked against torch in ONNX Runtime), optionally int8 too.

    Raises:
        ConfigError: a missing file or URI, or the ``onnx`` extra not installed.
        ModelError: an unreadable pruned-model file.
    """
    from autoprune.formats.onnx import export_onnx, quantize_onnx

    onnx = writable_file(onnx, "--onnx")
    with opened_model(source, tracking_uri=tracking_uri) as (net, meta, _):
        spec = meta["model"]
        info = export_onnx(net, torch.zeros(1, spec["in_channels"], spec["input_size"], spec["input_size"]), onnx)
    quantized = Path(quantize_onnx(onnx, onnx.with_suffix(".int8.onnx"))) if quantize else None
    return ExportReport(Path(info["path"]), float(info["max_abs_diff"]), quantized)


__all__ = [
    "ApplyReport", "EvaluateReport", "ExportReport", "FinetuneReport", "apply_policy_file", "evaluate_file", "export_file",
    "finetune_file", "model_context", "opened_model", "recorded_data",
]
