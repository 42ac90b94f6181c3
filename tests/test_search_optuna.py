"""OptunaSearcher: every sampler, warm start, failed trials, determinism and resuming an sqlite study."""

import importlib.util

import optuna
import pytest
import torch
from helpers import fast_settings, search
from optuna.trial import TrialState

from autoprune.errors import ConfigError
from autoprune.objective.budget import Budget
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.objective.metrics import Evaluation
from autoprune.search import get_searcher
from autoprune.search.pool import baseline_pool
from autoprune.zoo.models import CifarResNet

HAS_CMAES = importlib.util.find_spec("cmaes") is not None


@pytest.fixture(scope="module")
def resnet14_evaluator(digits) -> PolicyEvaluator:
    """An untrained ResNet-14 of width 4: nine units and four droppable blocks, cheap to evaluate."""
    torch.manual_seed(0)
    return PolicyEvaluator(CifarResNet(14, 1, 10, width=4).eval(), digits, budget=Budget(metric="macs", target=0.6), **fast_settings())


def study_trials(url, name="autoprune"):
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


SAMPLER_PARAMS = [
    pytest.param({"sampler": "tpe", "n_startup_trials": 3}, id="tpe"),
    pytest.param({"sampler": "gp", "n_startup_trials": 3}, id="gp"),
    pytest.param({"sampler": "nsga2", "population_size": 4}, id="nsga2"),
    pytest.param({"sampler": "cmaes"}, id="cmaes", marks=pytest.mark.skipif(not HAS_CMAES, reason="cmaes not installed")),
]


@pytest.mark.parametrize("params", SAMPLER_PARAMS)
def test_each_sampler_finds_a_feasible_policy_under_a_mac_budget(fresh_mlp_evaluator, params):
    result = search("optuna", fresh_mlp_evaluator, 7, **params)
    assert result.searcher == "optuna" and len(result.history) == 7
    assert result.extras["trial_numbers"] == list(range(7)) and result.extras["resumed_trials"] == 0
    assert result.best is not None and result.best.metrics.feasible
    assert result.best.metrics.value <= fresh_mlp_evaluator.target
    for e in result.history:
        assert set(e.policy.ratios) == set(fresh_mlp_evaluator.unit_names)
        assert all(0.0 <= r <= fresh_mlp_evaluator.max_ratio for r in e.policy.ratios.values())
    if params["sampler"] == "nsga2":
        front = result.extras["pareto_trials"]
        assert front and set(front) <= set(range(7))
        assert all(result.history[i].metrics.feasible for i in front)


def test_block_drops_are_searched_as_binary_parameters(resnet14_evaluator):
    result = search("optuna", resnet14_evaluator, 5, seed=1)
    drops = [set(e.policy.drop) for e in result.history]
    assert all(d <= set(resnet14_evaluator.block_names) for d in drops)
    assert any(drops) and not all(d == drops[0] for d in drops)


def test_enqueued_policy_is_evaluated_first(resnet14_evaluator):
    units = resnet14_evaluator.unit_names
    warm = {"ratios": {units[0]: 0.5, units[3]: 0.25}, "drop": ["layer1.1"]}
    result = search("optuna", resnet14_evaluator, 2, enqueue=[warm])
    first = result.history[0].policy
    assert first.ratios == {u: {units[0]: 0.5, units[3]: 0.25}.get(u, 0.0) for u in units}
    assert first.drop == ("layer1.1",)


def test_enqueued_policy_with_unknown_unit_is_a_config_error(fresh_mlp_evaluator):
    with pytest.raises(ConfigError, match="enqueue.*'nope'"):
        search("optuna", fresh_mlp_evaluator, 2, enqueue=[{"ratios": {"nope": 0.5}}])


def test_unknown_sampler_is_a_config_error_naming_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"^search.sampler: unknown Optuna sampler 'anneal'; allowed: 'tpe', 'cmaes', 'nsga2', 'gp' or 'package.module:Class'$"):
        get_searcher("optuna", {"sampler": "anneal"})


