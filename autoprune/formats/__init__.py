"""Files autoprune writes: the pickle-free pruned model, ONNX (+ int8), and the policy file.

- :mod:`~autoprune.formats.pruned`: ``save_pruned`` / ``load_pruned``;
- :mod:`~autoprune.formats.onnx`: ONNX export checked against PyTorch, int8 quantisation (extra ``onnx``);
- :mod:`~autoprune.formats.policy_file`: the ``autoprune-policy/2`` document and its one writer.
"""

from autoprune.formats.policy_file import policy_document, read_policy_file, write_policy_file
from autoprune.formats.pruned import load_pruned, save_pruned

__all__ = ["load_pruned", "policy_document", "read_policy_file", "save_pruned", "write_policy_file"]
