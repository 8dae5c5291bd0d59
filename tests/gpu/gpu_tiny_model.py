"""A tiny model for the GPU harness tests: a 2-layer MLP, no download."""

from __future__ import annotations

import torch
from torch import nn

IN_FEATURES = 16
OUT_FEATURES = 4


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IN_FEATURES, 32), nn.ReLU(), nn.Linear(32, OUT_FEATURES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class TinyKeywordModel(nn.Module):
    """Takes keyword inputs, to exercise dict inputs given by ``--input``."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = TinyMLP()

    def forward(self, *, features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(features) * scale
        return out


def build() -> nn.Module:
    torch.manual_seed(0)
    return TinyMLP()


def example_input(batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, IN_FEATURES, generator=torch.Generator().manual_seed(batch_size))


def build_keyword() -> nn.Module:
    return TinyKeywordModel()


def keyword_input(batch_size: int) -> dict[str, torch.Tensor]:
    return {"features": example_input(batch_size), "scale": torch.tensor(2.0)}


def broken_build() -> nn.Module:
    raise RuntimeError("weights file is corrupt")


def not_a_module() -> object:
    return object()
