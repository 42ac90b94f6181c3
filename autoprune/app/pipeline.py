"""The end-to-end job behind ``autoprune run``: search -> apply -> fine-tune -> evaluate -> export -> MLflow.

Search sees only the validation split; the final accuracy is measured on the test
split, which nothing before this point has looked at. A sentence encoder (proxy ``fidelity``)
is distilled instead of fine-tuned on labels, its test figure is fidelity to the dense
embeddings, and its tokenizer is exported beside ``model.onnx`` (:mod:`autoprune.app.encoder_run`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow import MlflowClient
from torch import nn

from autoprune.app.decoder_run import DecoderRunResult, run_decoder
from autoprune.app.experiment import Baseline, SearchRun, experiment_dir, is_decoder, is_encoder, load_baseline, run_search, sized_for_workers
from autoprune.app.stages import stage
from autoprune.config.schema import ExperimentConfig
from autoprune.config.settings import exports_onnx, finetune_settings, latency_settings, pruning_record, recover_settings
from autoprune.config.settings import round_to as settings_round_to
from autoprune.formats.onnx import export_onnx, onnx_predictions, quantize_onnx
from autoprune.formats.pruned import save_pruned
from autoprune.graph.importance import make_importance, needs_data
from autoprune.graph.policy import Policy, model_fingerprint
from autoprune.graph.surgery import apply_iteratively, apply_policy
from autoprune.measure.backends import backend_class
from autoprune.measure.compare import RuntimeComparison, compare_onnx_files, compare_to_dense, int8_timing_backend, speed_words
from autoprune.measure.fresh import ZooModel
from autoprune.measure.fresh_compare import compare_in_fresh_process
from autoprune.measure.latency import count_macs_params, model_size_bytes
from autoprune.measure.schedule import PairedSchedule
from autoprune.measure.settings import LatencySettings
from autoprune.measure.uncertainty import LatencyEstimate
from autoprune.objective.proxy import recalibrate_bn, split_metrics
from autoprune.paths import write_json_atomic
from autoprune.tracking.tracker import Tracker, resolve_tracking_uri
from autoprune.training.finetune import finetune

log = logging.getLogger(__name__)

#: MLflow tag of a run whose delivered model is not faster than dense on the serving runtime (its value: the warning line).
NOT_FASTER_TAG = "not_faster_than_dense"


def apply_best(cfg: ExperimentConfig, baseline: Baseline, policy: Policy, graph: Any = None, *, evaluator: Any = None) -> nn.Module:
    """Apply a policy to the dense model, one-shot or in ``pruning.iterative_steps`` stages.

    BatchNorm statistics are then re-estimated exactly as the search's accuracy proxy did
    (``proxy.bn_batches`` training batches, same seed), so the delivered model before fine-tuning
    is the model whose proxy accuracy the policy was chosen on.

    Args:
        cfg: The experiment (``pruning``: importance, round_to, iterative steps).
        baseline: The dense model and its data.
        policy: What to prune.
        graph: A :class:`~autoprune.graph.prunable.PrunableGraph` on ``baseline.model`` (built if None).
        evaluator: The search's :class:`~autoprune.objective.evaluator.PolicyEvaluator`: its graph,
            calibration batches and loss are reused, so a data-driven criterion (``taylor``,
            ``activation``) ranks channels exactly as it did in the search. Without it such a
            criterion draws its calibration batches from the config's proxy here.
    """
    p = cfg.pruning
    batches = loss = None
    if evaluator is not None:
        graph, batches, loss = evaluator.graph, evaluator.calibration_batches, evaluator.scorer.loss
    elif needs_data(make_importance(p.importance)):
        from autoprune.config.settings import proxy_settings
        from autoprune.objective.proxies import make_proxy

        scorer = make_proxy(baseline.model, baseline.data, proxy_settings(cfg), seed=cfg.seed)
        batches, loss = scorer.calibration_batches, scorer.loss
    if p.iterative_steps > 1:
        recover = recover_settings(cfg)
        pruned = apply_iteratively(
            baseline.model, policy, example_input=baseline.data.example_input(1), steps=p.iterative_steps,
            recover=lambda m: finetune(m, baseline.data, recover, progress=False),
            importance=p.importance, round_to=settings_round_to(cfg), batches=batches, loss=loss,
        )
    else:
        pruned = apply_policy(
            baseline.model, policy, graph=graph, example_input=baseline.data.example_input(1),
            importance=p.importance, round_to=settings_round_to(cfg), batches=batches, loss=loss,
        )
    recalibrate_bn(pruned, baseline.data.train, batches=cfg.proxy.bn_batches, batch_size=cfg.proxy.bn_batch_size, seed=cfg.seed)
    return pruned.eval()


@dataclass
class ModelReport:
    """Final figures of one model on the test split, on the serving backend and on eager PyTorch.

    ``latency_ms`` and ``latency_ci_ms`` are milliseconds per call at the latency batch size on
    ``latency.backend`` (the serving runtime); ``eager_latency_ms`` the same on eager PyTorch
    (equal to ``latency_ms`` when the backend is eager); ``macs`` are multiply-accumulates
    per input sample (:func:`autoprune.measure.latency.count_macs_params`); ``size_bytes`` is the
    serialised ``state_dict``; ``backend_settings`` are the serving backend's settings that timed it;
    ``latency`` is the latency ratio to dense on the serving backend as one estimate (mean, 95%
    interval, rounds; source ``fresh`` when timed in a fresh process, else ``final``).
    """

    test_accuracy: float
    latency_ms: float
    latency_ci_ms: tuple[float, float]
    macs: int
    params: int
    size_bytes: int
    eager_latency_ms: float = float("nan")
    backend: str = LatencySettings.backend
    backend_settings: dict[str, Any] = field(default_factory=dict)
    latency: LatencyEstimate | None = None


def measure_final(model: nn.Module, dense: nn.Module, baseline: Baseline, cfg: ExperimentConfig,
                  score: Callable[[nn.Module], float] | None = None, *, zoo: ZooModel | None = None) -> tuple[ModelReport, ModelReport]:
    """Test accuracy and paired latency (30 rounds) of ``model`` and the dense model.

    Latency is measured on the serving backend (``latency.backend`` with its options) and then on
    eager PyTorch, each pair on one runtime: with ``zoo`` in fresh processes
    (:func:`autoprune.measure.fresh_compare.compare_in_fresh_process`, the protocol of the search's
    finalists, so the final table and the search summary report one kind of figure, and no
    session of the search is alive while eager PyTorch is timed); without it (a model no child can
    rebuild) in this process by :func:`autoprune.measure.compare.compare_to_dense`.

    Args:
        score: The test figure of a model (None: top-1 accuracy on the test split; an encoder's
            is its test fidelity, :func:`autoprune.app.encoder_run.test_fidelity`).
        zoo: How a fresh process rebuilds the models (None: time them here).
    """
    score = score or (lambda m: split_metrics(m, baseline.data.test)["accuracy"])
    latency = latency_settings(cfg)
    x = baseline.data.example_input(latency.batch_size)
    if zoo is not None:
        (timed,) = compare_in_fresh_process([model], dense, x, latency, zoo=zoo, rounds=30)
    else:
        (timed,) = compare_to_dense([model], dense, x, latency, rounds=30)
    x1 = baseline.data.example_input(1)
    source = "fresh" if zoo is not None else "final"
    return _report(dense, score, x1, cfg, timed, dense=True), _report(model, score, x1, cfg, timed, dense=False, source=source)


def _report(m: nn.Module, score: Callable[[nn.Module], float], x1: Any, cfg: ExperimentConfig, timed: RuntimeComparison,
            *, dense: bool, source: str = "final") -> ModelReport:
    """One model's figures: the dense model's latency is the dense ms of the pairs, its ratio 1."""
    macs, params = count_macs_params(m, x1)
    serving_ms, ci_ms, eager_ms = ((timed.serving_dense_ms, (timed.serving_dense_ms,) * 2, timed.eager_dense_ms) if dense
                                   else (timed.serving_ms, timed.serving_ci_ms, timed.eager_ms))
    estimate = None if dense else LatencyEstimate.of_measurement(timed.serving, source=source)
    return ModelReport(test_accuracy=score(m), latency_ms=serving_ms, latency_ci_ms=ci_ms, macs=int(macs), params=int(params),
                       size_bytes=model_size_bytes(m), eager_latency_ms=eager_ms, backend=cfg.latency.backend,
                       backend_settings=dict(timed.settings), latency=estimate)


def decide_int8(
    cfg: ExperimentConfig, baseline: Baseline, fp32_path: Path, fp32_accuracy: float, out: Path, *, keep_rejected: bool = False
) -> dict[str, Any]:
    """Static QDQ int8 of the fp32 artifact, kept only when it is faster *and* accurate enough.

    Calibrated on 8 training batches of 32 (ONNX Runtime ``quantize_static``, MinMax); timed
    against fp32 by paired measurement (:func:`autoprune.measure.compare.compare_onnx_files`,
    30 rounds at the latency batch size) on the runtime that will serve it
    (:func:`autoprune.measure.compare.int8_timing_backend`: the serving backend when it runs int8
    ONNX files, else ONNX Runtime); its test accuracy is computed by ONNX Runtime.

    Args:
        cfg: The experiment (``export.int8_tolerance``, ``latency``).
        baseline: The data (training batches to calibrate, test split to check).
        fp32_path: The pruned fp32 ONNX file.
        fp32_accuracy: The pruned model's test accuracy in [0, 1].
        out: Where ``model.int8.onnx`` is written, only when it is kept (a rejected candidate is deleted).
        keep_rejected: Keep a rejected file too, as ``model.int8.onnx`` (benchmarks that time it anyway).

    Returns:
        ``{"path" (None when rejected), "kept", "runtime" (where it was timed), "speed_ratio" (int8 / fp32 latency), "ms" (int8 ms
        there), "fp32_ms", "test_accuracy", "accuracy_drop_points", "reason"}``.

    Raises:
        ConfigError: the onnx extra is missing.
        ModelError: ONNX Runtime's quantiser fails on the model.
    """
    batches = [xb.numpy() for xb, _ in list(baseline.data.train.batches(32, shuffle=True, seed=cfg.seed))[:8]]
    deployable = out / "model.int8.onnx"
    deployable.unlink(missing_ok=True)  # a rejected candidate of an earlier run must not linger either
    int8_path = Path(quantize_onnx(fp32_path, out / ".model.int8.candidate.onnx", calibration=batches))
    runtime, options = int8_timing_backend(latency_settings(cfg))
    stats = compare_onnx_files(fp32_path, int8_path, baseline.data.example_input(cfg.latency.batch_size), threads=cfg.latency.threads,
                               schedule=PairedSchedule(rounds=30), backend=runtime, backend_options=options)
    test = baseline.data.test
    logits = onnx_predictions(int8_path, test.x, threads=cfg.latency.threads)
    acc = float((torch.from_numpy(logits).argmax(1) == test.y).float().mean()) if len(test.y) else float("nan")
    drop = 100 * (fp32_accuracy - acc)
    tol = cfg.export.int8_tolerance
    faster = stats.ratio < 1.0
    accurate = drop <= tol
    if faster and accurate:
        reason = f"int8 deployed: {1 / stats.ratio:.2f}x faster than fp32 on {runtime}, {drop:+.2f} pts test accuracy (tolerance {tol:g})"
    else:
        why = []
        if not faster:
            why.append(f"int8 is not faster than fp32 on {runtime} ({stats.ratio:.2f}x its latency)")
        if not accurate:
            why.append(f"int8 loses {drop:.2f} pts of test accuracy (export.int8_tolerance {tol:g})")
        reason = "fp32 kept: " + "; ".join(why)
    if faster and accurate or keep_rejected:
        int8_path = int8_path.replace(deployable)
    else:  # only the deployable artifact stays beside model.onnx; the figures stay in the report
        int8_path.unlink(missing_ok=True)
    return {"path": str(int8_path) if faster and accurate or keep_rejected else None, "kept": faster and accurate, "runtime": runtime, "speed_ratio": stats.ratio, "ms": stats.cand_median_ms,
            "fp32_ms": stats.ref_median_ms, "test_accuracy": acc, "accuracy_drop_points": drop, "reason": reason}


def not_faster_warning(dense: ModelReport, pruned: ModelReport) -> str | None:
    """One line when the delivered model is not faster than dense on the serving runtime, else None.

    Not faster: the upper end of the pruned model's 95% latency interval reaches the dense latency
    (a paired measurement, :func:`measure_final`), so no speed-up was measured.
    """
    low, high = pruned.latency_ci_ms
    if high < dense.latency_ms:
        return None
    return (f"the pruned model is not faster than dense on {pruned.backend}: {dense.latency_ms:.3f} -> {pruned.latency_ms:.3f} ms "
            f"[{low:.3f}, {high:.3f}], {speed_words(dense.latency_ms / pruned.latency_ms)}, although its MACs fell "
            f"{dense.macs / max(1, pruned.macs):.2f}x; budget on budget.metric: latency, or try pruning.round_to or another latency.backend")


def serving_report(cfg: ExperimentConfig, dense: ModelReport, pruned: ModelReport, int8: dict[str, Any] | None,
                   settings: dict[str, Any]) -> dict[str, Any]:
    """The latency part of the final report: each runtime's own speed-up, then dense eager -> deployed artifact.

    Args:
        cfg: The experiment.
        dense, pruned: From :func:`measure_final`.
        int8: From :func:`decide_int8` (None: not quantised).
        settings: The serving backend's settings (recorded beside the figures).

    Returns:
        Report entries (latencies in ms per call at the latency batch size).
    """
    backend = cfg.latency.backend
    served = backend_class(backend)
    rep: dict[str, Any] = {
        "backend": backend,
        "dense_latency_ms": dense.latency_ms,
        "pruned_latency_ms": pruned.latency_ms,
        "speedup": dense.latency_ms / pruned.latency_ms,
        "dense_eager_latency_ms": dense.eager_latency_ms,
        "pruned_eager_latency_ms": pruned.eager_latency_ms,
        "eager_speedup": dense.eager_latency_ms / pruned.eager_latency_ms,
    }
    artifact = (f"model.{served.artifact} (fp32, {backend})" if served.artifact else
                "model.pt (torch eager)" if served.eager else f"model.pt ({backend})")
    deployed_ms = pruned.latency_ms
    if int8 is not None:
        rep.update({"int8_kept": int8["kept"], "int8_speed_ratio": int8["speed_ratio"], "int8_test_accuracy": int8["test_accuracy"],
                    "int8_accuracy_drop_points": int8["accuracy_drop_points"], "int8_decision": int8["reason"]})
        if int8["kept"]:
            artifact = f"model.int8.onnx (int8, {int8['runtime']})"
            deployed_ms = pruned.latency_ms * int8["speed_ratio"] if backend == int8["runtime"] else int8["ms"]
    rep.update({"deployed_artifact": artifact, "deployed_latency_ms": deployed_ms,
                "total_speedup": dense.eager_latency_ms / deployed_ms, "backend_settings": settings})
    return rep


def uniform_point(evaluator: Any, max_evals: int = 6) -> tuple[float, float] | None:
    """(budget value, proxy accuracy) of the classical baseline: one ratio for every unit, no block drops.

    Costs a few evaluations; shown on the Pareto plot so the search's gain is visible at a glance.
    """
    from autoprune.search import BASELINE_SEARCHER, get_searcher

    try:
        res = get_searcher(BASELINE_SEARCHER, {"max_evals": max_evals}, progress=False).search(evaluator, max_evals)
    except Exception as e:  # noqa: BLE001 - the baseline is a courtesy: never fail a finished search for it
        log.warning("uniform baseline skipped: %s", e)
        return None
    if res.best is None:
        return None
    return (res.best.metrics.value, res.best.metrics.accuracy)


def registered_name(cfg: ExperimentConfig) -> str:
    """Registry name of an experiment's pruned model (MLflow refuses ':' and '/')."""
    return re.sub(r"[:/]", "-", f"{cfg.name}-{cfg.model.name}")


