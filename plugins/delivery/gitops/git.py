"""The one way this project runs ``git``.

Every git command of the project (the GitOps repository, the source checkout
and ls-remote of a run, the local runners' workspaces, the demo repositories,
the poller, the webhook's changed files) goes through :class:`Git`, which:

* runs git with a **minimal environment**: only the variables git needs to
  reach a remote (``PATH``, proxies, certificates, the ssh agent) are passed
  through; no system or global configuration (``GIT_CONFIG_NOSYSTEM``,
  ``GIT_CONFIG_GLOBAL=/dev/null``), ``GIT_TERMINAL_PROMPT=0`` (never waits
  for a password), ``LC_ALL=C`` (stable messages to match on) and an empty
  temporary ``HOME`` per command (no ``~/.netrc`` or other per-user files);
  ambient ``GIT_DIR``/``GIT_WORK_TREE``... never leak in;
* hands **HTTPS credentials** to git through an inline credential helper that
  reads them from the child's environment, so they never appear in a URL, an
  argument list, a log line or an error message;
* fixes the settings that would make a command behave differently on another
  machine (no hooks, no signing, no CRLF conversion) and, when asked, the
  author/committer identity;
* applies a **timeout** to every command and reports failures as
  :class:`~delivery.gitops.errors.GitCommandError` naming the action, the
  repository and git's stderr, with URL credentials and secrets **redacted**.

Callers put ``--end-of-options`` before revisions and ``--`` before paths and
URLs wherever git accepts them, so a ref or path that starts with ``-`` is
never read as an option.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from delivery.gitops.errors import GitCommandError, GitOpsRemoteError, InvalidRequestError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

__all__ = ["CREDENTIAL_HELPER", "Git", "GitIdentity", "check_sha", "redact_url"]

DEFAULT_TIMEOUT_S = 120.0

# Environment variables passed through to git (network, ssh, certificates).
PASSTHROUGH_ENV = (
    "PATH",
    "TMPDIR",
    "SSH_AUTH_SOCK",
    "GIT_SSH_COMMAND",
    "GIT_SSL_CAINFO",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
USERNAME_ENV = "DELIVERY_GITOPS_USERNAME"
PASSWORD_ENV = "DELIVERY_GITOPS_PASSWORD"
CREDENTIAL_HELPER = (
    f'!f() {{ test "$1" = get || exit 0; '
    f'echo "username=${USERNAME_ENV}"; echo "password=${PASSWORD_ENV}"; }}; f'
)
_FIXED_CONFIG = (
    "core.autocrlf=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "core.hooksPath=" + os.devnull,
    "advice.detachedHead=false",
    "credential.helper=",
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def redact_url(text: str) -> str:
    """``text`` with the user info of every URL (``https://user:token@host``) replaced by ``***``."""
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def check_sha(value: str, *, what: str = "sha") -> str:
    """A full commit (or object) id in lower case; anything else is an :class:`InvalidRequestError`."""
    sha = value.strip().lower()
    if not SHA_RE.match(sha):
        raise InvalidRequestError(f"{what} {value!r} is not a full 40-character (or 64-character) git sha")
    return sha


def _run(
    command: list[str], *, cwd: Path | None, env: dict[str, str], stdin: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in its own process group, killed whole (ssh, credential helpers...) when it
    times out or when this process is interrupted (a task's timeout or termination)."""
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
    ) as proc:
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@dataclass(frozen=True)
class GitIdentity:
    """Author and committer of the commits and tags a command creates."""

    name: str
    email: str


class Git:
    """Runs git for one repository (a working tree ``cwd``, a bare ``git_dir``, or a remote ``repo``).

    ``repo`` is what error messages name (redacted); ``label`` what they call
    it ("GitOps repo", "repository"...). ``password`` (with ``username``) is
    handed to git by the credential helper and redacted from every message.
    """

    def __init__(
        self,
        *,
        cwd: Path | None = None,
        git_dir: Path | None = None,
        repo: str | None = None,
        label: str = "repository",
        username: str | None = None,
        password: str | None = None,
        identity: GitIdentity | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.cwd = cwd
        self.git_dir = git_dir
        self.label = label
        self.timeout_s = timeout_s
        self._repo = repo if repo is not None else str(git_dir or cwd or "")
        self._username = username
        self._password = password
        self._identity = identity
        self._extra_env = dict(extra_env or {})
        self._secrets = [s for s in (password,) if s]

    def __repr__(self) -> str:
        return f"Git(repo={self.display!r})"

    @property
    def display(self) -> str:
        """The repository as messages show it: no credentials."""
        return self.redact(self._repo)

    def redact(self, text: str) -> str:
        text = redact_url(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def env(self, home: str) -> dict[str, str]:
        """The whole environment of a git command (``home``: its empty temporary ``HOME``)."""
        env = {key: os.environ[key] for key in PASSTHROUGH_ENV if key in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(
            {
                "HOME": home,
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
                "LC_ALL": "C",
                "LANG": "C",
            }
        )
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        if self._identity is not None:
            env.update(
                {
                    "GIT_AUTHOR_NAME": self._identity.name,
                    "GIT_AUTHOR_EMAIL": self._identity.email,
                    "GIT_COMMITTER_NAME": self._identity.name,
                    "GIT_COMMITTER_EMAIL": self._identity.email,
                }
            )
        env.update(self._extra_env)
        if self._password is not None:
            env[USERNAME_ENV] = self._username or "x-access-token"
            env[PASSWORD_ENV] = self._password
        return env

    def _command(self, args: Sequence[str]) -> list[str]:
        command = ["git"]
        for item in _FIXED_CONFIG:
            command += ["-c", item]
        if self._password is not None:
            command += ["-c", f"credential.helper={CREDENTIAL_HELPER}"]
        if self.git_dir is not None:
            command.append(f"--git-dir={self.git_dir}")
        return [*command, *args]

    def run(
        self,
        *args: str,
        action: str,
        path: str | None = None,
        check: bool = True,
        stdin: str | None = None,
        timeout_s: float | None = None,
        remote: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``git <args>``; raise :class:`GitCommandError` (``remote``: :class:`GitOpsRemoteError`)
        when it fails and ``check``, or when it cannot run at all (timeout, no git, no ``cwd``)."""
        timeout = timeout_s or self.timeout_s
        if self.cwd is not None and not self.cwd.is_dir():
            raise self._failure(action, f"working directory {self.cwd} does not exist", path, remote)
        logger.debug("git %s", self.redact(" ".join(args)))
        with tempfile.TemporaryDirectory(prefix="delivery-git-home-") as home:
            try:
                proc = _run(
                    self._command(args), cwd=self.cwd, env=self.env(home), stdin=stdin, timeout=timeout
                )
            except subprocess.TimeoutExpired as exc:
                raise self._failure(action, f"timed out after {timeout:g}s", path, remote) from exc
            except OSError as exc:
                raise self._failure(action, str(exc), path, remote) from exc
        if check and proc.returncode != 0:
            raise self.error(action, proc, path=path, remote=remote)
        return proc

    def output(self, *args: str, action: str, timeout_s: float | None = None, remote: bool = False) -> str:
        """The stdout of a command that must succeed, without its trailing newline."""
        return self.run(*args, action=action, timeout_s=timeout_s, remote=remote).stdout.rstrip("\n")

    def error(
        self,
        action: str,
        proc: subprocess.CompletedProcess[str],
        *,
        path: str | None = None,
        remote: bool = False,
    ) -> GitCommandError:
        """The error of a finished command: its stderr and stdout, redacted."""
        output = "\n".join(part.strip() for part in (proc.stderr, proc.stdout) if part and part.strip())
        cls = GitOpsRemoteError if remote else GitCommandError
        return cls(
            action=action,
            repo=self.display,
            returncode=proc.returncode,
            stderr=self.redact(output),
            path=path,
            label=self.label,
        )

    def _failure(self, action: str, detail: str, path: str | None, remote: bool) -> GitCommandError:
        cls = GitOpsRemoteError if remote else GitCommandError
        return cls(
            action=action,
            repo=self.display,
            returncode=-1,
            stderr=self.redact(detail),
            path=path,
            label=self.label,
        )
