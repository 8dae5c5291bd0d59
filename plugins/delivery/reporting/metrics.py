"""Delivery metrics: pipeline runs, deploys, rollbacks, approvals and lead time.

Names, labels and meanings are the contract in ``include/monitoring/README.md``, which the shipped
rules (``include/monitoring/prometheus/rules/delivery.yml``) and the Grafana dashboard read:
``delivery_pipeline_runs_total``, ``delivery_pipeline_duration_seconds``, ``delivery_deploy_total``,
``delivery_deploy_duration_seconds``, ``delivery_rollback_total``, ``delivery_approval_total``,
``delivery_approvals_pending``, ``delivery_lead_time_seconds``. The steps record them at three
moments of a DAG run: :func:`open_run` when it starts, :func:`record_approvals_pending` when the
production approval starts and stops waiting, :func:`record_run` when it ends.

The backend is chosen by the environment of every Airflow component:

``DELIVERY_METRICS_BACKEND``
    ``none`` (default), ``pushgateway`` or ``statsd``.
``DELIVERY_METRICS_URL``
    Pushgateway: its base URL (``http://pushgateway:9091``). StatsD: ``host:port`` or
    ``udp://host:port`` (default ``127.0.0.1:8125``).
``DELIVERY_METRICS_JOB``
    The Pushgateway job (default ``delivery``).
``DELIVERY_METRICS_RETENTION``
    How long a run's group stays in the Pushgateway after its last push (default ``7d``, in the
    project's duration grammar); longer than any run, approvals included.

**Pushgateway** (``prometheus_client``: a collector registry, ``pushadd_to_gateway``). Every DAG
run pushes its own group, grouping key ``{job, service, dag_id, run_id}``. The gateway keeps the
last value pushed and never adds one to another, so a group per run is what keeps the counts exact
without reading the gateway back: two runs never write the same series. :func:`open_run` pushes
every series of the run at 0 (the contract's "created at 0 before the first increment": a series
born at 1 has no ``increase()``), :func:`record_run` pushes their final values; ``sum by (...)``
in the rules and panels adds the runs up. A run shorter than one scrape interval may be missed by
``increase()`` (its 0 was never scraped). Scrape the gateway with ``honor_labels: true``.
:func:`open_run` also deletes the service's groups whose last push is older than the retention,
and those still showing a pending approval a day past the approval timeout (their run was stopped
from outside while it waited).

**StatsD** lines use DogStatsD tags (``name:1|c|#service:x,result:success``), which
``statsd_exporter`` turns into labels and adds up; durations are timers in milliseconds
(``|ms``, map them with ``observer_type: histogram``). :func:`open_run` sends ``+0`` for every
counter so that each series exists at 0 before its first increment. The pending-approvals gauge is
tagged with the run (``dag_id``, ``run_id``), as its Pushgateway series is.

Emission never raises: a failure is logged and ``False`` returned.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlparse

import requests

from delivery.catalog.fields import parse_duration

log = logging.getLogger(__name__)

__all__ = [
    "APPROVAL_RESULTS",
    "ENVIRONMENTS",
    "HELP",
    "METRIC_NAMES",
    "RESULTS",
    "Deploy",
    "Run",
    "RunOutcome",
    "Sample",
    "open_run",
    "record_approvals_pending",
    "record_run",
]

BACKEND_ENV = "DELIVERY_METRICS_BACKEND"
URL_ENV = "DELIVERY_METRICS_URL"
JOB_ENV = "DELIVERY_METRICS_JOB"
RETENTION_ENV = "DELIVERY_METRICS_RETENTION"
DEFAULT_RETENTION = timedelta(days=7)
PUSH_TIMEOUT_S = 10.0

DEPLOY_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
PIPELINE_BUCKETS = (60.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
LEAD_TIME_BUCKETS = (300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 604800.0)

RESULTS = ("success", "failed")
APPROVAL_RESULTS = ("approved", "rejected", "timeout")
ENVIRONMENTS = ("staging", "production")

PIPELINE_RUNS = "delivery_pipeline_runs_total"
PIPELINE_DURATION = "delivery_pipeline_duration_seconds"
DEPLOYS = "delivery_deploy_total"
DEPLOY_DURATION = "delivery_deploy_duration_seconds"
ROLLBACKS = "delivery_rollback_total"
APPROVALS = "delivery_approval_total"
APPROVALS_PENDING = "delivery_approvals_pending"
LEAD_TIME = "delivery_lead_time_seconds"

HELP = {
    PIPELINE_RUNS: "Finished runs of a service's delivery DAG.",
    PIPELINE_DURATION: "Duration of a delivery DAG run, trigger to end.",
    DEPLOYS: "Finished deploys to an environment.",
    DEPLOY_DURATION: "Duration of a deploy, start to healthy (or failure).",
    ROLLBACKS: "Finished rollbacks, manual or automatic.",
    APPROVALS: "Answered (or timed out) approval requests.",
    APPROVALS_PENDING: "Deploys waiting for a human approval now.",
    LEAD_TIME: "Commit time to healthy in production.",
}
METRIC_NAMES = tuple(HELP)
"""Every metric of the contract, all of which the pipelines emit."""

Kind = Literal["counter", "gauge", "histogram"]
KINDS: dict[str, Kind] = {
    PIPELINE_RUNS: "counter",
    PIPELINE_DURATION: "histogram",
    DEPLOYS: "counter",
    DEPLOY_DURATION: "histogram",
    ROLLBACKS: "counter",
    APPROVALS: "counter",
    APPROVALS_PENDING: "gauge",
    LEAD_TIME: "histogram",
}
BUCKETS = {PIPELINE_DURATION: PIPELINE_BUCKETS, DEPLOY_DURATION: DEPLOY_BUCKETS, LEAD_TIME: LEAD_TIME_BUCKETS}


# -- what is recorded ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Run:
    """One DAG run of a service: its metrics are one Pushgateway group."""

    service: str
    dag_id: str
    run_id: str

    @classmethod
    def of(cls, service: str, context: Mapping[str, Any]) -> Run:
        """The run of a task's (or a callback's) context."""
        ti = context.get("ti") or context.get("task_instance")
        dag_run = context.get("dag_run")
        dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", None) or ""
        run_id = context.get("run_id") or getattr(ti, "run_id", None) or getattr(dag_run, "run_id", "")
        return cls(service=service, dag_id=str(dag_id), run_id=str(run_id))

    def grouping_key(self) -> dict[str, str]:
        return {"service": self.service, "dag_id": self.dag_id, "run_id": self.run_id}


@dataclass(frozen=True, kw_only=True)
class Deploy:
    """A finished deploy to ``environment``; ``duration_s`` from its GitOps commit to healthy."""

    environment: str
    result: str
    duration_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """What a finished run did, as the metrics count it (``None``: not part of this run)."""

    pipeline: str | None = None
    duration_s: float | None = None
    deploys: tuple[Deploy, ...] = ()
    rollback: str | None = None
    rollback_environment: str = "production"
    approval: str | None = None
    lead_time_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One series: a counter or gauge ``value``, or a histogram's ``observations``."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float = 0.0
    observations: tuple[float, ...] = ()

    @property
    def kind(self) -> Kind:
        return KINDS[self.name]


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple((k, str(v)) for k, v in labels.items())


def _check(name: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{name}: result must be one of {', '.join(allowed)}, got {value!r}")


def _counters(name: str, chosen: str | None, results: Sequence[str], **labels: str) -> list[Sample]:
    """The counter's series of every result: 1 for ``chosen``, 0 for the others."""
    _check(name, chosen, results)
    return [
        Sample(name=name, labels=_labels(**labels, result=r), value=1.0 if r == chosen else 0.0)
        for r in results
    ]


