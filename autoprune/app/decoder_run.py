"""The decoder-LLM steps of ``autoprune run``: apply the best policy, distil, test, time both modes, generate, save, log.

A pruned decoder has no labels to be tested on: its figures are its KL divergence from the dense
next-token distribution and its perplexity, on validation and on **test** blocks (never seen by
the search), before and after the distillation
(:func:`autoprune.training.distill_decoder.distill_decoder`, the ``finetune`` section's budget).
Latency is re-measured at the end in both modes, paired against the dense model on eager
PyTorch (prefill ms of the prompt, decode tokens per second), and one greedy completion of the
dense model is shown beside the pruned one's. The pruned decoder is saved as a folder that
reloads with ``model.name: hf:<folder>`` (:func:`autoprune.formats.decoder_file.save_decoder`).
MLflow gets the same sections as every run: ``dense/``, ``episode/``, ``search/``, ``finetune/``
and ``final/``, the report and the model folder under ``model/``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.app.experiment import Baseline, SearchRun, run_search
from autoprune.app.stages import stage
from autoprune.config.schema import ExperimentConfig
from autoprune.config.settings import finetune_settings
from autoprune.formats.decoder_file import save_decoder
from autoprune.graph.policy import model_fingerprint
from autoprune.measure.decoder_latency_model import compare_decoder_modes
from autoprune.objective.lm_fidelity import KL_BLOCKS, NextTokenKL
from autoprune.tracking.tracker import Tracker
from autoprune.training.distill_decoder import distill_decoder

log = logging.getLogger(__name__)

#: The question both models answer greedily in the report (SmolLM2-135M answers "The capital of France is Paris.").
PROMPT = "What is the capital of France?"
#: Tokens generated for the completion shown.
COMPLETION_TOKENS = 24
#: Paired rounds per mode of the final timing.
FINAL_ROUNDS = 10
#: The folder the pruned decoder is saved in, inside the experiment's output folder.
MODEL_FOLDER = "model"


def greedy_completion(model: nn.Module, tokenizer: Any, question: str = PROMPT, *, max_new_tokens: int = COMPLETION_TOKENS) -> str:
    """The model's greedy answer to ``question`` (through the tokenizer's chat template when it has one), decoded without special tokens."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
    else:
        ids = tokenizer(question, return_tensors="pt")["input_ids"]
    model.eval()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    return str(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)).strip()


@dataclass
class DecoderRunResult:
    """What ``autoprune run`` produced for a decoder LLM.

    Attributes:
        search: The finished search.
        model_path: The saved pruned-decoder folder.
        run_id: The MLflow run.
        report: Every final figure (see :func:`run_decoder`).
        config: The configuration the run used.
    """

    search: SearchRun
    model_path: Path
    run_id: str | None
    report: dict[str, Any] = field(default_factory=dict)
    config: ExperimentConfig | None = None


def _figures(val: NextTokenKL, test: NextTokenKL, model: nn.Module, who: str, when: str = "") -> dict[str, float]:
    v, t = val.fidelity(model), test.fidelity(model)
    suffix = f"_{when}" if when else ""
    return {f"{who}_val_kl{suffix}": v.kl, f"{who}_val_perplexity{suffix}": v.perplexity,
            f"{who}_test_kl{suffix}": t.kl, f"{who}_test_perplexity{suffix}": t.perplexity}


