"""Search, measure and report on the serving runtime: the wiring of the latency backends.

Behaviour only, never timings: the config's backend options reach the backend, the evaluator
predicts with the table fitted on that backend (cached on disk), and every result names the
backend settings that timed it.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import fast_settings, tiny_experiment

from autoprune.config import load_config
from autoprune.config.settings import latency_settings
from autoprune.errors import ConfigError
from autoprune.graph.policy import Policy
from autoprune.measure.runtime_table import FittedLatencyTable
from autoprune.measure.settings import LatencySettings
from autoprune.measure.table import LatencyTable
from autoprune.objective.budget import Budget
from autoprune.objective.evaluator import PolicyEvaluator

DEMO = "experiments/configs/demo.yaml"
#: The shared ONNX Runtime pool is permanent for a process; tests use per-session pools.
PER_SESSION = {"thread_pool": "per-session"}


def test_backend_options_reach_latency_settings_from_the_config() -> None:
    cfg = load_config(DEMO, ["latency.backend=onnxruntime", "latency.backend_options={spinning: true, graph_optimization: basic}"])
    settings = latency_settings(cfg)
    assert settings.backend == "onnxruntime"
    assert dict(settings.backend_options) == {"spinning": True, "graph_optimization": "basic"}
    assert cfg.flat()["latency.backend_options.graph_optimization"] == "basic"  # MLflow params


def test_an_option_the_backend_does_not_take_is_one_line_naming_it_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, ["latency.backend=onnxruntime", "latency.backend_options={spin: true}"])
    msg = str(e.value)
    assert "\n" not in msg and "'spin'" in msg and "spinning" in msg and "graph_optimization" in msg
    with pytest.raises(ConfigError, match="backend 'torch' has no option 'spinning'; allowed: none"):
        load_config(DEMO, ["latency.backend=torch", "latency.backend_options={spinning: true}"])


def test_default_backend_options_are_none_the_backends_serving_defaults() -> None:
    cfg = load_config(DEMO, ["latency.backend=torch"])
    assert cfg.latency.backend_options is None and LatencySettings().backend_options is None


def _evaluator(model, digits, backend: str, cache, **options) -> PolicyEvaluator:
    return PolicyEvaluator(model, digits, budget=Budget(metric="macs", target=0.6), check=False, table_cache=cache,
                           **fast_settings(backend=backend, backend_options=options))


def test_a_serving_backend_search_predicts_with_its_own_fitted_table_cached_on_disk(trained_mlp, digits, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    first = _evaluator(trained_mlp, digits, "onnxruntime", tmp_path, **PER_SESSION)
    assert isinstance(first.latency_model.table, FittedLatencyTable)
    assert first.latency_model.table_info["kind"] == "fitted" and first.latency_model.table_info["from_cache"] is False
    assert first.latency_model.backend_settings["backend"] == "onnxruntime" and first.latency_model.backend_settings["thread_pool"] == "per-session"
    assert first.latency_model.table.key["backend"]["backend"] == "onnxruntime"
    assert list(tmp_path.glob("onnxruntime-*.json"))
    half = {u: 0.5 for u in first.unit_names}
    assert 0 < first.predicted_ratio(half) < 1.0

    second = _evaluator(trained_mlp, digits, "onnxruntime", tmp_path, **PER_SESSION)
    assert second.latency_model.table_info["from_cache"] is True
    assert second.predicted_ratio(half) == pytest.approx(first.predicted_ratio(half))

    m = first.evaluate(Policy.uniform(first.unit_names, 0.5))
    assert not m.failed
    assert m.backend.startswith("onnxruntime(") and "thread_pool=per-session" in m.backend and "threads=1" in m.backend
    assert m.as_dict()["backend"] == m.backend
    assert first.history[-1].metrics.backend == m.backend


def test_eager_search_keeps_the_micro_benchmark_table_and_records_torch(trained_mlp, digits, tmp_path) -> None:
    ev = _evaluator(trained_mlp, digits, "torch", tmp_path)
    assert isinstance(ev.latency_model.table, LatencyTable) and ev.latency_model.table_info["kind"] == "eager micro-benchmarks"
    assert [p.name for p in tmp_path.iterdir()] == ["layers"]  # eager: per-layer timings only (measure/layer_cache.py), no fitted table
    m = ev.evaluate(Policy.uniform(ev.unit_names, 0.3))
    assert m.backend.startswith("torch(") and "threads=1" in m.backend


def test_bad_backend_option_value_fails_before_any_search(trained_mlp, digits, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(ConfigError, match="graph_optimization"):
        _evaluator(trained_mlp, digits, "onnxruntime", tmp_path, graph_optimization="max", **PER_SESSION)


def test_run_on_onnxruntime_reports_both_runtimes_the_total_speedup_and_the_int8_decision(tmp_path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    import mlflow

    from autoprune.app.pipeline import run_experiment
    from autoprune.app.tables import deployment_lines, final_rows, run_tables
    from autoprune.config.loading import parse_config

    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    cfg = parse_config(tiny_experiment(
        tmp_path, name="serving", latency={"backend": "onnxruntime", "backend_options": PER_SESSION}, search={"episodes": 3},
        export={"quantize": True, "int8_tolerance": 1.0}, tracking={"register": False},
    ))
    res = run_experiment(cfg, progress=False)
    r = res.report
    assert r["backend"] == "onnxruntime" and res.pruned.backend == "onnxruntime"
    assert r["backend_settings"]["thread_pool"] == "per-session"
    for key in ("dense_latency_ms", "pruned_latency_ms", "dense_eager_latency_ms", "pruned_eager_latency_ms", "deployed_latency_ms"):
        assert r[key] > 0, key
    assert r["speedup"] == pytest.approx(r["dense_latency_ms"] / r["pruned_latency_ms"])
    assert r["eager_speedup"] == pytest.approx(r["dense_eager_latency_ms"] / r["pruned_eager_latency_ms"])
    assert r["total_speedup"] == pytest.approx(r["dense_eager_latency_ms"] / r["deployed_latency_ms"])
    # int8 is deployed exactly when it measured faster and within the tolerance, and the report says which
    should_keep = r["int8_speed_ratio"] < 1.0 and r["int8_accuracy_drop_points"] <= 1.0
    assert r["int8_kept"] is should_keep
    assert r["int8_decision"].startswith("int8 deployed" if should_keep else "fp32 kept")
    assert ("int8" in r["deployed_artifact"]) is should_keep
    int8_files = [p.name for p in (tmp_path / "out").rglob("*.int8*onnx")]
    assert int8_files == (["model.int8.onnx"] if should_keep else []), "only a deployable int8 file is left beside model.onnx"

    policy = json.loads(next((tmp_path / "out").rglob("policy.json")).read_text())
    assert policy["backend"]["name"] == "onnxruntime" and policy["backend"]["settings"]["thread_pool"] == "per-session"
    assert policy["backend"]["options"] == PER_SESSION
    assert policy["metrics"]["backend"].startswith("onnxruntime(")

    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(res.run_id)
    assert run.data.tags["backend.thread_pool"] == "per-session" and run.data.tags["backend.backend"] == "onnxruntime"
    assert run.data.params["latency.backend_options.thread_pool"] == "per-session"
    assert {"final/total_speedup", "final/eager_speedup", "final/pruned_eager_latency_ms"} <= set(run.data.metrics)

    rows = {row.label: row for row in final_rows(res.dense, res.pruned, r)}
    assert (rows["latency ms on onnxruntime [95% CI]"].other, rows["latency ms on torch eager"].other) == (
        res.pruned.latency_ms, res.pruned.eager_latency_ms)
    lines = deployment_lines(r)
    assert lines[0] == r["int8_decision"] and lines[1].startswith("total: dense eager PyTorch")
    assert lines[0] in run_tables(res) and res.pruned.backend_settings == r["backend_settings"]


_INT8_AFTER_SHARED_POOL = """
import numpy as np, torch
from autoprune.formats.onnx import export_model, quantize_onnx, onnx_predictions, shared_pool_threads
from autoprune.measure.backends import get_backend
get_backend("onnxruntime", threads=1, thread_pool="shared")  # the process-wide pool, as a search with thread_pool shared makes it
assert shared_pool_threads() == 1
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 3)).eval()
export_model(net, (torch.randn(1, 1, 8, 8),), "m.onnx", None)
batches = [np.random.default_rng(i).standard_normal((4, 1, 8, 8)).astype(np.float32) for i in range(3)]
quantize_onnx("m.onnx", "m.int8.onnx", calibration=batches)
print(onnx_predictions("m.int8.onnx", batches[0]).shape)
"""


def test_static_int8_works_after_the_shared_onnxruntime_pool_exists(tmp_path) -> None:
    """A search with thread_pool shared makes ONNX Runtime's permanent shared pool; the quantiser's own sessions must still open."""
    import os
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", _INT8_AFTER_SHARED_POOL], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(4, 3)")
    assert (tmp_path / "m.int8.onnx").is_file()


class _NoisyHead(torch.nn.Module):
    """Exports fine, but ONNX Runtime computes something else than torch (fresh noise per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.rand_like(self.fc(x))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_model_the_runtime_computes_differently_fails_before_any_timing_with_one_line(backend: str) -> None:
    from autoprune.errors import ModelError
    from autoprune.measure.latency import PairedTimer

    pytest.importorskip(backend)
    with pytest.raises(ModelError) as e:
        PairedTimer(_NoisyHead(), torch.randn(2, 8), backend=backend, threads=1)
    message = str(e.value)
    assert "\n" not in message and f"latency.backend {backend!r}" in message and "differs from torch" in message
    # a model the runtime does compute like torch is accepted
    PairedTimer(torch.nn.Linear(8, 4), torch.randn(2, 8), backend=backend, threads=1)


_OWNED_PROCESS = """
import sys
from autoprune.measure.settings import LatencySettings
from autoprune.formats.onnx import shared_pool_threads
s = LatencySettings(backend="onnxruntime", threads=1)
print(s.ratio_options()["thread_pool"])
if sys.argv[1] == "own":
    import autoprune.__main__ as entry
    entry.main = lambda: None  # the command itself is not needed: only what `autoprune` does to its process first
    entry.console()
    print(s.ratio_options()["thread_pool"])
    s.serving_check()  # builds the ratio backend, as a search's export check does
    print(shared_pool_threads())
"""


@pytest.mark.parametrize("mode", ["library", "own"])
def test_the_autoprune_command_times_ratios_on_the_shared_pool_and_a_library_process_keeps_per_session(tmp_path, mode) -> None:
    """The command's process is autoprune's own (``console`` calls ``own_process``): its in-search ratios are timed as
    served (shared, spinning pool); a library caller's process keeps per-session pools and can still open plain sessions."""
    import os
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", _OWNED_PROCESS, mode], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split()
    assert lines[0] == "per-session"
    if mode == "own":
        assert lines[1:] == ["shared", "1"]
