"""Typed, validated models of the service catalog.

Every model forbids unknown keys (``extra="forbid"``), so a typo in the YAML is
an error instead of a silently ignored setting. The loader
(:mod:`delivery.catalog.loader`) turns pydantic's errors into
:class:`~delivery.catalog.errors.CatalogError` messages that name the file, the
service and the field.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from delivery.catalog.fields import DnsLabel, Duration, Quantity


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Profile(StrEnum):
    """Where stages run and where releases go. See :mod:`delivery.profiles`."""

    KUBERNETES = "kubernetes"
    LOCAL = "local"


class Toolchain(StrEnum):
    NPM = "npm"
    MAVEN = "maven"
    PYTHON = "python"


class ServiceKind(StrEnum):
    WEB = "web"  # serves a web UI: gets an OWASP ZAP baseline scan
    API = "api"
    AI = "ai"  # model inference


class Stage(StrEnum):
    """Every container stage a service can configure, in seed order (flows 1, 2 and 4)."""

    LINT = "lint"
    QUALITY_SCAN = "quality_scan"
    DEPENDENCY_AUDIT = "dependency_audit"
    SAST = "sast"
    DAST = "dast"
    HELM_VALIDATE = "helm_validate"
    BUILD = "build"
    UNIT_TESTS = "unit_tests"
    INTEGRATION_TESTS = "integration_tests"
    COVERAGE = "coverage"
    IMAGE_BUILD = "image_build"
    IMAGE_SCAN = "image_scan"
    IMAGE_PUSH = "image_push"
    GPU_INFERENCE = "gpu_inference"
    GPU_BENCHMARK = "gpu_benchmark"
    STAGING_TESTS = "staging_tests"


GPU_STAGES = frozenset({Stage.GPU_INFERENCE, Stage.GPU_BENCHMARK})


class Resources(StrictModel):
    """Requests and limits of a stage's container, as Kubernetes quantities."""

    cpu: Quantity = "500m"
    memory: Quantity = "1Gi"
    cpu_limit: Quantity | None = None
    memory_limit: Quantity | None = None
    ephemeral_storage: Quantity | None = None


class ServiceContainer(StrictModel):
    """A helper container next to a stage, such as the test database of integration tests.

    In Kubernetes it becomes a native sidecar (an init container with
    ``restartPolicy: Always``) whose readiness command gates the stage; locally
    it is a container on the host network.
    """

    name: DnsLabel
    image: str
    env: dict[str, str] = Field(default_factory=dict)
    port: int = Field(ge=1, le=65535)
    command: list[str] | None = Field(default=None, description="Overrides the image's entrypoint.")
    mount_workspace: bool = Field(default=False, description="Mount the run's checkout at /workspace.")
    ready_command: list[str] = Field(min_length=1)
    resources: Resources = Resources(cpu="250m", memory="512Mi")


class StageSpec(StrictModel):
    """One container stage. Fields left out come from the toolchain's defaults."""

    enabled: bool = True
    image: str | None = None
    command: str | None = Field(default=None, description="A POSIX shell script, run in the checkout.")
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, str] = Field(
        default_factory=dict,
        description="Env var -> 'secret-name/key'. Values never appear in the catalog or in logs.",
    )
    resources: Resources | None = None
    timeout: Duration | None = None
    retries: int | None = Field(default=None, ge=0, le=10)
    services: list[ServiceContainer] | None = None


class GpuBudgets(StrictModel):
    """What the GPU benchmark must achieve. A budget left out is not checked."""

    max_p95_latency_ms: float | None = Field(default=None, gt=0)
    min_throughput_per_s: float | None = Field(default=None, gt=0)
    max_memory_mb: float | None = Field(default=None, gt=0)
    max_temperature_c: float | None = Field(default=None, gt=0)


class GpuSpec(StrictModel):
    """The GPU needs of an AI service (seed flow 4)."""

    required: bool = True
    count: int = Field(default=1, ge=1, le=16)
    product: str | None = Field(
        default=None,
        description="GPU model, matched on the node label nvidia.com/gpu.product (e.g. NVIDIA-H100-80GB-HBM3).",
    )
    shm_size: Quantity = "8Gi"
    on_missing_gpu: Literal["skip", "fail"] = Field(
        default="fail",
        description="Without a GPU (local profile, CI): 'skip' ends GPU stages as skipped with the "
        "reason; 'fail' fails them. Never a silent pass.",
    )
    allow_cpu_fallback: bool = Field(
        default=False, description="Run the GPU harness on the CPU where no GPU exists."
    )
    model: str = Field(
        default="delivery.gpu.demo_model:build", description="module:factory returning the model."
    )
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32], min_length=1)
    budgets: GpuBudgets = GpuBudgets()
    inference_latency_budget_ms: float | None = Field(
        default=None, gt=0, description="Budget for the deployed inference endpoint's latency."
    )


