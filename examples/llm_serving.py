"""The gateway and the unified client: the seed's inference blocks, runnable, on CPU.

Reproduces, from the design document (seed 003):

* 《控制面多实例 + SLA 示例》: a ``UnifiedAPIServer`` with two LLM instances (main and backup)
  and one embedding instance on the ``SagePorts`` ports, ``server.start()`` blocking;
* 《使用 Control Plane 调度》: ``UnifiedInferenceClient.create(control_plane_url=...)`` and
  ``get_status()``;
* 《控制生成参数》, 《连接池复用》, 《本地服务优先》 and 《混合精度推理》: generation
  parameters, the singleton client, local-first discovery, a client on the engine's port.

The seed names hub models; offline, the bundled ones stand in for them: SmolLM2-135M-Instruct
(``smollm2``) for ``Qwen/Qwen2.5-7B-Instruct`` and ``Qwen/Qwen2.5-1.5B-Instruct``, and
all-MiniLM-L6-v2 for ``BAAI/bge-m3``. Two SmolLM2 engine servers (on ports 8001 and 8901)
and a MiniLM server (8090) are started in this process with :class:`LocalStack` — what
``sage llm serve`` runs as processes — then the seed's gateway serves on port 8000 in the main
thread while a second thread runs the client blocks against it and finally stops it.

With ``--engine simulated`` the three instances are GPU-instance simulators instead (the
timing of a batched GPU engine, placeholder text, no model loaded): the gateway block runs
exactly as on a GPU machine, in seconds.

Run it with ``python examples/llm_serving.py [--engine simulated]`` (ports 8000, 8001, 8090
and 8901 must be free).
"""

from __future__ import annotations

# ruff: noqa: I001  (the seed block is kept as written)

import threading
from typing import Any

from sage.inference.deploy.stack import LocalStack
from sage.common.config.ports import SagePorts

query = "What is 2 + 2? Answer with just the number."
GATEWAY_PORT = SagePorts.GATEWAY_DEFAULT


def serve_gateway() -> None:
    """The seed block, verbatim (hub model names swapped for the bundled models)."""
    global config, server
    # --- seed block: 控制面多实例 + SLA 示例 ---------------------------------------------
    # fmt: off
    from sage.common.components.sage_llm import (
        UnifiedAPIServer,
        UnifiedServerConfig,
        BackendInstanceConfig,
        SchedulingPolicyType,
    )
    from sage.common.config.ports import SagePorts

    config = UnifiedServerConfig(
        port=SagePorts.GATEWAY_DEFAULT,
        scheduling_policy=SchedulingPolicyType.SLO_AWARE,
        enable_control_plane=True,
        llm_backends=[
            BackendInstanceConfig(
                host="localhost",
                port=SagePorts.get_recommended_llm_port(),
                model_name="smollm2",
                instance_type="llm",
                max_concurrent_requests=128,
            ),
            BackendInstanceConfig(
                host="localhost",
                port=SagePorts.BENCHMARK_LLM,
                model_name="smollm2",
                instance_type="llm",
                max_concurrent_requests=64,
            ),
        ],
        embedding_backends=[
            BackendInstanceConfig(
                host="localhost",
                port=SagePorts.EMBEDDING_DEFAULT,
                model_name="all-minilm-l6-v2",
                instance_type="embedding",
                max_concurrent_requests=256,
            ),
        ],
    )

    server = UnifiedAPIServer(config)
    server.start()  # 阻塞运行；若需后台可用 asyncio + server.run_async
    # fmt: on
    # --- end of the seed block ------------------------------------------------------------


