"""Baseline searchers (random, uniform, sensitivity) and the sensitivity plot."""

import logging

import pytest
import torch
from helpers import fast_settings, search

from autoprune.errors import ConfigError
from autoprune.graph.policy import Policy
from autoprune.objective.budget import Budget
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search import get_searcher
from autoprune.search.base import confirm_best
from autoprune.search.baselines import largest_ratio, make_feasible
from autoprune.tracking.plots import plot_sensitivity


def predicted(evaluator, policy):
    return evaluator.predicted_value(policy.ratios, policy.drop)


def test_random_search_repairs_every_sample_into_the_budget(evaluator):
    result = search("random", evaluator, 5)
    assert len(result.history) == 5
    assert all(e.metrics.feasible and predicted(evaluator, e.policy) <= 0.6 for e in result.history)
    assert result.best.metrics.feasible
    assert len({e.policy.key() for e in result.history}) == 5


def test_random_search_is_reproducible_for_a_seed(resnet_evaluator):
    runs = [[e.policy for e in search("random", resnet_evaluator.with_budget(resnet_evaluator.budget), 3).history] for _ in range(2)]
    assert runs[0] == runs[1]


def test_random_search_leaves_out_units_of_dropped_blocks(evaluator):
    result = search("random", evaluator, 2, drop_prob=1.0)
    for e in result.history:
        assert set(e.policy.drop) == set(evaluator.block_names)
        assert not any(u.startswith(b + ".") for u in e.policy.ratios for b in e.policy.drop)


def test_make_feasible_blends_as_little_as_needed(evaluator):
    policy = make_feasible(evaluator, {u: 0.1 for u in evaluator.unit_names}, [])
    ratios = set(policy.ratios.values())
    assert len(ratios) == 1 and 0.1 < ratios.pop() < evaluator.max_ratio
    assert 0.58 < predicted(evaluator, policy) <= 0.6
    already = Policy.uniform(evaluator.unit_names, 0.5)
    assert make_feasible(evaluator, already.ratios, []) == already


def test_uniform_uses_one_ratio_no_drops_and_just_meets_the_budget(evaluator):
    result = search("uniform", evaluator, 8)
    policy = result.best.policy
    (ratio,) = set(policy.ratios.values())
    assert set(policy.ratios) == set(evaluator.unit_names) and policy.drop == ()
    assert result.best.metrics.feasible and result.extras["ratio"] == ratio
    # a MAC budget is predicted exactly: one evaluation, and any less pruning misses the target
    assert len(result.history) == 1
    assert predicted(evaluator, Policy.uniform(evaluator.unit_names, ratio - 0.03)) > 0.6


def test_uniform_refines_on_measured_latency_within_max_evals(resnet_evaluator):
    ev = resnet_evaluator.with_budget(Budget(metric="latency", target=0.7))
    result = search("uniform", ev, 20, max_evals=4, tolerance=0.05)
    assert 1 <= len(result.history) <= 4
    # one ratio everywhere; blocks only when this machine's table says channels alone miss 0.7
    drop = ev.drops_to_reach()
    assert all(len(set(e.policy.ratios.values())) == 1 and e.policy.drop == drop for e in result.history)
    assert result.extras["drop"] == list(drop)


def test_uniform_drops_the_fewest_blocks_when_channels_alone_miss_the_target(resnet_evaluator):
    at_max = {u: resnet_evaluator.max_ratio for u in resnet_evaluator.unit_names}
    channels_only, everything = resnet_evaluator.predicted_value(at_max), resnet_evaluator.min_reachable()
    ev = resnet_evaluator.with_budget(Budget(metric="macs", target=(channels_only + everything) / 2))
    result = search("uniform", ev, 8)
    policy = result.best.policy
    assert result.best.metrics.feasible and len(set(policy.ratios.values())) == 1
    assert policy.drop and list(policy.drop) == result.extras["drop"]
    assert set(policy.drop) < set(ev.block_names)
    # the fewest: one block fewer misses the target even at max_ratio
    assert ev.predicted_value(at_max, policy.drop[:-1]) > ev.target


