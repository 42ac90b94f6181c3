"""Search, measure and report on the serving runtime: the wiring of the latency backends.

Behaviour only, never timings: the config's backend options reach the backend, the evaluator
predicts with the table fitted on that backend (cached on disk), and every result names the
backend settings that timed it.
"""

from __future__ import annotations

import json

import pytest
import torch

from autoprune.config import load_config
from autoprune.config.settings import latency_settings
from autoprune.errors import ConfigError
from autoprune.graph.policy import Policy
from autoprune.measure.runtime_table import FittedLatencyTable
from autoprune.measure.table import LatencyTable
from autoprune.objective.evaluator import Budget, LatencySettings, PolicyEvaluator
from autoprune.objective.proxy import ProxySettings
from autoprune.training.baseline import TrainSettings, train_model

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


def test_default_backend_options_are_empty_serving_defaults() -> None:
    cfg = load_config(DEMO, ["latency.backend=torch"])
    assert cfg.latency.backend_options == {} and dict(LatencySettings().backend_options) == {}


@pytest.fixture(scope="module")
def mlp(digits, make_model) -> torch.nn.Module:
    model = make_model("mlp")
    train_model(model, digits, TrainSettings(epochs=2, batch_size=64, lr=0.05, augment=False), progress=False)
    return model.eval()


def _evaluator(model, digits, backend: str, cache, **options) -> PolicyEvaluator:
    latency = LatencySettings(backend=backend, rounds=3, min_rounds=2, threads=1, backend_options=options)
    return PolicyEvaluator(model, digits, budget=Budget(metric="macs", target=0.6), proxy=ProxySettings(bn_batches=2, val_samples=200),
                           latency=latency, check=False, table_cache=cache)


def test_a_serving_backend_search_predicts_with_its_own_fitted_table_cached_on_disk(mlp, digits, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    first = _evaluator(mlp, digits, "onnxruntime", tmp_path, **PER_SESSION)
    assert isinstance(first.table, FittedLatencyTable)
    assert first.table_info["kind"] == "fitted" and first.table_info["from_cache"] is False
    assert first.backend_settings["backend"] == "onnxruntime" and first.backend_settings["thread_pool"] == "per-session"
    assert first.table.key["backend"]["backend"] == "onnxruntime"
    assert list(tmp_path.glob("onnxruntime-*.json"))
    half = {u: 0.5 for u in first.unit_names}
    assert 0 < first.predicted_ratio(half) < 1.0

    second = _evaluator(mlp, digits, "onnxruntime", tmp_path, **PER_SESSION)
    assert second.table_info["from_cache"] is True
    assert second.predicted_ratio(half) == pytest.approx(first.predicted_ratio(half))

    m = first.evaluate(Policy.uniform(first.unit_names, 0.5))
    assert not m.failed
    assert m.backend.startswith("onnxruntime(") and "thread_pool=per-session" in m.backend and "threads=1" in m.backend
    assert m.as_dict()["backend"] == m.backend
    assert first.history[-1].metrics.backend == m.backend


def test_eager_search_keeps_the_micro_benchmark_table_and_records_torch(mlp, digits, tmp_path) -> None:
    ev = _evaluator(mlp, digits, "torch", tmp_path)
    assert isinstance(ev.table, LatencyTable) and ev.table_info["kind"] == "eager micro-benchmarks"
    assert not list(tmp_path.iterdir())  # nothing cached for eager
    m = ev.evaluate(Policy.uniform(ev.unit_names, 0.3))
    assert m.backend.startswith("torch(") and "threads=1" in m.backend


def test_bad_backend_option_value_fails_before_any_search(mlp, digits, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(ConfigError, match="graph_optimization"):
        _evaluator(mlp, digits, "onnxruntime", tmp_path, graph_optimization="max", **PER_SESSION)
