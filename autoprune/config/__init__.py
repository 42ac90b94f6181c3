"""The experiment config: its schema (pydantic, validated against the registries), YAML loading, one-line messages.

Layer ``config`` sits above every library layer it configures and below tracking and app.
"""

from autoprune.config.loading import load_config, parse_config
from autoprune.config.schema import ExperimentConfig, dump_config

__all__ = ["ExperimentConfig", "dump_config", "load_config", "parse_config"]
