"""Constants and helpers shared by the Argo CD tests."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from airflow.triggers.base import BaseTrigger, TriggerEvent

    from tests.standins.argocd_server import ArgoCDStandIn

CONN_ID = "argocd_test"
TOKEN = "argocd-token-7f3c1e9b-never-log-me"
WRONG_TOKEN = "wrong-token-5d41402abc4b2a76b9719d911017c592"
OLD_REV = "1111111111111111111111111111111111111111"
NEW_REV = "2b7e151628aed2a6abf7158809cf4f3c762e7160"
OTHER_REV = "9c1185a5c5e9fc54612808977ee8f548b2258d31"  # another service's GitOps commit
APP = "visiobook-api-staging"
OTHER_APP = "visiobook-worker-staging"
PROJECT = "visiobook"
DEST_NAMESPACE = "visiobook"


def release(server: ArgoCDStandIn, **app_kwargs: Any) -> None:
    """``APP`` deployed at ``OLD_REV`` in ``PROJECT``, and the pipeline's GitOps commit ``NEW_REV`` pushed."""
    app_kwargs.setdefault("project", PROJECT)
    app_kwargs.setdefault("dest_namespace", DEST_NAMESPACE)
    server.add_app(APP, deployed_revision=OLD_REV, **app_kwargs)
    server.push(NEW_REV, apps=[APP])


def first_event(trigger: BaseTrigger, *, limit: float = 15.0) -> dict[str, Any]:
    """Run ``trigger.run()`` on a fresh event loop and return the payload of its first event."""

    async def _first() -> dict[str, Any]:
        agen = cast("AsyncGenerator[TriggerEvent, None]", trigger.run())
        try:
            event = await agen.__anext__()
        finally:
            await agen.aclose()
        return event.payload

    return asyncio.run(asyncio.wait_for(_first(), limit))