def run_decoder(cfg: ExperimentConfig, baseline: Baseline, tracker: Tracker, out: Path, *, progress: bool = True, restart: bool = False,
                t0: float | None = None) -> DecoderRunResult:
    """Search, apply, distil, test, time, generate, save and log a decoder LLM (the MLflow run is ``tracker``'s, already open).

    Report entries: ``dense_{val,test}_{kl,perplexity}`` and ``pruned_{val,test}_{kl,perplexity}_{before,after}_distill`` (KL in
    nats per token from the dense next-token distribution; perplexity on the same blocks), ``distill_steps``,
    ``{dense,pruned}_prefill_ms`` and ``{dense,pruned}_decode_tokens_per_s`` with their speed-ups, ``{dense,pruned}_params``
    and MACs per token, the budget's verdict in ``latency.mode`` (:meth:`~autoprune.objective.budget.Budget.verdict`),
    ``dense_completion`` and ``pruned_completion`` (greedy answers to :data:`PROMPT`), the model folder, the search's figures.

    Raises:
        ConfigError, ModelError, BudgetError: as :func:`autoprune.app.experiment.run_search`.
        RuntimeError: the search produced no successful evaluation.
    """
    t0 = time.perf_counter() if t0 is None else t0
    corpus, dense = baseline.data, baseline.model
    val, test = NextTokenKL(dense, corpus.val.subset(KL_BLOCKS)), NextTokenKL(dense, corpus.test.subset(KL_BLOCKS))
    dense_fig = _figures(val, test, dense, "dense")
    tracker.log_dense({k.removeprefix("dense_"): v for k, v in dense_fig.items()})
    search = run_search(cfg, progress=progress, callback=tracker.log_episode, baseline=baseline, tracking=(tracker.uri, tracker.run_id),
                        restart=restart)
    tracker.log_missing_episodes(search.result.history)
    ev = search.evaluator
    info = {"target": ev.target, "metric": ev.budget.metric, "dense_accuracy": ev.dense_accuracy, "unit_order": ev.unit_names,
            "fingerprint": model_fingerprint(ev.graph)}
    tracker.log_search_result(search.result, info, out_dir=out, written=[search.policy_path, search.history_path])
    tracker.log_backend(ev.latency_model.backend_settings)
    best = search.result.best
    if best is None:
        raise RuntimeError("the search produced no successful evaluation")
    stage("apply", f"the best policy (episode {best.index}): {len(best.policy.drop)} layer(s) dropped")
    pruned = ev.prune(best.policy).eval()
    report: dict[str, Any] = {"proxy_metric": "kl", **dense_fig, **_figures(val, test, pruned, "pruned", "before_distill")}
    settings = finetune_settings(cfg)
    stage("distil", (f"{settings.steps} step(s)" if settings.steps else f"{settings.epochs:g} epoch(s)") + " to the dense logits")
    history = distill_decoder(pruned, dense, corpus.train, settings, val=val, progress=progress, on_epoch=tracker.log_finetune_epoch)
    pruned.eval()
    report.update(_figures(val, test, pruned, "pruned", "after_distill"))
    report["distill_epochs"] = len(history)
    ev.latency_model.close()
    stage("measure", "prefill and decode, paired against dense on eager PyTorch")
    lat = cfg.latency
    timed = compare_decoder_modes(dense, pruned, ev.example_input, new_tokens=lat.new_tokens, threads=lat.threads, rounds=FINAL_ROUNDS)
    (pre_ms, pre), (dec_ms, dec) = timed["prefill"], timed["decode"]
    tokens = lat.new_tokens
    report.update({
        "dense_prefill_ms": pre_ms, "pruned_prefill_ms": pre.mean * pre_ms, "prefill_speedup": 1.0 / pre.mean,
        "dense_decode_tokens_per_s": tokens / (dec_ms / 1000.0), "pruned_decode_tokens_per_s": tokens / (dec.mean * dec_ms / 1000.0),
        "decode_speedup": 1.0 / dec.mean, "latency_mode": lat.mode, "prompt_tokens": int(ev.example_input.shape[1]), "new_tokens": tokens,
    })  # fmt: skip
    (dense_macs, dense_params), (macs, params) = ev.cost(dense), ev.cost(pruned)
    report.update({"dense_params": dense_params, "pruned_params": params, "dense_macs_per_token": dense_macs, "pruned_macs_per_token": macs})
    chosen = timed[lat.mode][1]
    report.update(ev.budget.verdict(ev.target, chosen, chosen.mean, macs / max(1, dense_macs)))
    report.update({"dense_completion": greedy_completion(dense, corpus.tokenizer), "pruned_completion": greedy_completion(pruned, corpus.tokenizer),
                   "completion_prompt": PROMPT})
    stage("export", f"the pruned decoder into {out / MODEL_FOLDER}")
    folder = save_decoder(pruned, out / MODEL_FOLDER, tokenizer=corpus.tokenizer)
    report.update({"model_folder": str(folder), "layers_dropped": len(best.policy.drop), "search_episodes": search.result.episodes,
                   "search_seconds": search.result.seconds, "search_best_proxy_fidelity": best.metrics.accuracy,
                   **{f"search_latency_{k}": v for k, v in best.metrics.latency.as_dict().items() if k in ("mean", "low", "high", "n")},
                   "total_seconds": time.perf_counter() - t0})
    log.info("test perplexity %.2f dense, %.2f pruned before distillation, %.2f after", report["dense_test_perplexity"],
             report["pruned_test_perplexity_before_distill"], report["pruned_test_perplexity_after_distill"])
    stage("MLflow", f"report and model of run {tracker.run_id}")
    tracker.log_final(report, title=f"autoprune: {cfg.name} (decoder {cfg.model.name})")
    tracker.log_artifact(folder, MODEL_FOLDER)
    tracker.log_artifact(search.policy_path, MODEL_FOLDER)
    return DecoderRunResult(search, folder, tracker.run_id, report, config=cfg)


__all__ = ["COMPLETION_TOKENS", "PROMPT", "DecoderRunResult", "greedy_completion", "run_decoder"]
