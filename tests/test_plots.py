"""The one sensitivity plot (tracking layer): unit curves plus the dropped-block lines."""

from matplotlib.image import imread

from autoprune.tracking.plots import plot_sensitivity

CURVES = {"conv1": [(0.0, 0.95), (0.4, 0.9), (0.8, 0.6)], "layer1.0.conv1": [(0.0, 0.95), (0.4, 0.93), (0.8, 0.85)]}


def test_sensitivity_plot_draws_a_line_per_dropped_block(tmp_path):
    plain = plot_sensitivity(CURVES, tmp_path / "plain.png")
    with_blocks = plot_sensitivity(CURVES, tmp_path / "plots" / "blocks.png", blocks={"layer1.0": 0.7, "layer1.1": float("nan")})
    assert with_blocks.parent.name == "plots" and with_blocks.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a, b = imread(plain), imread(with_blocks)
    assert a.shape == b.shape and (a != b).any()  # the block line (a NaN accuracy draws nothing) changes the figure


def test_sensitivity_plot_without_curves_still_writes_a_figure(tmp_path):
    assert plot_sensitivity({}, tmp_path / "empty.png").stat().st_size > 0
