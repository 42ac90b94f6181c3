"""One MLflow run per experiment: config params and tags, per-episode step metrics, artifacts, the pruned model.

A :class:`Tracker` is a context manager around one MLflow run::

    with Tracker(cfg) as tracker:
        tracker.log_dense({"accuracy": 0.91, "latency_ms": 3.2})
        result = searcher.search(...)          # with callback=tracker.log_episode
        tracker.log_search_result(result, {"target": 0.5, "dense_accuracy": 0.91, "unit_order": names})
        tracker.log_pruned_model("pruned.pt", register_as="resnet20-pruned", test_accuracy=0.90)

Episodes are step metrics of that run (``step`` = episode index), buffered and sent with
``log_batch``, so a search of hundreds of episodes costs milliseconds per episode and
gives one chart per metric. The pruned model is stored as run artifacts in the
pickle-free format of :mod:`autoprune.formats.pruned` (``model/model.pt``), and registered as a
model version whose source is that artifact folder (:mod:`autoprune.tracking.model_registry`, which
keeps the ``champion`` alias on the best); :func:`autoprune.tracking.artifacts.download_model_uri` turns a
``runs:/`` or ``models:/`` URI back into the local ``.pt`` file.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from autoprune.config.schema import ExperimentConfig, dump_config
from autoprune.errors import ConfigError, one_line
from autoprune.formats.pruned import FORMAT as PRUNED_FORMAT
from autoprune.formats.pruned import MODEL_DIR, MODEL_FILE
from autoprune.tracking.model_registry import register_version
from autoprune.tracking.report import finite, flat_scalars, render_report, search_summary, write_search_files
from autoprune.tracking.store import artifact_root, mlflow_message, quiet_mlflow, resolve_tracking_uri

log = logging.getLogger(__name__)

_LIBRARIES = ("torch", "torch-pruning", "optuna", "stable-baselines3", "gymnasium", "mlflow", "autoprune")

#: MLflow 3 opens an experiment on the page of its kind: a model-training experiment opens on its runs
#: (without the tag, the UI shows the GenAI traces overview, empty for autoprune).
#: Metric sections: MLflow's run page groups metrics (and their charts) by the part before ``/``,
#: so the result (``final/``) reads apart from the per-episode curves (``episode/``).
EPISODE, SEARCH, DENSE, FINETUNE, FINAL = "episode/", "search/", "dense/", "finetune/", "final/"

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

def _versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[f"version.{name}"] = "not installed"
    return out


class Tracker:
    """One MLflow run for one experiment: params, tags, step metrics per episode, artifacts, registry.

    On entering, the tracking URI and the experiment (``cfg.tracking.experiment``, else
    ``cfg.name``) are set, a run is started (or ``resume_run_id`` resumed) and the config is
    logged as params plus ``config.yaml``. On leaving, buffered metrics are flushed and the
    run ends ``FINISHED``, or ``FAILED`` after an exception, or ``KILLED`` after
    ``KeyboardInterrupt``: it is never left ``RUNNING``. If another run is active when
    entering, this run is nested under it.

    Args:
        cfg: The experiment config.
        run_name: Name of the run (default: the experiment's name).
        resume_run_id: Continue this run instead of starting a new one; params already
            logged keep their values.
        attach: Only log episodes to ``resume_run_id``, which another process owns (a
            distributed worker): the run is neither started, nor configured, nor ended here.
        flush_every: Episodes buffered before one ``log_batch`` call.

    Raises:
        ConfigError: invalid or unreachable tracking URI, unknown ``resume_run_id``, or a
            deleted experiment of that name.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        run_name: str | None = None,
        resume_run_id: str | None = None,
        attach: bool = False,
        flush_every: int = 20,
    ) -> None:
        if flush_every < 1:
            raise ConfigError(f"flush_every: {flush_every!r} must be >= 1")
        if attach and resume_run_id is None:
            raise ConfigError("attach: needs the run id of the run to log to (resume_run_id)")
        self.attach = attach
        self.cfg = cfg
        self.uri = resolve_tracking_uri(cfg.tracking.uri)
        self.experiment = cfg.tracking.experiment or cfg.name
        self.run_name = run_name or cfg.name
        self.resume_run_id = resume_run_id
        self.flush_every = flush_every
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.artifact_uri: str | None = None
        self._buffer: list[Metric] = []
        self._logged_steps: set[int] = set()
        self._pending_episodes = 0
        self._best = -math.inf

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Tracker:
        quiet_mlflow()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        if self.attach:
            run = self._existing_run(self.resume_run_id)
            self.run_id, self.experiment_id, self.artifact_uri = run.info.run_id, run.info.experiment_id, run.info.artifact_uri
            return self
        nested = mlflow.active_run() is not None
        if self.resume_run_id is not None:
            previous = self._existing_run(self.resume_run_id)
            run = mlflow.start_run(run_id=self.resume_run_id, nested=nested)
            self._best = previous.data.metrics.get(f"{EPISODE}best_reward", -math.inf)
            logged = previous.data.params
        else:
            run = mlflow.start_run(experiment_id=self._experiment_id(), run_name=self.run_name, nested=nested)
            logged = {}
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self.artifact_uri = run.info.artifact_uri
        try:
            self._log_config(logged)
        except BaseException:
            self._end("FAILED")
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.attach:
            self.flush()
            return
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, Exception):
            status = "FAILED"
        else:  # KeyboardInterrupt, SystemExit
            status = "KILLED"
        try:
            self.flush()
            if exc is not None:
                self.client.set_tag(self.run_id, "error", one_line(f"{exc_type.__name__}: {exc}", MAX_TAG_VAL_LENGTH))
        except Exception as e:  # noqa: BLE001 - never mask the body's exception, never leave the run RUNNING
            log.warning("MLflow: could not write the last metrics of run %s: %s", self.run_id, one_line(e))
            status = "FAILED" if status == "FINISHED" else status
        finally:
            self._end(status)

    def _end(self, status: str) -> None:
        while (active := mlflow.active_run()) is not None and active.info.run_id != self.run_id:
            mlflow.end_run(status)  # a nested run left open by the body
        if active is not None:
            mlflow.end_run(status)
        else:
            self.client.set_terminated(self.run_id, status)

    def _existing_run(self, run_id: str) -> Any:
        try:
            return self.client.get_run(run_id)
        except MlflowException as e:
            raise ConfigError(f"resume: no MLflow run {run_id!r} at {self.uri} ({mlflow_message(e)})") from e

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return self.client.create_experiment(self.experiment, artifact_location=artifact_root(self.uri, self.experiment),
                                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":  # created meanwhile by another worker
                    raise ConfigError(f"tracking.experiment: cannot create {self.experiment!r} ({mlflow_message(e)})") from e
                exp = self.client.get_experiment_by_name(self.experiment)
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(
                f"tracking.experiment: {self.experiment!r} was deleted in MLflow; restore it "
                f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) or choose another name"
            )
        return exp.experiment_id

    def _log_config(self, logged: Mapping[str, str]) -> None:
        params = {k: v if len(v) <= MAX_PARAM_VAL_LENGTH else v[: MAX_PARAM_VAL_LENGTH - 3] + "..." for k, v in self.cfg.flat().items()}
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            log.warning("MLflow: resumed run %s keeps its logged values of %s", self.run_id, ", ".join(changed))
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        tags = {
            "model": self.cfg.model.name,
            "data": self.cfg.data.name,
            "searcher": self.cfg.search.searcher,
            "backend": self.cfg.latency.backend,
            "budget": f"{self.cfg.budget.metric} {self.cfg.budget.target if self.cfg.budget.target is not None else str(self.cfg.budget.target_ms) + ' ms'}",
            "machine.hostname": platform.node(),
            "machine.cpu_count": str(os.cpu_count()),
            "machine.torch_threads": str(torch.get_num_threads()),
            "machine.platform": platform.platform(),
            **_versions(),
        }
        if self.resume_run_id is not None:
            tags["resumed"] = "true"
        self.client.log_batch(self.run_id, params=new, tags=[RunTag(k, v[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()])
        self.client.log_text(self.run_id, dump_config(self.cfg), "config.yaml")

    def _require_run(self) -> str:
        if self.run_id is None or self.client is None:
            raise RuntimeError("Tracker methods must be called inside `with Tracker(cfg) as tracker:`")
        return self.run_id

    # ------------------------------------------------------------ metrics
    def log_metrics(self, metrics: Mapping[str, Any], *, step: int = 0, prefix: str = "") -> None:
        """Log the finite numeric entries of ``metrics`` (nested mappings flattened with ``_``) now."""
        run_id = self._require_run()
        ts = int(time.time() * 1000)
        batch = [Metric(f"{prefix}{k}", v, ts, step) for k, v in flat_scalars(metrics).items()]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_backend(self, settings: Mapping[str, Any]) -> None:
        """Tag the run with the latency backend's settings (``backend.threads``, ``backend.spinning``, ...).

        Args:
            settings: :meth:`autoprune.measure.latency.PairedTimer.settings` of the search's timer.
        """
        run_id = self._require_run()
        tags = [RunTag(f"backend.{k}", str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in settings.items()]
        if tags:
            self.client.log_batch(run_id, tags=tags)

    def log_dense(self, metrics: Mapping[str, Any]) -> None:
        """Metrics of the unpruned model, as ``dense/<name>``."""
        self.log_metrics(metrics, prefix=DENSE)

    def log_episode(self, evaluation: Any) -> None:
        """Buffer the step metrics of one evaluation (step = its index); usable as a searcher callback.

        Logged under ``episode/`` (a section of the run page): reward, accuracy, value, latency_ratio,
        predicted_ratio, macs_ratio, feasible (0/1), failed (0/1) and best_reward (best feasible
        reward so far, once there is one). Non-finite values (failed evaluations) are left out.
        """
        self._require_run()
        m = evaluation.metrics
        if not m.failed and m.feasible and m.reward > self._best:
            self._best = float(m.reward)
        values = {
            "reward": m.reward, "accuracy": m.accuracy, "value": m.value, "latency_ratio": m.latency_ratio,
            "predicted_ratio": m.predicted_ratio, "macs_ratio": m.macs_ratio,
            "feasible": float(bool(m.feasible)), "failed": float(bool(m.failed)),
        }
        if self._best > -math.inf:
            values["best_reward"] = self._best
        ts = int(time.time() * 1000)
        step = int(evaluation.index)
        self._buffer.extend(Metric(f"{EPISODE}{k}", f, ts, step) for k, v in values.items() if (f := finite(v)) is not None)
        self._logged_steps.add(step)
        self._pending_episodes += 1
        if self._pending_episodes >= self.flush_every:
            self.flush()

    def log_missing_episodes(self, history: Sequence[Any]) -> int:
        """Log the evaluations of ``history`` the run has no step for yet (trials of an earlier, killed
        process or of workers whose buffer was lost); returns how many were added."""
        self.flush()
        try:
            present = {m.step for m in self.client.get_metric_history(self._require_run(), f"{EPISODE}failed")}
        except MlflowException:
            present = set()
        missing = [e for e in history if int(e.index) not in present | self._logged_steps]
        for evaluation in sorted(missing, key=lambda e: e.index):
            self.log_episode(evaluation)
        self.flush()
        return len(missing)

    def flush(self) -> None:
        """Send buffered episode metrics; on a failure they stay buffered for the next try."""
        if not self._buffer or self.run_id is None:
            return
        try:
            self.client.log_batch(self.run_id, metrics=self._buffer)
        except MlflowException as e:
            log.warning("MLflow: could not log %d episode metrics (will retry): %s", len(self._buffer), mlflow_message(e))
            return
        self._buffer = []
        self._pending_episodes = 0

    def log_finetune_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Fine-tuning metrics of one epoch as ``finetune/<name>`` at ``step=epoch``."""
        self.log_metrics(metrics, step=int(epoch), prefix=FINETUNE)

    # ------------------------------------------------------------ artifacts
    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        """Log a file, or a folder's contents, under ``subdir`` of the run's artifacts.

        Raises:
            ConfigError: ``path`` does not exist.
        """
        run_id = self._require_run()
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), subdir)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), subdir)
        else:
            raise ConfigError(f"log_artifact: {path} does not exist")

    def log_search_result(
        self,
        result: Any,
        info: Mapping[str, Any] | None = None,
        *,
        out_dir: str | Path | None = None,
        written: Sequence[str | Path] = (),
    ) -> dict[str, Path]:
        """Log a finished search: summary metrics, the files it wrote, ``search_info.json`` and plots.

        The search's own files (``policy.json``, ``history.csv``, written once by
        :func:`autoprune.app.experiment.run_search`) are passed as ``written`` and logged as they are,
        never rewritten here.

        Args:
            result: A :class:`autoprune.search.SearchResult`.
            info: What the plots need from the evaluator, all optional: ``target`` (budget as a
                fraction of dense), ``metric`` (``latency`` or ``macs``), ``dense_accuracy``,
                ``unit_order`` (unit names in graph order), ``uniform`` ((value, accuracy) of
                the uniform baseline). Stored as ``search_info.json``.
            out_dir: Keep ``search_info.json`` and the plots there (default: a temporary folder, removed afterwards).
            written: Files the search wrote, logged at the top of the run's artifacts under their own names.

        Returns:
            The logged files by artifact name (the temporary ones are gone without ``out_dir``). Plots
            are under ``plots/``; ``plots/sensitivity.png`` when ``result.extras`` has ``sensitivity`` curves.

        Raises:
            ConfigError: a file of ``written`` does not exist.
        """
        run_id = self._require_run()
        self.flush()
        info = {k: v for k, v in (info or {}).items() if k != "fingerprint"}
        files: dict[str, Path] = {}
        for path in map(Path, written):
            if not path.is_file():
                raise ConfigError(f"log_search_result: {path} does not exist")
            files[path.name] = path
        temp = None if out_dir is not None else tempfile.mkdtemp(prefix="autoprune-search-")
        root = Path(out_dir if out_dir is not None else temp)
        root.mkdir(parents=True, exist_ok=True)
        try:
            best = result.best
            files.update(write_search_files(result, info, root))
            for name, path in files.items():  # only what this call wrote: out_dir may hold other files (e.g. study.db)
                folder = str(Path(name).parent)
                self.client.log_artifact(run_id, str(path), None if folder == "." else folder)
            self.log_metrics(search_summary(result), prefix=SEARCH)
            if best is not None:
                self.client.set_tag(run_id, "best_policy", json.dumps(best.policy.to_dict())[:MAX_TAG_VAL_LENGTH])
        finally:
            if temp is not None:
                shutil.rmtree(temp, ignore_errors=True)
        return files

    def log_final(self, report: Mapping[str, Any], *, title: str | None = None) -> None:
        """Final results: numeric entries as ``final/<name>`` metrics, everything as ``report.md``.

        The report is also the run's description (``mlflow.note.content``): the run page opens on it.
        """
        run_id = self._require_run()
        self.log_metrics(report, prefix=FINAL)
        text = render_report(report, title or f"autoprune: {self.cfg.name}")
        self.client.log_text(run_id, text, "report.md")
        self.client.set_tag(run_id, "mlflow.note.content", text[:MAX_TAG_VAL_LENGTH])

    # ------------------------------------------------------------ models
    def log_pruned_model(
        self,
        path_pt: str | Path,
        onnx_path: str | Path | None = None,
        *,
        register_as: str | None = None,
        test_accuracy: float | None = None,
        extra_files: Sequence[str | Path] = (),
    ) -> dict[str, Any]:
        """Log a pruned model (the :func:`autoprune.formats.pruned.save_pruned` file) and optionally register it.

        The files go to the run's ``model/`` folder as ``model.pt`` (and ``model.onnx``, plus
        ``extra_files`` under their own names). With ``register_as``, a model version is created
        whose source is that folder (no MLmodel file, nothing pickled: read it back with
        :func:`download_model_uri` and :func:`autoprune.formats.pruned.load_pruned`). The new version
        gets the alias ``champion`` when the registered model has no champion yet, or when
        ``test_accuracy`` is strictly higher than the champion's ``test_accuracy`` tag.

        Args:
            path_pt: The saved pruned model.
            onnx_path: Its ONNX export, if any.
            register_as: Registered model name (None: do not register).
            test_accuracy: Stored as the version's ``test_accuracy`` tag and used for ``champion``.
            extra_files: More files to put beside the model (e.g. an int8 ONNX model).

        Returns:
            ``{"uri": "runs:/<run>/model", "name", "version", "champion"}`` (the last three None
            without ``register_as``).

        Raises:
            ConfigError: a file is missing, or the registry rejects the name.
        """
        run_id = self._require_run()
        files = {MODEL_FILE: Path(path_pt), **({"model.onnx": Path(onnx_path)} if onnx_path is not None else {})}
        files.update({Path(f).name: Path(f) for f in extra_files})
        if missing := [f for f in files.values() if not f.is_file()]:
            raise ConfigError(f"log_pruned_model: {missing[0]} does not exist")
        with tempfile.TemporaryDirectory(prefix="autoprune-model-") as d:
            for name, src in files.items():
                shutil.copyfile(src, Path(d) / name)
            self.client.log_artifacts(run_id, d, MODEL_DIR)
        out: dict[str, Any] = {"uri": f"runs:/{run_id}/{MODEL_DIR}", "name": None, "version": None, "champion": None}
        if register_as is None:
            return out
        source = f"{self.artifact_uri.rstrip('/')}/{MODEL_DIR}"
        registered = register_version(self.client, register_as, source, run_id=run_id,
                                      tags={"format": PRUNED_FORMAT, "file": MODEL_FILE}, test_accuracy=test_accuracy)
        self.client.set_tag(run_id, "registered_model", f"{register_as}/{registered.version}")
        out.update(name=register_as, version=registered.version, champion=registered.champion)
        return out


__all__ = ["Tracker", "resolve_tracking_uri"]
