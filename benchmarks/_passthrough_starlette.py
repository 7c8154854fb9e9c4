"""A pass-through HTTP proxy on Starlette and uvicorn (the ASGI stack FastAPI stands on), a
baseline the gateway's own HTTP core is measured against:
``python _passthrough_starlette.py PORT UPSTREAM_URL``.

It forwards every request (method, path, body, content-type and authorization) to the
upstream with one pooled ``httpx.AsyncClient`` and passes the answer back, streamed when
the upstream streams. uvicorn runs with uvloop and httptools, its fastest settings, one
worker. Run in the peers' virtualenv by ``benchmarks/inference.py``.
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

FORWARDED = ("content-type", "authorization")
UPSTREAM = sys.argv[2].rstrip("/") if len(sys.argv) > 2 else ""
client: httpx.AsyncClient


async def proxy(request: Request) -> Response:
    headers = {k: v for k, v in request.headers.items() if k in FORWARDED}
    upstream_request = client.build_request(
        request.method, UPSTREAM + request.url.path, content=await request.body(), headers=headers
    )
    upstream = await client.send(upstream_request, stream=True)
    content_type = upstream.headers.get("content-type", "application/json")
    if "text/event-stream" not in content_type:
        body = await upstream.aread()
        await upstream.aclose()
        return Response(body, status_code=upstream.status_code, media_type=content_type)

    async def relay():  # type: ignore[no-untyped-def]
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingResponse(relay(), status_code=upstream.status_code, media_type=content_type)


@asynccontextmanager
async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
    global client
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        yield


app = Starlette(
    routes=[Route("/{path:path}", proxy, methods=["GET", "POST", "PUT", "DELETE"])],
    lifespan=lifespan,
)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
