"""Specification of autoprune.measure.runtime_table: the per-backend latency table fitted to measurements.

No timing is asserted: the fit is checked on exactly linear data, the calibration on
the real surgery and a real backend, and the cache by counting measurements.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.graph import PrunableGraph
from autoprune.measure.latency import PairedTimer
from autoprune.measure.runtime_table import (
    FEATURES,
    FittedLatencyTable,
    cache_path,
    calibrated_table,
    calibration_policies,
    spec_features,
    table_key,
)
from autoprune.measure.schedule import PairedSchedule
from autoprune.measure.variant_cache import calibrate_on_backend
from autoprune.zoo import build_model


@pytest.fixture(scope="module")
def resnet() -> tuple[torch.nn.Module, PrunableGraph]:
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, num_classes=10, input_size=28).eval()
    return model, PrunableGraph(model, torch.randn(1, 1, 28, 28), drop_blocks=True)


def spec_lists(graph: PrunableGraph, n: int = 12) -> list:
    policies = calibration_policies(graph.unit_names, graph.block_names, n_random=n, seed=3)
    return [graph.specs_for(p.ratios, p.drop, batch_size=1) for p in policies]


def test_features_shrink_with_channels_and_drops(resnet) -> None:
    _, graph = resnet
    dense = spec_features(graph.specs_for({}, (), batch_size=1))
    half = spec_features(graph.specs_for({u: 0.5 for u in graph.unit_names}, (), batch_size=1))
    dropped = spec_features(graph.specs_for({}, graph.block_names[:2], batch_size=1))
    macs = FEATURES.index("conv_macs")
    assert half[macs] < 0.4 * dense[macs]
    assert dropped[FEATURES.index("conv_calls")] == dense[FEATURES.index("conv_calls")] - 4
    assert spec_features(graph.specs_for({}, (), batch_size=4))[macs] == 4 * dense[macs]


def test_fit_recovers_a_latency_that_is_linear_in_the_features(resnet) -> None:
    _, graph = resnet
    specs = spec_lists(graph)
    truth = FittedLatencyTable({"constant": 0.1, "conv_calls": 0.01, "conv_macs": 3e-8})
    samples = [(s, truth.predict(s)) for s in specs]
    table = FittedLatencyTable()
    table.fit(samples)
    for s, ratio in samples:
        assert table.predict(s) == pytest.approx(ratio, rel=1e-3)
    assert table.predict_ratio(specs[3], specs[0]) == pytest.approx(truth.predict(specs[3]) / truth.predict(specs[0]), rel=1e-3)


def test_calibrated_table_is_cached_per_key_and_reused_without_measuring(tmp_path, resnet) -> None:
    _, graph = resnet
    specs = spec_lists(graph, 4)
    calls = []

    def measured(i: int):
        def run() -> float:
            calls.append(i)
            return float(spec_features(specs[i])[FEATURES.index("conv_macs")]) / 1e6

        return run

    key = table_key("abc", {"backend": "torch", "threads": 1}, 1)
    variants = [(s, measured(i)) for i, s in enumerate(specs)]
    table, cached = calibrated_table(key, variants, dense_ms=2.0, cache_dir=tmp_path)
    assert not cached and len(calls) == len(specs)
    again, cached = calibrated_table(key, variants, dense_ms=lambda: pytest.fail("dense re-measured"), cache_dir=tmp_path)
    assert cached and len(calls) == len(specs)
    assert again.weights == table.weights and again.dense_ms == 2.0
    assert cache_path(key, tmp_path).is_file()
    other = table_key("abc", {"backend": "torch", "threads": 1}, 32)
    assert cache_path(other, tmp_path) != cache_path(key, tmp_path)
    _, cached = calibrated_table(other, variants, dense_ms=2.0, cache_dir=tmp_path)
    assert not cached and len(calls) == 2 * len(specs)


def test_calibration_on_a_backend_prunes_measures_and_is_skipped_the_second_time(tmp_path, resnet) -> None:
    model, graph = resnet
    timer = PairedTimer(model, torch.randn(1, 1, 28, 28), threads=1)
    table, info = calibrate_on_backend(model, graph, timer, batch_size=1, n_random=1, schedule=PairedSchedule(rounds=2), cache_dir=tmp_path)
    assert not info["from_cache"] and len(table) == 7 and info["measured"] == 6
    assert table.key["backend"]["backend"] == "torch" and table.key["batch_size"] == 1 and "machine" in table.key
    dense_specs = graph.specs_for({}, (), batch_size=1)
    assert table.predict_ratio(dense_specs, dense_specs) == pytest.approx(1.0)
    assert table.dense_ms > 0
    again, info = calibrate_on_backend(model, graph, timer, batch_size=1, n_random=1, schedule=PairedSchedule(rounds=2), cache_dir=tmp_path)
    assert info["from_cache"] and info["measured"] == 0 and again.weights == table.weights


def test_bad_tables_and_samples_raise_config_error(tmp_path, resnet) -> None:
    _, graph = resnet
    with pytest.raises(ConfigError, match="at least 3"):
        FittedLatencyTable().fit([(graph.specs_for({}, ()), 1.0)])
    specs = spec_lists(graph, 2)
    with pytest.raises(ConfigError, match=r"samples\[1\].*> 0"):
        FittedLatencyTable().fit([(specs[0], 1.0), (specs[1], 0.0), (specs[2], 0.5)])
    with pytest.raises(ConfigError, match="unknown feature 'flops'"):
        FittedLatencyTable({"flops": 1.0})
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"format": 99}))
    with pytest.raises(ConfigError, match="cannot read"):
        FittedLatencyTable.load(bad)
    assert np.isnan(FittedLatencyTable().dense_ms)
