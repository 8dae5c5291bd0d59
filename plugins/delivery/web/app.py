"""The delivery HTTP API, served by Airflow's own api-server as a plugin FastAPI app.

Mounted at ``/delivery`` by ``plugins/delivery_plugin.py``. Airflow does not
authenticate plugin apps, so every route authenticates itself: GitHub
webhooks by HMAC signature, Alertmanager by a bearer token from an Airflow
connection, UI pages by the Airflow JWT.
"""

from __future__ import annotations

import importlib

from fastapi import FastAPI

# Modules exposing ``router`` (a fastapi.APIRouter), included in this order.
ROUTERS: tuple[str, ...] = ("delivery.web.alertmanager", "delivery.web.github")


def create_app() -> FastAPI:
    app = FastAPI(
        title="Visiobook delivery",
        description="Git and Alertmanager webhooks, delivery reports",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )

    @app.get("/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    for module in ROUTERS:
        app.include_router(importlib.import_module(module).router)
    return app
