"""Load the catalog from YAML files into validated models.

Layout::

    include/catalog/
      platform.yaml          # the platform: registry, GitOps repo, connections, cluster
      services/<name>.yaml   # one service per file; the file name is the service name

Files are read with YAML's safe loader only (libyaml's when PyYAML has it: the
same documents, several times faster; a file it refuses is read again by the pure
Python loader for the same error message). Every problem is collected, so one
run of ``delivery-catalog validate`` lists them all, each naming the file, the
service and the field.

A worker about to run one task parses the DAG file for that task's DAG only
(Airflow's parsing context): :func:`load_catalog` with ``dag_id`` then reads
``platform.yaml`` and the one service file whose DAGs include it, not the whole
catalog.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from delivery.catalog.errors import CatalogError, CatalogIssue
from delivery.catalog.models import Catalog, Platform, Service

DEFAULT_CATALOG_DIR = Path(__file__).resolve().parents[3] / "include" / "catalog"
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def catalog_dir() -> Path:
    """The catalog folder: ``$DELIVERY_CATALOG_DIR`` or the project's ``include/catalog``."""
    return Path(os.environ.get("DELIVERY_CATALOG_DIR") or DEFAULT_CATALOG_DIR)


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if item == "[key]":  # pydantic marks an invalid mapping key this way; the key is already named
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _issues_from_validation(exc: ValidationError, *, file: str, service: str | None) -> list[CatalogIssue]:
    issues = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            message = "unknown key (check its spelling against the JSON Schema)"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif loc and loc[-1] == "[key]":
            message = "unknown key: " + err["msg"].removeprefix("Input should be ").replace("'", "", 0)
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict | list):
                message += f" (got {err['input']!r})"
        issues.append(CatalogIssue(file=file, service=service, field=_field_path(loc), message=message))
    return issues


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` with libyaml; the pure Python loader words the errors (as they always were)."""
    try:
        return yaml.load(text, Loader=_FAST_LOADER)  # a safe loader: CSafeLoader, else SafeLoader
    except yaml.YAMLError:
        return yaml.safe_load(text)


def _read_yaml(path: Path, *, service: str | None) -> tuple[Any, list[CatalogIssue]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [CatalogIssue(str(path), service, "(file)", f"cannot be read: {exc.strerror}")]
    try:
        data = _safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [CatalogIssue(str(path), service, "(file)", f"is not valid YAML{where}: {problem}")]
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "empty"
        return None, [CatalogIssue(str(path), service, "(top level)", f"expected a mapping, got {kind}")]
    return data, []


def load_platform(root: Path) -> tuple[Platform | None, list[CatalogIssue]]:
    path = root / "platform.yaml"
    if not path.is_file():
        return None, [
            CatalogIssue(str(path), None, "(file)", "is missing: every catalog needs platform.yaml")
        ]
    data, issues = _read_yaml(path, service=None)
    if issues:
        return None, issues
    if set(data) != {"platform"}:
        extra = sorted(set(data) - {"platform"})
        field = extra[0] if extra else "platform"
        msg = "unknown key (only 'platform' is allowed here)" if extra else "required key is missing"
        return None, [CatalogIssue(str(path), None, field, msg)]
    try:
        return Platform.model_validate(data["platform"]), []
    except ValidationError as exc:
        issues = _issues_from_validation(exc, file=str(path), service=None)
        return None, [
            CatalogIssue(
                i.file, None, "platform." + i.field if i.field != "(top level)" else "platform", i.message
            )
            for i in issues
        ]


def load_service(path: Path) -> tuple[Service | None, list[CatalogIssue]]:
    """Load one service file. Returns the service or the issues found in it."""
    expected = path.stem
    data, issues = _read_yaml(path, service=expected)
    if issues:
        return None, issues
    name = data.get("name")
    service_name = name if isinstance(name, str) else expected
    try:
        service = Service.model_validate(data)
    except ValidationError as exc:
        return None, _issues_from_validation(exc, file=str(path), service=service_name)
    if service.name != expected:
        return None, [
            CatalogIssue(
                str(path),
                service.name,
                "name",
                f"must match the file name: rename the file to {service.name}.yaml or the service to {expected!r}",
            )
        ]
    return service, []


def dag_ids(service_name: str) -> set[str]:
    """The ids of every DAG a service may have (delivery, rollback, nightly), from its name alone."""
    named = Service.model_construct(name=service_name)  # not validated: the ids depend on the name only
    return {named.dag_id, named.rollback_dag_id, named.nightly_dag_id}


def service_files(base: Path, *, dag_id: str | None = None) -> list[Path]:
    """The service files of the catalog in ``base``; with ``dag_id``, only the file of the service
    that has this DAG (a file is named after its service), or all of them when none has it."""
    files = sorted((base / "services").glob("*.yaml")) + sorted((base / "services").glob("*.yml"))
    if dag_id is None:
        return files
    return [path for path in files if dag_id in dag_ids(path.stem)] or files


def load_catalog(
    root: Path | str | None = None, *, strict: bool = True, dag_id: str | None = None
) -> tuple[Catalog, list[CatalogIssue]]:
    """Load and validate the whole catalog.

    With ``strict=True`` any issue raises :class:`CatalogError` listing all of
    them. With ``strict=False`` the valid services are returned with the issues
    of the others, so that one bad file does not hide every other pipeline;
    a broken ``platform.yaml`` always raises, since nothing can be built without it.
    ``dag_id`` (a worker parsing the DAG of the task it runs) loads only the service
    that has this DAG, when one has it (:func:`service_files`).
    """
    base = Path(root) if root is not None else catalog_dir()
    if not base.is_dir():
        raise CatalogError([CatalogIssue(str(base), None, "(folder)", "catalog folder does not exist")])
    platform, issues = load_platform(base)
    services: dict[str, Service] = {}
    sources: dict[str, str] = {}
    for path in service_files(base, dag_id=dag_id):
        service, service_issues = load_service(path)
        issues += service_issues
        if service is None:
            continue
        if service.name in services:
            issues.append(
                CatalogIssue(
                    str(path), service.name, "name", f"is already defined in {sources[service.name]}"
                )
            )
            continue
        services[service.name] = service
        sources[service.name] = str(path)
    issues += _cross_checks(services, sources)
    if platform is None or (strict and issues):
        raise CatalogError(issues)
    bad = {i.service for i in issues}
    catalog = Catalog(
        platform=platform,
        services={k: v for k, v in services.items() if k not in bad},
        sources={k: v for k, v in sources.items() if k not in bad},
    )
    return catalog, issues


def _cross_checks(services: dict[str, Service], sources: dict[str, str]) -> list[CatalogIssue]:
    """Rules that span services: ports and Argo CD apps must be unique."""
    issues: list[CatalogIssue] = []
    seen_ports: dict[int, str] = {}
    seen_apps: dict[str, str] = {}
    for name, service in services.items():
        for env_name in ("staging", "production"):
            env = getattr(service.environments, env_name)
            field = f"environments.{env_name}"
            if env.local_port:
                other = seen_ports.setdefault(env.local_port, f"{name}/{env_name}")
                if other != f"{name}/{env_name}":
                    issues.append(
                        CatalogIssue(
                            sources[name], name, field + ".local_port", f"{env.local_port} is used by {other}"
                        )
                    )
            other = seen_apps.setdefault(env.argocd_app, f"{name}/{env_name}")
            if other != f"{name}/{env_name}":
                issues.append(
                    CatalogIssue(
                        sources[name], name, field + ".argocd_app", f"{env.argocd_app!r} is used by {other}"
                    )
                )
    return issues
