"""The prunable graph: layer specs, dependency groups and droppable blocks, policies, and surgery.

- :mod:`~autoprune.graph.layers`: ``LayerSpec`` and the one recorder of layer specs; MACs per sample;
- :mod:`~autoprune.graph.units`: ``UnitKind`` (the one type of unit and block kinds), its classifier, the unit and block records;
- :mod:`~autoprune.graph.discovery`: finding the units (Torch-Pruning dependency groups) and droppable blocks of a model;
- :mod:`~autoprune.graph.prunable`: ``PrunableGraph`` (the model as units and droppable blocks, and the questions asked of it);
- :mod:`~autoprune.graph.residual`: residual blocks found by tracing (droppable ones);
- :mod:`~autoprune.graph.policy`: ``Policy`` (a pruning ratio per unit) and the model fingerprint;
- :mod:`~autoprune.graph.surgery`: real structural surgery with Torch-Pruning;
- :mod:`~autoprune.graph.transformer`: attention heads, FFN width and encoder layers of transformer encoders.
"""

from autoprune.graph.layers import ExampleInput, LayerSpec
from autoprune.graph.policy import Policy, model_fingerprint
from autoprune.graph.prunable import PrunableGraph
from autoprune.graph.surgery import apply_policy
from autoprune.graph.transformer import split_attention_heads

__all__ = ["ExampleInput", "LayerSpec", "Policy", "PrunableGraph", "apply_policy", "model_fingerprint", "split_attention_heads"]
