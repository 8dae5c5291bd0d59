"""HTTP integrations on the HTTP provider's hooks, and the one reading of a connection's base URL.

Prometheus and SonarQube speak HTTP through the pinned HTTP provider: :class:`ConnectionHttpHook`
(an ``HttpHook``) on workers, :class:`ConnectionHttpAsyncHook` (an ``HttpAsyncHook``) on the
triggerer. Sessions, extras, TLS options, proxies and timeouts are the provider's. This module adds
what the provider leaves out, once for every integration:

* :func:`base_url`, the project's one "connection -> base URL" helper (the Argo CD hook uses it
  too): ``host`` is a host name or a full URL with a path prefix
  (``https://prom.example.org/prometheus``); ``schema`` is the scheme when ``host`` has none
  (default ``http``, as in the HTTP provider); ``port`` goes into the network location, also when
  ``host`` carries a path (the provider appends it after the path); a trailing ``/`` is dropped;
  a connection without a host is an error that names it.
* A bearer token: ``password`` without ``login`` is sent as ``Authorization: Bearer <password>``
  (``login`` and ``password`` stay HTTP Basic, as in the provider). The token never reaches a log.
* A CA bundle path in the ``verify`` extra works on the triggerer too: the provider hands
  ``verify`` to aiohttp's boolean ``verify_ssl``, which ignores a path, so the triggerer would not
  trust the certificate authority the worker trusts. The async hook turns it into an SSL context.
* :func:`transient_retry`: the tenacity policy of every call (connection errors, timeouts and
  5xx answers are retried a few times, other answers are returned as they are).

Other extras follow the provider: ``timeout`` (seconds), ``verify`` (a JSON boolean or a CA bundle
path), ``proxies``, ``allow_redirects``...; any other key is sent as a request header (the
provider's convention for headers).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import requests
import tenacity
from airflow.providers.common.compat.connection import get_async_connection
from airflow.providers.http.hooks.http import HttpAsyncHook, HttpHook, SessionConfig

if TYPE_CHECKING:
    from airflow.sdk import Connection

__all__ = [
    "ConnectionHttpAsyncHook",
    "ConnectionHttpHook",
    "base_url",
    "bearer_headers",
    "check_extras",
    "retry_budget",
    "transient_retry",
]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    aiohttp.ClientConnectionError,
    asyncio.TimeoutError,
)
"""Failures worth another attempt: the server was not reached, or did not answer in time."""


def base_url(conn: Connection, *, default_scheme: str = "http") -> str:
    """The connection's base URL, without a trailing ``/`` (see the module doc for the rules)."""
    host = (conn.host or "").strip()
    if not host:
        raise ValueError(
            f"connection {conn.conn_id!r} has no host: set it to the server's host name or base URL"
        )
    if "://" in host:
        parts = urlsplit(host)
        scheme, netloc, path = parts.scheme, parts.netloc, parts.path
    else:
        scheme = (conn.schema or default_scheme).strip().lower() or default_scheme
        netloc, _, path = host.partition("/")
        path = f"/{path}" if path else ""
    if conn.port and ":" not in netloc.rsplit("]", 1)[-1]:
        netloc = f"{netloc}:{conn.port}"
    return urlunsplit((scheme, netloc, path.rstrip("/"), "", ""))


def bearer_headers(conn: Connection) -> dict[str, str]:
    """``Authorization: Bearer <password>`` for a connection with a password and no login."""
    if conn.password and not conn.login:
        return {"Authorization": f"Bearer {conn.password}"}
    return {}


_MOVED_EXTRAS = {
    "token": "put the token in the connection's password (sent as a bearer token)",
    "bearer_token": "put the token in the connection's password (sent as a bearer token)",
    "headers": "give each header as an extra of its own",
}


def check_extras(conn: Connection) -> None:
    """Refuse the extras of the earlier Prometheus connection format, which would now go out as headers."""
    moved = sorted(set(conn.extra_dejson) & set(_MOVED_EXTRAS))
    if moved:
        raise ValueError(
            f"connection {conn.conn_id!r}: the extra {moved[0]!r} is not read any more, "
            f"{_MOVED_EXTRAS[moved[0]]}"
        )


def _server_error(response: Any) -> bool:
    status = getattr(response, "status_code", None) or getattr(response, "status", None) or 0
    return int(status) >= 500


def _last_outcome(state: tenacity.RetryCallState) -> Any:
    """After the last attempt: its answer (a 5xx response), or its exception raised again."""
    assert state.outcome is not None
    return state.outcome.result()


def transient_retry(*, attempts: int = 3, wait_s: float = 0.5, max_wait_s: float = 5.0) -> dict[str, Any]:
    """Keyword arguments of ``tenacity.Retrying``/``AsyncRetrying`` (and ``HttpHook.run_with_advanced_retry``).

    Connection errors, timeouts and 5xx answers are tried ``attempts`` times in all, waiting
    ``wait_s``, then twice as long each time (at most ``max_wait_s``). Then the last answer is
    returned, or the last error raised; any other answer is returned at once.
    """
    return {
        "stop": tenacity.stop_after_attempt(attempts),
        "wait": tenacity.wait_exponential(multiplier=wait_s, max=max_wait_s),
        "retry": tenacity.retry_if_exception_type(TRANSIENT_ERRORS) | tenacity.retry_if_result(_server_error),
        "retry_error_callback": _last_outcome,
    }


def retry_budget(*, attempts: int, timeout_s: float, wait_s: float = 0.5, max_wait_s: float = 5.0) -> float:
    """The longest a call under :func:`transient_retry` can take when one attempt takes ``timeout_s``."""
    waits = sum(min(wait_s * 2**index, max_wait_s) for index in range(attempts - 1))
    return attempts * timeout_s + waits


class ConnectionHttpHook(HttpHook):
    """``HttpHook`` with the project's base URL (:func:`base_url`) and bearer token (module doc)."""

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        session = super().get_conn(headers, extra_options)
        conn = self.get_connection(self.http_conn_id)
        check_extras(conn)
        self.base_url = base_url(conn)
        session.headers.update(bearer_headers(conn))
        return session


def _aiohttp_ssl(verify: Any) -> bool | ssl.SSLContext | None:
    """The ``verify`` extra as aiohttp's ``ssl`` option: a bool, or a context trusting a CA bundle."""
    if verify is None or isinstance(verify, bool):
        return verify
    text = str(verify).strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return ssl.create_default_context(cafile=text)


class ConnectionHttpAsyncHook(HttpAsyncHook):
    """``HttpAsyncHook`` reading the connection as :class:`ConnectionHttpHook` does (module doc).

    The provider's own retries are off (``retry_limit=1``): callers retry with :func:`transient_retry`,
    which also covers connection errors.
    """

    def __init__(self, *, http_conn_id: str, method: str = "GET") -> None:
        super().__init__(method=method, http_conn_id=http_conn_id, retry_limit=1)
        self._settings: SessionConfig | None = None

    async def config(self) -> SessionConfig:
        if self._settings is None:
            config = await super().config()
            conn = await get_async_connection(conn_id=self.http_conn_id, hook=self)
            check_extras(conn)
            options: dict[str, Any] = dict(config.extra_options or {})
            tls = _aiohttp_ssl(options.pop("verify_ssl", None))
            if tls is not None:
                options["ssl"] = tls
            headers: Mapping[str, Any] = config.headers or {}
            self._settings = config.model_copy(
                update={
                    "base_url": base_url(conn),
                    "headers": {**headers, **bearer_headers(conn)},
                    "extra_options": options,
                }
            )
        return self._settings
