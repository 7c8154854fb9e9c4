"""Every request field of the OpenAI API, by endpoint: the table that says, for a field a
request model does not declare, whether it is an OpenAI parameter SAGE's engines do not
implement, or no OpenAI parameter at all.

SAGE's engine servers honour the fields their request models declare and refuse every
other with a 400 whose ``param`` names it and whose ``code`` is ``unsupported_parameter``:
a field is never accepted and silently dropped (an agent that sends ``tools`` must learn
that no tool will be called). The gateway forwards bodies as they are, so an engine that
honours more (vLLM, a remote endpoint) gets them.

From the OpenAI API reference (https://platform.openai.com/docs/api-reference), 2026-12.
"""

from __future__ import annotations

__all__ = ["OPENAI_FIELDS", "unsupported"]

OPENAI_FIELDS: dict[str, frozenset[str]] = {
    "chat": frozenset(
        {
            "messages",
            "model",
            "audio",
            "frequency_penalty",
            "function_call",
            "functions",
            "logit_bias",
            "logprobs",
            "max_completion_tokens",
            "max_tokens",
            "metadata",
            "modalities",
            "n",
            "parallel_tool_calls",
            "prediction",
            "presence_penalty",
            "prompt_cache_key",
            "reasoning_effort",
            "response_format",
            "safety_identifier",
            "seed",
            "service_tier",
            "stop",
            "store",
            "stream",
            "stream_options",
            "temperature",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "user",
            "verbosity",
            "web_search_options",
        }
    ),
    "completions": frozenset(
        {
            "model",
            "prompt",
            "best_of",
            "echo",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "max_tokens",
            "n",
            "presence_penalty",
            "seed",
            "stop",
            "stream",
            "stream_options",
            "suffix",
            "temperature",
            "top_p",
            "user",
        }
    ),
    "embeddings": frozenset({"input", "model", "dimensions", "encoding_format", "user"}),
}
"""The request fields of each endpoint group of the OpenAI API."""


def unsupported(endpoint: str, field: str) -> str:
    """Why ``field`` of an ``endpoint`` request is refused, and what to do instead."""
    if field in OPENAI_FIELDS.get(endpoint, ()):
        return (
            f"{field!r} is an OpenAI parameter that SAGE's engines do not implement, so the "
            "request is refused rather than answered without it; leave it out, or send the "
            "request to an engine that honours it (vLLM behind the gateway)"
        )
    return f"{field!r} is not a parameter of the OpenAI {endpoint} API; leave it out"
