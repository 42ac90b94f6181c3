"""Specification of autoprune.measure.latency and autoprune.measure.table.

The machine running the tests may be busy, so no test here bounds a measured time or ratio:
real models are timed to check what a measurement reports (rounds, intervals, positive
times), and the timer's arithmetic is checked exactly on a virtual clock
(:class:`helpers.VirtualClock`). How accurate the measurements are is benchmarked
(``experiments/bench/measure.py``), not tested.
"""

from __future__ import annotations

import json
import weakref
from typing import ClassVar

import pytest
import torch
from helpers import VirtualClock
from torch import nn

from autoprune.errors import ConfigError
from autoprune.graph.layers import record_layer_specs
from autoprune.measure import compare
from autoprune.measure.backends import BACKENDS, LatencyBackend, TorchEagerBackend, backend_class, get_backend, register_backend
from autoprune.measure.latency import (
    CLOCKS,
    LatencyStats,
    PairedTimer,
    count_macs_params,
    fixed_threads,
    measure_latency,
    measure_latency_ratio,
    model_size_bytes,
)
from autoprune.measure.schedule import PairedSchedule
from autoprune.measure.settings import LatencySettings
from autoprune.measure.table import LatencyTable
from autoprune.zoo import build_model
from autoprune.zoo.models import CifarResNet

THREADS = 1


def conv_net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


@pytest.fixture(scope="module")
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", in_channels=1, num_classes=10, input_size=28)


@pytest.fixture(scope="module")
def mnist_batch() -> torch.Tensor:
    return torch.randn(1, 1, 28, 28)


def test_latency_stats_are_positive_and_ordered() -> None:
    stats = measure_latency(conv_net(16), torch.randn(2, 3, 16, 16), warmup=2, repeats=15, threads=THREADS)
    assert stats.n == 15
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.mean_ms > 0 and stats.std_ms >= 0
    assert stats.cv == pytest.approx(stats.std_ms / stats.mean_ms)


def test_latency_stats_summarise_known_samples() -> None:
    stats = LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats.median_ms == 3.0 and stats.mean_ms == 3.0 and stats.n == 5
    assert stats.p10_ms == pytest.approx(1.4) and stats.p90_ms == pytest.approx(4.6)


def test_fixed_threads_restores_previous_count() -> None:
    before = torch.get_num_threads()
    with fixed_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    """The paired timer's wall clock, replaced by a virtual one: runners it makes take exactly their cost."""
    virtual = VirtualClock()
    monkeypatch.setitem(CLOCKS, "wall", virtual)
    return virtual


def test_a_real_model_timed_against_itself_reports_its_rounds_and_an_interval_around_the_ratio(
    resnet20: nn.Module, mnist_batch: torch.Tensor
) -> None:
    stats = measure_latency_ratio(resnet20, resnet20, mnist_batch, threads=THREADS, schedule=PairedSchedule(warmup=3, rounds=11))
    assert stats.rounds == 11
    assert 0 < stats.ci_low <= stats.ratio <= stats.ci_high
    assert stats.ref_median_ms > 0 and stats.cand_median_ms > 0


def test_equal_costs_give_a_ratio_of_exactly_one(clock: VirtualClock, mnist_batch: torch.Tensor) -> None:
    # each call is timed once, against its pair: timing a model twice would give 2 or 0.5
    stats = measure_latency_ratio(clock.runner(2.0), clock.runner(2.0), mnist_batch, threads=THREADS, schedule=PairedSchedule(warmup=3, rounds=11))
    assert (stats.ratio, stats.ci_low, stats.ci_high, stats.cv) == (1.0, 1.0, 1.0, 0.0)
    assert stats.rounds == 11 and stats.ref_median_ms == stats.cand_median_ms == 2.0


def test_a_candidate_twice_as_slow_has_a_ratio_of_two_and_the_first_model_alternates(clock: VirtualClock) -> None:
    timer = PairedTimer(clock.runner(1.0, "ref"), torch.zeros(1), threads=THREADS)
    stats = timer.ratio(clock.runner(2.0, "cand"), PairedSchedule(warmup=2, rounds=7, calls_per_round=2))
    assert (stats.ratio, stats.ci_low, stats.ci_high) == (2.0, 2.0, 2.0)
    assert stats.ref_median_ms == 1.0 and stats.cand_median_ms == 2.0
    warmup, timed = clock.calls[:4], clock.calls[4:]
    assert warmup == ["ref", "cand"] * 2 and len(timed) == 7 * 2 * 2
    assert timed[:4] == ["ref", "cand"] * 2 and timed[4:8] == ["cand", "ref"] * 2  # order effects cancel


