"""Decoder units found by structure: GQA-aware heads, SwiGLU width, whole layers; surgery that matches the masked dense model and still generates."""

import pytest
import torch
from torch import nn

from autoprune.errors import ModelError, PolicyError
from autoprune.graph.decoder import DecoderGraph
from autoprune.graph.decoder_importance import magnitude_scores
from autoprune.graph.decoder_surgery import check_decoder, decoder_sizes, masked_decoder, prune_decoder
from autoprune.graph.policy import Policy
from autoprune.graph.units import UnitKind
from autoprune.zoo.decoder import tiny_decoder_model

ARCHS = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def tiny(arch="LlamaForCausalLM", layers=3):
    # 6 query heads in 2 KV groups of 3: a GQA decoder whose groups can lose a query head
    return tiny_decoder_model(arch, layers=layers, heads=6, kv_heads=2, hidden=48, mlp=64)


def prune(model, ratios, drop=()):
    return prune_decoder(model, DecoderGraph(model).plan(Policy(ratios, tuple(drop)), magnitude_scores(model)))


def test_each_layer_has_kv_groups_query_heads_per_group_mlp_width_and_is_droppable():
    g = DecoderGraph(tiny(layers=2))
    assert [(u.name, u.kind, u.size) for u in g.units[:3]] == [
        ("model.layers.0.self_attn.kv_groups", UnitKind.HEADS, 2),
        ("model.layers.0.self_attn.query_heads", UnitKind.HEADS, 3),
        ("model.layers.0.mlp", UnitKind.FFN, 64),
    ]
    assert len(g.units) == 6 and g.block_names == ["model.layers.0", "model.layers.1"]


@pytest.mark.parametrize("arch", ARCHS)
def test_surgery_matches_the_masked_dense_model_on_every_unit_and_layer(arch):
    model = tiny(arch)
    report = check_decoder(model)
    assert report.failed == {}
    assert len(report.passed) == 9 + 3  # 3 units per layer, 3 layers
    assert max(report.max_diff.values()) <= 1e-5


def test_the_masked_reference_really_switches_heads_and_channels_off():
    model = tiny().double()
    g = DecoderGraph(model)
    ids = torch.randint(0, 256, (1, 10))
    for ratios in ({"model.layers.0.self_attn.query_heads": 0.34}, {"model.layers.1.self_attn.kv_groups": 0.5}, {"model.layers.2.mlp": 0.5}):
        with torch.no_grad():
            diff = (model(ids).logits - masked_decoder(model, g.plan(Policy(ratios), magnitude_scores(model)))(ids, use_cache=False).logits).abs().max()
        assert diff > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_query_heads_are_cut_inside_their_kv_group_and_kv_groups_with_their_query_heads(arch):
    model = tiny(arch)
    pruned = prune(model, {"model.layers.0.self_attn.query_heads": 0.34, "model.layers.1.self_attn.kv_groups": 0.5, "model.layers.2.mlp": 0.75})
    assert decoder_sizes(pruned) == [
        {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64},  # 2 of 3 query heads in each group
        {"num_attention_heads": 3, "num_key_value_heads": 1, "intermediate_size": 64},  # one group, its 3 query heads
        {"num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 16},
    ]
    assert [layer.self_attn.num_key_value_groups for layer in pruned.model.layers] == [2, 3, 3]
    assert pruned.config.autoprune["layers"] == decoder_sizes(pruned)
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (6, 2)  # the global config stays dense and valid
    a = pruned.model.layers[1].self_attn
    assert a.o_proj.in_features == a.q_proj.out_features == 24 and a.k_proj.out_features == a.v_proj.out_features == 8
    if arch == "Qwen2ForCausalLM":  # q/k/v biases are sliced with their rows
        assert (a.q_proj.bias.shape, a.k_proj.bias.shape) == ((24,), (8,))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("drop", [(), ("model.layers.0",)])
def test_a_pruned_decoder_generates_the_same_with_and_without_its_kv_cache(arch, drop):
    model = tiny(arch)
    pruned = prune(model, {"model.layers.1.self_attn.kv_groups": 0.5, "model.layers.2.self_attn.query_heads": 0.67, "model.layers.1.mlp": 0.5}, drop)
    ids = torch.randint(3, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cached = pruned.generate(ids, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = pruned.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached) and cached.shape == (1, 22)


@pytest.mark.parametrize("arch", ARCHS)
def test_dropped_layers_are_deleted_and_the_rest_renumbered_so_cached_decoding_stays_exact(arch):
    model = tiny(arch)
    pruned = prune(model, {}, ["model.layers.0", "model.layers.2"])
    assert len(pruned.model.layers) == pruned.config.num_hidden_layers == 1
    assert pruned.model.layers[0].self_attn.layer_idx == 0
    assert pruned.config.autoprune["source_layers"] == [1]
    if arch == "Qwen2ForCausalLM":
        assert pruned.config.layer_types == ["full_attention"]
    # a cached decode step equals the full forward pass (a pass-through layer 0 would break this)
    from transformers import DynamicCache

    ids = torch.randint(3, 256, (1, 9))
    with torch.no_grad():
        cache = DynamicCache(config=pruned.config)
        pruned(ids[:, :8], cache=cache, use_cache=True)
        step = pruned(ids[:, 8:], cache=cache, use_cache=True).logits[:, -1]
        full = pruned(ids, use_cache=False).logits[:, -1]
    assert torch.allclose(step, full, atol=1e-5)


def test_embeddings_tied_lm_head_norms_and_rotary_are_left_intact():
    model = tiny()
    pruned = prune(model, {n: 0.5 for n in DecoderGraph(model).unit_names}, ["model.layers.1"])
    assert pruned.lm_head.weight.data_ptr() == pruned.model.embed_tokens.weight.data_ptr()
    assert torch.equal(pruned.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert torch.equal(pruned.model.norm.weight, model.model.norm.weight)
    assert torch.equal(pruned.model.layers[0].input_layernorm.weight, model.model.layers[0].input_layernorm.weight)
    assert torch.equal(pruned.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    assert pruned.model.layers[0].self_attn.head_dim == 8


@pytest.mark.parametrize(("ratios", "drop", "says"), [
    ({"model.layers.0.self_attn.kv_groups": 1.0}, (), "removes every KV group of layer 0"),
    ({"model.layers.1.self_attn.query_heads": 1.0}, (), "removes every query head of each KV group of layer 1"),
    ({"model.layers.1.mlp": 1.0}, (), "removes every MLP channel of layer 1"),
    ({}, ("model.layers.0", "model.layers.1", "model.layers.2"), "drops every layer"),
    ({"model.layers.0.self_attn.heads": 0.5}, (), "unknown decoder unit"),
    ({"model.layers.0.mlp": -0.1}, (), "allowed: 0 <= ratio < 1"),
])  # fmt: skip
def test_a_policy_that_removes_a_whole_group_or_every_layer_is_refused_in_one_line(ratios, drop, says):
    with pytest.raises(PolicyError) as e:
        DecoderGraph(tiny()).plan(Policy(ratios, drop))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_model_without_decoder_layers_is_refused_naming_its_class():
    with pytest.raises(ModelError, match="Sequential has no Llama-family decoder layers"):
        DecoderGraph(nn.Sequential(nn.Linear(2, 2)))
