"""Turn the demo services into git repos, and seed the GitOps repo, for the local profile.

    python -m delivery.devenv.demo setup [--state .local]

For each service in ``include/services/<name>``, whose tree is the service's own folder plus
the tooling the demo services share (``include/services/_shared``: metrics, fault markers,
``ci.sh``, ``tools/``, the Helm templates), copied in so that each repo stands alone
(:func:`assemble_service`):

* a bare repo ``<state>/repos/<name>.git`` (what the pipeline clones), and
* a working clone ``<state>/src/<name>`` with ``origin`` pointing at it, where
  a newcomer edits, commits and pushes to start a pipeline.

The GitOps repo ``<state>/gitops.git`` holds ``apps/<name>/values-<env>.yaml``,
copied from each service's ``deploy/`` folder. Everything is idempotent:
existing repos are left as they are.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from delivery.gitops import Git, GitIdentity, ls_remote
from delivery.paths import PROJECT_ROOT

log = logging.getLogger(__name__)

DEMO_SERVICES = ("visiobook-demo-web", "visiobook-inference")
DEMO_IDENTITY = GitIdentity("Visiobook Demo", "demo@visiobook.invalid")
SERVICES_DIR = PROJECT_ROOT / "include" / "services"


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git (the project's runner) as the demo identity; its output, stripped."""
    runner = Git(cwd=cwd, identity=DEMO_IDENTITY)
    return runner.output(*args, action=f"git {args[0]}").strip()


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in ("__pycache__", ".coverage") or n.endswith(".pyc")}


def _tree(root: Path) -> set[str]:
    """The files under ``root`` that a copy keeps, relative to it."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not _ignore("", list(path.relative_to(root).parts))
    }


def assemble_service(name: str, dest: Path, *, services_dir: Path = SERVICES_DIR) -> Path:
    """Write the self-contained source tree of demo service ``name`` into ``dest`` and return it.

    The tree is ``<services_dir>/<name>`` plus ``<services_dir>/_shared``. A file in both is
    an error: each shared file has exactly one source.
    """
    source, shared = services_dir / name, services_dir / "_shared"
    if name.startswith("_") or not (source / "Dockerfile").is_file():
        raise ValueError(f"{name!r} is not a demo service (no {source}/Dockerfile)")
    both = sorted(_tree(source) & _tree(shared))
    if both:
        raise ValueError(f"{', '.join(both)}: in both {source} and {shared}; keep one copy (the shared one)")
    shutil.copytree(source, dest, dirs_exist_ok=True, ignore=_ignore)
    shutil.copytree(shared, dest, dirs_exist_ok=True, ignore=_ignore)
    return dest


def make_service_repo(name: str, *, state: Path) -> tuple[Path, Path]:
    bare = state / "repos" / f"{name}.git"
    work = state / "src" / name
    if not bare.exists():
        bare.parent.mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", "--bare", "--initial-branch=main", "--", str(bare))
    if not work.exists():
        work.parent.mkdir(parents=True, exist_ok=True)
        git("clone", "--quiet", "--", str(bare), str(work))
        git("checkout", "--quiet", "-B", "main", cwd=work)
        if "refs/heads/main" not in ls_remote(str(bare), ["refs/heads/main"]):
            assemble_service(name, work)
            git("add", "-A", cwd=work)
            git("commit", "--quiet", "-m", f"{name}: initial import", cwd=work)
            git("push", "--quiet", "--", "origin", "main", cwd=work)
    return bare, work


def make_gitops_repo(*, state: Path, services: tuple[str, ...] = DEMO_SERVICES) -> Path:
    bare = state / "gitops.git"
    if bare.exists():
        return bare
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--bare", "--initial-branch=main", "--", str(bare))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "gitops"
        git("clone", "--quiet", "--", str(bare), str(work))
        git("checkout", "--quiet", "-B", "main", cwd=work)
        for name in services:
            for env in ("staging", "production"):
                src = SERVICES_DIR / name / "deploy" / f"values-{env}.yaml"
                dest = work / "apps" / name / f"values-{env}.yaml"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest)
        (work / "README.md").write_text(
            "Desired state of every Visiobook environment. Written by the delivery pipelines.\n"
        )
        git("add", "-A", cwd=work)
        git("commit", "--quiet", "-m", "Seed the desired state of the demo services", cwd=work)
        git("push", "--quiet", "--", "origin", "main", cwd=work)
    return bare


def setup(*, state: Path) -> dict[str, str]:
    paths = {}
    for name in DEMO_SERVICES:
        _bare, work = make_service_repo(name, state=state)
        paths[name] = str(work)
    paths["gitops"] = str(make_gitops_repo(state=state))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["setup"])
    parser.add_argument("--state", type=Path, default=PROJECT_ROOT / ".local")
    args = parser.parse_args(argv)
    for name, path in setup(state=args.state.resolve()).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
