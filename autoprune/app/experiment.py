"""Wire a validated config into the real objects: data, baseline model, evaluator, searcher.

This is the library behind ``autoprune estimate`` and ``autoprune search``; each
CLI command is a few lines over these functions.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.config.machine import check_batches_fit, fit_to_machine
from autoprune.config.schema import ExperimentConfig
from autoprune.config.settings import evaluator_options, train_settings
from autoprune.errors import ConfigError, describe
from autoprune.formats.policy_file import POLICY_FILE, policy_document, write_policy_file
from autoprune.graph.importance import DEFAULT_IMPORTANCE
from autoprune.graph.policy import Policy, model_fingerprint
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.latency import DEFAULT_THREADS, PairedTimer, count_macs_params, model_size_bytes
from autoprune.measure.table import LatencyTable
from autoprune.objective.evaluator import PolicyEvaluator, settings_label
from autoprune.objective.proxies import make_proxy
from autoprune.objective.proxy import ProxySettings
from autoprune.search import ExperimentContext, Searcher, SearchResult, searcher_class, searchers_that
from autoprune.training.baseline import default_checkpoint_path, train_or_load
from autoprune.zoo import DataBundle, build_model, check_model_fits, load_data

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
    available (:func:`autoprune.config.machine.check_batches_fit`).

    Raises:
        ConfigError: a missing ``model.checkpoint``, or a batch size that cannot fit in memory.
        ModelError: the model does not fit the data (see :func:`autoprune.zoo.check_model_fits`) or its checkpoint.
    """
    torch.manual_seed(cfg.seed)
    if cfg.proxy.metric == "fidelity":
        return load_encoder_baseline(cfg)
    data = load_data(cfg.data.name, data_dir=cfg.data.data_dir, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    ckpt = Path(cfg.model.checkpoint) if cfg.model.checkpoint else baseline_checkpoint(cfg.model.name, data.name)
    if cfg.model.checkpoint and not ckpt.is_file():
        raise ConfigError(f"model.checkpoint: file {str(ckpt)!r} does not exist")
    with torch.random.fork_rng(devices=[]):  # the probe must not change the baseline's initialisation
        probe = build_model(cfg.model.name, in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)
    check_model_fits(probe, cfg.model.name, in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)
    check_batches_fit(cfg, probe, data.example_input(1))
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


def build_evaluator(cfg: ExperimentConfig, baseline: Baseline) -> PolicyEvaluator:
    """The shared objective of a search, from the config's budget, reward, proxy, latency and pruning sections.

    Raises:
        ConfigError: e.g. a latency backend whose optional extra is not installed.
    """
    return PolicyEvaluator(baseline.model, baseline.data, **evaluator_options(cfg), baseline_name=cfg.model.name)


def output_dir(cfg: ExperimentConfig) -> Path:
    """The experiment's output directory (created); ``{name}`` was already filled in by the schema.

    Raises:
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
    """The experiment's output directory (created), removed again if the body fails before writing results.

    A command that fails (a bad checkpoint, an unreachable budget, Ctrl-C) leaves no empty folder
    behind: the folders this call created are removed when, after the failure, they hold nothing but
    ``disposable`` files (e.g. the MLflow run pointer of a run that did no work) and empty folders.

    Raises:
        ConfigError: the directory cannot be created or written.
    """
    d = Path(cfg.output_dir.replace("{name}", cfg.name))
    first_new = next((p for p in reversed([d, *d.parents]) if not p.exists()), None)
    out = output_dir(cfg)
    try:
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
            backend={**cfg.latency.backend_info(), "settings": getattr(evaluator, "backend_settings", {})}, searcher=result.searcher, episode=best.index, metrics=best.metrics.as_dict(),
            fingerprint=model_fingerprint(evaluator.graph), ignore=cfg.model.ignore,
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
    try:
        result = searcher.search(evaluator, cfg.search.episodes, seed=cfg.seed)
        wait_workers(procs, log_dir=out / "workers")
    finally:
        stop_workers(procs)
    policy_path, history_path = out / POLICY_FILE, out / "history.csv"
    write_policy(policy_path, evaluator, result, cfg)
    result.write_history_csv(history_path)
    return SearchRun(result, evaluator, policy_path, history_path, baseline, config=cfg, searcher=searcher)


def warm_start_policies(source: tuple[Policy, dict], evaluator: PolicyEvaluator, candidates: int = 3) -> list[Policy]:
    """The policies to enqueue first: the policy as it is when it fits the model, else its transfer.

    A transferred policy is re-fitted to the budget with ``candidates`` drop sets (the mapped one
    first, then shallower and deeper cuts, see :func:`autoprune.transfer.mapping.drop_candidates`); the
    search measures them as its first trials, so none is measured here.
    """
    from autoprune.errors import PolicyError
    from autoprune.graph.policy import check_policy_fits
    from autoprune.transfer.refit import transfer

    policy, payload = source
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


# ----------------------------------------------------------------- estimate
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
        eager_latency_ms, eager_ratio: The same on eager PyTorch (equal to the above on ``torch``).
        predicted_ratio: The eager lookup table's prediction (``torch`` only; NaN on other backends).
        proxy_accuracy: Validation accuracy after BatchNorm re-estimation (the search's proxy).
        seconds: Time spent per step (``prune``, ``accuracy``, ``latency``).
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
    backend: str = "torch"


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

    masked = copy.deepcopy(model)
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
    ratios: list[float],
    *,
    batch_size: int = 1,
    threads: int = DEFAULT_THREADS,
    proxy: ProxySettings = ProxySettings(),
    importance: str = DEFAULT_IMPORTANCE,
    round_to: int | None = None,
    ignored: tuple[str, ...] = (),
    backend: str = "torch",
    backend_options: dict[str, Any] | None = None,
    masks: bool = True,
    rounds: int = 20,
) -> list[EstimateRow]:
    """Measure what uniform channel pruning at each ratio really saves on a runtime, and what masks do not.

    The first row is the dense model (ratio 0, timed against a second copy of itself: the noise
    floor). Each uniform row prunes every unit by the same ratio with Torch-Pruning. With
    ``masks``, a last row zeroes as many conv/linear weights as the largest ratio's channel
    pruning removed (:func:`magnitude_masked`): the same count of non-zero weights, so its
    accuracy is comparable, with unchanged shapes, so its latency ratio stays near 1.

    Every row is timed paired against the dense model (:class:`~autoprune.measure.latency.PairedTimer`:
    5 warm-up pairs, then ``rounds`` rounds interleaving dense and candidate) on ``backend``
    and, when that is not ``torch``, again on eager PyTorch.

    Args:
        baseline: The dense model and its data.
        ratios: Channel ratios in [0, 1).
        batch_size: Batch size timed.
        threads: Intra-op threads while timing.
        proxy: Accuracy proxy settings (BN re-estimation, validation subset).
        importance, round_to, ignored: Channel selection as in the search (``pruning`` and ``model.ignore``).
        backend: Latency backend name (:data:`autoprune.measure.latency.BACKENDS`).
        backend_options: The backend's settings (``latency.backend_options``).
        masks: Add the row of unstructured magnitude masks.
        rounds: Paired rounds per row and runtime.

    Returns:
        The rows, dense first and masks last.

    Raises:
        ConfigError: a ratio out of range, an unknown backend or option, or a missing extra.
        ModelError: a model the backend cannot run (e.g. the ONNX export fails).
    """
    for r in ratios:
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"--ratios: {r!r} is out of range; allowed: 0 <= ratio < 1")
    model, data = baseline.model, baseline.data
    x1 = data.example_input(1)
    xb = data.example_input(batch_size)
    graph = PrunableGraph(model, x1, ignored=ignored)
    timer = PairedTimer(model, xb, backend=backend, threads=threads, backend_options=backend_options)
    on_torch = timer.backend.name == "torch"
    eager = timer if on_torch else PairedTimer(model, xb, threads=threads)
    label = settings_label(timer.settings())
    dense_specs = graph.specs_for({}, (), batch_size=batch_size)
    table = None
    if on_torch:
        table = LatencyTable(threads=threads)
        table.fit([(dense_specs, timer.reference_ms())])

    def paired(t: PairedTimer, m: nn.Module) -> Any:
        return t.ratio(t.prepare(m.eval()), warmup=5, rounds=rounds)

    scorer = make_proxy(model, data, proxy)  # accuracy after adaptive BN, or an encoder's fidelity
    dense_weights = _weights(model, ignored)
    variants: list[tuple[str, float]] = [("dense", 0.0), *(("channels", r) for r in ratios if r > 0)]
    if masks and any(r > 0 for r in ratios):
        variants.append(("masks", max(ratios)))
    rows: list[EstimateRow] = []
    removed_by: dict[float, int] = {}  # channel ratio -> conv/linear weights it removed
    for kind, r in variants:
        t0 = time.perf_counter()
        pol = Policy.uniform(graph.unit_names, r if kind == "channels" else 0.0)
        if kind == "channels":
            pruned = apply_policy(model, pol, graph=graph, importance=importance, round_to=round_to)
            removed_by[r] = dense_weights - _weights(pruned, ignored)
        elif kind == "masks":  # as many zeros as the largest channel row removed weights
            pruned = magnitude_masked(model, removed_by[r], ignored=ignored)
            r = removed_by[r] / max(1, dense_weights)
        else:
            pruned = copy.deepcopy(model)
        t1 = time.perf_counter()
        acc = scorer.score(pruned) if kind != "dense" else scorer.dense_score()
        t2 = time.perf_counter()
        lat = paired(timer, pruned)
        eag = lat if on_torch else paired(eager, pruned)
        t3 = time.perf_counter()
        macs, params = count_macs_params(pruned, x1)
        predicted = float("nan")
        if table is not None:
            predicted = table.predict_ratio(graph.specs_for(pol.ratios, (), round_to=round_to, batch_size=batch_size), dense_specs)
        name = {"dense": "dense", "channels": f"uniform channels {r:.0%}", "masks": f"unstructured masks {r:.0%}"}[kind]
        rows.append(
            EstimateRow(
                ratio=r, params=int(params), macs=int(macs), size_bytes=model_size_bytes(pruned),
                latency_ms=math.nan, latency_ratio=lat.ratio, latency_ci=(lat.ci_low, lat.ci_high),
                predicted_ratio=predicted, proxy_accuracy=acc,
                seconds={"prune": t1 - t0, "accuracy": t2 - t1, "latency": t3 - t2},
                label=name, kind=kind, nonzero_params=sum(int(torch.count_nonzero(p)) for p in pruned.parameters()),
                eager_ratio=eag.ratio, backend=label,
            )
        )
    dense_ms, eager_ms = timer.reference_ms(), eager.reference_ms()  # medians over every reference call above
    for row in rows:
        row.latency_ms, row.eager_latency_ms = row.latency_ratio * dense_ms, row.eager_ratio * eager_ms
    return rows
