"""GPU test harness: the GPU stage's checks, run inside the stage's container.

Run it as ``python -m delivery.gpu.harness --model module:factory [options]``.
It needs torch and the service code only (never Airflow, nor the rest of the
project); ``pynvml`` (``nvidia-ml-py``) is optional and adds the driver version
and the health sampling (utilisation, temperature).

The package follows the checks: :mod:`.probe` (GPU availability),
:mod:`.sampler` (health sampling), :mod:`.benchmark` (model inputs, the
service's tests, timed inference, memory), :mod:`.cli` (arguments, the order of
the checks, the result), :mod:`.common` (constants and small helpers).

What it checks, in order:

1. GPU availability (NVML and ``torch.cuda``): device name, total memory,
   driver version, CUDA version, device count.
2. Device policy (below): run on CUDA, on the CPU, or stop as skipped/failed.
3. Model loading: ``factory()`` must return a ``torch.nn.Module``; load time.
4. Inference correctness (``--tests``): the service's own test command, run as a
   subprocess; exit code and summary line.
5. Performance at each ``--batch-sizes``: ``--warmup`` untimed calls, then
   ``--iterations`` timed calls: ``torch.cuda.Event`` pairs (synchronised after
   every call) on CUDA, ``time.perf_counter`` on the CPU. Latency p50/p95/p99
   use :func:`percentile` (``statistics.quantiles(method="inclusive")``, numpy's
   default ``linear``);
   throughput is ``batch_size * iterations / wall time of the timed loop``.
6. Memory: ``torch.cuda.max_memory_allocated/max_memory_reserved`` (peaks reset
   before loading and before each batch size) on CUDA; the process's peak RSS
   (``resource.getrusage``, not resettable) on the CPU. ``memory.peak_mb`` is
   the number budgets apply to: peak reserved on CUDA, peak RSS on the CPU.
7. Health: a background thread samples utilisation and temperature through
   NVML every ``--health-interval-ms`` while the benchmarks run; on the CPU or
   without NVML it records ``available: false`` and the reason.

Device policy. A run *requires a GPU* with ``--require-gpu`` or
``--device cuda``. When no usable GPU is found:

* ``--on-missing-gpu`` (default ``fail``) sets the status of a run that needed
  one: ``fail`` -> status ``failed``, exit 1; ``skip`` -> status ``skipped``,
  reason ``no GPU: ...``, exit 0. A run that required a GPU and had none is
  therefore never ``passed``.
* ``--allow-cpu`` only decides whether the model is still exercised on the CPU
  (``"device": "cpu"``, ``"gpu_checked": false``). For a GPU-required run the
  status stays as ``--on-missing-gpu`` says (a hard failure on the CPU path
  still makes it ``failed``). With ``--device auto --no-require-gpu
  --allow-cpu`` a CPU run is a normal run that can pass; ``--device cpu`` is
  the same, even where a GPU exists.
* ``--device auto`` without ``--allow-cpu`` and without a GPU behaves like a
  GPU-required run: nothing passes silently.

Output: ONE JSON document, to the XCom file with ``--xcom``
(``/airflow/xcom/return.json``, the KubernetesPodOperator sidecar's path, or
``$DELIVERY_XCOM_PATH``), to ``--output FILE``, or to stdout when neither is
given. Logs go to stderr. Exit status: 0 for ``passed`` and ``skipped``, 1 for
``failed`` (model load error, failed tests, CUDA error, missing GPU with
``--on-missing-gpu fail``), 2 for a usage error.
"""

from __future__ import annotations

from .benchmark import PERCENTILE_METHOD, percentile, run_benchmark, run_service_tests, summarize_latencies
from .cli import build_parser, main, run, write_result
from .common import (
    DEFAULT_XCOM_PATH,
    RESULT_SCHEMA_PATH,
    SCHEMA_VERSION,
    XCOM_PATH_ENV,
    load_object,
    load_result_schema,
    parse_batch_sizes,
    xcom_path,
)
from .probe import probe_gpu
from .sampler import HealthSampler, unavailable_health

__all__ = [
    "DEFAULT_XCOM_PATH",
    "PERCENTILE_METHOD",
    "RESULT_SCHEMA_PATH",
    "SCHEMA_VERSION",
    "XCOM_PATH_ENV",
    "HealthSampler",
    "build_parser",
    "load_object",
    "load_result_schema",
    "main",
    "parse_batch_sizes",
    "percentile",
    "probe_gpu",
    "run",
    "run_benchmark",
    "run_service_tests",
    "summarize_latencies",
    "unavailable_health",
    "write_result",
    "xcom_path",
]
