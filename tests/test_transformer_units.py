"""Attention heads, FFN width and whole layers of a BERT-family encoder as prunable units.

A tiny randomly initialised ``transformers.BertModel`` (2 layers, 4 heads of 8, hidden 32, FFN 64)
and a sentence-embedding wrapper (mean pooling + L2 norm, as the MiniLM model card prescribes).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.errors import ModelError, PolicyError
from autoprune.formats.policy_file import policy_document, read_policy_file, write_policy_file
from autoprune.graph import Policy, PrunableGraph, apply_policy, model_fingerprint
from autoprune.graph.check import check_units
from autoprune.graph.layers import count_macs, record_layer_specs
from autoprune.graph.policy import check_policy_fits
from autoprune.graph.surgery import pruning_history, replay_history
from autoprune.graph.transformer import SkipLayer

transformers = pytest.importorskip("transformers")

LAYERS, HEADS, HIDDEN, FFN, SEQ = 2, 4, 32, 64, 16
HEAD_UNITS = [f"encoder.layer.{i}.attention.self" for i in range(LAYERS)]
FFN_UNITS = [f"encoder.layer.{i}.intermediate.dense" for i in range(LAYERS)]


def tiny_bert(seed: int = 0, *, pooler: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, hidden_size=HIDDEN, intermediate_size=FFN,
        vocab_size=100, max_position_embeddings=64,
    )
    return transformers.BertModel(cfg, add_pooling_layer=pooler).eval()


class SentenceEncoder(nn.Module):
    """Mean pooling over the unmasked tokens, then L2 normalisation: one embedding per sentence."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(tokens.dtype)
        return F.normalize((tokens * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def text_batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, SEQ), generator=gen)
    mask = torch.ones(n, SEQ, dtype=torch.long)
    for i in range(n):
        mask[i, SEQ - 3 * i:] = 0 if i else 1  # sentences of different lengths
    return ids, mask


@pytest.fixture(scope="module")
def bert_graph() -> PrunableGraph:
    return PrunableGraph(tiny_bert(), text_batch(2))


@pytest.fixture(scope="module")
def sentence_graph() -> PrunableGraph:
    return PrunableGraph(SentenceEncoder(tiny_bert(pooler=False)), text_batch(2))


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ units
def test_units_are_heads_and_ffn_per_layer_and_layers_are_droppable(bert_graph):
    g = bert_graph
    assert g.unit_names == [HEAD_UNITS[0], FFN_UNITS[0], HEAD_UNITS[1], FFN_UNITS[1]]
    kinds = {u.name: (u.features.kind, u.features.channels, u.features.heads) for u in g.units}
    assert kinds == {**{n: ("heads", HIDDEN, HEADS) for n in HEAD_UNITS}, **{n: ("ffn", FFN, 0) for n in FFN_UNITS}}
    assert g.unit(HEAD_UNITS[0]).allowed == [8, 16, 24, 32]  # whole heads of 8
    assert g.unit(HEAD_UNITS[0]).constraint.because == (f"{HEAD_UNITS[0]} (num_attention_heads={HEADS})",)
    assert g.unit(HEAD_UNITS[0]).root in {f"{HEAD_UNITS[0]}.{p}" for p in ("query", "key", "value")}  # Torch-Pruning's root
    assert g.block_names == ["encoder.layer.0", "encoder.layer.1"]
    depths = [u.features.depth for u in g.units]
    assert depths == sorted(depths) and 0 < depths[0] < depths[-1] < 1
    # the hidden width is the output's width: never a unit
    assert any("hidden width" in why for why in g.skipped.values())


def test_the_sentence_wrapper_without_pooler_has_the_same_units(sentence_graph):
    assert sentence_graph.unit_names == [f"encoder.{n}" for n in (HEAD_UNITS[0], FFN_UNITS[0], HEAD_UNITS[1], FFN_UNITS[1])]
    assert sentence_graph.block_names == ["encoder.encoder.layer.0", "encoder.encoder.layer.1"]


