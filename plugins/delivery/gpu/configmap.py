"""Ship the GPU harness into the GPU stage's pod as a ConfigMap.

The service's image (a CUDA/PyTorch base plus the service) does not contain the
``delivery`` package, yet the ``gpu_benchmark`` stage runs
``python -m delivery.gpu.harness``. The harness and the demo model need only
the standard library and torch, so their source files travel in one ConfigMap,
``delivery-gpu-harness``, mounted read-only at ``/opt/delivery``:

```
/opt/delivery/delivery/__init__.py          (an empty package marker)
/opt/delivery/delivery/gpu/__init__.py
/opt/delivery/delivery/gpu/harness/*.py     (the harness package: __init__, __main__, cli, probe, ...)
/opt/delivery/delivery/gpu/demo_model.py
/opt/delivery/delivery/gpu/result.schema.json
```

and ``PYTHONPATH=/opt/delivery`` in the container. Create or update it (same
namespace as the stage pods) whenever the harness changes:

```bash
PYTHONPATH=plugins python -m delivery.gpu.configmap > cm.yaml
kubectl apply -f cm.yaml
```

The ConfigMap carries a ``delivery.visiobook.io/harness-sha256`` annotation (a
digest of its files), to see which harness a cluster runs.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import models as k8s

from delivery.catalog import load_catalog

__all__ = [
    "CONFIGMAP_NAME",
    "HARNESS_FILES",
    "MOUNT_PATH",
    "PYTHONPATH",
    "VOLUME_NAME",
    "harness_env",
    "harness_files",
    "harness_volume",
    "main",
    "render_configmap",
    "render_yaml",
]

CONFIGMAP_NAME = "delivery-gpu-harness"
VOLUME_NAME = "delivery-gpu-harness"
MOUNT_PATH = "/opt/delivery"
PYTHONPATH = MOUNT_PATH
LABEL_PREFIX = "delivery.visiobook.io"

_GPU_DIR = Path(__file__).resolve().parent
_PACKAGE_MARKER = (
    '"""The part of the delivery package shipped into GPU stage pods (harness and demo model)."""\n'
)


def _shipped_paths() -> list[str]:
    """Paths under the mount: the package markers, every module of the harness package, the rest."""
    harness = sorted(f"delivery/gpu/harness/{module.name}" for module in (_GPU_DIR / "harness").glob("*.py"))
    return [
        "delivery/__init__.py",
        "delivery/gpu/__init__.py",
        *harness,
        "delivery/gpu/demo_model.py",
        "delivery/gpu/result.schema.json",
    ]


HARNESS_FILES: dict[str, str] = {path.replace("/", "."): path for path in _shipped_paths()}
"""ConfigMap key -> path under the mount (a ConfigMap key cannot hold a ``/``). These are all the files
``python -m delivery.gpu.harness`` imports: nothing else of the project."""


def harness_files() -> dict[str, str]:
    """ConfigMap key -> file content. ``delivery/__init__.py`` is a bare marker, the rest are the sources."""
    files: dict[str, str] = {}
    for key, path in HARNESS_FILES.items():
        if path == "delivery/__init__.py":
            files[key] = _PACKAGE_MARKER
        else:
            files[key] = (_GPU_DIR / Path(path).relative_to("delivery/gpu")).read_text(encoding="utf-8")
    return files


def _digest(files: dict[str, str]) -> str:
    sha = hashlib.sha256()
    for key in sorted(files):
        sha.update(key.encode())
        sha.update(b"\0")
        sha.update(files[key].encode())
        sha.update(b"\0")
    return sha.hexdigest()


def render_configmap(*, namespace: str | None = None) -> dict[str, Any]:
    """The ``v1 ConfigMap`` (a dict, as ``kubectl apply`` takes it)."""
    files = harness_files()
    metadata: dict[str, Any] = {
        "name": CONFIGMAP_NAME,
        "labels": {
            "app.kubernetes.io/part-of": "visiobook-delivery",
            "app.kubernetes.io/component": "gpu-harness",
        },
        "annotations": {f"{LABEL_PREFIX}/harness-sha256": _digest(files)},
    }
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": files}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the sources) as literal blocks, so the YAML reads like the files."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def render_yaml(*, namespace: str | None = None) -> str:
    """The ConfigMap as YAML (``kubectl apply -f``)."""
    return yaml.dump(
        render_configmap(namespace=namespace), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096
    )


def harness_volume() -> tuple[k8s.V1Volume, k8s.V1VolumeMount]:
    """The pod volume of the ConfigMap (files at their package paths) and its read-only mount."""
    volume = k8s.V1Volume(
        name=VOLUME_NAME,
        config_map=k8s.V1ConfigMapVolumeSource(
            name=CONFIGMAP_NAME,
            items=[k8s.V1KeyToPath(key=key, path=path) for key, path in HARNESS_FILES.items()],
        ),
    )
    mount = k8s.V1VolumeMount(name=VOLUME_NAME, mount_path=MOUNT_PATH, read_only=True)
    return volume, mount


def harness_env() -> dict[str, str]:
    """The environment that makes ``python -m delivery.gpu.harness`` find the mounted package."""
    return {"PYTHONPATH": PYTHONPATH}


def _default_namespace() -> str | None:
    try:
        catalog, _ = load_catalog()
    except Exception:  # the catalog is optional here: kubectl -n then decides
        return None
    return catalog.platform.kubernetes.namespace


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m delivery.gpu.configmap",
        description=f"Print the ConfigMap {CONFIGMAP_NAME!r} (GPU harness sources) as YAML for kubectl apply -f.",
    )
    parser.add_argument(
        "--namespace",
        help="namespace of the stage pods (default: the catalog's platform.kubernetes.namespace)",
    )
    parser.add_argument(
        "--no-namespace",
        action="store_true",
        help="leave metadata.namespace out (kubectl apply -n NS decides)",
    )
    args = parser.parse_args(argv)
    namespace = None if args.no_namespace else (args.namespace or _default_namespace())
    sys.stdout.write(render_yaml(namespace=namespace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
