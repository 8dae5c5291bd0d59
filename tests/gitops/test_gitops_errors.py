"""Error reporting, secret redaction, git environment isolation and locking."""

from __future__ import annotations

import fcntl
import subprocess
from typing import TYPE_CHECKING

import pytest

from delivery.gitops import (
    Git,
    GitCommandError,
    GitOpsError,
    GitOpsLockTimeoutError,
    GitOpsRemoteError,
    GitOpsRepo,
    InvalidRequestError,
    ValuesFileError,
    ValuesFileNotFoundError,
)
from delivery.gitops.git import CREDENTIAL_HELPER
from tests.gitops._support import API_PROD, Remote, git, meta

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    RepoFactory = Callable[..., GitOpsRepo]


def _deploy(repo: GitOpsRepo, values_path: str = API_PROD) -> None:
    repo.deploy(
        environment="production",
        service="visiobook-api",
        values_path=values_path,
        image_tag="1.1.0",
        metadata=meta(),
    )


def test_missing_values_file_names_file_and_repo(remote: Remote, make_repo: RepoFactory) -> None:
    count = remote.count()
    missing = "services/visiobook-api/values-prod.yaml"
    with pytest.raises(ValuesFileNotFoundError) as info:
        _deploy(make_repo(), missing)
    assert missing in str(info.value)
    assert remote.url in str(info.value)
    assert remote.count() == count


def test_bad_remote_names_repo_and_git_stderr(tmp_path: Path) -> None:
    url = str(tmp_path / "no-such-repo.git")
    repo = GitOpsRepo(url=url, workdir=tmp_path / "work")
    with pytest.raises(GitOpsRemoteError) as info:
        _deploy(repo)
    message = str(info.value)
    assert url in message
    assert "does not appear to be a git repository" in message
    assert info.value.returncode != 0
    assert isinstance(info.value, GitCommandError)


def test_missing_branch(remote: Remote, make_repo: RepoFactory) -> None:
    with pytest.raises(GitOpsRemoteError, match="couldn't find remote ref refs/heads/release"):
        _deploy(make_repo(branch="release"))


def test_credentials_never_leak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="delivery.gitops")
    repo = GitOpsRepo(
        url="https://deployer:url-s3cret@127.0.0.1:9/visiobook/gitops.git",
        workdir=tmp_path / "work",
        username="deployer",
        password="tok-s3cret",
        command_timeout_s=20,
    )
    with pytest.raises(GitOpsRemoteError) as info:
        repo.sync()
    message = str(info.value)
    assert "https://***@127.0.0.1:9/visiobook/gitops.git" in message
    assert "s3cret" not in message
    assert "s3cret" not in repr(repo)
    assert "s3cret" not in caplog.text
    config = (tmp_path / "work" / ".git" / "config").read_text()
    assert "tok-s3cret" not in config


def test_credentials_reach_git_through_the_helper_only(tmp_path: Path) -> None:
    env = Git(repo=str(tmp_path / "r.git"), username="u", password="p4ss").env(str(tmp_path))
    assert env["DELIVERY_GITOPS_PASSWORD"] == "p4ss"
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    # The inline helper (run by git as ``sh -c '<helper> "$@"' helper get``)
    # answers the credential protocol from the environment.
    out = subprocess.run(
        ["sh", "-c", CREDENTIAL_HELPER[1:] + ' "$@"', "helper", "get"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out == "username=u\npassword=p4ss\n"


def test_ambient_git_configuration_is_ignored(
    tmp_path: Path, remote: Remote, make_repo: RepoFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile = tmp_path / "hostile.gitconfig"
    hostile.write_text("[commit]\n\tgpgSign = true\n[user]\n\tname = Someone Else\n", encoding="utf-8")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(hostile))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Someone Else")
    _deploy(make_repo())
    assert remote.git("log", "-1", "--format=%an|%cn").strip() == "Visiobook Delivery|Visiobook Delivery"


def test_values_file_that_is_not_a_mapping(remote: Remote, make_repo: RepoFactory) -> None:
    repo = make_repo()
    repo.sync()
    (repo.workdir / API_PROD).write_text("image: registry/api:1.0.0\n", encoding="utf-8")
    git("commit", "-q", "-am", "break it", cwd=repo.workdir)
    git("push", "-q", "origin", "HEAD:main", cwd=repo.workdir)
    with pytest.raises(ValuesFileError, match=API_PROD):
        _deploy(repo)


@pytest.mark.parametrize("path", ["../escape.yaml", "/etc/passwd", "", "a\\b.yaml"])
def test_values_path_must_stay_inside_the_repo(make_repo: RepoFactory, path: str) -> None:
    with pytest.raises(InvalidRequestError):
        _deploy(make_repo(), path)


@pytest.mark.parametrize("field", ["service", "environment"])
def test_names_are_validated(make_repo: RepoFactory, field: str) -> None:
    kwargs = {"environment": "production", "service": "visiobook-api", field: "bad name/.."}
    with pytest.raises(InvalidRequestError, match="bad name"):
        make_repo().deploy(**kwargs, values_path=API_PROD, image_tag="1", metadata=meta())


def test_workdir_lock_times_out(make_repo: RepoFactory) -> None:
    repo = make_repo(lock_timeout_s=0.2)
    lock = repo.workdir.with_name(f".{repo.workdir.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        with pytest.raises(GitOpsLockTimeoutError, match="locked"):
            repo.sync()
    repo.sync()  # free again


def test_foreign_non_empty_workdir_is_refused(tmp_path: Path, remote: Remote) -> None:
    workdir = tmp_path / "busy"
    workdir.mkdir()
    (workdir / "file").write_text("x")
    with pytest.raises(GitOpsError, match="not a git clone"):
        GitOpsRepo(url=remote.url, workdir=workdir).sync()
