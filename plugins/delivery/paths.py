"""Project paths: catalog values such as ``.local/repos/x.git`` are relative to the project root."""

from __future__ import annotations

import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def git_url(value: str) -> str:
    """A git URL as git understands it: remote URLs unchanged, relative paths made absolute."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", value) or re.match(r"^[\w.-]+@[\w.-]+:", value):
        return value
    return str(project_path(value))
