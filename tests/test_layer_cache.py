"""Specification of the latency-table cache: per-layer timings reused across models by layer spec.

Real micro-benchmarks and paired measurements of tiny models on eager PyTorch; nothing asserts
how fast anything is, only what was measured, what was reused and what was written.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from autoprune.config.loading import parse_config
from autoprune.config.settings import latency_settings
from autoprune.graph.layers import record_layer_specs
from autoprune.graph.prunable import PrunableGraph
from autoprune.measure.latency_model import LatencyModel
from autoprune.measure.layer_cache import LayerTimingCache, timing_context
from autoprune.measure.runtime_table import calibrated_table, spec_features, table_key
from autoprune.measure.settings import LatencySettings
from autoprune.measure.table import LatencyTable

X = torch.randn(1, 1, 8, 8)
FAST = {"threads": 1, "warmup": 0, "rounds": 2, "min_rounds": 2, "rel_ci": None}


def cnn(depth: int) -> nn.Module:
    """``depth`` 3x3 conv-BN-ReLU blocks of 8 channels on an 8x8 image, then a classifier: the layers of a shallower one are a prefix."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
    torch.manual_seed(depth)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def build(model: nn.Module, folder, **settings) -> LatencyModel:
    graph = PrunableGraph(model, X)
    return LatencyModel.build(model, graph, LatencySettings(**{**FAST, **settings}), example_input=X, max_ratio=0.5, table_cache=folder)


def entry_files(folder) -> list:
    return sorted((folder / "layers").rglob("*.json"))


def test_a_second_table_reads_the_timings_of_shared_specs_and_measures_only_new_ones(tmp_path) -> None:
    context = timing_context({"backend": "torch", "threads": 1}, threads=1, warmup=0, repeats=1, passes=1)
    shallow = record_layer_specs(cnn(2), X)
    deep = record_layer_specs(cnn(3), X) + record_layer_specs(nn.Sequential(nn.Conv2d(8, 16, 3)).eval(), torch.randn(1, 8, 8, 8))
    first = LatencyTable(threads=1, warmup=0, repeats=1, passes=1, cache=LayerTimingCache(tmp_path, context))
    first.prefill([shallow])
    assert first.cache.summary()["reused"] == 0 and first.cache.measured == len(first) > 0
    second = LatencyTable(threads=1, warmup=0, repeats=1, passes=1, cache=LayerTimingCache(tmp_path, context))
    new = {LatencyTable.key_of(s) for s in deep} - set(first.entries)
    assert second.prefill([deep]) == len(new) >= 1
    shared = set(first.entries) & set(second.entries)
    assert second.cache.reused == len(shared) == len(first) and second.cache.measured == len(second) - len(shared)
    assert all(second.entries[k] == first.entries[k] for k in shared)  # read back, not timed again
    assert second._anchors and {LatencyTable.key_of(a) for a in second._anchors} <= shared  # new specs rescaled to reused ones
    stored = [json.loads(second.cache.path(k).read_text())["seconds"] for k in shared]
    assert second.cache.seconds_saved == pytest.approx(sum(stored)) and all(s > 0 for s in stored)


def test_a_deeper_model_with_the_same_layer_shapes_reuses_the_first_models_timings(tmp_path) -> None:
    first = build(cnn(2), tmp_path).cache_summary()
    assert first["unit"] == "layer timings" and first["reused"] == 0 and first["measured"] > 0
    assert len(entry_files(tmp_path)) == first["measured"]
    deeper = build(cnn(3), tmp_path)
    second = deeper.cache_summary()
    assert second["reused"] > 0 and second["seconds_saved"] > 0
    assert second["reused"] + second["measured"] == len(deeper.table)
    assert deeper.table_info["cache"]["reused"] == second["reused"]
    again = build(cnn(2), tmp_path).cache_summary()
    assert again["measured"] == 0 and again["reused"] == first["measured"]


@pytest.mark.parametrize("changed", [{"threads": 2}, {"backend_options": {"tag": "b"}}], ids=["threads", "backend option"])
def test_timings_are_not_reused_when_the_thread_count_or_a_backend_option_changes(tmp_path, changed) -> None:
    backend = "plugins_for_tests:TaggedEagerBackend"
    first = build(cnn(2), tmp_path, backend=backend, backend_options={"tag": "a"}).cache_summary()
    same = build(cnn(2), tmp_path, backend=backend, backend_options={"tag": "a"}).cache_summary()
    assert same["measured"] == 0 and same["reused"] == first["measured"]
    other = build(cnn(2), tmp_path, **{"backend": backend, "backend_options": {"tag": "a"}, **changed}).cache_summary()
    assert other["reused"] == 0 and other["measured"] == first["measured"]


def test_a_corrupt_entry_is_ignored_with_a_warning_measured_again_and_rewritten(tmp_path, caplog) -> None:
    first = build(cnn(2), tmp_path).cache_summary()
    broken = entry_files(tmp_path)[0]
    broken.write_text('{"key": {"format": 1}, "ms": ')
    with caplog.at_level(logging.WARNING, logger="autoprune.measure.layer_cache"):
        second = build(cnn(2), tmp_path).cache_summary()
    assert second["measured"] == 1 and second["reused"] == first["measured"] - 1
    assert any("ignoring the unreadable entry" in r.getMessage() and str(broken) in r.getMessage() for r in caplog.records)
    assert json.loads(broken.read_text())["ms"] >= 0  # the fresh timing replaced it


def test_table_cache_false_measures_everything_and_writes_nothing(tmp_path) -> None:
    build(cnn(2), tmp_path)
    off = build(cnn(2), tmp_path, table_cache=False)
    summary = off.cache_summary()
    assert summary["reused"] == 0 and summary["measured"] == len(off.table) > 0 and off.table.cache is None
    off_only = tmp_path / "off"
    build(cnn(2), off_only, table_cache=False)
    assert not off_only.exists()


def test_the_config_field_latency_table_cache_reaches_the_latency_settings() -> None:
    base = {"name": "t", "model": {"name": "resnet20"}, "data": {"name": "digits"}}
    assert latency_settings(parse_config(base)).table_cache is True
    assert latency_settings(parse_config({**base, "latency": {"table_cache": False}})).table_cache is False


def test_a_reused_fitted_table_reports_the_seconds_its_calibration_took(tmp_path) -> None:
    specs = [record_layer_specs(cnn(d), X) for d in (1, 2, 3)]
    key = table_key("arch", {"backend": "x"}, 1)
    variants = [(s, float(spec_features(s)[1])) for s in specs]
    fresh, cached = calibrated_table(key, variants, dense_ms=1.0, cache_dir=tmp_path)
    again, cached_again = calibrated_table(key, variants, dense_ms=1.0, cache_dir=tmp_path)
    assert not cached and cached_again and again.seconds == fresh.seconds >= 0


def test_a_cache_folder_that_cannot_be_written_costs_one_warning_and_never_the_measurement(tmp_path, caplog) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    context = timing_context({"backend": "torch"}, threads=1, warmup=0, repeats=1, passes=1)
    table = LatencyTable(threads=1, warmup=0, repeats=1, passes=1, cache=LayerTimingCache(blocker / "layers", context))
    with caplog.at_level(logging.WARNING, logger="autoprune.measure.layer_cache"):
        table.prefill([record_layer_specs(cnn(2), X)])
    assert len(table) == table.cache.measured > 1 and table.cache.reused == 0
    assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1
