"""The search's proxy of a pruned model's quality: accuracy of a classifier, or fidelity of a sentence encoder.

:class:`~autoprune.objective.evaluator.PolicyEvaluator` scores every candidate through one of
these, chosen by the data (:func:`make_proxy`):

* :class:`AccuracyProxy`: labelled data (a :class:`~autoprune.zoo.DataBundle`): adaptive BN
  then top-1 accuracy on a validation subset (EagleEye, Li et al. 2020; :mod:`autoprune.objective.proxy`).
* :class:`FidelityProxy`: text (a :class:`~autoprune.zoo.text.TokenizedCorpus`), no labels: the
  pruned encoder's sentence embeddings against the dense encoder's on validation sentences
  (:mod:`autoprune.objective.fidelity`). The dense embeddings are computed once; each candidate
  is embedded once. There is no BatchNorm to re-estimate in a transformer.

**The fidelity score** (what the reward uses as "accuracy") is the mean of the two fidelity
figures, ``(cosine + neighbour_agreement) / 2``, in ``[-0.5, 1]`` and 1.0 for the dense model:
cosine alone barely moves under a shared rotation that keeps retrieval intact, and neighbour
agreement alone is blind to a uniformly shrunken signal; the mean moves with either. Both parts
are recorded with every evaluation (``Metrics.details``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autoprune.errors import ConfigError, DataError
from autoprune.objective.fidelity import Fidelity, embedding_fidelity, sentence_embeddings
from autoprune.objective.lm_fidelity import KL_BLOCKS, KLProxy
from autoprune.objective.proxy import ProxySettings, accuracy, proxy_accuracy
from autoprune.zoo.lm_text import LMCorpus
from autoprune.zoo.text import TokenizedCorpus, TokenSplit

#: Sentences per forward pass when embedding (short sentences first, so little padding).
EMBED_BATCH = 64
#: Calibration batches (of ``EMBED_BATCH`` training sentences) for the Taylor and activation criteria.
CALIBRATION_BATCHES = 4


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Distillation loss of sentence embeddings: ``1 - cosine`` of each pair, averaged.

    On L2-normalised embeddings this is half the mean squared error, so it ranks and trains like
    MSE (the embedding distillation of Reimers & Gurevych 2020, "Making Monolingual Sentence
    Embeddings Multilingual using Knowledge Distillation").

    Args:
        student: ``(N, hidden)`` embeddings of the pruned model.
        teacher: ``(N, hidden)`` embeddings of the dense model.

    Returns:
        A scalar tensor in ``[0, 2]``.
    """
    return (1.0 - nn.functional.cosine_similarity(student, teacher.to(student.dtype), dim=-1)).mean()


def fidelity_score(fid: Fidelity) -> float:
    """The one number the search maximises: ``(cosine + neighbour_agreement) / 2`` (see the module docstring)."""
    return 0.5 * (fid.cosine + fid.neighbour_agreement)


class AccuracyProxy:
    """Adaptive BN then top-1 accuracy on the first ``settings.val_samples`` validation samples.

    Args:
        model: The dense classifier.
        data: A :class:`~autoprune.zoo.DataBundle` (``train`` for BN statistics and calibration, ``val`` scored).
        settings: Subset and batch sizes.
        seed: Seed of the BN-recalibration and calibration batches.
    """

    metric = "accuracy"
    #: ``loss(output, target)`` of the Taylor criterion (None: cross-entropy to the labels).
    loss: Callable[[Any, Any], torch.Tensor] | None = None

    def __init__(self, model: nn.Module, data: Any, settings: ProxySettings = ProxySettings(), *, seed: int = 0) -> None:
        self.model, self.data, self.settings, self.seed = model, data, settings, seed
        self.details: dict[str, float] = {}

    def dense_score(self) -> float:
        """The dense model's validation accuracy (no BN recalibration), in [0, 1]."""
        return accuracy(self.model, self.data.val.subset(self.settings.val_samples))

    def dense_output_finite(self) -> bool:
        """False when the dense model outputs NaN or inf on validation samples (e.g. a diverged training)."""
        with torch.inference_mode():
            y = self.model.eval()(self.data.val.x[:64])
        return bool(torch.isfinite(y).all()) if isinstance(y, torch.Tensor) else True

    def score(self, pruned: nn.Module) -> float:
        """Proxy accuracy of a pruned copy in [0, 1] (its BN buffers are re-estimated in place)."""
        return proxy_accuracy(pruned, self.data, self.settings, seed=self.seed)

    def calibration_batches(self) -> list[tuple[Any, Any]]:
        """``(x, y)`` training batches for the Taylor and activation criteria."""
        return list(self.data.train.batches(64, shuffle=True, seed=self.seed))[:CALIBRATION_BATCHES]


