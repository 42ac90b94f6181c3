"""A pruned decoder a user can take away: safetensors + config with per-layer sizes + tokenizer, reloaded with identical logits."""

import json

import pytest
import torch

from autoprune.errors import ConfigError, ModelError
from autoprune.formats.decoder_file import save_decoder
from autoprune.graph.decoder import DecoderGraph
from autoprune.graph.decoder_importance import magnitude_scores
from autoprune.graph.decoder_surgery import decoder_sizes, prune_decoder
from autoprune.graph.policy import Policy
from autoprune.zoo.decoder import load_decoder, tiny_decoder
from autoprune.zoo.text import DEBIAN_FORTUNES, load_fortunes

pytestmark = pytest.mark.skipif(not (DEBIAN_FORTUNES / "fortunes").is_file(), reason="Debian package 'fortunes' not installed")

POLICY = Policy({
    "model.layers.0.self_attn.query_heads": 0.34, "model.layers.1.self_attn.kv_groups": 0.5, "model.layers.1.mlp": 0.5,
    "model.layers.3.self_attn.kv_groups": 0.5, "model.layers.3.self_attn.query_heads": 0.67, "model.layers.3.mlp": 0.9,
}, ("model.layers.2",))  # fmt: skip


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_a_pruned_decoder_reloads_from_its_folder_with_identical_logits_and_generation(tmp_path, arch):
    dec = tiny_decoder(load_fortunes(limit=60).train, arch, layers=4)
    pruned = prune_decoder(dec.model, DecoderGraph(dec.model).plan(POLICY, magnitude_scores(dec.model)))
    folder = save_decoder(pruned, tmp_path / "pruned", tokenizer=dec.tokenizer)
    config = json.loads((folder / "config.json").read_text())
    assert config["autoprune"] == {"layers": decoder_sizes(pruned), "source_layers": [0, 1, 3]}
    assert config["num_hidden_layers"] == 3 and config["num_attention_heads"] == 6  # dense, valid global config

    back = load_decoder(f"hf:{folder}")
    assert decoder_sizes(back.model) == decoder_sizes(pruned)
    assert back.model.lm_head.weight.data_ptr() == back.model.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([dec.tokenizer("What is the capital of France?").input_ids])
    with torch.no_grad():
        assert torch.equal(back.model(ids).logits, pruned(ids).logits)
        a = back.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        b = pruned.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)
    assert back.tokenizer("a fortune").input_ids == dec.tokenizer("a fortune").input_ids
    back.model.set_attn_implementation("eager")  # the attention kernel is the model's, not frozen per layer
    with torch.no_grad():
        assert torch.allclose(back.model(ids).logits, pruned(ids).logits, atol=1e-5)


def test_saving_over_a_folder_that_is_not_a_decoder_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    dec = tiny_decoder(load_fortunes(limit=30).train)
    with pytest.raises(ConfigError, match="exists and is not a decoder folder saved by autoprune"):
        save_decoder(dec.model, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_weights_that_do_not_fit_the_recorded_sizes_are_refused_in_one_line(tmp_path):
    dec = tiny_decoder(load_fortunes(limit=30).train)
    folder = save_decoder(dec.model, tmp_path / "d", tokenizer=dec.tokenizer)
    config = json.loads((folder / "config.json").read_text())
    config["autoprune"]["layers"][0]["intermediate_size"] = 10
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as e:
        load_decoder(f"hf:{folder}")
    assert "do not fit its per-layer sizes" in str(e.value) and "\n" not in str(e.value)
