"""Specification of autoprune.tracking.tracker: runs, step metrics, artifacts and plots, the registry, URIs.

Every test uses one SQLite tracking database in a temporary folder (creating it runs
MLflow's migrations, which takes seconds), with a fresh experiment per test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from autoprune.config.loading import parse_config
from autoprune.errors import ConfigError
from autoprune.formats.policy_file import policy_document, write_policy_file
from autoprune.formats.pruned import load_pruned, save_pruned
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.objective.evaluator import Evaluation, Metrics
from autoprune.search.base import SearchResult, pareto_front
from autoprune.tracking.artifacts import download_model_uri
from autoprune.tracking.tracker import Tracker, resolve_tracking_uri

DIGITS = {"in_channels": 1, "num_classes": 10, "input_size": 8}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db", root


@pytest.fixture
def cfg(store, request):
    uri, _ = store
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    return parse_config({
        "name": name,
        "model": {"name": "mlp"},
        "data": {"name": "digits"},
        "search": {"episodes": 30, "params": {"lr": 0.001}},
        "tracking": {"uri": uri},
    })


@pytest.fixture
def client(store) -> MlflowClient:
    return MlflowClient(tracking_uri=store[0], registry_uri=store[0])


def evaluation(i: int, acc: float, value: float, *, target: float = 0.5, failed: bool = False) -> Evaluation:
    feasible = value <= target and not failed
    reward = -1.0 if failed else acc - 2.0 * max(0.0, value / target - 1.0)
    nan = float("nan")
    metrics = Metrics(
        accuracy=nan if failed else acc, latency_ratio=nan if failed else value, latency_ci=(value * 0.95, value * 1.05),
        latency_ms=value * 2.0, predicted_ratio=value * 1.1, macs=1000, params=100, macs_ratio=value * 0.9, params_ratio=value,
        value=nan if failed else value, feasible=feasible, reward=reward, failed=failed, error="boom" if failed else None,
    )
    return Evaluation(i, Policy({"net.1": round(1 - value, 3), "net.4": 0.25}, ()), metrics)


def fake_history() -> list[Evaluation]:
    points = [(0.90, 0.80), (0.88, 0.45), (0.70, 0.30), (0.85, 0.50), (0.92, 0.70), (0.60, 0.25)]
    history = [evaluation(i, acc, v) for i, (acc, v) in enumerate(points)]
    history.append(evaluation(len(history), 0.0, 0.4, failed=True))
    return history


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, a.path) if a.is_dir else {a.path}
    return out


# ----------------------------------------------------------------------- runs


def test_run_logs_config_tags_and_episode_step_metrics_then_finishes(cfg, client, store):
    history = fake_history()
    with Tracker(cfg, flush_every=3) as tracker:
        tracker.log_dense({"accuracy": 0.93, "latency_ms": 2.5, "note": "ignored"})
        for e in history:
            tracker.log_episode(e)
        run_id = tracker.run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith(Path(store[1]).as_uri() + "/mlartifacts/"), "artifacts beside the database"
    assert run.data.params["model.name"] == "mlp"
    assert run.data.params["search.episodes"] == "30"
    assert run.data.params["search.params.lr"] == "0.001"
    tags = run.data.tags
    assert (tags["model"], tags["data"], tags["searcher"], tags["backend"]) == ("mlp", "digits", "optuna", "torch")
    assert tags["version.torch"] == torch.__version__.split("+")[0] or tags["version.torch"].startswith(torch.__version__[:4])
    assert tags["machine.torch_threads"] == str(torch.get_num_threads()) and int(tags["machine.cpu_count"]) >= 1
    assert run.data.metrics["dense/accuracy"] == pytest.approx(0.93)
    assert "dense/note" not in run.data.metrics

    reward = client.get_metric_history(run_id, "episode/reward")
    assert [m.step for m in sorted(reward, key=lambda m: m.step)] == list(range(len(history)))
    assert sorted(reward, key=lambda m: m.step)[-1].value == -1.0
    accuracy = {m.step: m.value for m in client.get_metric_history(run_id, "episode/accuracy")}
    assert 6 not in accuracy, "a failed evaluation's NaN accuracy is left out"
    feasible = {m.step: m.value for m in client.get_metric_history(run_id, "episode/feasible")}
    assert feasible == {0: 0.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 0.0, 5: 1.0, 6: 0.0}
    best = {m.step: m.value for m in client.get_metric_history(run_id, "episode/best_reward")}
    assert best == pytest.approx({1: 0.88, 2: 0.88, 3: 0.88, 4: 0.88, 5: 0.88, 6: 0.88}), "running best of feasible rewards"
    assert "config.yaml" in artifact_paths(client, run_id)


def test_episode_metrics_are_buffered_until_flush_every(cfg, client):
    with Tracker(cfg, flush_every=4) as tracker:
        history = fake_history()
        for e in history[:3]:
            tracker.log_episode(e)
        assert client.get_metric_history(tracker.run_id, "episode/reward") == []
        tracker.log_episode(history[3])
        assert len(client.get_metric_history(tracker.run_id, "episode/reward")) == 4


def test_an_exception_inside_marks_the_run_failed(cfg, client):
    with pytest.raises(ValueError, match="search blew up"):
        with Tracker(cfg) as tracker:
            tracker.log_episode(fake_history()[0])
            raise ValueError("search blew up")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "ValueError: search blew up"
    assert len(client.get_metric_history(tracker.run_id, "episode/reward")) == 1, "buffered episodes are flushed on failure too"


def test_keyboard_interrupt_marks_the_run_killed(cfg, client):
    with pytest.raises(KeyboardInterrupt):
        with Tracker(cfg) as tracker:
            raise KeyboardInterrupt
    assert client.get_run(tracker.run_id).info.status == "KILLED"


def test_resuming_continues_the_same_run(cfg, client):
    with Tracker(cfg) as first:
        first.log_episode(fake_history()[1])
    with Tracker(cfg, resume_run_id=first.run_id) as again:
        again.log_episode(fake_history()[5])
    assert again.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert {m.step: m.value for m in client.get_metric_history(first.run_id, "episode/best_reward")} == pytest.approx({1: 0.88, 5: 0.88})


def test_resuming_an_unknown_run_is_a_config_error(cfg):
    with pytest.raises(ConfigError, match="resume: no MLflow run '0123456789abcdef0123456789abcdef'"):
        with Tracker(cfg, resume_run_id="0123456789abcdef0123456789abcdef"):
            pass


def test_finetune_epochs_and_final_report_are_logged(cfg, client):
    with Tracker(cfg) as tracker:
        for epoch in range(3):
            tracker.log_finetune_epoch(epoch, {"loss": 1.0 / (epoch + 1), "val_accuracy": 0.8 + 0.05 * epoch})
        tracker.log_final({"test_accuracy": 0.91, "latency": {"ratio": 0.48, "ms": 1.2}, "policy": {"ratios": {"net.1": 0.5}}})
    assert [m.value for m in sorted(client.get_metric_history(tracker.run_id, "finetune/val_accuracy"), key=lambda m: m.step)] == pytest.approx([0.8, 0.85, 0.9])
    metrics = client.get_run(tracker.run_id).data.metrics
    assert metrics["final/test_accuracy"] == pytest.approx(0.91) and metrics["final/latency_ratio"] == pytest.approx(0.48)
    report = Path(client.download_artifacts(tracker.run_id, "report.md")).read_text()
    assert "| test_accuracy | 0.91 |" in report and '"net.1": 0.5' in report
    assert client.get_run(tracker.run_id).data.tags["mlflow.note.content"] == report, "the run page opens on the report"


def test_metrics_are_grouped_in_sections_of_the_run_page(cfg, client):
    """MLflow groups a run's metrics by the part before '/': the result reads apart from the episode curves."""
    with Tracker(cfg) as tracker:
        tracker.log_dense({"accuracy": 0.93})
        tracker.log_finetune_epoch(0, {"loss": 0.5})
        tracker.log_final({"test_accuracy": 0.91})
    names = set(client.get_run(tracker.run_id).data.metrics)
    assert names == {"dense/accuracy", "finetune/loss", "final/test_accuracy"}
    assert not any(n.startswith("system/") for n in names), "system/ is MLflow's own section"