def test_a_disturbed_call_does_not_move_the_min_statistic(clock: VirtualClock) -> None:
    # every other reference call is slowed down 5x (noise only ever adds time): each round still has a clean one
    timer = PairedTimer(clock.runner([1.0, 5.0]), torch.zeros(1), threads=THREADS)
    assert timer.ratio(clock.runner(2.0), PairedSchedule(warmup=2, rounds=5, calls_per_round=2)).ratio == 2.0
    assert timer.ratio(clock.runner(2.0), PairedSchedule(warmup=2, rounds=5, calls_per_round=2, statistic="median")).ratio == pytest.approx(2.0 / 3.0)


def test_a_prepared_candidate_is_timed_without_preparing_it_again(
    resnet20: nn.Module, mnist_batch: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    timer = PairedTimer(resnet20, mnist_batch, threads=THREADS)
    candidate = timer.prepare(CifarResNet(20, 1, 10, width=8))
    monkeypatch.setattr(timer.backend, "prepare", lambda *args, **kwargs: pytest.fail("the candidate was prepared again"))
    first = timer.ratio(candidate, PairedSchedule(warmup=1, rounds=5))
    second = timer.ratio(candidate, PairedSchedule(warmup=1, rounds=5))
    assert first.rounds == second.rounds == 5 and first.ratio > 0 and second.ratio > 0
    assert timer.reference_ms() > 0


def test_early_stopping_stops_between_min_and_max_rounds(resnet20: nn.Module, mnist_batch: torch.Tensor) -> None:
    timer = PairedTimer(resnet20, mnist_batch, threads=THREADS)
    loose = timer.ratio(resnet20, PairedSchedule(warmup=1, min_rounds=4, max_rounds=12, rel_ci=10.0))
    assert loose.rounds == 4
    strict = timer.ratio(resnet20, PairedSchedule(warmup=1, min_rounds=4, max_rounds=7, rel_ci=1e-12))
    assert strict.rounds == 7


def test_time_budget_stops_after_min_rounds(resnet20: nn.Module, mnist_batch: torch.Tensor) -> None:
    timer = PairedTimer(resnet20, mnist_batch, threads=THREADS)
    stats = timer.ratio(resnet20, PairedSchedule(warmup=0, rounds=50, min_rounds=3, time_budget_s=1e-9))
    assert stats.rounds == 3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rounds": 0}, "rounds: expected an integer >= 1, got 0"),
    ({"warmup": -1}, "warmup: expected an integer >= 0, got -1"),
    ({"calls_per_round": 0}, "calls_per_round: expected an integer >= 1, got 0"),
    ({"min_rounds": 5, "max_rounds": 3}, "max_rounds: expected an integer >= 5, got 3"),
    ({"rel_ci": -0.1}, "rel_ci: expected a positive fraction such as 0.03 or None, got -0.1"),
    ({"time_budget_s": 0}, "time_budget_s: expected a positive number of seconds or None, got 0"),
])
def test_an_invalid_schedule_is_refused_when_made_naming_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        PairedSchedule(**kwargs)
    assert str(e.value) == message


def test_a_schedule_leaves_how_calls_interleave_to_the_backend_unless_it_says() -> None:
    blocks = PairedSchedule(interleave="blocks", calls_per_round=10)
    assert PairedSchedule(rounds=7).on(blocks) == PairedSchedule(rounds=7, interleave="blocks", calls_per_round=10)
    assert PairedSchedule(interleave="calls", calls_per_round=2).on(blocks) == PairedSchedule(interleave="calls", calls_per_round=2)
    assert PairedSchedule(rounds=9).limit == 9
    assert PairedSchedule(rounds=9, min_rounds=12, rel_ci=0.1).limit == 12
    assert PairedSchedule(rounds=9, max_rounds=20, rel_ci=0.1).limit == 20


def test_unknown_backend_raises_config_error_naming_value() -> None:
    assert get_backend("torch").name == "torch"
    with pytest.raises(ConfigError, match=r"'tensorrt'.*allowed: 'torch', 'onnxruntime', 'openvino' or 'package.module:Class'"):
        get_backend("tensorrt")
    with pytest.raises(ConfigError, match="tensorrt"):
        measure_latency(conv_net(4), torch.randn(1, 3, 8, 8), backend="tensorrt")


