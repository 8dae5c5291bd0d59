"""Runners execute a resolved container stage: Kubernetes pods or local shells."""

from __future__ import annotations