def use_the_gateway(results: dict[str, Any]) -> None:
    """The client blocks, verbatim, run while the gateway serves; then stop the gateway."""
    from sage.common.components.sage_llm import UnifiedAPIServer

    gateway = UnifiedAPIServer.wait_listening(GATEWAY_PORT, timeout=120)
    try:
        # fmt: off
        # --- seed block: 使用 Control Plane 调度 ------------------------------------------
        from sage.common.components.sage_llm import UnifiedInferenceClient
        from sage.common.config.ports import SagePorts

        # Control Plane 模式：复用 Gateway / UnifiedAPIServer
        client = UnifiedInferenceClient.create(
            control_plane_url=f"http://localhost:{SagePorts.GATEWAY_DEFAULT}/v1",
            default_llm_model="smollm2",
            default_embedding_model="all-minilm-l6-v2",
        )

        status = client.get_status()
        print(status)
        # --- seed block: 控制生成参数 -------------------------------------------------------
        # 减少 max_tokens 可显著降低延迟
        response = client.chat(
            messages=[{"role": "user", "content": query}],
            max_tokens=128,      # 限制输出长度
            temperature=0.0,     # 确定性输出（无采样开销）
        )

        # 使用流式输出获得首 token 更快响应
        # （适合交互式场景）
        # --- end of the seed blocks -------------------------------------------------------
        # fmt: on
        streamed = "".join(
            client.chat(
                messages=[{"role": "user", "content": query}],
                max_tokens=128,
                temperature=0.0,
                stream=True,
            )
        )
        print(f"answer: {response!r} (streamed: {streamed!r})")
        results.update(status=status, response=response, streamed=streamed, client=client)
        results["singleton"] = singleton_client()
        results["local"] = local_first_client()
        results["engine"] = engine_port_client()
        assert gateway.registry is not None
        results["instances"] = [i.describe() for i in gateway.registry.all()]
    finally:
        gateway.stop()


def singleton_client() -> Any:
    # fmt: off
    # --- seed block: 连接池复用 ---------------------------------------------------------------
    from sage.common.components.sage_llm import UnifiedInferenceClient

    # 使用单例模式复用客户端
    client = UnifiedInferenceClient.get_instance("default")

    # 避免在每次请求时创建新客户端
    # --- end of the seed block ----------------------------------------------------------------
    # fmt: on
    assert client is UnifiedInferenceClient.get_instance("default")
    print(f"singleton: {client!r}")
    return client


def local_first_client() -> Any:
    from sage.common.components.sage_llm import UnifiedInferenceClient

    # fmt: off
    # --- seed block: 本地服务优先 ---------------------------------------------------------------
    # UnifiedInferenceClient 默认优先检测本地服务
    client = UnifiedInferenceClient.create(
        prefer_local=True  # 默认为 True
    )

    # 本地服务延迟更低
    # - localhost:8901 (LLM)
    # - localhost:8090 (Embedding)
    # --- end of the seed block ----------------------------------------------------------------
    # fmt: on
    print(f"local first: {client!r}")
    return client


def engine_port_client() -> Any:
    from sage.common.components.sage_llm import UnifiedInferenceClient

    # fmt: off
    # --- seed block: 混合精度推理 ---------------------------------------------------------------
    # vLLM 启动时使用半精度
    # sage llm serve --model <model> --gpu-memory 0.5

    # 使用 UnifiedInferenceClient.create() 连接本地服务
    client = UnifiedInferenceClient.create(
        control_plane_url="http://localhost:8901/v1",
        default_llm_model="smollm2",
        # vLLM 服务端配置 --dtype bfloat16 或 --dtype half
    )
    # --- end of the seed block ----------------------------------------------------------------
    # fmt: on
    print(f"engine on 8901: {client!r}")
    return client


def main(engine: str = "cpu") -> dict[str, Any]:
    """Start the engines, serve the seed's gateway, run the client blocks; return what they saw.

    Args:
        engine: ``cpu`` (the bundled models) or ``simulated`` (GPU-instance simulators).
    """
    results: dict[str, Any] = {}
    print(f"instances: {engine} engines on ports 8001, 8901 (LLM) and 8090 (embedding)")
    with LocalStack(
        "smollm2",
        "all-minilm-l6-v2",
        engine=engine,
        llm_ports=(SagePorts.get_recommended_llm_port(), SagePorts.BENCHMARK_LLM),
        embedding_port=SagePorts.EMBEDDING_DEFAULT,
        gateway_port=None,  # the seed block starts the gateway
    ):
        driver = threading.Thread(
            target=use_the_gateway, args=(results,), name="seed-client", daemon=True
        )
        driver.start()
        serve_gateway()  # blocks until the client thread stops the gateway
        driver.join()
    for client in ("client", "singleton", "local", "engine"):
        results[client].close()
    return results


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The seed's gateway and client blocks.")
    parser.add_argument("--engine", choices=("cpu", "simulated"), default="cpu")
    main(parser.parse_args().engine)
