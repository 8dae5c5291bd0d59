"""GPU stage of the AI services' delivery flow (seed flow 4).

* :mod:`delivery.gpu.harness` runs *inside* the GPU stage's container (torch and
  the service code only, no Airflow): GPU availability, model loading, the
  service's inference tests, latency/throughput benchmarks, memory peaks and
  GPU health sampled during the run. It writes one JSON result
  (``result.schema.json``), to the KubernetesPodOperator XCom file with ``--xcom``.
* :mod:`delivery.gpu.gate` runs on the Airflow side: it checks that result
  against the service's budgets and turns it into trend-chart metric samples.
* :mod:`delivery.gpu.demo_model` is a tiny model that needs no download, so the
  harness can be run anywhere without service code.

Importing this package imports neither torch nor Airflow.
"""

from __future__ import annotations
