"""PPO searcher: an agent picks one pruning decision per layer, AMC-style, trained on the evaluator's reward.

PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347) from Stable-Baselines3
runs on :class:`autoprune.search.env.LayerPruningEnv`. The environment itself scores the
finished policy with the shared evaluator, so one episode is one evaluation. The
features are model-size-invariant, so a saved agent can be run zero-shot on another
model or fine-tuned on it.

The helpers :class:`BudgetedEvaluator`, :class:`StopAfterEpisodes`, :func:`make_env` and
:func:`check_sb3_params` are shared with the DDPG searcher.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from autoprune.errors import ConfigError, PolicyError
from autoprune.graph.policy import Policy
from autoprune.objective.evaluator import PolicyEvaluator
from autoprune.objective.metrics import Evaluation, Metrics
from autoprune.paths import write_json_atomic
from autoprune.search.base import ExperimentContext, Searcher
from autoprune.search.env import LayerPruningEnv

log = logging.getLogger(__name__)


class BudgetedEvaluator:
    """The shared evaluator as the environments see it: counts episodes and reports progress.

    Every attribute is the evaluator's, except :meth:`evaluate`, which goes through
    :meth:`Searcher.evaluate` (one history entry, one progress tick) until ``n_episodes``
    evaluations are made. Episodes that end after that (other copies of a vectorised env
    finishing in the same step) get the last metrics unrecorded; training stops at that
    step, so they are never learnt from. No call changes torch's global random state.
    """

    def __init__(self, searcher: Searcher, evaluator: PolicyEvaluator, n_episodes: int) -> None:
        self._searcher = searcher
        self._evaluator = evaluator
        self.n_episodes = n_episodes
        self.finished = 0
        self._last: Metrics | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._evaluator, name)

    def __deepcopy__(self, memo: dict) -> BudgetedEvaluator:
        return self

    @property
    def exhausted(self) -> bool:
        """All ``n_episodes`` evaluations are made."""
        return self.finished >= self.n_episodes

    def evaluate(self, policy: Policy) -> Metrics:
        """The searcher's evaluation of ``policy``, counted; once exhausted, the last metrics again (no new evaluation)."""
        if self.exhausted and self._last is not None:
            return self._last
        with torch.random.fork_rng(devices=[]):
            self._last = self._searcher.evaluate(policy)
        self.finished += 1
        return self._last

    # The latency table times unseen layer shapes on fresh random modules, drawing from torch's
    # global generator; the agent samples its actions from it, so these calls must not touch it.
    def predicted_value(self, ratios: dict[str, float], drop: tuple[str, ...] | list[str] = ()) -> float:
        """:meth:`PolicyEvaluator.predicted_value` without touching torch's global RNG.

        Raises:
            PolicyError: a ratio is out of range or would remove every channel of a unit.
        """
        with torch.random.fork_rng(devices=[]):
            return self._evaluator.predicted_value(ratios, drop)

    def predicted_ratio(self, ratios: dict[str, float], drop: tuple[str, ...] | list[str] = ()) -> float:
        """:meth:`PolicyEvaluator.predicted_ratio` without touching torch's global RNG.

        Raises:
            PolicyError: a ratio is out of range or would remove every channel of a unit.
        """
        with torch.random.fork_rng(devices=[]):
            return self._evaluator.predicted_ratio(ratios, drop)


class StopAfterEpisodes(BaseCallback):
    """Stop SB3's ``learn`` once the budget is exhausted; call ``checkpoint`` every ``every`` episodes."""

    def __init__(self, budget: BudgetedEvaluator, *, every: int = 0, checkpoint: Callable[[BaseAlgorithm, int], None] | None = None) -> None:
        super().__init__()
        self.budget = budget
        self.every = every
        self.checkpoint = checkpoint
        self._saved_at = budget.finished

    def _on_step(self) -> bool:
        done = self.budget.finished
        if self.every and self.checkpoint is not None and done // self.every > self._saved_at // self.every and not self.budget.exhausted:
            self._saved_at = done
            self.checkpoint(self.model, done)
        return not self.budget.exhausted


def pruning_env(budget: BudgetedEvaluator, shaping: str | None) -> LayerPruningEnv:
    """The pruning environment over the budgeted evaluator.

    Raises:
        ConfigError: ``shaping`` is not allowed (``search.params.shaping``).
    """
    try:
        return LayerPruningEnv(budget, shaping=shaping)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"search.params.shaping: {e}") from e


