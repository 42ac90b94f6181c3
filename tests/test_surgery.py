"""Structural surgery: pruned copies really shrink, leave the original alone, and can be saved and replayed."""

import copy
import io

import pytest
import torch
from torch import nn

from autoprune.errors import ConfigError, PolicyError
from autoprune.graph.importance import IMPORTANCES
from autoprune.graph.policy import Policy
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_iteratively, apply_policy, pruning_history, replay_history
from autoprune.zoo import MODEL_NAMES


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def out_channels(model: nn.Module, name: str) -> int:
    return model.get_submodule(name).weight.shape[0]


def state_dicts_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def half_and_drop(g: PrunableGraph) -> Policy:
    """Every unit at 50%, plus the second droppable block when the model has one."""
    return Policy.uniform(g.unit_names, 0.5, drop=g.block_names[1:2])


# --------------------------------------------------------------- apply_policy


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pruned_copy_is_smaller_and_the_original_is_untouched(graphs, name, example_input):
    g = graphs[name]
    model = g.model
    before_state = copy.deepcopy(model.state_dict())
    before_params = n_params(model)
    with torch.no_grad():
        before_out = model(example_input)

    policy = half_and_drop(g)
    pruned = apply_policy(model, policy, graph=g)

    assert pruned is not model
    kept = g.kept(policy.ratios)
    for unit in g.units:
        if not any(unit.name.startswith(b + ".") for b in policy.drop):
            assert out_channels(pruned, unit.name) == kept[unit.name] == unit.features.channels // 2
    for block in policy.drop:
        assert isinstance(pruned.get_submodule(block), nn.Identity)
    assert n_params(pruned) < 0.4 * before_params
    with torch.no_grad():
        out = pruned.eval()(example_input)
        assert out.shape == before_out.shape and torch.isfinite(out).all()
        assert n_params(model) == before_params
        assert torch.equal(model(example_input), before_out)
    assert all(torch.equal(v, before_state[k]) for k, v in model.state_dict().items())


def test_depthwise_convs_keep_groups_equal_to_their_channels(graphs):
    pruned = apply_policy(graphs["mobilenetv2"].model, half_and_drop(graphs["mobilenetv2"]), graph=graphs["mobilenetv2"])
    depthwise = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels == m.weight.shape[0] for m in depthwise)


def test_dropping_a_block_alone_leaves_every_other_layer_dense(graphs, example_input):
    g = graphs["resnet20"]
    pruned = apply_policy(g.model, Policy({}, ("layer2.1",)), graph=g)
    assert isinstance(pruned.layer2[1], nn.Identity)
    assert n_params(g.model) - n_params(pruned) == sum(p.numel() for p in g.module("layer2.1").parameters())
    assert pruned(example_input).shape == (2, 10)


def test_empty_policy_gives_an_identical_copy(graphs, example_input):
    g = graphs["vgg_small"]
    pruned = apply_policy(g.model, Policy(), graph=g)
    assert state_dicts_equal(pruned, g.model)
    assert torch.equal(pruned(example_input), g.model(example_input))


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_applying_the_same_policy_twice_gives_identical_weights(graphs, name, make_model, example_input):
    g = graphs[name]
    policy = Policy({u: 0.1 + 0.6 * i / len(g.unit_names) for i, u in enumerate(g.unit_names)}, tuple(g.block_names[:1]))
    a = apply_policy(g.model, policy, graph=g)
    b = apply_policy(g.model, policy, graph=g)
    # also through a freshly built graph on an identically initialised model
    twin = make_model(name)
    c = apply_policy(twin, policy, example_input=example_input)
    assert state_dicts_equal(a, b) and state_dicts_equal(a, c)


def test_graph_is_built_from_example_input_when_not_given(graphs, example_input):
    g = graphs["mlp"]
    direct = apply_policy(g.model, Policy({"net.1": 0.5}), example_input=example_input)
    assert direct.net[1].out_features == 64 and direct.net[4].in_features == 64


