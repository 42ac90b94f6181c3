"""``autoprune estimate`` and ``autoprune evaluate`` on a serving runtime: real surgery, real ONNX Runtime, digits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import cli

from autoprune.app.commands import estimate_uniform
from autoprune.app.estimate import magnitude_masked
from autoprune.app.model_files import evaluate_file
from autoprune.app.tables import deployment_lines, estimate_table, final_rows
from autoprune.formats.pruned import save_pruned
from autoprune.graph.importance import IMPORTANCES, make_importance, needs_data
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.training.baseline import default_checkpoint_path, save_checkpoint

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, trained_resnet20) -> Path:
    """A checkpoint cache holding the trained digits ResNet-20 as the cached baseline (nothing is retrained)."""
    d = tmp_path_factory.mktemp("cache")
    save_checkpoint(default_checkpoint_path("resnet20", "digits", d), trained_resnet20, {})
    return d


def test_magnitude_masks_zero_the_smallest_weights_and_keep_every_shape(trained_resnet20):
    dense_shapes = {k: v.shape for k, v in trained_resnet20.state_dict().items()}
    masked = magnitude_masked(trained_resnet20, 5000)
    convs = [m.weight for m in masked.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sum(int((w == 0).sum()) for w in convs) == 5000
    assert {k: v.shape for k, v in masked.state_dict().items()} == dense_shapes  # prune.remove: no weight_orig / weight_mask left
    kept = torch.cat([w.detach().abs().flatten() for w in convs])
    assert kept[kept > 0].min() >= torch.cat([m.weight.detach().abs().flatten() for m in trained_resnet20.modules()
                                              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]).kthvalue(5000).values
    assert all(int((m.weight == 0).sum()) == 0 for m in trained_resnet20.modules() if isinstance(m, torch.nn.Conv2d))  # dense untouched


@pytest.fixture(scope="module")
def estimated(cache):
    """``autoprune estimate`` of ResNet-20 at 50% on ONNX Runtime, batch 32, one thread."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOPRUNE_CACHE", str(cache))
        return estimate_uniform(None, "0.5", model="resnet20", data="digits", batch_size=32, progress=False,
                                overrides=["latency.backend=onnxruntime", "latency.threads=1"])


def test_estimate_on_onnxruntime_shows_masks_shrink_nothing_and_channels_do(estimated):
    report = estimated
    dense, channels, masks = report.rows
    assert [r.kind for r in report.rows] == ["dense", "channels", "masks"]
    assert channels.label == "uniform channels 50%" and masks.label.startswith("unstructured masks ")
    assert all(r.backend.startswith("onnxruntime(") and "spinning=" in r.backend for r in report.rows)
    # the same count of non-zero weights, but nothing shrinks
    assert masks.nonzero_params == pytest.approx(channels.nonzero_params, rel=0.05)
    assert (masks.params, masks.macs, masks.size_bytes) == (dense.params, dense.macs, dense.size_bytes)
    assert channels.macs < 0.35 * dense.macs
    assert all(r.latency_ci[0] <= r.latency_ratio <= r.latency_ci[1] for r in report.rows)
    assert all(r.eager_ratio > 0 and r.eager_latency_ms > 0 for r in report.rows)
    assert 0.0 <= masks.proxy_accuracy <= 1.0
    assert all(math.isnan(r.predicted_ratio) for r in report.rows)  # the eager lookup table does not model a serving runtime
    table, notes = estimate_table(report)
    assert [c.header for c in table.columns] == ["pruning", "nonzero params", "MACs", "size", "ms onnxruntime", "speed [95% CI]",
                                                 "eager", "proxy acc"]
    assert list(table.columns[0].cells) == [r.label for r in report.rows]
    assert notes.startswith(f"backend: {dense.backend}\n")


