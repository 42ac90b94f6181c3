"""PrunableGraph: units, droppable blocks, features, channel arithmetic and predicted layer shapes."""

import logging

import pytest
import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import ModelError, PolicyError
from autoprune.graph.layers import record_layer_specs, spec_macs
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph, kept_channels
from autoprune.graph.surgery import apply_policy
from autoprune.zoo import MODEL_NAMES

RESNET20_UNITS = [
    "conv1",
    "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1",
    "layer2.0.conv1", "layer2.0.shortcut.0", "layer2.1.conv1", "layer2.2.conv1",
    "layer3.0.conv1", "layer3.0.shortcut.0", "layer3.1.conv1", "layer3.2.conv1",
]  # fmt: skip
RESNET20_STREAMS = {"conv1": 16, "layer2.0.shortcut.0": 32, "layer3.0.shortcut.0": 64}
RESNET20_IDENTITY_BLOCKS = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs per sample of every Conv2d and Linear call, counted from the real weights and outputs."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output.numel() * module.weight[0].numel()  # (in / groups) * kh * kw per output value
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.weight.shape[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total // x.shape[0]


# ----------------------------------------------------------------------- units


def test_resnet20_has_one_unit_per_block_plus_three_residual_streams(graphs):
    g = graphs["resnet20"]
    assert g.unit_names == RESNET20_UNITS
    coupled = {u.name: u.features.channels for u in g.units if u.features.coupled}
    assert coupled == RESNET20_STREAMS


def test_unit_names_are_stable_across_rebuilds(make_model, example_input, graphs):
    again = PrunableGraph(make_model("resnet20", seed=5), example_input)
    assert again.unit_names == graphs["resnet20"].unit_names


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_classifier_output_layer_is_never_a_unit(graphs, name):
    g = graphs[name]
    last_linear = [n for n, m in g.model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert g.output_layer == last_linear
    assert last_linear not in g.unit_names
    assert all(last_linear not in u.out_layers for u in g.units)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_units_are_ordered_by_execution_depth(graphs, name):
    depths = [u.features.depth for u in graphs[name].units]
    assert depths == sorted(depths) and len(set(depths)) == len(depths)
    assert all(0.0 <= d < 1.0 for d in depths)


def test_resnet20_unit_features_describe_the_root_layer(graphs):
    g = graphs["resnet20"]
    f = g.unit("layer2.0.conv1").features
    assert (f.kind, f.channels, f.in_channels, f.kernel, f.stride) == ("conv", 32, 16, 3, 2)
    assert f.coupled is False
    # conv1 (out), bn1, conv2 (in); MACs per sample, 8x8 input strided to 4x4
    assert f.n_layers == 3
    assert f.macs == 32 * 16 * 9 * 4 * 4 + 32 * 32 * 9 * 4 * 4
    assert f.params == 32 * 16 * 9 + 2 * 32 + 32 * 32 * 9
    assert f.resolution == 1.0
    assert g.unit("layer2.1.conv1").features.resolution == 0.5
    assert g.unit("layer3.1.conv1").features.resolution == 0.25


def test_residual_stream_unit_touches_every_layer_writing_or_reading_the_stream(graphs):
    f = graphs["resnet20"].unit("conv1").features
    # stem conv+bn, then per layer1 block conv1 (in), conv2 + bn2 (out), and layer2.0 conv1 + shortcut (in)
    assert f.coupled is True
    assert f.n_layers == 2 + 3 * 3 + 2


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unit_features_are_positive_and_bounded(graphs, name):
    for u in graphs[name].units:
        f = u.features
        assert f.channels > 1 and f.macs > 0 and f.params > 0 and f.n_layers >= 2
        assert 0.0 < f.resolution <= 1.0
        assert f.kind in ("conv", "depthwise", "linear")
        assert u.name in u.out_layers


def test_mlp_units_are_its_hidden_linears(graphs):
    g = graphs["mlp"]
    assert g.unit_names == ["net.1", "net.4"]
    assert [u.features.kind for u in g.units] == ["linear", "linear"]
    assert [u.features.channels for u in g.units] == [128, 64]
    assert g.blocks == []


def test_unknown_unit_name_is_a_policy_error_listing_the_units(graphs):
    with pytest.raises(PolicyError, match=r"unknown unit 'layer9.conv'.*conv1, layer1.0.conv1"):
        graphs["resnet20"].unit("layer9.conv")


# ---------------------------------------------------------------------- blocks


def test_resnet20_droppable_blocks_are_exactly_the_identity_shortcut_blocks(graphs):
    g = graphs["resnet20"]
    assert g.block_names == RESNET20_IDENTITY_BLOCKS
    assert "layer2.0" not in g.block_names and "layer3.0" not in g.block_names
    block = g.blocks[g.block_names.index("layer2.1")]
    assert block.units_inside == ("layer2.1.conv1",)
    assert block.macs == 2 * (32 * 32 * 9 * 4 * 4)  # per sample: two 3x3 convs, 32->32, 4x4
    assert block.params == sum(p.numel() for p in g.module("layer2.1").parameters())


def test_mobilenetv2_has_depthwise_units_and_its_residual_blocks_are_droppable(graphs):
    g = graphs["mobilenetv2"]
    depthwise = [u for u in g.units if u.features.kind == "depthwise"]
    assert len(depthwise) == len(g.model.blocks)  # one expand/depthwise group per inverted residual
    residual = [f"blocks.{i}" for i, b in enumerate(g.model.blocks) if b.residual]
    assert residual == ["blocks.0", "blocks.2", "blocks.4", "blocks.5", "blocks.7"]
    assert g.block_names == residual
    assert [b.depth for b in g.blocks] == sorted(b.depth for b in g.blocks)


def test_drop_blocks_false_finds_no_blocks(make_model, example_input):
    g = PrunableGraph(make_model("resnet20"), example_input, drop_blocks=False)
    assert g.blocks == [] and len(g.units) == 12


def test_an_untagged_block_returning_x_plus_f_x_is_found_by_tracing(example_input):
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return torch.relu(x + self.conv(x))

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), Res(), Plain(), nn.Flatten(), nn.Linear(8 * 64, 10))
    g = PrunableGraph(model, example_input)
    assert g.block_names == ["1"]


