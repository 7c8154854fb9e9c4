"""HTTP load from its own process, so it does not share an interpreter with the server.

Two modes, each printing one JSON line:

* ``python benchmarks/_loadgen.py PORT CONCURRENCY SECONDS``: closed loop, ``concurrency``
  keep-alive connections each sending the next chat request as soon as the previous answer
  arrived, for ``seconds``: ``{"requests", "seconds", "req_s", "p50_ms", "p99_ms"}``.
* ``python benchmarks/_loadgen.py burst PORT PATH BODIES.json``: one keep-alive connection
  per body, opened and warmed with one burst first; then every body is sent at once and the
  time until the last answer is printed: ``{"seconds": ...}``.

Raw HTTP/1.1 over asyncio streams (content-length and chunked answers), so the client costs
little next to the servers. Any non-200 answer stops it with an error naming the status.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

BODY = b'{"model":"stub","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'


def request(port: int, path: bytes = b"/v1/chat/completions", body: bytes = BODY) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
        b"content-type: application/json\r\nauthorization: Bearer sk-bench\r\n"
        b"content-length: %d\r\n\r\n%s" % (path, port, len(body), body)
    )


async def read_answer(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        raise SystemExit(f"non-200 answer: {status}")
    headers = head.lower()
    at = headers.find(b"\r\ncontent-length:")
    if at >= 0:
        await reader.readexactly(int(headers[at + 17 : headers.index(b"\r\n", at + 2)]))
        return
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def worker(port: int, stop: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload, done = request(port), 0
    while time.perf_counter() < stop:
        start = time.perf_counter()
        writer.write(payload)
        await read_answer(reader)
        latencies.append(time.perf_counter() - start)
        done += 1
    writer.close()
    return done


async def run(port: int, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    start = time.perf_counter()
    stop = start + seconds
    done = sum(await asyncio.gather(*(worker(port, stop, latencies) for _ in range(concurrency))))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": done,
        "seconds": elapsed,
        "req_s": done / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


async def burst(port: int, path: str, bodies: list[bytes]) -> dict[str, float]:
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in bodies]
    payloads = [request(port, path.encode(), body) for body in bodies]

    async def one(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes) -> None:
        stream[1].write(data)
        await read_answer(stream[0])

    await asyncio.gather(*map(one, streams, payloads))  # warm: connections, server caches
    start = time.perf_counter()
    await asyncio.gather(*map(one, streams, payloads))
    elapsed = time.perf_counter() - start
    for _, writer in streams:
        writer.close()
    return {"seconds": elapsed}


def main() -> None:
    if sys.argv[1] == "burst":
        with open(sys.argv[4], encoding="utf-8") as fh:
            bodies = [json.dumps(body).encode() for body in json.load(fh)]
        work = burst(int(sys.argv[2]), sys.argv[3], bodies)
    else:
        work = run(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
    try:
        import uvloop

        result = uvloop.run(work)
    except ImportError:  # pragma: no cover
        result = asyncio.run(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
