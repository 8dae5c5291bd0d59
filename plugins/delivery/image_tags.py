"""The tags of a release image, from the commit, its branch and its git tag: one definition for
every profile.

The checkout (:func:`delivery.steps.source.resolve_source`) computes them once
per run and every stage reads them from its XCom; the local profile's image
push (:mod:`delivery.profiles.local.images`) and the Kubernetes pod renderer
use the same functions. This module imports nothing of the project, so
anything can import it.

Rules (a Docker tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``):

* the full commit sha always comes first (immutable: what GitOps values deploy);
* a branch (or a git tag that is not a version) is sanitised: ``refs/heads/``
  and ``refs/tags/`` prefixes dropped, each run of other characters becomes
  one ``-`` (``feature//x`` -> ``feature-x``), leading and trailing ``.``/``-``
  are dropped and the result is cut at 128 characters; a name with nothing
  left gives no tag;
* a semantic-version git tag ``v1.2.3`` gives ``1.2.3`` and ``1.2``; a
  pre-release ``v1.2.3-rc.1`` gives ``1.2.3-rc.1`` only (it must not move
  ``1.2``); build metadata ``+build.5`` becomes ``-build.5`` (``+`` is not
  allowed in a tag).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["SEMVER_RE", "docker_tag", "image_tags", "semver_tags"]

MAX_TAG_LENGTH = 128
SEMVER_RE = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+(?P<build>[0-9A-Za-z.-]+))?$"
)
_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def docker_tag(value: str) -> str:
    """A branch or ref name as a valid Docker tag (``feature/ABC-1`` -> ``feature-ABC-1``).

    Raises ValueError when nothing usable is left (``///``).
    """
    name = value.strip()
    for prefix in ("refs/heads/", "refs/tags/"):
        name = name.removeprefix(prefix)
    tag = _INVALID.sub("-", name).strip(".-")[:MAX_TAG_LENGTH].rstrip(".-")
    if not _TAG.match(tag):
        raise ValueError(f"cannot make a Docker tag from {value!r}: no letter, digit or '_' in it")
    return tag


def semver_tags(git_tag: str) -> list[str] | None:
    """The tags of a semantic-version git tag (``v1.2.3`` -> ``1.2.3``, ``1.2``), or None."""
    match = SEMVER_RE.match(git_tag.strip().removeprefix("refs/tags/"))
    if match is None:
        return None
    version = docker_tag(git_tag.strip().removeprefix("refs/tags/").removeprefix("v"))
    if match["pre"]:
        return [version]
    return [version, f"{match['major']}.{match['minor']}"]


def image_tags(
    *, sha: str, branch: str | None = None, tag: str | None = None, extra: Iterable[str] = ()
) -> list[str]:
    """The tags of a release image: the sha, the branch, the git tag's version (or name), ``extra``.

    Deduplicated, in that order. A branch with no taggable character gives no
    branch tag (the sha still names the image); an ``extra`` tag that cannot
    be made valid is a ValueError.
    """
    tags = [sha, *_optional(branch)]
    if tag:
        tags += semver_tags(tag) or _optional(tag)
    tags += [docker_tag(item) for item in extra]
    return list(dict.fromkeys(tags))


def _optional(name: str | None) -> list[str]:
    """``[docker_tag(name)]``, or nothing when there is no name or nothing taggable in it."""
    if not name:
        return []
    try:
        return [docker_tag(name)]
    except ValueError:
        return []  # the sha tag still names the image
