"""Unit kinds: one type, one classifier, and every kind list derived from it.

* :class:`UnitKind` names the channel kinds (a ratio) and the droppable kinds (keep or drop);
* the classifier gives each unit and block of real zoo models and a real encoder its kind;
* the agent's one-hot features and the transfer's allowed kinds are that type's channel kinds.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from autoprune.errors import PolicyError
from autoprune.graph.policy import Policy, model_fingerprint
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.units import CHANNEL_KINDS, DROPPABLE_KINDS, SPATIAL_KINDS, UnitKind, block_kind, unit_kind
from autoprune.search.env import FEATURES, KIND_FEATURES
from autoprune.transfer.mapping import transfer_policy


def test_the_kinds_split_into_channel_and_droppable_kinds_in_a_fixed_order():
    assert [k.value for k in CHANNEL_KINDS] == ["conv", "depthwise", "linear", "heads", "ffn"]
    assert [k.value for k in DROPPABLE_KINDS] == ["block", "layer"]
    assert set(CHANNEL_KINDS) | set(DROPPABLE_KINDS) == set(UnitKind)
    assert [k for k in UnitKind if k.spatial] == list(SPATIAL_KINDS) == [UnitKind.CONV, UnitKind.DEPTHWISE]
    assert all(k.droppable for k in DROPPABLE_KINDS) and not any(k.droppable for k in CHANNEL_KINDS)
    assert json.dumps([UnitKind.HEADS]) == '["heads"]' and f"{UnitKind.FFN}" == "ffn"  # written as its value


def test_the_agent_observes_one_kind_feature_per_channel_kind_in_the_old_order():
    assert KIND_FEATURES == tuple(f"kind_{k}" for k in CHANNEL_KINDS)
    # saved agents observe this exact vector
    assert FEATURES[:7] == ("is_unit", "is_block", "kind_conv", "kind_depthwise", "kind_linear", "kind_heads", "kind_ffn")


@pytest.mark.parametrize(("root", "flags", "kind"), [
    (nn.Conv2d(4, 8, 3), {}, UnitKind.CONV),
    (nn.Conv2d(4, 8, 3), {"depthwise": True}, UnitKind.DEPTHWISE),
    (nn.Linear(4, 8), {}, UnitKind.LINEAR),
    (nn.Linear(4, 8), {"in_encoder_layer": True}, UnitKind.FFN),
    (nn.Linear(4, 8), {"whole_heads": True, "in_encoder_layer": True}, UnitKind.HEADS),
    (nn.Conv2d(4, 8, 1), {"in_encoder_layer": True}, UnitKind.CONV),  # only linear widths are FFN widths
])
def test_the_classifier_names_each_unit_kind(root, flags, kind):
    assert unit_kind(root, **{"depthwise": False, "whole_heads": False, "in_encoder_layer": False, **flags}) is kind


@pytest.mark.parametrize(("model", "kinds"), [
    ("resnet20", {UnitKind.CONV}),
    ("mobilenetv2", {UnitKind.CONV, UnitKind.DEPTHWISE}),
    ("mlp", {UnitKind.LINEAR}),
])
def test_zoo_models_have_the_unit_kinds_of_their_layers(model, kinds, make_model, example_input):
    graph = PrunableGraph(make_model(model), example_input)
    assert {u.features.kind for u in graph.units} == kinds
    assert {b.kind for b in graph.blocks} <= {UnitKind.BLOCK}
    assert graph.blocks or model == "mlp"


def test_an_encoders_units_are_heads_and_ffn_widths_and_its_layers_drop_as_layers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=32)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(1, 100, (2, 8))
    graph = PrunableGraph(model, (ids, torch.ones_like(ids)))
    assert sorted((u.name, u.features.kind) for u in graph.units) == [
        ("encoder.layer.0.attention.self", UnitKind.HEADS), ("encoder.layer.0.intermediate.dense", UnitKind.FFN),
        ("encoder.layer.1.attention.self", UnitKind.HEADS), ("encoder.layer.1.intermediate.dense", UnitKind.FFN),
    ]
    assert [(b.name, b.kind) for b in graph.blocks] == [("encoder.layer.0", UnitKind.LAYER), ("encoder.layer.1", UnitKind.LAYER)]
    assert block_kind(model.encoder.layer[0]) is UnitKind.LAYER and block_kind(nn.Sequential(nn.Linear(2, 2))) is UnitKind.BLOCK


def test_transfer_allows_exactly_the_channel_kinds(make_model, example_input):
    graph = PrunableGraph(make_model("resnet20"), example_input)
    fingerprint = model_fingerprint(graph)
    assert {u["kind"] for u in json.loads(json.dumps(fingerprint))["units"]} == {"conv"}
    fingerprint["units"][0]["kind"] = "block"  # a droppable kind is not a unit's
    with pytest.raises(PolicyError) as info:
        transfer_policy(Policy({}), fingerprint, graph)
    assert str(info.value).endswith(f"has kind 'block'; allowed: {[k.value for k in CHANNEL_KINDS]}")
