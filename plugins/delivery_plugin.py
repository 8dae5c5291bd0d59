"""Airflow plugin: registers the delivery API (webhooks), the DORA and notifications pages with the api-server.

The ``delivery`` package itself is excluded from plugin discovery by
``.airflowignore``; this file is the only plugin module.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin


def _apps() -> list[dict[str, Any]]:
    from delivery.web.app import create_app
    from delivery.web.dora import app as dora_app
    from delivery.web.notifications import app as notifications_app

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


class DeliveryPlugin(AirflowPlugin):
    name = "visiobook_delivery"
    fastapi_apps = _apps()
    external_views = [
        {
            "name": "DORA metrics",
            "href": "/delivery/dora/",
            "destination": "nav",
            "category": "browse",
            "url_route": "dora",
        },
        {
            "name": "Notifications",
            "href": "/delivery/notifications/",
            "destination": "nav",
            "category": "browse",
            "url_route": "notifications",
        },
    ]
