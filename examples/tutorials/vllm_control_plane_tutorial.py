"""Tutorial: the control plane as a service, ``ControlPlaneVLLMService`` (seed 003).

* Demo 1: Basic Usage — the seed's block: one instance (``llm-1`` on
  ``SagePorts.get_recommended_llm_port()``, policy ``adaptive``), ``setup()``, the metrics
  (``"total_requests": 0``), one ``generate`` call, the metrics again, ``cleanup()``.
* Demo 2: Multi-Instance Load Balancing — two instances of the same model (ports 8001 and
  8002 by default) and a burst of concurrent requests; the control plane spreads them, and
  the per-instance request counts and ports are printed.

Offline on a machine without a GPU: for each port where nothing listens, the tutorial starts
an LLM *simulator* in this process (``SimulatedLLMEngine``: an OpenAI-compatible server that
takes the time a batched GPU engine would take and answers with a fixed sentence, not a
model's text). If an OpenAI-compatible server (e.g. ``sage llm serve`` or vLLM) already
listens on a port, it is used as it is, with the model it serves.

Run it with ``python examples/tutorials/vllm_control_plane_tutorial.py`` (``--help`` for the
ports).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import httpx

from sage.common.components.sage_llm import ControlPlaneVLLMService
from sage.common.concurrency import LoopThread
from sage.common.config.ports import SagePorts
from sage.inference.engines.server import EngineServer
from sage.inference.engines.simulated import (
    SimulatedLLMEngine,
    SimulatorProfile,
)

MODEL = "Qwen/Qwen2.5-7B-Instruct"
SIMULATOR = "simulator started here (SimulatedLLMEngine, no GPU, no model)"


class DemoInstances:
    """The engine servers behind the demos: ones already listening, or simulators started here.

    All simulators share one background event-loop thread; :meth:`stop` stops them.
    """

    def __init__(self) -> None:
        self._loop: LoopThread | None = None
        self._servers: list[EngineServer] = []
        self._started: dict[int, str] = {}  # port -> model of the simulators started here

    def ensure(self, port: int, model_name: str = MODEL) -> tuple[int, str, str]:
        """An instance on ``port``: ``(port, model it serves, what it is)``.

        Raises:
            OSError: something that is not an OpenAI-compatible server holds the port.
        """
        if port in self._started:  # Demo 2 reuses Demo 1's simulator
            return port, self._started[port], SIMULATOR
        if not SagePorts.is_port_free(port):
            served = _served_model(port)
            if served is None:
                raise OSError(
                    f"port {port} is taken by something that is not an OpenAI-compatible "
                    "server; pass other ports (see --help)"
                )
            return port, served, "existing server (already listening)"
        if self._loop is None:
            self._loop = LoopThread("sage-tutorial-simulators")
        server = EngineServer(SimulatedLLMEngine(model_name, profile=SimulatorProfile()), port=port)
        self._servers.append(server)
        port = self._loop.call(server.start())
        self._started[port] = model_name
        return port, model_name, SIMULATOR

    def stop(self) -> None:
        """Stop the simulators started here (idempotent)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        for server in self._servers:
            loop.call(server.stop())
        self._servers, self._started = [], {}
        loop.stop()


def _served_model(port: int) -> str | None:
    """The first model an OpenAI-compatible server on ``port`` lists (None: not one)."""
    try:
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2.0)
        return str(listed.json()["data"][0]["id"]) if listed.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return None


def _banner(title: str) -> None:
    print("=" * 64)
    print(title)
    print("=" * 64)


