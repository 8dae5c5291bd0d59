"""Webhook latency and throughput against a real Airflow, next to a bare FastAPI app; event-to-first-task.

    PYTHONPATH=plugins .venv/bin/python benchmarks/webhook_latency.py [--requests 200] [--concurrency 16]

In one run, on loopback:

* starts ``airflow standalone`` (a temporary home, a free port) with the local demo
  catalog pointed at temporary bare repos, and the webhook secret in
  ``AIRFLOW_CONN_GITHUB_WEBHOOK``;
* starts a minimal FastAPI app (``POST /`` answers 200) under uvicorn in a thread;
* sends the same signed push payloads to both: ``--requests`` one after the other
  (p50/p99 latency; every delivery to the plugin is new, so each one verifies the
  signature, routes and creates a queued run), then ``--requests * 2`` from
  ``--concurrency`` threads (throughput); then the same deliveries again
  (duplicates: signature, routing and the dedup check, no new run);
* event-to-first-task: unpauses ``deliver_visiobook_inference`` and measures, for
  ``--samples`` pushes of its real head, the time from the POST until the run's
  first task (``validate.checkout``) is running (REST polled every 100 ms).

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT)]

from delivery.devenv.airflow_server import AirflowServer  # noqa: E402
from tests.web.support import SECRET, encode, git, headers, make_catalog, make_repo, payload  # noqa: E402

WEB = "deliver_visiobook_demo_web"
INFERENCE = "deliver_visiobook_inference"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_bare_app(port: int) -> Any:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/")
    def ok() -> dict[str, str]:
        return {"status": "ok"}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server


def deliveries(count: int, *, offset: int) -> list[tuple[bytes, dict[str, str]]]:
    result = []
    for i in range(count):
        data = payload("push-main", after=f"{offset + i + 1:040x}")
        body = encode(data)
        result.append((body, headers(body, event="push", delivery=str(uuid.uuid4()))))
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sequential(url: str, jobs: list[tuple[bytes, dict[str, str]]], expect: str | None) -> list[float]:
    times = []
    with requests.Session() as session:
        for body, hdrs in jobs:
            started = time.perf_counter()
            resp = session.post(url, data=body, headers=hdrs, timeout=30)
            times.append((time.perf_counter() - started) * 1000)
            if resp.status_code != 200 or (expect and resp.json()["status"] != expect):
                raise RuntimeError(f"{url}: {resp.status_code} {resp.text[:200]}")
    return times


def concurrent(url: str, jobs: list[tuple[bytes, dict[str, str]]], workers: int) -> float:
    local = threading.local()

    def send(job: tuple[bytes, dict[str, str]]) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return int(local.session.post(url, data=job[0], headers=job[1], timeout=60).status_code)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        codes = list(pool.map(send, jobs))
    elapsed = time.perf_counter() - started
    if any(code != 200 for code in codes):
        raise RuntimeError(f"{url}: answers {sorted(set(codes))}")
    return len(jobs) / elapsed


def event_to_first_task(server: AirflowServer, *, head: str, samples: int) -> list[float]:
    server.unpause(INFERENCE)
    url = f"{server.base_url}/delivery/webhooks/github"
    results = []
    for i in range(samples):
        data = payload("push-main", after=head)
        data["repository"]["full_name"] = "visiobook/visiobook-inference"
        body = encode(data)
        started = time.perf_counter()
        resp = requests.post(
            url, data=body, headers=headers(body, event="push", delivery=f"e2t-{i}"), timeout=30
        )
        run_id = resp.json()["runs"][0]["run_id"]
        while True:
            state = server.task_states(INFERENCE, run_id).get("validate.checkout")
            if state in ("running", "success", "failed"):
                break
            if time.perf_counter() - started > 180:
                print(f"first task of {run_id} not running after 180 s; sample dropped", file=sys.stderr)
                state = None
                break
            time.sleep(0.1)
        if state is None:
            continue
        results.append(time.perf_counter() - started)
        server.wait_task(INFERENCE, run_id, "validate.checkout", states=("success", "failed"), timeout=120)
        server.api("PATCH", f"/dags/{INFERENCE}/dagRuns/{run_id}", json={"state": "failed"})
    server.api("PATCH", f"/dags/{INFERENCE}", json={"is_paused": True})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmpdir:
        tmp = Path(tmpdir)
        web, _ = make_repo(tmp, "visiobook-demo-web")
        inference, inference_work = make_repo(tmp, "visiobook-inference")
        catalog = make_catalog(tmp, repos={"visiobook-demo-web": web, "visiobook-inference": inference})
        server = AirflowServer(
            home=tmp / "airflow",
            port=free_port(),
            catalog_dir=catalog,
            env={"AIRFLOW_CONN_GITHUB_WEBHOOK": json.dumps({"conn_type": "generic", "password": SECRET})},
        )
        bare = start_bare_app(free_port())
        bare_url = f"http://127.0.0.1:{bare.config.port}/"
        print("starting Airflow...", file=sys.stderr)
        server.start()
        try:
            for dag in (WEB, INFERENCE):
                server.wait_dag(dag)
            plugin_url = f"{server.base_url}/delivery/webhooks/github"
            n = args.requests
            new_seq = deliveries(n, offset=0)
            new_conc = deliveries(n * 2, offset=n)
            sequential(plugin_url, deliveries(10, offset=10 * n), "triggered")  # warm-up
            sequential(bare_url, new_seq[:10], None)
            rows = []
            plugin_new = sequential(plugin_url, new_seq, "triggered")
            plugin_new_rps = concurrent(plugin_url, new_conc, args.concurrency)
            plugin_dup = sequential(plugin_url, new_seq, "duplicate")
            plugin_dup_rps = concurrent(plugin_url, new_conc, args.concurrency)
            bare_seq = sequential(bare_url, new_seq, None)
            bare_rps = concurrent(bare_url, new_conc, args.concurrency)
            rows.append(("plugin route, new delivery (creates a run)", plugin_new, plugin_new_rps))
            rows.append(("plugin route, redelivery (duplicate)", plugin_dup, plugin_dup_rps))
            rows.append(("bare FastAPI app, 200", bare_seq, bare_rps))
            head = git("rev-parse", "HEAD", cwd=inference_work)
            e2t = event_to_first_task(server, head=head, samples=args.samples)
        finally:
            bare.should_exit = True
            server.stop(timeout=10)

    print(f"\n{n} sequential requests (keep-alive) and {2 * n} from {args.concurrency} threads, loopback\n")
    print("| endpoint | p50 ms | p99 ms | throughput req/s |")
    print("|---|---:|---:|---:|")
    for name, times, rps in rows:
        print(f"| {name} | {statistics.median(times):.1f} | {pct(times, 0.99):.1f} | {rps:.0f} |")
    if not e2t:
        print("\nEvent to first task: no sample started within 180 s")
        return 1
    print(
        f"\nEvent to first task running ({len(e2t)} pushes, scheduler and LocalExecutor of "
        f"airflow standalone): median {statistics.median(e2t):.2f} s, min {min(e2t):.2f} s, max {max(e2t):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
