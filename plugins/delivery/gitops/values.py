"""Editing a Helm values file's ``image`` block, keeping the rest of the file as it is.

Values files are edited in place, line by line, so comments, ordering and
formatting survive; the edit is verified by re-parsing the result. When the
file's layout is too exotic for that (flow-style ``image``, block scalars...),
it is re-emitted with PyYAML (``sort_keys=False``), which keeps data and key
order but drops comments (a warning is logged).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import TYPE_CHECKING, Any

import yaml

from delivery.gitops.errors import ValuesFileError

if TYPE_CHECKING:
    from collections.abc import Mapping

logger = logging.getLogger(__name__)

__all__ = ["read_image", "set_image"]


def _load_mapping(text: str, *, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValuesFileError(f"{where}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValuesFileError(f"{where}: top level is {type(data).__name__}, expected a mapping")
    return data


def _scalar(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def read_image(text: str, *, where: str = "values file") -> tuple[str | None, str | None]:
    """Return ``(image.tag, image.repository)`` from a values document."""
    data = _load_mapping(text, where=where)
    image = data.get("image")
    if image is None:
        return None, None
    if not isinstance(image, dict):
        raise ValuesFileError(f"{where}: 'image' is {type(image).__name__}, expected a mapping")
    return _scalar(image.get("tag")), _scalar(image.get("repository"))


def set_image(text: str, *, tag: str, repository: str | None = None, where: str = "values file") -> str:
    """Return ``text`` with ``image.tag`` (and ``image.repository``) set.

    The rest of the document is preserved byte for byte when the ``image``
    block is a plain block mapping; otherwise the document is re-emitted.
    Returns ``text`` unchanged when the values are already in place.
    """
    data = _load_mapping(text, where=where)
    image = data.get("image")
    if image is not None and not isinstance(image, dict):
        raise ValuesFileError(f"{where}: 'image' is {type(image).__name__}, expected a mapping")
    updates: dict[str, str] = {"tag": tag}
    if repository is not None:
        updates["repository"] = repository
    current = image or {}
    if all(current.get(k) == v for k, v in updates.items()):
        return text
    expected = copy.deepcopy(data)
    expected_image = expected.setdefault("image", {})
    if expected_image is None:
        expected_image = expected["image"] = {}
    expected_image.update(updates)

    edited = _edit_in_place(text, updates)
    if edited is not None:
        try:
            if yaml.safe_load(edited) == expected:
                return edited
        except yaml.YAMLError:
            pass
    logger.warning("%s: image block not editable in place; re-emitting the file (comments are lost)", where)
    return yaml.safe_dump(expected, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _edit_in_place(text: str, updates: Mapping[str, str]) -> str | None:
    """Line-level edit of a block-style top-level ``image:`` mapping, or None."""
    lines = text.splitlines(keepends=True)
    head = re.compile(r"^image\s*:\s*(#.*)?(\r?\n)?$")
    start = next((i for i, line in enumerate(lines) if head.match(line)), None)
    if start is None:
        if any(re.match(r"^[\"']?image[\"']?\s*:", line) for line in lines):
            return None  # ``image: {...}``, quoted key...: let the caller re-emit
        newline = "\r\n" if text.endswith("\r\n") else "\n"
        prefix = text if not text or text.endswith(("\n", "\r")) else text + newline
        body = "".join(f"  {k}: {json.dumps(v)}{newline}" for k, v in updates.items())
        return f"{prefix}image:{newline}{body}"

    end = start + 1
    while end < len(lines):
        line = lines[end]
        stripped = line.strip()
        if stripped and not line[0].isspace() and not stripped.startswith("#"):
            break
        end += 1
    indent = None
    for line in lines[start + 1 : end]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            indent = line[: len(line) - len(line.lstrip())]
            break
    if not indent or "\t" in indent:
        return None
    eol = "\r\n" if lines[start].endswith("\r\n") else "\n"
    inserts: list[str] = []
    for key, value in updates.items():
        pattern = re.compile(
            rf"^{re.escape(indent)}{re.escape(key)}\s*:\s*(?P<value>[^#\r\n]*?)(?P<comment>\s+#.*?)?(?P<eol>\r?\n)?$"
        )
        for i in range(start + 1, end):
            match = pattern.match(lines[i])
            if match:
                comment = match.group("comment") or ""
                lines[i] = f"{indent}{key}: {json.dumps(value)}{comment}{match.group('eol') or ''}"
                break
        else:
            inserts.append(f"{indent}{key}: {json.dumps(value)}{eol}")
    lines[start + 1 : start + 1] = inserts
    return "".join(lines)
