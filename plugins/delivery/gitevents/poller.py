"""Polling fallback for repositories whose webhooks cannot reach Airflow.

One DAG per catalog repository (``git_poll_<repo>``, built by ``dags/git_pollers.py``),
every minute, one active run at a time::

    watch (GitHeadsSensor, mode=reschedule) ─► trigger (TriggerDagRunOperator, mapped) ─► record

* ``watch`` runs ``git ls-remote --heads`` on the repository and keeps the branches
  some service of the repository watches (its ``branches`` globs and its
  ``release_branch``). Between pokes it holds no worker slot (``mode="reschedule"``).
  When a head differs from the last one seen, it routes a ``poll`` event per changed
  branch through :func:`delivery.gitevents.routing.route` (the same rules as a push: ``full``
  on the release branch, ``ci`` elsewhere) and returns one trigger per run. Path
  filters are not applied (no diff is fetched): every matching service runs. When
  nothing changed for ``DELIVERY_POLL_TIMEOUT`` seconds since the run started, it
  returns no runs and the DAG run ends (``trigger`` is skipped, ``record`` writes nothing).
* ``trigger`` starts each run through the Task SDK (``TriggerDagRunOperator``), with
  the trigger form's keys as conf (``event: poll``) and a deterministic run id,
  ``git__poll__<16 hex of sha256(repo, branch, sha)>``; an existing run is skipped,
  never duplicated.
* ``record`` persists the heads seen in the Variable ``delivery_poller_state``
  (``{repo_key: {branch: sha}}``), read and written only when tasks run, never at
  parse time. It runs after the triggers, so a crash in between re-triggers the
  same run ids, which already exist: nothing runs twice. With
  ``DELIVERY_POLLER_STATE_FILE`` set, a JSON file is used instead.

A failed task of a poller DAG is notified like any pipeline task (``task_failed``,
routed by the platform's defaults), at most once an hour per task while it keeps failing.

The first poll of a repository (no state yet) records a baseline and starts
nothing, so enabling a poller does not rebuild every branch. Poller DAGs follow
``dags_are_paused_at_creation``: enable them only for repositories without a
working webhook, or each push builds twice (webhook and poll runs have different ids).

Tuning (environment of the DAG processor and workers): ``DELIVERY_POLL_INTERVAL``
(seconds between pokes, default 20) and ``DELIVERY_POLL_TIMEOUT`` (seconds a run
watches, default 50).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, BaseSensorOperator, PokeReturnValue, Variable

from delivery.catalog import load_catalog
from delivery.catalog.models import Catalog, Service
from delivery.gitevents.routing import ZERO_SHA, GitEvent, normalize_repo_url, route, run_id_for
from delivery.gitops import GitCommandError, ls_remote
from delivery.notify.failure import TaskFailureNotifier
from delivery.paths import git_url

log = logging.getLogger(__name__)

STATE_VARIABLE = "delivery_poller_state"
STATE_FILE_ENV = "DELIVERY_POLLER_STATE_FILE"
POLLER_QUIET_PERIOD = timedelta(hours=1)


class PollError(RuntimeError):
    pass


@dataclass(frozen=True, kw_only=True)
class WatchedRepo:
    """One repository of the catalog and the services built from it."""

    key: str
    url: str
    repository: str
    services: tuple[str, ...]

    @property
    def dag_id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.repository.removesuffix(".git").split("/")[-1]).strip("_")
        return f"git_poll_{slug.lower() or 'repo'}"


def watched_repos(catalog: Catalog) -> list[WatchedRepo]:
    """The catalog's repositories (services sharing a URL are one monorepo), sorted by key."""
    groups: dict[str, list[Service]] = {}
    for service in catalog.services.values():
        groups.setdefault(normalize_repo_url(service.repo.url), []).append(service)
    repos = []
    for key, services in sorted(groups.items()):
        services.sort(key=lambda s: s.name)
        first = services[0].repo
        repos.append(
            WatchedRepo(
                key=key,
                url=first.url,
                repository=next((s.repo.full_name for s in services if s.repo.full_name), first.url),
                services=tuple(s.name for s in services),
            )
        )
    return repos


