"""Airflow plugin: registers the delivery API (webhooks), the DORA and notifications pages with the api-server.

The ``delivery`` package itself is excluded from plugin discovery by
``.airflowignore``; this file is the only plugin module. The notifications page is in the
menu only where there is a notification inbox (the local profile); elsewhere its URL says so.

It also imports the pipeline factory, which the DAG files use. With
``AIRFLOW__CORE__LAZY_LOAD_PLUGINS=False`` (set for every component) each Airflow process
loads this plugin once when it starts, so the processes it forks (a DAG file's parse, a
task's run, a Celery pool child) find the project's modules already imported instead of
importing them again: about a second of CPU per task (see BENCHMARKS.md).
"""

from __future__ import annotations

import os
from typing import Any

from airflow.plugins_manager import AirflowPlugin

import delivery.pipeline.factory  # noqa: F401  (imported once per process: see above)
from delivery.web.app import create_app
from delivery.web.dora import app as dora_app
from delivery.web.notifications import app as notifications_app


def _apps() -> list[dict[str, Any]]:
    # The more specific prefixes first: /delivery would otherwise catch /delivery/dora.
    return [
        {"app": dora_app, "url_prefix": "/delivery/dora", "name": "Visiobook DORA metrics"},
        {
            "app": notifications_app,
            "url_prefix": "/delivery/notifications",
            "name": "Visiobook notifications (local inbox)",
        },
        {"app": create_app(), "url_prefix": "/delivery", "name": "Visiobook delivery"},
    ]


def _views() -> list[dict[str, Any]]:
    views = [
        {
            "name": "DORA metrics",
            "href": "/delivery/dora/",
            "destination": "nav",
            "category": "browse",
            "url_route": "dora",
        }
    ]
    if os.environ.get(
        "DELIVERY_NOTIFICATION_INBOX"
    ):  # the local profile's inbox (delivery.notification_inbox)
        views.append(
            {
                "name": "Notifications",
                "href": "/delivery/notifications/",
                "destination": "nav",
                "category": "browse",
                "url_route": "notifications",
            }
        )
    return views


class DeliveryPlugin(AirflowPlugin):
    name = "visiobook_delivery"
    fastapi_apps = _apps()
    external_views = _views()
