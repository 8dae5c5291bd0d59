"""End to end with a real Airflow (``airflow standalone``): deliveries create exactly the expected runs.

One Airflow per module (about 30 s to start). Its catalog is include/catalog-local
with the repositories pointed at bare repos in a temporary folder; the webhook
secret comes from ``AIRFLOW_CONN_GITHUB_WEBHOOK``. The delivery DAGs stay paused:
runs are created (queued) and inspected through the REST API, not executed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from delivery.devenv.airflow_server import AirflowServer
from tests.helpers import REPARSE_INTERVAL, free_port
from tests.web.support import SECRET, commit, encode, headers, make_catalog, make_repo, payload

pytestmark = [pytest.mark.e2e, pytest.mark.duration(110)]

WEB = "deliver_visiobook_demo_web"
INFERENCE = "deliver_visiobook_inference"
POLLER = "git_poll_visiobook_demo_web"
MAX_BYTES = 256 * 1024


class Env:
    def __init__(self, server: AirflowServer, work: Path) -> None:
        self.server = server
        self.work = work
        self.url = f"{server.base_url}/delivery/webhooks/github"

    def post(self, data: dict[str, Any] | bytes, *, event: str = "push", **kw: Any) -> requests.Response:
        body = data if isinstance(data, bytes) else encode(data)
        hdrs = headers(body, event=event, delivery=kw.pop("delivery", None), secret=kw.pop("secret", SECRET))
        hdrs.update(kw.pop("extra_headers", {}))
        return requests.post(self.url, data=kw.pop("content", body), headers=hdrs, timeout=30)

    def runs(self, dag_id: str) -> dict[str, dict[str, Any]]:
        data = self.server.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 500})
        return {r["dag_run_id"]: r for r in data["dag_runs"]}

    def wait_runs(self, dag_id: str, run_ids: set[str], *, timeout: float = 30) -> dict[str, dict[str, Any]]:
        """The DAG's runs once ``run_ids`` all exist (the receiver creates them just after answering)."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs(dag_id)
            if run_ids <= set(runs) or time.monotonic() > deadline:
                assert run_ids <= set(runs), f"runs not created: {sorted(run_ids - set(runs))}"
                return runs
            time.sleep(0.2)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("webhooks-e2e")
    web, work = make_repo(tmp, "visiobook-demo-web")
    inference, _ = make_repo(tmp, "visiobook-inference")
    catalog = make_catalog(tmp, repos={"visiobook-demo-web": web, "visiobook-inference": inference})
    server = AirflowServer(
        home=tmp / "airflow",
        port=free_port(),
        catalog_dir=catalog,
        reparse_interval=REPARSE_INTERVAL,
        env={
            "AIRFLOW_CONN_GITHUB_WEBHOOK": json.dumps({"conn_type": "generic", "password": SECRET}),
            "DELIVERY_WEBHOOK_MAX_BYTES": str(MAX_BYTES),
            "DELIVERY_POLL_INTERVAL": "2",
            "DELIVERY_POLL_TIMEOUT": "6",
            "DELIVERY_WEBHOOK_SWEEP_INTERVAL": "1",
        },
    )
    server.start()
    try:
        for dag in (WEB, INFERENCE, POLLER):
            server.wait_dag(dag)
        yield Env(server, work)
    finally:
        server.destroy()


