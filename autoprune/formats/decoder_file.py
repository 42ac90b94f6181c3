"""The pruned-decoder folder: safetensors weights, the dense Hugging Face config with per-layer sizes, the tokenizer.

:func:`save_decoder` writes a folder any user can take away and reload with
``autoprune.zoo.decoder.load_decoder("hf:/path")`` (:mod:`autoprune.zoo.pruned_decoder` rebuilds
layers of their own sizes). It holds:

- ``model.safetensors``: the state dict with Hugging Face key names, the tied LM head stored once
  (safetensors refuses shared tensors; the loader ties it again);
- ``config.json``: the model's config as transformers writes it (dense head counts and MLP width,
  so it stays valid; ``num_hidden_layers`` and ``layer_types`` follow dropped layers), plus
  ``"autoprune": {"layers": [per-layer num_attention_heads, num_key_value_heads,
  intermediate_size], "source_layers": [index of each layer in the dense model]}``;
- the tokenizer's files, when a tokenizer is given.

The folder is written beside its destination and renamed into place, so a failure leaves nothing
half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.errors import ConfigError
from autoprune.graph.decoder_surgery import decoder_sizes
from autoprune.zoo.pruned_decoder import CONFIG_KEY, WEIGHTS_FILE, pruned_record


def save_decoder(model: nn.Module, folder: str | os.PathLike, *, tokenizer: Any = None) -> Path:
    """Write a (pruned) Llama-family decoder as a reloadable folder (see the module docstring).

    Args:
        model: A Hugging Face causal LM, pruned by :func:`~autoprune.graph.decoder_surgery.prune_decoder` or dense.
        folder: The destination; an existing folder is replaced only if it holds a decoder saved by this function.
        tokenizer: Its tokenizer (``save_pretrained`` writes its files into the folder); None: no tokenizer.

    Returns:
        The folder.

    Raises:
        ConfigError: ``folder`` exists and is not an autoprune decoder folder (nothing is overwritten).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and pruned_record(folder) is None)):
        raise ConfigError(f"--out: {str(folder)!r} exists and is not a decoder folder saved by autoprune; give a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        config = model.config.to_dict()
        record = dict(getattr(model.config, CONFIG_KEY, None) or {})
        sizes = decoder_sizes(model)
        config[CONFIG_KEY] = {"layers": sizes, "source_layers": list(record.get("source_layers", range(len(sizes))))}
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        state, seen = {}, set()
        for key, t in model.state_dict().items():
            if t.data_ptr() in seen and key == "lm_head.weight":
                continue  # tied to embed_tokens
            seen.add(t.data_ptr())
            state[key] = t.detach().contiguous().cpu()
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.replace(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


__all__ = ["save_decoder"]