def ls_remote_heads(url: str, *, timeout: float = 30.0) -> dict[str, str]:
    """``git ls-remote --heads url`` -> {branch: commit sha}, through the project's git runner."""
    try:
        refs = ls_remote(git_url(url), heads=True, timeout_s=timeout)
    except GitCommandError as exc:
        raise PollError(str(exc)[:500]) from exc
    return {
        name.removeprefix("refs/heads/"): ref.commit
        for name, ref in refs.items()
        if name.startswith("refs/heads/")
    }


def watched_heads(heads: Mapping[str, str], services: Iterable[Service]) -> dict[str, str]:
    """The heads of the branches at least one service watches."""
    services = list(services)
    return {
        branch: sha
        for branch, sha in sorted(heads.items())
        if any(branch == s.repo.release_branch or s.repo.matches_branch(branch) for s in services)
    }


def poll_run_id(*, repo_key: str, branch: str, sha: str) -> str:
    return run_id_for(event="poll", key=f"{repo_key}\n{branch}\n{sha}")


@dataclass(kw_only=True)
class Detection:
    heads: dict[str, str]
    baseline: bool = False
    runs: list[dict[str, Any]] = field(default_factory=list)
    """``TriggerDagRunOperator`` kwargs: trigger_dag_id, trigger_run_id, conf."""
    skipped: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.baseline or bool(self.runs) or bool(self.skipped)


def detect(
    *,
    repo: WatchedRepo,
    services: Iterable[Service],
    heads: Mapping[str, str],
    known: Mapping[str, str] | None,
) -> Detection:
    """Compare the watched heads with the last ones seen; route a ``poll`` event per new head."""
    services = list(services)
    current = watched_heads(heads, services)
    if known is None:
        return Detection(heads=current, baseline=True)
    result = Detection(heads=current)
    for branch, sha in current.items():
        before = known.get(branch)
        if before == sha:
            continue
        event = GitEvent(
            kind="poll",
            repository=repo.repository,
            repo_urls=(repo.url,),
            ref=f"refs/heads/{branch}",
            sha=sha,
            before=before or ZERO_SHA,
        )
        routing = route(event, services)
        result.skipped.extend(routing.skipped)
        run_id = poll_run_id(repo_key=repo.key, branch=branch, sha=sha)
        result.runs.extend(
            {"trigger_dag_id": t.dag_id, "trigger_run_id": run_id, "conf": t.conf} for t in routing.targets
        )
    gone = sorted(set(known) - set(current))
    if gone:
        result.skipped.append(f"branches gone: {', '.join(gone)}")
    return result


# -- state ------------------------------------------------------------------------------


class StateStore(Protocol):
    def load(self) -> dict[str, dict[str, str]]: ...

    def save(self, *, repo_key: str, heads: Mapping[str, str]) -> None: ...


class VariableStateStore:
    """The Airflow Variable ``delivery_poller_state``, through the Task SDK (run time only)."""

    def __init__(self, *, key: str = STATE_VARIABLE) -> None:
        self.key = key

    def load(self) -> dict[str, dict[str, str]]:
        raw = Variable.get(self.key, default=None)
        if not raw:
            return {}
        data = json.loads(raw) if isinstance(raw, str) else raw
        return dict(data) if isinstance(data, dict) else {}

    def save(self, *, repo_key: str, heads: Mapping[str, str]) -> None:
        state = self.load()  # re-read: other repositories' pollers write the same Variable
        state[repo_key] = dict(heads)
        Variable.set(self.key, json.dumps(state, sort_keys=True))


class FileStateStore:
    """A JSON file (``DELIVERY_POLLER_STATE_FILE``), written atomically."""

    def __init__(self, *, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return dict(data) if isinstance(data, dict) else {}

    def save(self, *, repo_key: str, heads: Mapping[str, str]) -> None:
        state = self.load()
        state[repo_key] = dict(heads)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.path)


def state_store() -> StateStore:
    path = os.environ.get(STATE_FILE_ENV)
    return FileStateStore(path=Path(path)) if path else VariableStateStore()


# -- tasks ------------------------------------------------------------------------------


def _services(names: Iterable[str]) -> list[Service]:
    catalog, _issues = load_catalog(strict=False)
    return [catalog.services[n] for n in names if n in catalog.services]


