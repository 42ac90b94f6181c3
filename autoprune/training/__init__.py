"""Training: the baseline (with checkpoints) and fine-tuning of a pruned model, with distillation."""

from autoprune.training.baseline import TrainSettings, train_model, train_or_load
from autoprune.training.finetune import FinetuneSettings, finetune

__all__ = ["FinetuneSettings", "TrainSettings", "finetune", "train_model", "train_or_load"]
