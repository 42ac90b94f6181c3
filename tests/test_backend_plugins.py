"""A latency backend named as ``"module:Class"`` works through estimate, search, run and evaluate, with no edit elsewhere.

The plug-ins (``tests/plugins_for_tests.py``) are real and count what they prepared: an eager one
(a :class:`~autoprune.measure.backends.TorchEagerBackend` subclass) and a serving one (ONNX Runtime
under another name). Nothing outside their own file names them; everything the pipeline decides
about a backend (the lookup table, the eager reference beside it, the exported artifact, where int8
is timed) follows from the attributes they inherit.
"""

from __future__ import annotations

import json
import math

import plugins_for_tests
import pytest

from autoprune.app.commands import estimate_uniform, run_command
from autoprune.app.model_files import evaluate_file
from autoprune.app.tables import final_rows
from autoprune.config.loading import load_config
from autoprune.config.settings import latency_settings
from autoprune.measure.compare import int8_timing_backend

PLUGINS = {
    "eager": ("plugins_for_tests:CountingEagerBackend", plugins_for_tests.CountingEagerBackend),
    "serving": ("plugins_for_tests:CountingOnnxRuntimeBackend", plugins_for_tests.CountingOnnxRuntimeBackend),
}


@pytest.mark.parametrize("kind", list(PLUGINS))
def test_a_module_class_backend_runs_estimate_search_run_and_evaluate(kind, tmp_path, monkeypatch):
    ref, cls = PLUGINS[kind]
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "exp.yaml"
    config.write_text(json.dumps({
        "name": "plugged", "output_dir": str(tmp_path / "out"), "seed": 0,
        "model": {"name": "mlp"}, "data": {"name": "digits"},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "augment": False},
        "budget": {"metric": "macs", "target": 0.6},
        "latency": {"threads": 1, "rounds": 3, "backend": ref},
        "proxy": {"bn_batches": 1, "val_samples": 100},
        "search": {"searcher": "optuna", "episodes": 3},
        "finetune": {"epochs": 0},
        "export": {"quantize": cls.runs_int8, "int8_tolerance": 100.0},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "register": False},
    }))

    start = cls.prepared
    estimated = estimate_uniform(str(config), "0.5", progress=False)
    assert [r.kind for r in estimated.rows] == ["dense", "channels", "masks"]
    assert all(r.backend.startswith(f"{cls.name}(") for r in estimated.rows)
    assert [math.isnan(r.predicted_ratio) for r in estimated.rows] == [not cls.eager] * 3  # the eager table only where it applies
    assert cls.prepared >= start + 4  # the dense reference and the three variants were prepared on it

    before_run = cls.prepared
    res = run_command(str(config), progress=False)
    latency = res.search.evaluator.latency_model
    assert cls.prepared > before_run
    assert latency.table_info["kind"] == ("eager micro-benchmarks" if cls.eager else "fitted")
    assert latency.backend_settings["backend"] == cls.name == res.report["backend_settings"]["backend"]
    assert {e.metrics.backend.split("(")[0] for e in res.search.result.history} == {cls.name}
    policy = json.loads(res.search.policy_path.read_text())
    assert (policy["backend"]["name"], policy["backend"]["settings"]["backend"]) == (ref, cls.name)
    assert (res.onnx is not None) is (cls.artifact == "onnx")  # the artifact it serves is exported
    assert ("int8_decision" in res.report) is cls.runs_int8
    assert int8_timing_backend(latency_settings(load_config(config)))[0] == (ref if cls.runs_int8 else "onnxruntime")
    labels = [r.label for r in final_rows(res.dense, res.pruned, res.report)]
    assert (f"latency ms on {ref} [95% CI]" in labels, "latency ms on torch eager" in labels) == (True, not cls.eager)
    assert res.report["eager_speedup"] == res.dense.eager_latency_ms / res.pruned.eager_latency_ms

    before_evaluate = cls.prepared
    evaluated = evaluate_file(str(res.model_path), data="digits", threads=1, backend=ref, progress=False)
    assert cls.prepared >= before_evaluate + 2  # dense and pruned, prepared on the plug-in
    assert evaluated.report["backend_settings"]["backend"] == cls.name
    assert evaluated.report["deployed_artifact"] == f"{res.model_path} on {ref}"
