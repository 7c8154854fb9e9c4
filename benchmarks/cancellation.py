"""Cancellation: 50 streamed answers whose clients leave mid-answer, and how soon the engine
stops computing them, SAGE's CPU engine beside llama.cpp's own server.

One process run, the same GGUF (SmolLM2-135M-Instruct, the bundled Q8_0), 50 slots and one
compute thread for both servers (each its own process):

* **SAGE** — ``sage llm serve``'s engine server (``--engine cpu``: llama.cpp), reached
  directly and through the gateway (its own process);
* **llama-server** — llama.cpp's server, built from the same sdist's vendored source
  (``_llama_server.py``; once, cached), ``-np 50 -t 1 --metrics``.

Each case opens 50 streamed chats at once (``max_tokens`` 256, end-of-text banned so every
answer is still running), reads 3 to 7 events of each and closes the connection. Measured
from the last close: the time until the server runs nothing (SAGE: its ``/metrics`` gauges
of running and waiting sequences; llama-server: no slot processing, from ``/slots``), and
the decode steps it ran meanwhile (``sage_engine_steps_total`` / llama.cpp's
``n_decode_total``); for SAGE also the most steps any cancelled request was computed in
after it was cancelled (``sage_engine_steps_after_cancel_max``). Interleaved rounds,
medians. Targets: idle within 1 s of the last close, at most one further step per
cancelled request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))

import _llama_server
from _common import metric_sum as metric
from _common import report_checked
from sage.common.config.ports import SagePorts
from sage.inference.deploy.processes import spawn_engine, spawn_gateway, terminate
from sage.inference.engines.llamacpp.requantize import requantized
from sage.inference.engines.models import resolve_model

STREAMS = 50
CONTEXT = 512  # tokens per slot: the prompt and up to 256 answer tokens fit
NO_END = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens, banned


def request(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)
    )


async def stream_then_leave(port: int, body: dict[str, Any], events: int) -> float:
    """Stream an answer, read ``events`` events of it, close the connection; when."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request(body))
        received = b""
        while received.count(b"data: {") < events:
            chunk = await reader.read(65536)
            if not chunk:
                raise RuntimeError(f"the answer ended early: {received[:300]!r}")
            received += chunk
    finally:
        writer.close()
    return time.perf_counter()


class Server:
    """How to read a server's state: whether it computes anything, and its step count."""

    def __init__(self, name: str, port: int, metrics_port: int, llama: bool) -> None:
        self.name, self.port, self.metrics_port, self.llama = name, port, metrics_port, llama

    def state(self) -> tuple[bool, float, float | None]:
        """(busy, steps so far, most steps after a cancel (SAGE only))."""
        base = f"http://127.0.0.1:{self.metrics_port}"
        text = httpx.get(base + "/metrics", timeout=10).text
        if self.llama:
            slots = httpx.get(base + "/slots", timeout=10).json()
            busy = any(s.get("is_processing") for s in slots)
            return busy, metric(text, "llamacpp:n_decode_total"), None
        running = metric(text, "sage_engine_sequences_running")
        waiting = metric(text, "sage_engine_sequences_waiting")
        steps = metric(text, "sage_engine_steps_total")
        return bool(running or waiting), steps, metric(text, "sage_engine_steps_after_cancel_max")


def one_case(server: Server, model: str) -> tuple[float, float, float | None]:
    """50 streams closed mid-answer: (seconds to idle, steps meanwhile, max steps after)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Count from one to a thousand."}],
        "max_tokens": 256,
        "temperature": 0,
        "stream": True,
        "logit_bias": NO_END,
    }

    async def streams() -> float:
        closes = await asyncio.gather(
            *(stream_then_leave(server.port, body, 3 + i % 5) for i in range(STREAMS))
        )
        return max(closes)

    last = asyncio.run(streams())
    _, steps_then, _ = server.state()
    while True:  # wait for the condition itself, polling the server's own figures
        busy, steps, after = server.state()
        if not busy:
            return time.perf_counter() - last, steps - steps_then, after
        if time.perf_counter() - last > 60:
            raise RuntimeError(f"{server.name} still computing 60 s after the last close")


@contextmanager
def llama_server(gguf: Path, logs: Path) -> Iterator[int]:
    port = SagePorts.any_free_port()
    command = [
        str(_llama_server.ensure()),
        *("-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)),
        *("-np", str(STREAMS), "-t", "1", "-c", str(STREAMS * CONTEXT)),
        *("--metrics", "--no-webui"),
    ]
    log = logs / "llama-server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:  # ready when /health answers 200 (it says 503 while loading)
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server did not start; see {log}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    spec = resolve_model("smollm2", "llm")
    assert spec.gguf_file is not None
    logs = Path(tempfile.mkdtemp(prefix="sage-cancel-bench-"))
    pids: list[int] = []
    results: dict[str, list[tuple[float, float, float | None]]] = {}
    try:
        pid, engine_port, model = spawn_engine(
            "llm",
            "smollm2",
            "cpu",
            logs / "engine.log",
            timeout_s=600,
            extra=("--max-batch", str(STREAMS), "--threads", "1"),
        )
        pids.append(pid)
        backend = {"port": engine_port, "model_name": model, "max_concurrent_requests": STREAMS}
        gateway_pid, gateway_port = spawn_gateway(
            {"port": 0, "llm_backends": [backend]}, logs / "gateway.json", logs / "gateway.log"
        )
        pids.append(gateway_pid)
        # llama-server gets the file SAGE serves (the bundled model, requantised to Q8_0)
        gguf = spec.path / spec.gguf_file
        if spec.requantize is not None:
            gguf = requantized(gguf, spec.requantize)
        with llama_server(gguf, logs) as llama_port:
            servers = [
                Server("SAGE engine server", engine_port, engine_port, llama=False),
                Server("SAGE via the gateway", gateway_port, engine_port, llama=False),
                Server("llama-server -np 50", llama_port, llama_port, llama=True),
            ]
            for r in range(args.rounds + 1):  # the first round warms up, not measured
                order = servers if r % 2 == 0 else list(reversed(servers))
                for server in order:
                    figures = one_case(server, model)  # llama-server takes any name
                    print(f"  {server.name}: {figures}", flush=True)
                    if r:
                        results.setdefault(server.name, []).append(figures)
    finally:
        for pid in pids:
            terminate(pid)

    lines = [
        f"{STREAMS} streamed chats at once (SmolLM2-135M-Instruct Q8_0, {STREAMS} slots, 1 "
        "thread, max_tokens 256), each closed by its client after 3-7 events; measured from "
        f"the last close; {args.rounds} interleaved rounds, medians (max over rounds for the "
        "steps after a cancel).",
        "",
        "| server | idle after the last close | decode steps meanwhile | most steps a cancelled "
        "request was computed in after its cancel | target |",
        "|---|---:|---:|---:|---|",
    ]
    errors = []
    for name, runs in results.items():
        idle = statistics.median(r[0] for r in runs)
        steps = statistics.median(r[1] for r in runs)
        after = [r[2] for r in runs if r[2] is not None]
        most = f"{max(after):.0f}" if after else "not reported"
        target = "idle <= 1 s, <= 1 step" if after else ""
        lines.append(f"| {name} | {idle * 1e3:,.0f} ms | {steps:.0f} | {most} | {target} |")
        if after and (max(r[0] for r in runs) > 1.0 or max(after) > 1):
            errors.append(f"{name}: idle after {max(r[0] for r in runs):.2f} s, {max(after)} steps")
    report_checked("cancellation", "Cancellation", lines, errors, args.write_readme)


if __name__ == "__main__":
    main()
