"""Prometheus instant queries, on the HTTP provider's hooks: :class:`PrometheusHook` (``HttpHook``,
workers) and :class:`PrometheusAsyncHook` (``HttpAsyncHook``, the triggerer).

The connection (default ``prometheus_default``, conn type ``http``) is read as every HTTP
integration reads it (:mod:`delivery.integrations.http`):

* ``host``: a host name (``prometheus.monitoring``) or a full URL with a path prefix
  (``https://prom.example.org/prometheus``); ``schema`` is the scheme when ``host`` has none
  (default ``http``); ``port`` is optional;
* ``login``/``password``: HTTP Basic; ``password`` alone: a bearer token;
* extras: ``timeout`` (seconds per query, default 10), ``verify`` (a JSON boolean or a CA bundle
  path); any other key is sent as a request header. The extras of the earlier format (``token``,
  ``bearer_token``, ``headers``) are refused with a message saying where they go now.

Only ``GET /api/v1/query`` is used. A query is tried again on a connection error, a timeout or a
5xx answer (:func:`~delivery.integrations.http.transient_retry`), then fails with
:class:`PrometheusUnreachable`; an answer Prometheus gives but that holds no usable value (HTTP 4xx,
``status: error``, a result type that is not a number) is a :class:`PrometheusQueryError`. Both are
:class:`~delivery.verification.analysis.MeasurementError`, which the analysis records as an
Inconclusive check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import aiohttp
import requests
import tenacity

from delivery.integrations.http import (
    TRANSIENT_ERRORS,
    ConnectionHttpAsyncHook,
    ConnectionHttpHook,
    retry_budget,
    transient_retry,
)
from delivery.verification.analysis import MeasurementError, Sample

__all__ = [
    "DEFAULT_TIMEOUT",
    "QUERY_PATH",
    "PrometheusAsyncHook",
    "PrometheusHook",
    "PrometheusQueryError",
    "PrometheusUnreachable",
    "parse_query_response",
    "query_time_budget",
]

QUERY_PATH = "/api/v1/query"
DEFAULT_TIMEOUT = 10.0
QUERY_ATTEMPTS = 3


class PrometheusQueryError(MeasurementError):
    """Prometheus answered, but not with a usable value (bad query, execution error...)."""


class PrometheusUnreachable(MeasurementError):
    """Prometheus could not be reached or is failing (connection error, timeout, 5xx)."""

    unreachable = True


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


def query_time_budget(timeout: float | None) -> float:
    """The longest one query can take, retries included, with a per-attempt ``timeout`` (default 10 s)."""
    return retry_budget(attempts=QUERY_ATTEMPTS, timeout_s=timeout or DEFAULT_TIMEOUT)


class _Answer(NamedTuple):
    status: int
    body: Any


class PrometheusHook(ConnectionHttpHook):
    """PromQL instant queries against the Prometheus of an Airflow connection (module doc).

    :param prometheus_conn_id: the connection (conn type ``http``).
    :param timeout: seconds per query; default the connection's ``timeout`` extra, else 10.
    """

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = "prometheus_default"
    conn_type = "http"
    hook_name = "Prometheus"

    def __init__(self, *, prometheus_conn_id: str = default_conn_name, timeout: float | None = None) -> None:
        super().__init__(method="GET", http_conn_id=prometheus_conn_id)
        self.prometheus_conn_id = prometheus_conn_id
        self.timeout = timeout

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        session = super().get_conn(headers, extra_options)
        self.merged_extra.setdefault("timeout", DEFAULT_TIMEOUT)  # never wait forever for an answer
        return session

    def query(self, promql: str) -> list[Sample]:
        """Instant query; raises :class:`PrometheusUnreachable` or :class:`PrometheusQueryError`."""
        options: dict[str, Any] = {"check_response": False}
        if self.timeout is not None:
            options["timeout"] = self.timeout
        try:
            response = self.run_with_advanced_retry(
                transient_retry(attempts=QUERY_ATTEMPTS),
                endpoint=QUERY_PATH,
                data={"query": promql},
                extra_options=options,
            )
        except TRANSIENT_ERRORS as err:
            raise PrometheusUnreachable(f"{self.base_url}: {type(err).__name__}: {err}") from err
        try:
            body = response.json()
        except ValueError:
            body = None
        return parse_query_response(response.status_code, body)


AsyncQuery = Callable[[str], Awaitable[list[Sample]]]


class PrometheusAsyncHook(ConnectionHttpAsyncHook):
    """:class:`PrometheusHook`'s queries without blocking the event loop (for the triggerer).

    ``async with hook.querying() as query:`` shares one HTTP session for a whole analysis.
    """

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = "prometheus_default"
    conn_type = "http"
    hook_name = "Prometheus (async)"

    def __init__(self, *, prometheus_conn_id: str = default_conn_name, timeout: float | None = None) -> None:
        super().__init__(method="GET", http_conn_id=prometheus_conn_id)
        self.prometheus_conn_id = prometheus_conn_id
        self.timeout = timeout

    @asynccontextmanager
    async def querying(self) -> AsyncIterator[AsyncQuery]:
        """Yield ``query(promql) -> samples``, which raises as :meth:`PrometheusHook.query` does."""
        config = await self.config()
        seconds = self.timeout or float((config.extra_options or {}).get("timeout") or DEFAULT_TIMEOUT)
        options = {"check_response": False, "timeout": aiohttp.ClientTimeout(total=seconds)}
        async with self.session() as http:

            async def attempt(promql: str) -> _Answer:
                response = await http.run(endpoint=QUERY_PATH, data={"query": promql}, extra_options=options)
                try:
                    return _Answer(response.status, await response.json(content_type=None))
                except ValueError:
                    return _Answer(response.status, None)
                finally:
                    response.release()

            async def query(promql: str) -> list[Sample]:
                retrying = tenacity.AsyncRetrying(**transient_retry(attempts=QUERY_ATTEMPTS))
                try:
                    answer: _Answer = await retrying(attempt, promql)
                except TRANSIENT_ERRORS as err:
                    raise PrometheusUnreachable(f"{http.base_url}: {type(err).__name__}: {err}") from err
                return parse_query_response(answer.status, answer.body)

            yield query
