"""Specification of the serving runtimes' variant cache: a model made of the same layers as one calibrated before times fewer variants.

On a serving runtime the latency table is fitted to whole-model variants timed on it
(``autoprune/measure/variant_cache.py``). Those timings are kept per model and pooled into the fit
of a later model whose layer specs overlap. Real surgery, real ONNX Runtime and a simulated
runtime (``plugins_for_tests:NoisyCostBackend``, whose latency is an exact function of the
weights); nothing asserts how fast anything is, only what was timed, reused and written.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from helpers import cli, tiny_experiment, write_experiment
from plugins_for_tests import CountingOnnxRuntimeBackend, simulated_cost_ms
from torch import nn

from autoprune.formats.policy_file import policy_document, write_policy_file
from autoprune.graph.layers import record_layer_specs
from autoprune.graph.policy import Policy, model_fingerprint
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.latency_model import BACKEND_CALIBRATION_RANDOM, LatencyModel
from autoprune.measure.runtime_table import FittedLatencyTable, calibration_policies, spec_features
from autoprune.measure.settings import LatencySettings
from autoprune.measure.variant_cache import REUSE_RANDOM
from autoprune.zoo import build_model

X = torch.randn(1, 1, 8, 8)
FAST = {"threads": 1, "warmup": 0, "rounds": 2, "min_rounds": 2, "rel_ci": None}
NOISELESS = {"backend": "plugins_for_tests:NoisyCostBackend", "backend_options": {"noise": 0.0, "seed": 0}}
#: Calibration variants timed without donors (dense is free) and with them, for a model without droppable blocks.
ALONE, POOLED = 3 + BACKEND_CALIBRATION_RANDOM, 3 + REUSE_RANDOM


def cnn(depth: int, width: int = 8) -> nn.Module:
    """``depth`` 3x3 conv-BN-ReLU blocks of ``width`` channels on an 8x8 image, then a classifier: deeper ones repeat the same layer specs."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(1 if i == 0 else width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    torch.manual_seed(depth)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def build(model: nn.Module, folder, **settings) -> LatencyModel:
    graph = PrunableGraph(model, X)
    return LatencyModel.build(model, graph, LatencySettings(**{**FAST, **NOISELESS, **settings}), example_input=X, max_ratio=0.5,
                              table_cache=folder)


def test_a_pooled_fit_recovers_costs_shared_by_two_models_and_each_donors_own_dense_scale() -> None:
    truth = FittedLatencyTable({"constant": 0.3, "conv_calls": 0.02, "conv_macs": 2e-6, "linear_macs": 1e-4})
    graphs = {d: PrunableGraph(cnn(d), X) for d in (2, 4)}
    specs = {d: [g.specs_for(p.ratios, p.drop, batch_size=1) for p in calibration_policies(g.unit_names, (), n_random=12, seed=d)]
             for d, g in graphs.items()}
    donor = specs[2]  # ratios to the donor's own dense model, which is not this one's
    donor_rows = (np.stack([spec_features(s) for s in donor]), np.array([truth.predict(s) / truth.predict(donor[0]) for s in donor]))
    new = specs[4][:4]  # dense and the three uniform variants only: too few to fit 14 costs alone
    table = FittedLatencyTable()
    table.fit([(s, truth.predict(s) / truth.predict(new[0])) for s in new], [donor_rows])
    assert table.donor_scales == pytest.approx([truth.predict(donor[0]) / truth.predict(new[0])], rel=1e-3)
    for s in specs[4][4:]:  # random variants the fit never saw
        assert table.predict_ratio(s, new[0]) == pytest.approx(truth.predict(s) / truth.predict(new[0]), rel=1e-3)


