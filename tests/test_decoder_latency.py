"""Decoder latency modes on eager PyTorch: prefill of a prompt and cached decoding, as runners every timer takes (no wall-clock assertions)."""

import math

import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.graph.decoder import DecoderGraph
from autoprune.graph.decoder_surgery import prune_decoder
from autoprune.graph.policy import Policy
from autoprune.measure.decoder_latency import decoder_latency, decoder_mode
from autoprune.measure.latency import PairedTimer
from autoprune.measure.schedule import PairedSchedule
from autoprune.zoo.decoder import tiny_decoder_model


@pytest.fixture(scope="module")
def model():
    return tiny_decoder_model(layers=2, max_positions=64)


PROMPT = torch.randint(3, 256, (1, 16), generator=torch.Generator().manual_seed(0))


def test_decode_runs_the_same_greedy_tokens_as_generate_on_every_call(model):
    run = decoder_mode("decode", new_tokens=5).runner(model, PROMPT)
    with torch.no_grad():
        expected = model.generate(PROMPT, max_new_tokens=6, do_sample=False, pad_token_id=0)[0, -1]
    assert int(run()) == int(expected)
    assert int(run()) == int(expected)  # the cache is cropped back to the prompt after each call


def test_prefill_is_one_forward_pass_over_the_prompt(model):
    run = decoder_mode("prefill").runner(model, PROMPT)
    with torch.no_grad():
        assert torch.allclose(run(), model(PROMPT).logits[:, -1], atol=1e-6)


def test_decoder_latency_reports_milliseconds_and_tokens_per_second(model):
    pruned = prune_decoder(model, DecoderGraph(model).plan(Policy({}, ("model.layers.1",))))
    decode = decoder_latency(pruned, PROMPT, "decode", warmup=0, repeats=2)
    assert decode.mode == "decode" and decode.stats.n == 2
    assert decode.tokens_per_s == pytest.approx(32 / (decode.stats.median_ms / 1000))
    prefill = decoder_latency(pruned, PROMPT, "prefill", warmup=0, repeats=2)
    assert prefill.tokens_per_s == 0.0 and prefill.stats.median_ms > 0


def test_a_paired_timer_times_decode_runners_against_the_dense_model(model):
    pruned = prune_decoder(model, DecoderGraph(model).plan(Policy({"model.layers.0.mlp": 0.5})))
    mode = decoder_mode("decode", new_tokens=2)
    timer = PairedTimer(mode.runner(model, PROMPT), PROMPT)
    stats = timer.ratio(mode.runner(pruned, PROMPT), PairedSchedule(warmup=0, rounds=2, min_rounds=2, calls_per_round=1))
    assert math.isfinite(stats.ratio) and stats.ratio > 0


def test_bad_modes_and_prompts_longer_than_the_context_are_refused_in_one_line(model):
    with pytest.raises(ConfigError, match="latency.mode: 'generate' is not a decoder latency mode; allowed: prefill, decode"):
        decoder_mode("generate")
    with pytest.raises(ConfigError, match=r"latency.prompt_tokens: 60 prompt \+ 32 new tokens exceed the model's context \(64\)"):
        decoder_latency(model, torch.zeros(1, 60, dtype=torch.int64), "decode")


def test_the_decoder_cost_model_recovers_consistent_weights_and_is_pulled_to_its_prior_by_one_wild_variant():
    import numpy as np

    from autoprune.measure.decoder_latency_model import fit_weights

    x = np.array([[0.8, 0.0, 0.0], [0.0, 0.75, 0.0], [0.5, 0.5, 0.5]])  # attention, MLP, half the layers removed
    true = np.array([0.2, 0.5, 0.1])
    assert np.allclose(fit_weights(x, x @ true, np.zeros(3), strength=1e-9), true, atol=1e-6)
    prior = np.array([0.2, 0.6, 0.0])
    assert np.array_equal(fit_weights(x[:0], np.zeros(0), prior), prior)
    wild = (x @ true) + np.array([0.5, 0.0, 0.0])  # the attention variant measured far too fast (a busy machine)
    least, ridge = fit_weights(x, wild, prior, strength=1e-9), fit_weights(x, wild, prior)
    assert abs(ridge[0] - prior[0]) < abs(least[0] - prior[0])
    assert (ridge >= 0).all() and ridge.sum() <= 1.0
