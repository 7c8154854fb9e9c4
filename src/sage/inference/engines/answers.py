"""An engine's deltas as OpenAI answers: whole (chat, completion) or as server-sent events,
with token usage, log-probabilities and tool calls in the API's shapes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
from pydantic import BaseModel

from sage.common.http import HttpError
from sage.inference.engines.base import Delta, EngineOverloaded
from sage.inference.engines.base import TokenLogprob as EngineLogprob
from sage.inference.engines.chat_plan import ChatPlan
from sage.inference.engines.tools import CallStream, ParsedCall
from sage.inference.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionResponse,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    DeltaMessage,
    FunctionCall,
    FunctionCallDelta,
    PromptTokensDetails,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
    new_id,
    openai_error,
)

__all__ = ["chat_answer", "chat_events", "collect", "completion_answer", "completion_events"]


def _sse(payload: BaseModel) -> bytes:
    return b"data: " + orjson.dumps(payload.model_dump(exclude_none=True)) + b"\n\n"


async def collect(deltas: AsyncIterator[Delta]) -> tuple[str, Delta, list[EngineLogprob] | None]:
    """The whole answer, its last delta, and its tokens' log-probabilities (if asked).

    Raises:
        HttpError: 503 with ``Retry-After`` when the engine has no room for the request;
            400 when the answer's format cannot be enforced (a JSON schema it cannot take).
    """
    parts: list[str] = []
    last = Delta("")
    logprobs: list[EngineLogprob] | None = None
    try:
        async for delta in deltas:
            parts.append(delta.text)
            if delta.logprobs is not None:
                logprobs = (logprobs or []) + delta.logprobs
            last = delta
    except EngineOverloaded as exc:
        raise HttpError(
            503, str(exc), openai_error(503, str(exc), code="overloaded"), {"retry-after": "1"}
        ) from None
    except ValueError as exc:
        raise HttpError(400, str(exc), openai_error(400, str(exc))) from None
    return "".join(parts), last, logprobs


def usage(delta: Delta) -> Usage:
    """The token counts on a request's last delta."""
    return Usage(
        prompt_tokens=delta.prompt_tokens,
        completion_tokens=delta.completion_tokens,
        total_tokens=delta.prompt_tokens + delta.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=delta.cached_tokens),
    )


def _chat_logprobs(logprobs: list[EngineLogprob] | None) -> ChoiceLogprobs | None:
    if logprobs is None:
        return None
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=entry.token,
                logprob=entry.logprob,
                bytes=entry.bytes,
                top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=b) for t, lp, b in entry.top],
            )
            for entry in logprobs
        ]
    )


def _completion_logprobs(
    logprobs: list[EngineLogprob] | None, offset: int
) -> CompletionLogprobs | None:
    """The completions API's (legacy) shape; text offsets count from ``offset``."""
    if logprobs is None:
        return None
    shaped = CompletionLogprobs()
    for entry in logprobs:
        shaped.tokens.append(entry.token)
        shaped.token_logprobs.append(entry.logprob)
        shaped.top_logprobs.append({t: lp for t, lp, _ in entry.top})
        shaped.text_offset.append(offset)
        offset += len(entry.token)
    return shaped


def _read(plan: ChatPlan, text: str) -> tuple[str | None, list[ParsedCall]]:
    """Content and calls; a forced call cut short (``length``) stays as text."""
    try:
        return plan.read(text)
    except (ValueError, KeyError, TypeError):
        return text, []


def _finish(reason: str | None, calls: list[ParsedCall]) -> str | None:
    return "tool_calls" if calls and reason == "stop" else reason


