"""Default stage specs per toolchain, and the merge with a service's overrides.

A service's catalog entry only says what differs from its toolchain's
defaults. :func:`resolve_stages` returns the effective, complete spec of every
enabled stage; both runners (Kubernetes pods and local shells) consume it.

Commands are POSIX shell scripts run in the checkout. They can use:

``DELIVERY_SERVICE``, ``DELIVERY_SHA``, ``DELIVERY_REF``, ``DELIVERY_BRANCH``,
``DELIVERY_RUN_ID``, ``DELIVERY_WORKSPACE``, ``IMAGE`` (registry/repository),
``IMAGE_TAGS`` (space separated), ``MIN_COVERAGE``, ``STAGING_URL``,
``SONAR_PROJECT_KEY`` and, with a test database, ``DATABASE_URL``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from delivery.catalog.models import (
    GPU_STAGES,
    Platform,
    Resources,
    Service,
    ServiceContainer,
    ServiceKind,
    Stage,
    StageSpec,
    Toolchain,
)

_PG_ENV = {"POSTGRES_USER": "test", "POSTGRES_PASSWORD": "test", "POSTGRES_DB": "test"}


def _test_database(platform: Platform) -> ServiceContainer:
    return ServiceContainer(
        name="test-db",
        image=platform.kubernetes.tools.postgres,
        env=_PG_ENV,
        port=5432,
        ready_command=["pg_isready", "-h", "127.0.0.1", "-U", "test"],
    )


def _common(platform: Platform) -> dict[Stage, StageSpec]:
    """The stages whose tool does not depend on the toolchain: analysis, image, staging."""
    tools = platform.kubernetes.tools
    semgrep = StageSpec(image=tools.semgrep, command="semgrep scan --config p/ci --error --metrics off .")
    helm = StageSpec(
        image=tools.helm,
        command='helm lint --strict helm\nfor f in deploy/values-*.yaml; do helm template "$DELIVERY_SERVICE" helm -f "$f" >/dev/null; done',
    )
    quality = StageSpec(
        image=tools.sonar_scanner,
        command='sonar-scanner -Dsonar.projectKey="$SONAR_PROJECT_KEY" -Dsonar.scm.revision="$DELIVERY_SHA"',
        secret_env={"SONAR_TOKEN": "sonarqube/token", "SONAR_HOST_URL": "sonarqube/url"},
    )
    image_build = StageSpec(
        image=tools.kaniko,
        command=(
            '/kaniko/executor --context "dir://$DELIVERY_WORKSPACE/$IMAGE_CONTEXT" '
            '--dockerfile "$IMAGE_DOCKERFILE" --destination "$IMAGE:candidate-$DELIVERY_SHA" '
            '--label "org.opencontainers.image.revision=$DELIVERY_SHA" '
            '--digest-file "$DELIVERY_WORKSPACE/.delivery/image-digest"'
        ),
        resources=Resources(cpu="1", memory="2Gi"),
    )
    image_scan = StageSpec(
        image=tools.trivy,
        command='trivy image --exit-code 1 --severity HIGH,CRITICAL --ignore-unfixed "$IMAGE:candidate-$DELIVERY_SHA"',
    )
    image_push = StageSpec(
        image=tools.crane,
        command='for t in $IMAGE_TAGS; do crane tag "$IMAGE:candidate-$DELIVERY_SHA" "$t"; done',
    )
    staging_tests = StageSpec(command='echo "no staging tests configured" >&2; exit 1')
    return {
        Stage.QUALITY_SCAN: quality,
        Stage.SAST: semgrep,
        Stage.HELM_VALIDATE: helm,
        Stage.IMAGE_BUILD: image_build,
        Stage.IMAGE_SCAN: image_scan,
        Stage.IMAGE_PUSH: image_push,
        Stage.STAGING_TESTS: staging_tests,
        Stage.DAST: StageSpec(image=tools.zap, command='zap-baseline.py -t "$DAST_TARGET_URL" -I'),
    }


# Each toolchain's commands for the stages its tool runs, in its image (:func:`_toolchain`);
# its integration tests get the test database (``DATABASE_URL``).
_NPM = {
    Stage.LINT: "npm ci --no-audit --no-fund\nnpx eslint .\nnpx prettier --check .",
    Stage.DEPENDENCY_AUDIT: "npm audit --audit-level=high --omit=dev",
    Stage.BUILD: "npm ci --no-audit --no-fund\nnpm run build",
    Stage.UNIT_TESTS: "npm test -- --coverage",
    Stage.INTEGRATION_TESTS: "npm run test:integration",
    Stage.COVERAGE: 'npx nyc report --reporter=text-summary\nnpx nyc check-coverage --lines "$MIN_COVERAGE"',
    Stage.STAGING_TESTS: 'npm run test:e2e -- --base-url "$STAGING_URL"',
}
_MAVEN = {
    Stage.LINT: "mvn -B -ntp checkstyle:check",
    Stage.DEPENDENCY_AUDIT: "mvn -B -ntp org.owasp:dependency-check-maven:check -DfailBuildOnCVSS=7",
    Stage.BUILD: "mvn -B -ntp package -DskipTests",
    Stage.UNIT_TESTS: "mvn -B -ntp test",
    Stage.INTEGRATION_TESTS: 'mvn -B -ntp verify -DskipUnitTests -Dspring.datasource.url="jdbc:$DATABASE_URL"',
    Stage.COVERAGE: 'mvn -B -ntp jacoco:report jacoco:check -Djacoco.haltOnFailure=true -Djacoco.minimum="$MIN_COVERAGE"',
    Stage.STAGING_TESTS: 'mvn -B -ntp verify -Pstaging -Dbase.url="$STAGING_URL"',
}
_PYTHON = {
    Stage.LINT: "pip install -q ruff\nruff check .\nruff format --check .",
    Stage.DEPENDENCY_AUDIT: "pip install -q pip-audit\npip-audit -r requirements.txt",
    Stage.BUILD: "pip wheel --no-deps -w dist .",
    Stage.UNIT_TESTS: "pip install -q -r requirements-dev.txt\ncoverage run -p -m pytest tests/unit",
    Stage.INTEGRATION_TESTS: "pip install -q -r requirements-dev.txt\ncoverage run -p -m pytest tests/integration",
    Stage.COVERAGE: 'pip install -q coverage\ncoverage combine\ncoverage report --fail-under="$MIN_COVERAGE"',
    Stage.STAGING_TESTS: 'pip install -q -r requirements-dev.txt\npytest tests/staging --base-url "$STAGING_URL"',
}


def _gpu(platform: Platform) -> dict[Stage, StageSpec]:
    """The GPU stages of AI services (Python)."""
    tools = platform.kubernetes.tools
    return {
        Stage.GPU_INFERENCE: StageSpec(
            image=tools.gpu_python,
            command="pip install -q -r requirements-dev.txt\npytest -q tests/inference",
            resources=Resources(cpu="4", memory="16Gi"),
            timeout=timedelta(minutes=30),
        ),
        Stage.GPU_BENCHMARK: StageSpec(
            image=tools.gpu_python,
            command=(
                'pip install -q -r requirements.txt\npython -m delivery.gpu.harness --model "$GPU_MODEL" '
                '--device cuda --require-gpu --batch-sizes "$GPU_BATCH_SIZES" --xcom'
            ),
            resources=Resources(cpu="4", memory="16Gi"),
            timeout=timedelta(minutes=30),
        ),
    }


def _toolchain(toolchain: Toolchain, platform: Platform) -> dict[Stage, StageSpec]:
    """The stages ``toolchain``'s tool runs (Python for any other), the GPU stages with Python's."""
    tools = platform.kubernetes.tools
    image, commands = {
        Toolchain.NPM: (tools.node, _NPM),
        Toolchain.MAVEN: (tools.maven, _MAVEN),
    }.get(toolchain, (tools.python, _PYTHON))
    stages = {
        stage: StageSpec(
            image=image,
            command=command,
            services=[_test_database(platform)] if stage is Stage.INTEGRATION_TESTS else None,
        )
        for stage, command in commands.items()
    }
    if commands is _PYTHON:
        stages |= _gpu(platform)
    return stages


def _defaults(toolchain: Toolchain, platform: Platform) -> dict[Stage, StageSpec]:
    """Each stage's default image and command for ``toolchain`` (Python for any other)."""
    return {**_common(platform), **_toolchain(toolchain, platform)}


