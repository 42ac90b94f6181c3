"""Gymnasium environments of autoprune, registered on import.

``gymnasium.make("autoprune/LayerPruning-v0", evaluator=...)`` builds a
:class:`envs.pruning.LayerPruningEnv` around a
:class:`autoprune.objective.PolicyEvaluator`.
"""

from __future__ import annotations

import gymnasium

ENV_ID = "autoprune/LayerPruning-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.pruning:LayerPruningEnv", disable_env_checker=True)

__all__ = ["ENV_ID"]
