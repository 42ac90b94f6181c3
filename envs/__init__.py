"""Gymnasium environments of autoprune, registered on import.

``gymnasium.make("autoprune/LayerPruning-v0", evaluator=...)`` builds a
:class:`autoprune.search.env.LayerPruningEnv` around a
:class:`autoprune.objective.evaluator.PolicyEvaluator`.
"""

from __future__ import annotations

import gymnasium

ENV_ID = "autoprune/LayerPruning-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="autoprune.search.env:LayerPruningEnv", disable_env_checker=True)

__all__ = ["ENV_ID"]
