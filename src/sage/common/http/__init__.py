"""A small fast HTTP/1.1 server and pooled client on asyncio and httptools."""

from sage.common.http.client import BackendTimeout, BackendUnavailable, HttpPool, HttpResult
from sage.common.http.server import (
    REQUEST_ID,
    HttpError,
    HttpServer,
    Request,
    Response,
    StreamResponse,
    json_response,
)

__all__ = [
    "REQUEST_ID",
    "BackendTimeout",
    "BackendUnavailable",
    "HttpError",
    "HttpPool",
    "HttpResult",
    "HttpServer",
    "Request",
    "Response",
    "StreamResponse",
    "json_response",
]
