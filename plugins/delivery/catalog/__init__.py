"""The service catalog: typed models, loading with precise errors, and a JSON Schema."""

from __future__ import annotations

from delivery.catalog.errors import CatalogError, CatalogIssue
from delivery.catalog.loader import catalog_dir, load_catalog, load_service
from delivery.catalog.models import (
    GPU_STAGES,
    Catalog,
    Platform,
    Profile,
    Service,
    Severity,
    Stage,
    StageSpec,
    Toolchain,
)

__all__ = [
    "GPU_STAGES",
    "Catalog",
    "CatalogError",
    "CatalogIssue",
    "Platform",
    "Profile",
    "Service",
    "Severity",
    "Stage",
    "StageSpec",
    "Toolchain",
    "catalog_dir",
    "load_catalog",
    "load_service",
]