class RepoSpec(StrictModel):
    """Which repository triggers the service, and which changes count."""

    url: str
    full_name: str | None = Field(default=None, description="owner/name on GitHub, used to route webhooks.")
    release_branch: str = "main"
    branches: list[str] = Field(default_factory=lambda: ["main"], description="Branch globs that run CI.")
    tags: list[str] = Field(default_factory=lambda: ["v*"], description="Tag globs that are releases.")
    paths: list[str] = Field(default_factory=lambda: ["**"], description="Path globs of this service.")

    @field_validator("full_name")
    @classmethod
    def _full_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", value):
            raise ValueError(f"{value!r} is not an 'owner/name' repository name")
        return value

    def matches_branch(self, branch: str) -> bool:
        return any(fnmatch.fnmatchcase(branch, pattern) for pattern in self.branches)

    def matches_tag(self, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.tags)

    def matches_path(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, pattern) or pattern == "**" for pattern in self.paths)


class ImageSpec(StrictModel):
    repository: str = Field(description="Image repository without the registry, e.g. visiobook/web.")
    dockerfile: str = "Dockerfile"
    context: str = "."
    build_args: dict[str, str] = Field(default_factory=dict)


QUERY_PLACEHOLDERS: tuple[str, ...] = ("service", "environment", "namespace")
"""The names a verification query may use as ``{{ name }}`` (plain text substitution, never Jinja)."""
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Kubernetes-style names (DNS labels, plus "." and "_"): nothing that could close a PromQL string.
_SAFE_VALUE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_CHECK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def render_query(template: str, variables: Mapping[str, str | None]) -> str:
    """Substitute ``{{ service }}``, ``{{ environment }}`` and ``{{ namespace }}`` in a PromQL query.

    This is not Jinja: only those names are known, an unknown or unset name is an error, and a
    value must look like a Kubernetes name (letters, digits, ``.``, ``_``, ``-``), so that it
    cannot break out of a PromQL string literal.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in QUERY_PLACEHOLDERS:
            raise ValueError(
                f'query placeholder "{{{{ {name} }}}}" is unknown: use one of {list(QUERY_PLACEHOLDERS)}'
            )
        value = variables.get(name)
        if value is None or value == "":
            raise ValueError(f'query uses "{{{{ {name} }}}}" but no {name} was given')
        if not _SAFE_VALUE_RE.match(str(value)):
            raise ValueError(
                f'{name} "{value}" cannot go into a query: use letters, digits, ".", "_" or "-" only'
            )
        return str(value)

    rendered = _PLACEHOLDER_RE.sub(substitute, template)
    if "{{" in rendered or "}}" in rendered:
        raise ValueError(f'query "{template}" has a malformed placeholder: write "{{{{ service }}}}"')
    return rendered


class Check(StrictModel):
    """One PromQL check of a verification, in the style of an Argo Rollouts metric.

    Every series the query returns must stay within [min, max] (each bound optional, at least one
    given). The query may use {{ service }}, {{ environment }} and {{ namespace }}.
    """

    name: str
    query: str
    min: float | None = None
    max: float | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _CHECK_NAME_RE.match(value):
            raise ValueError(
                f"check name {value!r} should start with a letter and hold only letters, digits, "
                "'_', '.' or '-'"
            )
        return value

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty query: write the PromQL expression to measure")
        render_query(value, dict.fromkeys(QUERY_PLACEHOLDERS, "x"))  # unknown or malformed placeholders
        return value

    @field_validator("min", "max")
    @classmethod
    def _bound(cls, value: float | None) -> float | None:
        if value is not None and math.isnan(value):
            raise ValueError("a bound should be a number, not NaN")
        return value

    @model_validator(mode="after")
    def _has_threshold(self) -> Check:
        if self.min is None and self.max is None:
            raise ValueError(
                f"check {self.name!r} needs 'min', 'max' or both: a check without bounds never fails"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"check {self.name!r}: min {self.min:g} is greater than max {self.max:g}")
        return self

    def render(self, variables: Mapping[str, str | None]) -> Check:
        """A copy whose query has its placeholders substituted (see :func:`render_query`)."""
        return self.model_copy(update={"query": render_query(self.query, variables)})


class VerifySpec(StrictModel):
    """Production verification: count measurements of every check, interval apart.

    The analysis fails once more measurements failed than failure_limit, is inconclusive once more
    were inconclusive than inconclusive_limit (then on_inconclusive decides), and succeeds
    otherwise. An environment without checks is verified by its health check alone.
    """

    interval: Duration = timedelta(seconds=30)
    count: StrictInt = Field(default=5, ge=1)
    failure_limit: StrictInt = Field(default=1, ge=0)
    inconclusive_limit: StrictInt = Field(default=1, ge=0)
    on_inconclusive: Literal["hold", "fail", "pass"] = "hold"
    checks: list[Check] = Field(default_factory=list)

    @field_validator("checks")
    @classmethod
    def _unique_names(cls, checks: list[Check]) -> list[Check]:
        names = [check.name for check in checks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"check names should be unique; repeated: {repeated}")
        return checks

    def render(self, variables: Mapping[str, str | None]) -> VerifySpec:
        """A copy whose queries have their placeholders substituted (values are checked here)."""
        return self.model_copy(update={"checks": [check.render(variables) for check in self.checks]})


class EnvironmentSpec(StrictModel):
    namespace: DnsLabel
    url: str = Field(description="Base URL of the service in this environment.")
    health_path: str = "/health"
    values_path: str = Field(description="Helm values file of this environment in the GitOps repo.")
    argocd_app: str
    argocd_project: DnsLabel | None = Field(
        default=None,
        description="Argo CD project of argocd_app, sent with every Argo CD call: a missing application is "
        "then reported as not found (without it Argo CD answers 403 permission denied). See docs/argocd.md.",
    )
    argocd_app_namespace: DnsLabel | None = Field(
        default=None,
        description="Namespace of the Application object when it is not Argo CD's own (apps in any namespace).",
    )
    local_port: int = Field(default=0, ge=0, le=65535, description="Host port for the local docker target.")
    health_timeout: Duration = timedelta(minutes=10)
    verify: VerifySpec | None = None


class Environments(StrictModel):
    staging: EnvironmentSpec
    production: EnvironmentSpec


class Severity(StrEnum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


class NotificationRoute(StrictModel):
    """Destinations of one severity."""

    slack_channels: list[str] = Field(default_factory=list)
    pagerduty: bool = False
    email: list[str] = Field(default_factory=list)


class NotificationRouting(StrictModel):
    P1: NotificationRoute | None = None
    P2: NotificationRoute | None = None
    P3: NotificationRoute | None = None


class Service(StrictModel):
    """One deliverable service of the catalog."""

    name: DnsLabel
    description: str = ""
    team: str = ""
    kind: ServiceKind
    toolchain: Toolchain
    repo: RepoSpec
    image: ImageSpec
    stages: dict[Stage, StageSpec] = Field(default_factory=dict)
    gpu: GpuSpec | None = None
    sonar_project_key: str | None = None
    min_coverage: float = Field(default=80.0, ge=0, le=100)
    approvers: list[str] = Field(min_length=1, description="Users who may approve production.")
    approval_timeout: Duration = timedelta(hours=24)
    four_eyes: bool = Field(
        default=True,
        description="The author of a commit being released cannot approve it for production.",
    )
    break_glass_approvers: list[str] = Field(
        default_factory=list,
        description="Users who may deploy to production without the normal approval in an emergency "
        "('Break glass' at the approval, with a mandatory reason): it pages (P1) and is recorded in the "
        "GitOps commit.",
    )
    migrations: bool = Field(default=False, description="Releases may carry database migrations.")
    schedule: str | None = Field(
        default=None, description="Cron of a nightly variant that builds the branch head."
    )
    environments: Environments
    notifications: NotificationRouting = NotificationRouting()

    @model_validator(mode="after")
    def _gpu_consistency(self) -> Service:
        gpu_stages = sorted(s.value for s in self.stages if s in GPU_STAGES)
        if self.kind is ServiceKind.AI and self.gpu is None:
            raise ValueError("an 'ai' service needs a 'gpu' section (use required: false for CPU models)")
        if gpu_stages and self.gpu is None:
            raise ValueError(f"stages {gpu_stages} need a 'gpu' section")
        return self

    @property
    def needs_gpu(self) -> bool:
        return self.gpu is not None

    @property
    def dag_id(self) -> str:
        return "deliver_" + self.name.replace("-", "_")

    @property
    def rollback_dag_id(self) -> str:
        return "rollback_" + self.name.replace("-", "_")

    @property
    def nightly_dag_id(self) -> str:
        return "nightly_" + self.name.replace("-", "_")


class GpuNodes(StrictModel):
    """How GPU pods reach GPU nodes in the cluster."""

    resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    product_label: str = "nvidia.com/gpu.product"
    tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    runtime_class_name: str | None = None


class ToolImages(StrictModel):
    """Container images of the platform's own tools (pin them by digest in production)."""

    git: str = "alpine/git:2.47.2"
    helm: str = "alpine/helm:3.16.4"
    semgrep: str = "semgrep/semgrep:1.99.0"
    zap: str = "ghcr.io/zaproxy/zaproxy:2.16.0"
    sonar_scanner: str = "sonarsource/sonar-scanner-cli:11.1"
    kaniko: str = "gcr.io/kaniko-project/executor:v1.23.2"
    trivy: str = "aquasec/trivy:0.58.1"
    crane: str = "gcr.io/go-containerregistry/crane:v0.20.2"
    postgres: str = "postgres:16-alpine"
    node: str = "node:20-bookworm"
    maven: str = "maven:3.9-eclipse-temurin-21"
    python: str = "python:3.11-slim-bookworm"
    gpu_python: str = "nvcr.io/nvidia/pytorch:24.10-py3"


