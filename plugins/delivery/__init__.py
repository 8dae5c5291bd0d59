"""Visiobook delivery pipelines on Apache Airflow 3.

The package turns a service catalog (``include/catalog``) into per-service
delivery DAGs in three visible steps, in the manner of astronomer-cosmos:

1. :mod:`delivery.catalog` parses YAML into validated, typed models;
2. :mod:`delivery.pipeline.plan` turns one service into a graph of steps (pure data);
3. :mod:`delivery.pipeline.factory` maps each step to an Airflow operator for the
   active :mod:`profile <delivery.profiles>` (``kubernetes`` or ``local``).

The graph is the same in every profile; a profile only swaps runners and
deploy targets.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
