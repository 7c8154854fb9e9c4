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
from dataclasses import asdict
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
from sage.common.observability.prometheus import Collector, MetricFamily, exposition
from sage.inference.engines.answers import (
    chat_answer,
    chat_events,
    completion_answer,
    completion_events,
)
from sage.inference.engines.base import (
    EmbeddingEngine,
    LLMEngine,
    SamplingParams,
)
from sage.inference.engines.chat_plan import plan_chat
from sage.inference.engines.metrics import EngineFigures, step_families
from sage.inference.protocol import (
    ENGINE_OPTIONAL,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    SamplingRequest,
    Usage,
    error_from_validation,
    openai_error,
)
from sage.inference.protocol.fields import is_inert, not_honoured

__all__ = ["EngineServer"]

logger = logging.getLogger(__name__)

_DEFAULT_MAX_TOKENS = 256


def _bad(status: int, message: str, param: str | None = None, code: str | None = None) -> HttpError:
    return HttpError(status, message, openai_error(status, message, param, code))


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
        self.collector = Collector(self._families)
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

    def _families(self) -> list[MetricFamily]:
        """The server's figures, and the engine's scheduler's when it keeps them."""
        families = self.figures.families()
        stepping = self.engine.step_figures() if isinstance(self.engine, LLMEngine) else None
        if stepping is not None:
            families += step_families(stepping, self.engine.model_name)
        return families

    def _check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):  # constant time
            raise _bad(401, "missing or invalid API key", code="invalid_api_key")

    def _parse(self, request: Request, model: type[BaseModel]) -> Any:
        self._check_key(request)
        self.requests += 1
        self._check_honoured(request, model)
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

    def _check_honoured(self, request: Request, model: type[BaseModel]) -> None:
        """Refuse a field the wire model declares but this engine does not implement (unless
        its value asks for nothing more: ``"logprobs": false``), whatever its value."""
        endpoint = getattr(model, "endpoint", "")
        honours: frozenset[str] = getattr(self.engine, "honours", frozenset())
        optional = ENGINE_OPTIONAL.get(endpoint, frozenset()) - honours
        if not any(b'"%s"' % name.encode() in request.body for name in optional):
            return  # the usual case: no second parse of the body
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return  # validation says what is wrong
        if not isinstance(body, dict):
            return
        engine = getattr(self.engine, "engine_name", "engine")
        for name in sorted(optional & body.keys()):
            if not is_inert(endpoint, name, body[name]):
                raise _bad(
                    400, f"{name}: {not_honoured(name, engine)}", name, "unsupported_parameter"
                )

    def _params(
        self,
        parsed: SamplingRequest,
        max_tokens: int,
        prompt_tokens: int,
        logprobs: int | None = None,
        json_schema: dict[str, Any] | None = None,
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
            top_k=max(parsed.top_k or 0, 0),
            min_p=parsed.min_p or 0.0,
            logprobs=logprobs,
            json_schema=json_schema,
        )

    # -- routes -----------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response | StreamResponse:
        started = perf_counter()
        parsed: ChatCompletionRequest = self._parse(request, ChatCompletionRequest)
        engine = self.engine
        assert isinstance(engine, LLMEngine)
        try:
            plan = plan_chat(parsed)
        except ValueError as exc:
            raise _bad(400, str(exc), param="tool_choice") from None
        # tools go only to engines that honour them (others keep the older signature)
        offered: dict[str, Any] = {"tools": plan.tools} if plan.tools else {}
        params = self._params(
            parsed,
            parsed.token_limit(_DEFAULT_MAX_TOKENS),
            engine.prompt_tokens(plan.messages, None, **offered),
            parsed.logprobs_asked(),
            plan.json_schema,
        )
        try:
            engine.check(params)
        except ValueError as exc:
            param = "tools" if plan.reading == "forced" else "response_format"
            raise _bad(400, f"{param}: {exc}", param=param) from None
        generated = engine.generate(params, messages=plan.messages, **offered)
        deltas = self.figures.track("chat", generated, started)
        if parsed.stream:
            include_usage = (
                parsed.stream_options is not None and parsed.stream_options.include_usage
            )
            return StreamResponse(chat_events(deltas, parsed.model, include_usage, plan))
        return json_response(await chat_answer(deltas, parsed.model, plan))

    async def _completion(self, request: Request) -> Response | StreamResponse:
        started = perf_counter()
        parsed: CompletionRequest = self._parse(request, CompletionRequest)
        engine = self.engine
        assert isinstance(engine, LLMEngine)
        try:
            prompt = parsed.prompt_text()
        except ValueError as exc:
            raise _bad(400, str(exc), param="prompt") from None
        params = self._params(
            parsed, parsed.max_tokens or 16, engine.prompt_tokens(None, prompt), parsed.logprobs
        )
        deltas = self.figures.track("completions", engine.generate(params, prompt=prompt), started)
        echoed = prompt if parsed.echo else ""
        if parsed.stream:
            include_usage = (
                parsed.stream_options is not None and parsed.stream_options.include_usage
            )
            return StreamResponse(completion_events(deltas, parsed.model, echoed, include_usage))
        return json_response(await completion_answer(deltas, parsed.model, echoed))

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
        engine = self.engine
        health: dict[str, Any] = {
            "status": "ok",
            "model": engine.model_name,
            "type": "llm" if isinstance(engine, LLMEngine) else "embedding",
            "requests": self.requests,
            "running": self.figures.running,
        }
        stepping = engine.step_figures() if isinstance(engine, LLMEngine) else None
        if stepping is not None:
            health["scheduler"] = asdict(stepping)
        return json_response(health)