def test_a_deeper_model_of_the_same_layers_times_fewer_variants_on_onnx_runtime_and_reports_the_time_saved(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    ort = {"backend": "plugins_for_tests:CountingOnnxRuntimeBackend", "backend_options": {"thread_pool": "per-session"}}
    CountingOnnxRuntimeBackend.prepared = 0
    first = build(cnn(2), tmp_path, **ort)
    opened_first, CountingOnnxRuntimeBackend.prepared = CountingOnnxRuntimeBackend.prepared, 0
    deeper = build(cnn(3), tmp_path, **ort)
    opened_deeper = CountingOnnxRuntimeBackend.prepared

    assert first.cache_summary() == {"unit": "variant timings", "reused": 0, "measured": ALONE, "seconds_saved": 0.0}
    assert opened_first >= ALONE + 1  # the dense reference and every variant were exported and opened
    summary = deeper.cache_summary()
    assert summary["unit"] == "variant timings" and summary["measured"] == POOLED < ALONE
    assert summary["reused"] == ALONE + 1  # the first model's timed variants and its dense row
    assert summary["seconds_saved"] > 0
    assert opened_deeper == opened_first - (ALONE - POOLED)  # only the new variants were timed on the runtime
    [donor] = deeper.table.donors
    assert donor["variants"] == ALONE + 1 and donor["overlap"] == 1.0 and donor["scale"] > 0
    assert len(list((tmp_path / "variants").rglob("*.json"))) == 2  # one entry per model


def test_the_pooled_table_of_a_simulated_runtime_predicts_the_new_models_ratios_exactly(tmp_path) -> None:
    """On a runtime whose cost is linear in the features (NoisyCostBackend, noise 0), pooling loses nothing."""
    build(cnn(2), tmp_path)
    model = cnn(4)
    deeper = build(model, tmp_path)
    assert deeper.cache_summary()["reused"] > 0 and len(deeper.table) == POOLED + 1
    rng = np.random.default_rng(5)
    for _ in range(6):
        policy = Policy({u: float(rng.uniform(0, 0.5)) for u in deeper.graph.unit_names})
        truth = simulated_cost_ms(apply_policy(model, policy, graph=deeper.graph)) / simulated_cost_ms(model)
        assert deeper.predict_ratio(policy.ratios) == pytest.approx(truth, rel=1e-3)


def test_a_model_of_other_layer_specs_borrows_nothing(tmp_path) -> None:
    build(cnn(2), tmp_path)
    wider = build(cnn(3, width=16), tmp_path).cache_summary()
    assert wider["reused"] == 0 and wider["measured"] == ALONE and wider["seconds_saved"] == 0.0


@pytest.mark.parametrize("changed", [{"threads": 2}, {"backend_options": {"noise": 0.0, "seed": 1}}, "machine"],
                         ids=["threads", "backend option", "machine"])
def test_variant_timings_are_never_reused_across_threads_backend_settings_or_machines(tmp_path, monkeypatch, changed) -> None:
    build(cnn(2), tmp_path)
    assert build(cnn(3), tmp_path / "control").cache_summary()["reused"] == 0
    if changed == "machine":
        import autoprune.measure.variant_cache as variant_cache

        other = {**variant_cache.machine_id(), "cpu": "another CPU"}
        monkeypatch.setattr(variant_cache, "machine_id", lambda: other)
        changed = {}
    summary = build(cnn(3), tmp_path, **changed).cache_summary()
    assert summary["reused"] == 0 and summary["measured"] == ALONE


def test_table_cache_false_reads_and_writes_no_variant_timings(tmp_path) -> None:
    build(cnn(2), tmp_path)
    off = build(cnn(3), tmp_path, table_cache=False).cache_summary()
    assert off["reused"] == 0 and off["measured"] == ALONE
    assert len(list((tmp_path / "variants").rglob("*.json"))) == 1
    build(cnn(2), tmp_path / "off", table_cache=False)
    assert not (tmp_path / "off").exists()


def test_a_corrupt_variant_entry_is_ignored_with_one_warning_and_the_model_calibrated_alone(tmp_path, caplog) -> None:
    build(cnn(2), tmp_path)
    [entry] = (tmp_path / "variants").rglob("*.json")
    entry.write_text('{"key": {"model": "00"}, "variants": [')
    with caplog.at_level(logging.WARNING, logger="autoprune.measure.variant_cache"):
        summary = build(cnn(3), tmp_path).cache_summary()
    assert summary["reused"] == 0 and summary["measured"] == ALONE
    assert sum("ignoring the unreadable entry" in r.getMessage() for r in caplog.records) == 1


def test_entries_name_models_by_their_layer_spec_multiset_and_hold_their_whole_key(tmp_path) -> None:
    build(cnn(2), tmp_path)
    [entry] = (tmp_path / "variants").rglob("*.json")
    doc = json.loads(entry.read_text())
    context = doc["key"]["context"]
    assert context["backend"]["backend"] == "noisy-cost" and context["batch_size"] == 1 and "machine" in context and "torch" in context
    assert len(doc["variants"]) == ALONE + 1 and doc["variants"][0]["ratio"] == 1.0
    assert len(doc["dense_specs"]) == len({json.dumps(s.key()) for s in record_layer_specs(cnn(2), X)})


def _resnet_policy(tmp_path):
    graph = PrunableGraph(build_model("resnet8", in_channels=1, num_classes=10, input_size=8).eval(), torch.zeros(2, 1, 8, 8), drop_blocks=True)
    doc = policy_document(Policy.uniform(graph.unit_names, 0.3), model="resnet8", data="digits", metric="macs", target=0.6,
                          backend={"name": NOISELESS["backend"], "batch_size": 1, "threads": 1, "options": NOISELESS["backend_options"]},
                          searcher="optuna", fingerprint=model_fingerprint(graph))
    path = tmp_path / "policy.json"
    write_policy_file(path, doc)
    return path


def test_a_transfer_to_a_deeper_resnet_on_a_serving_runtime_reuses_variant_timings_and_reports_the_time_saved(tmp_path, capsys, monkeypatch):
    """ResNet-8, then ResNet-14 (the same layer specs, more of them): the second transfer prints and logs to MLflow what it saved."""
    import mlflow

    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    policy = _resnet_policy(tmp_path)
    config = write_experiment(tmp_path / "exp.yaml", tiny_experiment(tmp_path, budget={"metric": "macs", "target": 0.6}))
    line = re.compile(r"latency table cache \(variant timings\): (\d+) reused \(([\d.e+-]+) s of measurement saved\), (\d+) measured")
    found = []
    for model, track in (("resnet8", ["--no-track"]), ("resnet14", [])):
        res = cli(capsys, "transfer", str(config), "--policy", str(policy), "--model", model, *track, "--candidates", "1",
                  "--out", str(tmp_path / f"{model}.json"))
        assert res.code == 0, res.err
        match = line.search(res.out)
        assert match, res.out
        found.append(tuple(float(v) for v in match.groups()))
    (reused8, _, measured8), (reused14, saved14, measured14) = found
    assert reused8 == 0 and reused14 == measured8 + 1 and 0 < measured14 < measured8 and saved14 > 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("transfer").experiment_id])
    metrics = run.data.metrics
    assert (metrics["latency_table_reused"], metrics["latency_table_measured"]) == (reused14, measured14)
    assert metrics["latency_table_seconds_saved"] == pytest.approx(saved14, rel=1e-2)
