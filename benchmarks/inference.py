"""Inference stack: what dynamic batching buys, what the gateway costs, how it compares.

One process run, three parts, each side by side with its peer or its limit:

1. **CPU LLM engine, dynamic batching**: 8 chat requests sent at once to the SmolLM2 engine
   server vs the same 8 one after another; aggregate completion tokens/s. Target > 1x (the
   engine against llama.cpp itself: ``cpu_engine.py``).
2. **Embeddings through the gateway**: 64 concurrent single-text ``/v1/embeddings`` requests
   through the gateway to the MiniLM engine server vs sentence-transformers encoding the same
   64 texts in one offline batch in this process. Target >= 0.7x. Beside them, the engine's
   encoder (ONNX Runtime on the same weights) on the same offline batch: the engine runs
   whichever of the two is faster.
3. **Gateway overhead vs other routers**: a stub backend that answers at once (a SAGE engine
   server with the stub engine, its own process), fronted by the SAGE gateway with the control
   plane on, by vllm-router (Rust), by LiteLLM's proxy, and by plain pass-through proxies on
   aiohttp and on Starlette + uvicorn (``_passthrough_*.py``: what the gateway's hand-written
   HTTP core is measured against), one process each; a closed-loop load generator (its own
   process) at concurrency 32 and 1. Targets: gateway >= 1.0x vllm-router's requests/s at
   concurrency 32; gateway's added p50 <= 0.5 ms at concurrency 1 (vs the stub directly).

The peers live in their own virtualenv (``.venv-peers``, made by ``make bench``) so their
dependencies do not meet SAGE's; without it part 3 runs SAGE alone and says so. Every part
interleaves its cases over several rounds and reports medians (see ``_common.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from _common import Case, interleave, report
from sage.common.config.ports import SagePorts
from sage.inference.deploy.processes import spawn_engine, spawn_gateway, terminate
from sage.inference.deploy.stack import LocalStack
from sage.inference.engines.models import resolve_model
from sage.inference.engines.onnx_encoder import onnx_encoder

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".venv-peers" / "bin"
LOADGEN = Path(__file__).with_name("_loadgen.py")

QUESTIONS = [
    "Explain how a hash table works.",
    "Describe the water cycle step by step.",
    "Write a short story about a lighthouse keeper.",
    "List ten uses for a paperclip and explain each.",
    "Explain why the sky is blue.",
    "Describe how to bake bread at home.",
    "Explain what a compiler does, stage by stage.",
    "Describe the rules of chess for a beginner.",
]
MAX_TOKENS = 48


def passages(n: int) -> list[str]:
    """``n`` lines of the Python language reference bundled with CPython."""
    import pydoc_data.topics

    lines = (
        line.strip() for text in pydoc_data.topics.topics.values() for line in text.splitlines()
    )
    return [line for line in lines if len(line) > 40][:n]


# -- part 1: dynamic batching on the CPU engine --------------------------------------------------


def llm_batching(rounds: int) -> list[str]:
    with LocalStack("smollm2", None, gateway_port=None, max_batch=8) as stack:
        url = f"{stack.llm_url}/chat/completions"
        http = httpx.Client(timeout=600)

        def chat(question: str) -> int:
            body = {
                "model": "smollm2",
                "messages": [{"role": "user", "content": question}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
            }
            answer = http.post(url, json=body)
            answer.raise_for_status()
            return int(answer.json()["usage"]["completion_tokens"])

        chat(QUESTIONS[0])  # load and warm the model outside the timed rounds
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            one_by_one = Case("8 chats one after another", run=lambda: sum(map(chat, QUESTIONS)))
            at_once = Case("8 chats at once", run=lambda: sum(pool.map(chat, QUESTIONS)))
            interleave([one_by_one, at_once], rounds, warmup=0)
        http.close()
    ratio = at_once.ratio_to(one_by_one)
    return [
        f"### CPU LLM engine: continuous batching\n\nSmolLM2-135M-Instruct (llama.cpp, Q8_0, "
        f"8 slots), 8 chat requests, max_tokens {MAX_TOKENS}, temperature 0, to the engine "
        f"server; {rounds} interleaved rounds, medians. llama.cpp decodes a single stream fast "
        "enough on 2 cores that sharing steps gains less than on the former float32 "
        "transformers engine (4.5x there, at 89 tokens/s); the engine against llama.cpp "
        "itself: the CPU engine table.",
        "",
        "| case | completion tokens/s | time | ratio | target | host steal |",
        "|---|---:|---:|---|---|---:|",
        f"| {one_by_one.name} | {one_by_one.rate:,.1f} | {one_by_one.median_s:.1f} s | | "
        f"| {one_by_one.steal_pct} |",
        f"| {at_once.name} | {at_once.rate:,.1f} | {at_once.median_s:.1f} s | "
        f"**{ratio:.2f}x** one after another | > 1x | {at_once.steal_pct} |",
    ]


# -- part 2: embeddings through the gateway -------------------------------------------------------


def embeddings(rounds: int) -> list[str]:
    from sentence_transformers import SentenceTransformer

    texts = passages(64)
    spec = resolve_model("all-minilm-l6-v2", "embedding")
    model = SentenceTransformer(str(spec.path), device="cpu")
    logs = Path(tempfile.mkdtemp(prefix="sage-bench-"))
    bodies = logs / "bodies.json"
    bodies.write_text(json.dumps([{"model": spec.name, "input": t} for t in texts]))
    with serve_stack(logs, "embedding", "all-minilm-l6-v2") as (gateway_port, _):

        def through_gateway() -> float:
            args = ["burst", str(gateway_port), "/v1/embeddings", str(bodies)]
            return float(loadgen(*args)["seconds"])

        gateway = Case(
            "64 single-text requests at once, via the gateway",
            records=len(texts),
            timed=through_gateway,
        )
        offline = Case(
            "sentence-transformers, one offline batch of 64",
            run=lambda: len(model.encode(texts, batch_size=len(texts))),
        )
        encoder = onnx_encoder(model, spec.path)
        assert encoder is not None, "onnxruntime is missing (the llm extra installs it)"
        onnx = Case(
            "ONNX Runtime (the engine's encoder), one offline batch of 64",
            run=lambda: len(encoder.encode(texts)[0]),
        )
        interleave([offline, onnx, gateway], rounds, warmup=1)
    ratio = gateway.ratio_to(offline)
    onnx_ratio = onnx.ratio_to(offline)
    return [
        "### Embeddings: concurrent single-text requests vs one offline batch\n\n"
        "all-minilm-l6-v2, 64 lines of the Python reference. The engine server and the gateway "
        "run as `sage llm serve` runs them (one process each); the 64 requests come from a "
        "client process over 64 warm keep-alive connections, timed until the last answer; "
        f"{rounds} interleaved rounds, medians.",
        "",
        "| case | texts/s | time | ratio | target | host steal |",
        "|---|---:|---:|---|---|---:|",
        f"| {offline.name} | {offline.rate:,.0f} | {offline.median_s * 1e3:,.0f} ms | | "
        f"| {offline.steal_pct} |",
        f"| {onnx.name} | {onnx.rate:,.0f} | {onnx.median_s * 1e3:,.0f} ms | "
        f"**{onnx_ratio:.2f}x** sentence-transformers | the faster is the engine's | "
        f"{onnx.steal_pct} |",
        f"| {gateway.name} | {gateway.rate:,.0f} | {gateway.median_s * 1e3:,.0f} ms | "
        f"**{ratio:.2f}x** sentence-transformers' batch | >= 0.7x | {gateway.steal_pct} |",
    ]


@contextmanager
def serve_stack(
    logs: Path, kind: str, model: str, engine: str = "cpu", *engine_args: str
) -> Iterator[tuple[int, int]]:
    """An engine server and a gateway in front of it, one process each.

    Yields:
        ``(gateway port, engine port)``.
    """
    engine_pid, engine_port, served = spawn_engine(
        kind, model, engine, logs / f"{kind}-engine.log", extra=engine_args
    )
    pids = [engine_pid]
    try:
        backend = {
            "port": engine_port,
            "model_name": served,
            "instance_type": kind,
            "max_concurrent_requests": 256,
        }
        key = "llm_backends" if kind == "llm" else "embedding_backends"
        gateway_pid, gateway_port = spawn_gateway(
            {"port": 0, "enable_control_plane": True, key: [backend]},
            logs / f"{kind}-gateway.json",
            logs / f"{kind}-gateway.log",
        )
        pids.append(gateway_pid)
        yield gateway_port, engine_port
    finally:
        for pid in reversed(pids):
            terminate(pid)


# -- part 3: the gateway vs other routers in front of one stub ------------------------------------


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait for a peer (which has no readiness signal) to accept connections on ``port``."""
    deadline, delay = time.monotonic() + timeout_s, 0.01
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(delay)  # polling a foreign process's port: nothing to wait on instead
            delay = min(delay * 2, 0.5)
    raise RuntimeError(f"{process.args[0]} did not listen on {port} within {timeout_s:.0f} s")