@dataclass
class RunResult:
    """What ``autoprune run`` produced."""

    dense: ModelReport
    pruned: ModelReport
    search: SearchRun
    model_path: Path
    onnx: dict[str, Any] | None
    run_id: str | None
    report: dict[str, Any] = field(default_factory=dict)
    config: ExperimentConfig | None = None  #: the configuration the run used (threads lowered for workers)


RUN_FILE = "mlflow_run.json"


def _previous_run(out: Path, cfg: ExperimentConfig) -> tuple[str | None, bool]:
    """``(run id to resume, whether the last run finished)`` from an earlier ``run`` of this experiment."""
    path = out / RUN_FILE
    if not path.is_file():
        return None, False
    try:
        saved = json.loads(path.read_text())
        client = MlflowClient(tracking_uri=resolve_tracking_uri(cfg.tracking.uri))
        run = client.get_run(saved["run_id"])
    except Exception as e:  # noqa: BLE001 - unreadable file, another store, deleted run: start a new run
        log.info("not resuming the MLflow run in %s: %s", path, e)
        return None, False
    if run.info.status == "FINISHED":
        return None, True
    if saved.get("tracking_uri") != resolve_tracking_uri(cfg.tracking.uri):
        return None, False
    log.info("resuming MLflow run %s (%s)", run.info.run_id, run.info.status)
    return run.info.run_id, False


