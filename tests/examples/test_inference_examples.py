"""The example programs for the design document's (seed 003) inference code blocks.

Each runs on the bundled models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2), offline. The
ones that only need the embedding model or none run as programs too; the LLM ones are
imported and their ``main()`` called with fewer prompts than the program uses.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sage.common.config.network import HF_MIRROR
from sage.inference import UnifiedInferenceClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def _no_embedded_engines_left() -> Iterator[None]:
    """Examples that fall back to in-process engines leave them to this fixture to stop."""
    yield
    UnifiedInferenceClient.shutdown_embedded()


def run_program(name: str, *args: str, timeout: float = 120) -> str:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        capture_output=True,
        encoding="utf-8",
        env=env,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


# -- ports_and_network.py (端口与网络配置) ------------------------------------------------------


def test_ports_and_network_program() -> None:
    out = run_program("ports_and_network")
    assert "LLM 绑定端口: 8001" in out or "LLM 绑定端口: 8901" in out
    assert "Embedding 绑定端口: 8090" in out


def test_ports_and_network_sets_the_mirror_only_in_china(
    load_example: Callable[[str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = load_example("ports_and_network")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("SAGE_REGION", "us")
    assert example.main()["hf_endpoint"] is None
    assert "使用国际默认镜像" in capsys.readouterr().out

    monkeypatch.setenv("SAGE_REGION", "cn")
    result = example.main()
    assert result["hf_endpoint"] == HF_MIRROR and result["china"]
    assert "当前网络区域为中国大陆" in capsys.readouterr().out


# -- gpu_memory.py (显存管理) -------------------------------------------------------------------


def test_gpu_memory_program() -> None:
    out = run_program("gpu_memory")
    assert "64 batches normalised by 2 instances" in out


def test_gpu_memory_closes_each_instance_through_clear_gpu_cache(
    load_example: Callable[[str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = load_example("gpu_memory")
    calls: list[int] = []
    monkeypatch.setattr(example, "clear_gpu_cache", lambda: calls.append(1))
    result = example.main(n_records=9, dim=16, parallelism=3)
    assert len(calls) == 3  # GPUOperator.close() ran once per instance
    assert len(result["outputs"]) == 9
    assert all(abs(float(row.norm()) - 1.0) < 1e-5 for out in result["outputs"] for row in out)


# -- batch_embedding.py (批量嵌入, 分批处理大数据集) ---------------------------------------------


@pytest.mark.slow
def test_batch_embedding_program() -> None:
    out = run_program("batch_embedding", "200")
    assert "已处理: 64/200" in out and "已处理: 200/200" in out
    assert "200 texts in batches of 64" in out


@pytest.mark.slow
def test_batch_embedding_one_call_and_one_by_one_agree(
    load_example: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = load_example("batch_embedding").main(n_texts=130)
    assert result["mode"] == "embedded"  # nothing serves on the local ports during tests
    first, last = result["batch_vectors"], result["last_vector"]
    assert len(first) == 100 and all(len(v) == 384 for v in first)
    # the text embedded alone gets the vector it got in the batch
    assert max(abs(a - b) for a, b in zip(first[-1], last, strict=True)) < 1e-4
    vectors = result["vectors"]
    assert len(vectors) == len(result["texts"]) == 130
    assert all(abs(_norm(v) - 1.0) < 1e-3 for v in vectors)
    assert capsys.readouterr().out.count("已处理:") == 3  # 64 + 64 + 2


# -- batch_llm_operator.py (批量请求优化) -------------------------------------------------------


class ShortAnswers:
    """The real embedded SmolLM2, answering in at most 16 greedy tokens.

    The seed's operator asks for ``max_tokens=256`` at the default temperature, which on a
    busy 2-core host can take minutes for a few prompts; what this test pins is which
    prompts get answered, not how long the answers are.
    """

    def __init__(self) -> None:
        self.real = UnifiedInferenceClient.create(embedded=True)

    def generate(self, prompt: str, **kwargs: Any) -> str:
        return str(self.real.generate(prompt, max_tokens=16, temperature=0))

    async def agenerate(self, prompt: str, **kwargs: Any) -> str:
        return str(await self.real.agenerate(prompt, max_tokens=16, temperature=0))

    def close(self) -> None:
        self.real.close()


@pytest.mark.slow
def test_batch_llm_operator_loses_the_partial_batch_and_kernel_batch_does_not(
    load_example: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = load_example("batch_llm_operator")
    questions = example.QUESTIONS[:3]
    result = example.main(questions, batch_size=2, llm_client=ShortAnswers())
    seed, kernel = result["seed_batch_operator"], result["kernel_batch"]
    prompts = [example.chat_prompt(q) for q in questions]
    assert [a["prompt"] for a in seed["answers"]] == prompts[:2]  # the third waits forever
    assert sorted(a["prompt"] for a in kernel["answers"]) == sorted(prompts)
    assert all(isinstance(a["response"], str) and a["response"] for a in kernel["answers"])
    # greedy decoding: the same prompt gets the same answer alone and in a batch of two
    kernel_answers = {a["prompt"]: a["response"] for a in kernel["answers"]}
    assert all(kernel_answers[a["prompt"]] == a["response"] for a in seed["answers"])
    assert "seed_batch_operator: 2 of 3 prompts answered" in capsys.readouterr().out


# -- benchmark_functions.py (自定义基准测试) ------------------------------------------------------


@pytest.mark.slow
def test_benchmark_functions_print_latency_and_throughput(
    load_example: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    load_example("benchmark_functions").main(n_prompts=2, n_texts=64)
    out = capsys.readouterr().out
    for label in ("平均延迟:", "标准差:", "P95 延迟:", "总耗时:", "吞吐量:"):
        assert label in out
    throughput = float(out.split("吞吐量: ")[1].split()[0])
    assert throughput > 0


# -- llm_serving.py (控制面多实例 + SLA, 使用 Control Plane 调度, 控制生成参数, 连接池复用, ...) --


@pytest.mark.slow
def test_llm_serving_runs_the_gateway_and_client_blocks(
    load_example: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    results: dict[str, Any] = load_example("llm_serving").main()
    status = results["status"]
    assert status["mode"] == "control_plane"
    assert status["llm"]["healthy"] and status["embedding"]["healthy"]
    assert "4" in results["response"]
    assert results["streamed"] == results["response"]  # temperature 0: the same tokens
    assert results["singleton"] is not results["client"]
    assert results["local"].mode == "gateway"  # prefer_local found the gateway on 8000
    assert results["engine"].llm_model == "smollm2"
    instances = results["instances"]
    assert sorted((i["port"], i["instance_type"]) for i in instances) == [
        (8001, "llm"),
        (8090, "embedding"),
        (8901, "llm"),
    ]
    assert all(i["healthy"] for i in instances)
    assert sum(i["requests"] for i in instances if i["instance_type"] == "llm") >= 2
    assert "'mode': 'control_plane'" in capsys.readouterr().out


def test_llm_serving_seed_gateway_over_gpu_instance_simulators(
    load_example: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The seed's SLO_AWARE gateway block as written, its instances simulated on its ports."""
    results: dict[str, Any] = load_example("llm_serving").main("simulated")
    status = results["status"]
    assert status["mode"] == "control_plane"
    assert status["llm"]["healthy"] and status["embedding"]["healthy"]
    assert results["response"] and results["streamed"] == results["response"]
    instances = results["instances"]
    assert sorted((i["port"], i["max_concurrent_requests"]) for i in instances) == [
        (8001, 128),
        (8090, 256),
        (8901, 64),
    ]
    assert sum(i["requests"] for i in instances if i["instance_type"] == "llm") >= 2
    out = capsys.readouterr().out
    assert "simulated engines on ports 8001, 8901" in out and "'mode': 'control_plane'" in out
