"""Prometheus HTTP API client: instant queries, sync (``requests``) and async (``httpx``).

The base URL comes from an Airflow connection (default ``prometheus_default``, conn type
``http``):

* ``host`` may be a bare host (``prometheus.monitoring``) or a full URL with a path prefix
  (``https://prom.example.org/prometheus``); ``schema`` is the URL scheme when ``host`` has
  none (default ``http``), as in the HTTP provider; ``port`` is optional;
* basic auth when ``login`` is set (``login``/``password``);
* bearer token from ``extra.token`` (or ``extra.bearer_token``), or from ``password`` when no
  ``login`` is set;
* ``extra.verify`` (bool or CA bundle path) for TLS, ``extra.headers`` for more headers,
  ``extra.timeout`` (seconds) for the per-query timeout.

Only ``GET /api/v1/query`` is used. Failures raise :class:`PrometheusUnreachable` (connection
error, timeout, HTTP 5xx) or :class:`PrometheusQueryError` (HTTP 4xx, ``status: error``,
a result type that is not a number), both :class:`delivery.verification.analysis.MeasurementError`, which
the analysis records as an Inconclusive check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import requests
from airflow.sdk import BaseHook

from delivery.verification.analysis import MeasurementError, Sample

if TYPE_CHECKING:
    from airflow.sdk import Connection

__all__ = [
    "AsyncPrometheusClient",
    "PrometheusHook",
    "PrometheusQueryError",
    "PrometheusSettings",
    "PrometheusUnreachable",
    "parse_query_response",
    "settings_from_connection",
]

QUERY_PATH = "/api/v1/query"
DEFAULT_TIMEOUT = 10.0


class PrometheusQueryError(MeasurementError):
    """Prometheus answered, but not with a usable value (bad query, execution error...)."""


class PrometheusUnreachable(MeasurementError):
    """Prometheus could not be reached or is failing (connection error, timeout, 5xx)."""

    unreachable = True


@dataclass(frozen=True, kw_only=True)
class PrometheusSettings:
    """Everything needed to talk to one Prometheus, derived from a connection."""

    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    basic_auth: tuple[str, str] | None = None
    verify: bool | str = True
    timeout: float = DEFAULT_TIMEOUT

    @property
    def query_url(self) -> str:
        return self.base_url.rstrip("/") + QUERY_PATH


def settings_from_connection(conn: Connection, *, timeout: float | None = None) -> PrometheusSettings:
    """Read the base URL, auth and TLS options from an Airflow connection (see the module doc)."""
    extra: Mapping[str, Any] = conn.extra_dejson or {}
    host = (conn.host or "").strip()
    if not host:
        raise ValueError(
            f'connection "{conn.conn_id}" has no host: set it to the Prometheus URL or host name'
        )
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}"
    parts = urlsplit(host)
    netloc = parts.netloc
    if conn.port and parts.port is None:
        netloc = f"{netloc}:{conn.port}"
    base_url = f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")

    headers = {str(k): str(v) for k, v in (extra.get("headers") or {}).items()}
    basic_auth: tuple[str, str] | None = None
    token = extra.get("token") or extra.get("bearer_token")
    if conn.login:
        basic_auth = (conn.login, conn.password or "")
    elif conn.password and not token:
        token = conn.password
    if token:
        headers["Authorization"] = f"Bearer {token}"
    verify = extra.get("verify", True)
    if isinstance(verify, str) and verify.lower() in {"true", "false"}:
        verify = verify.lower() == "true"
    return PrometheusSettings(
        base_url=base_url,
        headers=headers,
        basic_auth=basic_auth,
        verify=verify,
        timeout=float(timeout if timeout is not None else extra.get("timeout", DEFAULT_TIMEOUT)),
    )


def _to_float(raw: Any) -> float:
    # Prometheus encodes sample values as strings: "0.5", "NaN", "+Inf", "-Inf".
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise PrometheusQueryError(f"sample value {raw!r} is not a number") from None


def parse_query_response(status_code: int, body: Any) -> list[Sample]:
    """Turn an ``/api/v1/query`` answer into samples, or raise a :class:`MeasurementError`."""
    error = ""
    if isinstance(body, Mapping) and body.get("status") == "error":
        error = f"{body.get('errorType', 'error')}: {body.get('error', '')}"
    if status_code >= 500:
        raise PrometheusUnreachable(f"HTTP {status_code} {error}".strip())
    if status_code >= 400 or error:
        raise PrometheusQueryError(f"HTTP {status_code} {error}".strip())
    if not isinstance(body, Mapping) or body.get("status") != "success":
        raise PrometheusQueryError(f"unexpected answer: {str(body)[:200]}")
    data = body.get("data") or {}
    result_type = data.get("resultType")
    result: Any = data.get("result")
    try:
        if result_type == "vector":
            return [
                Sample(labels=dict(item.get("metric") or {}), value=_to_float(item["value"][1]))
                for item in result or []
            ]
        if result_type == "scalar":
            return [Sample(labels={}, value=_to_float(result[1]))]
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise PrometheusQueryError(f"malformed {result_type} result: {str(result)[:200]}") from err
    raise PrometheusQueryError(
        f'result type "{result_type}" is not supported: write a query that returns a number'
    )


def _json_or_none(response: requests.Response | httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


class PrometheusHook(BaseHook):
    """Run PromQL instant queries against the Prometheus of an Airflow connection.

    :param prometheus_conn_id: connection id (conn type ``http``), see the module doc.
    :param timeout: per-query timeout in seconds; default ``extra.timeout`` or 10 s.
    """

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = "prometheus_default"
    conn_type = "http"
    hook_name = "Prometheus"

    def __init__(self, *, prometheus_conn_id: str = default_conn_name, timeout: float | None = None) -> None:
        super().__init__()
        self.prometheus_conn_id = prometheus_conn_id
        self.timeout = timeout

    @cached_property
    def settings(self) -> PrometheusSettings:
        return settings_from_connection(self.get_connection(self.prometheus_conn_id), timeout=self.timeout)

    async def asettings(self) -> PrometheusSettings:
        """:attr:`settings`, with the connection read without blocking the event loop."""
        if "settings" not in self.__dict__:
            conn = await self.aget_connection(self.prometheus_conn_id)
            self.__dict__["settings"] = settings_from_connection(conn, timeout=self.timeout)
        return self.settings

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers.update(self.settings.headers)
        if self.settings.basic_auth:
            session.auth = self.settings.basic_auth
        session.verify = self.settings.verify
        return session

    def get_conn(self) -> requests.Session:
        return self.session

    def query(self, promql: str) -> list[Sample]:
        """Instant query; raises :class:`PrometheusUnreachable` or :class:`PrometheusQueryError`."""
        url = self.settings.query_url
        self.log.debug("Prometheus query %s: %s", url, promql)
        try:
            response = self.session.get(url, params={"query": promql}, timeout=self.settings.timeout)
        except requests.RequestException as err:
            raise PrometheusUnreachable(f"{url}: {type(err).__name__}: {err}") from err
        return parse_query_response(response.status_code, _json_or_none(response))

    @asynccontextmanager
    async def aclient(self) -> AsyncIterator[AsyncPrometheusClient]:
        """An async client sharing one ``httpx.AsyncClient`` for a whole analysis."""
        settings = await self.asettings()
        auth = httpx.BasicAuth(*settings.basic_auth) if settings.basic_auth else None
        async with httpx.AsyncClient(
            headers=settings.headers, auth=auth, verify=settings.verify, timeout=settings.timeout
        ) as client:
            yield AsyncPrometheusClient(client=client, settings=settings)


class AsyncPrometheusClient:
    """Instant queries over an open ``httpx.AsyncClient`` (from :meth:`PrometheusHook.aclient`)."""

    def __init__(self, *, client: httpx.AsyncClient, settings: PrometheusSettings) -> None:
        self.client = client
        self.settings = settings

    async def query(self, promql: str) -> list[Sample]:
        url = self.settings.query_url
        try:
            response = await self.client.get(url, params={"query": promql})
        except httpx.HTTPError as err:
            raise PrometheusUnreachable(f"{url}: {type(err).__name__}: {err}") from err
        return parse_query_response(response.status_code, _json_or_none(response))
