"""Every request field of the OpenAI API, by endpoint: the table that says, for a field a
request model does not declare, whether it is an OpenAI parameter SAGE's engines do not
implement, or no OpenAI parameter at all.

SAGE's engine servers honour the fields their request models declare and refuse every
other with a 400 whose ``param`` names it and whose ``code`` is ``unsupported_parameter``:
a field is never accepted and silently dropped (an agent that sends ``tools`` must learn
that no tool will be called). The one exception is :data:`INERT`: a field whose value asks
for nothing the engines do not already do (``"logprobs": false``, ``"tools": []``, the
defaults vllm-router and SGLang fill into every request they route) is honoured as it is.
The gateway forwards bodies as they are, so an engine that honours more (vLLM, a remote
endpoint) gets them.

From the OpenAI API reference (https://platform.openai.com/docs/api-reference), 2026-12.
"""

from __future__ import annotations

import json

__all__ = ["ENGINE_OPTIONAL", "INERT", "OPENAI_FIELDS", "is_inert", "not_honoured", "unsupported"]

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


ENGINE_OPTIONAL: dict[str, frozenset[str]] = {
    "chat": frozenset(
        {
            "top_k",
            "min_p",
            "logprobs",
            "top_logprobs",
            "response_format",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
        }
    ),
    "completions": frozenset({"top_k", "min_p", "logprobs"}),
    "embeddings": frozenset(),
}
"""Request fields the wire models declare that not every engine implements: each engine
names those it does (``LLMEngine.honours``), and its server refuses the others by name."""


def not_honoured(field: str, engine: str) -> str:
    """Why an ``engine`` engine refuses ``field``, and what to do instead."""
    return (
        f"{field!r} is not implemented by the {engine} engine serving this model, so the "
        "request is refused rather than answered without it; leave it out, or serve the "
        "model with an engine that implements it (llama.cpp for GGUF models, vLLM on a GPU)"
    )


_ROUTED: dict[str, tuple[object, ...]] = {
    # what vllm-router (and SGLang's OpenAI layer) write into every request it forwards,
    # each the behaviour SAGE's engines have: stop at EOS, skip special tokens when
    # decoding, trim stop strings, no hidden states
    "ignore_eos": (False,),
    "skip_special_tokens": (True,),
    "no_stop_trim": (False,),
    "return_hidden_states": (False,),
}
INERT: dict[str, dict[str, tuple[object, ...]]] = {
    "chat": {
        "logprobs": (False,),
        "top_logprobs": (0,),
        "tools": ([],),
        "tool_choice": ("none",),
        "functions": ([],),
        "function_call": ("none",),
        "response_format": ({"type": "text"},),
        "modalities": (["text"],),
        "store": (False,),
        **_ROUTED,
        # the model is answered, never continued; it has no reasoning to separate or hide
        "continue_final_message": (False,),
        "separate_reasoning": (True,),
        "stream_reasoning": (True,),
        "include_reasoning": (True,),
    },
    "completions": {**_ROUTED},
    "embeddings": {},
}
"""Per endpoint, fields SAGE's engines do not implement and the values (besides ``null``)
that ask for nothing they do not already do: a request carrying one of them is answered
as it asks. Any other value of these fields is refused like an unimplemented field."""


def is_inert(endpoint: str, field: str, value: object) -> bool:
    """Whether ``field: value`` asks for nothing an ``endpoint`` engine does not do.

    Types are compared too: ``0`` is not ``false``, ``1`` is not ``true``.
    """
    accepted = INERT.get(endpoint, {}).get(field)
    if accepted is None:
        return False
    return value is None or any(type(value) is type(a) and value == a for a in accepted)


def unsupported(endpoint: str, field: str) -> str:
    """Why ``field`` of an ``endpoint`` request is refused, and what to do instead."""
    accepted = INERT.get(endpoint, {}).get(field)
    only = ""
    if accepted:
        values = " or ".join(json.dumps(a) for a in accepted)
        only = f" (it is accepted as null or {values}, which ask for nothing more)"
    if field in OPENAI_FIELDS.get(endpoint, ()) or accepted:
        origin = "an OpenAI" if field in OPENAI_FIELDS.get(endpoint, ()) else "a vLLM"
        return (
            f"{field!r} is {origin} parameter that SAGE's engines do not implement, so the "
            "request is refused rather than answered without it; leave it out, or send the "
            f"request to an engine that honours it (vLLM behind the gateway){only}"
        )
    return f"{field!r} is not a parameter of the OpenAI {endpoint} API; leave it out"
