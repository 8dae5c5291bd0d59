"""``GpuServiceHealthOperator``: the post-deploy check of a GPU inference service (seed flow 4).

After a deploy, the inference service must be up *on the GPU*, with its model
loaded, and answer within its latency budget:

1. ``GET {url}/health`` answers 200 with ``model_loaded: true``; with
   ``require_gpu`` its ``device`` must be ``"cuda"``. A service that came up
   on the CPU is, as the catalog's ``gpu.on_missing_gpu`` says, ``skip``:
   :class:`~airflow.sdk.exceptions.AirflowSkipException` ("skipped: no GPU ..."),
   or ``fail``: :class:`GpuServiceCheckFailed`.
2. ``POST {url}/predict`` with a JSON body (``{"text": ...}`` by default),
   ``warmup`` untimed then ``samples`` timed requests (client-side round trip);
   each must answer 200. The p95 latency (the GPU harness's
   :func:`~delivery.gpu.harness.percentile`, numpy's ``linear``) must stay within
   ``latency_budget_ms`` when given; the error names the measured and the
   allowed value.

The returned dict (the task's XCom) holds the health body's facts and the
latency summary (p50/p95/p99/mean/min/max in ms).

Why not the HTTP provider's ``HttpHook``: the URL is the environment's service URL from the
catalog, not an Airflow connection (``HttpHook`` always resolves a connection and prefixes its
base URL), and the latency is measured on the client side around each request, so the requests
go through one plain ``requests`` session with keep-alive, timed by this operator. No request is
retried: a failed ``/predict`` is a finding of the check, and a retry would hide it from the
latency figures.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import requests
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from delivery.gpu.harness import percentile, summarize_latencies

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["DEFAULT_PREDICT_BODY", "GpuServiceCheckFailed", "GpuServiceHealthOperator"]

DEFAULT_PREDICT_BODY: dict[str, Any] = {
    "text": "A young wizard discovers a hidden school of magic and a dragon guarding an ancient secret."
}


class GpuServiceCheckFailed(RuntimeError):
    """The deployed service is not healthy, not on the GPU, or too slow."""


class GpuServiceHealthOperator(BaseOperator):
    """Check a deployed inference service: model loaded, on the GPU, p95 latency within budget.

    :param url: base URL of the service (templated), e.g. ``https://inference.staging.visiobook.io``.
    :param require_gpu: ``/health`` must report ``device: "cuda"``.
    :param on_missing_gpu: ``"skip"`` or ``"fail"`` (the catalog's ``gpu.on_missing_gpu``) when
        ``require_gpu`` and the service runs elsewhere.
    :param latency_budget_ms: largest allowed p95 of ``POST /predict``; ``None``: measured, not judged.
    :param samples: timed ``/predict`` requests (at least 1).
    :param warmup: untimed ``/predict`` requests before them.
    :param timeout: seconds per HTTP request.
    :param predict_body: the JSON body of ``/predict`` (templated).
    """

    template_fields = ("url", "predict_body")
    ui_color = "#76b900"

    def __init__(
        self,
        *,
        url: str,
        require_gpu: bool,
        on_missing_gpu: str = "fail",
        latency_budget_ms: float | None = None,
        samples: int = 20,
        warmup: int = 2,
        timeout: float = 10.0,
        predict_body: Mapping[str, Any] | None = None,
        health_path: str = "/health",
        predict_path: str = "/predict",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not url.startswith(("http://", "https://", "{{")):
            raise ValueError(f'url "{url}" must start with http:// or https://')
        if on_missing_gpu not in ("skip", "fail"):
            raise ValueError(f'on_missing_gpu must be "skip" or "fail", got {on_missing_gpu!r}')
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        if latency_budget_ms is not None and latency_budget_ms <= 0:
            raise ValueError(f"latency_budget_ms must be > 0, got {latency_budget_ms}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.url = url
        self.require_gpu = require_gpu
        self.on_missing_gpu = on_missing_gpu
        self.latency_budget_ms = latency_budget_ms
        self.samples = samples
        self.warmup = warmup
        self.timeout = timeout
        self.predict_body: dict[str, Any] = dict(
            predict_body if predict_body is not None else DEFAULT_PREDICT_BODY
        )
        self.health_path = health_path
        self.predict_path = predict_path

    def _endpoint(self, path: str) -> str:
        return f"{self.url.rstrip('/')}/{path.lstrip('/')}"

    def execute(self, context: Context) -> dict[str, Any]:
        with requests.Session() as session:
            health = self._check_health(session)
            latencies = self._measure_predict(session)
        summary = summarize_latencies(latencies)
        p95 = percentile(latencies, 95)
        predict_url = self._endpoint(self.predict_path)
        self.log.info(
            "POST %s x%d: p50 %.3f ms, p95 %.3f ms, p99 %.3f ms (budget %s)",
            predict_url,
            len(latencies),
            summary["p50"],
            p95,
            summary["p99"],
            "none" if self.latency_budget_ms is None else f"{self.latency_budget_ms} ms",
        )
        if self.latency_budget_ms is not None and p95 > self.latency_budget_ms:
            raise GpuServiceCheckFailed(
                f"p95 latency of POST {predict_url} over {len(latencies)} requests: "
                f"measured {p95:.3f} ms > allowed {self.latency_budget_ms:g} ms "
                f"(p50 {summary['p50']:.3f} ms, max {summary['max']:.3f} ms)"
            )
        return {
            "status": "passed",
            "url": self.url,
            "device": health.get("device"),
            "backend": health.get("backend"),
            "model": health.get("model"),
            "version": health.get("version"),
            "commit": health.get("commit"),
            "gpu_required": self.require_gpu,
            "samples": len(latencies),
            "latency_ms": {k: round(v, 3) for k, v in summary.items()},
            "latency_budget_ms": self.latency_budget_ms,
            "percentile_method": "linear",
        }

    def _check_health(self, session: requests.Session) -> dict[str, Any]:
        health_url = self._endpoint(self.health_path)
        try:
            resp = session.get(health_url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise GpuServiceCheckFailed(f"GET {health_url} failed: {exc}") from exc
        body: dict[str, Any] = {}
        try:
            parsed = resp.json()
            if isinstance(parsed, dict):
                body = parsed
        except ValueError:
            pass
        if resp.status_code != 200:
            reason = body.get("reason") or resp.text[:300]
            raise GpuServiceCheckFailed(f"GET {health_url} answered {resp.status_code}: {reason}")
        if body.get("model_loaded") is not True:
            raise GpuServiceCheckFailed(
                f"GET {health_url}: model not loaded (model_loaded={body.get('model_loaded')!r}, "
                f"reason {body.get('reason')!r})"
            )
        device = body.get("device")
        self.log.info(
            "%s: model %s loaded on %s (backend %s, version %s)",
            health_url,
            body.get("model"),
            device,
            body.get("backend"),
            body.get("version"),
        )
        if self.require_gpu and device != "cuda":
            reason = (
                f"no GPU: {health_url} reports device {device!r} (backend {body.get('backend')!r}), "
                'a GPU ("cuda") is required'
            )
            if self.on_missing_gpu == "skip":
                raise AirflowSkipException(f"skipped: {reason}")
            raise GpuServiceCheckFailed(reason)
        return body

    def _measure_predict(self, session: requests.Session) -> list[float]:
        predict_url = self._endpoint(self.predict_path)
        latencies: list[float] = []
        for index in range(self.warmup + self.samples):
            start = time.perf_counter()
            try:
                resp = session.post(predict_url, json=self.predict_body, timeout=self.timeout)
            except requests.RequestException as exc:
                raise GpuServiceCheckFailed(f"POST {predict_url} failed: {exc}") from exc
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            if resp.status_code != 200:
                raise GpuServiceCheckFailed(
                    f"POST {predict_url} answered {resp.status_code}: {resp.text[:300]}"
                )
            if index >= self.warmup:
                latencies.append(elapsed_ms)
        return latencies
