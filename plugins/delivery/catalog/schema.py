"""JSON Schemas of the catalog files, for editors (yaml-language-server) and CI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from delivery.catalog.models import Platform, Service

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "include" / "schemas"


def service_schema() -> dict[str, Any]:
    schema = Service.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Visiobook delivery: service"
    return schema


def platform_schema() -> dict[str, Any]:
    inner = Platform.model_json_schema()
    defs = inner.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Visiobook delivery: platform",
        "type": "object",
        "additionalProperties": False,
        "required": ["platform"],
        "properties": {"platform": inner},
        "$defs": defs,
    }


def write_schemas(folder: Path = SCHEMA_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in (("catalog-service", service_schema()), ("catalog-platform", platform_schema())):
        path = folder / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
