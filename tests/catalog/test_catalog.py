"""Catalog: the shipped catalog is valid, and every kind of bad input gets its own clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from delivery.catalog import CatalogError, load_catalog
from delivery.catalog.models import Profile, Stage
from delivery.catalog.schema import SCHEMA_DIR, platform_schema, service_schema
from delivery.catalog.toolchains import resolve_stages
from tests.helpers import ROOT

SHIPPED = ROOT / "include" / "catalog"


def test_shipped_catalog_has_the_three_visiobook_services() -> None:
    catalog, issues = load_catalog(SHIPPED)
    assert issues == []
    assert set(catalog.services) == {"visiobook-web", "visiobook-api", "visiobook-inference"}
    web, api, ai = (catalog.services[n] for n in ("visiobook-web", "visiobook-api", "visiobook-inference"))
    assert (web.toolchain.value, api.toolchain.value, ai.toolchain.value) == ("npm", "maven", "python")
    assert ai.gpu is not None and ai.gpu.required and web.gpu is None and api.gpu is None
    assert catalog.platform.profile is Profile.KUBERNETES
    # The web app gets the OWASP ZAP baseline; the API's integration tests get a test database.
    assert Stage.DAST in resolve_stages(web, catalog.platform)
    assert Stage.DAST not in resolve_stages(api, catalog.platform)
    api_it = resolve_stages(api, catalog.platform)[Stage.INTEGRATION_TESTS]
    assert [s.name for s in api_it.services] == ["test-db"]
    assert "mvn" in resolve_stages(api, catalog.platform)[Stage.BUILD].command
    assert "eslint" in resolve_stages(web, catalog.platform)[Stage.LINT].command


def test_json_schemas_are_valid_and_accept_the_shipped_catalog() -> None:
    svc_schema, plat_schema = service_schema(), platform_schema()
    jsonschema.Draft202012Validator.check_schema(svc_schema)
    jsonschema.Draft202012Validator.check_schema(plat_schema)
    jsonschema.validate(yaml.safe_load((SHIPPED / "platform.yaml").read_text()), plat_schema)
    for path in (SHIPPED / "services").glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(path.read_text()), svc_schema)
    # The schema rejects unknown keys, like the loader.
    bad = yaml.safe_load((SHIPPED / "services" / "visiobook-web.yaml").read_text()) | {"colour": "blue"}
    with pytest.raises(jsonschema.ValidationError, match="colour"):
        jsonschema.validate(bad, svc_schema)


def test_committed_schemas_are_up_to_date() -> None:
    for name, schema in (("catalog-service", service_schema()), ("catalog-platform", platform_schema())):
        committed = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
        assert committed == schema, f"run `python -m delivery.cli schema` to refresh {name}"


@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    shutil.copytree(SHIPPED, tmp_path / "catalog")
    return tmp_path / "catalog"


def _edit(root: Path, service: str, change) -> Path:  # type: ignore[no-untyped-def]
    path = root / "services" / f"{service}.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(*keys: str, value: object):  # type: ignore[no-untyped-def]
    def change(data: dict) -> None:  # type: ignore[type-arg]
        for key in keys[:-1]:
            data = data.setdefault(key, {})
        data[keys[-1]] = value

    return change


def _delete(*keys: str):  # type: ignore[no-untyped-def]
    def change(data: dict) -> None:  # type: ignore[type-arg]
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]

    return change


BAD_SERVICE_EDITS = [
    pytest.param(_set("colour", value="blue"), "colour", "unknown key", id="unknown-top-level-key"),
    pytest.param(
        _set("stages", "lint", "imgae", value="node:20"),
        "stages.lint.imgae",
        "unknown key",
        id="unknown-nested-key",
    ),
    pytest.param(_set("stages", "deploy_moon", value={}), "stages.deploy_moon", "lint", id="unknown-stage"),
    pytest.param(_delete("approvers"), "approvers", "required key is missing", id="missing-required"),
    pytest.param(_set("approvers", value=[]), "approvers", "at least 1", id="no-approvers"),
    pytest.param(_set("approval_timeout", value="soon"), "approval_timeout", "'soon'", id="bad-duration"),
    pytest.param(
        _set("stages", "build", value={"resources": {"memory": "lots"}}),
        "stages.build.resources.memory",
        "not a Kubernetes quantity",
        id="bad-quantity",
    ),
    pytest.param(_set("toolchain", value="gradle"), "toolchain", "'npm', 'maven' or 'python'", id="bad-enum"),
    pytest.param(_set("name", value="Visiobook_Web"), "name", "not a valid name", id="bad-name"),
    pytest.param(
        _set("name", value="visiobook-webapp"), "name", "must match the file name", id="name-file-mismatch"
    ),
    pytest.param(
        _set("repo", "full_name", value="not a repo"), "repo.full_name", "owner/name", id="bad-repo-full-name"
    ),
    pytest.param(
        _set("environments", "production", "verify", "checks", value=[{"name": "x", "query": "up"}]),
        "environments.production.verify.checks[0]",
        "needs 'min', 'max' or both",
        id="check-without-threshold",
    ),
    pytest.param(
        _set("min_coverage", value=140), "min_coverage", "less than or equal to 100", id="out-of-range"
    ),
    pytest.param(_set("kind", value="ai"), "(top level)", "needs a 'gpu' section", id="ai-without-gpu"),
    pytest.param(
        _set("stages", "gpu_benchmark", value={}),
        "(top level)",
        "need a 'gpu' section",
        id="gpu-stage-without-gpu",
    ),
    pytest.param(
        _set("environments", "staging", "local_port", value=18082),
        "environments.staging.local_port",
        "used by visiobook-api/staging",
        id="port-clash",
    ),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD_SERVICE_EDITS)
def test_bad_service_names_file_service_and_field(
    catalog_copy: Path, change, field: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    path = _edit(catalog_copy, "visiobook-web", change)
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(catalog_copy)
    text = str(excinfo.value)
    assert str(path) in text
    assert "visiobook-web" in text
    assert f"field {field!r}" in text
    assert message in text


def test_non_strict_mode_keeps_the_good_services(catalog_copy: Path) -> None:
    _edit(catalog_copy, "visiobook-web", _set("colour", value="blue"))
    catalog, issues = load_catalog(catalog_copy, strict=False)
    assert set(catalog.services) == {"visiobook-api", "visiobook-inference"}
    assert [(i.service, i.field) for i in issues] == [("visiobook-web", "colour")]


def test_a_worker_reads_only_the_service_file_of_the_dag_it_runs(catalog_copy: Path) -> None:
    _edit(catalog_copy, "visiobook-web", _set("colour", value="blue"))  # not read for the API's DAGs
    for dag_id in ("deliver_visiobook_api", "rollback_visiobook_api", "nightly_visiobook_api"):
        catalog, issues = load_catalog(catalog_copy, dag_id=dag_id)
        assert set(catalog.services) == {"visiobook-api"}, dag_id
        assert issues == []
    with pytest.raises(CatalogError, match="colour"):
        load_catalog(catalog_copy, dag_id="deliver_visiobook_web")
    # A DAG no service has (another DAG file's): the whole catalog, as without a DAG.
    catalog, issues = load_catalog(catalog_copy, strict=False, dag_id="poll_visiobook_api")
    assert set(catalog.services) == {"visiobook-api", "visiobook-inference"}
    assert [(i.service, i.field) for i in issues] == [("visiobook-web", "colour")]


def test_every_problem_is_listed_not_just_the_first(catalog_copy: Path) -> None:
    _edit(catalog_copy, "visiobook-web", _set("colour", value="blue"))
    _edit(catalog_copy, "visiobook-api", _set("approval_timeout", value="never"))
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(catalog_copy)
    assert {(i.service, i.field) for i in excinfo.value.issues} == {
        ("visiobook-web", "colour"),
        ("visiobook-api", "approval_timeout"),
    }


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        pytest.param("name: [unclosed\n", "(file)", "is not valid YAML at line", id="invalid-yaml"),
        pytest.param("- a\n- b\n", "(top level)", "expected a mapping, got list", id="not-a-mapping"),
        pytest.param("", "(top level)", "expected a mapping, got empty", id="empty-file"),
    ],
)
def test_unreadable_service_file(catalog_copy: Path, content: str, field: str, message: str) -> None:
    path = catalog_copy / "services" / "broken.yaml"
    path.write_text(content)
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(catalog_copy)
    assert f"{path}: service 'broken', field {field!r}: {message}" in str(excinfo.value)


def test_duplicate_service_in_two_files(catalog_copy: Path) -> None:
    (catalog_copy / "services" / "visiobook-web.yml").write_text(
        (catalog_copy / "services" / "visiobook-web.yaml").read_text()
    )
    with pytest.raises(
        CatalogError, match=r"visiobook-web.yml: service 'visiobook-web', field 'name': is already defined in"
    ):
        load_catalog(catalog_copy)


@pytest.mark.parametrize(
    ("platform", "field", "message"),
    [
        pytest.param(
            {"platform": {"gitops": {"repo_url": "x"}, "regsitry": "r"}},
            "platform.regsitry",
            "unknown key",
            id="typo",
        ),
        pytest.param({"platform": {}}, "platform.gitops", "required key is missing", id="missing-gitops"),
        pytest.param(
            {"platform": {"gitops": {"repo_url": "x"}, "profile": "cloud"}},
            "platform.profile",
            "'kubernetes' or 'local'",
            id="bad-profile",
        ),
        pytest.param({"platfrom": {}}, "platfrom", "unknown key", id="bad-top-level"),
    ],
)
def test_bad_platform(catalog_copy: Path, platform: dict, field: str, message: str) -> None:  # type: ignore[type-arg]
    path = catalog_copy / "platform.yaml"
    path.write_text(yaml.safe_dump(platform))
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(catalog_copy, strict=False)
    text = str(excinfo.value)
    assert f"{path}: field {field!r}" in text and message in text


def test_missing_catalog_folder(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="catalog folder does not exist"):
        load_catalog(tmp_path / "nope")


def test_cli_validate_and_render(capsys: pytest.CaptureFixture[str], catalog_copy: Path) -> None:
    from delivery.cli import main

    assert main(["--catalog", str(catalog_copy), "validate"]) == 0
    assert "catalog is valid: 3 services" in capsys.readouterr().out
    assert (
        main(["--catalog", str(catalog_copy), "render", "visiobook-inference", "gpu_benchmark", "--validate"])
        == 0
    )
    pod = yaml.safe_load(capsys.readouterr().out)
    assert pod["kind"] == "Pod"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert main(["--catalog", str(catalog_copy), "render", "visiobook-api", "gpu_benchmark"]) == 2
    assert "has no stage 'gpu_benchmark'" in capsys.readouterr().err
    _edit(catalog_copy, "visiobook-web", _set("colour", value="blue"))
    assert main(["--catalog", str(catalog_copy), "validate"]) == 1
    assert "field 'colour': unknown key" in capsys.readouterr().err
