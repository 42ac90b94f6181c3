"""RL searchers (PPO, AMC-style DDPG): episode accounting, feasibility, saved agents and zero-shot transfer."""

import zipfile

import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.search import get_searcher

def search(name, evaluator, episodes, **params):
    calls = []
    result = get_searcher(name, params, progress=False, callback=calls.append).search(evaluator, episodes, seed=0)
    return result, calls


@pytest.mark.parametrize("name,params", [("ppo", {}), ("ddpg", {"warmup_episodes": 2})])
def test_rl_searcher_makes_exactly_the_episodes_asked_and_finds_a_feasible_policy(evaluator, name, params):
    result, calls = search(name, evaluator, 6, **params)
    assert len(result.history) == len(evaluator.history) == 6
    assert len(calls) == 6  # progress is reported once per episode, not twice
    assert result.best.metrics.feasible and not result.best.metrics.failed
    assert result.best.metrics.value <= 0.6
    assert set(result.best.policy.ratios) <= set(evaluator.unit_names)


def test_ppo_with_parallel_envs_stops_at_the_episode_budget(evaluator):
    result, calls = search("ppo", evaluator, 5, n_envs=2)
    assert len(result.history) == len(calls) == 5


def test_ppo_is_reproducible_for_a_seed(resnet_evaluator):
    policies = [[e.policy for e in search("ppo", resnet_evaluator.with_budget(resnet_evaluator.budget), 3)[0].history] for _ in range(2)]
    assert policies[0] == policies[1]


def test_ppo_saves_an_agent_that_runs_zero_shot_on_another_model(evaluator, mlp_evaluator, tmp_path):
    trained, _ = search("ppo", evaluator, 6, save_agent=str(tmp_path / "agent"), checkpoint_every=3)
    path = trained.extras["agent_path"]
    assert path.endswith("agent.zip") and zipfile.is_zipfile(path)
    assert (tmp_path / "agent_ep3.zip").is_file() and (tmp_path / "agent_ep6.zip").is_file()

    target = mlp_evaluator.with_budget(mlp_evaluator.budget)
    weights = {k: v.clone() for k, v in target.model.state_dict().items()}
    result, calls = search("ppo", target, 3, agent=path, zero_shot=True)
    assert len(result.history) == len(calls) == 3
    assert result.extras == {"agent": path, "zero_shot": True}
    assert result.best.metrics.feasible
    assert set(result.best.policy.ratios) <= set(target.unit_names)
    assert all(torch.equal(v, weights[k]) for k, v in target.model.state_dict().items())


def test_ppo_fine_tunes_a_saved_agent(evaluator, mlp_evaluator, tmp_path):
    search("ppo", mlp_evaluator.with_budget(mlp_evaluator.budget), 4, save_agent=str(tmp_path / "mlp.zip"))
    result, _ = search("ppo", evaluator, 4, agent=str(tmp_path / "mlp.zip"), learning_rate=1e-4)
    assert len(result.history) == 4 and result.best.metrics.feasible


@pytest.mark.parametrize(
    "name,params,culprit",
    [
        ("ppo", {"nosuch": 1}, "nosuch"),
        ("ddpg", {"n_envs": 2}, "n_envs"),
        ("ppo", {"zero_shot": True}, "zero_shot"),
        ("ppo", {"agent": "/nonexistent/agent.zip"}, "agent"),
        ("ppo", {"checkpoint_every": 5}, "checkpoint_every"),
        ("ppo", {"learning_rate": -1.0}, "learning_rate"),
        ("ddpg", {"gamma": 1.5}, "gamma"),
        ("ppo", {"shaping": "dense"}, "shaping"),
    ],
)
def test_bad_hyper_parameters_raise_config_error_naming_them(evaluator, name, params, culprit):
    with pytest.raises(ConfigError, match=culprit):
        get_searcher(name, params, progress=False).search(evaluator, 2)
    assert evaluator.history == []