async def chat_answer(deltas: AsyncIterator[Delta], model: str, plan: ChatPlan) -> BaseModel:
    """A non-streamed chat answer."""
    text, last, logprobs = await collect(deltas)
    content, calls = _read(plan, text)
    message = AssistantMessage(
        content=content,
        tool_calls=[
            ToolCall(function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls
        ]
        or None,
    )
    choice = Choice(
        message=message,
        finish_reason=_finish(last.finish_reason, calls),  # type: ignore[arg-type]
        logprobs=_chat_logprobs(logprobs),
    )
    return ChatCompletionResponse(model=model, choices=[choice], usage=usage(last))


async def chat_events(
    deltas: AsyncIterator[Delta], model: str, include_usage: bool, plan: ChatPlan
) -> AsyncIterator[bytes]:
    """A streamed chat answer: content as it comes; calls once each is complete (its id
    and name, then its arguments)."""
    chunk_id, created = new_id("chatcmpl"), int(time.time())

    def chunk(delta: DeltaMessage, **fields: object) -> bytes:
        choice = ChunkChoice(delta=delta, **fields)  # type: ignore[arg-type]
        return _sse(
            ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[choice])
        )

    # a content piece without log-probabilities, the common event, written directly: the
    # same JSON as the models give (exclude_none), at a fraction of their cost per token
    head = orjson.dumps(
        {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model}
    )
    content_open = b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":{"content":'
    calls_stream = CallStream() if plan.reading == "auto" else None
    held: list[str] = []  # a forced call's text, read at the end
    yield chunk(DeltaMessage(role="assistant", content=""))
    try:
        async for delta in deltas:
            text = delta.text
            if plan.reading == "forced":
                held.append(text)
                text = ""
            elif calls_stream is not None:
                text = calls_stream.feed(text)
            if text and delta.logprobs is None:
                yield content_open + orjson.dumps(text) + b"}}]}\n\n"
            elif text:
                yield chunk(DeltaMessage(content=text), logprobs=_chat_logprobs(delta.logprobs))
            if delta.finish_reason is None:
                continue
            calls: list[ParsedCall] = []
            if plan.reading == "forced":
                content, calls = _read(plan, "".join(held))
                if content:
                    yield chunk(DeltaMessage(content=content))
            elif calls_stream is not None:
                rest, calls = calls_stream.finish()
                if rest:
                    yield chunk(DeltaMessage(content=rest))
            for index, call in enumerate(calls):
                start = ToolCallDelta(
                    index=index,
                    id=new_id("call"),
                    type="function",
                    function=FunctionCallDelta(name=call.name, arguments=""),
                )
                yield chunk(DeltaMessage(tool_calls=[start]))
                arguments = FunctionCallDelta(arguments=call.arguments)
                yield chunk(
                    DeltaMessage(tool_calls=[ToolCallDelta(index=index, function=arguments)])
                )
            yield chunk(DeltaMessage(), finish_reason=_finish(delta.finish_reason, calls))
            if include_usage:
                yield _sse(
                    ChatCompletionChunk(
                        id=chunk_id, created=created, model=model, choices=[], usage=usage(delta)
                    )
                )
        yield b"data: [DONE]\n\n"
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


async def completion_answer(deltas: AsyncIterator[Delta], model: str, echoed: str) -> BaseModel:
    """A non-streamed completion (``echoed``: the prompt, when the request asked for it)."""
    text, last, logprobs = await collect(deltas)
    choice = CompletionChoice(
        text=echoed + text,
        finish_reason=last.finish_reason,  # type: ignore[arg-type]
        logprobs=_completion_logprobs(logprobs, len(echoed)),
    )
    return CompletionResponse(model=model, choices=[choice], usage=usage(last))


async def completion_events(
    deltas: AsyncIterator[Delta], model: str, echoed: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """A streamed completion."""
    completion_id = new_id("cmpl")
    offset = len(echoed)

    def event(
        text: str, finish_reason: str | None, logprobs: list[EngineLogprob] | None = None
    ) -> bytes:
        choice = CompletionChoice(
            text=text,
            finish_reason=finish_reason,  # type: ignore[arg-type]
            logprobs=_completion_logprobs(logprobs, offset),
        )
        return _sse(CompletionResponse(id=completion_id, model=model, usage=None, choices=[choice]))

    try:
        if echoed:
            yield event(echoed, None)
        async for delta in deltas:
            if delta.text or delta.finish_reason:
                yield event(delta.text, delta.finish_reason, delta.logprobs)
                offset += len(delta.text)
            if delta.finish_reason is not None and include_usage:
                yield _sse(
                    CompletionResponse(
                        id=completion_id, model=model, choices=[], usage=usage(delta)
                    )
                )
        yield b"data: [DONE]\n\n"
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
