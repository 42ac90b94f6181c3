"""Importance on a decoder: Minitron's activations pick silent heads and channels, ShortGPT's block influence picks a layer that does nothing."""

import pytest
import torch

from autoprune.graph.decoder import DecoderGraph
from autoprune.graph.decoder_importance import activation_scores, block_influence, magnitude_scores
from autoprune.graph.policy import Policy
from autoprune.zoo.decoder import tiny_decoder_model

BATCHES = [torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(s)) for s in range(2)]


@pytest.fixture
def model():
    m = tiny_decoder_model(layers=3, heads=6, kv_heads=2, hidden=48, mlp=64)
    with torch.no_grad():
        a = m.model.layers[1].self_attn
        a.q_proj.weight[8:16] *= 3  # query head 1 (group 0) has big weights ...
        a.o_proj.weight[:, 8:16] *= 3
        a.v_proj.weight[0:8] = 0  # ... but KV group 0 is silent: its query heads 0..2 output zeros
        m.model.layers[1].mlp.gate_proj.weight[5] = 0  # channel 5 outputs silu(0) * up = 0
        layer2 = m.model.layers[2]
        layer2.self_attn.o_proj.weight.zero_()  # layer 2 adds nothing to the residual stream
        layer2.mlp.down_proj.weight.zero_()
    return m


def test_activation_scores_keep_the_heads_and_channels_that_carry_signal(model):
    scores = activation_scores(model, BATCHES)
    assert [tuple(s.query.shape) + tuple(s.mlp.shape) for s in scores.layers] == [(6, 64)] * 3
    layer1 = scores.layers[1]
    assert layer1.query[:3].max() < 1e-12 < layer1.query[3:].min() and layer1.mlp[5] == 0
    plan = DecoderGraph(model).plan(Policy({"model.layers.1.self_attn.kv_groups": 0.5, "model.layers.1.mlp": 0.02}), scores)
    assert plan.layers[1].kv_keep == (1,) and 5 not in plan.layers[1].mlp_keep
    # magnitude alone would keep the silent group (its query head 1 has the biggest weights)
    by_weight = DecoderGraph(model).plan(Policy({"model.layers.1.self_attn.kv_groups": 0.5}), magnitude_scores(model))
    assert by_weight.layers[1].kv_keep == (0,)


def test_block_influence_is_zero_for_a_layer_that_leaves_its_input_unchanged(model):
    bi = block_influence(model, BATCHES)
    assert len(bi) == 3 and bi[2] == pytest.approx(0.0, abs=1e-9) and min(bi[0], bi[1]) > 1e-4
    assert not model.training
