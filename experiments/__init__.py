"""autoprune's experiments: benchmark scripts (``experiments.bench``), their configs, checkpoints and results."""
