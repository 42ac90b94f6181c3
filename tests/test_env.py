"""The layer-by-layer pruning environment: API conformance, feasibility clipping, determinism."""

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers the environment)
from autoprune.objective.budget import Budget

#: The shared `evaluator` fixture's MAC budget (conftest.SEARCH_BUDGET: MACs make feasibility exact).
TARGET = 0.6


def make(evaluator, **kwargs):
    return gymnasium.make("autoprune/LayerPruning-v0", evaluator=evaluator, **kwargs)


def run_episode(env, actions, seed=None):
    """Step until the end with ``actions(step_index)``; return the observations and infos."""
    obs, _ = env.reset(seed=seed)
    observations, infos = [obs], []
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(np.array([actions(len(infos))], dtype=np.float32))
        observations.append(obs)
        infos.append(info)
        assert not truncated
    return observations, infos


def test_env_passes_gymnasium_and_sb3_checkers(evaluator):
    env = make(evaluator)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


@pytest.mark.parametrize("target", [TARGET, 0.25])
def test_random_actions_are_clipped_to_a_feasible_policy(evaluator, target):
    ev = evaluator.with_budget(Budget(metric="macs", target=target))
    env = make(ev)
    env.action_space.seed(0)
    for episode in range(5):
        _, infos = run_episode(env, lambda _: env.action_space.sample()[0], seed=episode)
        policy = env.unwrapped.current_policy()
        assert ev.predicted_value(policy.ratios, policy.drop) <= target
        assert infos[-1]["metrics"]["value"] <= target + 1e-6
    assert len(ev.history) == 5


@pytest.mark.parametrize("target", [TARGET, 0.25])
def test_pruning_nothing_is_clipped_to_exactly_the_budget(evaluator, target):
    ev = evaluator.with_budget(Budget(metric="macs", target=target))
    env = make(ev)
    _, infos = run_episode(env, lambda _: -1.0)
    policy = env.unwrapped.current_policy()
    value = ev.predicted_value(policy.ratios, policy.drop)
    # the clipping forces just enough pruning, at the end of the network
    assert target - 0.05 < value <= target
    assert infos[-1]["metrics"]["value"] <= target + 1e-6
    assert any(i["clipped"] for i in infos)
    assert infos[0]["clipped"] is False and infos[0]["clipped_ratio"] == 0.0


def test_same_seed_and_actions_give_the_same_policy(evaluator):
    env = make(evaluator.with_budget(Budget(metric="macs", target=TARGET)))
    actions = np.random.default_rng(1).uniform(-1, 1, size=64)
    policies = []
    for _ in range(2):
        _, infos = run_episode(env, lambda t: actions[t], seed=7)
        policies.append(infos[-1]["policy"])
    assert policies[0] == policies[1]


def test_info_reports_raw_and_clipped_decisions(evaluator):
    env = make(evaluator.with_budget(Budget(metric="macs", target=TARGET)))
    _, infos = run_episode(env, lambda t: 0.5 if t % 2 else -0.5)
    for info in infos:
        assert info["kind"] in ("unit", "block")
        assert -1.0 <= info["raw_action"] <= 1.0
        if info["kind"] == "unit":
            assert info["ratio"] == pytest.approx((info["raw_action"] + 1) / 2 * evaluator.max_ratio)
            assert info["clipped_ratio"] >= info["ratio"] - 1e-9
        else:
            assert info["drop"] == (info["raw_action"] > 0)
            assert info["clipped_drop"] >= info["drop"]
    assert set(infos[-1]["policy"]) == {"ratios", "drop"}


def test_units_inside_dropped_blocks_are_skipped(evaluator):
    env = make(evaluator.with_budget(Budget(metric="macs", target=TARGET)))
    _, infos = run_episode(env, lambda _: 1.0)
    dropped = infos[-1]["policy"]["drop"]
    assert set(dropped) == set(evaluator.block_names)
    inside = [u for u in evaluator.unit_names if any(u.startswith(b + ".") for b in dropped)]
    assert inside
    visited = [i["decision"] for i in infos]
    assert not set(inside) & set(visited)
    assert not set(inside) & set(infos[-1]["policy"]["ratios"])
    assert len(infos) == len(env.unwrapped.decisions) - len(inside)


def test_observations_stay_within_the_observation_space(evaluator):
    env = make(evaluator.with_budget(Budget(metric="macs", target=TARGET)))
    env.action_space.seed(3)
    for seed in range(2):
        observations, _ = run_episode(env, lambda _: env.action_space.sample()[0], seed=seed)
        for obs in observations:
            assert env.observation_space.contains(obs)
