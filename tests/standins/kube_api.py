"""A stand-in Kubernetes API server (core/v1 pods) for tests.

A real HTTP server (stdlib ``ThreadingHTTPServer``) bound to 127.0.0.1 on an
ephemeral port, speaking the shapes of the Kubernetes API that the
``kubernetes`` Python client (and so the cncf-kubernetes provider's hook) uses:

* ``GET /api/v1/namespaces/{namespace}/pods[?labelSelector=...]`` -> ``v1 PodList``
* ``GET /api/v1/namespaces/{namespace}/pods/{name}``               -> ``v1 Pod``
* ``GET /version``                                                  -> ``version.Info``

Label selectors support the equality-based (``k=v``, ``k==v``, ``k!=v``) and
set-based (``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``) forms, as the API
server does. Errors are ``v1 Status`` bodies. ``fail_with = 403`` (or any
status) makes every pod request fail, to test callers' error handling. Every
request is recorded (method, path, query).

Clients connect with :meth:`KubeApiStandIn.write_kubeconfig` (a kubeconfig
file, no credentials) or :meth:`KubeApiStandIn.connection_json` (an Airflow
``kubernetes`` connection whose ``kube_config_path`` is that file).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["KubeApiStandIn", "RecordedRequest", "make_pod", "matches_selector"]

_POD_LIST = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
_POD_GET = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$")
_SET_EXPR = re.compile(r"^(?P<key>[^\s!=]+)\s+(?P<op>in|notin)\s+\((?P<values>[^)]*)\)$")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_pod(
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    node_name: str | None,
    phase: str = "Failed",
    image: str = "busybox:1.36",
) -> dict[str, Any]:
    """A ``v1 Pod`` as the API server returns it (the fields the client needs, plus nodeName/phase)."""
    uid = hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()
    spec: dict[str, Any] = {
        "containers": [{"name": "base", "image": image, "imagePullPolicy": "IfNotPresent"}],
        "restartPolicy": "Never",
        "schedulerName": "default-scheduler",
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:32]}",
            "resourceVersion": "1",
            "creationTimestamp": _now(),
            "labels": dict(labels),
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def _split_selector(selector: str) -> list[str]:
    """Split on the commas that are not inside ``( )``."""
    parts, depth, current = [], 0, []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def matches_selector(labels: dict[str, str], selector: str) -> bool:
    """Whether ``labels`` match a Kubernetes label selector string."""
    for requirement in _split_selector(selector):
        set_expr = _SET_EXPR.match(requirement)
        if set_expr:
            values = {v.strip() for v in set_expr["values"].split(",") if v.strip()}
            present = set_expr["key"] in labels and labels[set_expr["key"]] in values
            if present != (set_expr["op"] == "in"):
                return False
        elif "!=" in requirement:
            key, _, value = requirement.partition("!=")
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in requirement:
            key, _, value = requirement.replace("==", "=").partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
        elif requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    500: "InternalError",
    503: "ServiceUnavailable",
}


@dataclass
class KubeApiStandIn:
    """Serve ``pods`` (a list of ``v1 Pod`` dicts, see :func:`make_pod`) on 127.0.0.1."""

    pods: list[dict[str, Any]] = field(default_factory=list)
    fail_with: int | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> KubeApiStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="kube-api-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> KubeApiStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ------------------------------------------------------------------ client configuration

    def write_kubeconfig(self, path: Path, *, namespace: str = "default") -> Path:
        """A kubeconfig (one cluster, one context, a user without credentials) pointing here."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
                }
            ],
            "current-context": "standin",
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def connection_json(self, kubeconfig: Path) -> str:
        """An Airflow ``kubernetes`` connection (``AIRFLOW_CONN_<ID>``) using ``kubeconfig``."""
        return json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig), "in_cluster": False}}
        )

    # ------------------------------------------------------------------ serving

    def pod_list(self, namespace: str, selector: str | None) -> dict[str, Any]:
        with self._lock:
            items = [
                pod
                for pod in self.pods
                if pod["metadata"]["namespace"] == namespace
                and (not selector or matches_selector(pod["metadata"].get("labels") or {}, selector))
            ]
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, code: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                path = unquote(parts.path)
                query = parse_qs(parts.query)
                with standin._lock:
                    standin.requests.append(RecordedRequest("GET", path, query))
                if path == "/version":
                    self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-standin"})
                    return
                if standin.fail_with is not None:
                    code = standin.fail_with
                    reason = _REASONS.get(code, "InternalError")
                    self._send(code, _status(code, reason, f"stand-in configured to answer {code}"))
                    return
                listing = _POD_LIST.match(path)
                if listing:
                    selector = (query.get("labelSelector") or [None])[0]
                    self._send(200, standin.pod_list(listing["ns"], selector))
                    return
                single = _POD_GET.match(path)
                if single:
                    for pod in standin.pod_list(single["ns"], None)["items"]:
                        if pod["metadata"]["name"] == single["name"]:
                            self._send(200, pod)
                            return
                    self._send(404, _status(404, "NotFound", f'pods "{single["name"]}" not found'))
                    return
                self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