@contextmanager
def peer(args: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run a peer router process listening on ``port``; stop its process group after."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        wait_listening(port, process, 120)
        yield port
    finally:
        terminate(process.pid)


def loadgen(*args: str) -> dict[str, float]:
    """Run ``_loadgen.py`` with ``args`` in its own process; its JSON answer."""
    out = subprocess.run(
        [sys.executable, str(LOADGEN), *args], capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()[-2000:]}")
    return dict(json.loads(out.stdout))


def load(port: int, concurrency: int, seconds: float) -> dict[str, float]:
    """One closed-loop load run against ``port``."""
    return loadgen(str(port), str(concurrency), str(seconds))


def routers(rounds: int, seconds: float) -> list[str]:
    logs = Path(tempfile.mkdtemp(prefix="sage-bench-"))
    stack = serve_stack(logs, "llm", "stub", "stub")
    with stack as (gateway_port, stub_port):
        targets = {
            "stub directly (the limit)": stub_port,
            "SAGE gateway, control plane on": gateway_port,
        }
        with _peers(stub_port, logs) as peer_ports:
            targets.update(peer_ports)
            results = _interleave_load(targets, rounds, seconds)
    return _router_table(results, rounds, seconds, peers_found=PEERS.is_dir())


@contextmanager
def _peers(stub_port: int, logs: Path) -> Iterator[dict[str, int]]:
    """Start vllm-router and the LiteLLM proxy in front of the stub (if installed)."""
    if not PEERS.is_dir():
        yield {}
        return
    router_port, litellm_port = SagePorts.any_free_port(), SagePorts.any_free_port()
    stub_url = f"http://127.0.0.1:{stub_port}"
    router = [
        str(PEERS / "vllm-router"),
        *("--host", "127.0.0.1", "--port", str(router_port)),
        *("--worker-urls", stub_url, "--policy", "round_robin"),
        *("--prometheus-host", "127.0.0.1", "--prometheus-port", str(SagePorts.any_free_port())),
        *("--log-level", "warning"),
    ]
    litellm_config = logs / "litellm.yaml"
    litellm_config.write_text(
        "model_list:\n"
        "  - model_name: stub\n"
        "    litellm_params:\n"
        "      model: openai/stub\n"
        f"      api_base: {stub_url}/v1\n"
        "      api_key: sk-bench\n"
    )
    litellm = [
        str(PEERS / "litellm"),
        *("--config", str(litellm_config), "--host", "127.0.0.1"),
        *("--port", str(litellm_port), "--num_workers", "1"),
    ]
    litellm_env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    aiohttp_port, starlette_port = SagePorts.any_free_port(), SagePorts.any_free_port()
    here = Path(__file__).parent
    aiohttp = [str(PEERS / "python"), str(here / "_passthrough_aiohttp.py"), str(aiohttp_port)]
    starlette = [
        str(PEERS / "python"),
        str(here / "_passthrough_starlette.py"),
        str(starlette_port),
    ]
    with (
        peer(router, router_port, logs / "vllm-router.log"),
        peer(litellm, litellm_port, logs / "litellm.log", litellm_env),
        peer([*aiohttp, stub_url], aiohttp_port, logs / "aiohttp.log"),
        peer([*starlette, stub_url], starlette_port, logs / "starlette.log"),
    ):
        yield {
            f"vllm-router {_version('vllm-router')}": router_port,
            f"LiteLLM proxy {_version('litellm')}": litellm_port,
            f"aiohttp {_version('aiohttp')} pass-through": aiohttp_port,
            f"Starlette {_version('starlette')} + uvicorn {_version('uvicorn')} pass-through": (
                starlette_port
            ),
        }


def _version(package: str) -> str:
    out = subprocess.run(
        [
            str(PEERS / "python"),
            "-c",
            f"import importlib.metadata as m; print(m.version({package!r}))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


def _interleave_load(
    targets: dict[str, int], rounds: int, seconds: float
) -> dict[tuple[str, int], list[dict[str, float]]]:
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    order = list(targets.items())
    for concurrency in (32, 1):
        for _, port in order:  # warm-up: connections, lazy imports, caches
            load(port, concurrency, 0.5)
        for i in range(rounds):
            for name, port in order if i % 2 == 0 else reversed(order):
                results.setdefault((name, concurrency), []).append(load(port, concurrency, seconds))
    return results


def _router_table(
    results: dict[tuple[str, int], list[dict[str, float]]],
    rounds: int,
    seconds: float,
    peers_found: bool,
) -> list[str]:
    def median(name: str, concurrency: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(name, concurrency)])

    def paired(name: str, other: str) -> str:
        """Median (min-max) over rounds of ``name``'s req/s over ``other``'s in the same
        round: the two ran back to back, so a machine slowing down between rounds (shared
        vCPUs, steal) weighs on both sides of each ratio alike."""
        ratios = [
            a["req_s"] / b["req_s"]
            for a, b in zip(results[(name, 32)], results[(other, 32)], strict=True)
        ]
        return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"

    names = list(dict.fromkeys(name for name, _ in results))
    stub, gateway = names[0], names[1]
    router = next((n for n in names if n.startswith("vllm-router")), None)
    lines = [
        "### Gateway vs other routers in front of one stub backend\n\n"
        f"Each server its own process; closed-loop load from another process, {seconds:.0f} s "
        f"per run, {rounds} interleaved rounds, medians; a ratio is the median (min-max) over "
        "the rounds of the front's req/s over vllm-router's in the same round.",
        "",
        "| front | req/s at c=32 | ratio | target | p50 at c=1 | added p50 | target |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    stub_p50 = median(stub, 1, "p50_ms")
    for name in names:
        rate, p50 = median(name, 32, "req_s"), median(name, 1, "p50_ms")
        ratio = target = added = added_target = ""
        if router is not None and name != router and name != stub:
            ratio = f"{paired(name, router)} vllm-router"
        if name == gateway:
            ratio, target = f"**{ratio}**" if ratio else "", ">= 1.0x vllm-router"
            added_target = "<= 0.5 ms"
        if name != stub:
            added = f"{p50 - stub_p50:+.3f} ms"
            added = f"**{added}**" if name == gateway else added
        cells = [name, f"{rate:,.0f}", ratio, target, f"{p50:.3f} ms", added, added_target]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "The stub, the front and the load generator share the machine's cores; the stub alone "
        f"answers about {median(stub, 32, 'req_s'):,.0f} req/s, so a front near that figure is "
        "bounded by the stub and the CPUs, not by itself. The aiohttp and Starlette rows are "
        "plain pass-through proxies (no parsing, no scheduling, no metrics): what the same "
        "work costs on those frameworks, the reason the gateway has an HTTP core of its own.",
    ]
    if not peers_found:
        lines += ["", "Peers not installed (.venv-peers missing): run `make bench`."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--router-rounds", type=int, default=5, help="rounds of part 3 (short runs: more)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per load run (part 3)")
    parser.add_argument(
        "--parts", default="llm,embedding,routers", help="comma-separated subset to run"
    )
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    parts: dict[str, Callable[[], list[str]]] = {
        "llm": lambda: llm_batching(args.rounds),
        "embedding": lambda: embeddings(args.rounds),
        "routers": lambda: routers(args.router_rounds, args.seconds),
    }
    lines: list[str] = []
    for name in args.parts.split(","):
        started = time.perf_counter()
        lines += [*parts[name](), ""]
        print(f"[{name}: {time.perf_counter() - started:.0f} s]", file=sys.stderr)
    gpu = "no GPU on this machine: the vLLM comparison did not run"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"GPU {torch.cuda.get_device_name(0)} present; vLLM figures: see the issue notes"
    except ImportError:
        pass
    lines.append(f"GPU: {gpu}.")
    report("inference", "Inference stack", lines, args.write_readme and args.parts.count(",") == 2)


if __name__ == "__main__":
    main()
