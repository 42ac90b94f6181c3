"""RL searchers (PPO, AMC-style DDPG): episode accounting, feasibility, saved agents and zero-shot transfer."""

import json
import zipfile

import pytest
import torch
from helpers import search

from autoprune.errors import ConfigError, PolicyError
from autoprune.search.env import FEATURES
from autoprune.search.ppo import checkpoint_paths, read_checkpoint


@pytest.mark.parametrize("name,params", [("ppo", {}), ("ddpg", {"warmup_episodes": 2})])
def test_rl_searcher_makes_exactly_the_episodes_asked_and_finds_a_feasible_policy(evaluator, name, params):
    calls = []
    result = search(name, evaluator, 6, callback=calls.append, **params)
    assert len(result.history) == len(evaluator.history) == 6
    assert len(calls) == 6  # progress is reported once per episode, not twice
    assert result.best.metrics.feasible and not result.best.metrics.failed
    assert result.best.metrics.value <= 0.6
    assert set(result.best.policy.ratios) <= set(evaluator.unit_names)


def test_ppo_with_parallel_envs_stops_at_the_episode_budget(evaluator):
    calls = []
    result = search("ppo", evaluator, 5, callback=calls.append, n_envs=2)
    assert len(result.history) == len(calls) == 5


def test_ppo_is_reproducible_for_a_seed(resnet_evaluator):
    policies = [[e.policy for e in search("ppo", resnet_evaluator.with_budget(resnet_evaluator.budget), 3).history] for _ in range(2)]
    assert policies[0] == policies[1]


def test_ppo_saves_an_agent_bundle_that_runs_zero_shot_on_another_model(evaluator, fresh_mlp_evaluator, tmp_path):
    trained = search("ppo", evaluator, 6, save_agent=str(tmp_path / "agent"), checkpoint_every=3)
    path = trained.extras["agent_path"]
    assert zipfile.is_zipfile(f"{path}/agent.zip")
    manifest = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert manifest["format"] == "autoprune-agent/1" and manifest["observation"]["features"] == list(FEATURES)
    assert not (tmp_path / "agent" / "checkpoint.zip").exists()  # a finished search leaves no checkpoint to resume

    target = fresh_mlp_evaluator
    weights = {k: v.clone() for k, v in target.model.state_dict().items()}
    calls = []
    result = search("ppo", target, 3, callback=calls.append, agent=path, zero_shot=True)
    assert len(result.history) == len(calls) == 3
    assert result.extras == {"agent": path, "zero_shot": True}
    assert result.best.metrics.feasible
    assert set(result.best.policy.ratios) <= set(target.unit_names)
    assert all(torch.equal(v, weights[k]) for k, v in target.model.state_dict().items())


def test_ppo_fine_tunes_a_saved_agent(evaluator, fresh_mlp_evaluator, tmp_path):
    search("ppo", fresh_mlp_evaluator, 4, save_agent=str(tmp_path / "mlp"))
    result = search("ppo", evaluator, 4, agent=str(tmp_path / "mlp"), learning_rate=1e-4)
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
        search(name, evaluator, 2, **params)
    assert evaluator.history == []


def test_interrupted_ppo_search_resumes_from_its_checkpoint_without_rerunning_episodes(evaluator, tmp_path):
    folder = tmp_path / "agent"

    def stop_after_seven(evaluation):
        if len(evaluator.history) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search("ppo", evaluator, 10, callback=stop_after_seven, save_agent=str(folder), checkpoint_every=3)
    state = read_checkpoint(folder)
    assert state["episodes"] == 6 and all(p.is_file() for p in checkpoint_paths(folder))
    kept = [e.policy for e in evaluator.history[:6]]
    evaluator.history.clear()

    calls = []
    result = search("ppo", evaluator, 10, callback=calls.append, save_agent=str(folder), checkpoint_every=3)
    assert result.extras["resumed_episodes"] == 6
    assert len(result.history) == 10 and len(calls) == 4  # only the missing episodes are evaluated
    assert [e.policy for e in result.history[:6]] == kept
    assert [e.index for e in result.history] == list(range(10))
    assert read_checkpoint(folder) is None and (folder / "agent.zip").is_file()


@pytest.mark.parametrize("damage", ["truncated_zip", "no_manifest", "other_features", "bad_manifest_json"])
def test_damaged_agent_bundle_is_refused_with_a_clear_error(evaluator, fresh_mlp_evaluator, tmp_path, damage):
    search("ppo", fresh_mlp_evaluator, 2, save_agent=str(tmp_path / "a"))
    zpath, mpath = tmp_path / "a" / "agent.zip", tmp_path / "a" / "agent.json"
    if damage == "truncated_zip":
        zpath.write_bytes(zpath.read_bytes()[:300])
    elif damage == "no_manifest":
        mpath.unlink()
    elif damage == "other_features":
        doc = json.loads(mpath.read_text())
        doc["observation"]["features"] = doc["observation"]["features"][:-1]
        mpath.write_text(json.dumps(doc))
    else:
        mpath.write_text(mpath.read_text()[:40])
    with pytest.raises((PolicyError, ConfigError), match=r"--agent: .*(truncated|agent\.json|observes features|not valid JSON)"):
        search("ppo", evaluator, 1, agent=str(tmp_path / "a"), zero_shot=True)
