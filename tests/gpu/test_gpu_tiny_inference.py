"""The tiny model's own inference tests.

They stand for a service's ``tests/inference``: the harness runs them as a
subprocess with ``--tests`` (and sets ``DELIVERY_GPU_DEVICE``). They also run
as part of this suite.
"""

from __future__ import annotations

import os

import gpu_tiny_model
import torch


def _device() -> torch.device:
    return torch.device(os.environ.get("DELIVERY_GPU_DEVICE", "cpu"))


def test_output_shape() -> None:
    model = gpu_tiny_model.build().to(_device()).eval()
    with torch.inference_mode():
        out = model(gpu_tiny_model.example_input(3).to(_device()))
    assert out.shape == (3, gpu_tiny_model.OUT_FEATURES)


def test_inference_is_deterministic() -> None:
    model = gpu_tiny_model.build().to(_device()).eval()
    x = gpu_tiny_model.example_input(5).to(_device())
    with torch.inference_mode():
        assert torch.allclose(model(x), model(x))


def test_batch_rows_are_independent() -> None:
    model = gpu_tiny_model.build().to(_device()).eval()
    x = gpu_tiny_model.example_input(4).to(_device())
    with torch.inference_mode():
        assert torch.allclose(model(x)[1:2], model(x[1:2]), atol=1e-5)
