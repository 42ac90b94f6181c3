"""``LayerPruningEnv``: choose one pruning decision per step, AMC-style, under a latency or MAC budget.

Follows AMC (He et al. 2018, "AMC: AutoML for Model Compression and Acceleration on Mobile
Devices"): one layer per step, model-relative observations, and actions clipped so the budget
stays reachable.

One episode prunes one model. Decisions are taken in execution order: one per
prunable unit (a ratio) and one per droppable residual block (keep or drop),
interleaved by depth, so the agent can trade a block for channel ratios
elsewhere. Observations are normalised, model-size-invariant features, so an
agent trained on one model can act on another. A unit's kind is one-hot over the channel kinds
of :class:`~autoprune.graph.units.UnitKind` (:data:`KIND_FEATURES`): ``kind_conv``,
``kind_depthwise``, ``kind_linear``, and for transformer encoders ``kind_heads`` (the attention
heads of a layer) and ``kind_ffn`` (a layer's feed-forward width); every droppable block, a
residual block or an encoder layer, is ``is_block``.

Action: ``Box(-1, 1, (1,))``. For a unit it is rescaled to a ratio in
``[0, max_ratio]``; for a block, ``a > 0`` means drop. Before it is applied the
decision is *clipped* so the budget stays reachable: assuming every later unit
at ``max_ratio`` and every later block dropped, the lookup table must predict
the target can still be met (the AMC trick). ``info`` reports the raw and the
clipped decision.

Reward: 0 until the last step, then the evaluator's reward of the whole policy.
With ``shaping="budget"``, each step also gets ``-0.01 * max(0, predicted - target)``
(the predicted overshoot with undecided units unpruned) — off by default.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autoprune.graph.policy import Policy
from autoprune.graph.units import CHANNEL_KINDS
from autoprune.objective.evaluator import PolicyEvaluator

#: One-hot kind features of a unit: one per channel kind of :class:`~autoprune.graph.units.UnitKind`, in its order.
KIND_FEATURES = tuple(f"kind_{kind}" for kind in CHANNEL_KINDS)
FEATURES = (
    "is_unit", "is_block", *KIND_FEATURES, "coupled",
    "depth", "resolution", "log_channels", "kernel", "stride", "macs_share", "params_share",
    "progress", "budget_used", "budget_target", "budget_rest_min", "prev_action",
)
OBS_DIM = len(FEATURES)


class LayerPruningEnv(gym.Env):
    """Gymnasium environment over a :class:`~autoprune.objective.evaluator.PolicyEvaluator`.

    Observations are ``float32`` vectors of shape ``(OBS_DIM,)`` (the :data:`FEATURES`, in [-1, 2]);
    actions ``(1,)`` in [-1, 1].

    Args:
        evaluator: Shared evaluator (owns model, budget and reward).
        shaping: ``None`` (default, sparse terminal reward) or ``"budget"``.
        clip: Apply AMC's feasibility clipping (default True).

    Raises:
        ValueError: ``shaping`` is neither None nor ``"budget"``.
    """

    metadata = {"render_modes": []}

    def __init__(self, evaluator: PolicyEvaluator, *, shaping: str | None = None, clip: bool = True) -> None:
        super().__init__()
        if shaping not in (None, "budget"):
            raise ValueError(f"shaping: {shaping!r} is not allowed; allowed: None, 'budget'")
        self.evaluator = evaluator
        self.shaping = shaping
        self.clip = clip
        self.max_ratio = evaluator.max_ratio
        self.target = evaluator.target
        self.observation_space = spaces.Box(low=-1.0, high=2.0, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)
        self.decisions = self._decision_order()
        self._static = np.stack([self._static_features(d) for d in self.decisions]).astype(np.float32)
        self._reset_state()

    # ----------------------------------------------------------------- set-up
    def _decision_order(self) -> list[tuple[str, str, float]]:
        g = self.evaluator.graph
        items = [("unit", u.name, u.features.depth) for u in g.units]
        items += [("block", b.name, b.depth - 1e-6) for b in g.blocks if b.name in self.evaluator.block_names]
        return sorted(items, key=lambda t: t[2])

    def _static_features(self, decision: tuple[str, str, float]) -> np.ndarray:
        kind, name, depth = decision
        g = self.evaluator.graph
        dense_macs = max(1, g.dense_macs)
        total_params = max(1, sum(p.numel() for p in self.evaluator.model.parameters()))
        f = dict.fromkeys(FEATURES, 0.0)
        if kind == "unit":
            u = g.unit(name).features
            f.update(
                is_unit=1.0, coupled=float(u.coupled), resolution=u.resolution,
                log_channels=math.log2(max(1, u.channels)) / 10.0, kernel=u.kernel / 7.0, stride=u.stride / 2.0,
                macs_share=u.macs / dense_macs, params_share=u.params / total_params,
            )
            f[f"kind_{u.kind}"] = 1.0
        else:
            b = next(b for b in g.blocks if b.name == name)
            f.update(is_block=1.0, macs_share=b.macs / dense_macs, params_share=b.params / total_params)
        f["depth"] = max(0.0, depth)
        return np.array([f[k] for k in FEATURES], dtype=np.float32)

    def _reset_state(self) -> None:
        self.t = 0
        self.ratios: dict[str, float] = {}
        self.drop: list[str] = []
        self.prev_action = 0.0

    # -------------------------------------------------------------- dynamics
    def _predicted(self, ratios: dict[str, float], drop: list[str]) -> float:
        return self.evaluator.predicted_value(ratios, tuple(drop))

    def _rest_at_max(self, start: int) -> tuple[dict[str, float], list[str]]:
        ratios, drop = {}, []
        for kind, name, _ in self.decisions[start:]:
            if kind == "unit":
                ratios[name] = self.max_ratio
            else:
                drop.append(name)
        return ratios, drop

    def _observation(self) -> np.ndarray:
        obs = np.zeros(OBS_DIM, dtype=np.float32)
        if self.t < len(self.decisions):
            obs[:] = self._static[self.t]
        rest_r, rest_d = self._rest_at_max(self.t)
        obs[FEATURES.index("progress")] = self.t / len(self.decisions)
        obs[FEATURES.index("budget_used")] = min(2.0, self._predicted(self.ratios, self.drop))
        obs[FEATURES.index("budget_target")] = self.target
        obs[FEATURES.index("budget_rest_min")] = min(2.0, self._predicted({**self.ratios, **rest_r}, self.drop + rest_d))
        obs[FEATURES.index("prev_action")] = self.prev_action
        return np.clip(obs, -1.0, 2.0)

    def _min_feasible_ratio(self, name: str) -> float:
        """Smallest ratio for unit ``name`` that keeps the target reachable (bisection on the table)."""
        rest_r, rest_d = self._rest_at_max(self.t + 1)

        def value(r: float) -> float:
            return self._predicted({**self.ratios, name: r, **rest_r}, self.drop + rest_d)

        if value(0.0) <= self.target:
            return 0.0
        if value(self.max_ratio) > self.target:
            return self.max_ratio
        lo, hi = 0.0, self.max_ratio
        for _ in range(10):
            mid = (lo + hi) / 2
            if value(mid) <= self.target:
                hi = mid
            else:
                lo = mid
        return hi

    def _must_drop(self, name: str) -> bool:
        rest_r, rest_d = self._rest_at_max(self.t + 1)
        return self._predicted({**self.ratios, **rest_r}, self.drop + rest_d) > self.target

    def _skip_dropped_units(self) -> None:
        """Units inside a dropped block have nothing left to prune: skip their decisions."""
        if not self.drop:
            return
        prefixes = tuple(b + "." for b in self.drop)
        while self.t < len(self.decisions) and self.decisions[self.t][0] == "unit" and self.decisions[self.t][1].startswith(prefixes):
            self.t += 1

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start a new episode (no decision taken); returns the first observation, shape ``(OBS_DIM,)``, and ``{}``."""
        super().reset(seed=seed)
        self._reset_state()
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Take the current decision (gymnasium API).

        Args:
            action: Shape ``(1,)``, in [-1, 1] (clipped): a ratio in ``[0, max_ratio]`` for a unit,
                drop when ``> 0`` for a block. The AMC clipping may raise the ratio or force a drop.

        Returns:
            ``(observation (OBS_DIM,), reward, terminated, truncated (always False), info)``; the
            reward is the evaluator's reward of the whole policy on the last step, 0 (or the
            shaping penalty) before; ``info`` holds the raw and the clipped decision.

        Raises:
            RuntimeError: called after the episode ended without :meth:`reset`.
        """
        if self.t >= len(self.decisions):
            raise RuntimeError("step() called after the episode ended; call reset()")
        raw = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        kind, name, _ = self.decisions[self.t]
        info: dict[str, Any] = {"decision": name, "kind": kind, "raw_action": raw}
        if kind == "unit":
            wanted = (raw + 1.0) / 2.0 * self.max_ratio
            chosen = max(wanted, self._min_feasible_ratio(name)) if self.clip else wanted
            chosen = min(chosen, self.max_ratio)
            self.ratios[name] = chosen
            info.update(ratio=wanted, clipped_ratio=chosen, clipped=chosen != wanted)
            self.prev_action = chosen / self.max_ratio
        else:
            wanted_drop = raw > 0.0
            chosen_drop = wanted_drop or (self.clip and self._must_drop(name))
            if chosen_drop:
                self.drop.append(name)
            info.update(drop=wanted_drop, clipped_drop=chosen_drop, clipped=chosen_drop != wanted_drop)
            self.prev_action = 1.0 if chosen_drop else 0.0
        self.t += 1
        self._skip_dropped_units()
        terminated = self.t >= len(self.decisions)
        reward = 0.0
        if self.shaping == "budget" and not terminated:
            reward = -0.01 * max(0.0, self._predicted(self.ratios, self.drop) - self.target)
        if terminated:
            policy = Policy(dict(self.ratios), tuple(self.drop))
            metrics = self.evaluator.evaluate(policy)
            reward = float(metrics.reward)
            info.update(policy=policy.to_dict(), metrics=metrics.as_dict())
        return self._observation(), reward, terminated, False, info

    def current_policy(self) -> Policy:
        """The decisions taken so far in this episode."""
        return Policy(dict(self.ratios), tuple(self.drop))