class KubernetesPlatform(StrictModel):
    namespace: DnsLabel = "visiobook-ci"
    service_account: str = "delivery-runner"
    in_cluster: bool = True
    kubernetes_conn_id: str | None = None
    workspace_pvc: str = Field(
        default="delivery-workspaces",
        description="ReadWriteMany claim holding one workspace per run (subPath <dag>/<run>).",
    )
    git_credentials_secret: str | None = "git-credentials"
    registry_credentials_secret: str | None = "registry-credentials"
    image_pull_secrets: list[str] = Field(default_factory=list)
    startup_timeout: Duration = timedelta(minutes=10)
    gpu: GpuNodes = GpuNodes()
    tools: ToolImages = ToolImages()


class LocalPlatform(StrictModel):
    runner: Literal["shell", "docker"] = Field(
        default="shell",
        description="shell: the host's toolchains run each stage; docker: each stage runs in its catalog "
        "image on the local Docker engine (DockerOperator), GPU stages with a GPU device request.",
    )
    workspace_root: str = Field(default=".local/workspaces", description="Relative to the project root.")
    registry: str = "127.0.0.1:5000"
    gitops_repo: str = Field(default=".local/gitops.git", description="A local bare repo.")
    repos_root: str = Field(default=".local/repos", description="Where the demo services' repos live.")
    base_image: str = "visiobook/python-base:bookworm"
    stage_timeout: Duration = timedelta(minutes=20)
    keep_failed_workspaces: Duration = Field(
        default=timedelta(hours=24),
        description="How long the checkout of a failed run is kept for inspection; a later run removes "
        "it after that. A successful run's checkout is removed when the run ends.",
    )


