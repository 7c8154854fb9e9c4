"""Tutorial: configuring a control-plane benchmark (seed 003, ``sage-cp-bench``).

Shows, without running a benchmark (so it takes a second):

* Demo 1: LLM Benchmark Configuration — an :class:`LLMBenchmarkConfig` (policies, load,
  arrivals, request classes, prompt/output lengths, simulated instances), ``validate()``,
  and what an invalid value looks like;
* Demo 2: Hybrid Benchmark Configuration — a :class:`HybridBenchmarkConfig` mixing chat and
  embedding requests;
* Demo 3: Scheduling Policies — the policies a benchmark can compare
  (:class:`SchedulingPolicyType`);
* Demo 4: GPU Monitoring — NVML through ``pynvml`` when it is installed and a GPU is there;
  otherwise a line saying there is none (benchmarks then use simulated GPU instances).

Run it with ``python examples/tutorials/benchmark_control_plane_demo.py``; run a real
comparison with ``sage-cp-bench compare --mode llm --policies fifo,priority,slo_aware``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sage.benchmark.control_plane.config import (
    HybridBenchmarkConfig,
    LengthDistribution,
    LLMBenchmarkConfig,
    RequestClass,
)
from sage.common.components.sage_llm import SchedulingPolicyType
from sage.common.errors import ConfigError
from sage.inference.engines.simulated import SimulatorProfile

# One line per policy for the listing; the dispatcher's module docstring has the details.
POLICY_NOTES = {
    SchedulingPolicyType.FIFO: "arrival order; cheapest, fair when nobody has a deadline",
    SchedulingPolicyType.PRIORITY: "lower `priority` first, aged so low priority never starves",
    SchedulingPolicyType.SLO_AWARE: "least slack to its `slo_ms` deadline first",
    SchedulingPolicyType.HYBRID: "LLM by slack, embeddings batched (alias: hybrid_slo)",
    SchedulingPolicyType.ADAPTIVE: "watches the traffic and switches among the others",
}


def _banner(title: str) -> None:
    print("=" * 64)
    print(title)
    print("=" * 64)


def demo_llm_config(output_dir: Path) -> LLMBenchmarkConfig:
    """Demo 1: an LLM benchmark over two simulated GPU instances, validated."""
    _banner("Demo 1: LLM Benchmark Configuration")
    config = LLMBenchmarkConfig(
        policies=["fifo", "priority", "slo_aware", "adaptive"],
        num_requests=200,
        load=1.2,  # 20% more than the instances can serve: queues grow, the policy matters
        arrival_pattern="poisson",
        classes=[
            RequestClass("interactive", priority=0, slo_ms=2_000, share=0.3),
            RequestClass("batch", priority=5, slo_ms=30_000, share=0.7),
        ],
        prompt_tokens=LengthDistribution.around(256),
        output_tokens=LengthDistribution.around(64),
        engine="simulated",
        instances=2,
        sim_profile={"max_batch": 8},
        output_dir=output_dir,
    )
    config.validate()
    print("Configuration is valid.")
    print(f"  policies:       {', '.join(config.policies)}")
    print(f"  requests:       {config.num_requests} ({config.arrival_pattern} arrivals)")
    print(f"  offered load:   {config.load}x the estimated capacity")
    for c in config.classes:
        print(f"  class {c.name:<12} priority {c.priority}, SLO {c.slo_ms:.0f} ms, share {c.share}")
    prompt, output = config.prompt_tokens.expected(), config.output_tokens.expected()
    print(f"  prompt tokens:  mean {prompt:.0f} ({config.prompt_tokens.shape})")
    print(f"  output tokens:  mean {output:.0f} ({config.output_tokens.shape})")
    profile = SimulatorProfile.from_mapping(config.sim_profile)
    capacity = profile.capacity_rps(prompt, output)
    print(
        f"  instances:      {config.instances} x {config.engine} "
        f"(about {capacity:.1f} requests/s each at full batch)"
    )
    print(f"  reports in:     {config.output_dir}")

    bad = LLMBenchmarkConfig(policies=["fifo", "fastest"])
    try:
        bad.validate()
    except ConfigError as exc:
        print(f"An invalid policy is refused: {exc}")
    return config


def demo_hybrid_config(output_dir: Path) -> HybridBenchmarkConfig:
    """Demo 2: chat and embedding requests in one trace."""
    _banner("Demo 2: Hybrid Benchmark Configuration")
    config = HybridBenchmarkConfig(
        policies=["fifo", "hybrid"],
        num_requests=300,
        llm_ratio=0.7,
        instances=2,
        embedding_instances=1,
        texts_per_request=LengthDistribution.around(8, "uniform", 0.5),
        output_dir=output_dir,
    )
    config.validate()
    print("Configuration is valid.")
    print(f"  kinds:          {', '.join(config.kinds)}")
    print(
        f"  mix:            {config.llm_ratio:.0%} chat, {1 - config.llm_ratio:.0%} embedding "
        f"requests of about {config.texts_per_request.expected():.0f} texts"
    )
    print(
        f"  instances:      {config.instances} LLM + {config.embedding_instances} embedding "
        f"({config.engine})"
    )
    return config


def demo_policies() -> list[str]:
    """Demo 3: the policies a benchmark can compare."""
    _banner("Demo 3: Scheduling Policies")
    names = [policy.value for policy in SchedulingPolicyType]
    print(f"Available policies ({len(names)}):")
    for policy in SchedulingPolicyType:
        print(f"  - {policy.value:<10} {POLICY_NOTES.get(policy, '')}")
    return names


def demo_gpu_monitoring() -> dict[str, Any]:
    """Demo 4: GPU memory and utilisation through NVML, or a clear line when there is none."""
    _banner("Demo 4: GPU Monitoring")
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        print(
            "No GPU monitoring: pynvml is not installed (pip install nvidia-ml-py). "
            "Without a GPU, benchmarks run on simulated GPU instances (--engine simulated)."
        )
        return {"available": False, "reason": "pynvml is not installed", "gpus": []}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        print(f"No GPU found: NVML could not start ({exc}); benchmarks use simulated instances.")
        return {"available": False, "reason": str(exc), "gpus": []}
    gpus = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            load = pynvml.nvmlDeviceGetUtilizationRates(handle)
            gpus.append(
                {
                    "index": index,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_used_mib": memory.used / 2**20,
                    "memory_total_mib": memory.total / 2**20,
                    "utilization_percent": load.gpu,
                }
            )
    finally:
        pynvml.nvmlShutdown()
    if not gpus:
        print("No GPU found: NVML reports 0 devices; benchmarks use simulated instances.")
    for gpu in gpus:
        print(
            f"  GPU {gpu['index']}: {gpu['name']}, "
            f"{gpu['memory_used_mib']:.0f}/{gpu['memory_total_mib']:.0f} MiB, "
            f"{gpu['utilization_percent']}% busy"
        )
    return {"available": bool(gpus), "reason": "" if gpus else "no devices", "gpus": gpus}


def main(output_dir: Path | str = "cp_bench_results") -> dict[str, Any]:
    """Run the four demos; the configs, policy names and GPU readings they produced.

    Args:
        output_dir: Where the configured benchmarks would write their reports (nothing is
            written by this tutorial).
    """
    output = Path(output_dir)
    results = {
        "llm": demo_llm_config(output / "llm"),
        "hybrid": demo_hybrid_config(output / "hybrid"),
        "policies": demo_policies(),
        "gpu": demo_gpu_monitoring(),
    }
    print("Run a comparison: sage-cp-bench compare --mode llm --policies fifo,priority,slo_aware")
    return results


if __name__ == "__main__":
    main()
