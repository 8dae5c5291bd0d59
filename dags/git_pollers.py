"""Airflow DAGs: one git poller DAG per catalog repository (fallback for webhooks). Kept thin: see plugins/delivery/gitevents/poller.py."""

from __future__ import annotations

import logging
import os

from delivery.catalog import load_catalog
from delivery.gitevents.poller import build_poller_dags

_catalog, _issues = load_catalog(strict=os.environ.get("DELIVERY_CATALOG_STRICT") == "1")
if _issues:
    logging.getLogger("delivery").warning("catalog: %d issue(s); see the delivery DAG file", len(_issues))

globals().update(build_poller_dags(_catalog))