def test_half_the_heads_leave_two_per_layer_and_the_model_runs_smaller(bert_graph):
    g = bert_graph
    pruned = apply_policy(g.model, Policy({n: 0.5 for n in HEAD_UNITS}), graph=g)
    ids, mask = text_batch()
    for i in range(LAYERS):
        attn = pruned.encoder.layer[i].attention.self
        assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (2, 8, 16)
        assert attn.query.out_features == attn.key.out_features == attn.value.out_features == 16
        assert pruned.encoder.layer[i].attention.output.dense.in_features == 16
        assert g.model.encoder.layer[i].attention.self.num_attention_heads == HEADS  # the dense model is untouched
    assert params(pruned) == params(g.model) - LAYERS * (3 * (16 * HIDDEN + 16) + 16 * HIDDEN)
    assert pruned(ids, mask).last_hidden_state.shape == (4, SEQ, HIDDEN)


def test_a_ratio_maps_to_whole_heads_and_keeps_at_least_one(bert_graph):
    g = bert_graph
    assert g.kept({HEAD_UNITS[0]: 0.3, HEAD_UNITS[1]: 0.95}) [HEAD_UNITS[0]] == 24  # 2.8 heads kept -> 3
    assert g.kept({HEAD_UNITS[1]: 0.95})[HEAD_UNITS[1]] == 8  # never zero heads
    pruned = apply_policy(g.model, Policy({HEAD_UNITS[1]: 0.95}), graph=g)
    assert pruned.encoder.layer[1].attention.self.num_attention_heads == 1
    assert pruned(*text_batch()).last_hidden_state.shape == (4, SEQ, HIDDEN)


def test_ffn_pruning_shrinks_the_intermediate_width(bert_graph):
    g = bert_graph
    pruned = apply_policy(g.model, Policy({FFN_UNITS[0]: 0.5, FFN_UNITS[1]: 0.25}), graph=g)
    assert pruned.encoder.layer[0].intermediate.dense.out_features == 32 == pruned.encoder.layer[0].output.dense.in_features
    assert pruned.encoder.layer[1].intermediate.dense.out_features == 48 == pruned.encoder.layer[1].output.dense.in_features
    assert params(pruned) == params(g.model) - (32 + 16) * (2 * HIDDEN + 1)
    assert pruned.encoder.layer[0].attention.self.num_attention_heads == HEADS


def test_a_dropped_layer_passes_its_hidden_states_through(bert_graph):
    g = bert_graph
    pruned = apply_policy(g.model, Policy({}, ("encoder.layer.1",)), graph=g)
    assert isinstance(pruned.encoder.layer[1], SkipLayer)
    ids, mask = text_batch()
    with torch.no_grad():
        after_first = g.model(ids, mask, output_hidden_states=True).hidden_states[1]
        got = pruned(ids, mask).last_hidden_state
    assert torch.allclose(got, after_first, atol=1e-6)  # the encoder is the first layer alone
    assert params(pruned) == params(g.model) - params(g.model.encoder.layer[1])


def test_surgery_equals_the_masked_dense_model_for_heads_and_ffn(bert_graph, sentence_graph):
    for g in (bert_graph, sentence_graph):
        report = check_units(g, ratios=(0.5, 0.25))
        assert report.failed == {}
        assert set(report.passed) == set(g.unit_names)
        assert max(report.max_diff.values()) <= 1e-5


