"""DDPG searcher: the AMC baseline, a deterministic actor with Gaussian exploration on the same environment.

AMC (He et al. 2018, "AMC: AutoML for Model Compression and Acceleration on Mobile
Devices", https://arxiv.org/abs/1802.03494) trains DDPG (Lillicrap et al. 2016,
https://arxiv.org/abs/1509.02971) over one decision per layer: random warm-up episodes
fill the replay buffer, then the actor explores with Gaussian noise whose scale decays
after every episode. Here SB3's DDPG runs on :class:`autoprune.search.env.LayerPruningEnv` with
the feasibility clipping AMC uses, and the environment scores each finished policy with
the shared evaluator (one episode = one evaluation).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from stable_baselines3 import DDPG
from stable_baselines3.common.noise import NormalActionNoise

from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.search.base import Searcher
from autoprune.search.ppo import BudgetedEvaluator, StopAfterEpisodes, check_sb3_params, make_env, save_agent

log = logging.getLogger(__name__)


class DecayingNormalNoise(NormalActionNoise):
    """Gaussian action noise whose scale is multiplied by ``decay`` after each episode past ``warmup`` episodes."""

    def __init__(self, sigma: float, decay: float, warmup: int) -> None:
        super().__init__(mean=np.zeros(1), sigma=np.full(1, sigma))
        self.decay = decay
        self.warmup = warmup
        self.episodes = 0

    def reset(self) -> None:
        self.episodes += 1
        if self.episodes > self.warmup:
            self._sigma = self._sigma * self.decay


class DDPGSearcher(Searcher):
    """Train an AMC-style DDPG agent on the layer-by-layer pruning environment.

    Hyper-parameters (``params``):
        warmup_episodes: Episodes of uniformly random actions before learning starts (AMC: 100 of 400).
        sigma: Standard deviation of the exploration noise on the [-1, 1] action (AMC: 0.5).
        sigma_decay: Factor applied to ``sigma`` after each post-warm-up episode (AMC: 0.95; 1 = fixed).
        buffer_size: Replay buffer size in transitions.
        batch_size, learning_rate, tau, gamma: As in SB3's DDPG; ``gamma`` is 1 (terminal reward only).
        net_arch: Hidden layers of the actor and the critic (AMC: 300, 300).
        shaping: Reward shaping of the environment (``None`` or ``"budget"``).
        save_agent: Path of the SB3 zip written at the end (``None`` = not saved).

    The agent is updated after every episode with as many gradient steps as the episode had steps.
    """

    name = "ddpg"
    defaults = {
        "warmup_episodes": 10,
        "sigma": 0.3,
        "sigma_decay": 1.0,
        "buffer_size": 10_000,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "tau": 0.01,
        "gamma": 1.0,
        "net_arch": [300, 300],
        "shaping": None,
        "save_agent": None,
    }

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The names, then the Stable-Baselines3 values (:func:`autoprune.search.ppo.check_sb3_params`).

        Raises:
            ConfigError: naming the hyper-parameter, its value and what is allowed.
        """
        p = super().check_params(params)
        check_sb3_params(p, cls.name)
        return p

    def _run(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> dict[str, Any]:
        p = self.params
        budget = BudgetedEvaluator(self, evaluator, n_episodes)
        venv = make_env(budget, 1, p["shaping"])
        episode_len = len(venv.envs[0].unwrapped.decisions)
        warmup = int(p["warmup_episodes"])
        if warmup >= n_episodes:
            log.warning("ddpg: warmup_episodes=%d >= episodes=%d: every episode is random", warmup, n_episodes)
        model = DDPG(
            "MlpPolicy",
            venv,
            learning_rate=p["learning_rate"],
            buffer_size=int(p["buffer_size"]),
            learning_starts=warmup * episode_len,
            batch_size=int(p["batch_size"]),
            tau=p["tau"],
            gamma=p["gamma"],
            train_freq=(1, "episode"),
            gradient_steps=-1,
            action_noise=DecayingNormalNoise(float(p["sigma"]), float(p["sigma_decay"]), warmup),
            policy_kwargs={"net_arch": list(p["net_arch"])},
            seed=seed,
            device="cpu",
            verbose=0,
        )
        steps = (n_episodes + 1) * episode_len
        model.learn(total_timesteps=steps, callback=StopAfterEpisodes(budget), progress_bar=False)
        if not budget.exhausted:
            log.warning("ddpg stopped after %d of %d episodes", budget.finished, n_episodes)
        extras: dict[str, Any] = {"learning_starts": warmup * episode_len}
        if p["save_agent"]:
            extras["agent_path"] = save_agent(model, p["save_agent"])
        return extras
