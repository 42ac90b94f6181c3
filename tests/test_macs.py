"""One layer-spec recorder and one MAC convention (per sample) for every layer kind.

The MAC counts below are written out by hand from the layer's definition, so a counter that
skips a layer kind, counts a transposed conv over its output, or counts per batch fails them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import fast_settings
from torch import nn

from autoprune.graph.layers import record_layer_specs
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.measure.latency import count_macs_params
from autoprune.measure.table import LatencyTable
from autoprune.objective.budget import Budget
from autoprune.objective.evaluator import PolicyEvaluator


class SelfAttention(nn.Module):
    def __init__(self, embed: int, heads: int, batch_first: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=batch_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class CrossAttention(nn.Module):
    """Queries of one length attend to keys/values of another length and width (kdim, vdim)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, kdim=6, vdim=10, batch_first=True)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attn(q, k, v, need_weights=False)[0]


# (layer, one sample's input shape, MACs per sample written out by hand)
CASES = {
    "conv1d": (nn.Conv1d(4, 8, 3, padding=1), (4, 10), 8 * 4 * 3 * 10),
    "conv1d_strided_dilated": (nn.Conv1d(4, 8, 3, stride=2, dilation=2), (4, 11), 8 * 4 * 3 * 4),
    "conv2d": (nn.Conv2d(4, 8, 3, padding=1), (4, 6, 6), 8 * 4 * 9 * 36),
    "conv2d_grouped": (nn.Conv2d(8, 16, 3, padding=1, groups=4), (8, 5, 5), 16 * 2 * 9 * 25),
    "conv2d_depthwise": (nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), (8, 6, 6), 8 * 1 * 9 * 9),
    "conv2d_same": (nn.Conv2d(4, 8, 3, padding="same"), (4, 5, 7), 8 * 4 * 9 * 35),
    "conv3d": (nn.Conv3d(4, 8, 3, padding=1), (4, 3, 4, 5), 8 * 4 * 27 * 60),
    # a transposed conv scatters every *input* value through its kernel once
    "convtranspose1d": (nn.ConvTranspose1d(4, 8, 2, stride=2), (4, 5), 4 * 8 * 2 * 5),
    "convtranspose2d": (nn.ConvTranspose2d(4, 8, 2, stride=2), (4, 5, 5), 4 * 8 * 4 * 25),
    "convtranspose2d_grouped": (nn.ConvTranspose2d(4, 8, 3, padding=1, groups=2), (4, 5, 5), 4 * 4 * 9 * 25),
    "convtranspose3d": (nn.ConvTranspose3d(4, 8, 2, stride=2), (4, 3, 3, 3), 4 * 8 * 8 * 27),
    "linear": (nn.Linear(12, 7), (12,), 12 * 7),
    "linear_on_tokens": (nn.Linear(12, 7), (5, 12), 5 * 12 * 7),
    # Q, K, V and output projections (4 * L * E * E) + Q·Kᵀ and attn·V over all heads (2 * L * L * E)
    "attention_batch_first": (SelfAttention(16, 4, batch_first=True), (6, 16), 4 * 6 * 16 * 16 + 2 * 6 * 6 * 16),
    "batchnorm_relu_pool": (nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)), (4, 6, 6), 0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch", [1, 3])
def test_macs_per_sample_of_each_layer_kind_match_the_hand_count(case: str, batch: int) -> None:
    layer, shape, expected = CASES[case]
    macs, params = count_macs_params(layer, torch.randn(batch, *shape))
    assert macs == expected
    assert params == sum(p.numel() for p in layer.parameters())


def test_attention_called_sequence_first_counts_the_same_as_batch_first() -> None:
    x = torch.randn(6, 2, 16)  # (L, N, E)
    macs, _ = count_macs_params(SelfAttention(16, 4, batch_first=False), x)
    assert macs == 4 * 6 * 16 * 16 + 2 * 6 * 6 * 16
    (spec,) = record_layer_specs(SelfAttention(16, 4, batch_first=False), x)
    assert spec.input_shape == (2, 6, 16) and spec.groups == 4  # recorded batch first; heads in groups


