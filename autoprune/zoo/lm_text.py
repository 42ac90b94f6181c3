"""Real text for decoder LLMs: the ``fortunes`` splits (:mod:`autoprune.zoo.text`) as fixed-length blocks of token ids.

A causal LM is scored on contiguous text, not on padded sentences: the quotations of a split are
tokenised (no special tokens), joined with the tokenizer's end-of-sequence token after each one,
and the stream is cut into blocks of ``seq_len`` tokens (the remainder is dropped), as in the
perplexity evaluations of GPT-2 (Radford et al. 2019) and Hugging Face's ``run_clm`` example. The
split is the hash split of :func:`~autoprune.zoo.text.load_fortunes`: ``train`` for calibration,
importance and distillation, ``val`` for the search's proxy, ``test`` for the reported perplexity.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from autoprune.errors import DataError
from autoprune.zoo.text import TextCorpus, check_max_length

#: Quotations tokenised per call while filling blocks.
_CHUNK = 256


@dataclass
class TokenBlocks:
    """Blocks of contiguous token ids of one split, ``input_ids`` ``(N, seq_len)`` int64 (no padding)."""

    input_ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def tokens(self) -> int:
        """Token ids in all blocks."""
        return int(self.input_ids.numel())

    def subset(self, n: int | None) -> TokenBlocks:
        """The first ``n`` blocks (all when ``n`` is None or larger)."""
        return self if n is None or n >= len(self) else TokenBlocks(self.input_ids[:n])

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """``(B, seq_len)`` batches in order, ``B <= batch_size``."""
        for start in range(0, len(self), batch_size):
            yield self.input_ids[start : start + batch_size]


@dataclass
class LMCorpus:
    """A :class:`~autoprune.zoo.text.TextCorpus` tokenised for one decoder: three :class:`TokenBlocks` and how they were made."""

    name: str
    train: TokenBlocks
    val: TokenBlocks
    test: TokenBlocks
    seq_len: int
    tokenizer: Any


def token_blocks(tokenizer: Any, texts: Sequence[str], *, seq_len: int, max_blocks: int | None = None, split: str = "text") -> TokenBlocks:
    """The texts as blocks of ``seq_len`` contiguous token ids, each text followed by the tokenizer's EOS token.

    Args:
        tokenizer: A ``transformers`` tokenizer (``eos_token_id`` is used as separator when set).
        texts: Quotations, in order.
        seq_len: Tokens per block.
        max_blocks: Stop after this many blocks (None: all the text).
        split: Name of the split, for the error message.

    Raises:
        DataError: the texts fill no block.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    want = None if max_blocks is None else max_blocks * seq_len
    for start in range(0, len(texts), _CHUNK):
        for ids in tokenizer(list(texts[start : start + _CHUNK]), add_special_tokens=False)["input_ids"]:
            stream += list(ids) + ([int(eos)] if eos is not None else [])
        if want is not None and len(stream) >= want:
            break
    n = len(stream) // seq_len if want is None else min(len(stream), want) // seq_len
    if n < 1:
        raise DataError(f"data: the {split} split holds {len(stream)} tokens, fewer than one block of data.max_length {seq_len}")
    return TokenBlocks(torch.tensor(stream[: n * seq_len], dtype=torch.int64).view(n, seq_len))


def lm_corpus(corpus: TextCorpus, tokenizer: Any, *, seq_len: int = 128, max_positions: int | None = None,
              max_blocks: int | None = None) -> LMCorpus:
    """Tokenise the three splits of ``corpus`` into :class:`TokenBlocks` of ``seq_len`` tokens.

    Args:
        corpus: The text (:func:`~autoprune.zoo.text.load_fortunes`).
        tokenizer: The decoder's tokenizer.
        seq_len: Tokens per block (``data.max_length``).
        max_positions: The model's context (``max_position_embeddings``; None: not checked).
        max_blocks: Blocks per split at most (None: all).

    Raises:
        ConfigError: ``seq_len`` is not an integer >= 2 or is above the model's context.
        DataError: a split too short for one block.
    """
    check_max_length(seq_len, max_positions)
    splits = {s: token_blocks(tokenizer, getattr(corpus, s), seq_len=seq_len, max_blocks=max_blocks, split=s) for s in ("train", "val", "test")}
    return LMCorpus(corpus.name, seq_len=seq_len, tokenizer=tokenizer, **splits)


__all__ = ["LMCorpus", "TokenBlocks", "lm_corpus", "token_blocks"]
