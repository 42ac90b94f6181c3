"""Heads of torch's own ``nn.MultiheadAttention`` as prunable units.

PyTorch ties an ``nn.MultiheadAttention``'s heads to its embedding width; without conversion its
heads are cut together with the width around it (the unit is the stream, kind ``heads``).
:func:`split_attention_heads` replaces it by an equivalent module whose heads are a unit of their own.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.models import HEADS, SEQ, E, token_model, x_tokens
from torch import nn

from autoprune.graph import Policy, PrunableGraph, apply_policy
from autoprune.graph.check import check_units
from autoprune.graph.layers import count_macs, record_layer_specs
from autoprune.graph.surgery import pruning_history, replay_history
from autoprune.graph.transformer import SkipLayer, SplitHeadAttention, split_attention_heads


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_attention_computes_what_multihead_attention_computes(batch_first):
    mha = nn.MultiheadAttention(E, HEADS, batch_first=batch_first).double().eval()
    split = SplitHeadAttention(mha).eval()
    q = torch.randn(3, 5, E, dtype=torch.float64)
    kv = torch.randn(3, 7, E, dtype=torch.float64)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 4:] = True
    causal = torch.ones(5, 7, dtype=torch.bool).triu(1)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal, "average_attn_weights": False}):
        want, want_w = mha(q, kv, kv, **kwargs)
        got, got_w = split(q, kv, kv, **kwargs)
        assert torch.allclose(got, want, atol=1e-12) and torch.allclose(got_w, want_w, atol=1e-12)
    assert torch.allclose(split(q[:, 0] if not batch_first else q[0], kv[:, 0] if not batch_first else kv[0],
                                kv[:, 0] if not batch_first else kv[0])[0],
                          mha(q[:, 0] if not batch_first else q[0], kv[:, 0] if not batch_first else kv[0],
                              kv[:, 0] if not batch_first else kv[0])[0], atol=1e-12)  # unbatched


def test_without_splitting_the_attention_width_is_one_unit_of_whole_heads():
    g = PrunableGraph(token_model(), x_tokens(2))
    stream = g.unit(g.out_owner["encoder.layers.0.self_attn"])
    assert (stream.features.kind, stream.features.heads, stream.allowed) == ("heads", HEADS, [4, 8, 12, 16])


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_heads_are_units_of_their_own_and_half_leaves_two_heads(batch_first):
    model = token_model(batch_first=batch_first)
    x = x_tokens()
    with torch.no_grad():
        before = model(x)
    assert split_attention_heads(model) == ["encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)  # the same function
    g = PrunableGraph(model, x_tokens(2))
    kinds = {u.name: (u.features.kind, u.features.heads) for u in g.units}
    assert kinds["encoder.layers.0.self_attn"] == ("heads", HEADS) == kinds["encoder.layers.1.self_attn"]
    assert kinds["encoder.layers.0.linear1"] == ("ffn", 0)
    stream = g.unit(g.out_owner["embed"])  # the width around the attention is now cut on its own
    assert (stream.features.kind, stream.features.heads, stream.allowed[:2]) == ("linear", 0, [1, 2])
    assert g.block_names == ["encoder.layers.0", "encoder.layers.1"]
    pruned = apply_policy(model, Policy({"encoder.layers.0.self_attn": 0.5, "encoder.layers.1.self_attn": 0.5}), graph=g)
    for layer in pruned.encoder.layers:
        attn = layer.self_attn
        assert (attn.num_attention_heads, attn.attention_head_size, attn.query.out_features, attn.out_proj.in_features) == (2, 4, 8, 8)
        assert attn.out_proj.out_features == E  # the width around it is kept
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters()) - 2 * (3 * (8 * E + 8) + 8 * E)
    with torch.no_grad():
        assert pruned(x).shape == (4, 3)


def test_split_heads_surgery_equals_the_masked_model_and_macs_are_predicted():
    model = token_model()
    split_attention_heads(model)
    g = PrunableGraph(model, x_tokens(2))
    report = check_units(g, ratios=(0.5, 0.25))
    assert report.failed == {} and set(report.passed) == set(g.unit_names)
    policy = Policy({"encoder.layers.0.self_attn": 0.75, "encoder.layers.1.linear1": 0.5, g.out_owner["embed"]: 0.25}, ("encoder.layers.1",))
    pruned = apply_policy(model, policy, graph=g)
    assert isinstance(pruned.encoder.layers[1], SkipLayer)
    assert g.macs_for(policy.ratios, policy.drop) == count_macs(record_layer_specs(pruned, g.example_input))
    attention = 2 * SEQ * SEQ * 4  # one head of 4 left: Q·Kᵀ and attn·V
    assert any(s.kind == "dotproductattention" and s.groups == 1 for s in record_layer_specs(pruned, g.example_input))
    assert g.macs_for(policy.ratios, policy.drop) > attention
    fresh = token_model(seed=5)
    split_attention_heads(fresh)
    replay_history(fresh, pruning_history(pruned), g.example_input)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(x_tokens()), pruned(x_tokens()), atol=1e-6)


def test_splitting_names_only_multihead_attention():
    with pytest.raises(KeyError, match="not nn.MultiheadAttention"):
        split_attention_heads(token_model(), ["embed"])
    model = copy.deepcopy(token_model())
    model.encoder.layers[0].self_attn = nn.MultiheadAttention(E, HEADS, add_bias_kv=True, batch_first=True)
    assert split_attention_heads(model) == ["encoder.layers.1.self_attn"]  # bias_k/bias_v: left tied


def test_a_model_with_pruned_split_heads_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from autoprune.formats.onnx import export_onnx

    model = token_model()
    split_attention_heads(model)
    g = PrunableGraph(model, x_tokens(2))
    pruned = apply_policy(model, Policy({"encoder.layers.0.self_attn": 0.5, "encoder.layers.1.self_attn": 0.75}), graph=g).eval()
    report = export_onnx(pruned, x_tokens(), tmp_path / "tokens.onnx")
    assert report["max_abs_diff"] is not None and report["max_abs_diff"] < 1e-4