def _histogram(name: str, observed: float | None, **labels: str) -> Sample:
    values = () if observed is None else (max(0.0, float(observed)),)
    return Sample(name=name, labels=_labels(**labels), observations=values)


def run_samples(service: str, outcome: RunOutcome) -> list[Sample]:
    """Every series of a run; all at 0 for an empty :class:`RunOutcome` (what :func:`open_run` pushes)."""
    deploys = {d.environment: d for d in outcome.deploys}
    unknown = sorted(set(deploys) - set(ENVIRONMENTS))
    if unknown:
        raise ValueError(f"{DEPLOYS}: environment must be one of {', '.join(ENVIRONMENTS)}, got {unknown}")
    samples = _counters(PIPELINE_RUNS, outcome.pipeline, RESULTS, service=service)
    samples.append(_histogram(PIPELINE_DURATION, outcome.duration_s, service=service))
    for env in ENVIRONMENTS:
        deploy = deploys.get(env)
        result, duration = (deploy.result, deploy.duration_s) if deploy else (None, None)
        samples += _counters(DEPLOYS, result, RESULTS, service=service, environment=env)
        samples.append(_histogram(DEPLOY_DURATION, duration, service=service, environment=env))
    for env in ENVIRONMENTS:
        rollback = outcome.rollback if env == outcome.rollback_environment else None
        samples += _counters(ROLLBACKS, rollback, RESULTS, service=service, environment=env)
    samples += _counters(APPROVALS, outcome.approval, APPROVAL_RESULTS, service=service)
    samples.append(_pending(service, "production", pending=False))
    samples.append(_histogram(LEAD_TIME, outcome.lead_time_s, service=service))
    return samples


