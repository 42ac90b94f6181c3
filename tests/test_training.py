"""The shared training loop: fine-tuning on labels (with or without distillation) and an encoder's distillation."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from autoprune.training.finetune import FinetuneSettings, finetune, train_loop


def test_fractional_epochs_take_that_share_of_the_steps_and_report_once(digits, make_model):
    model = make_model("mlp")
    steps: list[int] = []
    settings = FinetuneSettings(epochs=0.5, batch_size=64, lr=0.05, augment=False)

    def loss_of(batch):
        steps.append(1)
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y), len(y)

    history = train_loop(model, settings, len(digits.train), lambda e: digits.train.batches(64, shuffle=True, seed=e), loss_of,
                         lambda: ({"val": 1.0}, {}), desc="t", progress=False)
    assert len(steps) == round(0.5 * math.ceil(len(digits.train) / 64))
    assert len(history) == 1 and set(history[0]) == {"train_loss", "val"} and not model.training


def test_finetune_with_distillation_learns_and_needs_a_teacher(digits, make_model):
    model = make_model("mlp")
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="teacher"):
        finetune(model, digits, FinetuneSettings(epochs=1, distill=True), progress=False)
    seen = []
    history = finetune(model, digits, FinetuneSettings(epochs=2, batch_size=64, lr=0.05, distill=True, augment=False), teacher=before,
                       progress=False, on_epoch=lambda e, m: seen.append(e))
    assert seen == [1, 2] and history[1]["train_loss"] < history[0]["train_loss"]
    assert history[1]["val_accuracy"] > 0.5  # an untrained teacher still lets the labels teach