# -------------------------------------------------------------------- ignoring


def test_ignored_layers_are_not_units(make_model, example_input):
    g = PrunableGraph(make_model("vgg_small"), example_input, ignored=["features.3", "classifier.0"])
    assert g.unit_names == ["features.0", "features.7", "features.10", "features.14", "features.17"]


def test_ignoring_one_writer_of_a_residual_stream_freezes_the_whole_stream(make_model, example_input):
    g = PrunableGraph(make_model("resnet20"), example_input, ignored=["layer1.1.conv2"])
    assert "conv1" not in g.unit_names
    assert "layer1.1.conv1" in g.unit_names and len(g.units) == 11


def test_ignoring_an_unknown_layer_is_a_model_error_naming_it(make_model, example_input):
    with pytest.raises(ModelError, match=r"\['layer9'\] are not modules"):
        PrunableGraph(make_model("resnet20"), example_input, ignored=["layer9"])


class LearnedGain(nn.Module):
    """A custom layer with its own per-channel parameter: unknown to Torch-Pruning."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, channels).view(1, channels, 1, 1))

    def forward(self, x):
        return x * self.gain


class GainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.gain = LearnedGain(8)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(self.gain(self.stem(x)))).mean((2, 3)))


class RecurrentNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.rnn(x.squeeze(1))[0][:, -1])


@pytest.mark.parametrize(("model_cls", "layer", "words", "pruned"), [
    (GainNet, "gain", "LearnedGain has parameters of its own", ["conv"]),
    (RecurrentNet, "rnn", "LSTM: Torch-Pruning 1.6 cannot prune recurrent layers", []),
])
def test_a_layer_torch_pruning_cannot_prune_is_opaque_named_in_one_warning_and_the_rest_is_pruned(
    model_cls, layer, words, pruned, example_input, caplog
):
    with caplog.at_level(logging.WARNING):
        g = PrunableGraph(model_cls().eval(), example_input)
    lines = [r.getMessage() for r in caplog.records if f"module {layer!r} is opaque" in r.getMessage()]
    assert len(lines) == 1 and words in lines[0] and "channels are kept" in lines[0]
    assert g.opaque.keys() == {layer} and g.unit_names == pruned
    assert all(repr(layer) in why for why in g.skipped.values())  # every group it stops names it


def test_ignoring_an_unsupported_layer_keeps_the_channels_it_touches(example_input):
    model = GainNet().eval()
    g = PrunableGraph(model, example_input, ignored=["gain"])
    # the stem's channels feed the custom gain, which cannot be cut; the second conv is free
    assert g.unit_names == ["conv"]
    pruned = apply_policy(model, Policy.uniform(g.unit_names, 0.5), graph=g)
    assert pruned(example_input).shape == (2, 10)
    assert pruned.conv.out_channels == 8 and pruned.gain.gain.shape == (1, 8, 1, 1)


# -------------------------------------------------------------- kept channels


@pytest.mark.parametrize(
    ("n", "ratio", "round_to", "kept"),
    [
        (64, 0.0, None, 64),
        (64, 0.5, None, 32),
        (64, 0.3, None, 45),  # 44.8 rounds to nearest
        (10, 0.9, None, 1),
        (64, 0.3, 8, 48),
        (24, 0.5, 8, 16),
        (16, 0.9, 8, 8),  # never below one multiple
        (8, 0.3, 16, 6),  # fewer channels than round_to: no rounding
        (20, 0.0, 8, 20),  # ratio 0 never prunes, even off a multiple
    ],
)
def test_kept_channels(n, ratio, round_to, kept):
    assert kept_channels(n, ratio, round_to) == kept


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_ratio_outside_zero_one_is_a_policy_error(ratio):
    with pytest.raises(PolicyError, match=r"allowed: 0 <= ratio < 1"):
        kept_channels(32, ratio)


def test_a_ratio_that_would_remove_every_channel_keeps_one():
    assert kept_channels(3, 0.9) == 1
    assert kept_channels(1, 0.5) == 1


def test_graph_kept_never_empties_a_unit(graphs):
    g = graphs["mlp"]
    assert g.kept({"net.4": 0.995}) == {"net.1": 128, "net.4": 1}
    assert g.kept({"net.1": 0.25}) == {"net.1": 96, "net.4": 64}


# ------------------------------------------------------------ predicted specs


def _policy_with_drop(g: PrunableGraph) -> Policy:
    return Policy.uniform(g.unit_names, 0.5, drop=g.block_names[1:2])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predicted_macs_equal_the_macs_of_the_really_pruned_model(graphs, name, example_input):
    g = graphs[name]
    for policy in (Policy.uniform(g.unit_names, 0.5), _policy_with_drop(g), Policy({g.unit_names[-1]: 0.3})):
        pruned = apply_policy(g.model, policy, graph=g)
        assert g.macs_for(policy.ratios, policy.drop) == conv_linear_macs(pruned, example_input)
    assert g.dense_macs == conv_linear_macs(g.model, example_input)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predicted_layer_shapes_match_the_pruned_model(graphs, name, example_input):
    g = graphs[name]
    policy = _policy_with_drop(g)
    predicted = [s.key() for s in g.specs_for(policy.ratios, policy.drop)]
    pruned = apply_policy(g.model, policy, graph=g)
    # a dropped block becomes one Identity call, which the prediction leaves out
    real = [s.key() for s in record_layer_specs(pruned, example_input) if s.module_name not in policy.drop]
    assert predicted == real


# Torch-Pruning's counter also counts BatchNorm and activations, so compare pruned/dense ratios on
# nets dominated by full convs (in MobileNetV2 the cheap depthwise convs make BN weigh ~6%).
@pytest.mark.parametrize("name", ["resnet20", "vgg_small"])
def test_predicted_mac_ratio_agrees_with_torch_pruning_counter(graphs, name, example_input):
    g = graphs[name]
    policy = Policy.uniform(g.unit_names, 0.5)
    pruned = apply_policy(g.model, policy, graph=g)
    tp_dense, _ = tp.utils.count_ops_and_params(g.model, example_input)
    tp_pruned, _ = tp.utils.count_ops_and_params(pruned, example_input)
    predicted = g.macs_for(policy.ratios) / g.dense_macs
    assert predicted == pytest.approx(tp_pruned / tp_dense, rel=0.03)
    assert 0.2 < predicted < 0.4  # halving both sides of most convs leaves about a quarter


def test_specs_for_can_change_the_batch_size_and_macs_stay_per_sample(graphs):
    g = graphs["vgg_small"]
    specs = g.specs_for({}, batch_size=16)
    assert all(s.input_shape[0] == 16 for s in specs)
    assert all(s.output_shape[0] == 16 for s in specs if s.output_shape)
    assert sum(spec_macs(s) for s in specs) == g.dense_macs  # per sample: N divides out