# ------------------------------------------------------------------ search result


def test_search_result_logs_the_search_files_unchanged_plus_info_and_plots(cfg, client, tmp_path):
    """One writer per artifact: the tracker logs policy.json and history.csv as the search wrote them."""
    history = fake_history()
    best = max((e for e in history if e.metrics.feasible), key=lambda e: e.metrics.reward)
    curves = {"net.1": [(0.0, 0.93), (0.5, 0.9), (0.8, 0.7)], "net.4": [(0.0, 0.93), (0.5, 0.92), (0.8, 0.85)]}
    result = SearchResult("random", best, history, pareto_front(history), 1.5, {"sensitivity": curves})
    info = {"target": 0.5, "metric": "latency", "dense_accuracy": 0.93, "unit_order": ["net.1", "net.4"], "uniform": (0.5, 0.8)}
    out = tmp_path / "search"
    out.mkdir()
    doc = policy_document(best.policy, model="mlp", data="digits", metric="latency", target=0.5,
                          backend={"name": "torch", "batch_size": 1, "threads": 1}, searcher="random", episode=best.index)
    policy_path = write_policy_file(out / "policy.json", doc)
    result.write_history_csv(out / "history.csv")
    written = {p.name: p.read_bytes() for p in (policy_path, out / "history.csv")}
    with Tracker(cfg) as tracker:
        files = tracker.log_search_result(result, info, out_dir=out, written=[policy_path, out / "history.csv"])
    for name in ("plots/pareto.png", "plots/ratios.png", "plots/search_curve.png", "plots/sensitivity.png"):
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files[name].stat().st_size > 5000
    assert {"policy.json", "history.csv", "search_info.json", "plots/pareto.png", "plots/sensitivity.png"} <= artifact_paths(client, tracker.run_id)
    for name, data in written.items():  # neither rewritten on disk nor in the run
        assert (out / name).read_bytes() == data
        assert Path(client.download_artifacts(tracker.run_id, name, str(tmp_path))).read_bytes() == data
    assert len(written["history.csv"].decode().splitlines()) == len(history) + 1
    metrics = client.get_run(tracker.run_id).data.metrics
    assert metrics["search/best_accuracy"] == pytest.approx(0.88) and metrics["search/best_latency_ratio"] == pytest.approx(0.45)
    assert metrics["search/episodes"] == 7 and metrics["search/failed_episodes"] == 1 and metrics["search/feasible_episodes"] == 4