def test_unknown_hyper_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown hyper-parameter\(s\) \['n_trials'\]"):
        get_searcher("optuna", {"n_trials": 5})


def test_heartbeat_interval_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match=r"heartbeat_interval: 0 must be None or an integer >= 1"):
        get_searcher("optuna", {"heartbeat_interval": 0})


@pytest.mark.skipif(HAS_CMAES, reason="cmaes is installed")
def test_cmaes_without_its_package_is_a_config_error_saying_what_to_install():
    with pytest.raises(ConfigError, match="pip install cmaes"):
        get_searcher("optuna", {"sampler": "cmaes"})


def test_same_seed_gives_the_same_startup_policies(fresh_mlp_evaluator):
    runs = [search("optuna", fresh_mlp_evaluator, 4, seed=s) for s in (7, 7, 8)]
    policies = [[e.policy.ratios for e in r.history] for r in runs]
    assert policies[0] == policies[1]
    assert policies[0] != policies[2]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_failed_evaluation_marks_the_trial_failed_and_the_search_goes_on(fresh_mlp_evaluator, tmp_path, monkeypatch, sampler):
    real, calls = fresh_mlp_evaluator.evaluate, []

    def flaky(policy, index=None):
        calls.append(policy)
        if len(calls) != 2:
            return real(policy, index=index)
        m = fresh_mlp_evaluator._failed("simulated NaN")
        fresh_mlp_evaluator.history.append(Evaluation(index, policy, m))
        return m

    monkeypatch.setattr(fresh_mlp_evaluator, "evaluate", flaky)
    url = f"sqlite:///{tmp_path}/study.db"
    result = search("optuna", fresh_mlp_evaluator, 5, storage=url, sampler=sampler, n_startup_trials=2, population_size=2)
    assert len(result.history) == 5 and result.history[1].metrics.failed
    assert not result.best.metrics.failed
    trials = study_trials(url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] + [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert trials[1].user_attrs["error"] == "simulated NaN"
    constraint = next(v for k, v in trials[0].system_attrs.items() if "constraint" in k)
    assert constraint == pytest.approx(trials[0].user_attrs["metrics"]["value"] - fresh_mlp_evaluator.target)


def test_sqlite_study_resumes_and_counts_its_complete_trials(fresh_mlp_evaluator, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    first = search("optuna", fresh_mlp_evaluator, 4, storage=url, study_name="s")
    second = search("optuna", fresh_mlp_evaluator, 7, storage=url, study_name="s")
    assert second.extras["resumed_trials"] == 4 and second.extras["trial_numbers"] == [4, 5, 6]
    assert second.extras["imported_trials"] == 4
    # The first run's trials come back from their stored metrics, in trial order, not recomputed.
    assert [e.index for e in second.history] == list(range(7))
    assert [e.metrics.reward for e in second.history[:4]] == pytest.approx([e.metrics.reward for e in first.history])
    assert second.best.metrics.reward >= first.best.metrics.reward
    numbers = [t.number for t in study_trials(url, "s")]
    assert numbers == list(range(7))
    old = [e.policy.key() for e in first.history]
    assert not any(e.policy.key() in old for e in second.history[4:])


def test_trial_killed_mid_evaluation_is_not_counted_when_resuming(fresh_mlp_evaluator, tmp_path):
    url, seen = f"sqlite:///{tmp_path}/study.db", []

    def interrupt_on_fifth(evaluation):
        seen.append(evaluation)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search("optuna", fresh_mlp_evaluator, 7, callback=interrupt_on_fifth, storage=url)
    resumed = search("optuna", fresh_mlp_evaluator, 7, storage=url)
    assert resumed.extras["resumed_trials"] == 4 and resumed.extras["trial_numbers"] == [5, 6, 7]
    states = [t.state for t in study_trials(url)]
    assert states == [TrialState.COMPLETE] * 4 + [TrialState.FAIL] + [TrialState.COMPLETE] * 3


def test_rdb_study_of_another_sampler_direction_is_a_config_error(fresh_mlp_evaluator, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    search("optuna", fresh_mlp_evaluator, 2, storage=url)
    with pytest.raises(ConfigError, match="use another study_name"):
        search("optuna", fresh_mlp_evaluator, 3, storage=url, sampler="nsga2")


def test_same_seed_and_a_mac_budget_give_the_same_search_beyond_the_startup_trials(fresh_mlp_evaluator):
    runs = [search("optuna", fresh_mlp_evaluator.with_budget(fresh_mlp_evaluator.budget), 8, seed=3, n_startup_trials=3) for _ in range(2)]
    assert [e.policy for e in runs[0].history] == [e.policy for e in runs[1].history]
    assert runs[0].best.policy == runs[1].best.policy


def test_a_new_study_is_seeded_with_the_uniform_and_global_baselines_at_the_predicted_target(resnet14_evaluator):
    from autoprune.search.baselines import predicted_baseline, uniform_family
    from autoprune.search.global_pruning import global_family

    ev = resnet14_evaluator.with_budget(Budget(metric="macs", target=0.5))
    pool = baseline_pool(ev)
    result = search("optuna", ev, 4, n_startup_trials=2, seeds=pool)
    uniform = predicted_baseline(ev, uniform_family(ev), ev.max_ratio)
    global_ = predicted_baseline(ev, global_family(ev), 1.0)
    first, second = (e.policy for e in result.history[:2])
    assert len(set(first.ratios.values())) == 1 and first.drop == uniform.drop
    assert first.ratios == pytest.approx(uniform.ratios) and second.ratios == pytest.approx(global_.ratios)
    assert len(set(second.ratios.values())) > 1  # global ranks channels across units
    assert result.extras["seeds"] == {name: i for i, name in enumerate(pool)}
    # MACs are predicted exactly, so both seeds just meet the budget and the best is at least as good
    assert all(e.metrics.feasible and e.metrics.value <= 0.5 + 1e-9 for e in result.history[:2])
    assert result.best.metrics.reward >= max(e.metrics.reward for e in result.history[:2])
    off = search("optuna", ev.with_budget(ev.budget), 2, n_startup_trials=2)
    assert off.history[0].policy.ratios != pytest.approx(first.ratios)


def test_a_warm_started_new_study_is_seeded_too_after_the_warm_start(resnet14_evaluator):
    ev = resnet14_evaluator.with_budget(Budget(metric="macs", target=0.5))
    warm = {"ratios": {u: 0.4 for u in ev.unit_names}, "drop": [ev.block_names[0]]}
    result = search("optuna", ev, 4, n_startup_trials=2, seeds=baseline_pool(ev), enqueue=[warm])
    sources = [e.policy for e in result.history[:3]]
    assert sources[0].drop == (ev.block_names[0],) and all(v == pytest.approx(0.4) for v in sources[0].ratios.values())
    assert len(set(sources[1].ratios.values())) == 1 and len(set(sources[2].ratios.values())) > 1  # uniform, then global


def test_every_proposal_on_a_cnn_is_moved_onto_the_mac_target_and_off_switch_restores_free_proposals(resnet14_evaluator):
    """search.at_target on a CNN: each sampled proposal keeps its shape and lands just at the target (MACs are exact)."""
    ev = resnet14_evaluator.with_budget(Budget(metric="macs", target=0.5))
    assert ev.searches_at_target and ev.aim == 0.5
    moved = search("optuna", ev, 6, seed=2, n_startup_trials=6)
    values = [e.metrics.value for e in moved.history]
    assert all(0.5 - 0.02 <= v <= 0.5 + 1e-9 for v in values), values
    assert len({tuple(sorted(e.policy.ratios.items())) for e in moved.history}) == 6  # shapes differ
    ev.searches_at_target = False
    try:
        free = search("optuna", ev, 6, seed=2, n_startup_trials=6)
    finally:
        ev.searches_at_target = True
    spread = [e.metrics.value for e in free.history]
    assert max(abs(v - 0.5) for v in spread) > 0.05, spread  # free proposals spend very different budgets
