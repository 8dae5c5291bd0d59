"""``KubernetesPodOperator`` for delivery stages: templated init containers.

The stock operator renders Jinja in the main container's env but not in init
containers; the checkout init container needs the run's commit, so this
subclass renders ``init_containers`` (their ``env``) too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context


class StagePodOperator(KubernetesPodOperator):
    template_fields = (*KubernetesPodOperator.template_fields, "init_containers")

    def _render_nested_template_fields(
        self, content: Any, context: Context, jinja_env: jinja2.Environment, seen_oids: set[int]
    ) -> None:
        if isinstance(content, k8s.V1Container) and id(content) not in seen_oids:
            seen_oids.add(id(content))
            self._do_render_template_fields(content, ("env",), context, jinja_env, seen_oids)
            return
        super()._render_nested_template_fields(content, context, jinja_env, seen_oids)
