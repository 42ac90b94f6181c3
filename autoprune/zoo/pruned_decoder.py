"""Rebuilding a pruned decoder LLM from its folder: a dense config, per-layer sizes under ``"autoprune"``, safetensors weights.

A pruned Llama-family decoder has layers of different widths, which ``from_pretrained`` cannot
build (it reports every pruned tensor as a size mismatch), and transformers 5's ``per_layer_config``
is refused by Llama's config validation. So the folder keeps the **dense, valid** Hugging Face
``config.json`` (with ``num_hidden_layers`` the layers kept) plus a key of autoprune's own,
``"autoprune": {"layers": [{"num_attention_heads", "num_key_value_heads", "intermediate_size"},
...], "source_layers": [...]}``, written by :func:`autoprune.formats.decoder_file.save_decoder`.
:func:`rebuild_pruned` builds the model on the ``meta`` device, replaces each decoder layer by
one of its own size (the family's decoder-layer class, built from a copy of the config holding
that layer's sizes), assigns the safetensors weights, ties the LM head and rebuilds the rotary
embedding's buffers.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import ModelError, describe

#: The key of ``config`` (and of ``config.json``) holding the per-layer sizes of a pruned decoder.
CONFIG_KEY = "autoprune"
#: The per-layer config fields a pruned decoder records.
LAYER_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
WEIGHTS_FILE = "model.safetensors"


def pruned_record(folder: Path) -> dict | None:
    """The ``"autoprune"`` record of a folder's ``config.json`` (None for a plain Hugging Face folder)."""
    try:
        record = json.loads((folder / "config.json").read_text()).get(CONFIG_KEY)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def rebuild_pruned(transformers: Any, folder: Path, record: dict, *, name: str, attn_implementation: str = "sdpa") -> nn.Module:
    """Build the pruned decoder stored in ``folder`` (see the module docstring), fp32, eval mode.

    Raises:
        ModelError: the record does not match the config, or the weights do not fit the sizes.
    """
    from safetensors.torch import load_file

    cfg = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    layers = record.get("layers")
    if not isinstance(layers, list) or len(layers) != cfg.num_hidden_layers or not all(isinstance(s, dict) and set(s) >= set(LAYER_FIELDS) for s in layers):
        raise ModelError(f"model.name: {name!r}: config.json's {CONFIG_KEY!r}.layers must list {', '.join(LAYER_FIELDS)} for each of its {cfg.num_hidden_layers} layers")
    cfg._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        layer_class = type(model.model.layers[0])
        for i, sizes in enumerate(layers):
            c = copy.copy(cfg)
            for k in LAYER_FIELDS:
                setattr(c, k, int(sizes[k]))
            layer = layer_class(c, i)
            for part in (layer.self_attn, layer.mlp):
                if getattr(part, "config", None) is c:
                    part.config = cfg  # the sizes were for construction; run-time settings (attention kernel) are the model's
            model.model.layers[i] = layer
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except (OSError, RuntimeError, ValueError) as e:  # a missing file, or shapes that do not fit the recorded sizes
        raise ModelError(f"model.name: {name!r}: the weights in {str(folder)!r} do not fit its per-layer sizes ({type(e).__name__}: {describe(e)})") from e
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelError(f"model.name: {name!r}: {WEIGHTS_FILE} in {str(folder)!r} lacks {sorted(set(missing) - tied)[:5]} or has extra {sorted(unexpected)[:5]}")
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise ModelError(f"model.name: {name!r}: tensors not restored from {str(folder)!r}: {on_meta[:5]}")
    setattr(model.config, CONFIG_KEY, record)
    return model.eval()


__all__ = ["CONFIG_KEY", "LAYER_FIELDS", "WEIGHTS_FILE", "pruned_record", "rebuild_pruned"]