def make_env(budget: BudgetedEvaluator, n_envs: int, shaping: str | None) -> DummyVecEnv:
    """``n_envs`` copies of the pruning environment, all sharing one evaluator."""
    return DummyVecEnv([lambda: pruning_env(budget, shaping) for _ in range(n_envs)])


def check_sb3_params(params: dict[str, Any], searcher: str) -> None:
    """Check the PPO/DDPG hyper-parameters of ``search.params`` (Stable-Baselines3 names).

    Raises:
        ConfigError: a hyper-parameter of the wrong type or range, naming it and what is allowed.
    """
    positive = {"n_steps", "batch_size", "n_epochs", "n_envs", "buffer_size", "learning_rate"}
    non_negative = {"checkpoint_every", "warmup_episodes", "ent_coef", "sigma"}
    unit = {"gamma", "gae_lambda", "tau", "clip_range", "sigma_decay"}
    for key, value in params.items():
        if value is None:
            continue
        bad_type = key in positive | non_negative | unit and (isinstance(value, bool) or not isinstance(value, (int, float)))
        if bad_type or (key in positive and value <= 0) or (key in non_negative and value < 0) or (key in unit and not 0 < value <= 1):
            allowed = "> 0" if key in positive else ">= 0" if key in non_negative else "0 < value <= 1"
            raise ConfigError(f"search.params.{key}: {value!r} is not allowed for searcher {searcher!r}; allowed: {allowed}")
    arch = params.get("net_arch")
    if arch is not None and not (isinstance(arch, (list, tuple)) and all(isinstance(n, int) and n > 0 for n in arch)):
        raise ConfigError(f"search.params.net_arch: {arch!r} is not allowed; expected a list of positive layer widths, e.g. [64, 64]")
    if params.get("checkpoint_every") and not params.get("save_agent"):
        raise ConfigError("search.params.checkpoint_every needs search.params.save_agent (checkpoints are written next to it)")


