"""Airflow DAGs: one delivery DAG per service of the catalog (include/catalog). Kept thin: see plugins/delivery."""

from __future__ import annotations

import logging
import os

from airflow.sdk import get_parsing_context

from delivery.catalog import load_catalog
from delivery.catalog.errors import CatalogError
from delivery.pipeline.factory import build_dags

# A worker about to run one task parses this file for that task's DAG only: one service file, one DAG.
_dag_id = get_parsing_context().dag_id
_catalog, _issues = load_catalog(strict=os.environ.get("DELIVERY_CATALOG_STRICT") == "1", dag_id=_dag_id)
for _issue in _issues:
    # One bad service file must not hide every other pipeline; strict mode (CI) fails instead.
    logging.getLogger("delivery").error("catalog: %s", _issue)
if _issues and not _catalog.services:
    raise CatalogError(_issues)

globals().update(build_dags(_catalog, dag_id=_dag_id))
