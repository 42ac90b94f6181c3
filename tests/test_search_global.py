"""The ``global`` baseline: Torch-Pruning's global magnitude pruning, its ratio bisected to the budget."""

import copy
import json
import warnings

import pytest
import torch
import torch_pruning as tp
from helpers import search, tiny_experiment, write_experiment

from autoprune.cli import main
from autoprune.config import load_config
from autoprune.errors import ConfigError
from autoprune.graph.prunable import PrunableGraph
from autoprune.objective.budget import Budget
from autoprune.search.global_pruning import global_ratios


def test_global_ranks_across_units_and_just_meets_a_mac_budget(evaluator):
    result = search("global", evaluator, 8)
    policy = result.best.policy
    assert result.best.metrics.feasible and policy.drop == ()
    assert set(policy.ratios) == set(evaluator.unit_names)
    # one threshold over all channels: units lose different fractions
    assert len({round(r, 3) for r in policy.ratios.values()}) > 3
    assert max(policy.ratios.values()) <= evaluator.max_ratio
    assert result.extras["ratios"] == policy.ratios and 0 < result.extras["global_ratio"] < 1
    # a MAC budget is predicted exactly: one evaluation, and a smaller global ratio misses the target
    assert len(result.history) == 1
    scores = evaluator.graph.importance(evaluator.importance)
    less = global_ratios(scores, result.extras["global_ratio"] - 0.03, evaluator.max_ratio)
    assert evaluator.predicted_value(less) > evaluator.target


def test_global_refines_on_measured_latency_within_max_evals(resnet_evaluator):
    ev = resnet_evaluator.with_budget(Budget(metric="latency", target=0.7))
    result = search("global", ev, 20, max_evals=3, tolerance=0.05)
    assert 1 <= len(result.history) <= 3
    # blocks only when this machine's table says every unit at max_ratio misses 0.7
    drop = ev.drops_to_reach()
    assert all(e.policy.drop == drop for e in result.history) and result.extras["drop"] == list(drop)
    # the first evaluation is the global ratio bisected on the table's prediction: ranked across units
    assert len(set(result.history[0].policy.ratios.values())) > 1


def torch_pruning_global_counts(model, example, ratio, ignored, p):
    """Channels Torch-Pruning's own global pruner removes per group root, read off interactively."""
    model = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(p=p), global_pruning=True,
            pruning_ratio=ratio, ignored_layers=[dict(model.named_modules())[n] for n in ignored],
        )
        names = {m: n for n, m in model.named_modules()}
        return {names[g[0].dep.target.module]: len(g[0].idxs) for g in pruner.step(interactive=True)}


@pytest.mark.parametrize("model_name,criterion,p", [("resnet20", "l1", 1), ("resnet20", "l2", 2), ("mobilenetv2", "l1", 1)])
def test_global_ratios_keep_the_channels_torch_pruning_global_pruner_keeps(trained_resnet20, make_model, example_input, model_name, criterion, p):
    model = trained_resnet20 if model_name == "resnet20" else make_model(model_name)
    graph = PrunableGraph(model, example_input)
    scores = graph.importance(criterion)
    for g in (0.2, 0.45):
        ours = global_ratios(scores, g, max_ratio=0.99)
        theirs = torch_pruning_global_counts(model, example_input, g, [graph.output_layer], p)
        assert set(theirs) <= set(ours)
        # the channel counts surgery keeps for our ratios are the ones Torch-Pruning keeps
        kept = graph.kept(ours)
        assert kept == {u: graph.unit(u).features.channels - theirs.get(u, 0) for u in ours}
        assert len(set(ours.values())) > 3


def test_global_caps_every_unit_at_max_ratio():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([5.0, 6.0, 7.0, 8.0])}
    # half of all channels: the four of "a" are the smallest
    assert global_ratios(scores, 0.5, max_ratio=0.8) == {"a": 0.8, "b": 0.0}
    assert global_ratios(scores, 0.25, max_ratio=0.8) == {"a": 0.5, "b": 0.0}
    assert global_ratios(scores, 0.5, max_ratio=0.5) == {"a": 0.5, "b": 0.0}
    assert global_ratios(scores, 0.0, max_ratio=0.8) == {"a": 0.0, "b": 0.0}
    assert global_ratios(scores, 1.0, max_ratio=0.8) == {"a": 0.8, "b": 0.8}


def test_global_refuses_a_criterion_that_is_not_magnitude(resnet_evaluator):
    ev = resnet_evaluator.with_budget(resnet_evaluator.budget)
    ev.importance = "taylor"
    with pytest.raises(ConfigError, match="pruning.importance: 'taylor'.*allowed: l1, l2"):
        search("global", ev, 2)


@pytest.mark.parametrize("params,culprit", [({"tolerance": -1}, "tolerance"), ({"max_evals": 0}, "max_evals")])
def test_global_bad_hyper_parameters_raise_config_error(evaluator, params, culprit):
    with pytest.raises(ConfigError, match=culprit):
        search("global", evaluator, 3, **params)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working directory (the cwd) with ``exp.yaml`` and a private baseline cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AUTOPRUNE_DATA", raising=False)
    write_experiment(tmp_path / "exp.yaml", tiny_experiment(name="glob", search={"searcher": "global", "episodes": 3}, train={"epochs": 1}))
    return tmp_path


def test_config_accepts_the_global_searcher(work):
    assert load_config("exp.yaml").search.searcher == "global"


def test_search_command_with_the_global_searcher_writes_a_policy_within_budget(work):
    with pytest.raises(SystemExit) as info:
        main(["search", "exp.yaml"])
    assert info.value.code in (0, None)
    policy = json.loads((work / "runs" / "glob" / "policy.json").read_text())
    assert policy["searcher"] == "global" and policy["drop"] == []
    assert len(policy["ratios"]) == 2 and len(set(policy["ratios"].values())) == 2
    assert policy["metrics"]["feasible"] and 0.55 < policy["metrics"]["macs_ratio"] <= 0.6
