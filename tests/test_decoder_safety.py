"""The decoder's safety net: a unit or layer whose surgery is wrong is left dense with one warning, one check per layer signature."""

import logging

import pytest
import torch

from autoprune.graph.decoder_surgery import check_decoder, verified_decoder_graph
from autoprune.zoo.decoder import tiny_decoder_model

LlamaMLP = pytest.importorskip("transformers.models.llama.modeling_llama", reason="the 'llm' extra is not installed").LlamaMLP


class FlippedMLP(LlamaMLP):
    """A SwiGLU MLP that reverses its channels before ``down_proj``: cutting channel c must remove column C-1-c, surgery removes c."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj((self.act_fn(self.gate_proj(x)) * self.up_proj(x)).flip(-1))


def tiny(layers=3, flipped=()):
    model = tiny_decoder_model("LlamaForCausalLM", layers=layers, heads=6, kv_heads=2, hidden=48, mlp=64)
    for i in flipped:
        model.model.layers[i].mlp.__class__ = FlippedMLP
    return model


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_one_check_per_layer_signature_gives_the_verdicts_of_the_full_check():
    model = tiny(layers=4, flipped=(2,))
    full, shared = check_decoder(model), check_decoder(model, per_signature=True)
    assert set(shared.failed) == set(full.failed) == {"model.layers.2.mlp"}
    assert set(shared.passed) == set(full.passed)  # every unit and layer has a verdict, 11 units + 4 layers
    assert len(shared.passed) == 15


def test_a_unit_whose_surgery_is_wrong_is_left_dense_with_one_warning_and_the_same_unit_elsewhere_is_kept(caplog):
    with caplog.at_level(logging.WARNING, logger="autoprune.graph"):
        graph, report = verified_decoder_graph(tiny(flipped=(1,)))
    assert "model.layers.1.mlp" not in graph.unit_names and "model.layers.1.mlp" in graph.skipped
    assert {"model.layers.0.mlp", "model.layers.2.mlp"} <= set(graph.unit_names) and len(graph.unit_names) == 8
    assert graph.block_names == ["model.layers.0", "model.layers.1", "model.layers.2"]  # deleting the layer is exact
    (line,) = warnings(caplog)
    assert line.startswith("decoder model.layers.1.mlp is not pruned: surgery check failed: pruned logits differ from the masked dense model")


def test_the_same_fault_in_every_layer_is_one_warning_naming_the_units(caplog):
    with caplog.at_level(logging.WARNING, logger="autoprune.graph"):
        graph, _ = verified_decoder_graph(tiny(layers=5, flipped=range(5)))
    assert not any(n.endswith(".mlp") for n in graph.unit_names) and len(graph.unit_names) == 10
    assert warnings(caplog) == ["decoder model.layers.0.mlp, model.layers.1.mlp, model.layers.2.mlp and 2 more are not pruned: "
                                "surgery check failed: " + graph.skipped["model.layers.0.mlp"]]
