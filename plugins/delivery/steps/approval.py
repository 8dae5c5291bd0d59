"""The production gate, enforced where the deploy happens.

Airflow lets any user with edit rights mark a task as success, clear it or
write its XCom; only the human-in-the-loop answer endpoint checks who answers.
So the production deploy does not trust the approval task's state or XCom: it
reads this run's approval *record* (who answered what, for which commit) from
the REST API and decides here:

* **Approve** counts when it comes from one of the service's ``approvers`` and,
  with ``four_eyes`` (the default), from someone who did not author a commit being
  released (the commits reachable from this run's commit and not from what
  production runs);
* **Break glass** counts when it comes from one of the service's
  ``break_glass_approvers`` with a reason: it pages (P1) and is written in the
  GitOps commit;
* anything else (no answer, Reject, a state set by hand, a cleared or skipped
  approval, an answer given for another commit) refuses the deploy, raises a P2
  event naming who changed the approval's state when Airflow recorded it, and
  fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from delivery.catalog import Service

APPROVE = "Approve"
REJECT = "Reject"
BREAK_GLASS = "Break glass"


@dataclass(frozen=True, kw_only=True)
class Decision:
    allowed: bool
    approver: str | None = None
    break_glass: bool = False
    reason: str | None = None  # the break-glass reason
    refusal: str | None = None  # what is missing, when refused

    @classmethod
    def refuse(cls, refusal: str, *, approver: str | None = None) -> Decision:
        return cls(allowed=False, refusal=refusal, approver=approver)


def _user(detail: dict[str, Any]) -> str | None:
    user = detail.get("responded_by_user") or {}
    if isinstance(user, dict):
        return user.get("id") or user.get("name")
    return None


def is_author(user: str, authors: list[tuple[str, str]], identities: dict[str, list[str]]) -> bool:
    """Whether Airflow ``user`` is one of the git ``authors`` (name, e-mail).

    ``identities`` (catalog ``platform.identities``) lists a user's git e-mails or names; without an
    entry, the user is the author whose e-mail local part or name equals the user name.
    """
    names = {n.casefold() for n in identities.get(user) or [user]}
    for name, email in authors:
        address = email.casefold()
        if name.casefold() in names or address in names or address.partition("@")[0] in names:
            return True
    return False


def decide(
    detail: dict[str, Any] | None,
    *,
    service: Service,
    sha: str,
    authors: list[tuple[str, str]],
    identities: dict[str, list[str]],
) -> Decision:
    """Whether the recorded approval ``detail`` lets this run's commit ``sha`` go to production."""
    if detail is None:
        return Decision.refuse(
            "the approval never asked for an answer in this run (was its state set by hand?)"
        )
    if not detail.get("response_received"):
        return Decision.refuse("the approval has no recorded answer (was its state set by hand?)")
    who = _user(detail)
    text = f"{detail.get('subject') or ''}\n{detail.get('body') or ''}"
    if sha not in text:
        return Decision.refuse(
            f"the recorded answer of {who} was given for another commit, not {sha}", approver=who
        )
    chosen = list(detail.get("chosen_options") or [])
    if chosen == [APPROVE]:
        if who not in service.approvers:
            return Decision.refuse(
                f"{who} approved, but only {', '.join(service.approvers)} may approve {service.name}",
                approver=who,
            )
        if service.four_eyes and who and is_author(who, authors, identities):
            return Decision.refuse(
                f"{who} authored a commit being released ({sha[:12]}); four eyes: another approver must approve",
                approver=who,
            )
        return Decision(allowed=True, approver=who)
    if chosen == [BREAK_GLASS]:
        reason = str((detail.get("params_input") or {}).get("reason") or "").strip()
        if who not in service.break_glass_approvers:
            allowed = (
                ", ".join(service.break_glass_approvers) or "nobody (catalog break_glass_approvers is empty)"
            )
            return Decision.refuse(f"{who} chose Break glass, but only {allowed} may", approver=who)
        if not reason:
            return Decision.refuse(
                f"{who} chose Break glass without a reason; a reason is mandatory", approver=who
            )
        return Decision(allowed=True, approver=who, break_glass=True, reason=reason)
    return Decision.refuse(f"the approval's answer is {chosen or 'empty'} from {who}", approver=who)
