"""What a chat request asks of the engine beyond its messages: the tools it offers, the
JSON its answer must be (``response_format``, or a call ``tool_choice`` forces), and so how
the answer is read back (text, one forced call, or text that may hold calls)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sage.inference.engines.tools import ParsedCall, call_schema, calls_in, forced_calls
from sage.inference.protocol import ChatCompletionRequest, JsonSchemaFormat, NamedToolChoice

__all__ = ["ChatPlan", "plan_chat"]

Reading = Literal["text", "forced", "auto"]


@dataclass(frozen=True)
class ChatPlan:
    """How to run and read one chat request.

    Attributes:
        messages: The conversation for the engine (tool calls and results included).
        tools: The functions offered to the model (``None``: none).
        json_schema: The JSON the answer must be (``None``: free text).
        reading: ``text``; ``forced``: the answer is one call; ``auto``: text that may
            hold ``<tool_call>`` blocks.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    json_schema: dict[str, Any] | None
    reading: Reading

    def read(self, text: str) -> tuple[str | None, list[ParsedCall]]:
        """The answer's content and its calls."""
        if self.reading == "forced":
            return None, forced_calls(text)
        if self.reading == "auto":
            content, calls = calls_in(text)
            return (content or None) if calls else text, calls
        return text, []


def plan_chat(request: ChatCompletionRequest) -> ChatPlan:
    """The plan of ``request``.

    Raises:
        ValueError: ``tool_choice`` names a function that ``tools`` does not offer, or
            asks for a call with no tools (the message names the parameter).
    """
    messages = [
        {
            "role": m.role,
            "content": m.text(),
            **({"tool_calls": [c.model_dump() for c in m.tool_calls]} if m.tool_calls else {}),
            **({"tool_call_id": m.tool_call_id} if m.tool_call_id else {}),
        }
        for m in request.messages
    ]
    tools = [t.model_dump(exclude_none=True) for t in request.tools or ()] or None
    choice = request.tool_choice
    schema: dict[str, Any] | None = None
    fmt = request.response_format
    if isinstance(fmt, JsonSchemaFormat):
        schema = fmt.json_schema.schema_ or {"type": "object"}
    elif fmt is not None and fmt.type == "json_object":
        schema = {"type": "object"}
    if choice == "none" or (tools is None and choice in (None, "auto")):
        return ChatPlan(messages, None, schema, "text")
    if tools is None:
        raise ValueError("tool_choice: a call is required but 'tools' offers no function")
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in {t["function"]["name"] for t in tools}:
            offered = ", ".join(t["function"]["name"] for t in tools)
            raise ValueError(f"tool_choice: {name!r} is not among the tools ({offered})")
        return ChatPlan(messages, tools, call_schema(tools, name), "forced")
    if choice == "required":
        return ChatPlan(messages, tools, call_schema(tools), "forced")
    return ChatPlan(messages, tools, schema, "auto")
