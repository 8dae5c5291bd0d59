"""Delivery metrics: deploys, rollbacks, approvals, lead time and pipeline runs.

Names and labels follow the metric contract in ``include/monitoring/README.md``.
The backend is chosen by the environment of every Airflow component:

``DELIVERY_METRICS_BACKEND``
    ``none`` (default), ``pushgateway`` or ``statsd``.
``DELIVERY_METRICS_URL``
    Pushgateway: its base URL (``http://pushgateway:9091``). StatsD: ``host:port``
    or ``udp://host:port`` (default ``127.0.0.1:8125``).
``DELIVERY_METRICS_JOB``
    Pushgateway job name (default ``delivery``).

**StatsD** lines use DogStatsD tags (``name:1|c|#service:x,result:success``),
which ``statsd_exporter`` turns into Prometheus labels; durations are sent as
timers in milliseconds (``|ms``), which ``statsd_exporter`` observes in seconds
(map them with ``observer_type: histogram`` for the ``_bucket`` series).

**Pushgateway** keeps the last value pushed, so counters and histograms are
kept cumulative by read-modify-write: the current values of the service's
group (``/metrics/job/<job>/service/<service>``) are read back from the
gateway's ``/metrics``, incremented, and pushed with ``POST`` (which replaces
only the pushed metric names of the group). Two deploys of the same service
finishing in the same instant may lose one increment; use StatsD where that
matters. Scrape the gateway with ``honor_labels: true``.

Counters are created at 0 for every label set they will use (both ``result``
values) before their first increment, as the contract requires. Emission never
raises: a failure is logged and ``False`` returned.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import quote, urlparse

log = logging.getLogger(__name__)

BACKEND_ENV = "DELIVERY_METRICS_BACKEND"
URL_ENV = "DELIVERY_METRICS_URL"
JOB_ENV = "DELIVERY_METRICS_JOB"

DEPLOY_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
PIPELINE_BUCKETS = (60.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
LEAD_TIME_BUCKETS = (300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 604800.0)

RESULTS = ("success", "failed")
APPROVAL_RESULTS = ("approved", "rejected", "timeout")

HELP = {
    "delivery_pipeline_runs_total": "Finished runs of a service's delivery DAG.",
    "delivery_pipeline_duration_seconds": "Duration of a delivery DAG run, trigger to end.",
    "delivery_deploy_total": "Finished deploys to an environment.",
    "delivery_deploy_duration_seconds": "Duration of a deploy, start to healthy (or failure).",
    "delivery_rollback_total": "Finished rollbacks, manual or automatic.",
    "delivery_approval_total": "Answered (or timed out) approval requests.",
    "delivery_approvals_pending": "Deploys waiting for a human approval now.",
    "delivery_lead_time_seconds": "Commit time to healthy in production.",
}

Kind = Literal["counter", "gauge", "histogram"]
LabelSet = tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One change: ``inc`` a counter, ``set`` a gauge, ``observe`` a histogram."""

    name: str
    kind: Kind
    labels: LabelSet
    value: float
    buckets: tuple[float, ...] = ()


def _labels(**labels: str) -> LabelSet:
    return tuple((k, str(v)) for k, v in labels.items())


def _counter(name: str, labels: LabelSet, *, value: float = 1.0) -> Sample:
    return Sample(name=name, kind="counter", labels=labels, value=value)


def _result_counters(name: str, result: str, results: Iterable[str], **labels: str) -> list[Sample]:
    """+1 for ``result``, +0 for the other results (created at 0 before their first increment)."""
    if result not in results:
        raise ValueError(f"{name}: result must be one of {', '.join(results)}, got {result!r}")
    return [_counter(name, _labels(**labels, result=r), value=1.0 if r == result else 0.0) for r in results]


# -- what the pipeline emits ------------------------------------------------------------


