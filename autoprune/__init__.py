"""autoprune: search per-layer pruning ratios under a measured-latency budget."""

from autoprune.errors import AutopruneError, BudgetError, ConfigError, DataError, ModelError, PolicyError

__version__ = "0.1.0"

__all__ = [
    "AutopruneError",
    "BudgetError",
    "ConfigError",
    "DataError",
    "ModelError",
    "PolicyError",
    "__version__",
]
