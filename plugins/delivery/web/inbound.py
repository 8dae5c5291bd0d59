"""The checks every receiver makes on a request, shared by the GitHub and Alertmanager webhooks.

The order is the point: **authenticate before reading the body** wherever the
scheme allows it. A bearer token (Alertmanager) is checked from the headers
alone, so an unauthenticated sender never gets a byte of its body read, let
alone parsed. An HMAC signature (GitHub) covers the body, so only its presence
is checked first; the body is then read, capped, and verified before it is
parsed. After authentication:

1. ``Content-Length`` larger than the cap: 413 without reading (an invalid
   ``Content-Length``: 400);
2. a content type other than ``application/json``: 400;
3. the body is streamed and the cap enforced again as it arrives (chunked
   requests have no ``Content-Length``): 413;
4. the body must be a JSON object: 400.

The cap is ``DELIVERY_WEBHOOK_MAX_BYTES`` (bytes, default 5 MiB) for every
receiver. Refusals are raised as :class:`Refused` and answered
``{"status": ..., "reason": ...}`` by :meth:`Refused.response`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
MAX_BYTES_VARIABLE = "DELIVERY_WEBHOOK_MAX_BYTES"


def reply(
    code: int,
    status: str,
    reason: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The receivers' answer: ``{"status", "reason"?, ...extra}``."""
    body: dict[str, Any] = {"status": status}
    if reason is not None:
        body["reason"] = reason
    body.update(extra)
    return JSONResponse(body, status_code=code, headers=dict(headers or {}))


class Refused(Exception):
    """A request the receiver answers with an error, before doing anything with it."""

    def __init__(
        self, code: int, status: str, reason: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return reply(self.code, self.status, self.reason, headers=self.headers)


def max_body_bytes() -> int:
    """``DELIVERY_WEBHOOK_MAX_BYTES`` (bytes), default 5 MiB."""
    raw = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    try:
        value = int(raw) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        log.warning("%s=%r is not a number of bytes; using the default", MAX_BYTES_VARIABLE, raw)
        return DEFAULT_MAX_BYTES
    return value if value > 0 else DEFAULT_MAX_BYTES


def _too_large(limit: int) -> Refused:
    return Refused(413, "error", f"body larger than {limit} bytes ({MAX_BYTES_VARIABLE})")


def check_bearer(authorization: str | None, expected: str | None, *, what: str) -> None:
    """Refuse unless ``authorization`` is ``Bearer <expected>`` (constant-time comparison).

    ``expected`` is ``None`` when the receiver has no token configured: 503, so the
    sender (Alertmanager retries 5xx answers) delivers again once it is.
    """
    if not expected:
        raise Refused(503, "error", f"the {what} token is not configured")
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise Refused(
            401, "unauthorized", "invalid or missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def check_declared_size(request: Request, limit: int) -> None:
    """413 when ``Content-Length`` announces more than ``limit`` bytes (nothing is read)."""
    length = request.headers.get("content-length")
    if length is None:
        return
    if not length.strip().isdigit():
        raise Refused(400, "error", "invalid Content-Length")
    if int(length) > limit:
        raise _too_large(limit)


def check_json_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise Refused(400, "error", "content type must be application/json (set it in the sender's settings)")


async def read_body(request: Request, *, limit: int) -> bytes:
    """The body, after the size and content-type checks; 413 as soon as it passes ``limit`` bytes."""
    check_declared_size(request, limit)
    check_json_content_type(request)
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise _too_large(limit)
    return bytes(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused(400, "error", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise Refused(400, "error", "the body is not a JSON object")
    return payload