class GitHeadsSensor(BaseSensorOperator):
    """Waits for a new head on a watched branch of one repository; returns the runs to start."""

    ui_color = "#e8f4e8"

    def __init__(
        self,
        *,
        repo_key: str,
        repo_url: str,
        repository: str,
        services: list[str],
        watch_window: float = 50.0,
        **kwargs: Any,
    ):
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("timeout", watch_window + 300)
        super().__init__(**kwargs)
        self.watch_window = watch_window
        self.repo_key = repo_key
        self.repo_url = repo_url
        self.repository = repository
        self.services = list(services)

    def poke(self, context: Any) -> PokeReturnValue | bool:
        repo = WatchedRepo(
            key=self.repo_key, url=self.repo_url, repository=self.repository, services=tuple(self.services)
        )
        known = state_store().load().get(self.repo_key)
        heads = ls_remote_heads(self.repo_url)
        found = detect(repo=repo, services=_services(self.services), heads=heads, known=known)
        if not found.changed:
            self.log.info("%s: no new head on %d watched branch(es)", self.repository, len(found.heads))
            started = getattr(context.get("dag_run"), "start_date", None)
            if started is not None and (datetime.now(tz=UTC) - started).total_seconds() >= self.watch_window:
                self.log.info(
                    "%s: watched %.0fs, this run ends; the next one goes on",
                    self.repository,
                    self.watch_window,
                )
                return PokeReturnValue(is_done=True, xcom_value=[])
            return False
        if found.baseline:
            self.log.info(
                "%s: first poll, baseline of %d branch(es), nothing started",
                self.repository,
                len(found.heads),
            )
        for reason in found.skipped:
            self.log.info("%s: %s", self.repository, reason)
        for run in found.runs:
            self.log.info(
                "%s: will start %s %s", self.repository, run["trigger_dag_id"], run["trigger_run_id"]
            )
        context["ti"].xcom_push(key="heads", value=found.heads)
        return PokeReturnValue(is_done=True, xcom_value=found.runs)


def record_heads(*, repo_key: str, **context: Any) -> dict[str, str] | None:
    """Persist the heads the ``watch`` task saw (after their runs were started)."""
    heads = context["ti"].xcom_pull(task_ids="watch", key="heads")
    if heads is None:
        return None
    state_store().save(repo_key=repo_key, heads=heads)
    log.info("recorded %d head(s) of %s", len(heads), repo_key)
    return dict(heads)


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def build_poller_dag(repo: WatchedRepo) -> DAG:
    with DAG(
        dag_id=repo.dag_id,
        description=f"Polls {repo.repository} for new commits (fallback for webhooks)",
        schedule="* * * * *",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(minutes=10),
        tags=["delivery", "git-poller"],
        doc_md=(__doc__ or "").split("\n\n")[0]
        + f"\n\nRepository: `{repo.repository}`; services: "
        + ", ".join(repo.services),
        default_args={
            "owner": "platform",
            "retries": 1,
            "retry_delay": timedelta(seconds=10),
            # A poller that keeps failing (every minute) is reported once an hour, not once a run.
            "on_failure_callback": [
                TaskFailureNotifier(
                    service_name=None,
                    subject=f"git poller {repo.repository}",
                    quiet_period=POLLER_QUIET_PERIOD,
                )
            ],
        },
    ) as dag:
        watch = GitHeadsSensor(
            task_id="watch",
            repo_key=repo.key,
            repo_url=repo.url,
            repository=repo.repository,
            services=list(repo.services),
            poke_interval=_seconds("DELIVERY_POLL_INTERVAL", 20),
            watch_window=_seconds("DELIVERY_POLL_TIMEOUT", 50),
        )
        trigger = TriggerDagRunOperator.partial(
            task_id="trigger", skip_when_already_exists=True, wait_for_completion=False
        ).expand_kwargs(watch.output)
        record = PythonOperator(
            task_id="record",
            python_callable=record_heads,
            op_kwargs={"repo_key": repo.key},
            trigger_rule="none_failed_min_one_success",
        )
        watch >> trigger >> record
        watch >> record
    return dag


def build_poller_dags(catalog: Catalog) -> dict[str, DAG]:
    dags: dict[str, DAG] = {}
    for repo in watched_repos(catalog):
        try:
            dag = build_poller_dag(repo)
        except Exception:
            log.exception("Could not build the poller DAG of %s", repo.repository)
            continue
        dags[dag.dag_id] = dag
    return dags
