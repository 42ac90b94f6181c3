"""One function per ``autoprune`` command that works on experiments: train, estimate, search, worker, run, check, transfer.

The CLI parses its options, calls one of these and prints what it returns (see
:mod:`autoprune.app.tables`). Commands on saved files (apply, fine-tune, evaluate, export) are in
:mod:`autoprune.app.model_files`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoprune.app.decoder_estimate import DecoderEstimateReport, estimate_decoder
from autoprune.app.decoder_run import DecoderRunResult
from autoprune.app.estimate import EstimateRow, estimate
from autoprune.app.experiment import (
    Baseline,
    SearchRun,
    baseline_checkpoint,
    build_evaluator,
    experiment_graph,
    is_decoder,
    load_baseline,
    run_search,
    run_worker,
    zoo_model,
)
from autoprune.app.pipeline import RunResult, run_experiment
from autoprune.app.preflight import preflight
from autoprune.app.stages import stage
from autoprune.app.uris import load_policy, locate_bundle
from autoprune.config.loading import load_config, parse_config
from autoprune.config.names import DATA, MODEL
from autoprune.config.schema import ExperimentConfig
from autoprune.config.settings import latency_settings, proxy_settings
from autoprune.config.settings import round_to as settings_round_to
from autoprune.errors import ConfigError
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.safety import SafetyReport, verified_graph
from autoprune.measure.backends import backend_class
from autoprune.measure.settings import LatencySettings
from autoprune.paths import writable_file, write_json_atomic
from autoprune.search import AGENT_SEARCHER, SearchResult, searcher_class, searchers_that
from autoprune.zoo import build_model, check_model_fits, load_data
from autoprune.zoo.decoder import Decoder

log = logging.getLogger(__name__)


def experiment_config(config: str | Path | None, model: str | None, data: str | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """A config from a file, or a minimal one from a model and data set name (``--model``/``--data``), checked before any work.

    With a file, ``--model`` and ``--data`` stand for ``model.name`` and ``data.name`` (the
    file's ``model.checkpoint``, the weights of its own model, is then not used); ``--set``
    overrides come after them.

    Raises:
        ConfigError: neither a file nor a model, an invalid config, or anything
            :func:`autoprune.app.preflight.preflight` refuses (threads, memory, URL schemes, searcher params).
    """
    if config is not None:
        named = [*([f"model.name={model}", "model.checkpoint=null"] if model is not None else []),
                 *([f"data.name={data}"] if data is not None else [])]
        return preflight(load_config(config, [*named, *overrides]))
    if model is None:
        raise ConfigError("give a CONFIG.yaml or --model (e.g. --model resnet20 --data fashion_mnist)")
    return preflight(parse_config({"model": {"name": model}, "data": {"name": data or "fashion_mnist"}}, source="command line",
                                  overrides=list(overrides)))


# ----------------------------------------------------------------- train
@dataclass
class TrainReport:
    """What ``autoprune train`` shows."""

    model: str
    data: str
    val_accuracy: float
    test_accuracy: float
    params: int
    checkpoint: Path
    status: str  #: "trained" or "loaded"


def train_baseline(
    model: str,
    data: str,
    *,
    data_dir: str | Path | None = None,
    epochs: int = 15,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    augment: bool = True,
    force: bool = False,
    progress: bool = True,
) -> TrainReport:
    """Train a baseline (or load the cached one) and measure it.

    With ``force``, the model is trained into a side file that replaces the checkpoint only on
    success, so an interrupted run keeps the old weights.

    Raises:
        ConfigError: unknown model or data set, or an unwritable checkpoint path.
        ModelError: an unreadable checkpoint.
    """
    from autoprune.objective.proxy import accuracy
    from autoprune.training.baseline import TrainSettings, train_or_load
    MODEL.check(model)
    DATA.check(data)
    bundle = load_data(data, data_dir=str(data_dir) if data_dir else None, seed=seed)
    path = writable_file(checkpoint or baseline_checkpoint(model, bundle.name), "--checkpoint")
    settings = TrainSettings(epochs=epochs, augment=augment, seed=seed)
    stage("baseline", f"{model} on {bundle.name}, " + (f"weights from {path}" if path.is_file() and not force else f"training {epochs} epoch(s) into {path}"))
    torch.manual_seed(seed)
    if force and path.exists():
        fresh = path.with_name(path.name + ".new")
        fresh.unlink(missing_ok=True)
        net, meta = train_or_load(model, bundle, settings, checkpoint=fresh, progress=progress)
        os.replace(fresh, path)
        status = "trained"
    else:
        status = "loaded" if path.is_file() else "trained"
        net, meta = train_or_load(model, bundle, settings, checkpoint=path, progress=progress)
    val_acc, test_acc = meta.get("val_accuracy"), meta.get("test_accuracy")
    if val_acc is None or test_acc is None:
        val_acc, test_acc = accuracy(net, bundle.val), accuracy(net, bundle.test)
    return TrainReport(model, bundle.name, float(val_acc), float(test_acc), sum(p.numel() for p in net.parameters()), path, status)


# ----------------------------------------------------------------- estimate
def parse_ratios(text: str) -> list[float]:
    """``"0.1,0.3,0.5"`` as a list of ratios in [0, 1).

    Raises:
        ConfigError: not numbers, none, or out of range.
    """
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"--ratios: {text!r} is not a comma-separated list of numbers such as 0.1,0.3,0.5") from e
    if not values:
        raise ConfigError(f"--ratios: {text!r} holds no ratio; give at least one, e.g. 0.1,0.3,0.5")
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad:
        raise ConfigError(f"--ratios: {bad} out of range; allowed: 0 <= ratio < 1")
    return values


@dataclass
class EstimateReport:
    """What ``autoprune estimate`` shows."""

    config: ExperimentConfig
    data: str
    batch_size: int
    rows: list[EstimateRow]


def estimate_uniform(
    config: str | Path | None,
    ratios: str,
    *,
    model: str | None = None,
    data: str | None = None,
    overrides: Sequence[str] = (),
    batch_size: int | None = None,
    progress: bool = True,
) -> EstimateReport | DecoderEstimateReport:
    """Measure uniform channel pruning at each of ``ratios`` (comma-separated) on a config's model and runtime.

    Latency is timed on ``latency.backend`` with ``latency.backend_options`` (and on eager
    PyTorch beside it when the backend is another runtime); a last row of unstructured magnitude
    masks shows that zeros alone speed nothing up (see :func:`autoprune.app.estimate.estimate`). A decoder
    LLM's config gets :func:`autoprune.app.decoder_estimate.estimate_decoder` in its ``latency.mode`` instead.

    Args:
        config, model, data, overrides: The experiment (see :func:`experiment_config`);
            ``--backend`` arrives as the override ``latency.backend=NAME``.
        ratios: Comma-separated ratios in [0, 1), e.g. ``"0.1,0.3,0.5"``.
        batch_size: Batch size timed (default: ``latency.batch_size``).

    Raises:
        ConfigError: bad ratios, an unknown backend (or its extra missing), or a config problem
            found while loading the baseline.
        ModelError: an unreadable checkpoint, a model the backend cannot run, or one with nothing to
            prune (the safety net's line, as in every command: :func:`autoprune.app.experiment.experiment_graph`).
    """
    cfg = experiment_config(config, model, data, overrides)
    values = parse_ratios(ratios)
    baseline = load_baseline(cfg, progress=progress)
    if is_decoder(baseline):  # a decoder's config: rows per unit kind, timed in its latency.mode
        lat = cfg.latency
        return estimate_decoder(Decoder(cfg.model.name, baseline.model, baseline.data.tokenizer), baseline.data, values, mode=lat.mode,
                                prompt_tokens=lat.prompt_tokens, new_tokens=lat.new_tokens, threads=lat.threads)
    graph, _ = experiment_graph(cfg, baseline.model, baseline.data)
    latency = dataclasses.replace(latency_settings(cfg), batch_size=batch_size or cfg.latency.batch_size)
    rows = estimate(baseline, graph, values, latency=latency, proxy=proxy_settings(cfg), importance=cfg.pruning.importance,
                    round_to=settings_round_to(cfg), ignored=tuple(cfg.model.ignore), zoo=zoo_model(cfg, baseline))
    return EstimateReport(cfg, baseline.data.name, latency.batch_size, rows)


# ----------------------------------------------------------------- search, worker, run
def search_command(
    config: str | Path,
    overrides: Sequence[str] = (),
    *,
    searcher: str | None = None,
    agent: str | None = None,
    zero_shot: bool = False,
    warm_start: str | None = None,
    restart: bool = False,
    tracking_uri: str | None = None,
    progress: bool = True,
) -> SearchRun:
    """``autoprune search``: load the config (with overrides), check it (:func:`~autoprune.app.preflight.preflight`), resolve a saved agent or warm-start policy, search.

    Args:
        config: The experiment config file.
        overrides: ``key=value`` overrides (``--set`` and the options that stand for fields).
        searcher: ``--searcher``: search with this one; the config's params that only its own
            searcher takes are dropped (:func:`autoprune.config.loading.switch_searcher`).
        agent: A saved agent (folder, ``runs:/`` or ``models:/``) to start from, run by :func:`agent_searcher`.
        zero_shot: Only run the agent (needs ``agent``).
        warm_start: A policy (file, ``runs:/``, ``models:/``) to evaluate first (a searcher that
            ``supports_warm_start``, e.g. Optuna).
        restart: Forget the stored study or PPO checkpoint.
        tracking_uri: Where ``runs:/`` and ``models:/`` sources are.

    Raises:
        ConfigError: inconsistent options (``--agent`` with a searcher that loads no agent, ``--warm-start``
            with one that takes no policies), or anything :func:`autoprune.app.experiment.run_search` raises.
    """
    overrides = list(overrides)
    if zero_shot and not agent:
        raise ConfigError("--zero-shot needs --agent (the saved agent to run)")
    if agent:
        searcher = agent_searcher(config, overrides, searcher=searcher)
        overrides += [f"search.params.agent={locate_bundle(agent, tracking_uri=tracking_uri)}"]
        if zero_shot:
            overrides.append("search.params.zero_shot=true")
    cfg = preflight(load_config(config, overrides, searcher=searcher))
    warm = None
    if warm_start:
        if not searcher_class(cfg.search.searcher).supports_warm_start:
            allowed = ", ".join(repr(n) for n in searchers_that(lambda s: s.supports_warm_start))
            raise ConfigError(f"--warm-start: enqueues a policy in a searcher that takes policies to evaluate first ({allowed}); "
                              f"search.searcher is {cfg.search.searcher!r}")
        warm = load_policy(warm_start, tracking_uri=tracking_uri, option="--warm-start")
    return run_search(cfg, progress=progress, restart=restart, warm_start=warm)


def agent_searcher(config: str | Path, overrides: Sequence[str], *, searcher: str | None = None) -> str:
    """The searcher ``--agent`` runs: ``searcher`` (``--searcher``), else the config's if it loads
    agents, else :data:`autoprune.search.AGENT_SEARCHER`.

    Raises:
        ConfigError: ``--searcher`` names a searcher that does not load a saved agent, or the config is invalid.
    """
    name = searcher or load_config(config, list(overrides)).search.searcher
    if searcher_class(name).loads_agent:
        return name
    if searcher is not None or any(o.startswith("search.searcher=") for o in overrides):
        allowed = ", ".join(repr(n) for n in searchers_that(lambda s: s.loads_agent))
        raise ConfigError(f"--agent: searcher {name!r} does not load a saved agent; drop --searcher {name} or choose one that does ({allowed})")
    return AGENT_SEARCHER


def worker_command(storage: str, study: str, *, n_trials: int | None = None, threads: int | None = None,
                   progress: bool = True) -> SearchResult:
    """``autoprune worker``: join a stored study with ``threads`` intra-op threads (default: torch's).

    Raises:
        ConfigError: unreachable storage or unknown study.
    """
    if threads:
        torch.set_num_threads(threads)
    return run_worker(storage, study, n_trials=n_trials, progress=progress)


def run_command(config: str | Path, overrides: Sequence[str] = (), *, restart: bool = False, progress: bool = True) -> RunResult | DecoderRunResult:
    """``autoprune run``: the whole job on a config file (see :func:`autoprune.app.pipeline.run_experiment`), checked first (:func:`~autoprune.app.preflight.preflight`).

    Raises:
        ConfigError, ModelError, BudgetError: a user's mistake, found before or during the work.
    """
    return run_experiment(preflight(load_config(config, list(overrides))), progress=progress, restart=restart)


# ----------------------------------------------------------------- check
def check_command(model: str, data: str = "digits", *, ignored: Sequence[str] = (), backend: str = "torch",
                  seed: int = 0) -> tuple[PrunableGraph, SafetyReport]:
    """``autoprune check``: build a zoo or plug-in model (random weights) for a data set's shapes and run the safety net on it.

    The checks are those every command's graph goes through (:func:`autoprune.graph.safety.verified_graph`
    with the export check of ``backend``), run afresh (no verdict cache), so a unit left dense or a
    model refused here is left dense or refused by ``estimate``, ``search``, ``run`` and ``apply``.

    Args:
        model: Zoo model or ``package.module:factory``.
        data: Data set whose channels, classes and input size the model is built for.
        ignored: Module names not to prune (``model.ignore``).
        backend: The serving runtime whose export is checked (``latency.backend``).
        seed: Seed of the weights, the random channels and the random input.

    Raises:
        ConfigError: an unknown model, data set or backend (or its extra missing).
        ModelError: a model that does not fit the data, or one with nothing to prune (the line
            every command refuses it with).
    """
    MODEL.check(model)
    DATA.check(data)
    bundle = load_data(data, seed=seed)
    torch.manual_seed(seed)
    kw = dict(in_channels=bundle.in_channels, num_classes=bundle.num_classes, input_size=bundle.input_size)
    net = build_model(model, **kw).eval()
    check_model_fits(net, model, **kw)
    export_check = LatencySettings(backend=backend).serving_check()
    return verified_graph(net, bundle.example_input(1), ignored=tuple(ignored), export_check=export_check, seed=seed)


# ----------------------------------------------------------------- transfer
@dataclass
class TransferReport:
    """What ``autoprune transfer`` shows."""

    result: Any  #: :class:`autoprune.transfer.mapping.TransferResult`
    source_model: str | None
    dense_accuracy: float
    out: Path
    mapping: str  #: the mapping table (markdown)
    candidates: str  #: the candidate table (markdown)
    run_id: str | None = None
    #: What the latency-table cache gave (:meth:`~autoprune.measure.latency_model.LatencyModel.cache_summary`).
    table_cache: dict[str, Any] = field(default_factory=dict)


def source_backend(cfg: ExperimentConfig, payload: dict) -> ExperimentConfig:
    """``cfg`` timed where the source policy was searched: its recorded backend, options and batch size, unless ``latency.backend`` is set.

    A policy searched on ONNX Runtime is then re-fitted and measured on ONNX Runtime (and with
    ``pruning.round_to: auto``, rounded to that runtime's channel multiple), not on eager PyTorch.

    Raises:
        ConfigError: the recorded backend is unknown here (e.g. a plug-in that does not import).
    """
    recorded = payload.get("backend")
    if "backend" in cfg.latency.model_fields_set or not isinstance(recorded, dict) or not isinstance(recorded.get("name"), str):
        return cfg
    name = recorded["name"]
    backend_class(name)
    update: dict[str, Any] = {"backend": name, "backend_options": dict(recorded.get("options") or {})}
    if isinstance(recorded.get("batch_size"), int) and "batch_size" not in cfg.latency.model_fields_set:
        update["batch_size"] = recorded["batch_size"]
    log.info("transfer: latency on %s, where the source policy was searched (set latency.backend to choose another)", name)
    return cfg.model_copy(update={"latency": cfg.latency.model_copy(update=update)})


def honoured_ignore(cfg: ExperimentConfig, payload: dict, baseline: Baseline) -> ExperimentConfig:
    """``cfg`` with the layers the policy's search ignored (``payload["ignore"]``) ignored here too.

    Only names that are modules of this model are taken: on another architecture, the mapping
    decides, and a layer that does not exist here cannot be ignored.
    """
    modules = {name for name, _ in baseline.model.named_modules()}
    extra = [n for n in payload.get("ignore") or [] if n in modules and n not in cfg.model.ignore]
    if not extra:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"ignore": [*cfg.model.ignore, *extra]})})


def transfer_command(
    config: str | Path | None,
    policy: str,
    *,
    model: str | None = None,
    data: str | None = None,
    overrides: Sequence[str] = (),
    out: str | Path,
    refit: bool = True,
    candidates: int = 3,
    track: bool = True,
    tracking_uri: str | None = None,
    progress: bool = True,
) -> TransferReport:
    """Map a policy found on one architecture onto the config's model, re-fit its budget, measure and write it.

    Latency is measured on the backend the source policy records unless the config sets
    ``latency.backend`` (:func:`source_backend`). The layers the source search ignored are
    ignored on the target too (when it has them).

    Args:
        config, model, data, overrides: The target experiment (see :func:`experiment_config`).
        policy: The source policy: a file, ``runs:/`` or ``models:/``.
        out: Where to write the transferred policy file.
        refit: Re-fit the mapped ratios to the target's budget.
        candidates: Drop sets to re-fit and measure (the best by reward is kept).
        track: Log the mapping, policy and metrics to MLflow (experiment ``transfer``).
        tracking_uri: Where ``runs:/`` and ``models:/`` sources are.

    Raises:
        ConfigError: a missing policy or unwritable ``out``.
        PolicyError: a malformed policy file.
        BudgetError: the target is unreachable.
    """
    from autoprune.transfer.refit import candidate_table, mapping_table, transfer

    cfg = experiment_config(config, model, data, overrides)
    out = writable_file(out, "--out")
    src, payload = load_policy(policy, tracking_uri=tracking_uri)
    cfg = source_backend(cfg, payload)
    baseline = load_baseline(cfg, progress=progress)
    cfg = honoured_ignore(cfg, payload, baseline)
    evaluator = build_evaluator(cfg, baseline)
    res = transfer(src, payload, evaluator, refit=refit, measure=True, candidates=candidates)
    doc = res.document(model=cfg.model.name, data=cfg.data.name, backend=cfg.latency.backend_info(), metrics=res.metrics)
    doc["ignore"] = list(cfg.model.ignore)
    write_json_atomic(out, doc)
    report = TransferReport(res, payload.get("model"), evaluator.dense_accuracy, out, mapping_table(res.rows), candidate_table(res),
                            table_cache=evaluator.latency_model.cache_summary())
    if track:
        from autoprune.tracking.tracker import Tracker

        m = res.metrics or {}
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"experiment": "transfer", "register": False})})
        with Tracker(cfg, run_name=f"transfer-{payload.get('model')}-to-{cfg.model.name}") as tracker:
            tracker.client.set_tag(tracker.run_id, "policy_source", policy)
            tracker.log_metrics({"scale": res.scale, "predicted_value": res.predicted_value, "target": res.target,
                                 **{k: v for k, v in m.items() if k in ("accuracy", "value", "latency_ratio", "macs_ratio", "feasible")},
                                 **{f"latency_table_{k}": v for k, v in report.table_cache.items() if k != "unit"}})
            tracker.client.log_text(tracker.run_id, report.mapping, "transfer/mapping.md")
            tracker.client.log_text(tracker.run_id, report.candidates, "transfer/candidates.md")
            tracker.log_artifact(out, "transfer")
        report.run_id = tracker.run_id
    return report


__all__ = [
    "EstimateReport", "TrainReport", "TransferReport", "agent_searcher", "check_command", "estimate_uniform", "experiment_config", "honoured_ignore",
    "parse_ratios", "run_command", "search_command", "source_backend", "train_baseline", "transfer_command", "worker_command",
]
