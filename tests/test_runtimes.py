"""Specification of the serving-runtime latency backends (ONNX Runtime, OpenVINO).

Behaviour only, never timings: sessions are configured as asked, the settings are
recorded, the runners run the model, and bad options or missing extras raise one-line
ConfigErrors naming the field or the extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.formats.onnx import export_model
from autoprune.measure.backends import get_backend
from autoprune.measure.latency import PairedTimer
from autoprune.measure.schedule import PairedSchedule

ort = pytest.importorskip("onnxruntime")


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


X = torch.randn(2, 1, 8, 8)
#: In this process the tests use per-session pools: ONNX Runtime's shared pool is permanent and would
#: make every later plain InferenceSession of the test process fail (it is tested in a subprocess).
PER_SESSION = "per-session"


_POOL_LIFECYCLE = """
import json
import onnxruntime as ort
from autoprune.errors import ConfigError
from autoprune.formats.onnx import export_model
from autoprune.measure.backends import get_backend
out = {}
per = get_backend("onnxruntime", threads=1, graph_optimization="extended", thread_pool="per-session", spinning=False)
opts = per.session_options()
out["per_session"] = [per.settings()["thread_pool"], opts.intra_op_num_threads, opts.get_session_config_entry("session.intra_op.allow_spinning"),
                      opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, opts.use_per_session_threads]
spin = get_backend("onnxruntime", threads=1, thread_pool="per-session").session_options()
out["spinning_entry"] = spin.get_session_config_entry("session.intra_op.allow_spinning")
shared = get_backend("onnxruntime", threads=1, thread_pool="shared")
out["shared"] = [shared.settings()["thread_pool"], shared.session_options().use_per_session_threads]
from autoprune.formats.onnx import export_model, ort_session
import torch
net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
export_model(net, (torch.randn(1, 1, 5, 5),), "m.onnx", None)
shared.prepare_file("m.onnx", torch.randn(1, 1, 5, 5))()
ort_session(ort, "m.onnx", 2).run(None, {"input": torch.randn(1, 1, 5, 5).numpy()})  # autoprune's own sessions follow the pool
out["shared_runs"] = True
out["other_size"] = get_backend("onnxruntime", threads=3, thread_pool="shared").settings()["threads"]
try:
    get_backend("onnxruntime", threads=1, thread_pool="per-session")
    out["per_session_after_shared"] = "created"
except ConfigError as e:
    out["per_session_after_shared"] = str(e)
print(json.dumps(out))
"""


def test_onnxruntime_thread_pools_per_session_then_shared_once_per_process(tmp_path) -> None:
    """ONNX Runtime's shared pool is process-wide and permanent, so this runs in a fresh interpreter."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", _POOL_LIFECYCLE], check=False, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["per_session"] == ["per-session", 1, "0", True, True]
    assert out["spinning_entry"] == "1"
    assert out["shared"] == ["shared", False] and out["shared_runs"]
    assert out["other_size"] == 1  # the pool keeps its first size; the backend records the real one
    assert "'per-session' is impossible in this process" in out["per_session_after_shared"]


def test_onnxruntime_defaults_to_per_session_pools_so_other_sessions_still_open() -> None:
    """ONNX Runtime's shared pool would break any later plain session (its static quantiser's too)."""
    assert get_backend("onnxruntime", threads=1).settings()["thread_pool"] == PER_SESSION


def test_onnxruntime_settings_record_threads_spinning_optimisation_and_version() -> None:
    backend = get_backend("onnxruntime", threads=1, graph_optimization="basic", thread_pool=PER_SESSION)
    settings = backend.settings()
    assert settings["backend"] == "onnxruntime"
    assert settings["version"] == ort.__version__
    assert (settings["threads"], settings["spinning"], settings["graph_optimization"], settings["thread_pool"]) == (1, True, "basic", PER_SESSION)
    assert backend.session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def test_onnxruntime_runner_computes_the_model_on_a_configured_session(tmp_path) -> None:
    model = small_net()
    backend = get_backend("onnxruntime", threads=1, thread_pool=PER_SESSION)
    run = backend.prepare(model, X)
    run()
    path = tmp_path / "m.onnx"
    export_model(model, (X,), path, None)
    got = backend.session(path).run(None, {"input": X.numpy()})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(got, model(X).numpy(), atol=1e-4)


