"""The baselines are always candidates: every seeded search's pool holds uniform, global and layer_drop at the target."""

from __future__ import annotations

import optuna
import pytest
import torch
from helpers import fast_settings, search

from autoprune.config.schema import SearchConfig
from autoprune.objective.budget import Budget
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search import searcher_class, searchers_that
from autoprune.search.pool import baseline_pool
from autoprune.zoo.models import CifarResNet


@pytest.fixture(scope="module")
def resnet14(digits) -> PolicyEvaluator:
    """An untrained ResNet-14 of width 4 under a MAC budget (predicted exactly): nine units, droppable blocks."""
    torch.manual_seed(0)
    return PolicyEvaluator(CifarResNet(14, 1, 10, width=4).eval(), digits, budget=Budget(metric="macs", target=0.8), **fast_settings())


def test_the_pool_holds_uniform_global_and_layer_drop_each_predicted_to_meet_the_target(resnet14):
    ev = resnet14.with_budget(resnet14.budget)
    pool = baseline_pool(ev)
    assert list(pool) == ["uniform", "global", "layer_drop"]
    for name, policy in pool.items():
        assert ev.predicted_value(policy.ratios, policy.drop) <= ev.target + 1e-9, name
    assert len(set(pool["uniform"].ratios.values())) == 1
    assert len(set(pool["global"].ratios.values())) > 1
    assert pool["layer_drop"].drop and not any(pool["layer_drop"].ratios.values()), "depth only: no channel pruned"
    assert not ev.history, "the pool is predicted, not measured"


def test_seeding_is_on_by_default_and_the_baseline_searchers_are_not_seeded():
    assert SearchConfig().seed_baselines is True
    assert {"optuna", "ppo"} <= set(searchers_that(lambda s: s.seeded))
    for name in ("uniform", "global", "layer_drop", "random", "sensitivity"):
        assert not searcher_class(name).seeded, name


@pytest.mark.parametrize("name, params", [("optuna", {"n_startup_trials": 1}), ("ppo", {})])
def test_a_seeded_search_with_a_budget_of_one_episode_still_evaluates_every_baseline_and_never_returns_worse(resnet14, name, params):
    ev = resnet14.with_budget(resnet14.budget)
    pool = baseline_pool(ev)
    result = search(name, ev, 1, seeds=pool, **params)
    evaluated = {e.policy.key(): e for e in result.history}
    assert all(p.key() in evaluated for p in pool.values()), "a budget smaller than the pool still evaluates every seed"
    assert set(result.extras["seeds"]) == set(pool)
    best_seed = max((evaluated[p.key()] for p in pool.values()), key=lambda e: e.metrics.reward)
    assert result.best.metrics.reward >= best_seed.metrics.reward


def test_seeds_count_against_the_budget_and_come_first(resnet14):
    ev = resnet14.with_budget(resnet14.budget)
    pool = baseline_pool(ev)
    result = search("optuna", ev, 6, seeds=pool, n_startup_trials=2)
    assert len(result.history) == 6
    assert [e.policy.key() for e in result.history[: len(pool)]] == [p.key() for p in pool.values()]
    assert result.best.metrics.reward >= max(e.metrics.reward for e in result.history[: len(pool)])


def test_a_study_is_seeded_once_and_a_resumed_search_evaluates_no_seed_again(resnet14, tmp_path):
    from autoprune.search.optuna_search import SEED_ATTR, SEEDED_ATTR

    url = f"sqlite:///{tmp_path}/study.db"
    pool = baseline_pool(resnet14)
    search("optuna", resnet14.with_budget(resnet14.budget), 4, seeds=pool, storage=url, n_startup_trials=1)
    resumed = search("optuna", resnet14.with_budget(resnet14.budget), 6, seeds=pool, storage=url, n_startup_trials=1)
    study = optuna.load_study(study_name="autoprune", storage=url)
    seeded = [t.user_attrs[SEED_ATTR] for t in study.trials if SEED_ATTR in t.user_attrs]
    assert seeded == list(pool) and study.user_attrs[SEEDED_ATTR] == list(pool)
    assert len(study.trials) == 6 and len(resumed.history) == 6, "the seeds are trials of the study, counted once"
    assert resumed.extras["seeds"] == {name: i for i, name in enumerate(pool)}
