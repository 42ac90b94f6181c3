"""Embedding fidelity: a label-free proxy of how much a pruned sentence encoder still computes what the dense one did.

Two figures, both on held-out text (the ``val`` split during search, ``test`` for the final report):

* **cosine**: the mean cosine similarity of each sentence's pruned and dense embeddings;
* **neighbour agreement**: for each sentence, the overlap of its ``k`` nearest neighbours
  (cosine, itself excluded) among the other sentences under the two models, divided by ``k``
  and averaged. This is the mutual k-nearest-neighbour alignment of Huh et al. 2024 ("The
  Platonic Representation Hypothesis"), one of the neighbourhood measures surveyed by Klabunde
  et al. 2023 ("Similarity of Neural Network Models"). It asks whether retrieval with the pruned
  model returns what the dense model would, which cosine alone does not: a shared rotation
  keeps neighbours but lowers cosine, and a small uniform error may still reorder neighbours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.errors import ConfigError, ModelError

DEFAULT_NEIGHBOURS = 10


@dataclass(frozen=True)
class Fidelity:
    """Fidelity of a model's sentence embeddings to a reference's.

    Attributes:
        cosine: Mean cosine similarity of paired embeddings, in ``[-1, 1]`` (1: same directions).
        neighbour_agreement: Mean ``|kNN_ref(i) ∩ kNN_model(i)| / k``, in ``[0, 1]`` (1: same
            neighbours; about ``k / (n - 1)`` for unrelated embeddings).
        k: Neighbours compared per sentence.
        n: Sentences.
    """

    cosine: float
    neighbour_agreement: float
    k: int
    n: int


def sentence_embeddings(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Embeddings of every sentence: ``model(input_ids, attention_mask)`` over ``batches``, concatenated.

    Runs in eval mode under ``torch.inference_mode``; the training flag is restored.

    Args:
        model: A sentence encoder, ``(B, L)`` ids and mask -> ``(B, hidden)``.
        batches: ``(input_ids, attention_mask)`` pairs, e.g. ``TokenSplit.batches(64)``.

    Returns:
        ``(N, hidden)`` float32.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            parts = [model(ids, mask).float() for ids, mask in batches]
    finally:
        model.train(was_training)
    if not parts:
        raise ConfigError("data: no sentences to embed (the split is empty)")
    return torch.cat(parts)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(x.float(), p=2.0, dim=-1)


def _neighbours(unit: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Indices ``(N, k)`` of each row's ``k`` most cosine-similar other rows (ties broken by index)."""
    out = []
    for start in range(0, unit.shape[0], chunk):
        sims = unit[start : start + chunk] @ unit.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = float("-inf")
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def embedding_fidelity(reference: torch.Tensor, candidate: torch.Tensor, *, k: int = DEFAULT_NEIGHBOURS, chunk: int = 1024) -> Fidelity:
    """Mean cosine similarity and k-nearest-neighbour agreement of ``candidate`` embeddings to ``reference``.

    Row ``i`` of both is the same sentence. Embeddings are L2-normalised here, so unnormalised
    ones are fine. Neighbours are found by cosine among the ``N`` sentences, each excluding
    itself; agreement is the mean overlap of the two neighbour sets divided by ``k`` (the
    mutual k-NN alignment of Huh et al. 2024). Memory is ``O(chunk * N)``.

    Args:
        reference: ``(N, hidden)`` embeddings of the dense model.
        candidate: ``(N, hidden)`` embeddings of the pruned model (the same hidden size).
        k: Neighbours per sentence; ``1 <= k <= N - 1``.
        chunk: Rows of the similarity matrix computed at a time.

    Returns:
        :class:`Fidelity` (cosine in ``[-1, 1]``, agreement in ``[0, 1]``); 1.0 and 1.0 for identical embeddings.

    Raises:
        ModelError: the two do not have the same shape (e.g. a pruned model whose hidden size changed).
        ConfigError: ``k`` out of range for ``N``.
    """
    if reference.dim() != 2 or reference.shape != candidate.shape:
        raise ModelError(
            f"fidelity: candidate embeddings {tuple(candidate.shape)} do not match the reference's {tuple(reference.shape)}; "
            f"expected the same (sentences, hidden)"
        )
    n = int(reference.shape[0])
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n - 1:
        raise ConfigError(f"proxy.neighbours: {k!r} is out of range for {n} sentences; allowed: 1..{max(1, n - 1)}")
    ref, cand = _unit(reference), _unit(candidate)
    cosine = float((ref * cand).sum(1).mean())
    nn_ref, nn_cand = _neighbours(ref, k, chunk), _neighbours(cand, k, chunk)
    # |A ∩ B| per row: each of A's k indices is counted if it appears among B's k (no duplicates within a row).
    overlap = (nn_ref.unsqueeze(2) == nn_cand.unsqueeze(1)).any(2).sum(1).float()
    return Fidelity(min(cosine, 1.0), float(overlap.mean()) / k, k, n)


def model_fidelity(
    model: nn.Module,
    reference: torch.Tensor,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    k: int = DEFAULT_NEIGHBOURS,
) -> Fidelity:
    """Fidelity of ``model`` to reference embeddings computed once from the dense model on the same batches.

    Args:
        model: The (pruned) sentence encoder.
        reference: ``(N, hidden)`` dense embeddings of the sentences in ``batches``, in order
            (:func:`sentence_embeddings` of the dense model).
        batches: ``(input_ids, attention_mask)`` pairs, the same sentences in the same order.
        k: Neighbours per sentence.

    Returns:
        :class:`Fidelity`.

    Raises:
        ModelError: ``model``'s embeddings do not have the reference's shape.
        ConfigError: ``k`` out of range.
    """
    return embedding_fidelity(reference, sentence_embeddings(model, batches), k=k)


__all__ = ["DEFAULT_NEIGHBOURS", "Fidelity", "embedding_fidelity", "model_fidelity", "sentence_embeddings"]
