"""``KubernetesPodOperator`` for delivery stages: templated init containers, GPU retries elsewhere.

* The stock operator renders Jinja in the main container's env but not in init
  containers; the checkout init container needs the run's commit, so this
  subclass renders ``init_containers`` (their ``env``) too.
* With ``avoid_previous_nodes=True`` (GPU stages), a retry attempt's pod gets a
  required node anti-affinity (``kubernetes.io/hostname NotIn [...]``) to the
  nodes where the previous attempts' pods ran, so a flaky GPU node is not
  picked again (seed flow 4: "Reschedule on different GPU node"). The previous
  pods are found through the Kubernetes API by the labels the operator puts on
  every pod (``dag_id``, ``task_id``, ``run_id``, ``try_number``...); failed
  pods are kept (``on_finish_action="delete_succeeded_pod"``), so their
  ``spec.nodeName`` is still readable. A failed look-up only logs a warning: the
  retry then runs without the anti-affinity, it is never failed because of it.
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.backcompat.backwards_compat_converters import convert_affinity
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

from delivery.pipeline.contract import TEMPLATE_FILTERS, untrusted

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

HOSTNAME_LABEL = "kubernetes.io/hostname"
"""The node label the anti-affinity matches on (set by the kubelet on every node)."""


class StagePodOperator(KubernetesPodOperator):
    """A delivery stage's pod.

    :param avoid_previous_nodes: on a retry (``try_number > 1``), keep the pod off
        the nodes where this task's previous attempts (same DAG run, same map
        index) ran. Meant for GPU stages.
    """

    template_fields = (*KubernetesPodOperator.template_fields, "init_containers")

    def __init__(self, *, avoid_previous_nodes: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.avoid_previous_nodes = avoid_previous_nodes

    def _render_nested_template_fields(
        self, content: Any, context: Context, jinja_env: jinja2.Environment, seen_oids: set[int]
    ) -> None:
        if isinstance(content, k8s.V1Container) and id(content) not in seen_oids:
            seen_oids.add(id(content))
            self._do_render_template_fields(content, ("env",), context, jinja_env, seen_oids)
            return
        super()._render_nested_template_fields(content, context, jinja_env, seen_oids)

    def get_template_env(self, dag: Any = None) -> jinja2.Environment:
        """The DAG's Jinja environment, with the project's filters even outside a DAG (offline renders)."""
        env = super().get_template_env(dag=dag)
        env.filters.update(TEMPLATE_FILTERS)
        return env

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Pod:
        if context is not None and untrusted(context) and self.secrets:
            # Untrusted code (a fork's or an outside contributor's pull request) never sees a secret.
            self.log.warning("Untrusted pull request: the stage's pod gets none of its secrets")
            self.secrets = []
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        if not self.avoid_previous_nodes or context is None or dry_run:
            return pod
        try_number = int(context["ti"].try_number or 1)
        if try_number <= 1:
            return pod
        try:
            nodes = self.previous_attempt_nodes(context, namespace=pod.metadata.namespace)
        except Exception as exc:  # never fail a retry because the look-up failed
            self.log.warning(
                "Could not look up the nodes of the previous attempts of %s (try %d): %s; "
                "the pod is scheduled without node anti-affinity",
                self.task_id,
                try_number,
                _describe(exc),
            )
            return pod
        if not nodes:
            self.log.info("No node found for the previous attempts of %s (try %d)", self.task_id, try_number)
            return pod
        self.log.info(
            "Try %d of %s avoids the node(s) of previous attempts: %s", try_number, self.task_id, nodes
        )
        pod.spec.affinity = avoid_nodes(pod.spec.affinity, nodes)
        return pod

    def previous_attempt_nodes(self, context: Context, *, namespace: str) -> list[str]:
        """Sorted names of the nodes where earlier attempts of this task instance had their pod.

        Pods are listed by the task instance's labels without ``try_number``
        (``dag_id``, ``task_id``, ``run_id``, ``kubernetes_pod_operator``,
        ``map_index``); pods of this attempt and pods never scheduled (no
        ``spec.nodeName``) are left out.
        """
        current = int(context["ti"].try_number or 1)
        labels = self._get_ti_pod_labels(context, include_try_number=False)
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        pods = self.client.list_namespaced_pod(namespace=namespace, label_selector=selector).items or []
        nodes: set[str] = set()
        for pod in pods:
            pod_labels = (pod.metadata.labels if pod.metadata else None) or {}
            if "map_index" not in labels and "map_index" in pod_labels:
                continue  # a mapped task's pod; this task instance is not mapped
            try:
                attempt = int(pod_labels.get("try_number", ""))
            except ValueError:
                continue
            node = pod.spec.node_name if pod.spec else None
            if attempt < current and node:
                nodes.add(node)
        return sorted(nodes)


def avoid_nodes(affinity: k8s.V1Affinity | dict[str, Any] | None, nodes: list[str]) -> k8s.V1Affinity:
    """``affinity`` plus a required ``kubernetes.io/hostname NotIn nodes`` node affinity.

    Node selector terms are ORed and the expressions of one term ANDed, so the
    expression is added to every existing required term (or makes the only
    term). Preferred terms, pod (anti-)affinity and the input are left as they are.
    """
    merged = _as_affinity(affinity)
    expression = k8s.V1NodeSelectorRequirement(key=HOSTNAME_LABEL, operator="NotIn", values=list(nodes))
    node_affinity = merged.node_affinity or k8s.V1NodeAffinity()
    required = node_affinity.required_during_scheduling_ignored_during_execution
    if required is None or not required.node_selector_terms:
        required = k8s.V1NodeSelector(node_selector_terms=[k8s.V1NodeSelectorTerm(match_expressions=[])])
    for term in required.node_selector_terms:
        term.match_expressions = [*(term.match_expressions or []), copy.deepcopy(expression)]
    node_affinity.required_during_scheduling_ignored_during_execution = required
    merged.node_affinity = node_affinity
    return merged


def _describe(exc: BaseException) -> str:
    """One line for an API error (status, reason, the ``v1 Status`` message), else the exception."""
    if isinstance(exc, ApiException):
        message = ""
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(exc.body or "{}").get("message") or ""
        return " ".join(str(p) for p in ("API error", exc.status, exc.reason, message) if p)
    return f"{type(exc).__name__}: {exc}"


def _as_affinity(affinity: k8s.V1Affinity | dict[str, Any] | None) -> k8s.V1Affinity:
    if not affinity:
        return k8s.V1Affinity()
    if isinstance(affinity, k8s.V1Affinity):
        return copy.deepcopy(affinity)
    return convert_affinity(copy.deepcopy(affinity))