def test_paired_timer_passes_threads_and_options_to_the_backend_and_reports_them() -> None:
    timer = PairedTimer(small_net(), X, backend="onnxruntime", threads=1, backend_options={"graph_optimization": "basic", "thread_pool": PER_SESSION})
    settings = timer.settings()
    assert settings["backend"] == "onnxruntime" and settings["threads"] == 1 and settings["graph_optimization"] == "basic"
    stats = timer.ratio(small_net(), PairedSchedule(warmup=1, rounds=3, min_rounds=1, interleave="blocks", statistic="median"))
    assert stats.rounds == 3 and stats.ratio > 0


def test_serving_runtimes_are_timed_in_blocks_by_default_and_eager_in_single_calls() -> None:
    ort_timer = PairedTimer(small_net(), X, backend="onnxruntime", threads=1, backend_options={"thread_pool": PER_SESSION})
    calls = []
    cand = ort_timer.prepare(small_net())

    def counted() -> None:
        calls.append(1)
        cand()

    ort_timer.ratio(counted, PairedSchedule(warmup=0, rounds=2, min_rounds=1))
    assert len(calls) == 2 * (1 + 10)  # per round: one untimed call, then a block of 10
    calls.clear()
    PairedTimer(small_net(), X, threads=1).ratio(counted, PairedSchedule(warmup=0, rounds=2, min_rounds=1))
    assert len(calls) == 2 * 3


def test_torch_backend_records_its_threads() -> None:
    assert PairedTimer(small_net(), X, threads=1).settings() == {"backend": "torch", "version": torch.__version__, "threads": 1, "mode": "eager, inference_mode"}


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("onnxruntime", {"graph_optimization": "max"}, "graph_optimization"),
        ("onnxruntime", {"thread_pool": "global"}, "thread_pool"),
        ("onnxruntime", {"spinning": "yes"}, "spinning"),
        ("onnxruntime", {"spinning": False, "thread_pool": "shared"}, "spinning"),
        ("onnxruntime", {"precision": "f16"}, "no option 'precision'; allowed: spinning, graph_optimization, thread_pool"),
        ("torch", {"spinning": True}, "no option 'spinning'"),
    ],
)
def test_bad_backend_options_raise_config_error_naming_the_option(name: str, options: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        get_backend(name, threads=1, **options)


def test_bad_paired_schedule_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="^interleave: expected 'calls' or 'blocks', got 'random'$"):
        PairedSchedule(interleave="random")
    with pytest.raises(ConfigError, match="^statistic: expected one of min, median, got 'mean'$"):
        PairedSchedule(statistic="mean")


def test_thread_clock_is_allowed_only_when_the_inference_runs_on_the_calling_thread() -> None:
    one = PairedTimer(small_net(), X, backend="onnxruntime", threads=1, backend_options={"thread_pool": PER_SESSION})
    assert one.backend.runs_on_calling_thread
    stats = one.ratio(small_net(), PairedSchedule(warmup=1, rounds=3, min_rounds=1, clock="thread"))
    assert stats.rounds == 3 and stats.ratio > 0
    assert PairedTimer(small_net(), X, threads=1).ratio(small_net(), PairedSchedule(rounds=2, min_rounds=1, clock="thread")).rounds == 2
    with pytest.raises(ConfigError, match="clock: 'thread' needs the whole inference on the calling thread"):
        PairedTimer(small_net(), X, threads=2).ratio(small_net(), PairedSchedule(clock="thread"))
    with pytest.raises(ConfigError, match="clock: expected one of wall, thread, process"):
        PairedSchedule(clock="cycles")


def test_missing_openvino_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail as if not installed
    with pytest.raises(ConfigError, match=r"latency.backend 'openvino'.*pip install 'autoprune\[openvino\]'"):
        get_backend("openvino")


def test_missing_onnx_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install 'autoprune\[onnx\]'"):
        get_backend("onnxruntime")