def deploy_samples(*, service: str, environment: str, result: str, duration_s: float | None) -> list[Sample]:
    samples = _result_counters(
        "delivery_deploy_total", result, RESULTS, service=service, environment=environment
    )
    if duration_s is not None:
        samples.append(
            Sample(
                name="delivery_deploy_duration_seconds",
                kind="histogram",
                labels=_labels(service=service, environment=environment),
                value=float(duration_s),
                buckets=DEPLOY_BUCKETS,
            )
        )
    return samples


def rollback_samples(*, service: str, environment: str, result: str) -> list[Sample]:
    return _result_counters(
        "delivery_rollback_total", result, RESULTS, service=service, environment=environment
    )


def approval_samples(*, service: str, result: str) -> list[Sample]:
    return _result_counters("delivery_approval_total", result, APPROVAL_RESULTS, service=service)


def approvals_pending_samples(*, service: str, environment: str, pending: int) -> list[Sample]:
    return [
        Sample(
            name="delivery_approvals_pending",
            kind="gauge",
            labels=_labels(service=service, environment=environment),
            value=float(pending),
        )
    ]


def lead_time_samples(*, service: str, seconds: float) -> list[Sample]:
    return [
        Sample(
            name="delivery_lead_time_seconds",
            kind="histogram",
            labels=_labels(service=service),
            value=max(0.0, float(seconds)),
            buckets=LEAD_TIME_BUCKETS,
        )
    ]


def pipeline_run_samples(*, service: str, result: str, duration_s: float | None) -> list[Sample]:
    samples = _result_counters("delivery_pipeline_runs_total", result, RESULTS, service=service)
    if duration_s is not None:
        samples.append(
            Sample(
                name="delivery_pipeline_duration_seconds",
                kind="histogram",
                labels=_labels(service=service),
                value=float(duration_s),
                buckets=PIPELINE_BUCKETS,
            )
        )
    return samples


# -- public API: never raises -----------------------------------------------------------


def record_deploy(*, service: str, environment: str, result: str, duration_s: float | None = None) -> bool:
    """A finished deploy (``result``: success or failed) and how long it took."""
    return _emit(
        service,
        lambda: deploy_samples(
            service=service, environment=environment, result=result, duration_s=duration_s
        ),
    )


def record_rollback(*, service: str, environment: str = "production", result: str) -> bool:
    return _emit(service, lambda: rollback_samples(service=service, environment=environment, result=result))


def record_approval(*, service: str, result: str) -> bool:
    """An answered approval: approved, rejected or timeout."""
    return _emit(service, lambda: approval_samples(service=service, result=result))


def record_approvals_pending(*, service: str, environment: str = "production", pending: int) -> bool:
    return _emit(
        service, lambda: approvals_pending_samples(service=service, environment=environment, pending=pending)
    )


def record_lead_time(*, service: str, commit_time: datetime, deployed_at: datetime) -> bool:
    """Commit time to healthy in production."""
    return _emit(
        service,
        lambda: lead_time_samples(service=service, seconds=(deployed_at - commit_time).total_seconds()),
    )


def record_pipeline_run(*, service: str, result: str, duration_s: float | None = None) -> bool:
    return _emit(service, lambda: pipeline_run_samples(service=service, result=result, duration_s=duration_s))


def _emit(service: str, build: Callable[[], list[Sample]]) -> bool:
    backend = (os.environ.get(BACKEND_ENV) or "none").strip().lower()
    if backend in ("", "none"):
        return True
    try:
        samples = build()
        if backend == "statsd":
            StatsdBackend.from_env().send(samples)
        elif backend == "pushgateway":
            PushgatewayBackend.from_env().push(service=service, samples=samples)
        else:
            raise ValueError(f"{BACKEND_ENV} must be none, pushgateway or statsd, got {backend!r}")
        return True
    except Exception as exc:
        log.warning("Delivery metrics for %s were not emitted (%s backend): %s", service, backend, exc)
        return False


# -- StatsD -----------------------------------------------------------------------------

_STATSD_UNSAFE = re.compile(r"[:|,#@\s]")


