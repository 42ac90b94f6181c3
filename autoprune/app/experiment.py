"""Wire a validated config into the real objects: data, baseline model, evaluator, searcher (the library behind ``autoprune search``
and the baseline of every command; ``estimate``'s is :mod:`autoprune.app.estimate`, a decoder's parts :mod:`autoprune.app.decoder_experiment`)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.app.decoder_experiment import checked_decoder_policy, decoder_evaluator, load_decoder_parts
from autoprune.app.folder_lock import folder_lock
from autoprune.app.stages import stage
from autoprune.config.machine import check_batches_fit, fit_to_machine
from autoprune.config.schema import ExperimentConfig
from autoprune.config.settings import evaluator_options, export_check, finetune_settings, pruning_record, selection_settings, train_settings
from autoprune.errors import ConfigError, describe
from autoprune.formats.policy_file import POLICY_FILE, policy_document, write_policy_file
from autoprune.graph.check import default_cache_dir
from autoprune.graph.policy import Policy, model_fingerprint
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.safety import SafetyReport, verified_graph
from autoprune.measure.fresh import ZooModel
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search import ExperimentContext, Searcher, SearchResult, searcher_class, searchers_that
from autoprune.search.pool import baseline_pool
from autoprune.search.selection import select_on_higher_fidelity
from autoprune.training.baseline import default_checkpoint_path, train_or_load
from autoprune.training.screen import short_finetune_accuracy
from autoprune.zoo import DataBundle, build_model, check_model_fits, load_data
from autoprune.zoo.lm_text import LMCorpus

log = logging.getLogger(__name__)

#: Baselines committed with the repository (trained by ``autoprune train``), looked up first.
COMMITTED_CHECKPOINTS = Path(__file__).resolve().parents[2] / "experiments" / "checkpoints"  # autoprune/app/ -> repo root


def baseline_checkpoint(model_name: str, data_name: str) -> Path:
    """Where the baseline of ``model_name`` on ``data_name`` is cached: the committed one if present."""
    committed = default_checkpoint_path(model_name, data_name, COMMITTED_CHECKPOINTS)
    if committed.is_file():
        return committed
    return default_checkpoint_path(model_name, data_name, os.environ.get("AUTOPRUNE_CACHE", ".autoprune/checkpoints"))


@dataclass
class Baseline:
    """A trained dense model with its data."""

    model: nn.Module
    data: DataBundle  #: a :class:`~autoprune.zoo.text.TokenizedCorpus` for a sentence encoder
    meta: dict[str, Any]
    checkpoint: Path


def load_baseline(cfg: ExperimentConfig, *, progress: bool = True) -> Baseline:
    """Load the data and the dense model, training and caching the model if no checkpoint exists.

    Before anything is trained, the config's batch sizes are checked against the memory
    available (:func:`autoprune.config.machine.check_batches_fit`), and the untrained model goes
    through the safety net (:func:`experiment_graph`), so a model with nothing to prune is refused
    in seconds, not after its training; its verdicts are cached for the trained model.

    Raises:
        ConfigError: a missing ``model.checkpoint``, or a batch size that cannot fit in memory.
        ModelError: the model does not fit the data (see :func:`autoprune.zoo.check_model_fits`) or its
            checkpoint, or it has nothing to prune (:func:`experiment_graph`).
    """
    torch.manual_seed(cfg.seed)
    if cfg.proxy.metric == "fidelity":
        return load_encoder_baseline(cfg)
    if cfg.proxy.metric == "kl":  # a decoder LLM (the schema sets kl for one): pretrained, on text blocks
        return Baseline(*load_decoder_parts(cfg))
    data = load_data(cfg.data.name, data_dir=cfg.data.data_dir, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    ckpt = Path(cfg.model.checkpoint) if cfg.model.checkpoint else baseline_checkpoint(cfg.model.name, data.name)
    if cfg.model.checkpoint and not ckpt.is_file():
        raise ConfigError(f"model.checkpoint: file {str(ckpt)!r} does not exist")
    with torch.random.fork_rng(devices=[]):  # the probe must not change the baseline's initialisation
        probe = build_model(cfg.model.name, in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)
    check_model_fits(probe, cfg.model.name, in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)
    check_batches_fit(cfg, probe, data.example_input(1))
    if not ckpt.is_file():  # the safety net's checks depend on the architecture only: refuse before training
        with _graph_warnings_deferred():
            experiment_graph(cfg, probe, data)
    stage("baseline", f"{cfg.model.name} on {data.name}, " + (f"weights from {ckpt}" if ckpt.is_file() else
                                                              f"training {cfg.train.epochs} epoch(s) into {ckpt}"))
    model, meta = train_or_load(
        cfg.model.name, data, train_settings(cfg), checkpoint=ckpt, progress=progress,
        settings_must_match=not cfg.model.checkpoint and "train" in cfg.model_fields_set,  # train settings the user chose
    )
    return Baseline(model.eval(), data, meta, ckpt)


def load_encoder_baseline(cfg: ExperimentConfig) -> Baseline:
    """A pretrained sentence encoder as it is (no training) with its tokenised text.

    The model is :func:`autoprune.zoo.hf.load_encoder` of ``model.name``; the data are the three
    splits of ``data.name`` (:func:`autoprune.zoo.text.load_text_data`) tokenised by the model's
    own tokenizer at ``data.max_length`` tokens, so the example input is
    ``(input_ids, attention_mask)``, each ``(batch, max_length)`` int64.

    Raises:
        ConfigError: the nlp extra is missing, an unknown encoder folder, or ``data.max_length``
            above the model's maximum positions.
        DataError: the text files are missing (naming the Debian package) or too few.
        ModelError: the folder's weights cannot be loaded as an encoder.
    """
    from autoprune.zoo.hf import load_encoder
    from autoprune.zoo.text import load_text_data

    encoder = load_encoder(cfg.model.name)
    d = cfg.data
    corpus = load_text_data(d.name, data_dir=d.data_dir, val_fraction=d.val_fraction, limit=d.limit)
    data = corpus.tokenize(encoder.tokenizer, max_length=d.max_length, max_positions=encoder.max_positions)
    meta = {"encoder": encoder.name, "folder": str(encoder.folder) if encoder.folder else None,
            "sentences": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}}
    return Baseline(encoder.model.eval(), data, meta, encoder.folder or Path(cfg.model.name))


def is_encoder(baseline: Baseline) -> bool:
    """True when the baseline is a sentence encoder on tokenised text (proxy: fidelity)."""
    from autoprune.zoo.text import TokenizedCorpus

    return isinstance(baseline.data, TokenizedCorpus)


def is_decoder(baseline: Baseline) -> bool:
    """True when the baseline is a decoder LLM on blocks of text (proxy: KL)."""
    return isinstance(baseline.data, LMCorpus)


def zoo_model(cfg: ExperimentConfig, baseline: Baseline) -> ZooModel | None:
    """How a fresh process rebuilds the experiment's model (None for an encoder or decoder: no zoo factory rebuilds it)."""
    if is_encoder(baseline) or is_decoder(baseline):
        return None
    data = baseline.data
    return ZooModel(cfg.model.name, in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)


