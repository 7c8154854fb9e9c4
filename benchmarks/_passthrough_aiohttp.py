"""A pass-through HTTP proxy on aiohttp, the baseline the gateway's own HTTP core is measured
against: ``python _passthrough_aiohttp.py PORT UPSTREAM_URL``.

It forwards every request (method, path, body, content-type and authorization) to the
upstream over one pooled ``aiohttp.ClientSession`` and passes the answer back, streamed
chunk by chunk when the upstream streams. Nothing else: no parsing, no scheduling. Run in
the peers' virtualenv by ``benchmarks/inference.py``.
"""

from __future__ import annotations

import sys

from aiohttp import ClientSession, TCPConnector, web

FORWARDED = ("content-type", "authorization")


async def proxy(request: web.Request) -> web.StreamResponse:
    session: ClientSession = request.app["session"]
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
    async with session.request(
        request.method,
        request.app["upstream"] + request.path_qs,
        data=await request.read(),
        headers=headers,
    ) as upstream:
        content_type = upstream.headers.get("content-type", "application/json")
        if "text/event-stream" not in content_type:
            body = await upstream.read()
            return web.Response(
                status=upstream.status, body=body, content_type=content_type.split(";")[0]
            )
        answer = web.StreamResponse(status=upstream.status, headers={"content-type": content_type})
        await answer.prepare(request)
        async for chunk in upstream.content.iter_any():
            await answer.write(chunk)
        await answer.write_eof()
        return answer


async def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app["upstream"] = upstream.rstrip("/")

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = ClientSession(connector=TCPConnector(limit=0))
        yield
        await app["session"].close()

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    web.run_app(make_app(upstream), host="127.0.0.1", port=port, print=None, access_log=None)
