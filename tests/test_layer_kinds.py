"""Every layer kind Torch-Pruning 1.6 prunes is a unit source, with exact MACs and a latency-table builder.

Kinds (Torch-Pruning's pruner registry): convolutions of every dimensionality and their transposed
forms, linear layers, embeddings, BatchNorm/InstanceNorm (1-3d), GroupNorm, LayerNorm, PReLU
(shared or per channel), and ``nn.MultiheadAttention`` in every layout it accepts
(``batch_first`` or not, ``kdim``/``vdim``, a vision transformer with a learned position
embedding on its stream), whose heads become a unit of their own. For each small model: its units
pass the safety net (surgery exact, MACs predicted exactly, forward runs), a uniform policy's
predicted MACs equal those counted on the pruned model, and the latency table rebuilds every
layer of the pruned model. Recurrent layers, which Torch-Pruning 1.6 cannot prune correctly, are
opaque and named; everything around them is still pruned.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.graph.layers import count_macs, record_layer_specs
from autoprune.graph.policy import Policy
from autoprune.graph.safety import verified_graph
from autoprune.graph.surgery import apply_policy
from autoprune.graph.units import UnitKind
from autoprune.measure.table import LatencyTable

X = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))


class Conv3dNet(nn.Module):
    """The image as a 4-frame clip: Conv3d + BatchNorm3d, Conv3d + GroupNorm, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8)
        self.c2, self.gn = nn.Conv3d(8, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        clip = x.unsqueeze(2).expand(-1, -1, 4, -1, -1)
        return self.fc(F.relu(self.gn(self.c2(F.relu(self.bn(self.c1(clip)))))).mean((2, 3, 4)))


class Conv1dNet(nn.Module):
    """Rows as a sequence: Conv1d + InstanceNorm1d(affine) + PReLU (per channel), Conv1d + BatchNorm1d + shared PReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.inorm, self.a1 = nn.Conv1d(8, 16, 3, padding=1), nn.InstanceNorm1d(16, affine=True), nn.PReLU(16)
        self.c2, self.bn, self.a2 = nn.Conv1d(16, 16, 3, padding=1), nn.BatchNorm1d(16), nn.PReLU()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        t = x.flatten(1, 2)
        return self.fc(self.a2(self.bn(self.c2(self.a1(self.inorm(self.c1(t)))))).mean(-1))


class TransposedNet(nn.Module):
    """ConvTranspose1d, 2d and 3d decoders on one stem, concatenated into the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, 2, 1)
        self.up1, self.up2, self.up3 = nn.ConvTranspose1d(8, 8, 3, padding=1), nn.ConvTranspose2d(8, 16, 2, 2), nn.ConvTranspose3d(8, 8, (1, 2, 2), (1, 2, 2))
        self.in2 = nn.InstanceNorm2d(16, affine=True)
        self.fc = nn.Linear(8 + 16 + 8, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        a = self.up1(h.flatten(2)).mean(-1)
        b = self.in2(self.up2(h)).mean((2, 3))
        c = self.up3(h.unsqueeze(2)).mean((2, 3, 4))
        return self.fc(torch.cat([a, b, c], 1))


class EmbeddingNet(nn.Module):
    """Pixels quantised to 17 token ids: Embedding + LayerNorm, Linear, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.ln = nn.Embedding(17, 16), nn.LayerNorm(16)
        self.fc1, self.fc = nn.Linear(16, 32), nn.Linear(32, 10)

    def forward(self, x):
        ids = (x.flatten(1).clamp(0, 1) * 16).long()
        return self.fc(F.gelu(self.fc1(self.ln(self.emb(ids)))).mean(1))


class TinyViT(nn.Module):
    """2x2 patches, a learned position embedding added to the stream, one pre-norm block on nn.MultiheadAttention(batch_first, 4 heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 32, 2, 2)
        self.pos = nn.Parameter(torch.randn(1, 16, 32) * 0.02)
        self.ln1, self.attn = nn.LayerNorm(32), nn.MultiheadAttention(32, 4, batch_first=True)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(32), nn.Linear(32, 64), nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        h = self.ln1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.fc2(F.gelu(self.fc1(self.ln2(t))))
        return self.head(t.mean(1))


class SequenceFirst(nn.Module):
    """nn.MultiheadAttention(batch_first=False) on (L, N, E) tokens, its output read back batch first."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.fc = nn.Linear(8, 16), nn.MultiheadAttention(16, 2), nn.Linear(16, 10)

    def forward(self, x):
        t = self.embed(x[:, 0]).transpose(0, 1)  # (L, N, E)
        return self.fc(self.attn(t, t, t)[0].mean(0))


class CrossAttention(nn.Module):
    """Queries of width 16 attend to a memory of keys of width 12 and values of width 20 (kdim/vdim)."""

    def __init__(self) -> None:
        super().__init__()
        self.q_in, self.k_in, self.v_in = nn.Linear(8, 16), nn.Linear(8, 12), nn.Linear(8, 20)
        self.attn = nn.MultiheadAttention(16, 4, kdim=12, vdim=20, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        rows, cols = x[:, 0], x[:, 0].transpose(1, 2)
        out, _ = self.attn(self.q_in(rows), self.k_in(cols), self.v_in(cols))
        return self.fc(out.mean(1))


#: name -> (model, {unit: kind}) of the units every model must get
KINDS = {
    "conv3d_batchnorm3d_groupnorm": (Conv3dNet, {"c1": UnitKind.CONV, "c2": UnitKind.CONV}),
    "conv1d_instancenorm_prelu": (Conv1dNet, {"c1": UnitKind.CONV, "c2": UnitKind.CONV}),
    "conv_transpose_1d_2d_3d": (TransposedNet, {"stem": UnitKind.CONV, "up1": UnitKind.CONV, "up2": UnitKind.CONV, "up3": UnitKind.CONV}),
    "embedding_layernorm": (EmbeddingNet, {"emb": UnitKind.LINEAR, "fc1": UnitKind.LINEAR}),
    "vit_position_embedding": (TinyViT, {"attn": UnitKind.HEADS, "fc1": UnitKind.LINEAR}),
    # an attention whose output is not added to its input: its output width is a unit of its own too
    "attention_sequence_first": (SequenceFirst, {"embed": UnitKind.LINEAR, "attn": UnitKind.HEADS, "attn.out_proj": UnitKind.LINEAR}),
    "attention_kdim_vdim": (CrossAttention, {
        "q_in": UnitKind.LINEAR, "k_in": UnitKind.LINEAR, "v_in": UnitKind.LINEAR, "attn": UnitKind.HEADS, "attn.out_proj": UnitKind.LINEAR,
    }),
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return KINDS[name][0]().eval()


@pytest.mark.parametrize("name", KINDS)
def test_every_layer_kind_gives_units_that_pass_the_safety_net(name):
    graph, report = verified_graph(build(name), X)
    want = KINDS[name][1]
    assert {u.name: u.features.kind for u in graph.units} == want, report.left_dense
    assert all(not failed for failed in report.failed.values())


@pytest.mark.parametrize("name", KINDS)
def test_predicted_macs_equal_the_counted_macs_of_the_pruned_model(name):
    model = build(name)
    graph, _ = verified_graph(model, X)
    assert graph.macs_for({}) == graph.dense_macs == count_macs(record_layer_specs(model, X))
    for ratio in (0.25, 0.5):
        policy = Policy.uniform(graph.unit_names, ratio)
        pruned = apply_policy(model, policy, graph=graph)
        assert graph.macs_for(policy.ratios) == count_macs(record_layer_specs(pruned, X)) < graph.dense_macs


@pytest.mark.parametrize("name", KINDS)
def test_the_latency_table_rebuilds_every_layer_of_the_pruned_model(name, caplog):
    model = build(name)
    graph, _ = verified_graph(model, X)
    pruned = apply_policy(model, Policy.uniform(graph.unit_names, 0.5), graph=graph)
    table = LatencyTable(threads=1, warmup=0, repeats=1, passes=1)
    with caplog.at_level(logging.WARNING, logger="autoprune.measure.table"):
        table.raw_ms(graph.specs_for(Policy.uniform(graph.unit_names, 0.5).ratios))
        table.raw_ms(record_layer_specs(pruned, X))
    assert [r.getMessage() for r in caplog.records if r.name == "autoprune.measure.table"] == []


def test_the_heads_of_a_vision_transformer_are_cut_whole_and_its_width_is_kept():
    model = build("vit_position_embedding")
    graph, report = verified_graph(model, X)
    assert graph.split_heads == ("attn",) and graph.unit("attn").allowed == [8, 16, 24, 32]
    assert any("['pos']" in why for why in report.left_dense.values())  # the stream is indexed by the position embedding: kept
    pruned = apply_policy(model, Policy({"attn": 0.5}), graph=graph)
    assert (pruned.attn.num_attention_heads, pruned.attn.attention_head_size, pruned.attn.out_proj.out_features) == (2, 8, 32)
    assert isinstance(model.attn, nn.MultiheadAttention)


@pytest.mark.parametrize("layer", [nn.LSTM, nn.GRU, nn.RNN])
def test_a_recurrent_layer_is_opaque_by_name_and_the_layers_around_it_are_pruned(layer, caplog):
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.rnn = nn.Linear(8, 16), layer(16, 24, batch_first=True)
            self.fc1, self.fc = nn.Linear(24, 32), nn.Linear(32, 10)

        def forward(self, x):
            out = self.rnn(self.embed(x[:, 0]))[0][:, -1]
            return self.fc(F.relu(self.fc1(out)))

    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        graph, report = verified_graph(Recurrent().eval(), X)
    assert report.opaque == {"rnn": f"{layer.__name__}: Torch-Pruning 1.6 cannot prune recurrent layers correctly"}
    assert graph.unit_names == ["fc1"] and "'rnn', which is opaque" in report.left_dense["embed"]
    assert any("module 'rnn' is opaque" in r.getMessage() for r in caplog.records)


def test_a_grouped_transposed_conv_that_torch_pruning_cuts_wrongly_is_left_dense_by_the_safety_net():
    class GroupedUp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.up, self.out = nn.Conv2d(1, 8, 3, 2, 1), nn.ConvTranspose2d(8, 16, 2, 2, groups=2), nn.Conv2d(16, 16, 3, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(F.relu(self.out(F.relu(self.up(F.relu(self.stem(x)))))).mean((2, 3)))

    torch.manual_seed(0)
    graph, report = verified_graph(GroupedUp().eval(), X)
    assert set(report.failed["surgery"]) == {"stem", "up"} and graph.unit_names == ["out"]
    assert all(why.startswith("surgery fails") for why in report.failed["surgery"].values())
