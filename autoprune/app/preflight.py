"""Before any work: every check a config allows without a trained model, and the values it will really run with.

``autoprune config`` runs :func:`preflight`, and so does every command that takes a config, before
it loads a baseline, builds a graph, fits a latency table or creates its output folder, so a
mistake costs a second rather than minutes of work:

* the searcher's hyper-parameters (``search.params`` against the chosen searcher's ``defaults``
  and the values it can check alone, :meth:`autoprune.search.Searcher.check_params`), which also
  checks the scheme of a study storage (``search.storage``);
* the tracking URI's scheme and, for a local store, its path (no network: a server is contacted
  when the run starts);
* ``latency.threads`` and ``search.workers`` against the CPUs, workers against the searcher;
* the batch sizes against the available memory, from the activations of the model built
  untrained at its data set's shape (:func:`autoprune.config.machine.check_batches_fit_before_work`).

:func:`effective_config` is the config with the values a run will use written out (the ONNX
export a serving backend needs, ``round_to: auto`` resolved, the tracking store).
"""

from __future__ import annotations

import logging
from pathlib import Path

from autoprune.app.experiment import searcher_params, sized_for_workers
from autoprune.config.machine import check_batches_fit_before_work
from autoprune.config.schema import ExperimentConfig
from autoprune.config.settings import exports_onnx, round_to
from autoprune.search import searcher_class
from autoprune.tracking.store import resolve_tracking_uri

log = logging.getLogger(__name__)


def preflight(cfg: ExperimentConfig, *, memory: bool = True) -> ExperimentConfig:
    """Run every check that needs no trained model; return the config sized to this machine.

    Args:
        cfg: A validated config.
        memory: Also check the batch sizes against the available memory (builds the model untrained).

    Returns:
        ``cfg``, with ``latency.threads`` lowered where :func:`autoprune.config.machine.fit_to_machine` does.

    Raises:
        ConfigError: one line naming the field: unknown or out-of-range ``search.params``, an
            unsupported ``search.storage`` or ``tracking.uri`` scheme (or a local store's missing
            folder), threads or workers beyond the CPUs, or a batch size that cannot fit in memory.
        ModelError: a model plugin that fails to build.
    """
    cfg = sized_for_workers(cfg)
    searcher_class(cfg.search.searcher).check_params(searcher_params(cfg, Path(cfg.output_dir)))
    resolve_tracking_uri(cfg.tracking.uri, reach=False)
    if memory and not check_batches_fit_before_work(cfg):
        log.info("memory: the batch sizes are checked once %r is loaded (its shape is not known before)", cfg.data.name)
    return cfg


def effective_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with the values a run really uses written out.

    ``export.onnx`` is true when a run delivers ``model.onnx`` (:func:`~autoprune.config.settings.exports_onnx`);
    ``pruning.round_to: auto`` becomes the backend's channel multiple (or null); ``tracking.uri``
    becomes the store it resolves to (null: ``./mlflow.db``).

    Raises:
        ConfigError: an unknown backend or an invalid tracking URI.
    """
    export = cfg.export.model_copy(update={"onnx": exports_onnx(cfg)})
    pruning = cfg.pruning.model_copy(update={"round_to": round_to(cfg)})
    tracking = cfg.tracking.model_copy(update={"uri": resolve_tracking_uri(cfg.tracking.uri, reach=False)})
    return cfg.model_copy(update={"export": export, "pruning": pruning, "tracking": tracking})


__all__ = ["effective_config", "preflight"]
