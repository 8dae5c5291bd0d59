"""The git runner: what git sees of the environment, how failures read, and timeouts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from delivery.gitops import Git, GitCommandError, GitIdentity, GitOpsRemoteError
from tests.gitops._support import git


def _env_seen_by_git(runner: Git) -> dict[str, str]:
    """The environment of the git process itself (a shell alias runs ``env`` as git's child)."""
    out = runner.output("-c", "alias.showenv=!env", "showenv", action="show env")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_git_gets_a_minimal_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Someone Else\n")
    (home / ".netrc").write_text("machine example.com login me password hunter2\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "not-for-git")

    env = _env_seen_by_git(Git(cwd=tmp_path, identity=GitIdentity("Bot", "bot@visiobook.invalid")))

    assert env["HOME"] != str(home) and "delivery-git-home-" in env["HOME"]
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["LC_ALL"] == "C"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    assert env["GIT_AUTHOR_NAME"] == env["GIT_COMMITTER_NAME"] == "Bot"
    assert "GIT_DIR" not in env and "AIRFLOW__CORE__FERNET_KEY" not in env
    # The per-command HOME was removed afterwards.
    assert not Path(env["HOME"]).exists()


def test_commits_carry_the_identity_and_ignore_user_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile = tmp_path / "hostile.gitconfig"
    hostile.write_text("[user]\n\tname = Someone Else\n[commit]\n\tgpgSign = true\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(hostile))
    work = tmp_path / "work"
    runner = Git(cwd=tmp_path, identity=GitIdentity("Bot", "bot@visiobook.invalid"))
    runner.run("init", "-q", "-b", "main", "--", str(work), action="git init")
    (work / "file").write_text("x\n")
    repo = Git(cwd=work, identity=GitIdentity("Bot", "bot@visiobook.invalid"))
    repo.run("add", "--", "file", action="git add")
    repo.run("commit", "-q", "-m", "one", action="git commit")
    assert git("log", "-1", "--format=%an <%ae>", cwd=work).strip() == "Bot <bot@visiobook.invalid>"


def test_errors_name_the_repository_without_its_credentials(tmp_path: Path) -> None:
    url = "https://deployer:url-t0ken@127.0.0.1:9/visiobook/app.git"
    runner = Git(repo=url, username="deployer", password="pa55-s3cret", timeout_s=20)
    with pytest.raises(GitOpsRemoteError) as info:
        runner.run("ls-remote", "--", url, action="git ls-remote", remote=True)
    message = str(info.value)
    assert "git ls-remote failed in repository https://***@127.0.0.1:9/visiobook/app.git" in message
    assert "url-t0ken" not in message and "pa55-s3cret" not in message
    assert info.value.returncode != 0
    # A secret git itself prints is redacted too.
    with pytest.raises(GitCommandError) as leaked:
        runner.run("-c", "alias.leak=!echo pa55-s3cret >&2; false", "leak", action="leak")
    assert "pa55-s3cret" not in str(leaked.value) and "***" in leaked.value.stderr


def test_a_command_that_hangs_is_stopped_with_its_children(tmp_path: Path) -> None:
    runner = Git(cwd=tmp_path, timeout_s=0.3)
    marker = tmp_path / "still-running"
    with pytest.raises(GitCommandError, match=r"slow failed in repository .* timed out after 0.3s"):
        runner.run("-c", f"alias.slow=!sleep 1; touch {marker}", "slow", action="slow")
    time.sleep(1.5)
    assert not marker.exists()  # the shell git started was killed too


def test_a_missing_working_directory_is_an_error_not_the_current_folder(tmp_path: Path) -> None:
    with pytest.raises(GitCommandError, match="does not exist"):
        Git(cwd=tmp_path / "gone").run("status", action="git status")