def test_search_result_without_a_best_policy_still_logs_its_plots(cfg, client, tmp_path):
    history = [evaluation(0, 0.0, 0.4, failed=True)]
    result = SearchResult("random", None, history, [], 0.1)
    result.write_history_csv(tmp_path / "history.csv")
    with Tracker(cfg) as tracker:
        files = tracker.log_search_result(result, {"target": 0.5}, written=[tmp_path / "history.csv"])
    assert "policy.json" not in files
    assert {"history.csv", "plots/pareto.png", "plots/search_curve.png"} <= artifact_paths(client, tracker.run_id)


def test_experiments_autoprune_creates_open_on_their_runs_in_the_mlflow_ui(cfg, client):
    """MLflow 3 opens an experiment tagged as model development on its runs, not on the empty GenAI overview."""
    with Tracker(cfg) as tracker:
        pass
    tags = client.get_experiment(tracker.experiment_id).tags
    assert tags.get("mlflow.experimentKind") == "custom_model_development"


# ------------------------------------------------------------------ registry


@pytest.fixture(scope="module")
def pruned_mlp_file(tmp_path_factory, make_model, example_input) -> tuple[Path, torch.nn.Module]:
    dense = make_model("mlp")
    g = PrunableGraph(dense, example_input)
    pruned = apply_policy(dense, Policy.uniform(g.unit_names, 0.5), graph=g).eval()
    path = save_pruned(tmp_path_factory.mktemp("model") / "pruned.pt", pruned, model_name="mlp", **DIGITS)
    return path, pruned


