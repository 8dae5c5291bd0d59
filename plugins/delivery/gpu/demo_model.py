"""A tiny transformer-style text classifier that needs no download.

``python -m delivery.gpu.harness --model delivery.gpu.demo_model:build`` runs
the whole harness anywhere (CPU or GPU) without service code: the weights are
random (seeded), the input is random token ids. About 0.1 M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DemoTextClassifier", "build", "example_input"]

VOCAB_SIZE = 1000
SEQUENCE_LENGTH = 32


class DemoTextClassifier(nn.Module):
    """Embedding -> 2 transformer encoder layers -> mean pooling -> linear head."""

    def __init__(
        self,
        *,
        vocab_size: int = VOCAB_SIZE,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        classes: int = 8,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(1, SEQUENCE_LENGTH, dim))
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embedding(tokens) + self.position[:, : tokens.shape[1]]
        hidden = self.encoder(hidden)
        logits: torch.Tensor = self.head(hidden.mean(dim=1))
        return logits


def build() -> nn.Module:
    """The model factory for ``--model delivery.gpu.demo_model:build`` (seeded weights)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        return DemoTextClassifier()
    finally:
        torch.random.set_rng_state(generator_state)


def example_input(batch_size: int) -> torch.Tensor:
    """``batch_size`` sequences of random token ids (deterministic)."""
    generator = torch.Generator().manual_seed(batch_size)
    return torch.randint(0, VOCAB_SIZE, (batch_size, SEQUENCE_LENGTH), generator=generator)
