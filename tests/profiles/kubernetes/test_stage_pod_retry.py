"""A GPU stage's retry is kept off the node(s) where its previous attempts ran.

The operator is the real ``StagePodOperator`` of ``visiobook-inference``'s
``gpu_benchmark`` stage (kwargs from the catalog), its Kubernetes client the
real ``kubernetes`` client of the provider's hook, configured through an
Airflow ``kubernetes`` connection to a stand-in API server on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from delivery.catalog import Stage, load_catalog
from delivery.catalog.toolchains import resolve_stages
from delivery.profiles.kubernetes.pods import pod_operator_kwargs
from delivery.profiles.kubernetes.stage_pod import HOSTNAME_LABEL, StagePodOperator, avoid_nodes
from tests.standins.kube_api import KubeApiStandIn, make_pod

KUBERNETES_VERSION = "1.33"
CONN_ID = "kube_standin"
DAG_ID = "deliver_visiobook_inference"
RUN_ID = "manual__2025-06-01T10:00:00+00:00"
SHA = "3f2c1e0d9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e"

CATALOG, _ = load_catalog()
SERVICE = CATALOG.service("visiobook-inference")
STAGE = resolve_stages(SERVICE, CATALOG.platform)[Stage.GPU_BENCHMARK]
NAMESPACE = CATALOG.platform.kubernetes.namespace


class _TI:
    """What ``build_pod_request_obj`` and the templates read from a task instance."""

    def __init__(self, *, task_id: str, try_number: int, run_id: str = RUN_ID, map_index: int = -1) -> None:
        self.dag_id = DAG_ID
        self.task_id = task_id
        self.run_id = run_id
        self.try_number = try_number
        self.map_index = map_index

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return {"sha": SHA, "ref": "refs/heads/main", "branch": "main", "tag": "", "image_tags": [SHA[:12]]}


class _Dag:
    dag_id = DAG_ID


def context_for(op: StagePodOperator, try_number: int, *, run_id: str = RUN_ID) -> dict[str, Any]:
    return {
        "ti": _TI(task_id=op.task_id, try_number=try_number, run_id=run_id),
        "run_id": run_id,
        "dag": _Dag(),
        "params": {},
    }


def make_operator(**overrides: Any) -> StagePodOperator:
    kwargs = pod_operator_kwargs(service=SERVICE, platform=CATALOG.platform, stage=STAGE)
    kwargs.update(in_cluster=None, kubernetes_conn_id=CONN_ID)
    kwargs.update(overrides)
    kwargs.setdefault("avoid_previous_nodes", True)
    return StagePodOperator(task_id="gpu_tests.benchmark", **kwargs)


def build(op: StagePodOperator, try_number: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod of attempt ``try_number`` (serialised as sent to the API server) and its context."""
    context = context_for(op, try_number)
    op.render_template_fields(context)  # type: ignore[arg-type]
    pod = op.build_pod_request_obj(context)  # type: ignore[arg-type]
    data: dict[str, Any] = ApiClient().sanitize_for_serialization(pod)
    kubernetes_validate.validate(data, KUBERNETES_VERSION, strict=True)
    return data, context


def attempt_pod(
    op: StagePodOperator, try_number: int, node: str | None, *, run_id: str = RUN_ID
) -> dict[str, Any]:
    """The pod an earlier attempt left behind (failed, labelled as the operator labels it)."""
    labels = {**op.labels, **op._get_ti_pod_labels(context_for(op, try_number, run_id=run_id))}  # type: ignore[arg-type]
    labels["already_checked"] = "True"
    return make_pod(
        name=f"visiobook-inference-gpu-benchmark-try{try_number}-{abs(hash(run_id)) % 10000}",
        namespace=NAMESPACE,
        labels=labels,
        node_name=node,
    )


