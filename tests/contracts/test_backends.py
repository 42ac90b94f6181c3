"""The latency-backend contract: what every registered backend (and a ``module:Class`` one) must do.

* ``prepare`` returns a zero-argument runner that runs, as often as it is called;
* ``settings()`` is a JSON-serialisable mapping that names the backend, and ``threads`` is what it was built with;
* what it declares holds: ``eager`` backends time PyTorch itself (the runner calls the module's
  forward) and the others time their own copy (the runner never does); ``artifact == "onnx"``
  means ``prepare_file`` opens an exported ONNX file, and ``runs_int8`` (tested on the backends
  that declare it) that a QDQ int8 file runs;
  a backend without an artifact refuses ``prepare_file`` with a one-line ConfigError;
  ``channel_multiple()`` is None or a positive int; ``paired_schedule`` is a PairedSchedule;
  a ``thread`` clock is accepted exactly when ``runs_on_calling_thread``;
  ``ratio_options`` of its serving options builds the same backend;
* a paired ratio of a model against itself is positive and inside its own confidence interval.

A backend whose optional runtime is not installed is skipped, naming the extra to install.
No assertion here depends on how fast anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.formats.onnx import export_model, quantize_onnx
from autoprune.measure.backends import BACKENDS, LatencyBackend, backend_class, get_backend
from autoprune.measure.latency import PairedTimer
from autoprune.measure.schedule import PairedSchedule

#: Every registered backend, and the test plug-ins named by reference (an eager one and a serving one).
NAMES = [*BACKENDS.names(), "plugins_for_tests:CountingEagerBackend", "plugins_for_tests:CountingOnnxRuntimeBackend"]
#: Three paired rounds of single calls: enough to check the arithmetic holds, too few to say anything about speed.
SHORT = PairedSchedule(warmup=1, rounds=3, min_rounds=1)


@pytest.fixture(params=NAMES)
def backend(request) -> LatencyBackend:
    """The backend registered as (or referenced by) the parameter, with one thread; skipped when its runtime is missing."""
    try:
        return get_backend(request.param, threads=1)
    except ConfigError as e:
        if "needs the optional extra" in str(e):
            pytest.skip(str(e))
        raise


@pytest.fixture
def model(make_model) -> nn.Module:
    """A fresh digits CNN (convolutions, BatchNorm, a residual add): what the backends must all run."""
    return make_model("resnet20")


class CallCounter:
    """Counts forward calls of a module (a forward hook)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1


def test_prepare_returns_a_runner_that_runs_again_and_again(backend, model, example_input):
    run = backend.prepare(model, example_input)
    assert callable(run)
    for _ in range(3):
        run()


def test_settings_are_json_and_name_the_backend(backend):
    settings = backend.settings()
    assert isinstance(settings, dict)
    assert settings["backend"] == backend.name
    assert json.loads(json.dumps(settings)) == settings  # recorded as-is with every result (MLflow, policy.json)
    assert backend.threads == 1


def test_an_eager_backend_times_pytorch_itself_and_a_serving_one_its_own_copy(backend, model, example_input):
    run = backend.prepare(model, example_input)
    counter = CallCounter(model)
    run()
    run()
    assert counter.calls == (2 if backend.eager else 0)


def test_a_backend_that_serves_onnx_opens_an_exported_file_and_the_others_refuse_one(backend, model, example_input, tmp_path):
    path = tmp_path / "model.onnx"
    if backend.artifact == "onnx":
        export_model(model.eval(), (example_input,), path, None)
        outputs = backend.prepare_file(path, example_input)()
        with torch.inference_mode():
            expected = model(example_input)
        got = next(iter(outputs.values())) if isinstance(outputs, Mapping) else outputs[0]  # OpenVINO: its results mapping
        assert tuple(got.shape) == tuple(expected.shape)
    else:
        assert backend.artifact is None
        with pytest.raises(ConfigError, match=rf"^latency.backend: {backend.name!r} cannot time ONNX files; allowed: \S"):
            backend.prepare_file(path, example_input)


@pytest.mark.parametrize("backend", [n for n in NAMES if backend_class(n).runs_int8], indirect=True)
def test_a_backend_that_runs_int8_runs_a_qdq_int8_file(backend, model, example_input, digits, tmp_path):
    assert backend.artifact == "onnx", "int8 is timed as a QDQ ONNX file, so a backend that runs it opens ONNX files"
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    export_model(model.eval(), (example_input,), fp32, None)
    quantize_onnx(fp32, int8, calibration=[digits.train.x[:16].numpy()])
    run = backend.prepare_file(int8, example_input)
    run()
    run()


def test_the_declared_schedule_channel_multiple_and_clock_are_well_formed(backend, model, example_input):
    assert isinstance(backend.paired_schedule, PairedSchedule)
    multiple = type(backend).channel_multiple()
    assert multiple is None or (isinstance(multiple, int) and not isinstance(multiple, bool) and multiple >= 1)
    assert isinstance(backend.eager, bool) and isinstance(backend.runs_int8, bool)
    timer = PairedTimer(model, example_input, backend=backend, threads=1)
    thread_clock = PairedSchedule(warmup=0, rounds=1, min_rounds=1, clock="thread")
    if backend.runs_on_calling_thread:
        assert timer.ratio(model, thread_clock).rounds == 1
    else:
        with pytest.raises(ConfigError, match=r"^clock: 'thread' needs the whole inference on the calling thread"):
            timer.ratio(model, thread_clock)


def test_a_model_paired_with_itself_gives_a_positive_ratio_inside_its_interval(backend, model, example_input):
    timer = PairedTimer(model, example_input, backend=backend, threads=1)
    assert timer.settings()["backend"] == backend.name
    stats = timer.ratio(timer.prepare(model), SHORT)
    assert stats.rounds == 3
    assert 0 < stats.ci_low <= stats.ratio <= stats.ci_high
    assert stats.ref_median_ms > 0 and stats.cand_median_ms > 0


def test_the_ratio_protocol_builds_the_same_backend(backend):
    cls = type(backend)
    options = cls.ratio_options({})
    assert isinstance(options, dict) and json.loads(json.dumps(options)) == options
    if "thread_pool" in options and options["thread_pool"] == "shared":
        return  # ONNX Runtime's shared pool is permanent for a process: built in a fresh child (tests/test_fresh.py)
    again = get_backend(backend_class(cls.name).name if cls.name in BACKENDS.names() else f"{cls.__module__}:{cls.__qualname__}",
                        threads=1, **options)
    assert type(again) is cls
