"""``delivery-catalog``: validate the catalog, export its schema, show plans and pods.

python -m delivery.cli validate [--catalog DIR]
python -m delivery.cli render SERVICE STAGE [--sha SHA] [--ref REF]
python -m delivery.cli plan SERVICE
python -m delivery.cli schema [--check]
python -m delivery.cli pools > pools.json && airflow pools import pools.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import yaml

from delivery.catalog import Catalog, CatalogError, Stage, load_catalog
from delivery.catalog.schema import SCHEMA_DIR, platform_schema, service_schema, write_schemas
from delivery.catalog.toolchains import resolve_stages
from delivery.pipeline.plan import build_plan, deploy_pool


def _validate(args: argparse.Namespace) -> int:
    try:
        catalog, _ = load_catalog(args.catalog, strict=True)
    except CatalogError as exc:
        print(exc, file=sys.stderr)
        return 1
    for name, service in sorted(catalog.services.items()):
        try:
            stages = resolve_stages(service, catalog.platform)
            plan = build_plan(service)
        except ValueError as exc:
            print(f"{catalog.sources[name]}: {exc}", file=sys.stderr)
            return 1
        print(
            f"ok  {name:<28} {len(stages):>2} stages, {len(plan.steps):>2} steps  ({catalog.sources[name]})"
        )
    print(f"catalog is valid: {len(catalog.services)} services")
    return 0


def _render(args: argparse.Namespace) -> int:
    from delivery.profiles.kubernetes.pods import render_pod  # noqa: PLC0415 the kubernetes client: render only

    catalog, _ = load_catalog(args.catalog, strict=True)
    try:
        service = catalog.service(args.service)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    stages = resolve_stages(service, catalog.platform)
    try:
        stage = stages[Stage(args.stage)]
    except (ValueError, KeyError):
        known = ", ".join(s.value for s in stages)
        print(f"service {service.name!r} has no stage {args.stage!r} (its stages: {known})", file=sys.stderr)
        return 2
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure YAML: operator logs go to stderr
        pod = render_pod(service=service, platform=catalog.platform, stage=stage, sha=args.sha, ref=args.ref)
    if args.validate:
        import kubernetes_validate  # noqa: PLC0415 a dev requirement: only with --validate

        kubernetes_validate.validate(pod, args.kubernetes_version, strict=True)
    sys.stdout.write(yaml.safe_dump(pod, sort_keys=False))
    return 0


def _plan(args: argparse.Namespace) -> int:
    catalog, _ = load_catalog(args.catalog, strict=True)
    plan = build_plan(catalog.service(args.service))
    for step in plan.steps:
        after = ", ".join(step.upstream) or "-"
        rule = "" if step.trigger_rule.value == "all_success" else f"  [{step.trigger_rule.value}]"
        print(f"{step.task_id:<36} {step.kind.value:<16} after: {after}{rule}")
    return 0


def deploy_pools(catalog: Catalog) -> dict[str, dict[str, object]]:
    """The one-slot pools that serialise each service's deploy sections, as ``airflow pools import`` reads them."""
    return {
        deploy_pool(name, environment): {
            "slots": 1,
            "description": f"one deploy section of {name} in {environment} at a time",
            "include_deferred": True,
        }
        for name in sorted(catalog.services)
        for environment in ("staging", "production")
    }


def _pools(args: argparse.Namespace) -> int:
    catalog, _ = load_catalog(args.catalog, strict=True)
    print(json.dumps(deploy_pools(catalog), indent=2))
    return 0


def _schema(args: argparse.Namespace) -> int:
    if args.check:
        stale = []
        for name, schema in (("catalog-service", service_schema()), ("catalog-platform", platform_schema())):
            path = SCHEMA_DIR / f"{name}.schema.json"
            if not path.is_file() or json.loads(path.read_text()) != schema:
                stale.append(str(path))
        if stale:
            print(
                "stale JSON Schema, run `python -m delivery.cli schema`: " + ", ".join(stale), file=sys.stderr
            )
            return 1
        print("JSON Schemas are up to date")
        return 0
    for path in write_schemas():
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="delivery-catalog", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--catalog", type=Path, default=None, help="catalog folder (default: include/catalog)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="validate every catalog file; lists every problem").set_defaults(
        func=_validate
    )
    render = sub.add_parser("render", help="print the rendered pod YAML of a service's stage")
    render.add_argument("service")
    render.add_argument("stage")
    render.add_argument("--sha", default="0" * 40)
    render.add_argument("--ref", default="main")
    render.add_argument(
        "--validate", action="store_true", help="check it against the Kubernetes schema (strict)"
    )
    render.add_argument("--kubernetes-version", default="1.33")
    render.set_defaults(func=_render)
    plan = sub.add_parser("plan", help="print the step graph of a service")
    plan.add_argument("service")
    plan.set_defaults(func=_plan)
    pools = sub.add_parser("pools", help="print the deploy pools of the catalog (for `airflow pools import`)")
    pools.set_defaults(func=_pools)
    schema = sub.add_parser("schema", help="write include/schemas/*.schema.json")
    schema.add_argument("--check", action="store_true", help="fail if the committed schemas are stale")
    schema.set_defaults(func=_schema)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
