"""Real English text for encoders: Debian's ``fortunes`` quotations, split three ways and tokenised.

The quotations are parsed from the ``%``-separated files under ``/usr/share/games/fortunes``
(Debian package ``fortunes``). Each quotation goes to ``train``, ``val`` or ``test`` by a hash of
its own text, so the split never depends on which files are installed or in what order they
are read: adding a file adds quotations to every split and moves none. ``train`` is for
importance scores, calibration and distillation, ``val`` for the search's proxy, ``test`` for
the final figures only.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoprune.errors import ConfigError, DataError

DEBIAN_FORTUNES = Path("/usr/share/games/fortunes")
TEXT_DATASET_NAMES = ("fortunes",)
DEFAULT_MAX_LENGTH = 128
# Overstriking in old fortune files: "___\bWORD" and "_\bx" (underline), "x\bx" (bold).
_OVERSTRIKE = re.compile("_+\x08+|.\x08")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # bells, stray backspaces, C1 codes; not tab or newline


@dataclass(frozen=True)
class TextCorpus:
    """Sentences split three ways: ``train`` (scores, calibration, distillation), ``val`` (search), ``test`` (final)."""

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def tokenize(self, tokenizer: Any, *, max_length: int = DEFAULT_MAX_LENGTH, max_positions: int | None = None) -> TokenizedCorpus:
        """Tokenise every split with a Hugging Face tokenizer, truncating at ``max_length`` tokens.

        Args:
            tokenizer: A ``transformers`` tokenizer (called with ``padding``, ``truncation``,
                ``max_length`` and ``return_tensors="pt"``).
            max_length: Tokens per sentence at most, special tokens included.
            max_positions: The model's ``max_position_embeddings`` (None: not checked).

        Returns:
            The tokenised corpus.

        Raises:
            ConfigError: ``max_length`` is not an integer >= 2 or is above ``max_positions``.
        """
        check_max_length(max_length, max_positions)
        splits = {s: tokenize_texts(tokenizer, getattr(self, s), max_length=max_length) for s in ("train", "val", "test")}
        return TokenizedCorpus(self.name, max_length=max_length, tokenizer=tokenizer, **splits)


def check_max_length(max_length: object, max_positions: int | None) -> int:
    """Return ``max_length`` if it is an integer in ``[2, max_positions]``.

    Raises:
        ConfigError: naming ``data.max_length``, the value and the allowed range.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"data.max_length: expected an integer >= 2, got {max_length!r}")
    if max_positions is not None and max_length > max_positions:
        raise ConfigError(f"data.max_length: {max_length} is above the model's maximum positions ({max_positions}); allowed: 2..{max_positions}")
    return max_length


@dataclass
class TokenSplit:
    """Token ids and attention masks of one split, ``(N, L)`` int64 each, padded to the longest sentence.

    ``texts`` are the sentences the rows come from, in order.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, n: int | None) -> TokenSplit:
        """The first ``n`` sentences (all when ``n`` is None or larger than the split)."""
        if n is None or n >= len(self):
            return self
        return _trimmed(self.input_ids[:n], self.attention_mask[:n], self.texts[:n])

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int = 0, by_length: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(input_ids, attention_mask)`` batches, each ``(B, L_b)`` with ``B <= batch_size``.

        ``L_b`` is the longest sentence of the batch: columns that are padding in every row are cut,
        which changes nothing for a masked encoder and saves the time of computing them.

        Args:
            batch_size: Rows per batch at most.
            shuffle: Random order (seeded by ``seed``).
            seed: Seed of the shuffle.
            by_length: Sentences in order of length (a stable sort, so the same order every call):
                batches of similar lengths carry little padding, about 3x less compute on fortunes
                at ``max_length`` 128. Embeddings then come in that order, the same for every model.
                With ``shuffle`` too, sentences of equal length are shuffled and then the *batches*
                come in random order (length-grouped batching, as ``group_by_length`` of Hugging
                Face's ``Trainer``): training sees random batches with little padding.
        """
        n = len(self)
        gen = torch.Generator().manual_seed(seed)
        if by_length:
            lengths = self.attention_mask.sum(1)
            if shuffle:  # random order among equal lengths, then a stable sort by length
                perm = torch.randperm(n, generator=gen)
                order = perm[torch.sort(lengths[perm], stable=True).indices]
            else:
                order = torch.sort(lengths, stable=True).indices
        elif shuffle:
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        starts = list(range(0, n, batch_size))
        if by_length and shuffle:
            starts = [starts[i] for i in torch.randperm(len(starts), generator=gen).tolist()]
        for start in starts:
            idx = order[start : start + batch_size]
            length = max(1, int(self.attention_mask[idx].sum(1).max()))
            yield self.input_ids[idx, :length], self.attention_mask[idx, :length]


def _trimmed(ids: torch.Tensor, mask: torch.Tensor, texts: tuple[str, ...]) -> TokenSplit:
    length = max(1, int(mask.sum(1).max())) if len(mask) else ids.shape[1]
    return TokenSplit(ids[:, :length].contiguous(), mask[:, :length].contiguous(), texts)


@dataclass
class TokenizedCorpus:
    """A :class:`TextCorpus` tokenised for one model: three :class:`TokenSplit` and how they were made."""

    name: str
    train: TokenSplit
    val: TokenSplit
    test: TokenSplit
    max_length: int
    tokenizer: Any

    def example_input(self, batch_size: int = 1, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, each ``(batch_size, seq_len)`` int64, from training sentences.

        The shape at which latency is measured: every row is padded (or cut) to exactly
        ``seq_len`` tokens (default ``max_length``), as a server batching requests to a fixed
        length runs them. Sentences repeat when the split has fewer than ``batch_size``.

        Raises:
            ConfigError: ``batch_size`` < 1 or ``seq_len`` is not in ``[2, max_length]``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"latency.batch_size: expected an integer >= 1, got {batch_size!r}")
        seq_len = self.max_length if seq_len is None else seq_len
        check_max_length(seq_len, self.max_length)
        texts = [self.train.texts[i % len(self.train.texts)] for i in range(batch_size)]
        return tokenize_texts(self.tokenizer, texts, max_length=seq_len, pad_to_max=True)


