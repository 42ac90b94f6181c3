"""A tiny token encoder: features -> tokens, two ``nn.TransformerEncoderLayer``'s, a classifier.

The smallest model with attention heads and FFN neurons among its units, for the tests of heads
(``tests/test_attention_heads.py``) and the importance contract (``tests/contracts``).
"""

from __future__ import annotations

import torch
from torch import nn

#: Width, attention heads, FFN width, tokens per input.
E, HEADS, FF, SEQ = 16, 4, 32, 6
#: Classes of :class:`TokenEncoder`'s output.
CLASSES = 3


class TokenEncoder(nn.Module):
    """Features -> tokens (Linear), two nn.TransformerEncoderLayer's, mean over tokens, classifier."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(8, E)
        layer = nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(E, CLASSES)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        if not self.batch_first:
            return self.fc(self.encoder(t.transpose(0, 1)).mean(0))
        return self.fc(self.encoder(t).mean(1))


def token_model(seed: int = 0, batch_first: bool = True) -> nn.Module:
    """A :class:`TokenEncoder` with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    return TokenEncoder(batch_first).eval()


def x_tokens(n: int = 4) -> torch.Tensor:
    """``n`` seeded inputs of :class:`TokenEncoder`, shape ``(n, SEQ, 8)``."""
    return torch.randn(n, SEQ, 8, generator=torch.Generator().manual_seed(1))
