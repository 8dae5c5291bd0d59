"""Catalog errors: every message names the file, the service and the field."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CatalogIssue:
    """One problem found in one catalog file."""

    file: str
    service: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"service {self.service!r}, " if self.service else ""
        return f"{self.file}: {where}field {self.field!r}: {self.message}"


@dataclass
class CatalogError(ValueError):
    """The catalog is invalid. ``issues`` lists every problem found, not just the first."""

    issues: list[CatalogIssue] = field(default_factory=list)

    def __str__(self) -> str:
        if len(self.issues) == 1:
            return str(self.issues[0])
        lines = [f"{len(self.issues)} problems in the service catalog:"]
        lines += [f"  - {issue}" for issue in self.issues]
        return "\n".join(lines)
