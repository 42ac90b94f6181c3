"""Settings sized for tests: a proxy, a latency measurement and a baseline training that each take a moment.

One definition for every test that builds a :class:`~autoprune.objective.evaluator.PolicyEvaluator`
or trains a baseline itself; a test that needs another value says so with a keyword, so what
it changes stands out.
"""

from __future__ import annotations

from dataclasses import replace

from autoprune.measure.settings import LatencySettings
from autoprune.objective.proxy import ProxySettings
from autoprune.training.baseline import TrainSettings

#: Two BN re-estimation batches, 200 validation samples scored.
FAST_PROXY = ProxySettings(bn_batches=2, val_samples=200)
#: One thread, 3 to 5 paired rounds (digits models take well under a millisecond a call).
FAST_LATENCY = LatencySettings(rounds=5, min_rounds=3, threads=1)
#: Two epochs at batch 64 without augmentation: a digits MLP reaches ~90% validation accuracy in about a second.
FAST_TRAIN = TrainSettings(epochs=2, batch_size=64, lr=0.05, augment=False)


def fast_settings(**latency: object) -> dict[str, object]:
    """The ``proxy=`` and ``latency=`` keywords of ``PolicyEvaluator``; ``latency`` replaces fields of :data:`FAST_LATENCY`.

    Example: ``PolicyEvaluator(model, digits, budget=..., **fast_settings(backend="onnxruntime"))``.
    """
    return {"proxy": FAST_PROXY, "latency": replace(FAST_LATENCY, **latency)}


def fast_train(**fields: object) -> TrainSettings:
    """:data:`FAST_TRAIN` with ``fields`` replaced (e.g. ``epochs=1``)."""
    return replace(FAST_TRAIN, **fields)
