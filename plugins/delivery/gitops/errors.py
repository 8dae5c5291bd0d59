"""Errors of the GitOps package and of the git runner (:mod:`delivery.gitops.git`)."""

from __future__ import annotations


class GitOpsError(Exception):
    """Base class of every error raised by this package."""


class InvalidRequestError(GitOpsError, ValueError):
    """The caller asked for something malformed (bad path, name, sha, missing reason)."""


class GitCommandError(GitOpsError):
    """A git command failed; the message names the repository, file and git's (redacted) stderr."""

    def __init__(
        self,
        *,
        action: str,
        repo: str,
        returncode: int,
        stderr: str,
        path: str | None = None,
        label: str = "GitOps repo",
    ) -> None:
        self.action = action
        self.repo = repo
        self.returncode = returncode
        self.stderr = stderr
        self.path = path
        where = f" for {path}" if path else ""
        detail = stderr.strip() or "(no output)"
        super().__init__(f"{action} failed in {label} {repo}{where} (git exit {returncode}): {detail}")


class GitOpsRemoteError(GitCommandError):
    """The remote could not be reached, or the branch does not exist there."""


class UnknownCommitError(GitOpsError, LookupError):
    """A sha (or ref) is not a commit of the repository."""


class PushConflictError(GitOpsError):
    """The push kept being rejected because other deployers kept moving the remote."""


class ValuesFileError(GitOpsError):
    """The Helm values file is not a YAML mapping with a usable ``image`` block."""


class ValuesFileNotFoundError(ValuesFileError, FileNotFoundError):
    """The Helm values file does not exist at the branch head (or at a revision)."""


class ReleaseNotFoundError(GitOpsError, LookupError):
    """No release with the requested revision exists in the file's history."""


class NoStableReleaseError(GitOpsError, LookupError):
    """A rollback was asked for but no earlier release passed verification."""


class ReleaseMovedError(GitOpsError):
    """A rollback was planned against one release, but another one is current now: nothing changed."""


class GitOpsLockTimeoutError(GitOpsError, TimeoutError):
    """Another process held a lock (a workdir, a mirror) for too long."""