def demo_basic_usage(instances: DemoInstances, port: int) -> dict[str, Any]:
    """Demo 1: the seed's block on one instance, plus one request."""
    _banner("Demo 1: Basic Usage")
    port, model, what = instances.ensure(port)
    print(f"Instance llm-1: localhost:{port} serving {model!r} - {what}")
    service = ControlPlaneVLLMService(
        {
            "scheduling_policy": "adaptive",
            "instances": [
                {
                    "instance_id": "llm-1",
                    "host": "localhost",
                    "port": port,
                    "model_name": model,
                },
            ],
        }
    )
    service.setup()
    try:
        status = service.get_status()
        print(f"Registered {len(status['instances'])} instances")
        before = service.get_metrics()
        print(f"Metrics: {json.dumps(_summary(before))}")
        answer = service.generate("What does a control plane do?", max_tokens=12)
        print(f"Response: {answer}")
        after = service.get_metrics()
        print(f"Metrics: {json.dumps(_summary(after))}")
    finally:
        service.cleanup()
    return {"port": port, "answer": answer, "before": before, "after": after}


def demo_load_balancing(
    instances: DemoInstances, ports: Sequence[int], n_requests: int
) -> dict[str, Any]:
    """Demo 2: ``n_requests`` concurrent requests over two (or more) instances."""
    _banner("Demo 2: Multi-Instance Load Balancing")
    listed: list[dict[str, Any]] = []
    for index, wanted in enumerate(ports, start=1):
        # Simulators started here serve the first instance's model: one model, N instances.
        port, model, what = instances.ensure(wanted, listed[0]["model_name"] if listed else MODEL)
        listed.append(
            {"instance_id": f"llm-{index}", "host": "localhost", "port": port, "model_name": model}
        )
        print(f"Instance llm-{index}: localhost:{port} serving {model!r} - {what}")
    service = ControlPlaneVLLMService({"scheduling_policy": "adaptive", "instances": listed})
    with service:
        print(f"Registered {len(service.get_status()['instances'])} instances")

        async def burst() -> list[Any]:
            return await asyncio.gather(
                *(
                    service.agenerate(f"Request {i}: summarise the news.", max_tokens=16)
                    for i in range(n_requests)
                )
            )

        print(f"Sending {n_requests} concurrent requests...")
        answers = asyncio.run(burst())
        metrics = service.get_metrics()
    per_instance = {}
    for state in metrics["instances"]:
        per_instance[state["instance_id"]] = state["requests"]
        print(
            f"  {state['instance_id']} (port {state['port']}): {state['requests']} requests, "
            f"p50 {state['p50_ms']:.1f} ms"
        )
    print(f"Total requests: {metrics['total_requests']}")
    return {
        "ports": [i["port"] for i in listed],
        "answers": answers,
        "per_instance": per_instance,
        "metrics": metrics,
    }


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics with each instance cut to its id, health and request count."""
    keep = ("instance_id", "port", "healthy", "requests")
    return {
        **metrics,
        "instances": [{k: i[k] for k in keep} for i in metrics["instances"]],
    }


def main(
    llm_port: int | None = None,
    lb_ports: Sequence[int] | None = None,
    n_requests: int = 8,
) -> dict[str, Any]:
    """Run both demos; their results (ports, answers, metrics).

    Args:
        llm_port: Port of Demo 1's instance (default: the seed's recommended LLM port).
        lb_ports: Ports of Demo 2's instances (default: 8001 and 8002).
        n_requests: Concurrent requests of Demo 2.
    """
    llm_port = SagePorts.get_recommended_llm_port() if llm_port is None else llm_port
    if lb_ports is None:
        lb_ports = (SagePorts.get_recommended_llm_port(), SagePorts.LLM_SECONDARY)
    instances = DemoInstances()
    try:
        basic = demo_basic_usage(instances, llm_port)
        balanced = demo_load_balancing(instances, lb_ports, n_requests)
    finally:
        instances.stop()
    print("Where no server listened, the instances were simulators: timings are simulated.")
    return {"basic": basic, "load_balancing": balanced}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, help="Demo 1's instance port")
    parser.add_argument("--ports", type=int, nargs="+", help="Demo 2's instance ports")
    parser.add_argument("--requests", type=int, default=8, help="Demo 2's concurrent requests")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    main(args.port, args.ports, args.requests)