def test_predicted_macs_count_attention_matmuls_and_equal_the_pruned_models(bert_graph):
    g = bert_graph
    per_layer = 4 * SEQ * HIDDEN * HIDDEN + 2 * SEQ * SEQ * HIDDEN + 2 * SEQ * HIDDEN * FFN
    assert g.dense_macs == LAYERS * per_layer + HIDDEN * HIDDEN  # + the pooler on the first token
    policy = Policy({HEAD_UNITS[0]: 0.5, FFN_UNITS[1]: 0.75}, ("encoder.layer.0",))
    pruned = apply_policy(g.model, policy, graph=g)
    counted = count_macs(record_layer_specs(pruned, g.example_input))
    assert g.macs_for(policy.ratios, policy.drop) == counted
    policy = Policy({HEAD_UNITS[0]: 0.5, FFN_UNITS[1]: 0.75})
    layer0 = 2 * SEQ * HIDDEN * 16 + SEQ * HIDDEN * 16 + SEQ * 16 * HIDDEN + 2 * SEQ * SEQ * 16 + 2 * SEQ * HIDDEN * FFN
    layer1 = 4 * SEQ * HIDDEN * HIDDEN + 2 * SEQ * SEQ * HIDDEN + 2 * SEQ * HIDDEN * 16
    assert g.macs_for(policy.ratios) == layer0 + layer1 + HIDDEN * HIDDEN
    pruned = apply_policy(g.model, policy, graph=g)
    assert count_macs(record_layer_specs(pruned, g.example_input)) == g.macs_for(policy.ratios)


def test_replaying_the_history_rebuilds_the_pruned_shapes(bert_graph):
    g = bert_graph
    pruned = apply_policy(g.model, Policy({HEAD_UNITS[1]: 0.5, FFN_UNITS[0]: 0.5}, ("encoder.layer.0",)), graph=g)
    fresh = replay_history(tiny_bert(seed=3), pruning_history(pruned), g.example_input)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    fresh.load_state_dict(pruned.state_dict())
    ids, mask = text_batch()
    with torch.no_grad():
        assert torch.allclose(fresh(ids, mask).last_hidden_state, pruned(ids, mask).last_hidden_state, atol=1e-6)
    assert fresh.encoder.layer[1].attention.self.num_attention_heads == 2


# -------------------------------------------------------------- importance
def _zero_head_and_neuron(model: nn.Module, layer: int, head: int, neuron: int) -> nn.Module:
    model = copy.deepcopy(model)
    lay = model.encoder.layer[layer]
    rows = slice(8 * head, 8 * head + 8)
    with torch.no_grad():
        for proj in (lay.attention.self.query, lay.attention.self.key, lay.attention.self.value):
            proj.weight[rows] = 0
            proj.bias[rows] = 0
        lay.attention.output.dense.weight[:, rows] = 0
        lay.intermediate.dense.weight[neuron] = 0
        lay.intermediate.dense.bias[neuron] = 0
        lay.output.dense.weight[:, neuron] = 0
    return model


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "activation"])
def test_each_criterion_ranks_a_zeroed_head_and_a_zeroed_neuron_lowest(criterion):
    dense = SentenceEncoder(tiny_bert())
    model = _zero_head_and_neuron(dense.encoder, layer=1, head=2, neuron=37)
    wrapped = SentenceEncoder(model)
    g = PrunableGraph(wrapped, text_batch(2))
    with torch.no_grad():
        calib = [text_batch(4, seed=s) for s in (5, 6)]
        batches = [(x, dense(*x)) for x in calib]  # distillation targets: the dense embeddings

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, target)

    scores = g.importance(criterion, lambda: iter(batches), loss=mse)
    heads = g.unit("encoder." + HEAD_UNITS[1])
    per_head = scores[heads.name].view(HEADS, 8).sum(1)
    assert int(per_head.argmin()) == 2, per_head
    assert heads.constraint.choose(scores[heads.name], 24) == list(range(16, 24))  # one head cut: the zeroed one
    ffn = scores["encoder." + FFN_UNITS[1]]
    assert int(ffn.argmin()) == 37 and float(ffn[37]) < float(ffn.sort().values[1])


def test_activation_and_taylor_need_calibration_batches(bert_graph):
    g = PrunableGraph(tiny_bert(), text_batch(2))
    for criterion in ("activation", "taylor"):
        with pytest.raises(PolicyError, match=f"'{criterion}' needs"):
            g.importance(criterion)


def test_activation_ranks_a_zeroed_conv_channel_lowest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[0].weight[5] = 0
        model[0].bias[5] = 0
    g = PrunableGraph(model, torch.randn(2, 3, 8, 8))
    scores = g.importance("activation", lambda: [(torch.randn(16, 3, 8, 8), None)])
    assert int(scores["0"].argmin()) == 5 and float(scores["0"][5]) == 0.0
    pruned = apply_policy(model, Policy({"0": 0.125}), graph=g, importance="activation",
                          batches=lambda: [(torch.randn(16, 3, 8, 8), None)])
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-6)  # the channel cut carried nothing