def test_registered_model_downloads_by_alias_and_loads(cfg, client, store, pruned_mlp_file, example_input, tmp_path):
    path, pruned = pruned_mlp_file
    name = f"reg-{cfg.name}"
    with Tracker(cfg) as tracker:
        first = tracker.log_pruned_model(path, register_as=name, test_accuracy=0.90)
    assert first == {"uri": f"runs:/{tracker.run_id}/model", "name": name, "version": "1", "champion": True}
    assert artifact_paths(client, tracker.run_id) >= {"model/model.pt"}

    local = download_model_uri(f"models:/{name}@champion", tracking_uri=store[0], dst=tmp_path / "dl")
    model, meta = load_pruned(local)
    with torch.no_grad():
        assert torch.allclose(model(example_input), pruned(example_input), atol=1e-6)
    assert download_model_uri(f"runs:/{tracker.run_id}/model", tracking_uri=store[0]).name == "model.pt"
    assert download_model_uri(f"models:/{name}/1", tracking_uri=store[0]).read_bytes() == path.read_bytes()

    with Tracker(cfg) as tracker:
        worse = tracker.log_pruned_model(path, register_as=name, test_accuracy=0.80)
        better = tracker.log_pruned_model(path, register_as=name, test_accuracy=0.95)
    assert (worse["version"], worse["champion"]) == ("2", False)
    assert (better["version"], better["champion"]) == ("3", True)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"
    assert download_model_uri(f"models:/{name}/latest", tracking_uri=store[0]).is_file()


def test_onnx_file_is_logged_beside_the_model(cfg, client, pruned_mlp_file, tmp_path):
    onnx = tmp_path / "whatever.onnx"
    onnx.write_bytes(b"not really onnx")
    with Tracker(cfg) as tracker:
        out = tracker.log_pruned_model(pruned_mlp_file[0], onnx)
    assert out["name"] is None
    assert artifact_paths(client, tracker.run_id) >= {"model/model.pt", "model/model.onnx"}


@pytest.mark.parametrize("uri", [
    "runs:/0123456789abcdef0123456789abcdef/model",
    "models:/no-such-model@champion",
    "models:/no-such-model/3",
])
def test_unknown_runs_or_models_uri_is_a_one_line_config_error(store, uri):
    with pytest.raises(ConfigError) as err:
        download_model_uri(uri, tracking_uri=store[0])
    assert str(err.value).startswith(f"model: {uri}: not found") and "\n" not in str(err.value)


def test_missing_local_file_and_missing_artifact_path_are_config_errors(cfg, store, tmp_path):
    with pytest.raises(ConfigError, match=r"nothing\.pt: no such file"):
        download_model_uri(tmp_path / "nothing.pt")
    with Tracker(cfg) as tracker:
        pass
    with pytest.raises(ConfigError, match=f"runs:/{tracker.run_id}/model: not found"):
        download_model_uri(f"runs:/{tracker.run_id}/model", tracking_uri=store[0])


# ------------------------------------------------------------------ URIs


def test_default_tracking_uri_is_an_absolute_sqlite_file_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///sub.db") == f"sqlite:///{tmp_path}/sub.db"


@pytest.mark.parametrize("uri, message", [
    ("ftp://example.com/mlflow", "has unsupported scheme 'ftp'"),
    ("mlruns", "has no scheme"),
    ("sqlite:///no/such/dir/mlflow.db", "directory .* does not exist"),
    ("sqlite:///:memory:", "names no database file"),
])
def test_bad_tracking_uri_is_a_config_error_naming_it(uri, message):
    with pytest.raises(ConfigError, match=f"tracking.uri: '{uri}'.*{message}"):
        resolve_tracking_uri(uri)


def test_unreachable_tracking_server_fails_fast_on_one_bounded_probe(cfg, monkeypatch):
    # Fast by construction, not by a stopwatch: one /health request with a timeout, not MLflow's retrying client.
    import urllib.request

    probes, urlopen = [], urllib.request.urlopen

    def probe(request, *args, timeout=None, **kwargs):
        probes.append((request.full_url, timeout))
        return urlopen(request, *args, timeout=timeout, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", probe)
    with pytest.raises(ConfigError, match=r"tracking.uri: cannot reach http://127\.0\.0\.1:9 \("):
        Tracker(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": "http://127.0.0.1:9"})}))
    assert len(probes) == 1
    url, timeout = probes[0]
    assert url == "http://127.0.0.1:9/health" and timeout is not None and 0 < timeout <= 3.0
