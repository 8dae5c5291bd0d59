"""Webhook latency and throughput against a real Airflow, next to a bare FastAPI app; event-to-first-task.

    PATH="$PWD/.venv/bin:$PATH" PYTHONPATH=plugins .venv/bin/python benchmarks/webhook_latency.py \
        [--requests 200] [--concurrency 16] [--samples 3] [--profile]

In one run, on loopback:

* starts ``airflow standalone`` (a temporary home, a free port, the PostgreSQL
  metadata database: the run stops if only SQLite is available) with the local demo
  catalog pointed at temporary bare repos, and the webhook secret in
  ``AIRFLOW_CONN_GITHUB_WEBHOOK``;
* starts a minimal FastAPI app (``POST /`` answers 200) under uvicorn in a thread;
* sends the same signed push payloads to both: ``--requests`` one after the other
  (p50/p99 latency; every delivery to the plugin is new, so each one verifies the
  signature, routes and records its run, created right after the answer), then
  ``--requests * 2`` from ``--concurrency`` threads (p50/p99 and throughput); waits
  until every answered delivery's run exists (and says how long after the last
  answer); then the same deliveries again (redeliveries: signature, routing and the
  dedup check, no new run);
* ``--profile``: one new delivery and its redelivery handled in a separate process
  against the same database (``handle_event``, what the route runs after the
  signature check) under ``cProfile``: the functions that cost the most;
* event-to-first-task: unpauses ``deliver_visiobook_inference`` and measures, for
  ``--samples`` pushes of its real head, the time from the POST until the run's
  first task (``validate.checkout``) is running (REST polled every 100 ms).

Prints markdown tables, the ratios to the bare app, and whether the targets hold
(sequential p99: a new delivery <= 100 ms, a redelivery <= 20 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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

from delivery.devenv.airflow_server import AirflowError, AirflowServer  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.web.support import SECRET, encode, git, headers, make_catalog, make_repo, payload  # noqa: E402

WEB = "deliver_visiobook_demo_web"
INFERENCE = "deliver_visiobook_inference"
TARGET_NEW_P99_MS = 100.0
TARGET_REDELIVERY_P99_MS = 20.0

Job = tuple[bytes, dict[str, str]]


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


def deliveries(count: int, *, offset: int) -> list[Job]:
    result = []
    for i in range(count):
        data = payload("push-main", after=f"{offset + i + 1:040x}")
        body = encode(data)
        result.append((body, headers(body, event="push", delivery=str(uuid.uuid4()))))
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _check(url: str, resp: requests.Response, expect: str | None) -> None:
    if resp.status_code != 200 or (expect and resp.json()["status"] != expect):
        raise RuntimeError(f"{url}: {resp.status_code} {resp.text[:200]}")


def sequential(url: str, jobs: list[Job], expect: str | None) -> list[float]:
    times = []
    with requests.Session() as session:
        for body, hdrs in jobs:
            started = time.perf_counter()
            resp = session.post(url, data=body, headers=hdrs, timeout=30)
            times.append((time.perf_counter() - started) * 1000)
            _check(url, resp, expect)
    return times


def concurrent(url: str, jobs: list[Job], workers: int, expect: str | None) -> tuple[list[float], float]:
    """(latency of each request in ms, requests per second) with ``workers`` threads."""
    local = threading.local()

    def send(job: Job) -> float:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        started = time.perf_counter()
        resp = local.session.post(url, data=job[0], headers=job[1], timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        _check(url, resp, expect)
        return elapsed

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        times = list(pool.map(send, jobs))
    return times, len(jobs) / (time.perf_counter() - started)


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
            try:
                state = server.task_states(INFERENCE, run_id).get("validate.checkout")
            except AirflowError:  # 404: the run is created just after the answer
                state = None
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
        try:  # end the run so the next sample starts at once; the scheduler may be writing it too
            server.api("PATCH", f"/dags/{INFERENCE}/dagRuns/{run_id}", json={"state": "failed"})
        except AirflowError as exc:
            print(f"could not end {run_id} ({exc}); the next sample may wait for it", file=sys.stderr)
    server.api("PATCH", f"/dags/{INFERENCE}", json={"is_paused": True})
    return results


# -- profile of one request -------------------------------------------------------------


def _profiled(label: str, call: Any) -> Any:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    result = call()
    profiler.disable()
    elapsed = (time.perf_counter() - started) * 1000
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(14)
    print(f"\n### {label}: {elapsed:.1f} ms under cProfile\n")
    print("```")
    print("\n".join(line[:150] for line in out.getvalue().splitlines() if line.strip())[:5000])
    print("```")
    return result


def profile_child(body_file: str) -> int:
    """In the Airflow's environment: a new delivery, its run's creation, then its redelivery, under cProfile."""
    import hashlib

    from delivery.web import github, inbox

    data = json.loads(Path(body_file).read_text())
    digest = hashlib.sha256(encode(data)).hexdigest()

    def handle(delivery: str) -> Any:
        return github.handle_event(event_name="push", delivery=delivery, body_digest=digest, payload=data)

    warm = handle("profile-warm")  # secret, catalog and DAG caches, as in a running api-server
    inbox.deliver([(r["dag_id"], r["run_id"]) for r in json.loads(bytes(warm.body))["runs"]])
    answer = _profiled("new delivery, the answer (records the run)", lambda: handle("profile-1"))
    keys = [(r["dag_id"], r["run_id"]) for r in json.loads(bytes(answer.body))["runs"]]
    _profiled("new delivery, after the answer (creates the run)", lambda: inbox.deliver(keys))
    again = _profiled("redelivery, the answer", lambda: handle("profile-1"))
    print(f"\nanswers: {json.loads(bytes(answer.body))['status']}, {json.loads(bytes(again.body))['status']}")
    return 0


def profile(server: AirflowServer, tmp: Path) -> str:
    data = payload("push-main", after="feed" * 10)
    body_file = tmp / "profile-body.json"
    body_file.write_text(json.dumps(data))
    env = {**server.environment(), "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{ROOT}"}
    proc = subprocess.run(
        [sys.executable, __file__, "--profile-child", str(body_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        return f"profile failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


# -- the run ------------------------------------------------------------------------------


def wait_all_runs(server: AirflowServer, expected: int, *, timeout: float = 300) -> float:
    """Seconds until ``WEB`` has ``expected`` runs: every answered delivery's run was created."""
    started = time.perf_counter()
    count = 0
    while time.perf_counter() - started < timeout:
        count = int(server.api("GET", f"/dags/{WEB}/dagRuns", params={"limit": 1})["total_entries"])
        if count >= expected:
            return time.perf_counter() - started
        time.sleep(0.2)
    raise RuntimeError(f"only {count} of {expected} runs created {timeout:.0f} s after the last answer")