@dataclass(frozen=True)
class ResolvedStage:
    """A stage with every field filled in: what a runner needs, nothing more."""

    stage: Stage
    image: str
    command: str
    env: dict[str, str]
    secret_env: dict[str, str]
    resources: Resources
    timeout: timedelta
    retries: int
    services: list[ServiceContainer] = field(default_factory=list)
    gpu: bool = False

    @property
    def name(self) -> str:
        return self.stage.value


def applicable_stages(service: Service) -> list[Stage]:
    """Stages that make sense for this service, in seed order."""
    stages = []
    for stage in Stage:
        if stage is Stage.DAST and service.kind is not ServiceKind.WEB:
            continue
        if stage in GPU_STAGES and not service.needs_gpu:
            continue
        if stage is Stage.QUALITY_SCAN and not service.sonar_project_key:
            continue
        spec = service.stages.get(stage)
        if spec is not None and not spec.enabled:
            continue
        stages.append(stage)
    return stages


def resolve_stages(service: Service, platform: Platform) -> dict[Stage, ResolvedStage]:
    """Merge toolchain defaults with the service's overrides, for every applicable stage."""
    defaults = _defaults(service.toolchain, platform)
    resolved: dict[Stage, ResolvedStage] = {}
    for stage in applicable_stages(service):
        base = defaults.get(stage, StageSpec())
        override = service.stages.get(stage, StageSpec())
        image = override.image or base.image
        command = override.command or base.command
        if not image or not command:
            missing = "image" if not image else "command"
            raise ValueError(
                f"service {service.name!r}: stage {stage.value!r} has no {missing}; "
                f"set stages.{stage.value}.{missing} in the catalog"
            )
        gpu = stage in GPU_STAGES
        resolved[stage] = ResolvedStage(
            stage=stage,
            image=image,
            command=command,
            env={**base.env, **override.env},
            secret_env={**base.secret_env, **override.secret_env},
            resources=override.resources or base.resources or Resources(),
            timeout=override.timeout or base.timeout or timedelta(minutes=20),
            retries=override.retries if override.retries is not None else (base.retries or 2),
            services=list(override.services if override.services is not None else (base.services or [])),
            gpu=gpu,
        )
    return resolved