def test_push_to_main_creates_one_full_run(env: Env) -> None:
    before = set(env.runs(WEB))
    resp = env.post(payload("push-main"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "triggered"
    (created,) = body["runs"]
    assert created["dag_id"] == WEB
    runs = env.wait_runs(WEB, {created["run_id"]})
    assert set(runs) - before == {created["run_id"]}
    run = runs[created["run_id"]]
    assert run["conf"]["pipeline"] == "full"
    assert run["conf"]["ref"] == "refs/heads/main"
    assert run["conf"]["sha"] == "9f3e2d1c0b4a59687766554433221100ffeeddcc"
    assert run["conf"]["event"] == "push" and run["conf"]["author"] == "alice"
    assert run["state"] == "queued" and run["run_type"] == "manual"
    assert not env.runs(INFERENCE)


def test_tag_pr_and_ping(env: Env) -> None:
    tag = env.post(payload("push-tag")).json()
    pr = env.post(payload("pull-request-opened"), event="pull_request").json()
    ping = env.post(payload("ping", fresh=False), event="ping")
    assert ping.status_code == 200 and ping.json()["status"] == "pong"
    runs = env.wait_runs(WEB, {tag["runs"][0]["run_id"], pr["runs"][0]["run_id"]})
    tag_conf = runs[tag["runs"][0]["run_id"]]["conf"]
    assert (tag_conf["event"], tag_conf["pipeline"], tag_conf["ref"]) == ("tag", "full", "refs/tags/v1.4.0")
    pr_conf = runs[pr["runs"][0]["run_id"]]["conf"]
    assert (pr_conf["event"], pr_conf["pipeline"], pr_conf["pr_number"]) == ("pull_request", "ci", 7)
    assert pr_conf["ref"] == "refs/pull/7/head" and pr_conf["author"] == "bob"
    assert pr_conf["trusted"] is True and pr_conf["untrusted_reason"] == ""


def test_a_fork_pull_request_creates_a_run_marked_untrusted(env: Env) -> None:
    resp = env.post(payload("pull-request-first-time-contributor"), event="pull_request")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "triggered" and "FIRST_TIME_CONTRIBUTOR" in body["untrusted_reason"]
    run = env.wait_runs(WEB, {body["runs"][0]["run_id"]})[body["runs"][0]["run_id"]]
    assert run["state"] == "queued"
    assert run["conf"]["trusted"] is False
    assert run["conf"]["untrusted_reason"] == body["untrusted_reason"]
    assert run["conf"]["ref"] == "refs/pull/13/head" and run["conf"]["pipeline"] == "ci"


def test_refusals_create_no_run(env: Env) -> None:
    before = set(env.runs(WEB))
    data = payload("push-main", after="ab" * 20)
    body = encode(data)
    assert env.post(data, secret=None).status_code == 401
    assert env.post(data, secret="wrong").status_code == 401
    assert env.post(body, content=body[:-20]).status_code == 401  # truncated after signing
    assert env.post(body[:-20]).status_code == 400  # signed, but not JSON
    wrong_type = env.post(data, extra_headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong_type.status_code == 400
    big = payload("push-main", padding="x" * (MAX_BYTES + 1))
    try:
        code = env.post(big).status_code
    except requests.ConnectionError:  # the server may close before the client finished sending
        code = 413
    assert code == 413
    assert env.post({"zen": "x"}, event="issues").status_code == 202
    deleted = env.post(payload("push-tag-deleted"))
    assert deleted.status_code == 200 and deleted.json()["status"] == "ignored"
    stale = payload("push-main")
    stale["repository"]["pushed_at"] = int(time.time()) - 7200
    assert env.post(stale).status_code == 422
    assert set(env.runs(WEB)) == before


def test_replayed_delivery_is_a_duplicate(env: Env) -> None:
    data = payload("push-main", after="cd" * 20)
    first = env.post(data, delivery="replay-1")
    assert first.json()["status"] == "triggered"
    count = len(env.wait_runs(WEB, {first.json()["runs"][0]["run_id"]}))
    again = env.post(data, delivery="replay-1")
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["duplicates"] == first.json()["runs"]
    time.sleep(1)
    assert len(env.runs(WEB)) == count


def test_a_recorded_delivery_whose_worker_died_is_created_by_a_sweeper(env: Env) -> None:
    """The state an api-server worker leaves when it dies between its answer and the run's creation."""
    from sqlalchemy import create_engine, insert

    from delivery.web.inbox import TABLE

    run_id = f"git__push__{uuid.uuid4().hex[:16]}"
    conf = {"ref": "refs/heads/main", "sha": "ef" * 20, "pipeline": "full", "event": "push", "reason": "test"}
    engine = create_engine(env.server.database_url())
    try:
        TABLE.create(engine, checkfirst=True)
        with engine.begin() as conn:
            conn.execute(
                insert(TABLE).values(
                    dag_id=WEB,
                    run_id=run_id,
                    conf=json.dumps(conf),
                    triggering_user="github-webhook",
                    received=time.time() - 60,
                    attempts=0,
                )
            )
    finally:
        engine.dispose()
    run = env.wait_runs(WEB, {run_id}, timeout=30)[run_id]  # sweep interval 1 s in this Airflow
    assert run["conf"]["sha"] == "ef" * 20 and run["state"] == "queued"


def test_fifty_parallel_deliveries_with_duplicates(env: Env) -> None:
    before = set(env.runs(WEB))
    distinct = []
    for i in range(10):
        data = payload("push-main", after=f"{i + 1:02x}" * 20)
        distinct.append((encode(data), f"parallel-{uuid.uuid4()}"))
    jobs = [d for d in distinct for _ in range(5)]  # 50 requests, each delivery 5 times

    def send(job: tuple[bytes, str]) -> tuple[int, str, list[str]]:
        resp = env.post(job[0], delivery=job[1])
        body = resp.json()
        return resp.status_code, body["status"], [r["run_id"] for r in body.get("runs", [])]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(send, jobs))
    elapsed = time.monotonic() - started
    assert all(code == 200 for code, _, _ in results), results
    statuses = [s for _, s, _ in results]
    assert statuses.count("triggered") == 10 and statuses.count("duplicate") == 40
    runs = env.wait_runs(WEB, {run_id for _, _, ids in results for run_id in ids})
    new = set(runs) - before
    assert len(new) == 10
    shas = {runs[r]["conf"]["sha"] for r in new}
    assert shas == {f"{i + 1:02x}" * 20 for i in range(10)}
    assert elapsed < 30


def _poll_runs(env: Env) -> list[dict[str, Any]]:
    return [r for r in env.runs(WEB).values() if (r.get("conf") or {}).get("event") == "poll"]


def _wait_poller_idle(env: Env, *, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = [r for r in env.runs(POLLER).values() if r["state"] in ("queued", "running")]
        if not active:
            return
        time.sleep(1)
    raise AssertionError(f"poller still busy: {env.runs(POLLER)}")


def _run_poller(env: Env) -> None:
    run_id = env.server.trigger(POLLER, conf={})
    state = env.server.wait_run(POLLER, run_id, timeout=120)
    assert state == "success", env.server.task_states(POLLER, run_id)


def test_poller_triggers_once_per_new_head_and_not_after_a_restart(env: Env) -> None:
    env.server.unpause(POLLER)
    try:
        _run_poller(env)  # the first poll records a baseline
        state = env.server.api("GET", "/variables/delivery_poller_state")
        assert "visiobook-demo-web" in state["value"]
        assert _poll_runs(env) == []
        sha = commit(env.work)
        _run_poller(env)
        _wait_poller_idle(env)
        polled = _poll_runs(env)
        assert [r["conf"]["sha"] for r in polled] == [sha]
        assert polled[0]["conf"]["pipeline"] == "full" and polled[0]["conf"]["ref"] == "refs/heads/main"
        assert polled[0]["dag_run_id"].startswith("git__poll__")
        assert sha in env.server.api("GET", "/variables/delivery_poller_state")["value"]
        _run_poller(env)  # a new run reads the persisted state: nothing new
        assert len(_poll_runs(env)) == 1
    finally:
        env.server.api("PATCH", f"/dags/{POLLER}", json={"is_paused": True})