def statsd_lines(samples: Iterable[Sample]) -> list[str]:
    """DogStatsD lines: counters ``|c``, gauges ``|g``, histograms as timers in ms ``|ms``."""
    lines = []
    for sample in samples:
        tags = ",".join(f"{k}:{_STATSD_UNSAFE.sub('_', v)}" for k, v in sample.labels)
        if sample.kind == "counter":
            value, kind = _number(sample.value), "c"
        elif sample.kind == "gauge":
            value, kind = _number(sample.value), "g"
        else:
            value, kind = _number(round(sample.value * 1000.0, 3)), "ms"
        lines.append(f"{sample.name}:{value}|{kind}" + (f"|#{tags}" if tags else ""))
    return lines


@dataclass(frozen=True, kw_only=True)
class StatsdBackend:
    host: str = "127.0.0.1"
    port: int = 8125

    @classmethod
    def from_env(cls) -> StatsdBackend:
        url = (os.environ.get(URL_ENV) or "").strip()
        if not url:
            return cls()
        parsed = urlparse(url if "://" in url else f"udp://{url}")
        return cls(host=parsed.hostname or "127.0.0.1", port=parsed.port or 8125)

    def send(self, samples: Iterable[Sample]) -> None:
        """One datagram per line (every StatsD server accepts that)."""
        lines = statsd_lines(samples)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            for line in lines:
                sock.sendto(line.encode(), (self.host, self.port))


# -- Pushgateway ------------------------------------------------------------------------


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _series(name: str, labels: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{body}}}" if body else name


@dataclass
class _Histogram:
    buckets: dict[float, float]
    sum: float = 0.0
    count: float = 0.0


@dataclass
class MetricState:
    """Cumulative values of one Pushgateway group, as read back and as pushed."""

    counters: dict[tuple[str, LabelSet], float]
    gauges: dict[tuple[str, LabelSet], float]
    histograms: dict[tuple[str, LabelSet], _Histogram]

    @classmethod
    def empty(cls) -> MetricState:
        return cls(counters={}, gauges={}, histograms={})

    def apply(self, samples: Iterable[Sample]) -> set[str]:
        names = set()
        for s in samples:
            key = (s.name, s.labels)
            names.add(s.name)
            if s.kind == "counter":
                self.counters[key] = self.counters.get(key, 0.0) + s.value
            elif s.kind == "gauge":
                self.gauges[key] = s.value
            else:
                hist = self.histograms.setdefault(key, _Histogram(buckets={b: 0.0 for b in s.buckets}))
                for bound in list(hist.buckets):
                    if s.value <= bound:
                        hist.buckets[bound] += 1
                hist.sum += s.value
                hist.count += 1
        return names

    def exposition(self, names: Iterable[str]) -> str:
        """Prometheus text format (0.0.4) of the metrics ``names``, sorted, one ``# TYPE`` each."""
        out: list[str] = []
        for name in sorted(names):
            counters = sorted((k[1], v) for k, v in self.counters.items() if k[0] == name)
            gauges = sorted((k[1], v) for k, v in self.gauges.items() if k[0] == name)
            hists = sorted(
                ((k[1], v) for k, v in self.histograms.items() if k[0] == name), key=lambda x: x[0]
            )
            kind = "counter" if counters else "gauge" if gauges else "histogram"
            out.append(f"# HELP {name} {HELP.get(name, name)}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in counters + gauges:
                out.append(f"{_series(name, labels)} {_number(value)}")
            for labels, hist in hists:
                for bound in sorted(hist.buckets):
                    le = (*labels, ("le", _number(bound)))
                    out.append(f"{_series(name + '_bucket', le)} {_number(hist.buckets[bound])}")
                out.append(f"{_series(name + '_bucket', (*labels, ('le', '+Inf')))} {_number(hist.count)}")
                out.append(f"{_series(name + '_sum', labels)} {_number(hist.sum)}")
                out.append(f"{_series(name + '_count', labels)} {_number(hist.count)}")
        return "\n".join(out) + "\n"


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample line of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line.strip())
        if not match:
            continue
        name, body, raw = match.groups()
        labels = {m.group(1): _unescape(m.group(2)) for m in _LABEL.finditer(body or "")}
        try:
            value = float(raw)
        except ValueError:
            continue
        samples.append((name, labels, value))
    return samples


