"""The objective: the accuracy proxy (adaptive BatchNorm), embedding fidelity for encoders, the budget and reward, and ``PolicyEvaluator`` (policy -> metrics -> reward)."""

from autoprune.objective.budget import Budget, Reward
from autoprune.objective.evaluator import Evaluation, Metrics, PolicyEvaluator
from autoprune.objective.fidelity import Fidelity, embedding_fidelity, model_fidelity, sentence_embeddings
from autoprune.objective.proxy import ProxySettings, proxy_accuracy

__all__ = [
    "Budget", "Evaluation", "Fidelity", "Metrics", "PolicyEvaluator", "ProxySettings", "Reward",
    "embedding_fidelity", "model_fidelity", "proxy_accuracy", "sentence_embeddings",
]  # fmt: skip