def tokenize_texts(tokenizer: Any, texts: tuple[str, ...] | list[str], *, max_length: int, pad_to_max: bool = False) -> Any:
    """Tokenise ``texts`` with a Hugging Face tokenizer, truncating at ``max_length`` tokens.

    Args:
        tokenizer: A ``transformers`` tokenizer.
        texts: Sentences.
        max_length: Tokens per row at most (special tokens included).
        pad_to_max: Pad every row to exactly ``max_length`` and return ``(input_ids, attention_mask)``;
            otherwise return a :class:`TokenSplit` padded to its longest row.

    Returns:
        A :class:`TokenSplit`, or with ``pad_to_max`` a pair of ``(N, max_length)`` int64 tensors.
    """
    enc = tokenizer(
        list(texts), padding="max_length" if pad_to_max else "longest", truncation=True, max_length=max_length,
        return_tensors="pt",
    )  # fmt: skip
    ids, mask = enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)
    if pad_to_max:
        return ids, mask
    return _trimmed(ids, mask, tuple(texts))


def fortunes_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the ``fortunes`` files: ``data_dir`` when given, else Debian's ``/usr/share/games/fortunes``.

    Raises:
        DataError: the folder holds no fortune file, naming the Debian package.
    """
    d = Path(data_dir) if data_dir is not None else DEBIAN_FORTUNES
    if d.is_dir() and _fortune_files(d):
        return d
    field = "data.data_dir: " if data_dir is not None else ""
    raise DataError(
        f"{field}no fortune files in {str(d)!r}; install the Debian package with 'apt-get install -y fortunes' "
        f"(or give a folder of %-separated text files)"
    )


def _fortune_files(d: Path) -> list[Path]:
    """The quotation files of a fortunes folder: no ``.dat`` index, no ``.u8`` alias, no hidden file."""
    return sorted(
        p for p in d.iterdir()
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".") and p.suffix not in (".dat", ".u8")
    )  # fmt: skip


def parse_fortunes(text: str) -> list[str]:
    """The quotations of one fortune file: ``%``-separated, whitespace collapsed, overstriking and control characters removed.

    Entries that are mostly not letters (ASCII art) and empty entries are left out.
    """
    quotes = []
    for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        clean = " ".join(_CONTROL.sub("", _OVERSTRIKE.sub("", entry)).split())
        visible = clean.replace(" ", "")
        if visible and sum(c.isalpha() for c in visible) >= 0.6 * len(visible):
            quotes.append(clean)
    return quotes


def split_of(text: str, val_fraction: float, test_fraction: float) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a sentence, from the SHA-1 of its text (stable across runs and files)."""
    u = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def load_fortunes(
    *, data_dir: str | os.PathLike | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1, limit: int | None = None
) -> TextCorpus:
    """Debian's ``fortunes`` quotations, split by a hash of each quotation's text.

    Args:
        data_dir: A folder of ``%``-separated files (None: ``/usr/share/games/fortunes``).
        val_fraction: Expected share of quotations in ``val``.
        test_fraction: Expected share in ``test``.
        limit: Keep the first ``limit`` sentences of each split (in file order; None: all),
            e.g. a small real subset for tests.

    Returns:
        The corpus; duplicate quotations are kept once.

    Raises:
        ConfigError: fractions out of range.
        DataError: no fortune files, or one that cannot be read.
    """
    for field, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
            raise ConfigError(f"{field}: {value!r} is out of range; allowed: 0 < {field.split('.')[1]} < 1")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"data.val_fraction: {val_fraction} + test_fraction {test_fraction} leave no training text; their sum must be < 1")
    d = fortunes_dir(data_dir)
    seen: dict[str, str] = {}
    for path in _fortune_files(d):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise DataError(f"cannot read fortune file {path}: {e}") from e
        for quote in parse_fortunes(text):
            seen.setdefault(quote, split_of(quote, val_fraction, test_fraction))
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for quote, split in seen.items():
        splits[split].append(quote)
    if not all(splits.values()):
        raise DataError(f"fortune files in {str(d)!r} hold too few quotations ({len(seen)}) to fill train, val and test")
    return TextCorpus("fortunes", **{k: tuple(v[:limit] if limit else v) for k, v in splits.items()})


def load_text_data(name: str, *, data_dir: str | None = None, val_fraction: float | None = None, limit: int | None = None) -> TextCorpus:
    """Load a text data set by name (``fortunes``).

    Raises:
        ConfigError: unknown name or bad fractions.
        DataError: the files are missing (naming the Debian package) or unreadable.
    """
    if name == "fortunes":
        kwargs: dict[str, Any] = {} if val_fraction is None else {"val_fraction": val_fraction}
        return load_fortunes(data_dir=data_dir, limit=limit, **kwargs)
    raise ConfigError(f"data.name: unknown text data set {name!r}; allowed: {', '.join(TEXT_DATASET_NAMES)}")


__all__ = [
    "DEFAULT_MAX_LENGTH", "TEXT_DATASET_NAMES", "TextCorpus", "TokenSplit", "TokenizedCorpus", "check_max_length",
    "fortunes_dir", "load_fortunes", "load_text_data", "parse_fortunes", "split_of", "tokenize_texts",
]  # fmt: skip
