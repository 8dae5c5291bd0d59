"""Airflow DAGs: one delivery DAG per service of the catalog (include/catalog). Kept thin: see plugins/delivery."""

from __future__ import annotations

import os

from airflow.sdk import get_parsing_context

from delivery.catalog import load_catalog
from delivery.catalog.errors import CatalogError
from delivery.pipeline.factory import build_dags

_catalog, _issues = load_catalog(strict=os.environ.get("DELIVERY_CATALOG_STRICT") == "1")
for _issue in _issues:
    # One bad service file must not hide every other pipeline; strict mode (CI) fails instead.
    import logging

    logging.getLogger("delivery").error("catalog: %s", _issue)
if _issues and not _catalog.services:
    raise CatalogError(_issues)

# A task's process parses this file for its own DAG only: build just that service's DAGs.
globals().update(build_dags(_catalog, dag_id=get_parsing_context().dag_id))