# ------------------------------------------------------------ policy files
def test_a_head_ffn_and_drop_policy_round_trips_through_a_policy_file(bert_graph, tmp_path):
    g = bert_graph
    policy = Policy({HEAD_UNITS[0]: 0.5, FFN_UNITS[0]: 0.25, HEAD_UNITS[1]: 0.75}, ("encoder.layer.1",))
    doc = policy_document(policy, model="tiny-bert", data="text", metric="macs", target=0.5,
                          backend={"name": "torch"}, searcher="test", fingerprint=model_fingerprint(g))
    path = write_policy_file(tmp_path / "policy.json", doc)
    read, document = read_policy_file(path)
    assert read == policy
    check_policy_fits(read, g, fingerprint=document["fingerprint"])
    kinds = {u["name"]: u["kind"] for u in document["fingerprint"]["units"]}
    assert kinds[HEAD_UNITS[0]] == "heads" and kinds[FFN_UNITS[0]] == "ffn"
    a = apply_policy(g.model, policy, graph=g)
    b = apply_policy(g.model, read, graph=g)
    assert torch.equal(a(*text_batch()).last_hidden_state, b(*text_batch()).last_hidden_state)


# --------------------------------------------------------------- bad input
class FusedAttention(nn.Module):
    """One Linear producing Q, K and V together: a head layout the graph cannot split."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 4
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.num_heads, 4).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, 16))


class FusedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.fc = nn.Linear(8, 16), FusedAttention(), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(self.embed(x)).mean(1))


def test_a_fused_qkv_attention_is_refused_by_name_unless_ignored():
    with pytest.raises(ModelError, match=r"attention attn \(FusedAttention, heads=4\): autoprune cannot split its heads") as e:
        PrunableGraph(FusedNet(), torch.randn(2, 5, 8))
    assert "\n" not in str(e.value)
    PrunableGraph(FusedNet(), torch.randn(2, 5, 8), ignored=("attn",))


def test_the_graph_package_does_not_import_transformers():
    code = "import sys, autoprune.graph, autoprune.graph.check; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------ latency and checks
def test_latency_features_see_the_attention_core_growing_with_sequence_length_squared(bert_graph):
    from autoprune.measure.runtime_table import FEATURES, spec_features
    from autoprune.measure.table import _build

    short = [s for s in bert_graph.dense_specs if s.kind == "dotproductattention"]
    assert [s.module_name for s in short] == HEAD_UNITS and all(s.groups == HEADS for s in short)
    long_specs = record_layer_specs(bert_graph.model, tuple(t.repeat(1, 2) for t in text_batch(2)))  # L = 2 * SEQ
    col = FEATURES.index("attention_macs")
    f_short, f_long = spec_features(bert_graph.dense_specs)[col], spec_features(long_specs)[col]
    assert f_short == 2 * LAYERS * 2 * SEQ * SEQ * HIDDEN and f_long == 4 * f_short
    core = _build(short[0])
    x = torch.randn(short[0].input_shape)
    assert core(x).shape == x.shape
    halved = bert_graph.specs_for({HEAD_UNITS[0]: 0.5})
    (pruned_core,) = [s for s in halved if s.module_name == HEAD_UNITS[0] and s.kind == "dotproductattention"]
    assert (pruned_core.in_channels, pruned_core.groups, pruned_core.input_shape) == (16, 2, (2, SEQ, 16))


def test_the_check_verdict_of_an_encoder_is_cached(bert_graph, tmp_path):
    from autoprune.graph.check import verify_graph

    g = PrunableGraph(tiny_bert(), text_batch(2))
    first = verify_graph(g, cache_dir=tmp_path)
    again = verify_graph(g, cache_dir=tmp_path)
    assert not first.cached and again.cached and again.passed == first.passed == g.unit_names


def test_activation_pruning_of_an_encoder_keeps_the_embedding_shape(bert_graph):
    g = bert_graph
    calib = [(text_batch(4, seed=s), None) for s in (7, 8)]
    policy = Policy({n: 0.5 for n in g.unit_names}, ("encoder.layer.0",))
    pruned = apply_policy(g.model, policy, graph=g, importance="activation", batches=lambda: iter(calib))
    assert pruned(*text_batch()).last_hidden_state.shape == (4, SEQ, HIDDEN)
    assert pruned.encoder.layer[1].attention.self.num_attention_heads == 2
    assert pruned.encoder.layer[1].intermediate.dense.out_features == 32


def test_a_policy_transfers_from_a_two_layer_to_a_four_layer_encoder_by_kind_and_depth(bert_graph):
    from autoprune.transfer.mapping import transfer_policy

    torch.manual_seed(0)
    deeper = transformers.BertModel(transformers.BertConfig(
        num_hidden_layers=4, num_attention_heads=HEADS, hidden_size=HIDDEN, intermediate_size=FFN, vocab_size=100,
        max_position_embeddings=64,
    )).eval()
    target = PrunableGraph(deeper, text_batch(2))
    source = Policy({HEAD_UNITS[0]: 0.25, HEAD_UNITS[1]: 0.75, FFN_UNITS[0]: 0.5, FFN_UNITS[1]: 0.5})
    mapped, rows = transfer_policy(source, model_fingerprint(bert_graph), target)
    heads = [mapped.ratios[f"encoder.layer.{i}.attention.self"] for i in range(4)]
    assert heads[0] == pytest.approx(0.25) and heads[-1] == pytest.approx(0.75) and heads == sorted(heads)
    assert all(mapped.ratios[f"encoder.layer.{i}.intermediate.dense"] == pytest.approx(0.5) for i in range(4))
    assert {r.kind for r in rows} >= {"heads", "ffn"}
    dropping, _ = transfer_policy(Policy({HEAD_UNITS[0]: 0.5}, ("encoder.layer.1",)), model_fingerprint(bert_graph), target)
    assert dropping.drop and set(dropping.drop) <= set(target.block_names)
    pruned = apply_policy(deeper, Policy(mapped.ratios, dropping.drop), graph=target)
    assert pruned(*text_batch()).last_hidden_state.shape == (4, SEQ, HIDDEN)


def test_removing_every_head_of_a_layer_is_refused_naming_the_layer_to_drop(bert_graph):
    with pytest.raises(PolicyError, match=r"^ratio of unit 'encoder.layer.1.attention.self' is 1.0 \(it would remove every head; "
                                          r"drop the layer 'encoder.layer.1' instead\); allowed: 0 <= ratio < 1$"):
        apply_policy(bert_graph.model, Policy({HEAD_UNITS[1]: 1.0}), graph=bert_graph)


def test_iterative_pruning_of_an_encoder_reaches_the_target_heads_and_width(bert_graph):
    from autoprune.graph.surgery import apply_iteratively

    policy = Policy({HEAD_UNITS[0]: 0.75, FFN_UNITS[1]: 0.5}, ("encoder.layer.1",))
    pruned = apply_iteratively(bert_graph.model, policy, example_input=bert_graph.example_input, steps=2)
    assert pruned.encoder.layer[0].attention.self.num_attention_heads == 1
    assert isinstance(pruned.encoder.layer[1], SkipLayer)
    assert pruned(*text_batch()).last_hidden_state.shape == (4, SEQ, HIDDEN)


def test_a_pruned_encoder_with_a_dropped_layer_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from autoprune.formats.onnx import export_onnx

    model = SentenceEncoder(tiny_bert(pooler=False))
    g = PrunableGraph(model, text_batch(2))
    pruned = apply_policy(model, Policy({u: 0.5 for u in g.unit_names}, ("encoder.encoder.layer.0",)), graph=g).eval()
    report = export_onnx(pruned, text_batch(4), tmp_path / "encoder.onnx")
    assert report["max_abs_diff"] is not None and report["max_abs_diff"] < 1e-4
