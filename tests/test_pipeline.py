"""The end-to-end job (`autoprune run`) on a tiny real model, tracked in a throwaway MLflow store."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from helpers import Result, assert_user_error, tiny_experiment, write_experiment

from autoprune.app.pipeline import run_experiment
from autoprune.config.loading import parse_config
from autoprune.formats.pruned import load_pruned
from autoprune.tracking.artifacts import download_model_uri


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = parse_config(tiny_experiment(tmp))
    with pytest.MonkeyPatch.context() as mp:  # the baseline cache of this run only, not of the tests after it
        mp.setenv("AUTOPRUNE_CACHE", str(tmp / "cache"))
        return tmp, cfg, run_experiment(cfg, progress=False)


def test_run_prunes_fine_tunes_and_reports_on_the_test_split(finished):
    _, _, res = finished
    assert res.pruned.params < res.dense.params
    assert res.pruned.macs <= 0.6 * res.dense.macs * 1.02
    assert 0.5 < res.pruned.test_accuracy <= 1.0
    assert res.report["speedup"] > 0 and res.report["mac_reduction"] > 1.4


def test_run_leaves_a_finished_mlflow_run_with_artifacts_and_a_champion(finished):
    tmp, cfg, res = finished
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert "final/pruned_test_accuracy" in run.data.metrics and "final/dense_test_accuracy" in run.data.metrics
    assert {"final/latency_ratio", "final/budget_met"} <= set(run.data.metrics), "the budget verdict of the final measurement"
    assert run.data.metrics["final/budget_met"] == float(res.report["budget_met"])
    saved = {"final/latency_table_reused", "final/latency_table_measured", "final/latency_table_seconds_saved"}
    assert saved <= set(run.data.metrics), "what the latency-table cache gave"
    assert len(client.get_metric_history(res.run_id, "episode/reward")) == 6
    assert {"uniform_accuracy", "uniform_value"} <= set(run.data.metrics)  # the uniform baseline beside the Optuna search
    names = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"policy.json", "history.csv", "report.md", "model", "plots"} <= names
    plots = {a.path for a in client.list_artifacts(res.run_id, "plots")}
    assert "plots/pareto.png" in plots
    path = download_model_uri("models:/tiny-mlp@champion", tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    model, meta = load_pruned(path)
    assert sum(p.numel() for p in model.parameters()) == res.pruned.params
    assert meta["extra"]["test_accuracy"] == pytest.approx(res.pruned.test_accuracy)


def test_pruned_model_file_reloads_without_pickle_and_matches(finished):
    _, _, res = finished
    model, _ = load_pruned(res.model_path)
    x = torch.randn(3, 1, 8, 8)
    assert model(x).shape == (3, 10)


def test_a_crashing_run_ends_failed_not_running(tmp_path):
    cfg = parse_config(tiny_experiment(tmp_path, budget={"target": 0.01}))
    from autoprune.errors import BudgetError

    with pytest.raises(BudgetError, match="unreachable"):
        run_experiment(cfg, progress=False)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    assert runs and all(r.info.status == "FAILED" for r in runs)


def test_cli_run_with_an_impossible_budget_exits_2_with_one_line(tmp_path):
    path = write_experiment(tmp_path / "c.yaml", tiny_experiment(tmp_path, budget={"target": 0.01}))
    out = subprocess.run([sys.executable, "-m", "autoprune", "run", str(path)], capture_output=True, text=True, cwd=tmp_path,
                         env={**__import__("os").environ, "AUTOPRUNE_CACHE": str(tmp_path / "cache")})
    assert_user_error(Result.of(out), "budget.target", "unreachable")  # after the stage lines of the steps that ran


def test_the_registered_model_carries_its_policy_for_apply(finished):
    from autoprune.app.uris import load_policy

    tmp, _, res = finished
    policy, payload = load_policy("models:/tiny-mlp@champion", tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    assert policy == res.search.result.best.policy
    assert payload["fingerprint"]["units"] and payload["model"] == "mlp"
    assert json.loads((tmp / "out" / "mlflow_run.json").read_text())["run_id"] == res.run_id


def test_run_with_workers_records_the_lowered_thread_count_the_search_used(tmp_path, postgres_url):
    """``--workers 2`` lowers the threads per process; policy.json and the MLflow params say so (one writer each)."""
    import os

    from autoprune.config.machine import threads_per_worker

    cores = os.cpu_count() or 1
    used = threads_per_worker(2)
    if cores < 2 or used >= cores:
        pytest.skip("needs a machine where two workers get fewer threads than all cores")
    raw = tiny_experiment(tmp_path, latency={"threads": cores}, finetune={"epochs": 0},
                          search={"episodes": 4, "storage": postgres_url, "study": "tiny-workers",
                                  "params": {"n_startup_trials": 2, "heartbeat_interval": 1, "grace_period": 3}})
    path = write_experiment(tmp_path / "c.yaml", raw)
    env = {**os.environ, "AUTOPRUNE_CACHE": str(tmp_path / "cache"), "AUTOPRUNE_PROGRESS": ""}
    out = subprocess.run([sys.executable, "-m", "autoprune", "run", str(path), "--workers", "2"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    written = tmp_path / "out" / "policy.json"
    doc = json.loads(written.read_text())
    assert doc["backend"]["threads"] == used
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.data.params["latency.threads"] == str(used)
    assert run.data.tags["machine.torch_threads"] == str(used)
    logged = client.download_artifacts(run_id, "policy.json", str(tmp_path / "dl"))
    assert open(logged, "rb").read() == written.read_bytes(), "the tracker logs the search's policy.json, it does not rewrite it"
    assert f"{used} threads" in out.stdout


def test_search_summary_latency_ms_come_from_one_process_and_match_the_ratio(finished):
    """A resumed search's best may have been timed by another process: both ms values use the dense time of the process
    that measured the ratio shown (the finalists' fresh process, else this one)."""
    import dataclasses

    from autoprune.app.tables import dense_ms_of, search_rows

    _, _, res = finished
    run, ev = res.search, res.search.evaluator
    best = run.result.best
    other_process = dataclasses.replace(best.metrics, latency_ms=best.metrics.latency_ratio * ev.dense_ms * 3.0)
    resumed = dataclasses.replace(run, result=dataclasses.replace(run.result, best=dataclasses.replace(best, metrics=other_process)))
    rows = search_rows(resumed)
    dense_ms = dense_ms_of(run)
    assert dense_ms == run.result.extras.get("finalist_dense_ms", ev.dense_ms)
    ms = next(row for row in rows if row.label == "latency ms (torch)")
    assert (ms.dense, ms.other) == (dense_ms, best.metrics.latency_ratio * dense_ms)
    ratio = next(row for row in rows if row.label.startswith("latency ratio (paired, torch"))
    assert (ratio.dense, ratio.other, ratio.ci) == (1.0, best.metrics.latency_ratio, tuple(best.metrics.latency_ci))
    assert f"{best.metrics.latency_rounds} rounds" in ratio.label
    assert ms.cells() == ("latency ms (torch)", f"{dense_ms:.3f}", f"{best.metrics.latency_ratio * dense_ms:.3f}", "")


def test_evaluate_and_apply_from_the_registry_leave_no_temporary_download(finished, tmp_path):
    import os

    tmp, _, _ = finished
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "AUTOPRUNE_CACHE": str(tmp / "cache")}
    uri = f"sqlite:///{tmp}/mlflow.db"
    out = subprocess.run([sys.executable, "-m", "autoprune", "evaluate", "models:/tiny-mlp@champion", "--data", "digits",
                          "--threads", "1", "--tracking-uri", uri], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "models:/tiny-mlp@champion: test accuracy" in out.stdout
    out = subprocess.run([sys.executable, "-m", "autoprune", "apply", "--policy", "models:/tiny-mlp@champion", "--model", "mlp",
                          "--data", "digits", "--no-track", "--tracking-uri", uri, "--out", str(tmp_path / "p.pt")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert not list(scratch.glob("autoprune-artifact-*")), list(scratch.iterdir())


def test_a_model_file_carries_its_data_and_backend_and_evaluate_uses_them(finished, capsys):
    from helpers import cli

    from autoprune.app.model_files import evaluate_file, model_context
    from autoprune.formats.pruned import load_pruned

    _, cfg, _ = finished
    model = next(Path(cfg.output_dir).rglob("model.pt"))
    context = model_context(load_pruned(model)[1])
    assert context["data"] == "digits" and context["backend"]["name"] == cfg.latency.backend
    assert set(context["pruning"]) == {"importance", "round_to", "iterative_steps"}
    report = evaluate_file(str(model), threads=1, checkpoint=cfg.model.checkpoint, progress=False)  # no --data: the file's
    assert report.config.data.name == "digits" and report.config.latency.backend == cfg.latency.backend
    code, _, err = cli(capsys, "evaluate", str(model), "--data", "fashion_mnist", "--threads", "1")
    assert code == 2 and err.count("\n") == 1 and "--data: 'fashion_mnist'" in err and "'digits'" in err
