"""Trigger forms (DAG params) and docs of the generated DAGs. Git events and the Alertmanager
receiver send the same keys as ``conf``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import Param

if TYPE_CHECKING:
    from delivery.catalog import Service

ENVIRONMENTS = ("production", "staging")

PIPELINE_DOC = """\
### {name} delivery pipeline

{description}

* **Profile:** `{profile}` ({profile_doc})
* **Toolchain:** {toolchain}; **kind:** {kind}; **GPU:** {gpu}
* **Approvers:** {approvers} (timeout {approval_timeout}; Reject on timeout)
* **Repository:** {repo}

Trigger it with a git ref or sha (the form below), from a Git event, or rerun
a failed stage by clearing it. A `pipeline` of `ci` stops after build and
test, as pull requests do.
"""

ROLLBACK_DOC = """\
### Roll back {name}

Restores an earlier release of **{name}** through the GitOps repository (seed flow 6).

* **target_version** empty: the previous release that passed production verification.
  Otherwise an image tag or source sha that must be in the environment's release history;
  a release that failed verification is refused.
* **reason** (required) is written in the rollback commit's `Delivery-Reason` trailer.
* The run stops at `restore_database` until one of {approvers} chooses *Continue* when the
  release being undone carries a database migration (restore the DB backup first), or when the
  target never passed verification. *Abort*, the default on timeout after {approval_timeout},
  reverts nothing and pages the on-call.
* Profile `{profile}`: {profile_doc}.

Alertmanager starts this DAG for firing alerts labelled `service="{name}"` and
`rollback="auto"` (run id `alert__...`, one run per alert occurrence).
"""


def pipeline_params(service: Service, *, pipeline: str = "full") -> dict[str, Param]:
    """The trigger form of ``service``'s pipeline. Git events send the same keys as ``conf``."""
    return pipeline_form(
        release_branch=service.repo.release_branch, migrations=service.migrations, pipeline=pipeline
    )


def pipeline_form(*, release_branch: str, migrations: bool, pipeline: str = "full") -> dict[str, Param]:
    """The trigger form of a delivery pipeline, from the catalog values it shows."""
    return {
        "ref": Param(
            release_branch,
            type="string",
            title="Git ref",
            description="Branch, tag (refs/tags/v1.2.3) or full sha to deliver.",
        ),
        "sha": Param("", type="string", title="Commit sha", description="Optional: pins the exact commit."),
        "pipeline": Param(
            pipeline,
            type="string",
            enum=["full", "ci"],
            title="Pipeline",
            description="full: through production. ci: validate, build and test only (pull requests).",
        ),
        "migration": Param(
            migrations,
            type="boolean",
            title="Carries a DB migration",
            description="A rollback of this release then waits for a DB restore.",
        ),
        "reason": Param(
            "", type="string", title="Reason", description="Why this run was started (kept in the run)."
        ),
        "repository": Param("", type="string", title="Repository (Git events)"),
        "before": Param("", type="string", title="Previous sha (Git events)"),
        "author": Param("", type="string", title="Author or pusher (Git events)"),
        "pr_number": Param(None, type=["null", "integer"], title="Pull request number (Git events)"),
        "compare_url": Param("", type="string", title="Compare URL (Git events)"),
        "event": Param(
            "manual", type="string", title="Event", description="manual, push, tag, pull_request, poll"
        ),
        "trusted": Param(
            True,
            type="boolean",
            title="Trusted code",
            description="false (pull requests from a fork or an outside contributor): the run waits "
            "for an approver before running the code, and its stages get no secrets.",
        ),
        "untrusted_reason": Param(
            "",
            type="string",
            title="Why untrusted (Git events)",
            description="Set by the webhook receiver when trusted is false.",
        ),
    }


def rollback_params(service: Service) -> dict[str, Param]:
    """The trigger form of ``service``'s rollback DAG (the same for every service)."""
    return rollback_form()


def rollback_form() -> dict[str, Param]:
    """The trigger form of a rollback DAG; the Alertmanager receiver sends the same keys as ``conf``."""
    return {
        "reason": Param(
            type="string",
            minLength=1,
            title="Reason",
            description="Why production is rolled back (recorded in the GitOps commit). Required.",
        ),
        "target_version": Param(
            "",
            type="string",
            title="Target version",
            description="Image tag or source sha to restore. Empty: the previous stable release.",
        ),
        "environment": Param("production", type="string", enum=list(ENVIRONMENTS), title="Environment"),
        "fingerprint": Param(
            "", type="string", title="Alert fingerprint", description="Set by the Alertmanager receiver."
        ),
        "alert": Param(
            {},
            type="object",
            title="Alert labels",
            description="Labels of the alert that started this rollback (Alertmanager receiver).",
        ),
        "starts_at": Param(
            "",
            type="string",
            title="Alert start",
            description="When the alert started (Alertmanager receiver): a release deployed after it is kept.",
        ),
    }
