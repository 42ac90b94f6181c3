"""The objective: the accuracy proxy (adaptive BatchNorm) and ``PolicyEvaluator`` (policy -> metrics -> reward)."""

from autoprune.objective.evaluator import Budget, Evaluation, LatencySettings, Metrics, PolicyEvaluator, Reward
from autoprune.objective.proxy import ProxySettings, proxy_accuracy

__all__ = ["Budget", "Evaluation", "LatencySettings", "Metrics", "PolicyEvaluator", "ProxySettings", "Reward", "proxy_accuracy"]