def test_cross_attention_counts_key_and_value_projections_at_their_own_width_and_length() -> None:
    q, k, v = torch.randn(2, 6, 16), torch.randn(2, 9, 6), torch.randn(2, 9, 10)
    macs, _ = count_macs_params(CrossAttention(), (q, k, v))
    projections = 6 * 16 * 16 + 9 * 6 * 16 + 9 * 10 * 16 + 6 * 16 * 16
    assert macs == projections + 2 * 6 * 9 * 16


def test_a_transformer_encoder_layer_counts_attention_and_both_feed_forward_linears() -> None:
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True).eval()
    macs, _ = count_macs_params(layer, torch.randn(2, 5, 16))
    attention = 4 * 5 * 16 * 16 + 2 * 5 * 5 * 16
    assert macs == attention + 5 * 16 * 32 + 5 * 32 * 16


# ------------------------------------------------------------ one recorder


def test_the_graph_and_the_latency_table_key_a_models_layers_identically(make_model, example_input) -> None:
    model = make_model("resnet20")
    graph = PrunableGraph(model, example_input)
    recorded = record_layer_specs(model, example_input)
    assert graph.dense_specs == recorded
    assert graph.specs_for({}) == recorded  # the dense policy predicts exactly the recorded specs
    table = LatencyTable.calibrated_for([model], example_input, threads=1, warmup=0, repeats=1, passes=1, rounds=3)
    assert set(table.entries) == {LatencyTable.key_of(s) for s in graph.dense_specs}


# ------------------------------------------------ the MAC budget = the counted MAC ratio


class Conv1dNet(nn.Module):
    """An image read as a sequence of rows: two Conv1d + BN, mean over the sequence, a Linear head."""

    def __init__(self, size: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv1d(size, 32, 3, padding=1), nn.BatchNorm1d(32)
        self.c2, self.bn2 = nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = x.permute(0, 1, 3, 2).reshape(n, c * w, h)
        t = F.relu(self.bn1(self.c1(t)))
        t = F.relu(self.bn2(self.c2(t)))
        return self.fc(t.mean(-1))


@pytest.fixture(scope="module")
def conv1d_evaluator(digits) -> PolicyEvaluator:
    torch.manual_seed(0)
    return PolicyEvaluator(Conv1dNet().eval(), digits, budget=Budget(metric="macs", target=0.6), **fast_settings())


def test_conv1d_model_budget_value_is_the_counted_mac_ratio_of_the_pruned_model(conv1d_evaluator, digits) -> None:
    ev = conv1d_evaluator
    assert ev.unit_names == ["c1", "c2"]
    x1 = digits.example_input(1)
    dense_macs, _ = count_macs_params(ev.model, x1)
    assert dense_macs == 32 * 8 * 3 * 8 + 32 * 32 * 3 * 8 + 32 * 10  # the convs dominate, the head is ~1%
    values = []
    for ratios in ({"c1": 0.5}, {"c2": 0.25}, {"c1": 0.75, "c2": 0.25}, {"c1": 0.75, "c2": 0.75}):
        policy = Policy(ratios)
        metrics = ev.evaluate(policy)
        pruned = apply_policy(ev.model, policy, graph=ev.graph, importance=ev.importance, round_to=ev.round_to)
        pruned_macs, _ = count_macs_params(pruned, x1)
        assert metrics.value == pytest.approx(pruned_macs / dense_macs, abs=1e-9)
        assert metrics.macs_ratio == metrics.value and metrics.macs == pruned_macs
        assert ev.predicted_value(policy.ratios, policy.drop) == pytest.approx(metrics.value, abs=1e-9)
        assert metrics.feasible == (metrics.value <= 0.6)
        values.append(metrics.value)
    # pruning c1 by half leaves c1 at half and c2's input at half: about half the MACs
    assert values[0] == pytest.approx(0.5, abs=0.01)
    # the policy with the fewest real MACs has the smallest budget value; pruning only c2 a little is over
    assert values.index(min(values)) == 3 and values[3] < 0.6 < values[1]


class Deconv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 16, 2, 2)
        self.conv = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.relu(self.up(self.down(x))))
        return self.fc(x.mean((2, 3)))