class TestOpenVino:
    @pytest.fixture(autouse=True)
    def _needs_openvino(self) -> None:
        pytest.importorskip("openvino")

    def test_settings_record_hint_threads_precision_and_version(self) -> None:
        import openvino

        settings = get_backend("openvino", threads=1, performance_hint="throughput").settings()
        assert settings == {
            "backend": "openvino", "version": openvino.__version__, "device": "CPU", "threads": 1,
            "performance_hint": "THROUGHPUT", "precision": "f32",
        }

    def test_compiled_model_carries_the_settings_and_runner_runs(self, tmp_path) -> None:
        model = small_net()
        backend = get_backend("openvino", threads=1)
        path = tmp_path / "m.onnx"
        export_model(model, (X,), path, None)
        compiled = backend.compile(path, [tuple(X.shape)])
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert str(compiled.get_property("PERFORMANCE_HINT")) in ("LATENCY", "PerformanceMode.LATENCY")
        got = compiled.create_infer_request().infer({0: X.numpy()})[0]
        with torch.inference_mode():
            np.testing.assert_allclose(got, model(X).numpy(), atol=1e-4)
        backend.prepare(model, X)()

    def test_openvino_computes_off_the_calling_thread_so_thread_clock_is_refused(self) -> None:
        timer = PairedTimer(small_net(), X, backend="openvino", threads=1)
        with pytest.raises(ConfigError, match="'openvino'"):
            timer.ratio(small_net(), PairedSchedule(clock="thread"))

    @pytest.mark.parametrize(("options", "field"), [({"performance_hint": "FAST"}, "performance_hint"), ({"precision": "int4"}, "precision")])
    def test_bad_options_raise_config_error(self, options: dict, field: str) -> None:
        with pytest.raises(ConfigError, match=field):
            get_backend("openvino", **options)


def digits_batches(n: int = 4, size: int = 16) -> list[np.ndarray]:
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    return [images[i * size : (i + 1) * size, None] for i in range(n)]


def test_static_int8_is_qdq_calibrated_and_close_to_fp32_and_can_be_timed_against_it(tmp_path) -> None:
    import onnx

    from autoprune.formats.onnx import quantize_onnx
    from autoprune.measure.compare import compare_onnx_files

    model = small_net()
    fp32 = tmp_path / "m.onnx"
    export_model(model, (X,), fp32, None)
    int8 = quantize_onnx(fp32, tmp_path / "m.int8.onnx", calibration=digits_batches())
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    batch = torch.from_numpy(digits_batches(5)[4])
    session = get_backend("onnxruntime", threads=1, thread_pool=PER_SESSION).session(int8)
    got = session.run(None, {"input": batch.numpy()})[0]
    with torch.inference_mode():
        want = model(batch).numpy()
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
    stats = compare_onnx_files(fp32, int8, batch, threads=1, schedule=PairedSchedule(rounds=2, min_rounds=1), backend_options={"thread_pool": PER_SESSION})
    assert stats.rounds == 2 and stats.ratio > 0
    assert not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob(".*prep*"))


def test_a_qdq_int8_file_runs_and_is_timed_on_openvino_too(tmp_path) -> None:
    pytest.importorskip("openvino")
    from autoprune.formats.onnx import quantize_onnx
    from autoprune.measure.compare import compare_onnx_files

    fp32 = tmp_path / "m.onnx"
    export_model(small_net(), (X,), fp32, None)
    int8 = quantize_onnx(fp32, tmp_path / "m.int8.onnx", calibration=digits_batches())
    batch = torch.from_numpy(digits_batches(5)[4])
    stats = compare_onnx_files(fp32, int8, batch, threads=1, schedule=PairedSchedule(rounds=2, min_rounds=1), backend="openvino")
    assert stats.rounds == 2 and stats.ratio > 0 and stats.ref_median_ms > 0
    with pytest.raises(ConfigError, match="cannot time ONNX files; allowed: onnxruntime, openvino"):
        compare_onnx_files(fp32, int8, batch, threads=1, backend="torch")


def test_static_int8_without_calibration_batches_raises_config_error(tmp_path) -> None:
    from autoprune.formats.onnx import quantize_onnx

    fp32 = tmp_path / "m.onnx"
    export_model(small_net(), (X,), fp32, None)
    with pytest.raises(ConfigError, match="calibration: expected at least one input batch"):
        quantize_onnx(fp32, tmp_path / "q.onnx", calibration=[])
    assert not (tmp_path / "q.onnx").exists()