def required_terms(pod: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = pod["spec"].get("affinity") or {}
    required = (affinity.get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    return list(required.get("nodeSelectorTerms") or [])


def avoided_nodes(pod: dict[str, Any]) -> list[list[str]]:
    """For every required node selector term, the hostnames it excludes."""
    return [
        sorted(
            v
            for e in term.get("matchExpressions") or []
            if e["key"] == HOSTNAME_LABEL and e["operator"] == "NotIn"
            for v in e["values"]
        )
        for term in required_terms(pod)
    ]


@pytest.fixture
def kube_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn() as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", server.connection_json(kubeconfig))
        yield server


def test_first_attempt_has_no_anti_affinity_and_asks_nothing(kube_api: KubeApiStandIn) -> None:
    op = make_operator()
    kube_api.pods.append(attempt_pod(op, 1, "gpu-node-a", run_id="manual__other"))
    pod, _ = build(op, 1)
    assert required_terms(pod) == []
    assert not [r for r in kube_api.requests if r.path.endswith("/pods")]
    assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == SERVICE.gpu.product  # type: ignore[union-attr]


def test_retry_avoids_the_node_of_the_failed_attempt(kube_api: KubeApiStandIn) -> None:
    op = make_operator()
    kube_api.pods += [
        attempt_pod(op, 1, "gpu-node-a"),
        attempt_pod(op, 1, "gpu-node-z", run_id="manual__another-run"),  # another run: not ours
    ]
    other_task = make_operator(avoid_previous_nodes=False)
    other_task.task_id = "gpu_tests.inference"
    kube_api.pods.append(attempt_pod(other_task, 1, "gpu-node-y"))  # another task: not ours

    pod, context = build(op, 2)

    assert avoided_nodes(pod) == [["gpu-node-a"]]
    expression = required_terms(pod)[0]["matchExpressions"][0]
    assert expression == {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["gpu-node-a"]}
    # The pod itself is still the GPU stage's pod, labelled with its own attempt.
    assert pod["metadata"]["labels"]["try_number"] == "2"
    assert pod["spec"]["runtimeClassName"] == "nvidia"
    # The look-up is the real client's list call, by the task instance's labels.
    lists = [r for r in kube_api.requests if r.path == f"/api/v1/namespaces/{NAMESPACE}/pods"]
    assert len(lists) == 1
    selector = lists[0].query["labelSelector"][0]
    ti_labels = op._get_ti_pod_labels(context, include_try_number=False)  # type: ignore[arg-type]
    assert selector == ",".join(f"{k}={v}" for k, v in sorted(ti_labels.items()))
    assert "try_number" not in selector


def test_third_attempt_avoids_both_previous_nodes(kube_api: KubeApiStandIn) -> None:
    op = make_operator()
    kube_api.pods += [
        attempt_pod(op, 1, "gpu-node-b"),
        attempt_pod(op, 2, "gpu-node-a"),
        attempt_pod(op, 2, "gpu-node-a"),  # same node twice: listed once
        attempt_pod(op, 1, None),  # never scheduled: no node to avoid
    ]
    pod, _ = build(op, 3)
    assert avoided_nodes(pod) == [["gpu-node-a", "gpu-node-b"]]


def test_retry_merges_with_the_operators_own_affinity(kube_api: KubeApiStandIn) -> None:
    own = k8s.V1Affinity(
        node_affinity=k8s.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                node_selector_terms=[
                    k8s.V1NodeSelectorTerm(
                        match_expressions=[
                            k8s.V1NodeSelectorRequirement(
                                key="topology.kubernetes.io/zone", operator="In", values=["z1"]
                            )
                        ]
                    ),
                    k8s.V1NodeSelectorTerm(
                        match_expressions=[
                            k8s.V1NodeSelectorRequirement(
                                key="topology.kubernetes.io/zone", operator="In", values=["z2"]
                            )
                        ]
                    ),
                ]
            ),
            preferred_during_scheduling_ignored_during_execution=[
                k8s.V1PreferredSchedulingTerm(
                    weight=10,
                    preference=k8s.V1NodeSelectorTerm(
                        match_expressions=[
                            k8s.V1NodeSelectorRequirement(key="tier", operator="In", values=["fast"])
                        ]
                    ),
                )
            ],
        )
    )
    op = make_operator(affinity=own)
    kube_api.pods.append(attempt_pod(op, 1, "gpu-node-a"))
    pod, _ = build(op, 2)
    terms = required_terms(pod)
    # Terms are ORed: the hostname exclusion is ANDed into each of them.
    assert [t["matchExpressions"][0]["values"] for t in terms] == [["z1"], ["z2"]]
    assert avoided_nodes(pod) == [["gpu-node-a"], ["gpu-node-a"]]
    assert (
        pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0][
            "weight"
        ]
        == 10
    )
    # The operator's affinity is not changed for the next attempt.
    first = own.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms[0]
    assert len(first.match_expressions) == 1


def test_stage_without_the_option_ignores_previous_nodes(kube_api: KubeApiStandIn) -> None:
    op = make_operator(avoid_previous_nodes=False)
    kube_api.pods.append(attempt_pod(op, 1, "gpu-node-a"))
    pod, _ = build(op, 2)
    assert required_terms(pod) == []
    assert not [r for r in kube_api.requests if r.path.endswith("/pods")]


def test_api_error_still_yields_a_valid_pod(
    kube_api: KubeApiStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    op = make_operator()
    kube_api.pods.append(attempt_pod(op, 1, "gpu-node-a"))
    kube_api.fail_with = 403  # e.g. the runner's role may not list pods
    pod, _ = build(op, 2)
    assert required_terms(pod) == []
    assert pod["metadata"]["labels"]["try_number"] == "2"
    logged = capsys.readouterr().out  # the task logger (structlog) writes to stdout here
    assert "API error 403 Forbidden stand-in configured to answer 403" in logged
    assert "scheduled without node anti-affinity" in logged


def test_unreachable_api_still_yields_a_valid_pod(
    kube_api: KubeApiStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    op = make_operator()
    kube_api.stop()  # nothing listens on the kubeconfig's address any more
    pod, _ = build(op, 2)
    assert required_terms(pod) == []
    assert "scheduled without node anti-affinity" in capsys.readouterr().out


def test_offline_render_never_calls_the_api() -> None:
    """``render_pod`` (dry run, no context) stays offline, as the pod tests of every stage need."""
    op = make_operator(kubernetes_conn_id=None, in_cluster=True)  # as the catalog has it; no cluster here
    pod = op.build_pod_request_obj(None, dry_run=True)
    assert pod.spec.affinity in (None, {})


def test_avoid_nodes_builds_a_fresh_required_term() -> None:
    merged = avoid_nodes(None, ["n1", "n2"])
    data = ApiClient().sanitize_for_serialization(merged)
    assert data == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["n1", "n2"]}
                        ]
                    }
                ]
            }
        }
    }
    assert avoid_nodes({}, ["n1"]).node_affinity is not None