def experiment_graph(cfg: ExperimentConfig, model: nn.Module, data: DataBundle) -> tuple[PrunableGraph, SafetyReport]:
    """The graph every command prunes ``model`` through: :func:`autoprune.graph.safety.verified_graph` with the config's settings.

    ``model.ignore``, ``pruning.drop_blocks``, the export check of what it serves and delivers
    (:func:`~autoprune.config.settings.export_check`: ``latency.backend``, ``export.onnx``) and the shared verdict
    cache (:func:`~autoprune.graph.check.default_cache_dir`): a unit that fails a check is left
    dense with one warning line in every command alike, and a model with nothing left is refused
    with the same line.

    Args:
        model: The dense model (trained or not: the verdicts depend on its architecture only).
        data: Its data; the checks run at ``data.example_input(1)``'s shape.

    Raises:
        ModelError: the model cannot be pruned at all (one line naming the module and why).
        ConfigError: the latency backend is unknown or its extra is missing.
    """
    return verified_graph(model, data.example_input(1), ignored=tuple(cfg.model.ignore), drop_blocks=cfg.pruning.drop_blocks,
                          export_check=export_check(cfg), cache_dir=default_cache_dir())


@contextlib.contextmanager
def _graph_warnings_deferred() -> Iterator[None]:
    """Hold back the graph's warnings: the probe's verdicts are cached and warned about once, by the trained model's graph."""
    logger = logging.getLogger("autoprune.graph")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_evaluator(cfg: ExperimentConfig, baseline: Baseline) -> PolicyEvaluator:
    """The shared objective of a search, from the config's sections (its graph is :func:`experiment_graph`'s).

    Raises:
        ConfigError: e.g. a latency backend whose optional extra is not installed.
        ModelError: the model has nothing to prune (see :func:`experiment_graph`).
    """
    evaluator = decoder_evaluator(cfg, baseline.model, baseline.data) if is_decoder(baseline) else None
    if evaluator is None:
        graph, _ = experiment_graph(cfg, baseline.model, baseline.data)
        stage("objective", f"pruning graph, dense {cfg.proxy.metric} and the latency model on {cfg.latency.backend}")
        evaluator = PolicyEvaluator(baseline.model, baseline.data, **evaluator_options(cfg), graph=graph,
                                    baseline_name=cfg.model.name, zoo=zoo_model(cfg, baseline))
    evaluator.searches_at_target = cfg.search.at_target
    return evaluator