def test_predicted_macs_of_a_transposed_conv_model_equal_the_counted_macs_after_surgery(example_input) -> None:
    torch.manual_seed(0)
    model = Deconv().eval()
    graph = PrunableGraph(model, example_input)
    dense, _ = count_macs_params(model, example_input)
    assert graph.dense_macs == dense == 16 * 9 * 16 + 16 * 16 * 4 * 16 + 16 * 16 * 9 * 64 + 16 * 10
    for policy in (Policy.uniform(graph.unit_names, 0.5), Policy({graph.unit_names[0]: 0.25})):
        pruned = apply_policy(model, policy, graph=graph)
        assert graph.macs_for(policy.ratios, policy.drop) == count_macs_params(pruned, example_input)[0]


def test_an_activation_after_a_linear_on_tokens_has_the_features_as_channels() -> None:
    model = nn.Sequential(nn.Linear(12, 7), nn.GELU(), nn.Dropout(0.1), nn.Conv1d(5, 3, 1), nn.ReLU())
    linear, gelu, dropout, conv, relu = record_layer_specs(model, torch.randn(2, 5, 12))
    assert (gelu.channel_axis, gelu.in_channels, dropout.in_channels) == (2, 7, 7)
    assert (relu.channel_axis, relu.in_channels) == (1, 3)  # after a conv the channels are dim 1
    narrower = gelu.with_channels(4, 4)
    assert narrower.input_shape == (2, 5, 4) and narrower.output_shape == (2, 5, 4)


class TokenMixer(nn.Module):
    """Image rows as 8 tokens: embed, self-attention + LayerNorm on a residual stream, MLP, mean, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.ff, self.act, self.ff2 = nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x[:, 0])  # (N, 8 tokens, 8 features) -> (N, 8, 16)
        t = self.norm(t + self.attn(t, t, t, need_weights=False)[0])
        t = t + self.ff2(self.act(self.ff(t)))
        return self.fc(t.mean(1))


def test_predicted_macs_of_an_attention_model_equal_the_counted_macs_after_surgery(example_input) -> None:
    torch.manual_seed(0)
    model = TokenMixer().eval()
    graph = PrunableGraph(model, example_input, split_heads=False)
    stream = graph.out_owner["attn"]  # the residual stream's unit also sets the attention width
    lq = 8
    attention = 4 * lq * 16 * 16 + 2 * lq * lq * 16
    assert graph.dense_macs == count_macs_params(model, example_input)[0] == (
        lq * 8 * 16 + attention + lq * 16 * 32 + lq * 32 * 16 + 16 * 10
    )
    for policy in (Policy({stream: 0.5}), Policy.uniform(graph.unit_names, 0.5)):
        pruned = apply_policy(model, policy, graph=graph)
        assert graph.macs_for(policy.ratios) == count_macs_params(pruned, example_input)[0]
        (predicted,) = [s for s in graph.specs_for(policy.ratios) if s.module_name == "attn"]
        (real,) = [s for s in record_layer_specs(pruned, example_input) if s.module_name == "attn"]
        assert (predicted.in_channels, predicted.input_shape, predicted.kv_channels) == (8, (2, lq, 8), (8, 8))
        assert (real.in_channels, real.input_shape, real.kv_channels) == (8, (2, lq, 8), (8, 8))


def test_predicted_macs_of_split_attention_heads_equal_the_counted_macs_after_surgery(example_input) -> None:
    torch.manual_seed(0)
    model = TokenMixer().eval()
    graph = PrunableGraph(model, example_input)
    assert graph.unit("attn").features.kind == "heads" and graph.dense_macs == count_macs_params(model, example_input)[0]
    for policy in (Policy({"attn": 0.5}), Policy.uniform(graph.unit_names, 0.5)):
        pruned = apply_policy(model, policy, graph=graph)
        assert graph.macs_for(policy.ratios) == count_macs_params(pruned, example_input)[0] < graph.dense_macs