def test_a_backend_says_what_it_can_do_by_attributes_with_defaults_on_the_base_class() -> None:
    class Minimal(LatencyBackend):
        def prepare(self, model, example_input):
            return lambda: model(example_input)

    plain = Minimal()
    assert (Minimal.name, Minimal.eager, Minimal.artifact, Minimal.runs_int8, Minimal.channel_multiple()) == ("Minimal", False, None, False, None)
    assert Minimal.paired_schedule == PairedSchedule(interleave="calls", calls_per_round=3)
    assert plain.settings() == {"backend": "Minimal"} and not plain.runs_on_calling_thread
    with pytest.raises(ConfigError, match=r"^latency.backend: 'Minimal' cannot time ONNX files; allowed: onnxruntime, openvino$"):
        plain.prepare_file("m.onnx", torch.randn(1, 3))
    torch_cls, ort_cls, ov_cls = (backend_class(n) for n in ("torch", "onnxruntime", "openvino"))
    assert [c.eager for c in (torch_cls, ort_cls, ov_cls)] == [True, False, False]
    assert [c.artifact for c in (torch_cls, ort_cls, ov_cls)] == [None, "onnx", "onnx"]
    assert [c.runs_int8 for c in (torch_cls, ort_cls, ov_cls)] == [False, True, True]
    assert ort_cls.paired_schedule == ov_cls.paired_schedule == PairedSchedule(interleave="blocks", calls_per_round=10)
    assert torch_cls.channel_multiple() is None and ort_cls.channel_multiple() in (8, 16)


def test_a_module_class_that_is_not_a_latency_backend_is_refused_in_one_line() -> None:
    message = ("latency.backend: 'plugins_for_tests:HalfEverywhereSearcher' is <class 'plugins_for_tests.HalfEverywhereSearcher'>, "
               "not a subclass of autoprune.measure.backends.LatencyBackend")
    for ask in (get_backend, backend_class):
        with pytest.raises(ConfigError) as e:
            ask("plugins_for_tests:HalfEverywhereSearcher")
        assert str(e.value) == message


def test_halving_conv_out_channels_reduces_macs_and_params_are_numel_sum() -> None:
    x = torch.randn(1, 3, 16, 16)
    wide, narrow = conv_net(16), conv_net(8)
    wide_macs, wide_params = count_macs_params(wide, x)
    narrow_macs, narrow_params = count_macs_params(narrow, x)
    assert narrow_macs < wide_macs
    assert wide_params == sum(p.numel() for p in wide.parameters())
    assert narrow_params == sum(p.numel() for p in narrow.parameters())


def test_model_size_counts_float_weights() -> None:
    model = conv_net(16)
    floats = sum(t.numel() for t in model.state_dict().values())
    assert 4 * floats <= model_size_bytes(model) <= 4 * floats + 64_000


def test_resnet20_specs_cover_every_conv_and_the_classifier(resnet20: nn.Module) -> None:
    x = torch.randn(3, 1, 28, 28)
    resnet20.train()
    specs = record_layer_specs(resnet20, x)
    assert resnet20.training
    names = dict(resnet20.named_modules())
    assert all(s.module_name in names for s in specs)
    convs = [s for s in specs if s.kind == "conv2d"]
    assert len(convs) == 21
    assert [s.kind for s in specs].count("linear") == 1 and specs[-1].module_name == "fc"
    assert [s.kind for s in specs].count("batchnorm2d") == 21
    assert specs[0].module_name == "conv1" and specs[0].input_shape == (3, 1, 28, 28)
    shortcut = next(s for s in specs if s.module_name == "layer2.0.shortcut.0")
    assert (shortcut.in_channels, shortcut.out_channels, shortcut.kernel_size, shortcut.stride) == (16, 32, (1, 1), (2, 2))
    assert shortcut.input_shape == (3, 16, 28, 28)
    assert specs[-1].input_shape == (3, 64) and specs[-1].bias


def test_specs_of_leaf_modules_record_their_parameters() -> None:
    specs = record_layer_specs(conv_net(8), torch.randn(2, 3, 16, 16))
    assert [s.kind for s in specs] == ["conv2d", "relu", "conv2d", "relu", "adaptiveavgpool2d", "flatten", "linear"]
    assert specs[2].padding == (1, 1) and specs[2].bias
    assert specs[4].kernel_size == (1, 1)
    assert specs[5].input_shape == (2, 8, 1, 1)
    mlp = build_model("mlp", in_channels=1, num_classes=10, input_size=8)
    kinds = [s.kind for s in record_layer_specs(mlp, torch.randn(1, 1, 8, 8))]
    assert kinds[:4] == ["flatten", "linear", "batchnorm1d", "relu"]