def state_from_exposition(
    text: str, *, names: Iterable[str], group: Mapping[str, str], kinds: Mapping[str, Kind]
) -> MetricState:
    """The values of ``names`` in one group (its grouping labels are dropped)."""
    state = MetricState.empty()
    wanted = set(names)
    for name, labels, value in parse_exposition(text):
        if any(labels.get(k, "") != v for k, v in group.items()):
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        metric = name if name in wanted else base if base in wanted else None
        if metric is None:
            continue
        own = {k: v for k, v in labels.items() if k not in group and k not in ("instance", "le")}
        own_labels: LabelSet = tuple(own.items())
        if metric == name and kinds.get(metric) == "counter":
            state.counters[(metric, own_labels)] = value
        elif metric == name and kinds.get(metric) == "gauge":
            state.gauges[(metric, own_labels)] = value
        elif kinds.get(metric) == "histogram":
            hist = state.histograms.setdefault((metric, own_labels), _Histogram(buckets={}))
            if name.endswith("_bucket") and labels.get("le") not in (None, "+Inf"):
                hist.buckets[float(labels["le"])] = value
            elif name.endswith("_sum"):
                hist.sum = value
            elif name.endswith("_count"):
                hist.count = value
    return state


def _order_labels(state: MetricState, samples: list[Sample]) -> None:
    """Read-back labels come in the gateway's order; use the order of our samples."""
    orders = {s.name: [k for k, _ in s.labels] for s in samples}

    def ordered(name: str, labels: LabelSet) -> LabelSet:
        order = orders.get(name)
        if not order:
            return labels
        d = dict(labels)
        return tuple((k, d[k]) for k in order if k in d) + tuple((k, v) for k, v in labels if k not in order)

    state.counters = {(n, ordered(n, ls)): v for (n, ls), v in state.counters.items()}
    state.gauges = {(n, ordered(n, ls)): v for (n, ls), v in state.gauges.items()}
    state.histograms = {(n, ordered(n, ls)): v for (n, ls), v in state.histograms.items()}


@dataclass(frozen=True, kw_only=True)
class PushgatewayBackend:
    url: str
    job: str = "delivery"
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls) -> PushgatewayBackend:
        url = (os.environ.get(URL_ENV) or "").strip()
        if not url:
            raise ValueError(f"{URL_ENV} must give the Pushgateway URL")
        return cls(url=url.rstrip("/"), job=(os.environ.get(JOB_ENV) or "delivery").strip())

    def group_path(self, *, service: str) -> str:
        return f"/metrics/job/{quote(self.job, safe='')}/service/{quote(service, safe='')}"

    def push(self, *, service: str, samples: list[Sample]) -> str:
        """Read the group's current values, add ``samples``, POST the result. Returns the body sent."""
        import requests

        names = {s.name for s in samples}
        kinds: dict[str, Kind] = {s.name: s.kind for s in samples}
        current = requests.get(f"{self.url}/metrics", timeout=self.timeout_s)
        current.raise_for_status()
        state = state_from_exposition(
            current.text, names=names, group={"job": self.job, "service": service}, kinds=kinds
        )
        for key in list(state.counters):  # contract labels include service: re-add it
            state.counters[(key[0], (("service", service), *key[1]))] = state.counters.pop(key)
        for key in list(state.gauges):
            state.gauges[(key[0], (("service", service), *key[1]))] = state.gauges.pop(key)
        for key in list(state.histograms):
            state.histograms[(key[0], (("service", service), *key[1]))] = state.histograms.pop(key)
        _order_labels(state, samples)
        state.apply(samples)
        body = state.exposition(names)
        response = requests.post(
            f"{self.url}{self.group_path(service=service)}",
            data=body.encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
            timeout=self.timeout_s,
        )
        response.raise_for_status()
        return body