def run_experiment(cfg: ExperimentConfig, *, progress: bool = True, restart: bool = False) -> RunResult | DecoderRunResult:
    """The whole job, tracked in one MLflow run (ended FAILED/KILLED if anything goes wrong).

    Run again after a crash or Ctrl-C, the same config continues: the Optuna study keeps the
    finished trials and the interrupted MLflow run is resumed. Run again after it finished, or
    with ``restart``, it starts afresh (a new study and a new MLflow run).
    """
    cfg = sized_for_workers(cfg)  # MLflow params and policy.json record the threads the search really used
    with experiment_dir(cfg, disposable=(RUN_FILE,)) as out:
        return _run_in(cfg, out, progress=progress, restart=restart)


def _run_in(cfg: ExperimentConfig, out: Path, *, progress: bool, restart: bool) -> RunResult | DecoderRunResult:
    torch.set_num_threads(cfg.latency.threads)
    resume, finished = (None, False) if restart else _previous_run(out, cfg)
    if finished:
        log.info("the last run of %r finished; starting a new one", cfg.name)
        restart = True
    with Tracker(cfg, resume_run_id=resume) as tracker:
        write_json_atomic(out / RUN_FILE, {"run_id": tracker.run_id, "tracking_uri": tracker.uri})
        t0 = time.perf_counter()
        baseline = load_baseline(cfg, progress=progress)
        if is_decoder(baseline):  # no labels and no zoo factory: distil to the dense logits, time prefill and decode
            return run_decoder(cfg, baseline, tracker, out, progress=progress, restart=restart, t0=t0)
        tracker.log_dense({"val_accuracy": baseline.meta.get("val_accuracy", float("nan")), "test_accuracy": baseline.meta.get("test_accuracy", float("nan"))})
        search = run_search(cfg, progress=progress, callback=tracker.log_episode, baseline=baseline,
                            tracking=(tracker.uri, tracker.run_id), restart=restart)
        tracker.log_missing_episodes(search.result.history)  # trials finished before a crash, or by workers
        ev = search.evaluator
        info = {"target": ev.target, "metric": ev.budget.metric, "dense_accuracy": ev.dense_accuracy, "unit_order": ev.unit_names,
                "fingerprint": model_fingerprint(ev.graph)}
        uniform = uniform_point(ev) if search.searcher.compared_with_uniform else None
        if uniform is not None:
            info["uniform"] = uniform
            tracker.log_metrics({"uniform_accuracy": uniform[1], "uniform_value": uniform[0]})
        tracker.log_search_result(search.result, info, out_dir=out, written=[search.policy_path, search.history_path])
        tracker.log_backend(ev.latency_model.backend_settings)
        best = search.result.best
        if best is None:
            raise RuntimeError("the search produced no successful evaluation")
        stage("apply", f"the best policy (episode {best.index})")
        pruned = apply_best(cfg, baseline, best.policy, evaluator=ev)
        stage("fine-tune", f"{cfg.finetune.epochs:g} epoch(s)" + (", distilled from the dense model" if cfg.finetune.distill else ""))
        encoder, fidelity_report = is_encoder(baseline), {}
        if encoder:  # no labels: distil to the dense embeddings, score by test fidelity
            from autoprune.app.encoder_run import recover_encoder, test_fidelity

            test = test_fidelity(baseline, cfg)
            fidelity_report = recover_encoder(cfg, baseline, pruned, test, progress=progress, on_epoch=tracker.log_finetune_epoch)
        else:
            teacher = baseline.model if cfg.finetune.distill else None
            finetune(pruned, baseline.data, finetune_settings(cfg), teacher=teacher, progress=progress, on_epoch=tracker.log_finetune_epoch)
        ev.latency_model.close()  # no session of the search may be alive while the final figures are timed
        stage("measure", f"test split; latency on {cfg.latency.backend}" + ("" if backend_class(cfg.latency.backend).eager else " and eager PyTorch"))
        dense_r, pruned_r = measure_final(pruned, baseline.model, baseline, cfg, score=test.score if encoder else None, zoo=ev.zoo)
        stage("export", f"the pruned model into {out}")
        model_path = save_pruned(
            out / "model.pt", pruned, model_name=cfg.model.name, in_channels=getattr(baseline.data, "in_channels", 0),
            num_classes=getattr(baseline.data, "num_classes", 0), input_size=getattr(baseline.data, "input_size", 0),
            extra={"policy": best.policy.to_dict(), "test_accuracy": pruned_r.test_accuracy,
                   "context": {"data": cfg.data.name, "backend": cfg.latency.backend_info(), "pruning": pruning_record(cfg)}},
        )
        onnx_info, int8 = None, None
        if encoder:  # the serving artifact: model.onnx with named inputs, the tokenizer beside it
            from autoprune.app.encoder_run import export_encoder

            onnx_info = export_encoder(pruned, baseline, out)
        elif exports_onnx(cfg):  # what the runtime serves, or what export.onnx asks for
            onnx_info = export_onnx(pruned, baseline.data.example_input(1), out / "model.onnx")
            if cfg.export.quantize:
                int8 = decide_int8(cfg, baseline, out / "model.onnx", pruned_r.test_accuracy, out)
                if int8["kept"]:
                    onnx_info["quantized"] = int8["path"]
                log.info("%s", int8["reason"])
        score_name = "fidelity" if encoder else "accuracy"
        report = {
            f"dense_test_{score_name}": dense_r.test_accuracy,
            f"pruned_test_{score_name}": pruned_r.test_accuracy,
            **({} if encoder else {"accuracy_drop_points": 100 * (dense_r.test_accuracy - pruned_r.test_accuracy)}),
            **fidelity_report,
            **serving_report(cfg, dense_r, pruned_r, int8, pruned_r.backend_settings or ev.latency_model.backend_settings),
            "mac_reduction": dense_r.macs / max(1, pruned_r.macs),
            "dense_macs": dense_r.macs,
            "pruned_macs": pruned_r.macs,
            "dense_params": dense_r.params,
            "pruned_params": pruned_r.params,
            "dense_size_bytes": dense_r.size_bytes,
            "pruned_size_bytes": pruned_r.size_bytes,
            "search_episodes": search.result.episodes,
            "search_seconds": search.result.seconds,
            **{f"latency_table_{k}": v for k, v in ev.latency_model.cache_summary().items()},  # unit, reused, measured, seconds_saved
            "search_best_proxy_accuracy": best.metrics.accuracy,
            **{f"search_latency_{k}": v for k, v in best.metrics.latency.as_dict().items() if k in ("mean", "low", "high", "n")},
            **{f"final_latency_{k}": v for k, v in pruned_r.latency.as_dict().items() if k in ("mean", "low", "high", "n")},
            "search_latency_source": best.metrics.latency_source,
            **ev.budget.verdict(ev.target, pruned_r.latency, pruned_r.latency_ms / dense_r.latency_ms, pruned_r.macs / max(1, dense_r.macs)),
            "blocks_dropped": len(best.policy.drop),
            "total_seconds": time.perf_counter() - t0,
        }
        slower = not_faster_warning(dense_r, pruned_r)
        report["faster_than_dense"] = slower is None
        if slower is not None:
            log.warning("%s", slower)
            tracker.client.set_tag(tracker.run_id, NOT_FASTER_TAG, slower)
        stage("MLflow", f"report and model of run {tracker.run_id}")
        tracker.log_final(report, title=f"autoprune: {cfg.name}")
        tracker.log_pruned_model(
            model_path, onnx_info["path"] if onnx_info else None,
            register_as=registered_name(cfg) if cfg.tracking.register else None,
            test_accuracy=pruned_r.test_accuracy,
            extra_files=[search.policy_path, *([onnx_info["quantized"]] if onnx_info and "quantized" in onnx_info else []),
                         *(onnx_info.get("tokenizer_files", []) if onnx_info else [])],
        )
        if search.result.extras.get("agent_path"):
            tracker.log_artifact(search.result.extras["agent_path"], "agent")
        return RunResult(dense_r, pruned_r, search, model_path, onnx_info, tracker.run_id, report, config=cfg)
