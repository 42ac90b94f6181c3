"""What the commands show is built from row objects: the values unrounded, and how each is printed."""

from __future__ import annotations

from autoprune.app.pipeline import ModelReport, not_faster_warning
from autoprune.app.tables import Row, dense_vs_pruned, deployment_lines, final_rows
from autoprune.measure.compare import speed_words

DENSE = ModelReport(test_accuracy=0.9512, latency_ms=0.25, latency_ci_ms=(0.25, 0.25), macs=41_000_000, params=270_000,
                    size_bytes=1_100_000, eager_latency_ms=1.5, backend="onnxruntime")
PRUNED = ModelReport(test_accuracy=0.9401, latency_ms=0.1, latency_ci_ms=(0.09, 0.11), macs=10_250_000, params=67_500,
                     size_bytes=275_000, eager_latency_ms=0.6, backend="onnxruntime")


def test_the_final_rows_hold_the_figures_and_print_them_rounded() -> None:
    rows = final_rows(DENSE, PRUNED)
    assert rows == [
        Row("test accuracy", 0.9512, 0.9401, 100 * (0.9401 - 0.9512), fmt="{:.4f}", change_fmt="{:+.2f} pts"),
        Row("latency ms on onnxruntime [95% CI]", 0.25, 0.1, 0.25 / 0.1, ci=(0.09, 0.11), change_fmt=speed_words),
        Row("latency ms on torch eager", 1.5, 0.6, 1.5 / 0.6, change_fmt=speed_words),
        Row("MACs", 41_000_000, 10_250_000, 4.0, fmt="{:.2f} M", scale=1e6, change_fmt="{:.2f}x fewer"),
        Row("params", 270_000, 67_500, 4.0, fmt="{:,}", change_fmt="{:.2f}x fewer"),
        Row("size", 1_100_000, 275_000, 4.0, fmt="{:.0f} KiB", scale=1024, change_fmt="{:.2f}x smaller"),
    ]
    assert [r.cells() for r in rows] == [
        ("test accuracy", "0.9512", "0.9401", "-1.11 pts"),
        ("latency ms on onnxruntime [95% CI]", "0.250", "0.100 [0.090, 0.110]", "2.50x faster"),
        ("latency ms on torch eager", "1.500", "0.600", "2.50x faster"),
        ("MACs", "41.00 M", "10.25 M", "4.00x fewer"),
        ("params", "270,000", "67,500", "4.00x fewer"),
        ("size", "1074 KiB", "269 KiB", "4.00x smaller"),
    ]
    table = dense_vs_pruned("t", DENSE, PRUNED)
    assert [c.header for c in table.columns] == ["", "dense", "pruned", "change"]
    assert list(table.columns[2].cells) == [r.cells()[2] for r in rows]


def test_a_pruned_model_that_is_not_faster_reads_as_slower_never_as_a_speed_up_below_one() -> None:
    """``0.114 -> 0.115 ms`` is "1.01x slower", not "0.99x faster" (the speedup_wording case)."""
    slow = ModelReport(**{**vars(PRUNED), "latency_ms": 0.115, "latency_ci_ms": (0.114, 0.116), "eager_latency_ms": 1.5})
    dense = ModelReport(**{**vars(DENSE), "latency_ms": 0.114})
    latency, eager = final_rows(dense, slow)[1:3]
    assert latency.change == 0.114 / 0.115 and latency.cells()[3] == "1.01x slower"
    assert eager.cells()[3] == "1.00x faster"  # equal latency is not slower
    assert deployment_lines({"total_speedup": 0.5, "dense_eager_latency_ms": 1.0, "deployed_artifact": "model.onnx",
                             "deployed_latency_ms": 2.0})[0].endswith(": 2.00x slower")
    assert [speed_words(v) for v in (2.5, 1.0, 0.8, 0.0, float("nan"), float("inf"))] == [
        "2.50x faster", "1.00x faster", "1.25x slower", "n/a", "n/a", "n/a"]


def test_a_delivered_model_whose_latency_interval_reaches_dense_gets_one_warning_line() -> None:
    assert not_faster_warning(DENSE, PRUNED) is None  # 0.25 ms -> [0.09, 0.11] ms: faster
    for ci in ((0.114, 0.116), (0.110, 0.114)):  # slower, and faster on the median but not measurably
        slow = ModelReport(**{**vars(PRUNED), "latency_ms": 0.115 if ci[0] > 0.113 else 0.112, "latency_ci_ms": ci})
        line = not_faster_warning(ModelReport(**{**vars(DENSE), "latency_ms": 0.114}), slow)
        assert line is not None and "\n" not in line
        assert line.startswith("the pruned model is not faster than dense on onnxruntime: 0.114 -> ")
        assert ("1.01x slower" if ci[0] > 0.113 else "1.02x faster") in line and "MACs fell 4.00x" in line


def test_an_eager_backend_is_its_own_eager_row() -> None:
    """The eager row is the reference beside a serving runtime; on an eager backend (a plug-in too) it would repeat the first."""
    for backend in ("torch", "plugins_for_tests:CountingEagerBackend"):
        d, p = (ModelReport(**{**vars(m), "backend": backend}) for m in (DENSE, PRUNED))
        labels = [r.label for r in final_rows(d, p)]
        assert labels == ["test accuracy", f"latency ms on {backend} [95% CI]", "MACs", "params", "size"]


def test_a_row_shows_words_and_empty_cells_as_they_are() -> None:
    assert Row("budget", None, "met").cells() == ("budget", "", "met", "")
    assert Row("reward", None, 0.91234, fmt="{:.4f}").cells() == ("reward", "", "0.9123", "")
    assert Row("fidelity", 0.5, "0.4 -> 0.6", "before -> after", fmt="{:.4f}").cells() == ("fidelity", "0.5000", "0.4 -> 0.6", "before -> after")


def test_the_final_table_judges_the_budget_on_the_final_measurement():
    from autoprune.measure.uncertainty import LatencyEstimate
    from autoprune.objective.budget import Budget

    est = LatencyEstimate(mean=0.49, low=0.47, high=0.52, n=30, measured=0.49, predicted=0.5, source="fresh")
    crossing = Budget(metric="latency", target=0.5).verdict(0.5, est, 0.49, 0.4)
    assert crossing["latency_ratio"] == 0.49 and crossing["budget_met"] is False, "an interval that crosses the target is not met"
    inside = Budget(metric="latency", target=0.55).verdict(0.55, est, 0.49, 0.4)
    assert inside["budget_met"] is True
    macs = Budget(metric="macs", target=0.5).verdict(0.5, est, 0.49, 0.4)
    assert macs["budget_value"] == 0.4 and macs["budget_met"] is True


def test_the_table_cache_line_never_prints_nan_for_a_table_cached_without_its_fit_time():
    from autoprune.app.tables import table_cache_lines

    report = {"latency_table_unit": "variant timings", "latency_table_reused": 1, "latency_table_seconds_saved": float("nan"),
              "latency_table_measured": 0}
    (line,) = table_cache_lines(report)
    assert "nan" not in line and "time saved not recorded" in line
    (line,) = table_cache_lines({**report, "latency_table_seconds_saved": 6.2})
    assert "6.2 s of measurement saved" in line
