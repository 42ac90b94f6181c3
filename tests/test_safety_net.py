"""The safety net (:func:`autoprune.graph.safety.verified_graph`): every unit checked before anything is pruned.

Fault injection (``tests/fault_plugins.py``): a unit whose surgery is silently wrong, one whose
pruned forward raises, one whose MACs the budget would mispredict, and a serving runtime that
refuses one unit's pruned widths. Each is left dense with one warning line naming it and why, the
other units stay offered, no exception escapes, and the network any policy builds from what is
left equals the masked dense model (it is never silently different).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import fault_plugins as fp
import pytest
import torch

from autoprune.errors import ModelError
from autoprune.graph.check import TOLERANCE, masked_reference
from autoprune.graph.policy import Policy
from autoprune.graph.safety import verified_graph
from autoprune.graph.surgery import apply_policy, pruning_history

X = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))

#: plug-in -> (the broken unit, the check that catches it, words of its reason, export check)
FAULTS = {
    "corrupting": (fp.build_corrupting, "stem.0", "surgery", "differs from the masked dense model", None),
    "raising": (fp.build_raising, "stem.0", "surgery", "expected 16 channels, got", None),
    "mispredicted": (fp.build_mispredicted, "b.0", "macs", "MACs are mispredicted", None),
    "runtime_refuses": (fp.build_mixed, "b.0", "export", "does not export to the serving runtime", fp.MultipleOfEightRuntime()),
}


def build(factory) -> torch.nn.Module:
    torch.manual_seed(0)
    return factory().eval()


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_unit_is_left_dense_with_one_warning_and_the_others_stay_offered(fault, caplog):
    factory, unit, check, words, export = FAULTS[fault]
    model = build(factory)
    with caplog.at_level(logging.WARNING):
        graph, report = verified_graph(model, X, export_check=export)
    assert unit not in graph.unit_names and len(graph.unit_names) == 2
    assert report.exact == graph.unit_names
    assert report.failed[check].keys() == {unit} and words in report.failed[check][unit]
    assert words in report.left_dense[unit] and "\n" not in report.left_dense[unit]
    lines = [r.getMessage() for r in caplog.records if f"unit {unit!r}" in r.getMessage()]
    assert len(lines) == 1 and words in lines[0]


@pytest.mark.parametrize("fault", FAULTS)
def test_whatever_policy_is_applied_to_what_is_left_the_network_equals_the_masked_dense_model(fault):
    factory, _, _, _, export = FAULTS[fault]
    model = build(factory)
    graph, _ = verified_graph(model, X, export_check=export)
    for ratio in (0.25, 0.5, 0.75):
        pruned = apply_policy(model, Policy.uniform(graph.unit_names, ratio), graph=graph)
        by_root = {u.root: u.name for u in graph.units}
        cuts = {by_root[root]: idxs for root, _, idxs in pruning_history(pruned)[-1]["prune"]}
        assert cuts.keys() == set(graph.unit_names)
        x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
        with torch.no_grad():
            diff = (pruned.double()(x) - masked_reference(graph, cuts).double().eval()(x)).abs().max()
        assert float(diff) <= TOLERANCE
        if export is not None and ratio == 0.5:
            export(pruned.float(), X)  # what is left exports at the checked ratio


def test_a_model_with_no_unit_left_is_refused_in_one_line_naming_why():
    model = build(fp.build_raising)
    with pytest.raises(ModelError) as info:  # the two healthy convs' outputs kept: only the broken stem is left
        verified_graph(model, X, ignored=("mid.0", "out.0"), drop_blocks=False)
    message = str(info.value)
    assert message.startswith("the model has nothing to prune: no unit passes the checks (stem.0: ")
    assert "expected 16 channels" in message and "\n" not in message


def test_a_dense_model_the_serving_runtime_refuses_is_refused_in_one_line():
    class NeedsSixtyFour(fp.MultipleOfEightRuntime):
        label, runtime = "needs 64", "the 64-channel runtime"

        def __call__(self, model, example_input):
            raise RuntimeError("this runtime only runs models of 64 channels")

    with pytest.raises(ModelError, match=r"^the dense model does not export to the 64-channel runtime: RuntimeError: this runtime only runs"):
        verified_graph(build(fp.build_mixed), X, export_check=NeedsSixtyFour())


def test_the_checks_run_on_the_untrained_model_and_the_trained_one_reads_their_verdict(tmp_path, caplog):
    untrained = build(fp.build_mispredicted)
    first, report = verified_graph(untrained, X, cache_dir=tmp_path)
    torch.manual_seed(7)
    trained = fp.build_mispredicted().eval()  # other weights, same architecture: the verdict holds
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again, cached = verified_graph(trained, X, cache_dir=tmp_path)
    assert not report.cached and cached.cached
    assert again.unit_names == first.unit_names == ["a.0", "c.0"] and cached.left_dense == report.left_dense
    assert [r.getMessage() for r in caplog.records if "unit 'b.0'" in r.getMessage()] == [f"unit 'b.0' is not pruned: {report.left_dense['b.0']}"]


def test_onnx_runtime_as_the_injected_export_check_passes_every_exact_unit():
    pytest.importorskip("onnxruntime")
    from autoprune.formats.onnx import export_onnx

    def onnx_runtime(model, example_input):
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, example_input, Path(tmp) / "m.onnx")

    onnx_runtime.label = "onnxruntime"
    graph, report = verified_graph(build(fp.build_mixed), X, export_check=onnx_runtime)
    assert report.failed["export"] == {} and graph.unit_names == ["a.0", "b.0", "c.0"]
