"""Specification of autoprune.measure.fresh: re-measuring candidates against the dense model in a new process.

Behaviour only, never timings: the child is another process, every candidate gets a ratio
inside its confidence interval and milliseconds consistent with it, the backend's settings come
back, int8 files are timed on a runtime that opens ONNX files, and bad input fails with one-line
autoprune errors naming what is wrong.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from autoprune.errors import ConfigError, ModelError
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.fresh import FreshMeasurement, ZooModel, remeasure_in_fresh_process

ZOO = ZooModel("resnet20", in_channels=1, num_classes=10, input_size=8)
QUICK = {"threads": 1, "rounds": 4, "warmup_rounds": 1}


@pytest.fixture(scope="module")
def dense(make_model) -> nn.Module:
    return make_model("resnet20")


@pytest.fixture(scope="module")
def pruned(dense: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """Every unit at 50% and one block dropped: a structure the child must rebuild from the file."""
    graph = PrunableGraph(dense, example_input)
    return apply_policy(dense, Policy.uniform(graph.unit_names, 0.5, drop=graph.block_names[:1]), graph=graph).eval()


def assert_consistent(result: FreshMeasurement, n: int, rounds: int) -> None:
    assert len(result.ratios) == n
    assert result.dense_ms > 0
    for r in result.ratios:
        assert r.ci_low <= r.ratio <= r.ci_high
        assert r.ratio > 0 and r.rounds == rounds
        assert r.ms == pytest.approx(r.ratio * result.dense_ms)


def test_candidates_are_timed_against_dense_in_another_process_on_torch(dense, pruned, example_input) -> None:
    result = remeasure_in_fresh_process(dense, [pruned, dense], example_input, zoo=ZOO, **QUICK)
    assert result.pid != os.getpid()
    assert_consistent(result, n=2, rounds=QUICK["rounds"])
    assert result.settings["backend"] == "torch" and result.settings["threads"] == 1
    assert result.int8 is None
    doc = result.as_dict()
    assert doc["pid"] == result.pid and len(doc["fp32"]["ratios"]) == 2


def test_a_shape_stands_for_the_input_and_no_candidates_measures_only_dense(dense) -> None:
    result = remeasure_in_fresh_process(dense, [], (1, 1, 8, 8), zoo=ZOO, **QUICK)
    assert result.ratios == () and result.dense_ms > 0


def test_modules_and_onnx_files_on_onnxruntime_with_int8_on_the_same_runtime(dense, pruned, example_input, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from autoprune.formats.onnx import export_onnx, quantize_onnx

    onnx_file = export_onnx(pruned, example_input, tmp_path / "pruned.onnx")["path"]
    int8 = quantize_onnx(onnx_file, tmp_path / "pruned.int8.onnx", calibration=[example_input.numpy()])
    options = {"thread_pool": "per-session", "spinning": False}
    result = remeasure_in_fresh_process(dense, [pruned, onnx_file], example_input, backend="onnxruntime", backend_options=options,
                                        int8_files=[int8], zoo=ZOO, protocol="serving", **QUICK)
    assert result.pid != os.getpid()
    assert_consistent(result, n=2, rounds=QUICK["rounds"])
    assert result.settings["backend"] == "onnxruntime" and result.settings["spinning"] is False
    assert result.int8 is not None and len(result.int8.ratios) == 1
    assert result.int8.settings["backend"] == "onnxruntime" and result.int8.settings["spinning"] is False  # the serving backend's options
    r = result.int8.ratios[0]
    assert r.ci_low <= r.ratio <= r.ci_high and r.ms == pytest.approx(r.ratio * result.int8.reference_ms)


def test_the_ratio_protocol_times_onnx_runtime_on_its_shared_pool_and_serving_keeps_the_options(dense, pruned, example_input) -> None:
    pytest.importorskip("onnxruntime")
    options = {"thread_pool": "per-session", "spinning": False}
    ratio = remeasure_in_fresh_process(dense, [pruned], example_input, backend="onnxruntime", backend_options=options, zoo=ZOO, **QUICK)
    served = remeasure_in_fresh_process(dense, [pruned], example_input, backend="onnxruntime", backend_options=options, zoo=ZOO,
                                        protocol="serving", **QUICK)
    assert ratio.settings["thread_pool"] == "shared" and ratio.settings["spinning"] is True  # ONNX Runtime's shared pool always spins
    assert served.settings["thread_pool"] == "per-session" and served.settings["spinning"] is False


def test_several_processes_give_the_median_ratio_and_the_interval_of_the_median_process(dense, pruned, example_input) -> None:
    one = remeasure_in_fresh_process(dense, [pruned], example_input, zoo=ZOO, **QUICK)
    pooled = remeasure_in_fresh_process(dense, [pruned], example_input, zoo=ZOO, processes=2, **QUICK)
    r = pooled.ratios[0]
    per_process = pooled.settings["process_ratios"][0]
    assert pooled.settings["processes"] == 2 and "processes" not in one.settings and len(per_process) == 2
    assert r.rounds == 2 * one.ratios[0].rounds
    assert r.ci_low <= min(per_process) + 1e-4 and r.ci_high >= max(per_process) - 1e-4  # the two processes' range, at least
    with pytest.raises(ConfigError, match="processes: expected an integer >= 1, got 0"):
        remeasure_in_fresh_process(dense, [pruned], example_input, zoo=ZOO, processes=0)


def test_processes_are_added_while_they_disagree_by_more_than_rel_ci(dense, pruned, example_input) -> None:
    # no two processes agree to one part in a million: measuring goes on to max_processes; without rel_ci it stops at processes
    strict = remeasure_in_fresh_process(dense, [pruned], example_input, zoo=ZOO, processes=1, max_processes=2, rel_ci=1e-6, **QUICK)
    plain = remeasure_in_fresh_process(dense, [pruned], example_input, zoo=ZOO, processes=2, max_processes=3, **QUICK)
    assert strict.settings["processes"] == 2 and plain.settings["processes"] == 2
    with pytest.raises(ConfigError, match=r"max_processes: expected an integer >= processes \(3\), got 2"):
        remeasure_in_fresh_process(dense, [pruned], example_input, zoo=ZOO, processes=3, max_processes=2)
    with pytest.raises(ConfigError, match="rel_ci: expected a number in"):
        remeasure_in_fresh_process(dense, [pruned], example_input, zoo=ZOO, processes=2, rel_ci=1.5)


def test_an_unknown_protocol_is_refused_before_any_child_starts(dense, example_input) -> None:
    with pytest.raises(ConfigError, match="protocol: unknown timing protocol 'fast'; allowed: ratio, serving"):
        remeasure_in_fresh_process(dense, [], example_input, zoo=ZOO, protocol="fast")


def test_int8_files_of_an_eager_search_are_timed_on_onnx_runtime(dense, pruned, example_input, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from autoprune.formats.onnx import export_onnx, quantize_onnx

    onnx_file = export_onnx(pruned, example_input, tmp_path / "pruned.onnx")["path"]
    int8 = quantize_onnx(onnx_file, tmp_path / "pruned.int8.onnx", calibration=[example_input.numpy()])
    result = remeasure_in_fresh_process(dense, [pruned], example_input, backend="torch", int8_files=[int8], zoo=ZOO, **QUICK)
    assert result.settings["backend"] == "torch"
    assert result.int8 is not None and result.int8.settings["backend"] == "onnxruntime"


def test_a_file_the_child_cannot_read_is_a_model_error_naming_it(dense, example_input, tmp_path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a pruned model")
    with pytest.raises(ModelError, match="fresh-process re-measure: .*garbage.pt"):
        remeasure_in_fresh_process(dense, [bad], example_input, zoo=ZOO, **QUICK)


def test_bad_arguments_fail_before_any_child_starts(dense, pruned, example_input, tmp_path) -> None:
    with pytest.raises(ModelError, match="candidates\\[0\\]: .*missing.onnx.*no such file"):
        remeasure_in_fresh_process(dense, [tmp_path / "missing.onnx"], example_input, zoo=ZOO)
    with pytest.raises(ConfigError, match="zoo=ZooModel"):
        remeasure_in_fresh_process(dense, [pruned], example_input)
    onnx_like = tmp_path / "model.onnx"
    onnx_like.write_bytes(b"")
    with pytest.raises(ConfigError, match="backend: 'torch' cannot time ONNX files"):
        remeasure_in_fresh_process(dense, [onnx_like], example_input, zoo=ZOO)
    with pytest.raises(ConfigError, match="rounds: expected an integer >= 1"):
        remeasure_in_fresh_process(dense, [pruned], example_input, zoo=ZOO, rounds=0)
    with pytest.raises(ConfigError, match="latency.backend"):
        remeasure_in_fresh_process(dense, [pruned], example_input, zoo=ZOO, backend="no-such-runtime")
    with pytest.raises(ConfigError, match="example_input"):
        remeasure_in_fresh_process(dense, [pruned], "1x8x8", zoo=ZOO)
