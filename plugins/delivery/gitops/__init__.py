"""The GitOps repository and the project's git runner.

* :mod:`~delivery.gitops.git`: the one way ``git`` is run (minimal environment,
  credentials, timeouts, redaction);
* :mod:`~delivery.gitops.remote`: ls-remote, the cached mirror, ancestry and authors;
* :mod:`~delivery.gitops.values`: editing a values file's ``image`` block;
* :mod:`~delivery.gitops.history`: releases, trailers and verification tags;
* :mod:`~delivery.gitops.repository`: :class:`GitOpsRepo`, deploys, rollbacks and history;
* :mod:`~delivery.gitops.errors`: what all of them raise.

The public names are importable from ``delivery.gitops``.
"""

from __future__ import annotations

from delivery.gitops.errors import (
    GitCommandError,
    GitOpsError,
    GitOpsLockTimeoutError,
    GitOpsRemoteError,
    InvalidRequestError,
    NoStableReleaseError,
    PushConflictError,
    ReleaseMovedError,
    ReleaseNotFoundError,
    UnknownCommitError,
    ValuesFileError,
    ValuesFileNotFoundError,
)
from delivery.gitops.git import Git, GitIdentity
from delivery.gitops.history import (
    DeployResult,
    Release,
    ReleaseAction,
    ReleaseMetadata,
    Verification,
    VerificationStatus,
)
from delivery.gitops.remote import RemoteRef, commit_authors, is_ancestor, ls_remote
from delivery.gitops.repository import GitOpsRepo
from delivery.gitops.values import read_image, set_image

__all__ = [
    "DeployResult",
    "Git",
    "GitCommandError",
    "GitIdentity",
    "GitOpsError",
    "GitOpsLockTimeoutError",
    "GitOpsRemoteError",
    "GitOpsRepo",
    "InvalidRequestError",
    "NoStableReleaseError",
    "PushConflictError",
    "Release",
    "ReleaseAction",
    "ReleaseMetadata",
    "ReleaseMovedError",
    "ReleaseNotFoundError",
    "RemoteRef",
    "UnknownCommitError",
    "ValuesFileError",
    "ValuesFileNotFoundError",
    "Verification",
    "VerificationStatus",
    "commit_authors",
    "is_ancestor",
    "ls_remote",
    "read_image",
    "set_image",
]
