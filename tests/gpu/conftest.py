"""Shared setup of the GPU harness tests."""

from __future__ import annotations

import warnings

# The CPU wheel of torch warns at import when numpy is absent; numpy is not needed here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*Failed to initialize NumPy.*")
    import torch  # noqa: F401