def test_without_graph_or_example_input_is_a_policy_error(graphs):
    with pytest.raises(PolicyError, match="needs either a graph or an example_input"):
        apply_policy(graphs["mlp"].model, Policy())


def test_graph_of_another_model_is_a_policy_error(graphs, make_model):
    with pytest.raises(PolicyError, match="different model object"):
        apply_policy(make_model("mlp"), Policy(), graph=graphs["mlp"])


# ------------------------------------------------------------------ importance


def mlp_with_dead_channels(make_model, example_input):
    """The digits MLP with its first hidden layer's even channels zeroed in every layer that touches them.

    The odd channels get a positive BN shift so that every one of them is active (a channel that
    ReLU silences on every sample would rightly score zero under the Taylor criterion too).
    """
    model = make_model("mlp", seed=1)
    dead = torch.arange(0, 128, 2)
    with torch.no_grad():
        model.net[2].bias[1::2] = 1.0
        model.net[1].weight[dead] = 0
        model.net[1].bias[dead] = 0
        model.net[2].weight[dead] = 0
        model.net[2].bias[dead] = 0
        model.net[4].weight[:, dead] = 0
    return model, dead


@pytest.mark.parametrize("criterion", IMPORTANCES.names())
def test_every_criterion_prunes_dead_channels_first(criterion, make_model, example_input, digits):
    model, dead = mlp_with_dead_channels(make_model, example_input)
    alive = torch.arange(1, 128, 2)
    g = PrunableGraph(model, example_input)
    pruned = apply_policy(
        model, Policy({"net.1": 0.5}), graph=g, importance=criterion,
        batches=lambda: digits.train.subset(128).batches(64),
    )
    assert torch.equal(pruned.net[1].weight, model.net[1].weight[alive])
    assert torch.equal(pruned.net[4].weight, model.net[4].weight[:, alive])
    with torch.no_grad():
        assert torch.allclose(pruned(digits.val.x), model(digits.val.x), atol=1e-5)  # dead channels carried nothing


def test_taylor_without_batches_is_a_policy_error(graphs):
    g = PrunableGraph(copy.deepcopy(graphs["mlp"].model), graphs["mlp"].example_input)
    with pytest.raises(PolicyError, match="'taylor' needs training batches"):
        apply_policy(g.model, Policy({"net.1": 0.5}), graph=g, importance="taylor")


def test_unknown_criterion_is_a_config_error_listing_the_criteria(graphs):
    with pytest.raises(ConfigError, match=r"^pruning.importance: unknown importance criterion 'l3'; allowed: 'l1', 'l2', 'taylor', 'bn_scale', 'activation' or 'package.module:Class'$"):
        apply_policy(graphs["mlp"].model, Policy(), graph=graphs["mlp"], importance="l3")


# ---------------------------------------------------------------------- round_to


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg_small", "mlp"])
def test_round_to_8_gives_channel_counts_in_multiples_of_8(graphs, name):
    g = graphs[name]
    policy = Policy.uniform(g.unit_names, 0.3)  # 16 * 0.7 = 11.2: not a multiple on its own
    plain = apply_policy(g.model, policy, graph=g)
    rounded = apply_policy(g.model, policy, graph=g, round_to=8)
    assert any(out_channels(plain, u) % 8 for u in g.unit_names)
    for u in g.units:
        assert out_channels(rounded, u.name) % 8 == 0
        assert out_channels(rounded, u.name) == g.kept(policy.ratios, round_to=8)[u.name]


# ------------------------------------------------------------------- iterative


@pytest.mark.parametrize("name", ["resnet20", "vgg_small"])
def test_iterative_pruning_reaches_the_one_shot_channel_counts(graphs, name, example_input):
    g = graphs[name]
    policy = Policy({u: 0.25 + 0.5 * (i % 2) for i, u in enumerate(g.unit_names)}, tuple(g.block_names[:1]))
    sizes_seen = []
    iterative = apply_iteratively(
        g.model, policy, example_input=example_input, steps=3, recover=lambda m: sizes_seen.append(n_params(m))
    )
    one_shot = apply_policy(g.model, policy, graph=g)

    assert len(sizes_seen) == 2
    assert n_params(g.model) > sizes_seen[0] > sizes_seen[1] > n_params(iterative)
    surviving = [u for u in g.unit_names if not u.startswith(tuple(b + "." for b in policy.drop))]
    assert [out_channels(iterative, u) for u in surviving] == [out_channels(one_shot, u) for u in surviving]
    assert n_params(iterative) == n_params(one_shot)
    assert len(pruning_history(iterative)) == 3
    assert iterative(example_input).shape == (2, 10)


