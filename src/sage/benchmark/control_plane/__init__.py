"""``sage-cp-bench``: the control plane's scheduling policies compared on the same workload.

Modules, in the order a benchmark uses them:

* :mod:`.config` — :class:`LLMBenchmarkConfig`, :class:`EmbeddingBenchmarkConfig`,
  :class:`HybridBenchmarkConfig` (``validate()`` names a bad field and its fix);
* :mod:`.workload` — the seeded request trace (Poisson, bursty or uniform arrivals; length
  distributions; priority and SLO classes);
* :mod:`.fleet` — own instances that differ: a price and a speed per instance;
* :mod:`.cluster` — its own gateway over engine processes (simulated, CPU or stub);
* :mod:`.driver` — sends the trace open loop and records every request;
* :mod:`.metrics` — throughput, latency and TTFT percentiles, SLO attainment, errors;
* :mod:`.cost_served` — the cost the gateway counted during a run (priced instances);
* :mod:`.runner` — capacity, trace and one run per policy (:func:`run_benchmark`);
* :mod:`.sweep` — one run per offered rate (:func:`run_sweep`);
* :mod:`.report`, :mod:`.sweep_report` — Rich tables, JSON, PNG chart, HTML page;
* :mod:`.visualize` — the charts again, from a saved JSON report;
* :mod:`.options`, :mod:`.config_file` — the command line's options as a config, and the
  same settings in a file (``--config``);
* :mod:`.screen`, :mod:`.cli` — the ``sage-cp-bench`` command (``run``, ``compare``,
  ``sweep``, ``config``, ``validate``, ``visualize``).

Example:
    >>> from sage.benchmark.control_plane import HybridBenchmarkConfig
    >>> HybridBenchmarkConfig(policies=["hybrid_slo"], llm_ratio=0.7).validate()
"""

from sage.benchmark.control_plane.config import (
    BenchmarkConfig,
    EmbeddingBenchmarkConfig,
    HybridBenchmarkConfig,
    LengthDistribution,
    LLMBenchmarkConfig,
    RequestClass,
)
from sage.benchmark.control_plane.metrics import GroupMetrics, RunMetrics, summarize
from sage.benchmark.control_plane.runner import BenchmarkResult, PolicyRun, run_benchmark
from sage.benchmark.control_plane.sweep import SweepResult, run_sweep
from sage.benchmark.control_plane.workload import Trace, TraceRequest, build_trace

__all__ = [
    "BenchmarkConfig",
    "BenchmarkResult",
    "EmbeddingBenchmarkConfig",
    "GroupMetrics",
    "HybridBenchmarkConfig",
    "LLMBenchmarkConfig",
    "LengthDistribution",
    "PolicyRun",
    "RequestClass",
    "RunMetrics",
    "SweepResult",
    "Trace",
    "TraceRequest",
    "build_trace",
    "run_benchmark",
    "run_sweep",
    "summarize",
]
