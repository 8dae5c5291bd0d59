"""A small DAG for the local Airflow's own tests: where did each task run, and can a run be interrupted."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import dag, task


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"sleep": 0},
    default_args={"retries": 2, "retry_delay": timedelta(seconds=2)},
)
def devenv_probe() -> None:
    @task
    def work(**context: Any) -> str:
        time.sleep(float(context["params"]["sleep"]))
        return os.environ.get("DELIVERY_COMPONENT", "standalone")

    @task(queue="gpu")
    def gpu_work() -> str:
        return os.environ.get("DELIVERY_COMPONENT", "standalone")

    work() >> gpu_work()


devenv_probe()