def save_agent(model: BaseAlgorithm, path: str | Path) -> str:
    """Save an SB3 agent as a zip (the suffix is added if missing) and return its path."""
    path = Path(path)
    if path.suffix != ".zip":
        path = path.with_name(path.name + ".zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return str(path)


CHECKPOINT_ZIP = "checkpoint.zip"
CHECKPOINT_STATE = "checkpoint.json"


def checkpoint_paths(folder: str | Path) -> tuple[Path, Path]:
    """The rolling checkpoint of a PPO search saved to ``folder``: the agent and the episodes so far."""
    return Path(folder) / CHECKPOINT_ZIP, Path(folder) / CHECKPOINT_STATE


def write_checkpoint(model: BaseAlgorithm, folder: str | Path, history: list[Evaluation], *, n_episodes: int, seed: int) -> None:
    """Save the agent and the finished episodes, each file atomically (zip first, then the state)."""
    zpath, spath = checkpoint_paths(folder)
    zpath.parent.mkdir(parents=True, exist_ok=True)
    tmp = zpath.with_name("checkpoint.tmp.zip")
    model.save(tmp)
    tmp.replace(zpath)
    state = {"episodes": len(history), "n_episodes": n_episodes, "seed": seed,
             "history": [{"index": e.index, "policy": e.policy.to_dict(), "metrics": e.metrics.as_dict()} for e in history]}
    write_json_atomic(spath, state, indent=None)


def read_checkpoint(folder: str | Path) -> dict[str, Any] | None:
    """The saved state of an interrupted PPO search in ``folder`` (None: there is none, or it is unreadable)."""
    zpath, spath = checkpoint_paths(folder)
    if not (zpath.is_file() and spath.is_file()):
        return None
    try:
        state = json.loads(spath.read_text())
        return state if isinstance(state, dict) and isinstance(state.get("history"), list) else None
    except (OSError, json.JSONDecodeError) as e:
        log.warning("ignoring the unreadable PPO checkpoint in %s: %s", folder, e)
        return None


class PPOSearcher(Searcher):
    """Train a PPO agent on the layer-by-layer pruning environment (or run a saved one).

    Hyper-parameters (``params``):
        n_steps: Steps per environment between updates; ``None`` = four episodes' worth, at least 64,
            rounded up to a multiple of ``batch_size``.
        batch_size, n_epochs, learning_rate, gamma, gae_lambda, ent_coef, clip_range: As in SB3's PPO.
            ``gamma`` is 1: the only reward is at the end of a finite episode.
        net_arch: Hidden layers of the actor and the critic.
        log_std_init: Initial log standard deviation of the Gaussian policy (-0.5: std 0.6 on [-1, 1]).
        n_envs: Environment copies stepping in lock-step (they share the evaluator).
        shaping: Reward shaping of the environment (``None`` or ``"budget"``).
        checkpoint_every: Every this many episodes, save the agent and the finished episodes in
            ``save_agent`` (0 = off). A search started again with the same ``save_agent`` resumes
            from the last checkpoint: those episodes are kept, not re-run.
        save_agent: Folder of the agent bundle written at the end (:mod:`autoprune.search.agent`:
            ``agent.zip`` + ``agent.json``); ``None`` = not saved.
        agent: A saved agent bundle (folder) to start from: fine-tuned, or only run with ``zero_shot``.
        zero_shot: Run ``agent`` without training: the first episode takes the mean action, the
            others sample the agent's Gaussian, so ``n_episodes`` gives a best-of-n.
    """

    name = "ppo"
    defaults = {
        "n_steps": None,
        "batch_size": 32,
        "n_epochs": 10,
        "learning_rate": 3e-4,
        "gamma": 1.0,
        "gae_lambda": 0.95,
        "ent_coef": 0.0,
        "clip_range": 0.2,
        "net_arch": [64, 64],
        "log_std_init": -0.5,
        "n_envs": 1,
        "shaping": None,
        "checkpoint_every": 0,
        "save_agent": None,
        "agent": None,
        "zero_shot": False,
    }
    loads_agent = True

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The names, then the Stable-Baselines3 values (:func:`check_sb3_params`) and ``zero_shot`` without ``agent``.

        Raises:
            ConfigError: naming the hyper-parameter, its value and what is allowed.
        """
        p = super().check_params(params)
        check_sb3_params(p, cls.name)
        if p["zero_shot"] and not p["agent"]:
            raise ConfigError("search.params.zero_shot needs search.params.agent (a saved agent folder)")
        return p

    @classmethod
    def experiment_params(cls, context: ExperimentContext) -> dict[str, Any]:
        """The agent bundle goes to ``<output_dir>/agent``, checkpointed every 20 episodes (none when
        ``search.params.save_agent`` is null), so an interrupted search resumes."""
        save = context.params.get("save_agent", str(Path(context.output_dir) / "agent"))
        return {"save_agent": save, "checkpoint_every": 20 if save else 0}

    @classmethod
    def forget(cls, params: dict[str, Any]) -> None:
        """Delete the rolling checkpoint in ``save_agent`` (the saved agent bundle stays)."""
        if params.get("save_agent"):
            for path in checkpoint_paths(params["save_agent"]):
                path.unlink(missing_ok=True)

    def _run(self, evaluator: PolicyEvaluator, n_episodes: int, seed: int) -> dict[str, Any]:
        p = self.params
        if p["zero_shot"] and not p["agent"]:
            raise ConfigError("search.params.zero_shot needs search.params.agent (a saved agent folder)")
        if p["agent"] and not Path(p["agent"]).exists():
            raise ConfigError(f"search.params.agent: {p['agent']!r} does not exist; expected an agent folder written by save_agent")
        budget = BudgetedEvaluator(self, evaluator, n_episodes)
        if p["zero_shot"]:
            self._run_zero_shot(budget, seed)
            return {"agent": str(p["agent"]), "zero_shot": True}
        venv = make_env(budget, int(p["n_envs"]), p["shaping"])
        episode_len = len(venv.envs[0].unwrapped.decisions)
        start = len(evaluator.history)
        state = read_checkpoint(p["save_agent"]) if p["save_agent"] else None
        if state is not None and state.get("n_episodes") == n_episodes and state.get("episodes", 0) < n_episodes:
            model = self._resume(venv, state, budget, seed)
        else:
            state = None
            model = self._load(venv, seed) if p["agent"] else self._build(venv, episode_len, seed)
        def save_checkpoint(m: BaseAlgorithm, done: int) -> None:
            write_checkpoint(m, p["save_agent"], evaluator.history[start:], n_episodes=n_episodes, seed=seed)

        every = int(p["checkpoint_every"]) if p["save_agent"] else 0
        callback = StopAfterEpisodes(budget, every=every, checkpoint=save_checkpoint)
        # An upper bound: the callback stops training after exactly n_episodes evaluations.
        steps = (n_episodes - budget.finished + model.n_envs) * episode_len + model.n_steps * model.n_envs
        model.learn(total_timesteps=steps, callback=callback, progress_bar=False, reset_num_timesteps=state is None)
        if not budget.exhausted:
            log.warning("ppo stopped after %d of %d episodes", budget.finished, n_episodes)
        extras: dict[str, Any] = {"n_steps": model.n_steps, "resumed_episodes": state["episodes"] if state else 0}
        if p["save_agent"]:
            from autoprune.search.agent import save_bundle

            g = evaluator.graph
            trained_on = {"units": len(g.units), "blocks": len(evaluator.block_names), "budget": evaluator.budget.metric,
                          "target": evaluator.target, "max_ratio": evaluator.max_ratio}
            extras["agent_path"] = str(save_bundle(model, p["save_agent"], trained_on=trained_on, episodes=n_episodes))
            for path in checkpoint_paths(p["save_agent"]):
                path.unlink(missing_ok=True)  # finished: the next search with this folder starts afresh
        return extras

    def _resume(self, venv: DummyVecEnv, state: dict[str, Any], budget: BudgetedEvaluator, seed: int) -> PPO:
        """Continue an interrupted search: its episodes go back into the history, the agent is reloaded."""
        evaluator = budget._evaluator
        for rec in state["history"]:
            evaluator.record(Policy.from_dict(rec["policy"]), Metrics.from_dict(rec["metrics"]), index=len(evaluator.history))
        if self._reporter is not None:
            self._reporter.bar.update(len(state["history"]))
        budget.finished = len(state["history"])
        zpath, _ = checkpoint_paths(self.params["save_agent"])
        n_steps = self._n_steps(len(venv.envs[0].unwrapped.decisions))
        log.info("ppo: resuming from the checkpoint after %d of %d episodes", budget.finished, state["n_episodes"])
        try:
            return PPO.load(zpath, env=venv, device="cpu", **self._train_kwargs(n_steps, seed + budget.finished))
        except (ValueError, KeyError, EOFError, OSError) as e:
            raise ConfigError(f"search.params.save_agent: the checkpoint {str(zpath)!r} cannot be loaded ({e}); "
                              "delete it (or run with --restart) to start afresh") from e

    def _train_kwargs(self, n_steps: int, seed: int) -> dict[str, Any]:
        keys = ("batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda", "ent_coef", "clip_range")
        return {**{k: self.params[k] for k in keys}, "n_steps": n_steps, "seed": seed}

    def _n_steps(self, episode_len: int) -> int:
        n_steps = self.params["n_steps"]
        if n_steps is None:
            batch = int(self.params["batch_size"])
            return -(-max(64, 4 * episode_len) // batch) * batch
        if n_steps * self.params["n_envs"] < 2 * episode_len:
            log.warning("ppo: n_steps=%d x n_envs=%d holds fewer than two episodes of %d steps", n_steps, self.params["n_envs"], episode_len)
        return int(n_steps)

    def _build(self, venv: DummyVecEnv, episode_len: int, seed: int) -> PPO:
        n_steps = self._n_steps(episode_len)
        if n_steps * venv.num_envs < 2:
            raise ConfigError("search.params.n_steps: n_steps x n_envs must be at least 2")
        policy_kwargs = {"net_arch": list(self.params["net_arch"]), "log_std_init": float(self.params["log_std_init"])}
        return PPO("MlpPolicy", venv, policy_kwargs=policy_kwargs, device="cpu", verbose=0, **self._train_kwargs(n_steps, seed))

    def _load(self, venv: DummyVecEnv, seed: int) -> PPO:
        """Fine-tune: the saved network (its ``net_arch``, ``log_std``) with this searcher's training settings."""
        from autoprune.search.agent import load_agent

        n_steps = self._n_steps(len(venv.envs[0].unwrapped.decisions))
        return load_agent(self.params["agent"], env=venv, **self._train_kwargs(n_steps, seed))

    def _run_zero_shot(self, budget: BudgetedEvaluator, seed: int) -> None:
        from autoprune.search.agent import load_agent

        model = load_agent(self.params["agent"])
        env = pruning_env(budget, self.params["shaping"])
        if model.observation_space.shape != env.observation_space.shape:
            raise PolicyError(
                f"search.params.agent: observations of {self.params['agent']!r} have shape {model.observation_space.shape}, "
                f"the environment's {env.observation_space.shape}; train the agent with this version of autoprune"
            )
        model.set_random_seed(seed)
        obs, _ = env.reset(seed=seed)
        while not budget.exhausted:
            action, _ = model.predict(obs, deterministic=budget.finished == 0)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
