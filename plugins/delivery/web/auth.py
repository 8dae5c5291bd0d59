"""Authentication of the plugin's UI pages (DORA, notifications): the Airflow JWT.

Airflow does not authenticate plugin apps: every page route depends on
:func:`require_user`, which takes the token from ``Authorization: Bearer <token>`` or
from the ``_token`` cookie the Airflow UI sets, and has the configured auth manager
validate it; without a valid one the answer is ``401``.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request, status

TOKEN_COOKIE = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN


async def require_user(request: Request) -> Any:
    """The Airflow user of the request's JWT (Bearer header first, then the UI cookie), or 401."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    token = token or request.cookies.get(TOKEN_COOKIE, "")
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Not authenticated", headers=unauthorized)
    try:
        from airflow.api_fastapi.app import get_auth_manager  # noqa: PLC0415 the api-server's, once it runs

        return await get_auth_manager().get_user_from_token(token)
    except Exception as exc:  # expired, revoked, bad signature, no auth manager
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "Invalid or expired token", headers=unauthorized
        ) from exc