def test_iterative_pruning_with_one_step_is_one_shot(graphs, example_input):
    g = graphs["vgg_small"]
    policy = Policy.uniform(g.unit_names, 0.4)
    calls = []
    once = apply_iteratively(g.model, policy, example_input=example_input, steps=1, recover=calls.append)
    assert calls == []
    assert state_dicts_equal(once, apply_policy(g.model, policy, graph=g))


def test_iterative_steps_below_one_is_a_policy_error(graphs, example_input):
    with pytest.raises(PolicyError, match="steps: 0 must be >= 1"):
        apply_iteratively(graphs["mlp"].model, Policy(), example_input=example_input, steps=0)


# ------------------------------------------------------------- save and replay


def save_and_restore(pruned: nn.Module, fresh: nn.Module, example_input: torch.Tensor) -> nn.Module:
    buf = io.BytesIO()
    torch.save({"state_dict": pruned.state_dict(), "history": pruning_history(pruned)}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    replay_history(fresh, saved["history"], example_input)
    fresh.load_state_dict(saved["state_dict"])
    return fresh.eval()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pruned_model_round_trips_through_weights_only_checkpoint(graphs, name, make_model, example_input):
    g = graphs[name]
    pruned = apply_policy(g.model, half_and_drop(g), graph=g).eval()
    restored = save_and_restore(pruned, make_model(name, seed=9), example_input)
    with torch.no_grad():
        assert torch.allclose(restored(example_input), pruned(example_input), atol=1e-6)
    assert n_params(restored) == n_params(pruned)
    assert pruning_history(restored) == pruning_history(pruned)


def test_iteratively_pruned_model_round_trips_through_its_history(graphs, make_model, example_input):
    g = graphs["resnet20"]
    policy = Policy.uniform(g.unit_names, 0.5, drop=("layer3.2",))
    pruned = apply_iteratively(g.model, policy, example_input=example_input, steps=2).eval()
    restored = save_and_restore(pruned, make_model("resnet20", seed=9), example_input)
    with torch.no_grad():
        assert torch.allclose(restored(example_input), pruned(example_input), atol=1e-6)


def test_dense_model_has_empty_history_and_pruning_twice_stacks_it(graphs):
    g = graphs["mlp"]
    assert pruning_history(g.model) == []
    once = apply_policy(g.model, Policy({"net.1": 0.5}), graph=g)
    twice = apply_policy(once, Policy({"net.4": 0.5}), graph=PrunableGraph(once, g.example_input))
    assert [len(s["prune"]) for s in pruning_history(twice)] == [1, 1]
    assert pruning_history(twice)[0] == pruning_history(once)[0]


# ------------------------------------------------------------------ bad policies


def test_policy_naming_an_unknown_unit_is_a_policy_error_naming_it(graphs):
    g = graphs["resnet20"]
    with pytest.raises(PolicyError, match=r"\['layer4.0.conv1'\]"):
        apply_policy(g.model, Policy({"layer4.0.conv1": 0.5}), graph=g)


def test_policy_dropping_an_unknown_or_non_residual_block_is_a_policy_error_naming_it(graphs):
    g = graphs["resnet20"]
    for block in ("layer2.0", "layer7.1"):
        with pytest.raises(PolicyError, match=rf"drops blocks the model does not have: \['{block}'\]"):
            apply_policy(g.model, Policy({}, (block,)), graph=g)


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_ratio_outside_zero_one_is_a_policy_error_naming_the_unit(graphs, ratio):
    g = graphs["resnet20"]
    with pytest.raises(PolicyError, match=rf"ratio of unit 'layer1.0.conv1' is {ratio}; allowed: 0 <= ratio < 1"):
        apply_policy(g.model, Policy({"layer1.0.conv1": ratio}), graph=g)


# ------------------------------------------------------- patterns of units (see also test_patterns.py)


def _pattern(name: str) -> nn.Module:
    """A model of the pattern catalogue (tests/test_patterns.py)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_pattern_catalogue", Path(__file__).with_name("test_patterns.py"))
    catalogue = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(catalogue)
    return catalogue.build(name)


def test_units_meeting_in_a_concat_are_requeried_and_the_others_replayed(example_input):
    g = PrunableGraph(_pattern("inception_concat"), example_input)
    assert {u.name for u in g.units if u.requery} == {"b1.0", "b3.0", "b5.0"}
    assert {u.name for u in g.units if not u.requery} == {"stem.0", "fuse.0"}


def test_cutting_every_concat_branch_shrinks_the_fuse_input_by_their_sum(example_input):
    g = PrunableGraph(_pattern("inception_concat"), example_input)
    pruned = apply_policy(g.model, Policy({"b1.0": 0.5, "b3.0": 0.25, "b5.0": 0.75}), graph=g)
    assert pruned.fuse[0].in_channels == 4 + 6 + 2
    assert pruned.eval()(example_input).shape == (2, 10)


def test_a_grouped_conv_keeps_its_groups_and_loses_the_same_channels_in_every_group(example_input):
    g = PrunableGraph(_pattern("grouped_conv"), example_input)
    assert g.unit("c1.0").allowed == [4, 8, 12, 16] and g.unit("g.0").allowed == list(range(4, 33, 4))
    pruned = apply_policy(g.model, Policy({"c1.0": 0.3, "g.0": 0.6}), graph=g)
    conv = pruned.g[0]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 12, 12)
    cut = dict((n, ix) for n, _, ix in pruning_history(pruned)[-1]["prune"])["c1.0"]
    assert sorted(i % 4 for i in cut) == [cut[0] % 4] * 4  # the same position in each of the 4 groups


def test_attention_left_tied_to_its_width_loses_whole_heads_with_it(example_input):
    g = PrunableGraph(_pattern("multihead_attention"), example_input, split_heads=False)
    assert g.unit("c1.0").allowed == [8, 16, 24, 32]
    pruned = apply_policy(g.model, Policy({"c1.0": 0.5}), graph=g)
    attn = pruned.attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (16, 2, 8)


def test_split_attention_loses_whole_heads_and_keeps_its_head_size_and_width(example_input):
    g = PrunableGraph(_pattern("multihead_attention"), example_input)
    assert g.split_heads == ("attn",) and g.unit("attn").allowed == [8, 16, 24, 32]
    assert g.unit("c1.0").allowed == list(range(1, 33))  # the stream is a width of its own now
    pruned = apply_policy(g.model, Policy({"attn": 0.5}), graph=g)
    attn = pruned.attn
    assert (attn.num_attention_heads, attn.attention_head_size, attn.out_proj.out_features) == (2, 8, 32)
    assert isinstance(g.model.attn, nn.MultiheadAttention)  # the model given is never modified


def test_a_detached_probe_leaves_the_unit_it_reads_dense_with_or_without_model_ignore(example_input):
    for ignored in ((), ("probe",)):
        g = PrunableGraph(_pattern("detached_layer"), example_input, ignored=ignored)
        assert g.output_layer == "fc" and g.invisible == ["probe"]
        assert g.unit_names == ["c1.0"] and "'probe'" in g.skipped["c2.0"]


def test_a_ratio_that_would_empty_a_tiny_unit_keeps_one_channel(example_input):
    g = PrunableGraph(_pattern("tiny_units"), example_input)
    assert "att" not in g.unit_names and g.unit("thin.0").allowed == [1, 2]
    assert g.kept({"thin.0": 0.8})["thin.0"] == 1
    assert apply_policy(g.model, Policy.uniform(g.unit_names, 0.8), graph=g).thin[0].out_channels == 1
