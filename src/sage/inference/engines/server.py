"""Serve one engine as an OpenAI-compatible HTTP server on its own port.

The server validates every request with the shared wire models
(:mod:`sage.inference.protocol`): a malformed body, a missing or wrong-typed
field, an unknown model, ``max_tokens`` beyond the context or an empty input list gets an
OpenAI-style 4xx naming the parameter, and the server keeps serving.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from sage.common.http import (
    HttpError,
    HttpServer,
    Request,
    Response,
    StreamResponse,
    json_response,
)
from sage.common.observability.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from sage.common.observability.prometheus import Collector, exposition
from sage.inference.engines.base import (
    Delta,
    EmbeddingEngine,
    LLMEngine,
    SamplingParams,
)
from sage.inference.engines.metrics import EngineFigures
from sage.inference.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    SamplingRequest,
    Usage,
    error_from_validation,
    new_id,
    openai_error,
)

__all__ = ["EngineServer"]

logger = logging.getLogger(__name__)

_DEFAULT_MAX_TOKENS = 256


def _bad(status: int, message: str, param: str | None = None, code: str | None = None) -> HttpError:
    return HttpError(status, message, openai_error(status, message, param, code))


def _sse(payload: BaseModel) -> bytes:
    return b"data: " + orjson.dumps(payload.model_dump(exclude_none=True)) + b"\n\n"


class EngineServer:
    """An engine behind ``/v1/...`` routes.

    Args:
        engine: The LLM or embedding engine.
        host: Address to listen on.
        port: Port (0: any free port).
        api_key: Require this bearer token (``None``: no key).
    """

    def __init__(
        self,
        engine: LLMEngine | EmbeddingEngine,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
    ) -> None:
        self.engine = engine
        self.host, self.port = host, port
        self.api_key = api_key
        self.requests = 0
        self.started = time.time()
        self.figures = EngineFigures(engine.model_name)
        self.collector = Collector(self.figures.families)
        """A ``prometheus_client`` collector of :attr:`figures` (what ``GET /metrics`` serves)."""
        self._http: HttpServer | None = None

    async def start(self) -> int:
        """Load the engine and listen; return the port."""
        await self.engine.start()
        http = HttpServer(
            f"sage-engine-{self.engine.model_name}", error_body=lambda s, m: openai_error(s, m)
        )
        if isinstance(self.engine, LLMEngine):
            http.route("POST", "/v1/chat/completions", self._chat)
            http.route("POST", "/v1/completions", self._completion)
        else:
            http.route("POST", "/v1/embeddings", self._embeddings)
        http.route("GET", "/v1/models", self._models)
        http.route("GET", "/health", self._health)
        http.route("GET", "/metrics", self._metrics)
        self._http = http
        self.port = await http.start(self.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and release the engine."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.engine.stop()

    # -- helpers ----------------------------------------------------------------------------

    def _check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):  # constant time
            raise _bad(401, "missing or invalid API key", code="invalid_api_key")

    def _parse(self, request: Request, model: type[BaseModel]) -> Any:
        self._check_key(request)
        self.requests += 1
        try:
            parsed = model.model_validate_json(request.body)
        except ValidationError as exc:
            error = error_from_validation(exc, getattr(model, "endpoint", ""))
            raise HttpError(400, error.error.message, error.model_dump_json().encode()) from None
        user = getattr(parsed, "user", None)
        if user is not None:
            logger.debug("request %s for user %r", request.id, user)
        name = parsed.model  # type: ignore[attr-defined]
        if not self.engine.accepts(name):
            raise _bad(
                404,
                f"model {name!r} is not served here; this server serves {self.engine.model_name!r}",
                param="model",
                code="model_not_found",
            )
        return parsed

    def _params(
        self, parsed: SamplingRequest, max_tokens: int, prompt_tokens: int
    ) -> SamplingParams:
        """The engine's parameters for ``parsed`` (400 if the prompt leaves no room)."""
        engine = self.engine
        assert isinstance(engine, LLMEngine)
        if prompt_tokens + max_tokens > engine.context_length:
            raise _bad(
                400,
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"model's context of {engine.context_length} tokens; lower max_tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        biases = {int(token): bias for token, bias in (parsed.logit_bias or {}).items()}
        vocab = engine.vocab_size
        if vocab is not None and any(token >= vocab for token in biases):
            raise _bad(
                400,
                f"logit_bias names token {max(biases)}, but the model's token ids are below "
                f"{vocab}",
                param="logit_bias",
            )
        stop = parsed.stop
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if parsed.temperature is None else parsed.temperature,
            top_p=1.0 if parsed.top_p is None else parsed.top_p,
            stop=[stop] if isinstance(stop, str) else list(stop or []),
            seed=parsed.seed,
            frequency_penalty=parsed.frequency_penalty or 0.0,
            presence_penalty=parsed.presence_penalty or 0.0,
            logit_bias=biases,
        )

    # -- routes -----------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response | StreamResponse:
        started = perf_counter()
        parsed: ChatCompletionRequest = self._parse(request, ChatCompletionRequest)
        engine = self.engine
        assert isinstance(engine, LLMEngine)
        messages = [{"role": m.role, "content": m.text()} for m in parsed.messages]
        params = self._params(
            parsed, parsed.token_limit(_DEFAULT_MAX_TOKENS), engine.prompt_tokens(messages, None)
        )
        deltas = self.figures.track("chat", engine.generate(params, messages=messages), started)
        if parsed.stream:
            include_usage = (
                parsed.stream_options is not None and parsed.stream_options.include_usage
            )
            return StreamResponse(self._chat_events(deltas, parsed.model, include_usage))
        text, last = await _collect(deltas)
        return json_response(
            ChatCompletionResponse(
                model=parsed.model,
                choices=[
                    Choice(
                        message=AssistantMessage(content=text),
                        finish_reason=last.finish_reason,  # type: ignore[arg-type]
                    )
                ],
                usage=_usage(last),
            )
        )

    async def _chat_events(
        self, deltas: AsyncIterator[Delta], model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        chunk_id = new_id("chatcmpl")
        created = int(time.time())
        yield _sse(
            ChatCompletionChunk(
                id=chunk_id,
                created=created,
                model=model,
                choices=[ChunkChoice(delta=DeltaMessage(role="assistant", content=""))],
            )
        )
        try:
            async for delta in deltas:
                if delta.text:
                    yield _sse(
                        ChatCompletionChunk(
                            id=chunk_id,
                            created=created,
                            model=model,
                            choices=[ChunkChoice(delta=DeltaMessage(content=delta.text))],
                        )
                    )
                if delta.finish_reason is not None:
                    yield _sse(
                        ChatCompletionChunk(
                            id=chunk_id,
                            created=created,
                            model=model,
                            choices=[
                                ChunkChoice(
                                    delta=DeltaMessage(),
                                    finish_reason=delta.finish_reason,  # type: ignore[arg-type]
                                )
                            ],
                        )
                    )
                    if include_usage:
                        yield _sse(
                            ChatCompletionChunk(
                                id=chunk_id,
                                created=created,
                                model=model,
                                choices=[],
                                usage=_usage(delta),
                            )
                        )
            yield b"data: [DONE]\n\n"
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]

    async def _completion(self, request: Request) -> Response | StreamResponse:
        started = perf_counter()
        parsed: CompletionRequest = self._parse(request, CompletionRequest)
        engine = self.engine
        assert isinstance(engine, LLMEngine)
        try:
            prompt = parsed.prompt_text()
        except ValueError as exc:
            raise _bad(400, str(exc), param="prompt") from None
        params = self._params(parsed, parsed.max_tokens or 16, engine.prompt_tokens(None, prompt))
        deltas = self.figures.track("completions", engine.generate(params, prompt=prompt), started)
        echoed = prompt if parsed.echo else ""
        if parsed.stream:
            include_usage = (
                parsed.stream_options is not None and parsed.stream_options.include_usage
            )
            return StreamResponse(
                self._completion_events(deltas, parsed.model, echoed, include_usage)
            )
        text, last = await _collect(deltas)
        return json_response(
            CompletionResponse(
                model=parsed.model,
                choices=[CompletionChoice(text=echoed + text, finish_reason=last.finish_reason)],  # type: ignore[arg-type]
                usage=_usage(last),
            )
        )

    async def _completion_events(
        self, deltas: AsyncIterator[Delta], model: str, echoed: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        completion_id = new_id("cmpl")

        def event(text: str, finish_reason: str | None) -> bytes:
            choice = CompletionChoice(text=text, finish_reason=finish_reason)  # type: ignore[arg-type]
            return _sse(
                CompletionResponse(id=completion_id, model=model, usage=None, choices=[choice])
            )

        try:
            if echoed:
                yield event(echoed, None)
            async for delta in deltas:
                if delta.text or delta.finish_reason:
                    yield event(delta.text, delta.finish_reason)
                if delta.finish_reason is not None and include_usage:
                    yield _sse(
                        CompletionResponse(
                            id=completion_id, model=model, choices=[], usage=_usage(delta)
                        )
                    )
            yield b"data: [DONE]\n\n"
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]

    async def _embeddings(self, request: Request) -> Response:
        started = perf_counter()
        parsed: EmbeddingRequest = self._parse(request, EmbeddingRequest)
        engine = self.engine
        assert isinstance(engine, EmbeddingEngine)
        if parsed.dimensions is not None and parsed.dimensions > engine.dimension:
            raise _bad(400, f"dimensions must be at most {engine.dimension}", param="dimensions")
        try:
            vectors, tokens = await engine.embed(parsed.texts())
        except Exception:
            self.figures.embedded(started, 0, failed=True)
            raise
        self.figures.embedded(started, tokens, failed=False)
        if parsed.dimensions is not None:
            vectors = [v[: parsed.dimensions] for v in vectors]
        data: list[EmbeddingData] = []
        for i, vector in enumerate(vectors):
            if parsed.encoding_format == "base64":
                import base64
                import struct

                encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            else:
                encoded = vector
            data.append(EmbeddingData(embedding=encoded, index=i))
        usage = Usage(prompt_tokens=tokens, total_tokens=tokens)
        return json_response(EmbeddingResponse(data=data, model=parsed.model, usage=usage))

    async def _models(self, request: Request) -> Response:
        self._check_key(request)
        return json_response(ModelList(data=[ModelCard(id=self.engine.model_name)]))

    async def _metrics(self, request: Request) -> Response:
        return Response(body=exposition(self.collector), content_type=PROMETHEUS_CONTENT_TYPE)

    async def _health(self, request: Request) -> Response:
        kind = "llm" if isinstance(self.engine, LLMEngine) else "embedding"
        return json_response(
            {
                "status": "ok",
                "model": self.engine.model_name,
                "type": kind,
                "requests": self.requests,
            }
        )


async def _collect(deltas: AsyncIterator[Delta]) -> tuple[str, Delta]:
    parts: list[str] = []
    last = Delta("")
    async for delta in deltas:
        parts.append(delta.text)
        last = delta
    return "".join(parts), last


def _usage(delta: Delta) -> Usage:
    return Usage(
        prompt_tokens=delta.prompt_tokens,
        completion_tokens=delta.completion_tokens,
        total_tokens=delta.prompt_tokens + delta.completion_tokens,
    )
