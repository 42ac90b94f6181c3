"""The sentence-encoder steps of ``autoprune run``: test fidelity, distillation, export with the tokenizer.

A pruned encoder has no labels to be tested on: its final figure is its fidelity to the dense
encoder on the **test** sentences (never seen by the search), reported before and after the
distillation (:func:`autoprune.training.distill_encoder.distill_encoder`). The dense model's
fidelity is 1.0 by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.app.experiment import Baseline
from autoprune.config.schema import ExperimentConfig
from autoprune.config.settings import finetune_settings
from autoprune.formats.onnx import export_onnx
from autoprune.objective.proxies import FidelityProxy, fidelity_score
from autoprune.training.distill_encoder import distill_encoder

log = logging.getLogger(__name__)


def test_fidelity(baseline: Baseline, cfg: ExperimentConfig) -> FidelityProxy:
    """Fidelity to the dense encoder on the whole test split (dense embeddings computed here, once).

    Raises:
        DataError: fewer than 2 test sentences.
    """
    return FidelityProxy(baseline.model, baseline.data.test, neighbours=cfg.proxy.neighbours, seed=cfg.seed)


def _figures(test: FidelityProxy, model: nn.Module, when: str) -> dict[str, float]:
    fid = test.fidelity(model)
    return {f"pruned_test_fidelity_{when}": fidelity_score(fid), f"pruned_test_cosine_{when}": fid.cosine,
            f"pruned_test_neighbour_agreement_{when}": fid.neighbour_agreement}


def recover_encoder(cfg: ExperimentConfig, baseline: Baseline, pruned: nn.Module, test: FidelityProxy, *, progress: bool = True,
                    on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Distil the pruned encoder to the dense one (``finetune`` section) and report test fidelity before and after.

    Args:
        cfg: The experiment (``finetune``: epochs, lr, batch size, optimizer; ``proxy``: validation sentences).
        baseline: The dense encoder (teacher) and the tokenised text.
        pruned: The pruned encoder, trained in place.
        test: From :func:`test_fidelity`.
        progress: Progress bars.
        on_epoch: Called after each epoch (MLflow logging).

    Returns:
        Report entries: ``proxy_metric``, ``dense_test_fidelity`` (1.0), and the pruned model's
        ``pruned_test_{fidelity,cosine,neighbour_agreement}_{before,after}_finetune``.
    """
    report: dict[str, Any] = {"proxy_metric": "fidelity", "dense_test_fidelity": test.dense_score(),
                              **_figures(test, pruned, "before_finetune")}
    val = FidelityProxy(baseline.model, baseline.data.val.subset(cfg.proxy.val_samples), neighbours=cfg.proxy.neighbours)
    history = distill_encoder(pruned, baseline.model, baseline.data, finetune_settings(cfg), val=val, progress=progress,
                              on_epoch=on_epoch)
    report.update(_figures(test, pruned, "after_finetune"))
    report["distill_epochs"] = len(history)
    log.info("test fidelity %.4f before distillation, %.4f after", report["pruned_test_fidelity_before_finetune"],
             report["pruned_test_fidelity_after_finetune"])
    return report


def export_encoder(pruned: nn.Module, baseline: Baseline, out: Path) -> dict[str, Any]:
    """``model.onnx`` (inputs ``input_ids`` and ``attention_mask``, dynamic batch and sequence axes) and the tokenizer beside it.

    The ONNX model is checked against PyTorch by :func:`autoprune.formats.onnx.export_onnx`;
    the tokenizer is written by ``save_pretrained`` (``tokenizer.json`` and its config), so the
    folder serves sentences on its own.

    Returns:
        The export info, plus ``tokenizer`` (the ``tokenizer.json`` path) and ``tokenizer_files``.

    Raises:
        ConfigError: the onnx extra is missing.
        ModelError: ONNX Runtime's output differs from PyTorch's.
    """
    info = export_onnx(pruned, baseline.data.example_input(1), out / "model.onnx")
    files = [str(p) for p in baseline.data.tokenizer.save_pretrained(str(out)) if Path(p).is_file()]
    info["tokenizer"] = str(out / "tokenizer.json")
    info["tokenizer_files"] = files
    return info


__all__ = ["export_encoder", "recover_encoder", "test_fidelity"]