def _pending(service: str, environment: str, *, pending: bool) -> Sample:
    return Sample(
        name=APPROVALS_PENDING, labels=_labels(service=service, environment=environment), value=float(pending)
    )


# -- public API: never raises ----------------------------------------------------------------


def open_run(run: Run, *, approval_timeout: timedelta | None = None) -> bool:
    """The run starts: every series of its group at 0; expired groups of the service are deleted."""

    def pushgateway(gateway: Pushgateway) -> None:
        gateway.push(run, run_samples(run.service, RunOutcome()))
        try:
            gateway.expire(service=run.service, approval_timeout=approval_timeout)
        except Exception as exc:  # the run's own metrics are pushed; the clean-up waits for the next run
            log.warning("Expired metric groups of %s were not deleted: %s", run.service, exc)

    def statsd(client: Statsd) -> None:
        client.send([s for s in run_samples(run.service, RunOutcome()) if s.kind == "counter"], run=None)

    return _emit(run, pushgateway, statsd)


def record_run(run: Run, outcome: RunOutcome) -> bool:
    """The run ended: the final values of its series (its pending approval, if any, back to 0)."""

    def statsd(client: Statsd) -> None:
        events = [s for s in run_samples(run.service, outcome) if s.value or s.observations]
        client.send(events, run=None)
        client.send([_pending(run.service, "production", pending=False)], run=run)

    return _emit(run, lambda gateway: gateway.push(run, run_samples(run.service, outcome)), statsd)


def record_approvals_pending(run: Run, *, environment: str = "production", pending: bool) -> bool:
    """The run's approval of ``environment`` starts (``pending``) or stops (answered, timed out) waiting."""
    sample = _pending(run.service, environment, pending=pending)
    return _emit(
        run, lambda gateway: gateway.push(run, [sample]), lambda client: client.send([sample], run=run)
    )


def _emit(run: Run, pushgateway: Callable[[Pushgateway], None], statsd: Callable[[Statsd], None]) -> bool:
    backend = (os.environ.get(BACKEND_ENV) or "none").strip().lower()
    if backend in ("", "none"):
        return True
    try:
        if backend == "statsd":
            statsd(Statsd.from_env())
        elif backend == "pushgateway":
            pushgateway(Pushgateway.from_env())
        else:
            raise ValueError(f"{BACKEND_ENV} must be none, pushgateway or statsd, got {backend!r}")
        return True
    except Exception as exc:
        log.warning(
            "Delivery metrics of %s (%s) were not emitted (%s backend): %s",
            run.service,
            run.run_id,
            backend,
            exc,
        )
        return False


# -- Pushgateway ---------------------------------------------------------------------------