class FidelityProxy:
    """Fidelity of a pruned sentence encoder to the dense one on fixed sentences (label-free).

    Args:
        model: The dense encoder, ``(input_ids, attention_mask)`` -> ``(N, hidden)``.
        split: The sentences scored (validation during search; test for the final figures).
        neighbours: ``k`` of the neighbour agreement; lowered to ``len(split) - 1`` for a small split.
        calibration: Training sentences for the Taylor and activation criteria (None: none).
        seed: Seed of the calibration batches.

    Attributes:
        reference: ``(N, hidden)`` dense embeddings of ``split``, in :meth:`TokenSplit.batches`
            ``by_length`` order.
        details: ``cosine`` and ``neighbour_agreement`` of the last :meth:`score`.

    Raises:
        DataError: ``split`` has fewer than 2 sentences (no neighbours to compare).
    """

    metric = "fidelity"
    loss = staticmethod(embedding_loss)

    def __init__(self, model: nn.Module, split: TokenSplit, *, neighbours: int = 10, calibration: TokenSplit | None = None,
                 seed: int = 0) -> None:
        if len(split) < 2:
            raise DataError(f"proxy: fidelity needs at least 2 sentences to compare neighbours; the split has {len(split)}")
        self.model, self.split, self.calibration, self.seed = model, split, calibration, seed
        self.k = max(1, min(int(neighbours), len(split) - 1))
        self.reference = sentence_embeddings(model, self._batches())
        self.details: dict[str, float] = {}
        self._calibration: list[tuple[Any, Any]] | None = None

    def _batches(self) -> Any:
        return self.split.batches(EMBED_BATCH, by_length=True)

    def fidelity(self, model: nn.Module) -> Fidelity:
        """Cosine and neighbour agreement of ``model``'s embeddings of the split to the dense ones.

        Raises:
            ModelError: ``model``'s embeddings do not have the dense shape.
        """
        return embedding_fidelity(self.reference, sentence_embeddings(model, self._batches()), k=self.k)

    def dense_score(self) -> float:
        """1.0 by construction (the dense embeddings against themselves)."""
        return fidelity_score(embedding_fidelity(self.reference, self.reference, k=self.k))

    def dense_output_finite(self) -> bool:
        """False when the dense embeddings hold NaN or inf."""
        return bool(torch.isfinite(self.reference).all())

    def score(self, pruned: nn.Module) -> float:
        """:func:`fidelity_score` of a pruned copy; its parts go to :attr:`details`."""
        fid = self.fidelity(pruned)
        self.details = {"cosine": fid.cosine, "neighbour_agreement": fid.neighbour_agreement}
        return fidelity_score(fid)

    def calibration_batches(self) -> list[tuple[Any, Any]]:
        """``((input_ids, attention_mask), dense embeddings)`` of a few shuffled training batches, computed once.

        The target of the Taylor criterion's loss (:func:`embedding_loss`) is the dense model's
        own embedding, so gradients say how much each head or neuron matters to it.
        """
        if self._calibration is None:
            source = self.calibration if self.calibration is not None else self.split
            batches = list(source.batches(EMBED_BATCH, shuffle=True, seed=self.seed))[:CALIBRATION_BATCHES]
            self._calibration = [((ids, mask), sentence_embeddings(self.model, [(ids, mask)])) for ids, mask in batches]
        return self._calibration


def make_proxy(model: nn.Module, data: Any, settings: ProxySettings = ProxySettings(), *, seed: int = 0) -> AccuracyProxy | FidelityProxy | KLProxy:
    """The proxy the data calls for: KL for a decoder's text blocks, fidelity for tokenised sentences, accuracy for labelled data.

    Args:
        model: The dense model.
        data: A :class:`~autoprune.zoo.lm_text.LMCorpus` (a decoder LLM's blocks: :class:`~autoprune.objective.lm_fidelity.KLProxy`
            on the first ``min(val_samples, KL_BLOCKS)`` validation blocks), a
            :class:`~autoprune.zoo.text.TokenizedCorpus` or a :class:`~autoprune.zoo.DataBundle`.
        settings: ``val_samples`` (sentences scored for fidelity), ``neighbours``, and the
            accuracy proxy's sizes.
        seed: Seed of calibration batches.

    Raises:
        ConfigError: ``settings.metric`` does not fit the data (fidelity needs text, accuracy labels).
        DataError: a validation split too small for fidelity.
    """
    if isinstance(data, LMCorpus):
        if settings.metric not in (None, "kl"):
            raise ConfigError(f"proxy.metric: {settings.metric!r} does not fit a decoder's text; allowed: kl or null")
        return KLProxy(model, data.val.subset(min(settings.val_samples or KL_BLOCKS, KL_BLOCKS)), calibration=data.train)
    text = isinstance(data, TokenizedCorpus)
    if settings.metric not in (None, "fidelity" if text else "accuracy"):
        raise ConfigError(f"proxy.metric: {settings.metric!r} does not fit data {type(data).__name__}; "
                          f"allowed: {'fidelity' if text else 'accuracy'} or null")
    if text:
        return FidelityProxy(model, data.val.subset(settings.val_samples), neighbours=settings.neighbours,
                             calibration=data.train, seed=seed)
    return AccuracyProxy(model, data, settings, seed=seed)


__all__ = ["AccuracyProxy", "CALIBRATION_BATCHES", "FidelityProxy", "KLProxy", "embedding_loss", "fidelity_score", "make_proxy"]