def output_dir(cfg: ExperimentConfig) -> Path:
    """The experiment's output directory (created); ``{name}`` was already filled in by the schema. Raises:
        ConfigError: it cannot be created or written.
    """
    d = Path(cfg.output_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir: cannot create {str(d)!r} ({e.strerror or describe(e)})") from e
    if not os.access(d, os.W_OK):
        raise ConfigError(f"output_dir: {str(d)!r} is not writable")
    return d


@contextlib.contextmanager
def experiment_dir(cfg: ExperimentConfig, *, disposable: Sequence[str] = ()) -> Iterator[Path]:
    """The experiment's output directory (created and locked), removed again if the body fails before writing results.

    The body holds the folder's lock (:func:`autoprune.app.folder_lock.folder_lock`): another
    command on the same folder is refused until it ends. A command that fails (a bad checkpoint, an unreachable budget, Ctrl-C) leaves no empty folder
    behind: the folders this call created are removed when, after the failure, they hold nothing but
    ``disposable`` files (e.g. the MLflow run pointer of a run that did no work) and empty folders.

    Raises:
        ConfigError: the directory cannot be created or written, or another process holds its lock.
    """
    d = Path(cfg.output_dir.replace("{name}", cfg.name))
    first_new = next((p for p in reversed([d, *d.parents]) if not p.exists()), None)
    out = output_dir(cfg)
    try:
        with folder_lock(out):
            yield out
    except BaseException:
        if first_new is not None:
            _remove_if_unused(first_new, set(disposable))
        raise


def _remove_if_unused(folder: Path, disposable: set[str]) -> None:
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    if any(p.name not in disposable for p in files):
        return
    shutil.rmtree(folder, ignore_errors=True)
    log.info("removed %s: the failed command wrote nothing there", folder)


def experiment_context(cfg: ExperimentConfig, out: Path, *, storage: str | None = None, study: str | None = None) -> ExperimentContext:
    """What the searcher may know of the experiment: its folder, name and ``search`` section (``storage``/``study`` override it)."""
    s = cfg.search
    return ExperimentContext(output_dir=out, name=cfg.name, params=dict(s.params), sampler=s.sampler,
                             storage=storage or s.storage, study=study or s.study)


def searcher_params(cfg: ExperimentConfig, out: Path) -> dict[str, Any]:
    """Searcher hyper-parameters: ``search.params`` over the defaults the searcher derives from the experiment.

    See :meth:`autoprune.search.Searcher.experiment_params` (e.g. Optuna's study in
    ``<output_dir>/study.db``, PPO's agent in ``<output_dir>/agent``).

    Raises:
        ConfigError: the searcher cannot be imported.
    """
    return {**searcher_class(cfg.search.searcher).experiment_params(experiment_context(cfg, out)), **cfg.search.params}


def write_policy(path: Path, evaluator: PolicyEvaluator, result: SearchResult, cfg: ExperimentConfig) -> None:
    """Write the best policy with its metrics, provenance, ignored layers and the model's fingerprint (atomically).

    ``cfg`` must be the configuration the search ran with (see :func:`sized_for_workers`): the
    latency backend's thread count recorded here is the one that timed the policy.

    Raises:
        OSError: the file cannot be written.
    """
    best = result.best
    payload = None
    if best is not None:
        payload = policy_document(
            best.policy, model=cfg.model.name, data=cfg.data.name, metric=evaluator.budget.metric, target=evaluator.target,
            backend={**cfg.latency.backend_info(), "settings": evaluator.latency_model.backend_settings}, searcher=result.searcher, episode=best.index, metrics=best.metrics.as_dict(),
            fingerprint=model_fingerprint(evaluator.graph), ignore=cfg.model.ignore, pruning=pruning_record(cfg),
        )
    write_policy_file(path, payload)


def sized_for_workers(cfg: ExperimentConfig) -> ExperimentConfig:
    """The configuration a search really runs with: with ``search.workers`` > 1, fewer threads per process.

    ``N`` local workers share the machine's cores, so each times latency with
    :func:`autoprune.config.machine.threads_per_worker` threads (:func:`autoprune.config.machine.fit_to_machine`) when ``latency.threads`` is higher.
    Everything recorded about the search (``policy.json``, MLflow params) uses the returned config.

    Raises:
        ConfigError: ``search.workers`` > 1 with a searcher that does not support workers.
    """
    workers = cfg.search.workers
    if workers > 1 and not searcher_class(cfg.search.searcher).supports_workers:
        allowed = ", ".join(repr(n) for n in searchers_that(lambda s: s.supports_workers))
        raise ConfigError(f"search.workers: {workers} worker processes need a searcher that supports workers ({allowed}); "
                          f"{cfg.search.searcher!r} runs in one process (set search.workers to 1)")
    return fit_to_machine(cfg)


@dataclass
class SearchRun:
    """A finished search with where its files went."""

    result: SearchResult
    evaluator: PolicyEvaluator
    policy_path: Path
    history_path: Path
    baseline: Baseline
    extras: dict[str, Any] = field(default_factory=dict)
    config: ExperimentConfig | None = None  #: the configuration the search ran with (see :func:`sized_for_workers`)
    searcher: Searcher | None = None  #: the searcher that ran (ask it what it can do)


def run_search(
    cfg: ExperimentConfig,
    *,
    progress: bool = True,
    callback: Callable | None = None,
    baseline: Baseline | None = None,
    tracking: tuple[str, str] | None = None,
    restart: bool = False,
    warm_start: tuple[Policy, dict] | None = None,
) -> SearchRun:
    """Load the baseline, build the evaluator, run the configured searcher, write policy JSON and history CSV.

    An Optuna search keeps its study in ``search.storage`` (default: ``<output_dir>/study.db``):
    the same config run again continues where it stopped, ``restart`` starts it afresh. With
    ``search.workers`` > 1, that many local worker processes share the study (this process is
    one of them).

    Args:
        tracking: ``(tracking_uri, run_id)`` of the MLflow run that workers log their trials to.
        restart: Delete the stored study (or PPO checkpoint) first.
        warm_start: A policy and its file's payload (:func:`autoprune.app.uris.load_policy`) to evaluate
            first (Optuna); one from another architecture is transferred and re-fitted to the budget.

    Raises:
        ConfigError: e.g. ``search.workers`` > 1 with a searcher that does not support workers.
    """
    cfg = sized_for_workers(cfg)
    with experiment_dir(cfg) as out:
        return _search_in(cfg, out, progress=progress, callback=callback, baseline=baseline, tracking=tracking,
                          restart=restart, warm_start=warm_start)


def _search_in(cfg: ExperimentConfig, out: Path, *, progress: bool, callback: Callable | None, baseline: Baseline | None,
               tracking: tuple[str, str] | None, restart: bool, warm_start: tuple[Policy, dict] | None) -> SearchRun:
    from autoprune.search.distributed import publish_study, spawn_workers, stop_workers, wait_workers

    workers = cfg.search.workers
    if workers > 1:
        torch.set_num_threads(cfg.latency.threads)
    baseline = baseline or load_baseline(cfg, progress=progress)
    evaluator = build_evaluator(cfg, baseline)
    searcher_cls = searcher_class(cfg.search.searcher)
    params = searcher_params(cfg, out)
    if warm_start is not None:
        params["enqueue"] = [*(p.to_dict() for p in warm_start_policies(warm_start, evaluator)), *params.get("enqueue", [])]
    if restart:
        searcher_cls.forget(params)
    procs: list = []
    extra: dict[str, Any] = {}
    if searcher_cls.supports_workers:
        def on_ready(study: Any) -> None:
            publish_study(study, cfg.model_dump(mode="json"), cfg.search.episodes, run=tracking)
            if workers > 1:
                procs.extend(spawn_workers(params["storage"], study.study_name, workers - 1,
                                           threads=cfg.latency.threads, log_dir=out / "workers"))
        extra["on_ready"] = on_ready
    searcher = searcher_cls(params, progress=progress, callback=callback, **extra)
    evaluator.check_reachable()
    stage("search", f"{cfg.search.searcher}, {cfg.search.episodes} episodes" + (f", {workers} workers" if workers > 1 else ""))
    try:
        seeds = baseline_pool(evaluator) if cfg.search.seed_baselines and searcher.seeded else None
        result = searcher.search(evaluator, cfg.search.episodes, seed=cfg.seed, seeds=seeds)
        wait_workers(procs, log_dir=out / "workers")
    finally:
        stop_workers(procs)
    selection = selection_settings(cfg)
    if selection.finalists > 1 and not (is_encoder(baseline) or is_decoder(baseline)):  # theirs is distillation, not labels
        short = finetune_settings(cfg)
        result = select_on_higher_fidelity(
            result, lambda policy: short_finetune_accuracy(evaluator, policy, short, selection.finalist_steps), selection, progress=progress)
    policy_path, history_path = out / POLICY_FILE, out / "history.csv"
    write_policy(policy_path, evaluator, result, cfg)
    result.write_history_csv(history_path)
    return SearchRun(result, evaluator, policy_path, history_path, baseline, config=cfg, searcher=searcher)


def warm_start_policies(source: tuple[Policy, dict], evaluator: PolicyEvaluator, candidates: int = 3) -> list[Policy]:
    """The policies to enqueue first: the policy as it is when it fits the model, else its transfer (a decoder's is only checked).

    A transferred policy is re-fitted to the budget with ``candidates`` drop sets (the mapped one
    first, then shallower and deeper cuts, see :func:`autoprune.transfer.mapping.drop_candidates`); the
    search measures them as its first trials, so none is measured here.
    """
    from autoprune.errors import PolicyError
    from autoprune.graph.policy import check_policy_fits
    from autoprune.transfer.refit import transfer

    policy, payload = source
    if not evaluator.graph.transferable:
        return [checked_decoder_policy(policy, payload, evaluator)]
    try:
        check_policy_fits(policy, evaluator.graph, fingerprint=payload.get("fingerprint"))
        if set(policy.drop) <= set(evaluator.block_names):
            return [Policy({u: min(r, evaluator.max_ratio) for u, r in policy.ratios.items()}, policy.drop)]
    except PolicyError:
        pass
    moved = transfer(policy, payload, evaluator, refit=True, candidates=candidates)
    log.info("warm start: policy of %s transferred, %d drop set(s): %s", payload.get("model"), len(moved.candidates),
             ", ".join(f"{len(c.policy.drop)} blocks dropped (scale {c.scale:.2f})" for c in moved.candidates))
    return [c.policy for c in moved.candidates]


def run_worker(storage: str, study_name: str, *, n_trials: int | None = None, progress: bool = True) -> SearchResult:
    """Join a study created by ``autoprune search``: run trials until it has its episodes (or ``n_trials``).

    The experiment config comes from the study; trials are logged to the search's MLflow run.

    Raises:
        ConfigError: unreachable storage or unknown study.
    """
    from autoprune.config.loading import parse_config
    from autoprune.search.distributed import read_study

    info = read_study(storage, study_name)
    cfg = parse_config(info.config, source=f"study {study_name!r}")
    searcher_cls = searcher_class(cfg.search.searcher)
    if not searcher_cls.supports_workers:
        raise ConfigError(f"--study: {study_name!r} was stored by searcher {cfg.search.searcher!r}, which does not support workers")
    baseline = load_baseline(cfg, progress=False)
    evaluator = build_evaluator(cfg, baseline)
    out = Path(cfg.output_dir)
    params = {**searcher_params(cfg, out),
              **searcher_cls.worker_params(experiment_context(cfg, out, storage=storage, study=study_name), n_trials=n_trials)}
    tracker = None
    if info.run_id and info.tracking_uri:
        from autoprune.tracking.tracker import Tracker

        tracker = Tracker(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": info.tracking_uri})}),
                          resume_run_id=info.run_id, attach=True)
    searcher = searcher_cls(params, progress=progress, callback=tracker.log_episode if tracker else None)
    searcher.confirm_top = 0  # the coordinating `autoprune search` confirms the winners
    seed = cfg.seed + 1 + os.getpid() % 100_003  # workers starting together must not draw the same startup trials
    if tracker is None:
        return searcher.search(evaluator, info.episodes, seed=seed)
    with tracker:
        return searcher.search(evaluator, info.episodes, seed=seed)