class _Collector:
    """The samples of one push as ``prometheus_client`` metric families (no ``_created`` series)."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples = list(samples)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import (  # noqa: PLC0415 prometheus_client: only when pushing
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString  # noqa: PLC0415 prometheus_client: only when pushing

        families = {
            "counter": CounterMetricFamily,
            "gauge": GaugeMetricFamily,
            "histogram": HistogramMetricFamily,
        }
        for name in dict.fromkeys(s.name for s in self.samples):
            series = [s for s in self.samples if s.name == name]
            family = families[series[0].kind](name, HELP[name], labels=[k for k, _ in series[0].labels])
            for sample in series:
                values = [v for _, v in sample.labels]
                if sample.kind != "histogram":
                    family.add_metric(values, sample.value)
                    continue
                bounds = [*BUCKETS[name], float("inf")]
                buckets = [
                    (floatToGoString(b), sum(1 for o in sample.observations if o <= b)) for b in bounds
                ]
                family.add_metric(values, buckets=buckets, sum_value=sum(sample.observations))
            yield family


@dataclass(frozen=True, kw_only=True)
class Pushgateway:
    url: str
    job: str = "delivery"
    retention: timedelta = DEFAULT_RETENTION

    @classmethod
    def from_env(cls) -> Pushgateway:
        url = (os.environ.get(URL_ENV) or "").strip().rstrip("/")
        if not url:
            raise ValueError(f"{URL_ENV} must give the Pushgateway URL")
        raw_retention = (os.environ.get(RETENTION_ENV) or "").strip()
        return cls(
            url=url,
            job=(os.environ.get(JOB_ENV) or "delivery").strip(),
            retention=parse_duration(raw_retention) if raw_retention else DEFAULT_RETENTION,
        )

    def push(self, run: Run, samples: Iterable[Sample]) -> None:
        """``pushadd_to_gateway``: replaces the pushed metrics of the run's group, keeps the others."""
        from prometheus_client import CollectorRegistry  # noqa: PLC0415 prometheus_client: only when pushing
        from prometheus_client.exposition import pushadd_to_gateway  # noqa: PLC0415 prometheus_client: only when pushing

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(samples))
        pushadd_to_gateway(
            self.url, job=self.job, registry=registry, grouping_key=run.grouping_key(), timeout=PUSH_TIMEOUT_S
        )

    def expire(
        self, *, service: str, approval_timeout: timedelta | None, now: float | None = None
    ) -> list[dict[str, str]]:
        """Delete the service's run groups that outlived the retention, or a stopped run's pending approval."""
        from prometheus_client.exposition import delete_from_gateway  # noqa: PLC0415 prometheus_client: only when expiring

        now = time.time() if now is None else now
        expired = []
        for labels, pushed_at, pending in self._groups(service):
            age = now - pushed_at
            stale_approval = (
                pending
                and approval_timeout is not None
                and age > (approval_timeout + timedelta(days=1)).total_seconds()
            )
            if age > self.retention.total_seconds() or stale_approval:
                key = {k: v for k, v in labels.items() if k != "job"}
                delete_from_gateway(self.url, job=self.job, grouping_key=key, timeout=PUSH_TIMEOUT_S)
                expired.append(key)
        if expired:
            log.info("Deleted %d expired metric group(s) of %s from the Pushgateway", len(expired), service)
        return expired

    def _groups(self, service: str) -> Iterable[tuple[dict[str, str], float, bool]]:
        """(grouping labels, last push time, approval pending) of the service's run groups.

        The Pushgateway's JSON API (``GET /api/v1/metrics``) is the only way to list its groups;
        ``prometheus_client`` only pushes and deletes.
        """
        answer = requests.get(f"{self.url}/api/v1/metrics", timeout=PUSH_TIMEOUT_S)
        answer.raise_for_status()
        for group in answer.json().get("data") or []:
            labels = group.get("labels") or {}
            if labels.get("job") != self.job or labels.get("service") != service or "run_id" not in labels:
                continue
            pushed = (group.get("push_time_seconds") or {}).get("metrics") or [{}]
            pending = (group.get(APPROVALS_PENDING) or {}).get("metrics") or []
            yield (
                labels,
                float(pushed[0].get("value") or 0),
                any(float(m.get("value") or 0) > 0 for m in pending),
            )


# -- StatsD --------------------------------------------------------------------------------

_STATSD_UNSAFE = re.compile(r"[:|,#@\s]")


def statsd_lines(samples: Iterable[Sample], *, run: Run | None) -> list[str]:
    """DogStatsD lines: counters ``|c``, gauges ``|g``, histogram observations as timers in ms ``|ms``."""
    lines = []
    for sample in samples:
        labels = dict(sample.labels)
        if run is not None:
            labels.update(dag_id=run.dag_id, run_id=run.run_id)
        tags = ",".join(f"{k}:{_STATSD_UNSAFE.sub('_', v)}" for k, v in labels.items())
        suffix = f"|#{tags}" if tags else ""
        if sample.kind == "histogram":
            lines += [f"{sample.name}:{_number(o * 1000.0)}|ms{suffix}" for o in sample.observations]
        else:
            kind = "c" if sample.kind == "counter" else "g"
            lines.append(f"{sample.name}:{_number(sample.value)}|{kind}{suffix}")
    return lines


def _number(value: float) -> str:
    rounded = round(float(value), 3)
    return str(int(rounded)) if rounded.is_integer() else repr(rounded)


@dataclass(frozen=True, kw_only=True)
class Statsd:
    host: str = "127.0.0.1"
    port: int = 8125

    @classmethod
    def from_env(cls) -> Statsd:
        url = (os.environ.get(URL_ENV) or "").strip()
        if not url:
            return cls()
        parsed = urlparse(url if "://" in url else f"udp://{url}")
        return cls(host=parsed.hostname or "127.0.0.1", port=parsed.port or 8125)

    def send(self, samples: Iterable[Sample], *, run: Run | None) -> None:
        """One datagram per line (every StatsD server accepts that)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            for line in statsd_lines(samples, run=run):
                sock.sendto(line.encode(), (self.host, self.port))