class Connections(StrictModel):
    """Airflow connection ids. Secrets live in the connections, never in the catalog."""

    slack: str = Field(default="slack_delivery", description="Incoming webhook: task failure messages.")
    slack_api: str = Field(
        default="slack_api", description="Slack Web API (bot token): severity-routed channels."
    )
    pagerduty: str = "pagerduty_default"
    smtp: str = "smtp_default"
    argocd: str = "argocd_default"
    prometheus: str = "prometheus_default"
    sonarqube: str = "sonarqube_default"
    github_webhook_secret: str = "github_webhook"
    alertmanager_webhook: str = "alertmanager_webhook"
    gitops: str = "gitops_default"
    airflow_api: str = Field(
        default="airflow_api",
        description="Airflow's own REST API (host, login, password of a read-only account): the production "
        "deploy reads the approval's recorded answer and the audit log from it.",
    )


class Queues(StrictModel):
    """Executor queues (Celery): where each kind of task runs. The LocalExecutor ignores them."""

    default: str = Field(default="default", description="Every task that is not a GPU stage.")
    gpu: str = Field(
        default="gpu",
        description="GPU stages (inference tests, benchmark); in the kubernetes profile, the worker that "
        "launches and watches their pods.",
    )


class GitOpsSpec(StrictModel):
    repo_url: str
    branch: str = "main"


class Platform(StrictModel):
    """The platform around the services: one per catalog (``platform.yaml``)."""

    identities: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Airflow user -> the git author e-mails or names that are the same person (four eyes). "
        "Without an entry, a user is the author whose e-mail local part or name equals the user name.",
    )
    profile: Profile = Profile.KUBERNETES
    registry: str = "registry.visiobook.io"
    gitops: GitOpsSpec
    airflow_base_url: str = "http://localhost:8080"
    connections: Connections = Connections()
    queues: Queues = Queues()
    kubernetes: KubernetesPlatform = KubernetesPlatform()
    local: LocalPlatform = LocalPlatform()
    notifications: NotificationRouting = NotificationRouting(
        P1=NotificationRoute(slack_channels=["#critical-alerts"], pagerduty=True),
        P2=NotificationRoute(slack_channels=["#alerts"], email=["oncall@visiobook.io"]),
        P3=NotificationRoute(slack_channels=["#monitoring"]),
    )


class Catalog(StrictModel):
    platform: Platform
    services: dict[str, Service]
    sources: dict[str, str] = Field(default_factory=dict, description="service name -> file it came from")

    def service(self, name: str) -> Service:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise KeyError(f"no service {name!r} in the catalog (known: {known})") from None