@pytest.mark.parametrize("importance", [n for n in IMPORTANCES.names() if needs_data(make_importance(n))])
def test_estimate_prunes_with_a_criterion_that_needs_calibration_batches_as_the_search_does(importance, cache, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(cache))
    report = estimate_uniform(None, "0.5", model="resnet20", data="digits", progress=False,
                              overrides=[f"pruning.importance={importance}", "latency.threads=1", "latency.rounds=3"])
    dense, channels, _masks = report.rows
    assert channels.params < dense.params and 0.0 <= channels.proxy_accuracy <= 1.0


@pytest.mark.timing
def test_masks_are_not_faster_on_onnxruntime_and_half_the_channels_are(estimated):
    """A wall-clock claim (deselected by default: ``-m timing`` runs it); generous margins, the machine is shared."""
    _, channels, masks = estimated.rows
    assert masks.latency_ratio > 0.8
    assert channels.latency_ratio < masks.latency_ratio


def test_estimate_with_an_unknown_backend_is_a_one_line_error_naming_the_field(capsys):
    code, _, err = cli(capsys, "estimate", "--model", "mlp", "--data", "digits", "--backend", "nosuch")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("autoprune: error: ")
    assert "latency.backend" in err and "'nosuch'" in err and "'torch', 'onnxruntime', 'openvino'" in err


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory, trained_resnet20, digits) -> Path:
    """The trained ResNet-20 with every unit at half its channels, saved as a pruned-model file."""
    graph = PrunableGraph(trained_resnet20, digits.example_input(1))
    pruned = apply_policy(trained_resnet20, Policy.uniform(graph.unit_names, 0.5), graph=graph)
    return save_pruned(tmp_path_factory.mktemp("pruned") / "p.pt", pruned, model_name="resnet20", in_channels=digits.in_channels,
                       num_classes=digits.num_classes, input_size=digits.input_size)


def test_evaluate_with_an_unknown_backend_is_a_one_line_error_naming_the_field(capsys, pruned_file):
    code, _, err = cli(capsys, "evaluate", str(pruned_file), "--data", "digits", "--threads", "1", "--backend", "nosuch")
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "latency.backend" in err and "'nosuch'" in err and "'onnxruntime'" in err


@pytest.fixture(scope="module")
def evaluated(cache, pruned_file):
    """``autoprune evaluate`` of the half-channel ResNet-20 on ONNX Runtime at batch 32, one thread."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOPRUNE_CACHE", str(cache))
        return evaluate_file(str(pruned_file), data="digits", threads=1, batch_size=32, backend="onnxruntime", progress=False)


def test_evaluate_shows_serving_and_eager_latency_and_the_total_speedup(evaluated, pruned_file):
    r = evaluated
    d, p = r.dense, r.pruned
    rows = {row.label: row for row in final_rows(d, p)}
    serving, eager = rows["latency ms on onnxruntime [95% CI]"], rows["latency ms on torch eager"]
    assert (serving.dense, serving.other, serving.ci, serving.change) == (d.latency_ms, p.latency_ms, p.latency_ci_ms, d.latency_ms / p.latency_ms)
    assert (eager.dense, eager.other, eager.change) == (d.eager_latency_ms, p.eager_latency_ms, d.eager_latency_ms / p.eager_latency_ms)
    assert p.latency_ci_ms[0] <= p.latency_ms <= p.latency_ci_ms[1]
    # the total goes from the dense eager model to the pruned model on the serving runtime
    report = r.report
    assert (report["dense_eager_latency_ms"], report["deployed_latency_ms"]) == (d.eager_latency_ms, p.latency_ms)
    assert report["total_speedup"] == d.eager_latency_ms / p.latency_ms
    assert report["deployed_artifact"] == f"{pruned_file} on onnxruntime"
    assert report["backend_settings"]["backend"] == "onnxruntime" and report["backend_settings"]["threads"] == 1
    assert deployment_lines(report)[-1].startswith(f"total: dense eager PyTorch {d.eager_latency_ms:.3f} ms -> deployed ")


@pytest.mark.timing
def test_half_the_channels_on_every_unit_is_faster_on_onnxruntime(evaluated):
    """A wall-clock claim (deselected by default: ``-m timing`` runs it); the benchmarks measure the speed-up."""
    assert evaluated.report["speedup"] > 1.2
