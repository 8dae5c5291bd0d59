"""Structural check of a Helm chart where the ``helm`` binary is not installed (local profile).

    python -m delivery.profiles.local.chartcheck CHART_DIR [VALUES_FILE ...]

Uses ``helm lint --strict`` and ``helm template`` when ``helm`` is on PATH.
Otherwise it checks what can be checked without Helm: ``Chart.yaml`` (apiVersion
v2, name, SemVer version), that ``values.yaml`` and every environment values
file parse as YAML mappings with ``image.repository`` and ``image.tag``, and
that every template has balanced ``{{ }}`` delimiters. Every problem is listed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


def check(chart: Path, values_files: list[Path]) -> list[str]:
    problems: list[str] = []
    chart_file = chart / "Chart.yaml"
    try:
        meta = yaml.safe_load(chart_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return [f"{chart_file}: {exc}"]
    if not isinstance(meta, dict):
        return [f"{chart_file}: not a mapping"]
    if meta.get("apiVersion") != "v2":
        problems.append(f"{chart_file}: apiVersion must be v2, got {meta.get('apiVersion')!r}")
    if not meta.get("name"):
        problems.append(f"{chart_file}: name is missing")
    if not SEMVER.match(str(meta.get("version", ""))):
        problems.append(f"{chart_file}: version {meta.get('version')!r} is not SemVer")
    for path in [chart / "values.yaml", *values_files]:
        try:
            values = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        image = values.get("image") if isinstance(values, dict) else None
        if not isinstance(image, dict) or "repository" not in image or "tag" not in image:
            problems.append(f"{path}: needs image.repository and image.tag")
    templates = sorted((chart / "templates").glob("*.yaml")) + sorted((chart / "templates").glob("*.tpl"))
    if not templates:
        problems.append(f"{chart / 'templates'}: no templates")
    for template in templates:
        text = template.read_text()
        if text.count("{{") != text.count("}}"):
            problems.append(f"{template}: unbalanced '{{{{' and '}}}}'")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    chart, values_files = Path(args[0]), [Path(a) for a in args[1:]]
    if shutil.which("helm"):
        commands = [["helm", "lint", "--strict", str(chart)]]
        commands += [["helm", "template", "check", str(chart), "-f", str(v)] for v in values_files]
        for command in commands:
            if subprocess.run(command, stdout=subprocess.DEVNULL, check=False).returncode != 0:
                print(f"failed: {' '.join(command)}", file=sys.stderr)
                return 1
        print(f"helm lint and template passed for {chart}")
        return 0
    problems = check(chart, values_files)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(
        f"chart {chart} is well-formed ({len(values_files)} values files; helm not installed, structural check)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