def test_sensitivity_measures_every_unit_and_block_then_meets_the_budget(evaluator, tmp_path):
    result = search("sensitivity", evaluator, 34, levels=[0.4, 0.9])
    curves = result.extras["sensitivity"]
    assert set(curves) == set(evaluator.unit_names)
    # levels are capped at max_ratio 0.8; the first point is the dense model
    assert all([r for r, _ in c] == [0.0, 0.4, 0.8] for c in curves.values())
    assert all(c[0][1] == evaluator.dense_accuracy for c in curves.values())
    assert set(result.extras["block_sensitivity"]) == set(evaluator.block_names)
    n_measured = 2 * len(curves) + len(evaluator.block_names)
    assert n_measured < len(result.history) <= n_measured + 3
    assert result.best.metrics.feasible
    assert result.best in result.history[n_measured:]

    png = plot_sensitivity(curves, tmp_path / "plots" / "sensitivity.png", blocks=result.extras["block_sensitivity"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sensitivity_with_few_episodes_uses_fewer_levels_and_warns(fresh_mlp_evaluator, caplog):
    ev = fresh_mlp_evaluator
    with caplog.at_level(logging.WARNING, logger="autoprune.search.baselines"):
        result = search("sensitivity", ev, 5)
    assert "allow only 2 of the 4 levels" in caplog.text
    assert all(len(c) == 3 for c in result.extras["sensitivity"].values())
    assert len(result.history) <= 5 and result.best.metrics.feasible


def test_sensitivity_with_too_few_episodes_for_one_level_raises(fresh_mlp_evaluator):
    with pytest.raises(ConfigError, match="at least 3"):
        search("sensitivity", fresh_mlp_evaluator, 2)


def test_largest_ratio_interpolates_the_monotone_accuracy_curve():
    curve = [(0.0, 0.9), (0.5, 0.8), (1.0, 0.5)]
    assert largest_ratio(curve, 0.85) == pytest.approx(0.25)
    assert largest_ratio(curve, 0.95) == 0.0
    assert largest_ratio(curve, 0.4) == 1.0
    # accuracy that recovers with more pruning does not count: the curve is made monotone
    assert largest_ratio([(0.0, 0.9), (0.4, 0.7), (0.8, 0.88)], 0.8) == pytest.approx(0.2)


def test_unknown_searcher_raises_config_error_naming_it():
    with pytest.raises(ConfigError, match="'nosuch'.*allowed: .*uniform"):
        get_searcher("nosuch")


@pytest.mark.parametrize("name,params,culprit", [("random", {"drop_prob": 2}, "drop_prob"), ("sensitivity", {"levels": [1.5]}, "levels")])
def test_bad_baseline_hyper_parameters_raise_config_error(evaluator, name, params, culprit):
    with pytest.raises(ConfigError, match=culprit):
        search(name, evaluator, 3, **params)


def test_best_latency_policy_is_confirmed_by_a_second_measurement(resnet_evaluator):
    ev = resnet_evaluator.with_budget(Budget(metric="latency", target=0.8))
    result = search("random", ev, 4)
    confirmed = result.extras["confirmed_latency"]
    assert 1 <= len(confirmed) <= 3
    assert result.best.index in [c["episode"] for c in confirmed]
    assert all(c["confirmed_ratio"] > 0 for c in confirmed)


def test_confirmation_prunes_with_the_evaluators_criterion_batches_and_loss(trained_mlp, digits):
    ev = PolicyEvaluator(trained_mlp, digits, budget=Budget(metric="latency", target=0.9), importance="taylor", **fast_settings())
    ev.scorer.loss = lambda out, y: torch.nn.functional.cross_entropy(out, y)  # a loss of its own, as an encoder's proxy has
    ev.evaluate(Policy.uniform(ev.unit_names, 0.5))
    (evaluated,) = ev.history
    best, confirmed = confirm_best(ev, [evaluated], top=1)  # the channels taylor kept, ranked with the same batches and loss
    assert best is evaluated and [c["episode"] for c in confirmed] == [evaluated.index]
    assert confirmed[0]["confirmed_ratio"] > 0


def test_layer_drop_prunes_no_channel_and_drops_the_least_harmful_blocks_until_feasible(resnet_evaluator):
    ev = resnet_evaluator.with_budget(Budget(metric="macs", target=0.8))
    result = search("layer_drop", ev, 30)
    best = result.best
    assert best.metrics.feasible and set(best.policy.ratios.values()) == {0.0}
    order = result.extras["order"]
    assert tuple(order) == best.policy.drop and len(order) >= 1
    # the fewest blocks: without the last one chosen, the target is missed
    assert not ev.evaluate(Policy(dict(best.policy.ratios), tuple(order[:-1]))).feasible
    # each step kept the block whose drop (next to the earlier ones) scored the best proxy
    for k, step in enumerate(result.extras["steps"]):
        tried = [e for e in result.history if len(e.policy.drop) == k + 1 and e.policy.drop[:k] == tuple(order[:k])]
        assert len(tried) == len(ev.block_names) - k
        assert step["proxy"] == max(e.metrics.accuracy for e in tried)


def test_layer_drop_on_a_model_without_blocks_is_a_config_error(mlp_evaluator):
    with pytest.raises(ConfigError, match="'layer_drop' needs droppable blocks"):
        search("layer_drop", mlp_evaluator.with_budget(Budget(metric="macs", target=0.8)), 3)