def measure(server: AirflowServer, bare_url: str, n: int, workers: int) -> list[tuple[str, Any]]:
    plugin_url = f"{server.base_url}/delivery/webhooks/github"
    new_seq = deliveries(n, offset=0)
    new_conc = deliveries(n * 2, offset=n)
    sequential(plugin_url, deliveries(10, offset=10 * n), "triggered")  # warm-up
    sequential(bare_url, new_seq[:10], None)
    plugin_new = sequential(plugin_url, new_seq, "triggered")
    plugin_new_conc = concurrent(plugin_url, new_conc, workers, "triggered")
    settled = wait_all_runs(server, 10 + 3 * n)
    print(f"all {10 + 3 * n} runs created {settled:.1f} s after the last answer", flush=True)
    plugin_dup = sequential(plugin_url, new_seq, "duplicate")
    plugin_dup_conc = concurrent(plugin_url, new_conc, workers, "duplicate")
    bare_seq = sequential(bare_url, new_seq, None)
    bare_conc = concurrent(bare_url, new_conc, workers, None)
    return [
        ("plugin route, new delivery (a run to create)", (plugin_new, plugin_new_conc)),
        ("plugin route, redelivery (duplicate)", (plugin_dup, plugin_dup_conc)),
        ("bare FastAPI app, 200", (bare_seq, bare_conc)),
    ]


def report(rows: list[tuple[str, Any]], n: int, workers: int) -> bool:
    print(f"\n{n} sequential requests (keep-alive) and {2 * n} from {workers} threads, loopback\n")
    print("| endpoint | seq p50 ms | seq p99 ms | conc p50 ms | conc p99 ms | throughput req/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (seq, (conc, rps)) in rows:
        print(
            f"| {name} | {statistics.median(seq):.1f} | {pct(seq, 0.99):.1f} | "
            f"{statistics.median(conc):.1f} | {pct(conc, 0.99):.1f} | {rps:.0f} |"
        )
    bare = pct(rows[2][1][0], 0.99)
    new, dup = pct(rows[0][1][0], 0.99), pct(rows[1][1][0], 0.99)
    print(
        f"\nSequential p99 ratio to the bare app: new delivery {new / bare:.1f}x, redelivery {dup / bare:.1f}x"
    )
    ok = new <= TARGET_NEW_P99_MS and dup <= TARGET_REDELIVERY_P99_MS
    print(
        f"Targets (sequential p99): new delivery {new:.1f} <= {TARGET_NEW_P99_MS:.0f} ms, "
        f"redelivery {dup:.1f} <= {TARGET_REDELIVERY_P99_MS:.0f} ms: {'met' if ok else 'NOT met'}",
        flush=True,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=3, help="event-to-first-task samples (0: skip)")
    parser.add_argument("--profile", action="store_true", help="cProfile one new delivery and its redelivery")
    parser.add_argument("--profile-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_child:
        return profile_child(args.profile_child)

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
            if not server.database_url().startswith("postgresql"):
                print("PostgreSQL is not available: this benchmark measures with it only", file=sys.stderr)
                return 2
            for dag in (WEB, INFERENCE):
                server.wait_dag(dag)
            rows = measure(server, bare_url, args.requests, args.concurrency)
            ok = report(rows, args.requests, args.concurrency)
            if args.profile:
                print(profile(server, tmp), flush=True)
            head = git("rev-parse", "HEAD", cwd=inference_work)
            e2t = event_to_first_task(server, head=head, samples=args.samples) if args.samples else []
        finally:
            bare.should_exit = True
            server.destroy()

    if e2t:
        print(
            f"\nEvent to first task running ({len(e2t)} pushes, scheduler and LocalExecutor of "
            f"airflow standalone): median {statistics.median(e2t):.2f} s, min {min(e2t):.2f} s, "
            f"max {max(e2t):.2f} s"
        )
    elif args.samples:
        print("\nEvent to first task: no sample started within 180 s")
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