def _halved(specs: list) -> list:
    return [s.with_channels(max(1, s.in_channels // 2), max(1, s.out_channels // 2)) for s in specs]


def test_latency_table_predicts_dense_and_ranks_narrower_model_lower(resnet20: nn.Module, mnist_batch: torch.Tensor) -> None:
    narrow = CifarResNet(20, 1, 10, width=8)
    table = LatencyTable.calibrated_for([resnet20, narrow], mnist_batch, threads=THREADS, rounds=7)
    dense_specs = record_layer_specs(resnet20, mnist_batch)
    assert table.predict_ms(dense_specs) > 0  # absolute accuracy is benchmarked, not tested (noisy machines)
    assert table.predict_ratio(dense_specs, dense_specs) == pytest.approx(1.0)
    assert table.predict_ratio(_halved(dense_specs), dense_specs) < 1


def test_latency_table_fit_with_one_sample_matches_it_exactly(resnet20: nn.Module, mnist_batch: torch.Tensor) -> None:
    table = LatencyTable(threads=THREADS)
    specs = record_layer_specs(resnet20, mnist_batch)
    offset, scale = table.fit([(specs, 5.0)])
    assert offset == 0 and scale > 0
    assert table.predict_ms(specs) == pytest.approx(5.0)
    assert len(table) == len({s.key() for s in specs})


def test_latency_table_affine_fit_recovers_offset_and_scale(resnet20: nn.Module, mnist_batch: torch.Tensor) -> None:
    table = LatencyTable(threads=THREADS)
    dense = record_layer_specs(resnet20, mnist_batch)
    half = _halved(dense)
    offset, scale = table.fit([(dense, 0.3 + 2 * table.raw_ms(dense)), (half, 0.3 + 2 * table.raw_ms(half))])
    assert offset == pytest.approx(0.3) and scale == pytest.approx(2.0)


def test_latency_table_save_load_round_trip(tmp_path, resnet20: nn.Module, mnist_batch: torch.Tensor) -> None:
    table = LatencyTable(threads=THREADS)
    specs = record_layer_specs(resnet20, mnist_batch)
    table.fit([(specs, 4.0), (_halved(specs), 1.5)])
    path = tmp_path / "table.json"
    table.save(path)
    loaded = LatencyTable.load(path)
    assert loaded.entries == table.entries
    assert (loaded.offset_ms, loaded.scale, loaded.threads, loaded.passes) == (table.offset_ms, table.scale, table.threads, table.passes)
    assert loaded.predict_ms(specs) == pytest.approx(table.predict_ms(specs))
    assert len(loaded) == len(table)


def test_latency_table_rejects_bad_input(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ConfigError, match="bad.json"):
        LatencyTable.load(path)
    with pytest.raises(ConfigError, match="samples"):
        LatencyTable().fit([])
    with pytest.raises(ConfigError, match="repeats"):
        LatencyTable(repeats=0)


class _ServingLike(LatencyBackend):
    """A non-eager backend (runs torch underneath) that keeps weak references to the runners it made."""

    name = "serving-like"
    made: ClassVar[list] = []

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or 1

    def prepare(self, model, example_input):
        model.eval()

        def run() -> None:
            with torch.inference_mode():
                model(example_input)

        type(self).made.append(weakref.ref(run))
        return run


def test_compare_to_dense_times_eager_only_after_the_serving_runners_are_gone(monkeypatch) -> None:
    _ServingLike.made.clear()
    seen_alive = []

    class Watching(TorchEagerBackend):
        def prepare(self, model, example_input):
            seen_alive.append(sum(r() is not None for r in _ServingLike.made))
            return super().prepare(model, example_input)

    monkeypatch.setattr(compare, "TorchEagerBackend", Watching)
    register_backend("serving-like", _ServingLike)
    try:
        x = torch.randn(2, 3, 8, 8)
        found = compare.compare_to_dense([conv_net(4), conv_net(8)], conv_net(8), x, LatencySettings(backend="serving-like", threads=1), rounds=2)
    finally:
        BACKENDS.unregister("serving-like")
    assert len(_ServingLike.made) == 3 and seen_alive == [0, 0, 0]  # dense + 2 candidates served; none alive while eager prepares
    assert found[0].serving is not found[0].eager
    assert found[0].serving_dense_ms == found[1].serving_dense_ms  # one dense figure per runtime, so ms compare as ratios do
    assert found[0].serving_ms == found[0].serving.ratio * found[0].serving_dense_ms
    assert found[0].settings == {"backend": "serving-like", "threads": 1}


def test_on_an_eager_backend_the_serving_figures_are_the_eager_ones() -> None:
    (found,) = compare.compare_to_dense([conv_net(4)], conv_net(8), torch.randn(2, 3, 8, 8), LatencySettings(threads=1), rounds=2)
    assert found.eager is found.serving and found.eager_dense_ms == found.serving_dense_ms == found.serving.ref_median_ms
    assert found.serving.rounds == 2 and found.settings["backend"] == "torch"
